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
    let d = out.dest.unwrap();
    assert_eq!(read(&d, "state"), "5");
    assert_eq!(read(&d, "state_name"), "kickstart initiated");
    assert_eq!(read(&d, "status"), "failed");
    assert_eq!(read(&d, "attempts"), "1");
    assert_eq!(read(&d, "revision"), "3");
    assert_eq!(read(&d, "action"), "wait");
    let vars: Value = serde_json::from_str(&read(&d, "vars.json")).unwrap();
    assert_eq!(vars, json!({"ami_id": "ami-0abc"}));
    let doc: Value = serde_json::from_str(&read(&d, "state.json")).unwrap();
    assert_eq!(doc, w.doc());
    let env = read(&d, "state.env");
    assert!(env.contains("BUILD_STATE='5'\n"), "{env}");
    assert!(env.contains("BUILD_STATE_ACTION='wait'\n"), "{env}");
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

crate::both_stores!(
    writes_every_file,
    old_revisions_and_missing_ones,
    no_document_yet,
    require_guards_the_step
);
