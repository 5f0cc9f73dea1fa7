//! Gates, next steps and who needs a human.

use super::*;

#[test]
fn gates_and_next_steps() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    w.ok(Action::Complete(0));
    let now = w.clock;
    let gate = Condition::state(5);
    assert!(gate.gate_passes(w.doc(), now, &w.retry, None));
    assert!(!Condition::state(10).gate_passes(w.doc(), now, &w.retry, None));
    assert_eq!(NextStep::of(w.doc()), NextStep::Run);
    assert_eq!(NextStep::live(w.doc(), now), NextStep::Run);
    w.ok(Action::Start(5));
    assert!(
        !gate.gate_passes(w.doc(), w.clock, &w.retry, None),
        "never while in progress"
    );
    let d = w.ok(fail(5, "x")).clone();
    let due = d.retry_at.unwrap();
    assert!(!gate.gate_passes(&d, due - Duration::milliseconds(1), &w.retry, None));
    assert_eq!(
        NextStep::live(&d, due - Duration::milliseconds(1)),
        NextStep::Wait
    );
    assert!(gate.gate_passes(&d, due, &w.retry, None));
    assert_eq!(NextStep::live(&d, due), NextStep::Retry);
    // What `in` writes does not depend on the time.
    assert_eq!(NextStep::of(&d), NextStep::Retry);
    w.ok(fail(5, "y"));
    let d = w.ok(fail(5, "z")).clone();
    assert_eq!(d.status, Status::Blocked);
    assert!(
        !gate.gate_passes(&d, due + Duration::days(1), &w.retry, None),
        "never when blocked"
    );
    assert_eq!(NextStep::of(&d), NextStep::Blocked);
    assert!(Condition::min_state(5).gate_passes(&d, now, &w.retry, None));
    assert!(Condition::min_state(0).gate_passes(&d, now, &w.retry, None));
    assert!(!Condition::min_state(10).gate_passes(&d, now, &w.retry, None));
    assert!(Condition::state(5).require(&d));
}

#[test]
fn a_blocked_gate_passes_only_for_a_build_that_needs_a_human() {
    let mut w = World::new();
    w.retry.states.insert(25, stage(1, None, None));
    at(&mut w, 25);
    let any = Condition {
        at: At::Any,
        status: Some(Status::Blocked),
        timer: false,
        leaked: false,
    };
    let here = Condition {
        at: At::State(25),
        status: Some(Status::Blocked),
        timer: false,
        leaked: false,
    };
    let elsewhere = Condition {
        at: At::MinState(30),
        status: Some(Status::Blocked),
        timer: false,
        leaked: false,
    };
    assert!(!any.gate_passes(w.doc(), w.clock, &w.retry, None));
    let d = w.ok(fail(25, "fatal")).clone();
    assert_eq!(d.status, Status::Blocked, "max_attempts 1: a human's stage");
    assert!(any.gate_passes(&d, w.clock, &w.retry, None));
    assert!(here.gate_passes(&d, w.clock, &w.retry, None));
    assert!(!elsewhere.gate_passes(&d, w.clock, &w.retry, None));
    assert_eq!(any.to_string(), "status: blocked");
    assert_eq!(here.to_string(), "status: blocked, state: 25");
    assert!(here.require(&d) && !Condition::state(30).require(&d));
}

/// Who needs a human, and what unblocks it.
#[test]
fn who_needs_a_human() {
    let mut w = World::new();
    w.retry.states.insert(10, approval_stage(3, None));
    w.retry.states.insert(
        5,
        StageRetry {
            heartbeat_timeout: Some(std::time::Duration::from_secs(60)),
            ..stage(1, None, None)
        },
    );
    at(&mut w, 5);
    assert_eq!(needs_human(w.doc(), &w.retry, None, w.clock), None);
    let mut u = w.update(Action::Start(5));
    u.by.pipeline = Some("rhel8-aws".into());
    u.by.job = Some("kickstart".into());
    w.doc = match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
        Outcome::Write(d) => Some(d),
        o => panic!("{o:?}"),
    };
    assert_eq!(needs_human(w.doc(), &w.retry, None, w.clock), None, "alive");
    let stale = needs_human(w.doc(), &w.retry, None, w.clock + Duration::seconds(61)).unwrap();
    assert_eq!(stale.kind, NeedKind::Stale);
    assert!(
        stale
            .unblock
            .contains("fly trigger-job -j rhel8-aws/kickstart"),
        "{}",
        stale.unblock
    );
    let d = w
        .ok(Action::Fail {
            state: 5,
            error: ErrorInfo {
                rule: Some("persistent_errors: (?i)license".into()),
                ..ErrorInfo::new("license expired".into(), FailureKind::Persistent)
            },
        })
        .clone();
    let blocked = needs_human(&d, &w.retry, None, w.clock).unwrap();
    assert_eq!(
        (blocked.kind, blocked.why.as_str(), blocked.unblock.as_str()),
        (
            NeedKind::Blocked,
            "a persistent error (matched persistent_errors: (?i)license): license expired",
            "fix the cause, then: build-state retry rhel8-web 5"
        )
    );
    w.ok(Action::Retry(5));
    w.ok(Action::Start(5));
    let d = w.ok(fail(5, "ssh timeout")).clone();
    assert!(
        needs_human(&d, &w.retry, None, w.clock)
            .unwrap()
            .why
            .starts_with("attempts exhausted (1 of 1): ssh timeout")
    );
    w.ok(Action::Retry(5));
    let d = w.ok(Action::Complete(5)).clone();
    let waiting = needs_human(&d, &w.retry, None, w.clock).unwrap();
    assert_eq!(waiting.kind, NeedKind::AwaitingApproval);
    assert_eq!(waiting.since, d.updated_at);
    assert!(
        waiting
            .unblock
            .starts_with("build-state approve rhel8-web 10 --reason")
    );
}
