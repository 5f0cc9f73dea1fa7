//! Humans and live workers: approval stages and heartbeats.

use super::*;

/// A stage with `approval: true` is reached awaiting approval; its gate is
/// shut and only `approve` moves it; a failure after the approval retries
/// without a new one, across a start-over loop too; a human's retry asks
/// again.
#[test]
fn an_approval_stage_waits_for_a_human_once_per_reset() {
    let mut w = World::new();
    w.retry.states.insert(95, approval_stage(3, Some(90)));
    at(&mut w, 90);
    w.ok(Action::Start(90));
    let d = w.ok(Action::Complete(90));
    assert_eq!((d.state, d.status), (95, Status::AwaitingApproval));
    let gate = Condition::state(95);
    assert!(!gate.gate_passes(w.doc(), w.clock, &w.retry, None), "shut");
    let asks = Condition {
        at: At::Any,
        status: Some(Status::AwaitingApproval),
        timer: false,
        leaked: false,
    };
    assert!(asks.gate_passes(w.doc(), w.clock, &w.retry, None));
    assert_eq!(NextStep::of(w.doc()), NextStep::Approval);
    assert_eq!(
        w.refused(Action::Start(95)),
        "rhel8-web is at 95 (image sealing, awaiting_approval); cannot start 95; allowed now: approve 95, set (with a reason), cancel, restart"
    );
    assert!(
        w.refused(Action::Approve {
            state: 90,
            reason: None
        })
        .contains("allowed now: approve 95")
    );
    let mut u = w.update(Action::Approve {
        state: 95,
        reason: Some("checked the hardening report".into()),
    });
    u.by.user = Some("alice@ops".into());
    w.doc = match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
        Outcome::Write(d) => Some(d),
        o => panic!("{o:?}"),
    };
    let d = w.doc();
    let e = d.last_event();
    assert_eq!((d.state, d.status), (95, Status::Pending));
    assert_eq!(
        (e.action, e.reason.as_deref(), e.by.describe().as_str()),
        (
            ActionKind::Approve,
            Some("checked the hardening report"),
            "cli:alice@ops"
        )
    );
    assert!(gate.gate_passes(d, w.clock, &w.retry, None), "open");
    assert!(
        w.refused(Action::Approve {
            state: 95,
            reason: None
        })
        .contains("cannot approve 95")
    );
    // A failure goes back to 90 (start-over); once 90 completes again, 95
    // is pending: the approval holds.
    w.ok(Action::Start(95));
    let d = w.ok(fail(95, "seal failed"));
    assert_eq!((d.state, d.status), (90, Status::Failed));
    w.clock += Duration::seconds(120);
    w.ok(Action::Start(90));
    let d = w.ok(Action::Complete(90));
    assert_eq!(
        (d.state, d.status),
        (95, Status::Pending),
        "no new approval"
    );
    // A human's retry resets it: asked again.
    w.ok(Action::Start(95));
    let d = w.ok(Action::Retry(95));
    assert_eq!((d.state, d.status), (95, Status::AwaitingApproval));
    // So does a set to pending; a completed stage that comes round again
    // asks again too.
    w.ok(Action::Approve {
        state: 95,
        reason: None,
    });
    let d = w.ok(Action::Set {
        state: 95,
        status: Status::Pending,
        reason: "redo".into(),
    });
    assert_eq!(d.status, Status::AwaitingApproval);
    w.ok(Action::Approve {
        state: 95,
        reason: None,
    });
    w.ok(Action::Start(95));
    let d = w.ok(Action::Complete(95));
    assert_eq!((d.state, d.status), (100, Status::Completed));
}

/// A heartbeat keeps an attempt alive past its start; without one the
/// attempt is dead after `heartbeat_timeout`; the next start records it
/// with what it knew; the heartbeat of another attempt, run or build is
/// refused; a heartbeat changes nothing in the document.
#[test]
fn heartbeats_keep_an_attempt_alive_and_zombies_are_refused() {
    let mut w = World::new();
    w.retry.states.insert(
        5,
        StageRetry {
            heartbeat_timeout: Some(std::time::Duration::from_secs(120)),
            ..stage(3, None, Some(7200))
        },
    );
    at(&mut w, 5);
    let u = from(&mut w, "kick-1", Action::Start(5));
    w.doc = match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
        Outcome::Write(d) => Some(d),
        o => panic!("{o:?}"),
    };
    let started = w.doc().clone();
    let at = |s: i64| started.updated_at + Duration::seconds(s);
    let claim = |s: i64, attempt: Option<u32>, build: Option<&str>| Claim {
        state: 5,
        run: Some(1),
        attempt,
        by: Actor {
            build_id: build.map(str::to_string),
            ..Actor::default()
        },
        at: at(s),
    };
    let gate = Condition::state(5);
    // Within the heartbeat timeout of the start: alive, and no heartbeat
    // needed to say so.
    assert!(!started.needs_heartbeat(at(60), &w.retry));
    assert!(!gate.gate_passes(&started, at(60), &w.retry, None));
    let beat = heartbeat(Some(&started), &claim(100, Some(1), None), "rhel8-web").unwrap();
    assert_eq!(
        (beat.run, beat.state, beat.attempt, beat.revision),
        (1, 5, 1, started.revision)
    );
    // Past it, the heartbeat decides.
    assert!(started.needs_heartbeat(at(150), &w.retry));
    assert!(
        gate.gate_passes(&started, at(150), &w.retry, None),
        "no heartbeat: dead"
    );
    assert!(
        !gate.gate_passes(&started, at(150), &w.retry, Some(&beat)),
        "alive"
    );
    assert!(
        gate.gate_passes(&started, at(220), &w.retry, Some(&beat)),
        "it stopped"
    );
    assert_eq!(started.dead_since(&w.retry, Some(&beat)), Some(at(220)));
    // Past the timeout, no heartbeat helps, and none is read.
    assert!(!started.needs_heartbeat(at(7200), &w.retry));
    // Zombies: another attempt, run, or Concourse build.
    let refused = |c: Claim| {
        heartbeat(Some(&started), &c, "rhel8-web")
            .unwrap_err()
            .to_string()
    };
    assert!(
        refused(claim(10, Some(2), None))
            .contains("it is for attempt 2, and attempt 1 is in progress")
    );
    let mut other_run = claim(10, None, None);
    other_run.run = Some(7);
    assert!(refused(other_run).contains("it is for run 7, and the build is on run 1"));
    assert!(
        refused(claim(10, None, Some("kick-0")))
            .contains("concourse build kick-0 did not start attempt 1")
    );
    assert!(
        heartbeat(
            Some(&started),
            &claim(10, None, Some("kick-1")),
            "rhel8-web"
        )
        .is_ok()
    );
    // The next start after the heartbeat stopped records the dead attempt,
    // naming its last heartbeat; that worker's heartbeats are refused now.
    w.clock = at(300);
    let mut u = from(&mut w, "kick-2", Action::Start(5));
    u.at = at(300);
    u.heartbeat = Some(beat.clone());
    w.doc = match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
        Outcome::Write(d) => Some(d),
        o => panic!("{o:?}"),
    };
    let d = w.doc();
    let dead = &d.history[d.history.len() - 2];
    let message = &dead.error.as_ref().unwrap().message;
    assert!(
        message.starts_with("attempt 1 lost its heartbeat: its last heartbeat at 2026-11-23T12:01:43.000Z, and no sign of life within the stage's heartbeat_timeout (2m) after it (dead since 2026-11-23T12:03:43.000Z)"),
        "{message}"
    );
    assert_eq!(
        (d.status, d.attempts, d.last_event().attempt),
        (Status::InProgress, 1, 2)
    );
    // The stored heartbeat (attempt 1's, written before this start) counts
    // for nothing now: a heartbeat racing a start cannot revive or extend
    // the new attempt.
    assert_eq!(d.own_heartbeat(Some(&beat)), None);
    assert_eq!(
        d.dead_since(&w.retry, Some(&beat)),
        d.dead_since(&w.retry, None)
    );
    let late = heartbeat(Some(d), &claim(301, Some(1), Some("kick-1")), "rhel8-web").unwrap_err();
    assert!(
        late.to_string().contains("attempt 2 is in progress"),
        "{late}"
    );
    // Not in progress: refused with what is allowed.
    at_pending(&mut w);
    let e = heartbeat(
        w.doc.as_ref(),
        &Claim {
            run: None,
            attempt: None,
            ..claim(0, None, None)
        },
        "rhel8-web",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("cannot heartbeat 5; allowed now:"),
        "{e}"
    );
    assert!(matches!(
        heartbeat(None, &claim(0, None, None), "rhel8-web"),
        Err(Refusal::NoDocument { .. })
    ));
}
