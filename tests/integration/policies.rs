//! Stage policies through the real programs: ranges, a human's stage,
//! start-over stages, timeouts and the blocked gate.

use crate::util::World;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn state(out: &Value) -> (String, String) {
    (
        out["version"]["state"].as_str().unwrap().to_string(),
        out["version"]["status"].as_str().unwrap().to_string(),
    )
}

/// Walks a build to `code`, pending.
pub(crate) fn walk_to(w: &World, code: u64) {
    w.put(json!({"init": true})).ok();
    let mut n = 0;
    while n < code {
        w.put(json!({"complete": n})).ok();
        n += 5;
    }
}

/// A bad policy is refused by check, in, out and the CLI alike, and
/// nothing is written.
fn bad_policies_are_refused_everywhere(mut w: World) {
    for (states, want) in [
        (
            json!({"10-65": {}, "60-70": {}}),
            "source.retry.states.60-70: the range 60-70 overlaps the range 10-65",
        ),
        (
            json!({"101-120": {}}),
            "the range 101-120 names no state of the ladder",
        ),
        (
            json!({"35": {"resume_from": 40}}),
            "source.retry.states.35.resume_from: 40 must be a state before 35",
        ),
        (
            json!({"35": {"timeout": "soon"}}),
            "source.retry.states.35.timeout: \"soon\" is not a duration",
        ),
        (
            json!({"35": {"retries": 2}}),
            "retry.states.35.retries: unknown field `retries`",
        ),
    ] {
        w.extra = json!({"retry": {"states": states}});
        let before = w.keys();
        for step in [
            w.check(),
            w.get(&json!({"revision": "1"})),
            w.put(json!({"init": true})),
        ] {
            let err = step.fails();
            assert!(err.contains(want), "{states}: {err}");
        }
        let out = w.cli(&["show", "rhel8-web"]).run();
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(out.stderr.contains(want), "{}", out.stderr);
        assert_eq!(w.keys(), before, "nothing written");
    }
}

/// `max_attempts: 1` on a range: a human's stages, whose first failure
/// blocks; a code key beats the range.
fn a_humans_stage_blocks_at_once(w: World) {
    let w = w.with(
        json!({"retry": {"states": {"70-90": {"max_attempts": 1}, "80": {"max_attempts": 2}}}}),
    );
    walk_to(&w, 70);
    let out = w
        .put(json!({"fail": 70, "error": "integration tests failed"}))
        .ok();
    assert_eq!(state(&out), ("70".into(), "blocked".into()));
    w.put(json!({"retry": 70})).ok();
    for n in [70, 75] {
        w.put(json!({"complete": n})).ok();
    }
    let out = w
        .put(json!({"fail": 80, "error": "backup target unreachable"}))
        .ok();
    assert_eq!(
        state(&out),
        ("80".into(), "failed".into()),
        "the code key's 2 attempts"
    );
}

/// A start-over stage goes back to its `resume_from`, the earlier stage's
/// gate opens after the backoff, and after its max attempts (counted across
/// the loops) it blocks at the stage; the blocked gate then passes.
fn a_start_over_stage_through_the_programs(w: World) {
    let w = w.with(json!({"retry": {"backoff": "0s", "states": {"25": {"max_attempts": 2, "resume_from": 10}}}}));
    let gate10 = || w.check_with(json!({"gate": {"state": 10}}));
    let blocked = || w.check_with(json!({"gate": {"status": "blocked"}}));
    walk_to(&w, 25);
    w.put(json!({"start": 25})).ok();
    let out = w
        .put(json!({"fail": 25, "error": "sshd_config: the green VM is half hardened"}))
        .ok();
    assert_eq!(state(&out), ("10".into(), "failed".into()), "back to 10");
    let doc = w.doc();
    assert_eq!(
        doc["last_error"]["message"],
        "sshd_config: the green VM is half hardened"
    );
    assert_eq!(
        doc["history"].as_array().unwrap().last().unwrap()["target"],
        25
    );
    let due = gate10().ok();
    assert_eq!(
        due,
        json!([out["version"]]),
        "the gate of 10 opens (backoff 0s)"
    );
    assert_eq!(blocked().ok(), json!([]));
    w.put(json!({"start": 10})).ok();
    for n in [10, 15, 20] {
        w.put(json!({"complete": n})).ok();
    }
    assert_eq!(
        (w.doc()["state"].as_u64(), w.doc()["attempts"].as_u64()),
        (Some(25), Some(1))
    );
    w.put(json!({"start": 25})).ok();
    let out = w.put(json!({"fail": 25, "error": "again"})).ok();
    assert_eq!(
        state(&out),
        ("25".into(), "blocked".into()),
        "blocked at the stage itself"
    );
    assert_eq!(
        blocked().ok(),
        json!([out["version"]]),
        "the blocked gate passes"
    );
    // The CLI's table shows the policy.
    let table = w.cli(&["states"]).text();
    assert!(table.contains("back to 10"), "{table}");
}

/// Polls (`every` apart) until `f` holds; panics after `limit`.
pub(crate) fn poll(limit: Duration, every: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out polling");
        std::thread::sleep(every);
    }
}

/// A stage in progress past its `timeout` is a dead attempt: the gate opens,
/// `list` marks it stale, and the next start records it as a transient
/// failure before starting again; on its last attempt it blocks and the
/// start is refused, saying so.
fn a_dead_attempt_after_the_timeout(w: World) {
    let w = w.with(json!({"retry": {"states": {"5": {"timeout": "1s", "max_attempts": 2}}}}));
    let gate5 = || w.check_with(json!({"gate": {"state": 5}}));
    walk_to(&w, 5);
    let started = w.put(json!({"start": 5})).ok();
    assert_eq!(gate5().ok(), json!([]), "in progress, not yet dead");
    poll(Duration::from_secs(5), Duration::from_millis(100), || {
        gate5().ok() == json!([started["version"]])
    });
    let list: Value = serde_json::from_str(&w.cli(&["list", "--json"]).text()).unwrap();
    assert_eq!(list[0]["stale"], true, "{list}");
    let show = w.cli(&["show", "rhel8-web"]).text();
    assert!(
        show.contains("(stale: no sign of life: in progress since"),
        "{show}"
    );
    let out = w.put(json!({"start": 5})).ok();
    assert_eq!(state(&out), ("5".into(), "in_progress".into()));
    let dead = crate::util::dead_attempt(&w);
    assert!(
        dead["error"]["message"]
            .as_str()
            .unwrap()
            .contains("attempt 1 timed out"),
        "{dead}"
    );
    assert_eq!(
        w.doc()["revision"].as_u64().unwrap(),
        out["version"]["revision"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    );
    // The second attempt dies too: its last; blocked, and the start refused.
    poll(Duration::from_secs(5), Duration::from_millis(100), || {
        !gate5().ok().as_array().unwrap().is_empty()
    });
    let before = w.doc()["revision"].as_u64().unwrap();
    let err = w.put(json!({"start": 5})).fails();
    assert!(
        err.contains("its attempt 2 timed out and was the last (max_attempts 2): recorded as blocked, so start 5 does not go on"),
        "{err}"
    );
    let doc = w.doc();
    assert_eq!(
        (doc["status"].as_str(), doc["revision"].as_u64()),
        (Some("blocked"), Some(before + 1))
    );
}

crate::both_stores!(
    bad_policies_are_refused_everywhere,
    a_humans_stage_blocks_at_once,
    a_start_over_stage_through_the_programs,
    a_dead_attempt_after_the_timeout,
);
