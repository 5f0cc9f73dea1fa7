//! Failures and retries: backoff growing to the cap, errors kept at their
//! end, per-stage policies and persistent errors, start-over stages, dead
//! attempts recorded before the stage runs again, and outcomes from builds
//! that never started the attempt.

use super::*;

#[test]
fn three_failures_block_with_growing_backoff() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    w.ok(Action::Complete(0));
    let d = w.ok(fail(5, "packer timed out")).clone();
    assert_eq!((d.status, d.attempts), (Status::Failed, 1));
    assert_eq!(d.retry_at, Some(d.updated_at + Duration::seconds(30)));
    assert_eq!(d.last_error.as_ref().unwrap().message, "packer timed out");
    // The backoff is binding: no start before the retry is due.
    assert_eq!(
        w.refused(Action::Start(5)),
        "rhel8-web is at 5 (kickstart initiated, failed); its retry is due at \
         2026-11-23T12:00:33.000Z (in 29s): start 5 is refused until then (the backoff \
         is binding); a human retries at once with retry 5"
    );
    w.clock += Duration::seconds(29);
    w.ok(Action::Start(5));
    let d = w.ok(fail(5, "again")).clone();
    assert_eq!((d.status, d.attempts), (Status::Failed, 2));
    assert_eq!(d.retry_at, Some(d.updated_at + Duration::seconds(60)));
    let d = w.ok(fail(5, "third")).clone();
    assert_eq!(
        (d.status, d.attempts, d.retry_at),
        (Status::Blocked, 3, None)
    );
    assert_eq!(d.last_error.as_ref().unwrap().message, "third");
    assert_eq!(
        w.refused(Action::Start(5)),
        "rhel8-web is at 5 (kickstart initiated, blocked); cannot start 5; \
         allowed now: retry 5, set (with a reason), cancel, restart"
    );
    // A human retry: pending again, attempts reset, the error kept for context.
    let d = w.ok(Action::Retry(5)).clone();
    assert_eq!((d.status, d.attempts), (Status::Pending, 0));
    assert_eq!(d.last_error.as_ref().unwrap().message, "third");
    // Completing the stage clears it.
    let d = w.ok(Action::Complete(5));
    assert_eq!((d.state, d.attempts, d.last_error.clone()), (10, 0, None));
}

#[test]
fn long_error_messages_keep_their_end() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    let long = format!("{}the real cause", "x".repeat(10_000));
    let d = w.ok(fail(0, &long)).clone();
    let kept = &d.last_error.as_ref().unwrap().message;
    assert_eq!(kept.chars().count(), transition::MAX_ERROR_CHARS);
    assert!(kept.starts_with('…') && kept.ends_with("the real cause"));
    d.verify(&w.ladder).unwrap();
}

#[test]
fn per_state_policy_and_persistent_failures() {
    let mut w = World::new();
    w.retry.states.insert(
        5,
        StageRetry {
            max_attempts: 1,
            ..StageRetry::default()
        },
    );
    w.ok(Action::Init { restart: false });
    w.ok(Action::Complete(0));
    assert_eq!(w.ok(fail(5, "x")).status, Status::Blocked);
    w.ok(Action::Retry(5));
    w.ok(Action::Complete(5));
    let d = w.ok(Action::Fail {
        state: 10,
        error: ErrorInfo::new("license rejected".into(), FailureKind::Persistent),
    });
    assert_eq!((d.status, d.attempts), (Status::Blocked, 1));
}

#[test]
fn a_start_over_stage_goes_back_and_counts_its_failures_across_loops() {
    let mut w = World::new();
    w.retry.states.insert(25, stage(2, Some(10), None));
    at(&mut w, 25);
    w.ok(Action::Start(25));
    let d = w.ok(fail(25, "sshd_config lost the green VM")).clone();
    assert_eq!((d.state, d.status, d.attempts), (10, Status::Failed, 0));
    assert_eq!(d.retry_at, Some(w.clock + Duration::seconds(60)));
    assert_eq!(
        d.last_event().target,
        Some(25),
        "the event names the stage that failed"
    );
    assert_eq!(
        d.last_error.as_ref().unwrap().message,
        "sshd_config lost the green VM"
    );
    // The gate of 10 opens after the backoff; the earlier stages run again.
    assert!(!Condition::state(10).gate_passes(&d, w.clock, &w.retry, None));
    assert!(Condition::state(10).gate_passes(&d, w.clock + Duration::seconds(60), &w.retry, None));
    w.clock += Duration::seconds(60);
    w.ok(Action::Start(10));
    for n in [10, 15, 20] {
        w.ok(Action::Complete(n));
    }
    let d = w.doc().clone();
    assert_eq!(
        (d.state, d.status, d.attempts),
        (25, Status::Pending, 1),
        "its failures counted across loops"
    );
    w.ok(Action::Start(25));
    let d = w.ok(fail(25, "again")).clone();
    assert_eq!(
        (d.state, d.status, d.attempts),
        (25, Status::Blocked, 2),
        "blocked at the stage itself"
    );
    // A human retry resets the count.
    let d = w.ok(Action::Retry(25)).clone();
    assert_eq!((d.status, d.attempts), (Status::Pending, 0));
    w.ok(Action::Start(25));
    let d = w.ok(fail(25, "third")).clone();
    assert_eq!(
        (d.state, d.status),
        (10, Status::Failed),
        "a fresh start-over budget"
    );
}

#[test]
fn a_human_set_or_retry_during_the_loop_resets_the_stage_count() {
    let mut w = World::new();
    w.retry.states.insert(25, stage(2, Some(10), None));
    at(&mut w, 25);
    w.ok(fail(25, "boom"));
    w.ok(Action::Retry(10));
    for n in [10, 15, 20] {
        w.ok(Action::Complete(n));
    }
    assert_eq!(w.doc().attempts, 0);
}

#[test]
fn a_dead_attempt_is_recorded_before_the_stage_starts_again() {
    let mut w = World::new();
    w.retry.states.insert(5, stage(3, None, Some(600)));
    at(&mut w, 5);
    let started = w.ok(Action::Start(5)).clone();
    let gate = Condition::state(5);
    assert!(!gate.gate_passes(&started, w.clock + Duration::seconds(599), &w.retry, None));
    assert!(gate.gate_passes(
        &started,
        started.updated_at + Duration::seconds(600),
        &w.retry,
        None
    ));
    assert!(started.is_dead(started.updated_at + Duration::seconds(600), &w.retry, None));
    w.clock += Duration::seconds(700);
    let d = w.ok(Action::Start(5)).clone();
    let n = d.history.len();
    let (dead, restart) = (&d.history[n - 2], &d.history[n - 1]);
    assert_eq!(
        (dead.action, dead.status, dead.attempt),
        (ActionKind::Fail, Status::Failed, 1)
    );
    assert!(
        dead.error
            .as_ref()
            .unwrap()
            .message
            .contains("attempt 1 timed out: in progress since"),
        "{dead:?}"
    );
    assert_eq!(dead.error.as_ref().unwrap().kind, FailureKind::Transient);
    assert_eq!(
        (restart.action, restart.status, restart.revision),
        (ActionKind::Start, Status::InProgress, dead.revision + 1)
    );
    assert_eq!((d.status, d.attempts), (Status::InProgress, 1));
    // Before the timeout, a start of a stage in progress is a plain start.
    w.clock += Duration::seconds(10);
    let d2 = w.ok(Action::Start(5)).clone();
    assert_eq!((d2.history.len(), d2.attempts), (n + 1, 1));
}

#[test]
fn a_dead_last_attempt_blocks_and_the_start_is_refused() {
    let mut w = World::new();
    w.retry.states.insert(5, stage(1, None, Some(60)));
    at(&mut w, 5);
    w.ok(Action::Start(5));
    w.clock += Duration::seconds(61);
    let u = w.update(Action::Start(5));
    match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
        Outcome::WriteAndRefuse { document, refusal } => {
            assert_eq!((document.status, document.attempts), (Status::Blocked, 1));
            assert!(
                refusal
                    .to_string()
                    .contains("timed out and was the last (max_attempts 1): recorded as blocked"),
                "{refusal}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A start past the stage's timeout records the dead attempt and the new
/// one as two events, with consecutive revisions.
/// (Found by `scripts/mutants`: a change a user would see that no test
/// noticed.)
#[test]
fn a_dead_attempt_then_the_new_start_take_consecutive_revisions() {
    let mut w = World::new();
    w.retry.states.insert(
        5,
        StageRetry {
            timeout: Some(std::time::Duration::from_secs(600)),
            ..StageRetry::default()
        },
    );
    w.ok(Action::Init { restart: false });
    w.ok(Action::Complete(0));
    w.ok(Action::Start(5));
    w.clock += Duration::hours(1);
    let d = w.ok(Action::Start(5)).clone();
    let revisions: Vec<u64> = d.history.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5]);
    assert_eq!(d.revision, 5);
    let attempts: Vec<u32> = d.history[3..].iter().map(|e| e.attempt).collect();
    assert_eq!(
        attempts,
        [1, 2],
        "the dead attempt is failure 1, the new start attempt 2"
    );
}

#[test]
fn an_outcome_from_a_build_that_did_not_start_the_attempt_counts_nothing() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    // `complete 0` right after init: no job starts stage 0, so it counts.
    let u = from(&mut w, "start-build-1", Action::Complete(0));
    w.doc = Some(match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
        Outcome::Write(d) => d,
        o => panic!("{o:?}"),
    });
    let put = |w: &mut World, build: &str, action: Action| {
        let u = from(w, build, action);
        let out = apply(w.doc.as_ref(), &u, &w.rules());
        if let Ok(Outcome::Write(d)) = &out {
            w.doc = Some(d.clone());
        }
        out
    };
    assert!(matches!(
        put(&mut w, "a", Action::Start(5)),
        Ok(Outcome::Write(_))
    ));
    assert!(matches!(
        put(&mut w, "a", fail(5, "boom")),
        Ok(Outcome::Write(_))
    ));
    let before = w.doc.clone();
    // A premature run: its start is refused (the backoff), its hook's
    // outcome counts nothing and says why.
    assert!(put(&mut w, "z", Action::Start(5)).is_err());
    match put(&mut w, "z", fail(5, "start refused")) {
        Ok(Outcome::Ignored(why)) => assert!(
            why.contains("fail 5 from concourse build z counts nothing: it never started stage 5, which is not due until"),
            "{why}"
        ),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        put(&mut w, "z", Action::Complete(5)),
        Ok(Outcome::Ignored(_))
    ));
    assert_eq!(w.doc, before, "nothing counted");
    // Once the retry is due, the next attempt is b's; a's late hook counts
    // nothing, b's outcome counts.
    w.clock += Duration::seconds(60);
    assert!(matches!(
        put(&mut w, "b", Action::Start(5)),
        Ok(Outcome::Write(_))
    ));
    assert!(matches!(
        put(&mut w, "a", Action::Complete(5)),
        Ok(Outcome::Ignored(_))
    ));
    assert!(matches!(
        put(&mut w, "b", Action::Complete(5)),
        Ok(Outcome::Write(_))
    ));
    assert_eq!(w.doc.as_ref().unwrap().state, 10);
    // A human's retry ends the attempt: the build that started it counts
    // nothing after it; one that never started the stage defers it (no
    // count); the CLI's outcome always counts.
    assert!(matches!(
        put(&mut w, "c", Action::Start(10)),
        Ok(Outcome::Write(_))
    ));
    w.ok(Action::Retry(10));
    match put(&mut w, "c", fail(10, "late")) {
        Ok(Outcome::Ignored(why)) => assert!(
            why.contains(
                "the attempt it started at revision 7 is over (a human reset the stage since)"
            ),
            "{why}"
        ),
        o => panic!("{o:?}"),
    }
    let d = match put(&mut w, "d", fail(10, "x")) {
        Ok(Outcome::Write(d)) => d,
        o => panic!("{o:?}"),
    };
    assert_eq!(
        (d.last_event().action, d.status, d.attempts),
        (ActionKind::Defer, Status::Pending, 0)
    );
    w.ok(fail(10, "from the CLI"));
    assert_eq!(w.doc.as_ref().unwrap().attempts, 1);
}
