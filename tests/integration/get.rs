//! `in`: the files a get writes, old revisions, and `require`.

use crate::util::World;
use serde_json::{Value, json};
use std::fs;
use std::path::Path;

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn writes_every_file(w: World) {
    w.put(json!({"init": true})).ok();
    w.write_file("vars.json", r#"{"ami_id": "ami-0abc"}"#);
    w.put(json!({"complete": 0, "vars_file": "vars.json"})).ok();
    w.put(json!({"fail": 5, "error": "it's broken"})).ok();
    let version = json!({"revision": "3", "state": "5", "status": "failed"});
    let out = w.get(&version).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let reply: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        reply["version"], version,
        "answers with the version asked for"
    );
    let names: Vec<&str> = reply["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "state",
            "state_name",
            "status",
            "attempts",
            "retry_at",
            "last_error",
            "updated_at",
            "updated_by"
        ]
    );
    // Every value, against the document (Concourse shows them as given).
    let doc = w.doc();
    let values: Vec<(&str, &str)> = reply["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        values,
        [
            ("state", "5"),
            ("state_name", "kickstart initiated"),
            ("status", "failed"),
            ("attempts", "1"),
            ("retry_at", doc["retry_at"].as_str().unwrap()),
            ("last_error", "it's broken (transient)"),
            ("updated_at", doc["updated_at"].as_str().unwrap()),
            ("updated_by", "unknown"),
        ]
    );
    let d = out.dest.unwrap();
    assert_eq!(read(&d, "state"), "5");
    assert_eq!(read(&d, "state_name"), "kickstart initiated");
    assert_eq!(read(&d, "status"), "failed");
    assert_eq!(read(&d, "attempts"), "1");
    assert_eq!(read(&d, "revision"), "3");
    assert_eq!(read(&d, "action"), "retry");
    let vars: Value = serde_json::from_str(&read(&d, "vars.json")).unwrap();
    assert_eq!(vars, json!({"ami_id": "ami-0abc"}));
    let doc: Value = serde_json::from_str(&read(&d, "state.json")).unwrap();
    assert_eq!(doc, w.doc());
    let env = read(&d, "state.env");
    assert!(env.contains("BUILD_STATE='5'\n"), "{env}");
    assert!(env.contains("BUILD_STATE_ACTION='retry'\n"), "{env}");
    // The attempt a job that got it runs (one failure: the second), for
    // its heartbeats; and the run.
    assert!(
        env.contains("BUILD_STATE_ATTEMPT='2'\n") && env.contains("BUILD_STATE_RUN='1'\n"),
        "{env}"
    );
    // The shell reads it back exactly, quotes and all.
    let echoed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". {}/state.env && printf '%s|%s' \"$BUILD_STATE_NAME\" \"$BUILD_STATE_LAST_ERROR\"",
            d.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout),
        "kickstart initiated|it's broken"
    );
}

fn old_revisions_and_missing_ones(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).ok();
    let out = w.get(&json!({"revision": "1"})).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let d = out.dest.unwrap();
    let old: Value = serde_json::from_str(&read(&d, "state.json")).unwrap();
    assert_eq!(
        (old["revision"].as_u64(), old["state"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(old["history"].as_array().unwrap().len(), 1);
    assert_eq!(read(&d, "action"), "run");
    let err = w.get(&json!({"revision": "999"})).fails();
    assert!(
        err.contains("rhel8-web") && err.contains("revision 999 does not exist (the newest is 3"),
        "{err}"
    );
    // After a restart, revisions of the archived run are still there.
    w.put(json!({"restart": true})).ok();
    let out = w.get(&json!({"revision": "2"})).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(read(&out.dest.unwrap(), "state"), "5");
    let err = w.get(&json!({"revision": "abc"})).fails();
    assert!(
        err.contains("version.revision: \"abc\" is not a revision number"),
        "{err}"
    );
}

fn no_document_yet(w: World) {
    let err = w.get(&json!({"revision": "1"})).fails();
    assert!(
        err.contains("revision 1 does not exist: the build has no state yet"),
        "{err}"
    );
}

fn require_guards_the_step(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let v = json!({"revision": "2"});
    w.get_with(&v, json!({"require": {"state": 5}})).ok();
    w.get_with(&v, json!({"require": {"min_state": 5}})).ok();
    w.get_with(&v, json!({"require": {"min_state": 0}})).ok();
    let err = w.get_with(&v, json!({"require": {"state": 10}})).fails();
    assert!(
        err.contains("revision 2 does not satisfy require {state: 10}: rhel8-web is at 5 (kickstart initiated, pending)"),
        "{err}"
    );
    let err = w
        .get_with(&v, json!({"require": {"min_state": 10}}))
        .fails();
    assert!(
        err.contains("does not satisfy require {min_state: 10}"),
        "{err}"
    );
    let err = w.get_with(&v, json!({"require": {"state": 12}})).fails();
    assert!(
        err.contains("params.require: state 12 is not on the ladder"),
        "{err}"
    );
}

/// Every file `in` wrote, by name.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Concourse caches a get by its version and serves the cache to every
/// later build: `in` writes the same files for the same version whenever it
/// runs. What depends on the time is the CLI's `next`, read live.
fn the_same_version_gives_the_same_files(w: World) {
    let w = w.with(json!({"retry": {"backoff": "2s"}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"fail": 5, "error": "kickstart timed out"}))
        .ok();
    let retry_at = chrono::DateTime::parse_from_rfc3339(w.doc()["retry_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let v = json!({"revision": "3", "state": "5", "status": "failed"});
    let before = w.get(&v).run();
    assert_eq!(before.code, Some(0), "{}", before.stderr);
    // `next` reads the clock: "wait" before retry_at, "retry" from then on
    // (which one this slow or fast machine sees first does not matter).
    let next = |w: &World| {
        let asked = chrono::Utc::now();
        let said = w.cli(&["next", "rhel8-web"]).text();
        let answered = chrono::Utc::now();
        match said.as_str() {
            "wait\n" => assert!(asked < retry_at, "wait after the retry was due"),
            "retry\n" => assert!(answered >= retry_at, "retry before it was due"),
            other => panic!("next said {other:?}"),
        }
        said
    };
    // Poll, as a task would, until the clock says the retry is due; a
    // broken `next` fails here rather than hang the run.
    let deadline = retry_at + chrono::Duration::seconds(30);
    while next(&w) == "wait\n" {
        assert!(
            chrono::Utc::now() < deadline,
            "next still says wait 30 s after the retry was due"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(chrono::Utc::now() >= retry_at);
    let after = w.get(&v).run();
    assert_eq!(after.code, Some(0), "{}", after.stderr);
    let (a, b) = (files(&before.dest.unwrap()), files(&after.dest.unwrap()));
    assert_eq!(a, b, "the same version, other files");
    assert_eq!(a["action"], b"retry");
    assert_eq!(before.stdout, after.stdout);
    assert_eq!(w.cli(&["next", "rhel8-web"]).text(), "retry\n");
    let next: Value =
        serde_json::from_str(&w.cli(&["next", "rhel8-web", "--json"]).text()).unwrap();
    assert_eq!(next["next"], "retry");
    assert_eq!(next["state"], 5);
}

/// A version must be what its revision holds; fields a version does not
/// know (written by another image) are tolerated.
fn a_version_is_checked_against_its_revision(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let before = w.raw("state.json");
    let err = w
        .get(&json!({"revision": "2", "state": "95", "status": "completed"}))
        .fails();
    assert!(
        err.contains("version {revision: 2, state: 95, status: completed} does not match revision 2 of this build (rhel8-web is at 5 (kickstart initiated, pending))"),
        "{err}"
    );
    let err = w.get(&json!({"revision": "2", "status": "failed"})).fails();
    assert!(
        err.contains("state: -, status: failed} does not match"),
        "{err}"
    );
    assert_eq!(w.raw("state.json"), before, "nothing written");
    let old = json!({"revision": "2", "state": "5", "status": "pending", "emitted_by": "build-state 0.0.1"});
    let out = w.get(&old).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let reply: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reply["version"]["revision"], "2");
    let versions = w.check_from(&old).ok();
    assert_eq!(
        versions.as_array().unwrap().last().unwrap()["revision"],
        "2"
    );
}

crate::both_stores!(
    the_same_version_gives_the_same_files,
    a_version_is_checked_against_its_revision,
    writes_every_file,
    old_revisions_and_missing_ones,
    no_document_yet,
    require_guards_the_step
);
