//! Transitions and the document: the ladder walked to delivery, refusals
//! that say what is allowed, idempotent init and replays, vars, the fold
//! checked on every read, `extend`, restore, the attempt each event
//! carries, and the words users type and read.

use super::*;

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
        None,
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

/// Every event's attempt is the stage's attempt count; a start and the
/// complete that follows it carry the same number.
/// (Found by `scripts/mutants`: a change a user would see that no test
/// noticed.)
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

/// A `file` for a build with no state must start at revision 1 of run 1.
/// (Found by `scripts/mutants`: a change a user would see that no test
/// noticed.)
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
/// (Found by `scripts/mutants`: a change a user would see that no test
/// noticed.)
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
/// (Found by `scripts/mutants`: a change a user would see that no test
/// noticed.)
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
