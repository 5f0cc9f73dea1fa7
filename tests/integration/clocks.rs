//! One clock: every deadline is judged on the store's clock (S3: the
//! `Date` of its answers; a local directory: the modification time the
//! file system gives a write), never on the clock of the worker that
//! writes or reads the document. The real programs run under `faketime`
//! (a worker whose clock is off), on both stores.

use crate::util::{Step, World};
use serde_json::{Value, json};
use std::time::Duration;

/// Whether faketime is here (else the check is skipped, when allowed).
fn faketime() -> bool {
    let here = std::process::Command::new("faketime")
        .args(["-f", "+0", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !here {
        crate::util::missing_tool("faketime", "the clock tests (a worker whose clock is off)");
    }
    here
}

fn gate(w: &World) -> Step {
    w.check()
        .stdin(json!({"source": w.source_with(json!({"gate": {"state": 5}}))}))
}

fn at(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// Within `slack` of now, on the test's (true) clock.
fn near_now(t: chrono::DateTime<chrono::Utc>, slack: i64) -> bool {
    (chrono::Utc::now() - t).num_seconds().abs() <= slack
}

/// Heartbeats from a worker whose clock is 15 minutes behind keep the
/// stage alive: their time is the store's.
fn heartbeats_from_a_clock_behind_keep_a_stage_alive(w: World) {
    if !faketime() {
        return;
    }
    let w =
        w.with(json!({"retry": {"states": {"5": {"heartbeat_timeout": "3s", "timeout": "1h"}}}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).build("kickstart", 40).ok();
    std::thread::sleep(Duration::from_secs(2));
    w.put(json!({"heartbeat": 5}))
        .build("kickstart", 40)
        .clock_off("-15m")
        .ok();
    let beat: Value = serde_json::from_slice(&w.raw("heartbeat.json").unwrap()).unwrap();
    assert!(near_now(at(&beat["at"]), 3), "the store's time: {beat}");
    std::thread::sleep(Duration::from_millis(1500));
    // 3.5 s after the start: alive by its heartbeat (dead only after 5 s).
    assert_eq!(gate(&w).ok(), json!([]), "the gate stays shut");
}

/// A start written by a worker 70 minutes behind, on a stage with a 1 h
/// timeout, is not dead at once; a failure written by one 30 minutes
/// behind still waits its 10-minute backoff; a reader 20 minutes ahead
/// does not see the retry due.
fn writers_and_readers_with_clocks_off(w: World) {
    if !faketime() {
        return;
    }
    let w = w.with(json!({"retry": {"backoff": "10m", "states": {"5": {"timeout": "1h"}}}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5}))
        .build("kickstart", 41)
        .clock_off("-70m")
        .ok();
    let doc = w.doc();
    let started = doc["history"].as_array().unwrap().last().unwrap().clone();
    assert!(near_now(at(&started["at"]), 3), "{started}");
    assert_eq!(gate(&w).ok(), json!([]), "not dead at once");
    w.put(json!({"fail": 5, "error": "boom"}))
        .build("kickstart", 41)
        .clock_off("-30m")
        .ok();
    let doc = w.doc();
    let due = at(&doc["retry_at"]);
    let wait = (due - chrono::Utc::now()).num_seconds();
    assert!((595..=600).contains(&wait), "retry due in {wait} s: {doc}");
    assert_eq!(gate(&w).ok(), json!([]), "the backoff holds");
    assert_eq!(
        gate(&w).clock_off("+20m").ok(),
        json!([]),
        "a reader ahead sees it shut too"
    );
    // The CLI decides on the same clock.
    let next = w.cli(&["next", "rhel8-web"]).clock_off("+20m").text();
    assert_eq!(next.trim(), "wait");
}

crate::both_stores!(
    heartbeats_from_a_clock_behind_keep_a_stage_alive,
    writers_and_readers_with_clocks_off
);
