//! Unit and property tests of the pure state model.

use super::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use std::collections::BTreeMap;

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

pub(super) struct World {
    pub(super) ladder: Ladder,
    pub(super) retry: RetryPolicy,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) doc: Option<Document>,
    pub(super) clock: DateTime<Utc>,
}

impl World {
    pub(super) fn new() -> World {
        World {
            ladder: Ladder::default(),
            retry: RetryPolicy::default(),
            labels: BTreeMap::from([("cloud_provider".to_string(), "aws".to_string())]),
            doc: None,
            clock: t0(),
        }
    }

    pub(super) fn rules(&self) -> Rules<'_> {
        Rules {
            build_id: "rhel8-web",
            ladder: &self.ladder,
            retry: &self.retry,
            labels: &self.labels,
        }
    }

    pub(super) fn update(&mut self, action: Action) -> Update {
        self.clock += Duration::seconds(1);
        // The CLI's actor: every outcome counts, nothing is a replay
        // (tests of Concourse builds set `by.build_id`).
        Update::new(action, Actor::default(), self.clock)
    }

    pub(super) fn try_do(&mut self, action: Action) -> Result<Outcome, Refusal> {
        let u = self.update(action);
        let out = apply(self.doc.as_ref(), &u, &self.rules())?;
        match &out {
            Outcome::Write(d) => self.doc = Some(d.clone()),
            Outcome::Restart { document, .. } | Outcome::WriteAndRefuse { document, .. } => {
                self.doc = Some(document.clone())
            }
            Outcome::Unchanged | Outcome::Ignored(_) => {}
        }
        if let Some(d) = &self.doc {
            // Every document the model writes verifies (its summary is the
            // fold of its history, every event's attempt is right).
            assert_eq!(d.verify(&self.ladder), Ok(()), "{d:#?}");
        }
        Ok(out)
    }

    #[track_caller]
    pub(super) fn ok(&mut self, action: Action) -> &Document {
        self.try_do(action).expect("transition refused");
        self.doc.as_ref().unwrap()
    }

    #[track_caller]
    pub(super) fn refused(&mut self, action: Action) -> String {
        let before = self.doc.clone();
        let err = self
            .try_do(action)
            .expect_err("transition allowed")
            .to_string();
        assert_eq!(before, self.doc, "a refusal changes nothing");
        err
    }

    pub(super) fn doc(&self) -> &Document {
        self.doc.as_ref().unwrap()
    }
}

pub(super) fn fail(state: Code, message: &str) -> Action {
    Action::Fail {
        state,
        error: ErrorInfo::new(message.into(), FailureKind::Transient),
    }
}

#[test]
fn full_ladder_to_delivered() {
    let mut w = World::new();
    let d = w.ok(Action::Init { restart: false });
    assert_eq!(
        (d.state, d.status, d.revision, d.run),
        (0, Status::Pending, 1, 1)
    );
    assert_eq!(d.labels["cloud_provider"], "aws");
    for code in (0..100).step_by(5) {
        w.ok(Action::Start(code));
        assert_eq!(w.doc().status, Status::InProgress);
        let d = w.ok(Action::Complete(code));
        if code < 95 {
            assert_eq!((d.state, d.status), (code + 5, Status::Pending));
        }
    }
    let d = w.doc();
    assert_eq!((d.state, d.status), (100, Status::Completed));
    assert_eq!(d.state_name, "complete and delivered");
    assert_eq!(d.revision, 41);
    assert_eq!(d.history.len(), 41);
    d.verify(&w.ladder).unwrap();
    // Nothing but set/restart moves a delivered build.
    assert_eq!(
        w.refused(Action::Start(100)),
        "rhel8-web is at 100 (complete and delivered, completed); cannot start 100; \
         allowed now: init with restart: true, set (with a reason), restart"
    );
}

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
fn refusals_name_the_build_and_what_is_allowed() {
    let mut w = World::new();
    assert_eq!(
        w.refused(Action::Complete(0)),
        "rhel8-web has no state yet; cannot complete 0 (put `init: true` first)"
    );
    w.ok(Action::Init { restart: false });
    for code in [0, 5, 10, 15, 20, 25] {
        w.ok(Action::Complete(code));
    }
    assert_eq!(
        w.refused(Action::Complete(25)),
        "rhel8-web is at 30 (monitoring setup, pending); cannot complete 25; \
         allowed now: start 30, complete 30, fail 30, set (with a reason), cancel, restart"
    );
    assert_eq!(
        w.refused(Action::Retry(30)),
        "rhel8-web is at 30 (monitoring setup, pending); cannot retry 30; \
         allowed now: start 30, complete 30, fail 30, set (with a reason), cancel, restart"
    );
    assert_eq!(
        w.refused(Action::Start(33)),
        "state 33 is not on the ladder (0, 5, ..., 100 (steps of 5))"
    );
    assert_eq!(
        w.refused(Action::Init { restart: false }),
        "rhel8-web is at 30 (monitoring setup, pending); cannot init; \
         allowed now: start 30, complete 30, fail 30, set (with a reason), cancel, restart"
    );
    // A new commit mid-run: when its run starts, said plainly.
    assert_eq!(
        w.refused(Action::Init { restart: true }),
        "rhel8-web is at 30 (monitoring setup, pending); run 1 is under way, so init with \
         restart starts no new run: that happens once this run is delivered or cancelled \
         (run the job again then, or cancel the build to start over now)"
    );
    assert!(
        w.refused(Action::Set {
            state: 10,
            status: Status::Pending,
            reason: " ".into()
        })
        .ends_with("set 10 needs a reason (a manual override is recorded with why)")
    );
    assert!(
        w.refused(Action::Set {
            state: 10,
            status: Status::Completed,
            reason: "x".into()
        })
        .ends_with("only the final state 100 (complete and delivered) can be completed")
    );
}

#[test]
fn init_is_idempotent_at_the_start_and_restart_archives() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    assert_eq!(
        w.try_do(Action::Init { restart: false }),
        Ok(Outcome::Unchanged)
    );
    w.ok(Action::Complete(0));
    w.ok(Action::Cancel {
        reason: "superseded".into(),
    });
    assert_eq!(w.doc().status, Status::Cancelled);
    assert_eq!(w.doc().last_event().reason.as_deref(), Some("superseded"));
    let before = w.doc().clone();
    match w.try_do(Action::Init { restart: true }).unwrap() {
        Outcome::Restart { archive, document } => {
            assert_eq!(archive, before);
            assert_eq!((document.run, document.revision), (2, before.revision + 1));
            assert_eq!((document.state, document.status), (0, Status::Pending));
            assert_eq!(document.history.len(), 1);
            assert_eq!(document.last_event().action, ActionKind::Init);
            document.verify(&w.ladder).unwrap();
        }
        other => panic!("expected a restart, got {other:?}"),
    }
}

#[test]
fn a_replayed_put_of_the_same_build_is_a_no_op() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    let mut u = w.update(Action::Start(0));
    u.by.build_id = Some("b1".into());
    let d = match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
        Outcome::Write(d) => d,
        o => panic!("{o:?}"),
    };
    assert_eq!(apply(Some(&d), &u, &w.rules()), Ok(Outcome::Unchanged));
    // The same action from another build is a new event.
    let mut other = u.clone();
    other.by.build_id = Some("another".into());
    assert!(matches!(
        apply(Some(&d), &other, &w.rules()),
        Ok(Outcome::Write(_))
    ));
    // Without a Concourse build (the CLI) nothing counts as a replay.
    let mut cli = u.clone();
    cli.by = Actor {
        user: Some("alice".into()),
        ..Actor::default()
    };
    assert!(matches!(
        apply(Some(&d), &cli, &w.rules()),
        Ok(Outcome::Write(_))
    ));
}

#[test]
fn vars_merge_per_event() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    let mut u = w.update(Action::Complete(0));
    u.vars = serde_json::json!({"ami": "ami-1", "region": "eu-west-1"})
        .as_object()
        .unwrap()
        .clone();
    let Outcome::Write(d) = apply(w.doc.as_ref(), &u, &w.rules()).unwrap() else {
        panic!()
    };
    let mut u2 = w.update(Action::Start(5));
    u2.vars = serde_json::json!({"ami": "ami-2"})
        .as_object()
        .unwrap()
        .clone();
    let Outcome::Write(d) = apply(Some(&d), &u2, &w.rules()).unwrap() else {
        panic!()
    };
    assert_eq!(
        d.vars,
        *serde_json::json!({"ami": "ami-2", "region": "eu-west-1"})
            .as_object()
            .unwrap()
    );
    assert_eq!(d.at_revision(2, &w.ladder).unwrap().vars["ami"], "ami-1");
}

#[test]
fn a_summary_that_disagrees_with_its_history_is_corrupt() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    w.ok(Action::Complete(0));
    let mut d = w.doc().clone();
    d.verify(&w.ladder).unwrap();
    d.state = 25;
    assert_eq!(
        d.verify(&w.ladder).unwrap_err().to_string(),
        "the document is corrupt: its summary disagrees with its history: state is 25 but its history says 5"
    );
    let mut d = w.doc().clone();
    d.history[1].revision = 7;
    assert!(
        d.verify(&w.ladder)
            .unwrap_err()
            .to_string()
            .contains("revision 1 is followed by 7")
    );
    let mut d = w.doc().clone();
    d.history.clear();
    assert!(
        d.verify(&w.ladder)
            .unwrap_err()
            .to_string()
            .contains("history is empty")
    );
    let mut d = w.doc().clone();
    d.schema_version = 2;
    assert!(
        d.verify(&w.ladder)
            .unwrap_err()
            .to_string()
            .contains("schema_version 2")
    );
}

#[test]
fn extend_accepts_only_documents_that_extend_the_history() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    let stored = w.doc().clone();
    w.ok(Action::Start(0));
    w.ok(Action::Complete(0));
    let longer = w.doc().clone();
    let rules = w.rules();
    assert_eq!(
        extend(Some(&stored), longer.clone(), &rules),
        Ok(Outcome::Write(longer.clone()))
    );
    assert_eq!(
        extend(Some(&longer), longer.clone(), &rules),
        Ok(Outcome::Unchanged)
    );
    let err = extend(Some(&longer), stored.clone(), &rules)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not extend the stored history"), "{err}");
    let mut forged = longer.clone();
    forged.status = Status::Completed;
    let err = extend(Some(&stored), forged, &rules)
        .unwrap_err()
        .to_string();
    assert!(err.contains("summary disagrees"), "{err}");
}

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

fn arb_action() -> impl Strategy<Value = Action> {
    let code = (0u32..=20).prop_map(|i| i * 5);
    prop_oneof![
        any::<bool>().prop_map(|restart| Action::Init { restart }),
        code.clone().prop_map(Action::Start),
        code.clone().prop_map(Action::Complete),
        (code.clone(), any::<bool>()).prop_map(|(state, persistent)| Action::Fail {
            state,
            error: ErrorInfo::new(
                "boom".into(),
                if persistent {
                    FailureKind::Persistent
                } else {
                    FailureKind::Transient
                },
            ),
        }),
        code.clone().prop_map(Action::Retry),
        (code.clone(), any::<bool>()).prop_map(|(state, why)| Action::Approve {
            state,
            reason: why.then(|| "checked".to_string()),
        }),
        (code, 0usize..7).prop_map(|(state, s)| Action::Set {
            state,
            status: Status::ALL[s],
            reason: "manual".into(),
        }),
        Just(Action::Cancel {
            reason: "stop".into()
        }),
        Just(Action::Restart),
    ]
}

/// A random policy: a default, some ranges and codes of their own, some
/// start-over stages (back to an earlier code) and timeouts.
fn arb_policy() -> impl Strategy<Value = RetryPolicy> {
    let stage = (
        1u32..4,
        proptest::option::of(0u32..20),
        proptest::option::of(1u64..120),
        any::<bool>(),
    );
    (
        stage.clone(),
        proptest::collection::vec((0u32..=20, 0u32..4, stage), 0..5),
    )
        .prop_map(|((max, _, timeout, _), stages)| {
            let make = |max: u32,
                        resume: Option<u32>,
                        timeout: Option<u64>,
                        at: u32,
                        approval: bool| StageRetry {
                max_attempts: max,
                backoff: std::time::Duration::from_secs(10),
                resume_from: resume.map(|r| r * 5).filter(|r| *r < at),
                timeout: timeout.map(std::time::Duration::from_secs),
                approval,
                heartbeat_timeout: timeout.map(|t| std::time::Duration::from_secs(t / 2 + 1)),
                ..StageRetry::default()
            };
            let mut p = RetryPolicy {
                default: make(max, None, timeout, 0, false),
                ..RetryPolicy::default()
            };
            for (i, span, (max, resume, timeout, approval)) in stages {
                let (lo, hi) = (i * 5, (i + span).min(20) * 5);
                if span == 0 {
                    p.states
                        .insert(lo, make(max, resume, timeout, lo, approval));
                } else if !p.ranges.iter().any(|(a, b, _)| lo <= *b && *a <= hi) {
                    p.ranges
                        .push((lo, hi, make(max, resume, timeout, lo, approval)));
                }
            }
            p
        })
}

proptest! {
    /// Random action sequences under random policies (start-over stages,
    /// timeouts, ranges), at random times, never break the fold invariant:
    /// revisions rise by one per event and across runs, refusals change
    /// nothing, every revision of the run can be rebuilt exactly as it was
    /// written, and a start-over stage cannot send the build back forever.
    #[test]
    fn random_sequences_keep_the_invariants(
        actions in proptest::collection::vec(arb_action(), 1..60),
        biased in proptest::collection::vec(any::<bool>(), 60),
        waits in proptest::collection::vec(0i64..200, 60),
        policy in arb_policy(),
    ) {
        let mut w = World::new();
        w.retry = policy;
        w.ok(Action::Init { restart: false });
        let mut snapshots = vec![w.doc().clone()];
        for (i, action) in actions.into_iter().enumerate() {
            // Half the time, aim the action at the current state so that most
            // sequences go somewhere instead of being refused.
            let action = match (biased[i], action) {
                (true, Action::Start(_)) => Action::Start(w.doc().state),
                (true, Action::Complete(_)) => Action::Complete(w.doc().state),
                (true, Action::Retry(_)) => Action::Retry(w.doc().state),
                (true, Action::Fail { error, .. }) => Action::Fail { state: w.doc().state, error },
                (true, Action::Approve { reason, .. }) => Action::Approve { state: w.doc().state, reason },
                (_, a) => a,
            };
            w.clock += Duration::seconds(waits[i]);
            let before = w.doc().clone();
            match w.try_do(action) {
                Err(_) => prop_assert_eq!(&before, w.doc()),
                Ok(Outcome::Unchanged | Outcome::Ignored(_)) => prop_assert_eq!(&before, w.doc()),
                Ok(Outcome::Write(_) | Outcome::WriteAndRefuse { .. }) => {
                    let d = w.doc();
                    // One event, or two for a dead attempt and its restart.
                    let added = d.history.len() - before.history.len();
                    prop_assert!(added == 1 || added == 2);
                    prop_assert_eq!(d.revision, before.revision + added as u64);
                    prop_assert_eq!(d.run, before.run);
                    prop_assert_eq!(&d.history[..before.history.len()], &before.history[..]);
                    for (k, e) in d.history[before.history.len()..].iter().enumerate() {
                        prop_assert_eq!(e.revision, before.revision + 1 + k as u64);
                        if k + 1 < added {
                            // The dead attempt: a transient failure at the stage.
                            prop_assert_eq!(e.action, ActionKind::Fail);
                            let rebuilt = d.at_revision(e.revision, &w.ladder).unwrap();
                            snapshots.push(rebuilt);
                        }
                    }
                    snapshots.push(d.clone());
                }
                Ok(Outcome::Restart { archive, document }) => {
                    prop_assert_eq!(&archive, &before);
                    prop_assert_eq!(document.revision, before.revision + 1);
                    prop_assert_eq!(document.run, before.run + 1);
                    snapshots = vec![document];
                }
            }
            let d = w.doc();
            prop_assert!(d.verify(&w.ladder).is_ok(), "{:?}", d.verify(&w.ladder));
            // Start-over failures of a stage since a human reset stay below
            // its max: the next one blocks at the stage itself.
            let mut loops: BTreeMap<u32, u32> = BTreeMap::new();
            for e in &d.history {
                if matches!(e.action, ActionKind::Retry | ActionKind::Set | ActionKind::Init | ActionKind::Restart) {
                    loops.clear();
                }
                if let (ActionKind::Fail, Some(t)) = (e.action, e.target)
                    && t != e.state
                {
                    *loops.entry(t).or_default() += 1;
                }
            }
            for (stage, n) in loops {
                prop_assert!(n < w.retry.for_state(stage).max_attempts, "stage {} sent the build back {} times", stage, n);
            }
            prop_assert!(d.status != Status::Completed || d.state == 100);
            // Only a stage with an approval policy waits for one (a `set`
            // may say so explicitly on any stage).
            prop_assert!(
                d.status != Status::AwaitingApproval
                    || w.retry.for_state(d.state).approval
                    || d.last_event().action == ActionKind::Set
            );
            // A stage with an approval policy is never started before an
            // approval since it was last reset.
            if d.last_event().action == ActionKind::Start && w.retry.for_state(d.state).approval {
                let n = d.state;
                let resets = |e: &&Event| {
                    matches!(e.action, ActionKind::Init | ActionKind::Restart)
                        || (matches!(e.action, ActionKind::Retry | ActionKind::Set | ActionKind::Complete)
                            && e.target == Some(n))
                };
                let since_reset = d.history.iter().rev().skip(1).take_while(|e| !resets(e));
                let approved = since_reset.clone().any(|e| e.action == ActionKind::Approve && e.target == Some(n));
                let set_there = d.history.iter().rev().skip(1).any(|e| e.action == ActionKind::Set && e.target == Some(n));
                prop_assert!(approved || set_there, "started {} without an approval: {:#?}", n, d.history);
            }
            prop_assert!(d.retry_at.is_none() || d.status == Status::Failed);
            // The document survives a round trip through JSON.
            let back: Document = serde_json::from_slice(&d.to_bytes()).unwrap();
            prop_assert_eq!(&back, d);
        }
        let d = w.doc();
        for snap in &snapshots {
            let rebuilt = d.at_revision(snap.revision, &w.ladder).unwrap();
            prop_assert_eq!(&rebuilt, snap);
            // Byte for byte, so a revision's ETag (and its version) is the
            // same whenever it is computed.
            prop_assert_eq!(rebuilt.to_bytes(), snap.to_bytes());
            prop_assert_eq!(rebuilt.etag(), snap.etag());
        }
    }
}

pub(super) fn stage(max: u32, resume_from: Option<Code>, timeout: Option<i64>) -> StageRetry {
    StageRetry {
        max_attempts: max,
        backoff: std::time::Duration::from_secs(60),
        resume_from,
        timeout: timeout.map(|s| std::time::Duration::from_secs(s as u64)),
        ..StageRetry::default()
    }
}

/// Walks a fresh build to `code`, pending.
pub(super) fn at(w: &mut World, code: Code) {
    w.ok(Action::Init { restart: false });
    let mut n = 0;
    while n < code {
        w.ok(Action::Complete(n));
        n += 5;
    }
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

#[test]
fn a_blocked_gate_passes_only_for_a_build_that_needs_a_human() {
    let mut w = World::new();
    w.retry.states.insert(25, stage(1, None, None));
    at(&mut w, 25);
    let any = Condition {
        at: At::Any,
        status: Some(Status::Blocked),
        timer: false,
    };
    let here = Condition {
        at: At::State(25),
        status: Some(Status::Blocked),
        timer: false,
    };
    let elsewhere = Condition {
        at: At::MinState(30),
        status: Some(Status::Blocked),
        timer: false,
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

#[test]
fn a_restored_document_continues_at_a_higher_revision_and_verifies() {
    let mut w = World::new();
    at(&mut w, 10);
    let chosen = w.ok(Action::Start(10)).clone();
    let restored = chosen.restored(
        chosen.revision + 5,
        Actor::default(),
        w.clock,
        "restored revision 4".into(),
        &w.ladder,
    );
    assert_eq!(restored.verify(&w.ladder), Ok(()));
    assert_eq!(restored.revision, chosen.revision + 5);
    assert_eq!(
        (restored.state, restored.status, restored.attempts),
        (chosen.state, chosen.status, chosen.attempts)
    );
    assert_eq!(restored.last_event().action, ActionKind::Restore);
    // It carries on: the next event follows the restore by one.
    w.doc = Some(restored.clone());
    let d = w.ok(Action::Complete(10)).clone();
    assert_eq!(d.revision, restored.revision + 1);
    // A history whose revisions go down at a restore is corrupt.
    let mut bad = restored.clone();
    bad.history.last_mut().unwrap().revision = chosen.revision;
    bad.revision = chosen.revision;
    assert!(bad.verify(&w.ladder).is_err());
}

// ---------------------------------------------------------------- mutants
// Each test below kills a mutant `scripts/mutants` found surviving: a
// change a user would see that no test noticed (docs/development.md).

/// Every event's attempt is the stage's attempt count; a start and the
/// complete that follows it carry the same number.
#[test]
fn starts_and_completes_carry_their_attempt() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    w.ok(Action::Complete(0));
    assert_eq!(w.ok(Action::Start(5)).last_event().attempt, 1);
    w.ok(fail(5, "ssh timeout"));
    w.clock += Duration::hours(2);
    let d = w.ok(Action::Start(5));
    assert_eq!(
        (d.attempts, d.last_event().attempt),
        (1, 2),
        "one failure; attempt 2"
    );
    let d = w.ok(Action::Complete(5));
    assert_eq!(
        d.last_event().attempt,
        2,
        "the complete of the second attempt"
    );
}

/// A start past the stage's timeout records the dead attempt and the new
/// one as two events, with consecutive revisions.
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

/// A `file` for a build with no state must start at revision 1 of run 1.
#[test]
fn a_file_for_a_new_build_starts_at_revision_1_of_run_1() {
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    let good = w.ok(Action::Complete(0)).clone();
    let rules = w.rules();
    assert!(matches!(
        extend(None, good.clone(), &rules),
        Ok(Outcome::Write(_))
    ));
    let mut other_run = good.clone();
    other_run.run = 2;
    for e in &mut other_run.history {
        e.by = Actor::default();
    }
    let said = format!("{:?}", extend(None, other_run, &rules).unwrap_err());
    assert!(
        said.contains("of run 2 but rhel8-web has no state yet"),
        "{said}"
    );
    let mut later = good.clone();
    for e in &mut later.history {
        e.revision += 1;
    }
    later.revision += 1;
    let said = format!("{:?}", extend(None, later, &rules).unwrap_err());
    assert!(said.contains("starts at revision 2 of run 1"), "{said}");
}

/// The policy is recorded in the event that changes it, and only then.
#[test]
fn the_policy_is_recorded_when_it_changes() {
    let mut w = World::new();
    let p1 = serde_json::json!({"retry": {"backoff": "5m"}});
    let p2 = serde_json::json!({"retry": {"backoff": "7m"}});
    let act = |w: &mut World, a: Action, p: &serde_json::Value| {
        let mut u = w.update(a);
        u.policy = Some(p.clone());
        match apply(w.doc.as_ref(), &u, &w.rules()).unwrap() {
            Outcome::Write(d) => w.doc = Some(d),
            other => panic!("{other:?}"),
        }
        w.doc.clone().unwrap()
    };
    let d = act(&mut w, Action::Init { restart: false }, &p1);
    assert_eq!(d.history[0].policy.as_ref(), Some(&p1));
    let d = act(&mut w, Action::Complete(0), &p1);
    assert_eq!(d.history[1].policy, None, "unchanged: not recorded again");
    assert_eq!(d.policy(), Some(&p1));
    let d = act(&mut w, Action::Start(5), &p2);
    assert_eq!(d.history[2].policy.as_ref(), Some(&p2));
    assert_eq!(d.policy(), Some(&p2), "the newest recorded");
}

/// Words users type and read: statuses, kinds, actors, vars, conditions,
/// the ladder in messages.
#[test]
fn the_words_round_trip() {
    for s in [
        "pending",
        "in_progress",
        "failed",
        "blocked",
        "completed",
        "cancelled",
    ] {
        assert_eq!(Status::parse(s).map(|s| s.to_string()).as_deref(), Some(s));
    }
    assert_eq!(Status::parse("done"), None);
    for k in ["transient", "persistent"] {
        assert_eq!(FailureKind::parse(k).map(|k| k.as_str()), Some(k));
    }
    assert_eq!(FailureKind::parse("fatal"), None);
    let job = Actor {
        team: Some("images".into()),
        pipeline: Some("rhel8".into()),
        job: Some("kickstart".into()),
        build_name: Some("7".into()),
        ..Actor::default()
    };
    assert_eq!(job.describe(), "images/rhel8/kickstart #7");
    let cli = Actor {
        user: Some("ana@laptop".into()),
        ..Actor::default()
    };
    assert_eq!(cli.describe(), "cli:ana@laptop");
    assert_eq!(
        document::parse_vars(br#"{"ami_id": "ami-1"}"#).unwrap()["ami_id"],
        "ami-1"
    );
    assert!(
        document::parse_vars(b"[1]")
            .unwrap_err()
            .starts_with("must hold a JSON object")
    );
    assert!(
        document::parse_vars(b"{")
            .unwrap_err()
            .starts_with("is not valid JSON")
    );
    assert_eq!(Ladder::default().codes(), "0, 5, ..., 100 (steps of 5)");
    assert_eq!(
        Ladder::default().steps()[1].to_string(),
        "5 kickstart initiated"
    );
    let mut w = World::new();
    w.ok(Action::Init { restart: false });
    let d = w.ok(Action::Complete(0)).clone();
    let blocked_only = Condition {
        status: Some(Status::Blocked),
        ..Condition::state(5)
    };
    assert!(!blocked_only.require(&d), "pending is not blocked");
    assert!(Condition::state(5).require(&d));
}

/// An update from Concourse build `build`.
pub(super) fn from(w: &mut World, build: &str, action: Action) -> Update {
    let mut u = w.update(action);
    u.by.build_id = Some(build.into());
    u.by.build_name = Some(build.into());
    u
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

fn approval_stage(max: u32, resume_from: Option<Code>) -> StageRetry {
    StageRetry {
        approval: true,
        ..stage(max, resume_from, None)
    }
}

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

fn at_pending(w: &mut World) {
    w.ok(Action::Retry(5));
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
