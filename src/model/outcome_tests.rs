//! The outcomes of stage jobs at their failure edges: a build that never
//! started its stage (deferred, or a dead attempt recorded), a recorded
//! success that stays one, a replay after another write, a stage due for
//! long that no build starts (overdue: it needs a human), and what a
//! heartbeat from a stale `state.env` hears.

use super::tests::{World, at, fail, from, stage};
use super::*;
use chrono::Duration;

/// Applies a Concourse build's update and keeps what it wrote.
fn put(w: &mut World, build: &str, action: Action) -> Result<Outcome, Refusal> {
    let u = from(w, build, action);
    let out = apply(w.doc.as_ref(), &u, &w.rules());
    match &out {
        Ok(Outcome::Write(d)) | Ok(Outcome::WriteAndRefuse { document: d, .. }) => {
            assert_eq!(d.verify(&w.ladder), Ok(()), "{d:#?}");
            w.doc = Some(d.clone());
        }
        _ => {}
    }
    out
}

#[track_caller]
fn written(out: Result<Outcome, Refusal>) -> Document {
    match out {
        Ok(Outcome::Write(d)) => d,
        o => panic!("{o:?}"),
    }
}

#[track_caller]
fn ignored(out: Result<Outcome, Refusal>) -> String {
    match out {
        Ok(Outcome::Ignored(why)) => why,
        o => panic!("{o:?}"),
    }
}

/// A first attempt whose build fails before its start lands: nothing
/// counted, a new revision, the gate shut until the backoff has passed and
/// open after it; a replay of the same put after another write says so.
#[test]
fn a_build_that_never_started_its_stage_defers_it() {
    let mut w = World::new();
    w.retry.states.insert(70, stage(1, None, Some(3600)));
    at(&mut w, 70);
    let before = w.doc().clone();
    let d = written(put(
        &mut w,
        "b1",
        fail(70, "git: could not read from remote"),
    ));
    let e = d.last_event();
    assert_eq!(
        (e.action, d.state, d.status, d.attempts, d.revision),
        (
            ActionKind::Defer,
            70,
            Status::Pending,
            0,
            before.revision + 1
        )
    );
    assert_eq!(
        e.error.as_ref().unwrap().message,
        "git: could not read from remote"
    );
    assert_eq!(d.last_error, None, "a deferral is not the stage's failure");
    let due = d.retry_at.expect("due again after the backoff");
    assert_eq!(due, e.at + Duration::seconds(60));
    assert!(
        e.reason.as_ref().unwrap().starts_with(
            "concourse build b1 failed before its start 70 landed (a get or the start put): it never ran the stage, so nothing is counted; stage 70 is due again at "
        ),
        "{:?}",
        e.reason
    );
    let gate = Condition::state(70);
    assert!(
        !gate.gate_passes(&d, e.at, &w.retry, None),
        "shut until due"
    );
    assert!(gate.gate_passes(&d, due, &w.retry, None), "open once due");
    assert_eq!(NextStep::live(&d, e.at), NextStep::Wait);
    assert_eq!(NextStep::live(&d, due), NextStep::Run);
    // Another build that never started it, before it is due: early.
    w.doc = Some(d.clone());
    w.clock = e.at + Duration::seconds(10);
    let why = ignored(put(&mut w, "b3", fail(70, "early")));
    assert!(
        why.contains("fail 70 from concourse build b3 counts nothing: it never started stage 70, which is not due until"),
        "{why}"
    );
    // A human's build may start at once (a deferral binds no one); b1's
    // put again (attempts:) after that write: already answered.
    written(put(&mut w, "b2", Action::Start(70)));
    let why = ignored(put(&mut w, "b1", fail(70, "again")));
    assert!(why.contains("its defer at revision"), "{why}");
    assert_eq!(w.doc().attempts, 0);
}

/// A retry whose build fails before its start lands: the stage stays
/// failed with its count, due again after its backoff.
#[test]
fn a_retry_that_never_started_defers_the_failed_stage() {
    let mut w = World::new();
    w.retry.states.insert(15, stage(3, None, None));
    at(&mut w, 15);
    written(put(&mut w, "a", Action::Start(15)));
    written(put(&mut w, "a", fail(15, "ansible failed")));
    let failed = w.doc().clone();
    // Before the retry is due, b is early: nothing at all.
    ignored(put(&mut w, "b", fail(15, "start refused")));
    assert_eq!(w.doc(), &failed);
    w.clock = failed.retry_at.unwrap();
    let d = written(put(&mut w, "b", fail(15, "the store was down")));
    assert_eq!(
        (d.last_event().action, d.status, d.attempts),
        (ActionKind::Defer, Status::Failed, 1)
    );
    assert_eq!(d.last_error, failed.last_error, "the stage's error stays");
    assert!(d.retry_at.unwrap() > w.clock);
    // The start after it is not bound by the deferral.
    written(put(&mut w, "c", Action::Start(15)));
    assert_eq!((w.doc().status, w.doc().attempts), (Status::InProgress, 1));
}

/// The success put landed, yet the build ran its failure hook (the put's
/// answer was lost): the stage stays complete.
#[test]
fn a_recorded_success_stays_a_success() {
    let mut w = World::new();
    at(&mut w, 25);
    written(put(&mut w, "a", Action::Start(25)));
    written(put(&mut w, "a", Action::Complete(25)));
    let done = w.doc().clone();
    let why = ignored(put(&mut w, "a", fail(25, "the on_success put failed")));
    assert!(
        why.contains("fail 25 from concourse build a counts nothing: this build recorded stage 25 complete at revision"),
        "{why}"
    );
    // Also once the next stage started.
    written(put(&mut w, "b", Action::Start(30)));
    ignored(put(&mut w, "a", fail(25, "late")));
    assert_eq!(w.doc().history.len(), done.history.len() + 1);
}

/// The gate let a build in for a dead attempt, and it failed before its
/// start landed: the dead attempt is recorded (as its start would have),
/// the build's own failure is not; with no attempt left, blocked, and the
/// put does not fail.
#[test]
fn a_build_that_never_started_records_the_dead_attempt_it_was_let_in_for() {
    let mut w = World::new();
    w.retry.states.insert(35, stage(2, None, Some(600)));
    at(&mut w, 35);
    written(put(&mut w, "a", Action::Start(35)));
    w.clock += Duration::seconds(601);
    let d = written(put(&mut w, "b", fail(35, "git blip")));
    let e = d.last_event();
    assert_eq!(
        (e.action, d.status, d.attempts),
        (ActionKind::Fail, Status::Failed, 1)
    );
    assert!(
        e.error
            .as_ref()
            .unwrap()
            .message
            .contains("attempt 1 timed out")
    );
    assert_eq!(
        e.reason.as_deref(),
        Some(
            "recorded for concourse build b, which never started stage 35: its own failure counts nothing"
        )
    );
    assert!(d.retry_at.is_some_and(|t| t > e.at));
    // Its last attempt: blocked, and the put is not refused.
    w.clock = d.retry_at.unwrap();
    written(put(&mut w, "c", Action::Start(35)));
    w.clock += Duration::seconds(601);
    let d = written(put(&mut w, "e", fail(35, "git blip")));
    assert_eq!((d.status, d.attempts), (Status::Blocked, 2));
    // While the attempt is alive, such a build counts nothing.
    let mut w = World::new();
    w.retry.states.insert(35, stage(2, None, Some(600)));
    at(&mut w, 35);
    written(put(&mut w, "a", Action::Start(35)));
    ignored(put(&mut w, "b", fail(35, "early")));
}

/// A stage due for longer than twice its timeout with no start needs a
/// human, and the blocked gate (the alert job's) passes for it; deferrals
/// do not reset the time it became due.
#[test]
fn a_stage_due_for_long_with_no_start_is_overdue() {
    let mut w = World::new();
    w.retry.states.insert(15, stage(3, None, Some(1800)));
    at(&mut w, 15);
    let due = w.doc().updated_at;
    let alert = Condition {
        at: At::Any,
        status: Some(Status::Blocked),
        timer: false,
        leaked: false,
    };
    let hour = due + Duration::seconds(3599);
    assert!(needs_human(w.doc(), &w.retry, None, hour).is_none());
    assert!(!alert.gate_passes(w.doc(), hour, &w.retry, None));
    w.clock = due + Duration::seconds(1200);
    written(put(&mut w, "b", fail(15, "git blip")));
    w.clock += Duration::seconds(120);
    written(put(&mut w, "c", fail(15, "git blip")));
    let later = due + Duration::seconds(3600);
    let need = needs_human(w.doc(), &w.retry, None, later).expect("overdue");
    assert_eq!(need.kind, NeedKind::Overdue);
    assert_eq!(need.since, later);
    assert!(
        need.why.contains("has been due since")
            && need
                .why
                .contains("2 builds tried and failed before their start landed"),
        "{}",
        need.why
    );
    assert!(alert.gate_passes(w.doc(), later, &w.retry, None));
    assert!(!Condition::state(15).gate_passes(w.doc(), w.clock, &w.retry, None));
    // A start ends it.
    w.clock = later;
    written(put(&mut w, "d", Action::Start(15)));
    assert!(needs_human(w.doc(), &w.retry, None, later).is_none());
    assert!(!alert.gate_passes(w.doc(), later, &w.retry, None));
    // Without a timeout: two hours.
    assert_eq!(
        attention::overdue_after(&RetryPolicy::default(), 40),
        std::time::Duration::from_secs(7200)
    );
}

/// `state.env`'s attempt is the one its revision shows in progress (what a
/// start put's implicit get gives the task), and a heartbeat that names
/// another one hears which attempt is in progress and the likely cause.
#[test]
fn a_heartbeat_from_a_stale_state_env_says_so() {
    let mut w = World::new();
    at(&mut w, 5);
    assert_eq!(w.doc().next_attempt(), 1);
    written(put(&mut w, "a", Action::Start(5)));
    assert_eq!(w.doc().next_attempt(), 1, "the attempt in progress");
    written(put(&mut w, "a", fail(5, "x")));
    w.clock = w.doc().retry_at.unwrap();
    written(put(&mut w, "b", Action::Start(5)));
    assert_eq!(w.doc().next_attempt(), 2);
    let claim = Claim {
        state: 5,
        run: Some(1),
        attempt: Some(1),
        by: Actor::default(),
        at: w.clock,
    };
    let err = heartbeat(w.doc.as_ref(), &claim, "rhel8-web")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("it is for attempt 1, and attempt 2 is in progress (if this worker is alive, the likely cause is a stale state.env"),
        "{err}"
    );
}

/// A start-over loop that sends the build back to an approval stage whose
/// approval is gone (a `set` skipped it): it waits for one there, and is
/// not started without it (found by the property test).
#[test]
fn a_loop_back_to_an_unapproved_approval_stage_waits_for_approval() {
    let mut w = World::new();
    w.retry.states.insert(
        0,
        StageRetry {
            approval: true,
            ..stage(3, None, None)
        },
    );
    w.retry.states.insert(90, stage(3, Some(0), None));
    w.ok(Action::Init { restart: false });
    w.ok(Action::Set {
        state: 90,
        status: Status::Pending,
        reason: "skip".into(),
    });
    let d = w.ok(fail(90, "x"));
    assert_eq!((d.state, d.status), (0, Status::AwaitingApproval));
    assert!(w.refused(Action::Start(0)).contains("cannot start 0"));
}

/// The command that unblocks a stale stage names its job as one shell word:
/// pasted, it runs `fly trigger-job` and nothing the job's name holds; a
/// name with a control character is left out.
#[test]
fn the_unblock_command_is_quoted_for_a_shell() {
    let mut w = World::new();
    w.retry.states.insert(5, stage(3, None, Some(60)));
    at(&mut w, 5);
    let mut u = from(&mut w, "b1", Action::Start(5));
    u.by.pipeline = Some("p".into());
    u.by.job = Some("k; curl http://127.0.0.1:9/x | sh #".into());
    w.doc = Some(written(apply(w.doc.as_ref(), &u, &w.rules())));
    let later = w.clock + Duration::seconds(61);
    let need = needs_human(w.doc(), &w.retry, None, later).unwrap();
    assert!(
        need.unblock
            .contains("fly trigger-job -j 'p/k; curl http://127.0.0.1:9/x | sh #' runs it now"),
        "{}",
        need.unblock
    );
    let mut u = from(&mut w, "b2", Action::Start(5));
    u.by.pipeline = Some("p".into());
    u.by.job = Some("k\u{1b}]0;owned\u{7}".into());
    w.doc = Some(written(apply(w.doc.as_ref(), &u, &w.rules())));
    let need = needs_human(w.doc(), &w.retry, None, w.clock + Duration::seconds(61)).unwrap();
    assert!(
        !need.unblock.contains("fly trigger-job"),
        "{}",
        need.unblock
    );
    assert!(!need.unblock.contains('\u{1b}'));
}

/// A heartbeat outside a Concourse build names its run and attempt (one
/// that names neither could be a zombie keeping a dead attempt alive); a
/// Concourse build's counts only when it started the attempt, whoever else
/// did (the CLI too).
#[test]
fn a_heartbeat_must_say_whose_attempt_it_is() {
    let mut w = World::new();
    at(&mut w, 5);
    w.ok(Action::Start(5));
    let claim = |run, attempt, build: Option<&str>| Claim {
        state: 5,
        run,
        attempt,
        by: Actor {
            build_id: build.map(str::to_string),
            ..Actor::default()
        },
        at: w.clock,
    };
    let err = heartbeat(w.doc.as_ref(), &claim(None, None, None), "rhel8-web")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside a Concourse build a heartbeat names the run and the attempt it is for (--run 1 --attempt 1"),
        "{err}"
    );
    assert!(heartbeat(w.doc.as_ref(), &claim(Some(1), None, None), "rhel8-web").is_err());
    assert!(heartbeat(w.doc.as_ref(), &claim(Some(1), Some(1), None), "rhel8-web").is_ok());
    // The CLI started this attempt: no Concourse build's heartbeat counts.
    let err = heartbeat(w.doc.as_ref(), &claim(None, None, Some("b7")), "rhel8-web")
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not start attempt 1"), "{err}");
}

/// Notes and reasons are capped like errors: a caller cannot fill a build
/// to its size cap with free text.
#[test]
fn notes_and_reasons_are_capped() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    let big = "n".repeat(1_000_000);
    let mut u = w.update(Action::Complete(0));
    u.note = Some(big.clone());
    let d = written(apply(w.doc.as_ref(), &u, &w.rules()));
    let note = d.last_event().note.as_ref().unwrap();
    assert_eq!(note.chars().count(), transition::MAX_ERROR_CHARS);
    assert!(note.ends_with('…'));
    w.doc = Some(d);
    let d = w.ok(Action::Cancel { reason: big });
    assert_eq!(
        d.last_event().reason.as_ref().unwrap().chars().count(),
        transition::MAX_ERROR_CHARS
    );
}
