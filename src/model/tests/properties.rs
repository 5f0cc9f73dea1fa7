//! Property tests: random sequences of actions under random policies keep
//! the model's invariants.

use super::*;
use proptest::prelude::*;

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
