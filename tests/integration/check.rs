//! `check`: versions of the current run, and gates.

use crate::util::{Step, World};
use serde_json::{Value, json};

fn revisions(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v["revision"].as_str().unwrap().to_string())
        .collect()
}

fn lists_revisions_of_the_current_run(w: World) {
    assert_eq!(w.check().ok(), json!([]), "no document: no versions");
    let first = w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let out = w.put(json!({"start": 5})).ok();
    let newest = w.check().ok();
    assert_eq!(
        newest,
        json!([out["version"]]),
        "without a version: only the newest"
    );
    let v = &newest[0];
    assert_eq!(
        (v["state"].as_str(), v["status"].as_str()),
        (Some("5"), Some("in_progress"))
    );
    assert!(
        v["etag"].is_string(),
        "a version carries its revision's ETag"
    );
    // From a given version: it first, then every later one, each as its
    // revision's canonical version (what a put emitted), whatever the given
    // one's shape (`fly check-resource --from revision:1`): one revision is
    // one Concourse version.
    let from = json!({"revision": "1", "state": "0", "status": "pending"});
    let list = w.check_from(&from).ok();
    assert_eq!(revisions(&list), ["1", "2", "3"]);
    assert_eq!(list[0], first["version"]);
    assert_eq!(w.check_from(&json!({"revision": "1"})).ok(), list);
    assert_eq!(
        (
            list[1]["revision"].as_str(),
            list[1]["state"].as_str(),
            list[1]["status"].as_str()
        ),
        (Some("2"), Some("5"), Some("pending"))
    );
    assert_eq!(list[2], out["version"]);
    // Unchanged since the given version: exactly it again, from a
    // conditional read that transferred no document.
    let out = w.check_from(v).run();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!([v])
    );
    assert!(
        out.stderr.contains("rhel8-web unchanged since revision 3"),
        "{}",
        out.stderr
    );
    // A version without its ETag costs a full read, and is answered with
    // the canonical version.
    let mut bare = v.clone();
    bare.as_object_mut().unwrap().remove("etag");
    let out = w.check_from(&bare).run();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!([v])
    );
    assert!(!out.stderr.contains("unchanged"), "{}", out.stderr);
    // A version from a run that was restarted away: the new run from its start.
    w.put(json!({"restart": true})).ok();
    assert_eq!(revisions(&w.check_from(&from).ok()), ["4"]);
    assert_eq!(revisions(&w.check_from(v).ok()), ["4"]);
}

/// Concourse identifies a version by its whole JSON: a revision is always
/// emitted the same, by every put and every check (as the newest or as an
/// intermediate revision, from any starting version), and `in` (the
/// implicit get) answers with it unchanged.
fn one_identity_per_revision(w: World) {
    let w = w.with(json!({"retry": {"backoff": "0s"}}));
    let seen: std::cell::RefCell<std::collections::BTreeMap<String, Value>> = Default::default();
    let note = |v: &Value, how: &str| {
        let rev = v["revision"].as_str().unwrap().to_string();
        let mut seen = seen.borrow_mut();
        let first = seen.entry(rev.clone()).or_insert_with(|| v.clone());
        assert_eq!(first, v, "revision {rev} emitted differently by {how}");
    };
    let puts = [
        json!({"init": true}),
        json!({"complete": 0}),
        json!({"start": 5}),
        json!({"fail": 5, "error": "boom"}),
        json!({"start": 5}),
        json!({"complete": 5}),
    ];
    for p in puts {
        let out = w.put(p).ok();
        note(&out["version"], "put");
        // The implicit get of the put's version.
        let got = w.get(&out["version"]).ok();
        note(&got["version"], "in");
        for v in w.check().ok().as_array().unwrap() {
            note(v, "check");
        }
    }
    let all: Vec<Value> = seen.borrow().values().cloned().collect();
    for from in &all {
        for v in w.check_from(from).ok().as_array().unwrap() {
            note(v, "check from an older version");
        }
    }
    assert_eq!(seen.borrow().len(), 6);
}

fn gate_waits_for_the_backoff(w: World) {
    // The time itself is the unit tests' business (an injected clock); here
    // a long backoff is never due and a zero one is due at once. Puts go to
    // the ungated resource; the gated one only checks.
    let w = w.with(json!({"retry": {"backoff": "1h", "factor": 1}}));
    let gate = json!({"gate": {"state": 5}});
    let gated_from = |w: &World, v: &Value| {
        Step::new(w, "check").stdin(json!({"source": w.source_with(gate.clone()), "version": v}))
    };
    assert_eq!(w.check_with(gate.clone()).ok(), json!([]));
    w.put(json!({"init": true})).ok();
    assert_eq!(
        w.check_with(gate.clone()).ok(),
        json!([]),
        "at 0: the stage-5 gate is shut"
    );
    w.put(json!({"complete": 0})).ok();
    let due = w.check_with(gate.clone()).ok();
    assert_eq!(revisions(&due), ["2"], "pending at 5: due");
    // Unchanged: the same version again (a conditional GET).
    let out = gated_from(&w, &due[0]).run();
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap(), due);
    let mut now = w.with(json!({"retry": {"backoff": "0s"}}));
    now.build_id = "rhel8-db".into();
    now.put(json!({"init": true})).ok();
    now.put(json!({"complete": 0})).ok();
    now.put(json!({"start": 5})).ok();
    let out = now.put(json!({"fail": 5, "error": "boom"})).ok();
    let after = now.check_with(gate.clone()).ok();
    assert_eq!(after, json!([out["version"]]), "due at once");
    assert_eq!(gated_from(&now, &after[0]).ok(), after);
}

fn min_state_gate(w: World) {
    let gate = json!({"gate": {"min_state": 10}});
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    assert_eq!(w.check_with(gate.clone()).ok(), json!([]));
    w.put(json!({"complete": 5})).ok();
    assert_eq!(revisions(&w.check_with(gate.clone()).ok()), ["3"]);
    w.put(json!({"complete": 10})).ok();
    assert_eq!(revisions(&w.check_with(gate).ok()), ["4"]);
}

/// A put to a gated resource is refused, and writes nothing.
fn a_put_to_a_gate_is_refused(w: World) {
    w.put(json!({"init": true})).ok();
    let before = w.raw("state.json");
    let out = Step::new(&w, "out")
        .arg(w.sources())
        .stdin(
            json!({"source": w.source_with(json!({"gate": {"state": 0}})), "params": {"start": 0}}),
        )
        .run();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("rhel8-web: source.gate: a gated resource (gate {state: 0}) only triggers jobs; put to the ungated resource"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");
    assert_eq!(w.raw("state.json"), before, "nothing written");
}

/// A typo in `prefix` or `build_id` does not look like an idle pipeline:
/// `check` still answers `[]`, and says on stderr which key is missing.
fn a_missing_document_is_named(w: World) {
    w.put(json!({"init": true})).ok();
    let typo = w.source_with(json!({"build_id": "rhel8-wbe"}));
    let out = w.check().stdin(json!({"source": typo})).run();
    assert_eq!(
        (out.code, out.stdout.trim()),
        (Some(0), "[]"),
        "{}",
        out.stderr
    );
    let key = format!("{}rhel8-wbe/state.json", w.prefix);
    assert!(
        out.stderr.contains("rhel8-wbe: no document at ")
            && out.stderr.contains(&key)
            && out.stderr.contains(
                "check source.prefix and source.build_id; a put with `init: true` creates it"
            ),
        "{}",
        out.stderr
    );
    // The build that exists is not reported missing.
    let out = w.check().run();
    assert!(!out.stderr.contains("no document"), "{}", out.stderr);
}

crate::both_stores!(
    a_missing_document_is_named,
    lists_revisions_of_the_current_run,
    one_identity_per_revision,
    gate_waits_for_the_backoff,
    min_state_gate,
    a_put_to_a_gate_is_refused
);
