//! What an attempt leaves behind, through the real programs on both
//! stores: a task records what it creates, a retry that does not adopt it
//! leaks it, the `leaked` gate opens, `in` lists it in `leaked.json`, a
//! cleanup's release shuts the gate, `prune` keeps a build until then.

use crate::policies::walk_to;
use crate::util::World;
use serde_json::{Value, json};
use std::time::Duration;

fn leaked_gate(w: &World) -> Value {
    w.check_with(json!({"gate": {"leaked": true}})).ok()
}

/// A stage-10 attempt records its instance from inside its task, fails,
/// and the retry starts without adopting it: the `leaked` gate emits (what
/// it emitted is answered).
fn leaked_instance(w: World) -> (World, Value) {
    let w = w.with(json!({"retry": {"backoff": "1s", "factor": 1, "max_attempts": 3}}));
    walk_to(&w, 10);
    let started = w.put(json!({"start": 10})).build("green-image", 7).ok();
    let said = w
        .cli(&[
            "created",
            "rhel8-web",
            "10",
            "green_instance=i-0abc123",
            "--run",
            "1",
            "--attempt",
            "1",
        ])
        .text();
    assert!(said.contains("created green_instance=i-0abc123"), "{said}");
    // A record is not a new stage version: the stage's own gate is shut,
    // the leaked gate too (the failed attempt's retry may adopt it).
    assert_eq!(leaked_gate(&w), json!([]));
    let failed = w
        .put(json!({"fail": 10, "error": "status check timeout"}))
        .build("green-image", 7)
        .ok();
    assert_eq!(failed["version"]["status"], "failed");
    assert_eq!(leaked_gate(&w), json!([]), "the retry may still adopt it");
    std::thread::sleep(Duration::from_millis(1100));
    let retry = w.put(json!({"start": 10})).build("green-image", 8).ok();
    assert_ne!(retry["version"], started["version"]);
    let emitted = leaked_gate(&w);
    assert_eq!(
        emitted,
        json!([retry["version"]]),
        "the gate emits the leak"
    );
    (w, emitted)
}

/// The leak, and then what says so: `in` writes it to `leaked.json`, `show`
/// says how to release it, `list --json` has it.
fn a_failed_attempts_instance_is_leaked(w: World) {
    let (w, emitted) = leaked_instance(w);
    let got = w.get(&emitted[0]).run();
    assert_eq!(got.code, Some(0), "{}", got.stderr);
    let leaked: Value = serde_json::from_str(
        &std::fs::read_to_string(got.dest.unwrap().join("leaked.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(leaked.as_array().unwrap().len(), 1, "{leaked}");
    let l = &leaked[0];
    assert_eq!(
        (&l["name"], &l["id"], &l["stage"], &l["attempt"]),
        (
            &json!("green_instance"),
            &json!("i-0abc123"),
            &json!(10),
            &json!(1)
        )
    );
    assert!(l["since"].is_string() && l["labels"].is_object(), "{l}");
    assert!(
        l["why"]
            .as_str()
            .unwrap()
            .contains("start 10 (attempt 2) did not adopt it")
    );
    let show = w.cli(&["show", "rhel8-web"]).text();
    assert!(
        show.contains("left behind")
            && show.contains("once deleted: build-state release rhel8-web i-0abc123"),
        "{show}"
    );
    let list = w.cli(&["list", "--json"]).ok();
    assert_eq!(list[0]["left_behind"][0]["holding"], "leaked", "{list}");
}

/// The leak, and then its cleanup: a later write that leaks nothing is no
/// new version of the gate; a cleanup's `release_file` put closes it and
/// the gate shuts.
fn a_cleanup_release_shuts_the_leaked_gate(w: World) {
    let (w, emitted) = leaked_instance(w);
    // A later write that leaks nothing is no new version of the gate.
    w.cli(&[
        "created",
        "rhel8-web",
        "10",
        "volume=vol-1",
        "--run",
        "1",
        "--attempt",
        "2",
    ])
    .text();
    assert_eq!(leaked_gate(&w), emitted, "one cleanup per leak");
    // The cleanup job's put: what it deleted, from the file its task wrote.
    std::fs::create_dir_all(w.sources().join("out")).unwrap();
    std::fs::write(w.sources().join("out/released.json"), r#"["i-0abc123"]"#).unwrap();
    let released = w.put(json!({"release_file": "out/released.json"})).ok();
    assert_eq!(released["version"]["state"], "10");
    assert_eq!(leaked_gate(&w), json!([]), "the gate shuts");
    let doc = w.doc();
    let holding: Vec<(String, String)> = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().into(),
                r["holding"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        holding,
        [
            ("i-0abc123".into(), "released".into()),
            ("vol-1".into(), "live".into())
        ]
    );
}

/// What is refused, with its message and exit code, writing nothing: a
/// record for an attempt that is over (a zombie), a malformed name, an id
/// with a space, `adopt` with anything but `start`, a `release_file` that
/// is not an array; a release of an id never recorded writes nothing and
/// says so.
fn bad_records_are_refused_and_write_nothing(w: World) {
    walk_to(&w, 10);
    w.put(json!({"start": 10})).build("green-image", 7).ok();
    let before = w.raw("state.json");
    let err = w
        .cli(&[
            "created",
            "rhel8-web",
            "10",
            "green_instance=i-1",
            "--run",
            "1",
            "--attempt",
            "2",
        ])
        .fails_with(1);
    assert!(
        err.contains("created 10 refused: it is for attempt 2, and attempt 1 is in progress"),
        "{err}"
    );
    let err = w
        .cli(&[
            "created",
            "rhel8-web",
            "10",
            "green instance=i-1",
            "--run",
            "1",
            "--attempt",
            "1",
        ])
        .fails_with(1);
    assert!(
        err.contains("resource name \"green instance\" must be 1 to 64 of"),
        "{err}"
    );
    let err = w
        .put(json!({"created": {"green_instance": "i 1"}}))
        .build("green-image", 7)
        .fails();
    assert!(
        err.contains("params.created: resource id \"i 1\" must be 1 to 256 printable characters without spaces"),
        "{err}"
    );
    let err = w
        .put(json!({"fail": 10, "error": "boom", "hold": "soon"}))
        .build("green-image", 7)
        .fails_with(1);
    assert!(err.contains("params.hold: \"soon\""), "{err}");
    let err = w
        .put(json!({"complete": 10, "adopt": ["green_instance"]}))
        .fails();
    assert!(
        err.contains("params.adopt goes with start, not with complete"),
        "{err}"
    );
    std::fs::create_dir_all(w.sources().join("out")).unwrap();
    std::fs::write(w.sources().join("out/released.json"), r#"{"id": "i-1"}"#).unwrap();
    let err = w.put(json!({"release_file": "out/released.json"})).fails();
    assert!(err.contains("must hold a JSON array of ids"), "{err}");
    assert_eq!(w.raw("state.json"), before, "nothing written");
    let out = w.cli(&["release", "rhel8-web", "i-404"]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("release i-404: no resource of that id or name is recorded"),
        "{}",
        out.stderr
    );
    assert_eq!(w.raw("state.json"), before, "nothing written");
}

/// A delivered build that left a resource behind is kept by `prune`,
/// which says why; once it is released, prune removes it.
fn prune_keeps_a_build_with_a_leaked_resource(w: World) {
    walk_to(&w, 95);
    w.put(json!({"start": 95})).ok();
    w.put(json!({"complete": 95, "created": {"sg": "sg-1"}}))
        .ok();
    let doc = w.doc();
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["resources"][0]["holding"], "leaked", "live at delivery");
    let out = w.cli(&["prune", "--older-than", "0s"]).text();
    assert!(
        out.contains("left 1 cloud resource behind: sg sg-1 (leaked)"),
        "{out}"
    );
    assert!(w.doc()["status"] == "completed", "kept");
    w.cli(&["release", "rhel8-web", "sg-1"]).text();
    let out = w.cli(&["prune", "--older-than", "0s"]).text();
    assert!(!out.contains("left 1 cloud resource behind"), "{out}");
    assert!(w.raw("state.json").is_none(), "pruned");
}

crate::both_stores!(
    a_failed_attempts_instance_is_leaked,
    a_cleanup_release_shuts_the_leaked_gate,
    bad_records_are_refused_and_write_nothing,
    prune_keeps_a_build_with_a_leaked_resource,
);

/// The dashboard's "Left behind" panel, in headless Chromium: a failed
/// attempt's instance held for a human says until when, a leaked one since
/// when and why, each with the command that releases it; `/api/builds`
/// and `metrics` count them.
#[test]
fn the_dashboard_shows_what_is_left_behind() {
    let w = World::new(crate::util::Kind::Local, "left_behind")
        .with(json!({"retry": {"backoff": "1s", "factor": 1, "max_attempts": 3}}));
    walk_to(&w, 10);
    w.put(json!({"start": 10, "created": {"volume": "vol-9"}}))
        .ok();
    w.put(json!({"fail": 10, "error": "boom", "hold": "2h", "created": {"green_instance": "i-7"}}))
        .ok();
    std::thread::sleep(Duration::from_millis(1100));
    // A later attempt's security group, leaked by a start-over... here by
    // the retry that does not adopt it.
    w.put(json!({"start": 10, "created": {"sg": "sg-3"}})).ok();
    w.put(json!({"fail": 10, "error": "boom"})).ok();
    std::thread::sleep(Duration::from_millis(1100));
    w.put(json!({"start": 10})).ok();
    let metrics = w.cli(&["metrics"]).text();
    assert!(
        metrics.contains("build_state_leaked_resources{build_id=\"rhel8-web\",holding=\"held\"} 2")
            && metrics.contains(
                "build_state_leaked_resources{build_id=\"rhel8-web\",holding=\"leaked\"} 1"
            ),
        "{metrics}"
    );
    crate::cli::promtool_accepts(&metrics);
    let (mut server, _stderr, addr) = crate::cli::serve(&w, &["--listen", "127.0.0.1:0"]);
    let (status, body) = crate::cli::http(&addr, "GET", "/api/builds");
    assert_eq!(status, 200);
    let rows: Value = serde_json::from_str(&body).unwrap();
    let left = rows[0]["left_behind"].as_array().unwrap();
    assert_eq!(left.len(), 3, "{body}");
    assert_eq!(left[0]["id"], "sg-3", "the leaked first");
    let profile = w.tmp.path().join("chromium-profile");
    if let Some(page) = crate::util::rendered(&profile, &format!("http://{addr}/")) {
        let at = |s: &str| page.find(s).unwrap_or_else(|| panic!("{s:?} in:\n{page}"));
        assert!(
            at("Left behind (3)") < at("<h2>Builds</h2>"),
            "the panel is at the top"
        );
        for want in [
            "data-left=\"sg-3\"",
            "sg sg-3 (stage 10, attempt 2)",
            "start 10 (attempt 3) did not adopt it",
            "<code>build-state release rhel8-web sg-3</code>",
            "data-left=\"i-7\"",
            "held until 20",
            "<code>build-state release rhel8-web i-7</code>",
        ] {
            at(want);
        }
    }
    let _ = server.kill();
}
