//! `out`: every action, as Concourse runs it, on both stores.

use crate::util::World;
use serde_json::{Value, json};

fn state(v: &Value) -> (&str, &str) {
    (
        v["version"]["state"].as_str().unwrap(),
        v["version"]["status"].as_str().unwrap(),
    )
}

fn meta(v: &Value, name: &str) -> Option<String> {
    v["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["value"].as_str().unwrap().to_string())
}

fn full_ladder_to_delivered(w: World) {
    let w = w.with(json!({"labels": {"cloud_provider": "aws", "image_type": "rhel8"}}));
    let out = w.put(json!({"init": true})).build("init", 1).ok();
    assert_eq!(state(&out), ("0", "pending"));
    assert_eq!(out["version"]["revision"], "1");
    let mut build = 10;
    for code in (0..100).step_by(5) {
        build += 1;
        let out = w.put(json!({"start": code})).build("stage", build).ok();
        assert_eq!(state(&out), (code.to_string().as_str(), "in_progress"));
        let out = w.put(json!({"complete": code})).build("stage", build).ok();
        if code < 95 {
            assert_eq!(state(&out), ((code + 5).to_string().as_str(), "pending"));
        }
    }
    let doc = w.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(100), Some("completed"))
    );
    assert_eq!(doc["state_name"], "complete and delivered");
    assert_eq!(doc["revision"], 41);
    assert_eq!(doc["history"].as_array().unwrap().len(), 41);
    assert_eq!(doc["labels"]["image_type"], "rhel8");
    let by = &doc["history"][40]["by"];
    assert_eq!(by["job"], "stage");
    assert_eq!(
        by["build_url"],
        "https://ci.example.com/teams/main/pipelines/staged-image-build/jobs/stage/builds/30"
    );
    // The document is pretty-printed for people.
    let raw = String::from_utf8(w.raw("state.json").unwrap()).unwrap();
    assert!(raw.starts_with("{\n  \"schema_version\": 1,"), "{raw}");
}

/// The backoff is binding: a stage job run before the retry is due is
/// refused at `start` and its outcome put counts nothing; both say why on
/// stderr and write nothing.
fn the_backoff_is_binding(w: World) {
    let w = w.with(json!({"retry": {"backoff": "10m"}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).build("kickstart", 101).ok();
    w.put(json!({"fail": 5, "error": "packer: timeout"}))
        .build("kickstart", 101)
        .ok();
    let before = w.raw("state.json");
    let out = w.put(json!({"start": 5})).build("kickstart", 102).run();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("start 5 is refused until then (the backoff is binding); a human retries at once with retry 5"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");
    let out = w
        .put(json!({"fail": 5, "error": "start was refused"}))
        .build("kickstart", 102)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("fail 5 from main/staged-image-build/kickstart #2 counts nothing: it never started stage 5, which is not due until"),
        "{}",
        out.stderr
    );
    assert_eq!(w.raw("state.json"), before, "nothing written");
}

fn three_failures_block(w: World) {
    let w = w.with(json!({"retry": {"backoff": "0s"}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    for (i, expect) in [(1, "failed"), (2, "failed"), (3, "blocked")] {
        w.put(json!({"start": 5})).build("kickstart", 100 + i).ok();
        let out = w
            .put(json!({"fail": 5, "error": format!("packer: timeout {i}")}))
            .build("kickstart", 100 + i)
            .ok();
        assert_eq!(state(&out), ("5", expect));
        assert_eq!(meta(&out, "attempts").unwrap(), i.to_string());
        // Every metadata value says what the document says.
        let doc = w.doc();
        assert_eq!(meta(&out, "state").unwrap(), doc["state"].to_string());
        assert_eq!(
            meta(&out, "state_name").unwrap(),
            doc["state_name"].as_str().unwrap()
        );
        assert_eq!(
            meta(&out, "status").unwrap(),
            doc["status"].as_str().unwrap()
        );
        assert_eq!(
            meta(&out, "retry_at"),
            doc["retry_at"].as_str().map(str::to_string)
        );
        assert_eq!(
            meta(&out, "last_error").unwrap(),
            format!("packer: timeout {i} (transient)")
        );
        assert_eq!(
            meta(&out, "updated_at").unwrap(),
            doc["updated_at"].as_str().unwrap()
        );
        assert_eq!(
            meta(&out, "updated_by").unwrap(),
            format!("main/staged-image-build/kickstart #{}", (100 + i) % 100)
        );
    }
    let doc = w.doc();
    assert_eq!(doc["attempts"], 3);
    assert_eq!(doc["retry_at"], Value::Null);
    assert_eq!(
        doc["last_error"],
        json!({"message": "packer: timeout 3", "kind": "transient"})
    );
    // (The backoff's growth is the model's tests'; a binding backoff would
    // keep these starts waiting: the source has none.)
    // Blocked: only a human moves it on.
    let err = w.put(json!({"start": 5})).build("kickstart", 200).fails();
    assert!(
        err.contains("rhel8-web is at 5 (kickstart initiated, blocked); cannot start 5; allowed now: retry 5, set (with a reason), cancel, restart"),
        "{err}"
    );
    let out = w.put(json!({"retry": 5})).ok();
    assert_eq!(state(&out), ("5", "pending"));
    assert_eq!(w.doc()["attempts"], 0);
}

fn persistent_failures_block_at_once(w: World) {
    let w = w.with(json!({"persistent_errors": ["(?i)license"], "transient_errors": ["timeout"]}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let out = w
        .put(json!({"fail": 5, "error": "RHEL license rejected"}))
        .ok();
    assert_eq!(state(&out), ("5", "blocked"));
    assert_eq!(w.doc()["last_error"]["kind"], "persistent");
    assert_eq!(
        w.doc()["last_error"]["rule"],
        "persistent_errors: (?i)license"
    );
    // `show` and `history` name the rule too, not only --json.
    let shown = w.cli(&["show", "rhel8-web"]).text();
    assert!(
        shown.contains("RHEL license rejected (persistent, by persistent_errors: (?i)license)"),
        "{shown}"
    );
    let history = w.cli(&["history", "rhel8-web"]).text();
    assert!(
        history.contains("RHEL license rejected (persistent, by persistent_errors: (?i)license)"),
        "{history}"
    );
    w.put(json!({"retry": 5})).ok();
    // A transient match is named too; an unknown error is transient, unnamed.
    let out = w.put(json!({"fail": 5, "error": "ssh timeout"})).ok();
    assert_eq!(state(&out), ("5", "failed"));
    assert_eq!(w.doc()["last_error"]["rule"], "transient_errors: timeout");
    w.put(json!({"fail": 5, "error": "disk on fire"})).ok();
    assert_eq!(w.doc()["last_error"]["kind"], "transient");
    assert!(w.doc()["last_error"].get("rule").is_none());
    // An explicit kind wins over the lists.
    let out = w
        .put(json!({"fail": 5, "error": "ssh timeout", "kind": "persistent", "note": "x"}))
        .ok();
    assert_eq!(state(&out), ("5", "blocked"));
    assert!(w.doc()["last_error"].get("rule").is_none());
}

fn per_state_retry_policy(w: World) {
    let w = w.with(json!({"retry": {"max_attempts": 5, "states": {"5": {"max_attempts": 2, "backoff": "5m"}}}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"fail": 5, "error": "a"})).ok();
    let h = w.doc()["history"][2].clone();
    assert!(h["retry_at"].is_string());
    let out = w.put(json!({"fail": 5, "error": "b"})).ok();
    assert_eq!(state(&out), ("5", "blocked"));
}

/// `finish` by `BUILD_STATUS`: none is an error that writes nothing;
/// `succeeded` completes, `failed` fails with the error file, `errored`
/// fails naming the build when the task never wrote its error file, and a
/// success needs no error file.
fn finish_follows_the_build_status(w: World) {
    // Retries due at once: each build below starts its own attempt first
    // (a failure counts only for the attempt its build started).
    let w = w.with(json!({"retry": {"backoff": "0s", "max_attempts": 10}}));
    let start = |id: u32, n: u32| {
        w.put(json!({"start": n})).build("j", id).ok();
    };
    w.put(json!({"init": true})).ok();
    // Without BUILD_STATUS (Concourse before 8.2, or outside a hook).
    let before = w.raw("state.json");
    let err = w.put(json!({"finish": 0})).build("kickstart", 1).fails();
    assert!(
        err.contains("params.finish needs the build status")
            && err.contains("use complete: N and fail: N"),
        "{err}"
    );
    assert_eq!(w.raw("state.json"), before, "nothing written");

    let out = w
        .put(json!({"finish": 0}))
        .build("j", 2)
        .env("BUILD_STATUS", "succeeded")
        .ok();
    assert_eq!(state(&out), ("5", "pending"));

    w.write_file("out/error.txt", "  ansible: role 'hardening' failed\n");
    let hook = json!({"finish": 5, "error_file": "out/error.txt"});
    start(3, 5);
    let out = w
        .put(hook.clone())
        .build("j", 3)
        .env("BUILD_STATUS", "failed")
        .ok();
    assert_eq!(state(&out), ("5", "failed"));
    assert_eq!(
        w.doc()["last_error"]["message"],
        "ansible: role 'hardening' failed"
    );

    // In a hook of a build that errored before its task ran, the error file
    // is missing: finish still records the failure, naming the build.
    std::fs::remove_file(w.sources().join("out/error.txt")).unwrap();
    start(33, 5);
    let out = w
        .put(hook.clone())
        .build("j", 33)
        .env("BUILD_STATUS", "errored")
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: params.error_file: cannot read"),
        "{}",
        out.stderr
    );
    assert_eq!(
        w.doc()["last_error"]["message"],
        "main/staged-image-build/j #33 errored"
    );
    w.put(json!({"retry": 5})).ok();
    std::fs::write(
        w.sources().join("out/error.txt"),
        "  ansible: role 'hardening' failed\n",
    )
    .unwrap();

    // errored counts as a failure; without an error the build is named.
    start(4, 5);
    let out = w
        .put(json!({"finish": 5}))
        .build("j", 4)
        .env("BUILD_STATUS", "errored")
        .ok();
    assert_eq!(state(&out), ("5", "failed"));
    assert_eq!(
        w.doc()["last_error"]["message"],
        "main/staged-image-build/j #4 errored"
    );

    // On success the error file is not needed.
    start(5, 5);
    let out = w
        .put(json!({"finish": 5, "error_file": "missing.txt"}))
        .build("j", 5)
        .env("BUILD_STATUS", "succeeded")
        .ok();
    assert_eq!(state(&out), ("10", "pending"));
}

/// And then, at stage 10: a failing task that wrote no vars still records
/// its failure; `aborted` blocks the stage for a human; Concourse's docs'
/// spellings `failure` and `success` do what `failed` and `succeeded` do.
fn finish_follows_every_spelling_of_the_build_status(w: World) {
    let w = w.with(json!({"retry": {"backoff": "0s", "max_attempts": 10}}));
    let start = |id: u32, n: u32| {
        w.put(json!({"start": n})).build("j", id).ok();
    };
    crate::policies::walk_to(&w, 10);
    w.write_file("out/error.txt", "  ansible: role 'hardening' failed\n");
    // A failing task may not have written its vars: the failure still lands.
    start(7, 10);
    let out = w
        .put(json!({"finish": 10, "error_file": "out/error.txt", "vars_file": "out/vars.json"}))
        .build("j", 7)
        .env("BUILD_STATUS", "failed")
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: params.vars_file: cannot read"),
        "{}",
        out.stderr
    );
    w.put(json!({"retry": 10})).ok();

    // aborted: a human decides.
    start(6, 10);
    let out = w
        .put(json!({"finish": 10}))
        .build("j", 6)
        .env("BUILD_STATUS", "aborted")
        .ok();
    assert_eq!(state(&out), ("10", "blocked"));
    assert_eq!(w.doc()["last_error"]["kind"], "persistent");
    assert!(
        w.doc()["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("was aborted")
    );

    // Concourse's docs spell the statuses success and failure: the same.
    w.put(json!({"retry": 10})).ok();
    start(8, 10);
    let out = w
        .put(json!({"finish": 10, "error": "boom"}))
        .build("j", 8)
        .env("BUILD_STATUS", "failure")
        .ok();
    assert_eq!(state(&out), ("10", "failed"));
    start(9, 10);
    let out = w
        .put(json!({"finish": 10}))
        .build("j", 9)
        .env("BUILD_STATUS", "success")
        .ok();
    assert_eq!(state(&out), ("15", "pending"));
}

/// The build's page: `BUILD_URL` when Concourse gives it (8.0+), and who
/// started the build when the resource exposes it.
fn records_the_build_url_and_creator(w: World) {
    w.put(json!({"init": true}))
        .build("start-build", 41)
        .env("BUILD_URL", "https://ci.example.com/teams/main/pipelines/p/jobs/start-build/builds/41?vars.env=%22prod%22")
        .env("BUILD_CREATED_BY", "alice")
        .ok();
    w.put(json!({"complete": 0})).build("start-build", 42).ok();
    let doc = w.doc();
    let by = &doc["history"][0]["by"];
    assert_eq!(
        by["build_url"],
        "https://ci.example.com/teams/main/pipelines/p/jobs/start-build/builds/41?vars.env=%22prod%22"
    );
    assert_eq!(by["created_by"], "alice");
    // Without BUILD_URL (Concourse 7), made from ATC_EXTERNAL_URL.
    let by = &doc["history"][1]["by"];
    assert_eq!(
        by["build_url"],
        "https://ci.example.com/teams/main/pipelines/staged-image-build/jobs/start-build/builds/42"
    );
    assert!(by.get("created_by").is_none());
    // Who ran the build by hand is shown where the history is read.
    let history = w.cli(&["history", "rhel8-web"]).text();
    assert!(history.contains("start-build #41 (by alice)"), "{history}");
}

fn a_replayed_put_is_a_no_op(w: World) {
    w.put(json!({"init": true})).build("init", 7).ok();
    let first = w.put(json!({"complete": 0})).build("kickstart", 8).ok();
    let again = w.put(json!({"complete": 0})).build("kickstart", 8);
    let out = again.run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("no change"), "{}", out.stderr);
    let again: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(again["version"], first["version"]);
    assert_eq!(w.doc()["revision"], 2);
    // init of a build still at its initial state is a no-op too; of a build
    // under way it is refused.
    let err = w.put(json!({"init": true})).build("init", 9).fails();
    assert!(
        err.contains("rhel8-web is at 5 (kickstart initiated, pending); cannot init"),
        "{err}"
    );
}

fn restart_archives_the_run(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    // A new commit mid-run starts no new run, and says when one starts.
    let err = w.put(json!({"init": true, "restart": true})).fails();
    assert!(
        err.contains("rhel8-web is at 5 (kickstart initiated, pending); run 1 is under way, so init with restart starts no new run: that happens once this run is delivered or cancelled"),
        "{err}"
    );
    w.put(json!({"cancel": "superseded by rhel8-web-2"})).ok();
    assert_eq!(w.doc()["status"], "cancelled");
    let out = w.put(json!({"init": true, "restart": true})).ok();
    assert_eq!(out["version"]["revision"], "4");
    let doc = w.doc();
    assert_eq!(
        (
            doc["run"].as_u64(),
            doc["revision"].as_u64(),
            doc["state"].as_u64()
        ),
        (Some(2), Some(4), Some(0))
    );
    assert_eq!(doc["history"].as_array().unwrap().len(), 1);
    let archive: Value =
        serde_json::from_slice(&w.raw("runs/1.json").expect("archive written")).unwrap();
    assert_eq!(
        (archive["run"].as_u64(), archive["revision"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(archive["status"], "cancelled");
    // `restart: true` alone abandons a run under way.
    w.put(json!({"complete": 0})).ok();
    let out = w.put(json!({"restart": true})).ok();
    assert_eq!(out["version"]["revision"], "6");
    assert!(w.raw("runs/2.json").is_some());
    assert_eq!(w.doc()["run"], 3);
}

fn set_and_cancel(w: World) {
    w.put(json!({"init": true})).ok();
    let err = w.put(json!({"set": 40})).fails();
    assert!(err.contains("params.set needs a `reason`"), "{err}");
    let out = w
        .put(json!({"set": 40, "status": "failed", "reason": "stages 0-35 done by hand"}))
        .ok();
    assert_eq!(state(&out), ("40", "failed"));
    assert_eq!(w.doc()["history"][1]["reason"], "stages 0-35 done by hand");
    let err = w
        .put(json!({"set": 40, "status": "done", "reason": "x"}))
        .fails();
    assert!(
        err.contains("params.status: \"done\" must be one of pending"),
        "{err}"
    );
    w.put(json!({"cancel": "image no longer needed"})).ok();
    let err = w.put(json!({"cancel": "again"})).fails();
    assert!(err.contains("cannot cancel"), "{err}");
}

fn vars_and_notes(w: World) {
    w.put(json!({"init": true})).ok();
    w.write_file(
        "vars.json",
        r#"{"ami_id": "ami-0abc", "region": "eu-west-1"}"#,
    );
    w.put(json!({"complete": 0, "vars_file": "vars.json", "note": "green image"}))
        .ok();
    w.write_file("vars2.json", r#"{"ami_id": "ami-0def"}"#);
    w.put(json!({"start": 5, "vars_file": "vars2.json"})).ok();
    let doc = w.doc();
    assert_eq!(
        doc["vars"],
        json!({"ami_id": "ami-0def", "region": "eu-west-1"})
    );
    assert_eq!(doc["history"][1]["vars"]["ami_id"], "ami-0abc");
    assert_eq!(doc["history"][1]["note"], "green image");
    w.write_file("bad.json", "[1, 2]");
    let err = w.put(json!({"start": 5, "vars_file": "bad.json"})).fails();
    assert!(
        err.contains("params.vars_file: bad.json must hold a JSON object"),
        "{err}"
    );
}

/// Vars nested as deep as the vars parser takes, but deeper than a
/// document read takes: the put is refused before anything is sent, and the
/// build goes on (it used to be written, then unreadable by every later
/// check, get, put and command).
fn vars_too_deep_for_the_document_never_brick_a_build(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let before = w.doc();
    for depth in [124, 125, 126] {
        let deep = format!("{{\"deep\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
        w.write_file("deep.json", &deep);
        let err = w.put(json!({"start": 5, "vars_file": "deep.json"})).fails();
        assert!(
            err.contains("cannot be read back") && err.contains("nothing was written"),
            "depth {depth}: {err}"
        );
        assert_eq!(w.doc(), before, "depth {depth}: the document is unchanged");
    }
    w.put(json!({"start": 5})).ok();
    assert_eq!(w.doc()["revision"], 3);
}

fn file_must_extend_the_history(w: World) {
    w.put(json!({"init": true})).ok();
    let mut doc = w.doc();
    // Another tool appends an event to the document.
    let mut e = doc["history"][0].clone();
    e["revision"] = json!(2);
    e["action"] = json!("complete");
    e["target"] = json!(0);
    e["state"] = json!(5);
    e["attempt"] = json!(1);
    doc["history"].as_array_mut().unwrap().push(e.clone());
    doc["revision"] = json!(2);
    doc["state"] = json!(5);
    doc["updated_at"] = e["at"].clone();
    w.write_file("doc.json", &doc.to_string());
    let out = w.put(json!({"file": "doc.json"})).ok();
    assert_eq!(state(&out), ("5", "pending"));
    assert_eq!(w.doc()["state_name"], "kickstart initiated");
    // Again: nothing new, a no-op.
    w.put(json!({"file": "doc.json"})).ok();
    assert_eq!(w.doc()["revision"], 2);
    // A document that rewrites history is refused.
    let stored = w.raw("state.json");
    doc["history"][0]["note"] = json!("rewritten");
    w.write_file("doc.json", &doc.to_string());
    let err = w.put(json!({"file": "doc.json"})).fails();
    assert!(err.contains("does not extend the stored history"), "{err}");
    assert_eq!(w.raw("state.json"), stored);
}

/// A user and password in `ATC_EXTERNAL_URL` (or `BUILD_URL`) are never
/// stored or printed: the build's page is recorded without them, and an
/// address that does not parse is not recorded at all.
fn userinfo_in_the_atc_url_is_never_stored(w: World) {
    let out = w
        .put(json!({"init": true}))
        .build("start-build", 1)
        .env("ATC_EXTERNAL_URL", "https://admin:hunter2@ci.example.com/")
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let stored = String::from_utf8(w.raw("state.json").unwrap()).unwrap();
    assert!(
        !stored.contains("hunter2") && !stored.contains("admin:"),
        "{stored}"
    );
    assert!(
        stored.contains("https://ci.example.com/teams/main/pipelines/staged-image-build/jobs/start-build/builds/1"),
        "{stored}"
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    w.put(json!({"complete": 0}))
        .build("begin-run", 2)
        .env("BUILD_URL", "not a url with:hunter2@")
        .ok();
    let stored = String::from_utf8(w.raw("state.json").unwrap()).unwrap();
    assert!(!stored.contains("hunter2"), "{stored}");
}

crate::both_stores!(
    userinfo_in_the_atc_url_is_never_stored,
    full_ladder_to_delivered,
    three_failures_block,
    the_backoff_is_binding,
    persistent_failures_block_at_once,
    per_state_retry_policy,
    finish_follows_the_build_status,
    finish_follows_every_spelling_of_the_build_status,
    records_the_build_url_and_creator,
    a_replayed_put_is_a_no_op,
    restart_archives_the_run,
    set_and_cancel,
    vars_and_notes,
    vars_too_deep_for_the_document_never_brick_a_build,
    file_must_extend_the_history,
);

/// A backoff above its max_backoff is said by `out` (on stderr, with the
/// wait that is used), and the put still lands.
#[test]
fn a_capped_backoff_is_said_by_the_put() {
    let w = World::new(crate::util::Kind::Local, "capped_backoff")
        .with(json!({"retry": {"states": {"5": {"backoff": "2h"}}}}));
    let out = w.put(json!({"init": true})).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("retry.states.5: backoff 2h is more than max_backoff 1h: every wait is 1h"),
        "{}",
        out.stderr
    );
    assert!(w.raw("state.json").is_some(), "the put landed");
}
