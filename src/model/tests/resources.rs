//! What an attempt leaves behind: every resource a build records is live,
//! held, leaked or released, and each change is the one a transition or a
//! request says (SPEC §5, "Resources an attempt leaves behind").

use super::*;
use crate::model::resources::{Holding, MAX_RESOURCES, ResourceChange};
use proptest::prelude::*;

impl World {
    /// Applies `action` with what it asks of resources.
    fn with(&mut self, action: Action, change: ResourceChange) -> Result<Outcome, Refusal> {
        let mut u = self.update(action);
        u.resources = change;
        self.apply_update(u)
    }

    /// Where resource `id` stands.
    fn holding(&self, id: &str) -> Holding {
        self.doc()
            .resources
            .iter()
            .rev()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} is not recorded: {:#?}", self.doc().resources))
            .holding
    }
}

fn created(pairs: &[(&str, &str)]) -> ResourceChange {
    ResourceChange {
        created: pairs
            .iter()
            .map(|(n, i)| (n.to_string(), i.to_string()))
            .collect(),
        ..ResourceChange::default()
    }
}

fn release(ids: &[&str]) -> ResourceChange {
    ResourceChange {
        release: ids.iter().map(|s| s.to_string()).collect(),
        ..ResourceChange::default()
    }
}

/// The CLI inside a task: run 1, the attempt in progress.
fn record(w: &mut World, pairs: &[(&str, &str)]) -> Result<Outcome, Refusal> {
    let attempt = w.doc().attempt_in_progress();
    w.with(
        Action::Created {
            state: Some(w.doc().state),
            run: Some(w.doc().run),
            attempt,
        },
        created(pairs),
    )
}

fn leaked_gate() -> Condition {
    Condition::leaked()
}

#[test]
fn a_failed_attempts_instance_leaks_when_the_retry_does_not_adopt_it() {
    let mut w = World::new();
    w.retry.default = stage(3, None, None);
    at(&mut w, 10);
    w.ok(Action::Start(10));
    record(&mut w, &[("green_instance", "i-1")]).unwrap();
    assert_eq!(w.holding("i-1"), Holding::Live);
    let r = &w.doc().resources[0];
    assert_eq!((r.stage, r.attempt), (10, 1));
    w.ok(fail(10, "ansible unreachable"));
    // Failed: the retry may still adopt it.
    assert_eq!(w.holding("i-1"), Holding::Live);
    assert!(!leaked_gate().gate_passes(w.doc(), w.clock, &w.retry, None));
    w.clock += Duration::minutes(5);
    w.ok(Action::Start(10));
    assert_eq!(w.holding("i-1"), Holding::Leaked);
    assert!(
        w.doc().resources[0]
            .why
            .as_deref()
            .unwrap()
            .contains("start 10 (attempt 2) did not adopt it"),
        "{:?}",
        w.doc().resources[0].why
    );
    assert!(leaked_gate().gate_passes(w.doc(), w.clock, &w.retry, None));
    // The cleanup job's put: released, and the gate shuts.
    w.with(Action::Release, release(&["i-1"])).unwrap();
    assert_eq!(w.holding("i-1"), Holding::Released);
    assert_eq!(w.doc().last_event().action, ActionKind::Release);
    assert!(!leaked_gate().gate_passes(w.doc(), w.clock, &w.retry, None));
    // Released again (a replayed cleanup): nothing written.
    let before = w.doc().revision;
    assert_eq!(
        w.with(Action::Release, release(&["i-1"])).unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(w.doc().revision, before);
}

#[test]
fn a_retry_that_adopts_keeps_using_it() {
    let mut w = World::new();
    w.retry.default = stage(3, None, None);
    at(&mut w, 10);
    w.ok(Action::Start(10));
    record(&mut w, &[("green_instance", "i-1"), ("volume", "vol-1")]).unwrap();
    w.ok(fail(10, "boom"));
    w.clock += Duration::minutes(5);
    w.with(
        Action::Start(10),
        ResourceChange {
            adopt: vec!["green_instance".into()],
            ..ResourceChange::default()
        },
    )
    .unwrap();
    assert_eq!(w.holding("i-1"), Holding::Live);
    assert_eq!(w.holding("vol-1"), Holding::Leaked);
    assert_eq!(w.doc().last_event().resources.adopted, vec!["i-1"]);
}

#[test]
fn a_hold_keeps_a_failure_for_a_human_until_its_time() {
    let mut w = World::new();
    w.retry.default = stage(3, None, None);
    at(&mut w, 10);
    w.ok(Action::Start(10));
    record(&mut w, &[("green_instance", "i-1")]).unwrap();
    w.with(
        fail(10, "boom"),
        ResourceChange {
            hold: Some(std::time::Duration::from_secs(2 * 3600)),
            ..ResourceChange::default()
        },
    )
    .unwrap();
    assert_eq!(w.holding("i-1"), Holding::Held);
    let until = w.doc().resources[0].until.unwrap();
    assert_eq!(until, w.clock + Duration::hours(2));
    // The retry does not adopt it: still held, not leaked.
    w.clock += Duration::minutes(5);
    w.ok(Action::Start(10));
    assert_eq!(w.holding("i-1"), Holding::Held);
    assert!(!leaked_gate().gate_passes(w.doc(), w.clock, &w.retry, None));
    // Past its time, the clock (the timer's hand-off) records it leaked.
    let timer = Condition::timer();
    let later = until + Duration::seconds(1);
    assert!(
        !timer.gate_passes(w.doc(), until - Duration::seconds(1), &w.retry, None),
        "not before its time"
    );
    assert!(timer.gate_passes(w.doc(), later, &w.retry, None));
    let out = clock(w.doc(), later, Actor::default(), None, &w.rules());
    let Outcome::Write(d) = out else {
        panic!("{out:?}")
    };
    assert_eq!(d.last_event().action, ActionKind::Leak);
    assert_eq!(d.resources[0].holding, Holding::Leaked);
    assert!(
        d.resources[0]
            .why
            .as_deref()
            .unwrap()
            .contains("its hold ended")
    );
    assert_eq!(d.verify(&w.ladder), Ok(()));
    // Any later write records it too.
    w.clock = later;
    w.ok(Action::Complete(10));
    assert_eq!(w.holding("i-1"), Holding::Leaked);
}

#[test]
fn a_start_over_leaks_what_the_stages_it_repeats_made() {
    let mut w = World::new();
    w.retry.default = stage(5, None, None);
    w.retry.states.insert(20, stage(3, Some(10), None));
    at(&mut w, 5);
    w.ok(Action::Start(5));
    record(&mut w, &[("builder", "i-0")]).unwrap();
    w.ok(Action::Complete(5));
    w.ok(Action::Start(10));
    record(&mut w, &[("green_instance", "i-1")]).unwrap();
    w.ok(Action::Complete(10));
    w.ok(Action::Start(15));
    w.ok(Action::Complete(15));
    w.ok(Action::Start(20));
    w.ok(fail(20, "sealing failed"));
    assert_eq!(w.doc().state, 10, "sent back");
    assert_eq!(w.holding("i-1"), Holding::Leaked);
    assert_eq!(w.holding("i-0"), Holding::Live, "stage 5 is not repeated");
    assert!(
        w.doc().resources[1]
            .why
            .as_deref()
            .unwrap()
            .contains("fail 20 sent the build back to 10")
    );
}

#[test]
fn delivery_and_cancel_leak_what_is_live_and_a_restart_carries_it() {
    let mut w = World::new();
    at(&mut w, 95);
    w.ok(Action::Start(95));
    record(&mut w, &[("green_instance", "i-1"), ("sg", "sg-1")]).unwrap();
    // Sealing releases the green instance by name.
    w.with(Action::Complete(95), release(&["green_instance"]))
        .unwrap();
    assert_eq!(w.doc().status, Status::Completed);
    assert_eq!(w.holding("i-1"), Holding::Released);
    assert_eq!(w.holding("sg-1"), Holding::Leaked);
    // A new run carries what was not released, with its run.
    w.ok(Action::Init { restart: true });
    assert_eq!(w.doc().run, 2);
    let rs = &w.doc().resources;
    assert_eq!(rs.len(), 1, "the released one stays in the archive");
    assert_eq!((rs[0].id.as_str(), rs[0].run), ("sg-1", Some(1)));
    assert_eq!(rs[0].holding, Holding::Leaked);
    // A cancel leaks what the new run made.
    w.ok(Action::Complete(0));
    w.ok(Action::Start(5));
    record(&mut w, &[("builder", "i-2")]).unwrap();
    w.ok(Action::Cancel {
        reason: "superseded".into(),
    });
    assert_eq!(w.holding("i-2"), Holding::Leaked);
}

#[test]
fn a_restart_turns_live_resources_into_leaked_ones() {
    let mut w = World::new();
    at(&mut w, 10);
    w.ok(Action::Start(10));
    record(&mut w, &[("green_instance", "i-1")]).unwrap();
    w.ok(Action::Restart);
    let r = &w.doc().resources[0];
    assert_eq!((r.holding, r.run), (Holding::Leaked, Some(1)));
    assert!(r.why.as_deref().unwrap().contains("left by run 1"));
}

/// Found by the property test: a held resource carried into a new run is
/// no retry's to adopt there; it stays held.
#[test]
fn an_earlier_runs_resource_is_not_adopted() {
    let mut w = World::new();
    w.retry.default = stage(3, None, None);
    at(&mut w, 5);
    w.ok(Action::Start(5));
    record(&mut w, &[("builder", "i-1")]).unwrap();
    w.with(
        fail(5, "boom"),
        ResourceChange {
            hold: Some(std::time::Duration::from_secs(3600)),
            ..ResourceChange::default()
        },
    )
    .unwrap();
    w.ok(Action::Restart);
    w.ok(Action::Complete(0));
    w.with(
        Action::Start(5),
        ResourceChange {
            adopt: vec!["builder".into()],
            ..ResourceChange::default()
        },
    )
    .unwrap();
    let r = &w.doc().resources[0];
    assert_eq!((r.holding, r.run), (Holding::Held, Some(1)));
    assert!(w.doc().last_event().resources.adopted.is_empty());
}

#[test]
fn created_is_refused_for_an_attempt_that_is_over() {
    let mut w = World::new();
    w.retry.default = stage(3, None, None);
    at(&mut w, 10);
    w.ok(Action::Start(10));
    w.ok(fail(10, "boom"));
    w.clock += Duration::minutes(5);
    w.ok(Action::Start(10));
    let before = w.doc().clone();
    let err = w
        .with(
            Action::Created {
                state: Some(10),
                run: Some(1),
                attempt: Some(1),
            },
            created(&[("green_instance", "i-9")]),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("created 10 refused: it is for attempt 1, and attempt 2 is in progress"),
        "{err}"
    );
    assert_eq!(w.doc(), &before, "nothing written");
    // Outside a build, run and attempt are needed.
    let err = w
        .with(
            Action::Created {
                state: Some(10),
                run: None,
                attempt: None,
            },
            created(&[("green_instance", "i-9")]),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside a Concourse build `created` names the run and the attempt"),
        "{err}"
    );
}

#[test]
fn a_record_is_invisible_to_the_stage() {
    let mut w = World::new();
    w.retry.default = StageRetry {
        heartbeat_timeout: Some(std::time::Duration::from_secs(600)),
        timeout: Some(std::time::Duration::from_secs(3600)),
        ..stage(3, None, None)
    };
    at(&mut w, 10);
    let start = w.ok(Action::Start(10)).clone();
    let claim = Claim {
        state: 10,
        run: Some(1),
        attempt: Some(1),
        by: Actor::default(),
        at: w.clock,
    };
    let beat = heartbeat(Some(&start), &claim, "rhel8-web").unwrap();
    w.clock += Duration::minutes(50);
    record(&mut w, &[("green_instance", "i-1")]).unwrap();
    let d = w.doc();
    assert_eq!(d.revision, start.revision + 1);
    // Its heartbeat is still the attempt's, its deadline still its start's.
    assert!(d.own_heartbeat(Some(&beat)).is_some());
    assert_eq!(d.stage_since(), start.updated_at);
    assert!(heartbeat(Some(d), &claim, "rhel8-web").is_ok());
    assert!(d.is_dead(
        start.updated_at + Duration::minutes(61),
        &w.retry,
        Some(&beat)
    ));
    assert_eq!(d.attempt_in_progress(), Some(1));
}

#[test]
fn an_outcome_that_counts_nothing_still_records_what_it_created_as_leaked() {
    let mut w = World::new();
    w.retry.default = stage(3, None, None);
    at(&mut w, 10);
    let u = from(&mut w, "b1", Action::Start(10));
    w.apply_update(u).unwrap();
    // Build b2 (run early by hand) never started the stage.
    let mut u = from(&mut w, "b2", Action::Complete(10));
    u.resources = created(&[("green_instance", "i-7")]);
    let out = w.apply_update(u).unwrap();
    assert!(matches!(out, Outcome::Write(_)), "{out:?}");
    assert_eq!(w.holding("i-7"), Holding::Leaked);
    assert_eq!(w.doc().status, Status::InProgress, "the stage is untouched");
    assert!(
        w.doc()
            .last_event()
            .reason
            .as_deref()
            .unwrap()
            .contains("counts nothing")
    );
}

#[test]
fn a_name_releases_only_live_resources_and_unknown_ones_change_nothing() {
    let mut w = World::new();
    w.retry.default = stage(3, None, None);
    at(&mut w, 10);
    w.ok(Action::Start(10));
    record(&mut w, &[("green_instance", "i-1")]).unwrap();
    w.ok(fail(10, "boom"));
    w.clock += Duration::minutes(5);
    w.ok(Action::Start(10));
    record(&mut w, &[("green_instance", "i-2")]).unwrap();
    w.with(Action::Release, release(&["green_instance"]))
        .unwrap();
    assert_eq!(w.holding("i-1"), Holding::Leaked, "the leaked one stays");
    assert_eq!(w.holding("i-2"), Holding::Released);
    assert_eq!(
        w.with(Action::Release, release(&["i-404"])).unwrap(),
        Outcome::Unchanged
    );
}

#[test]
fn a_build_that_records_too_many_resources_is_refused() {
    let mut w = World::new();
    at(&mut w, 10);
    w.ok(Action::Start(10));
    for batch in 0..MAX_RESOURCES / 100 {
        let pairs: Vec<(String, String)> = (0..100)
            .map(|i| (format!("vol{batch}-{i}"), format!("vol-{batch}-{i}")))
            .collect();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        record(&mut w, &pairs).unwrap();
    }
    let before = w.doc().clone();
    let err = record(&mut w, &[("one_more", "vol-x")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("would keep 1001 resources, more than the 1000 a build's document holds"),
        "{err}"
    );
    assert_eq!(w.doc(), &before);
    assert!(
        before.to_bytes().len() < 1 << 20,
        "{} bytes",
        before.to_bytes().len()
    );
}

#[test]
fn a_restore_forgets_nothing_recorded_after_the_revision_it_puts_back() {
    let mut w = World::new();
    at(&mut w, 10);
    w.ok(Action::Start(10));
    record(&mut w, &[("volume", "vol-1")]).unwrap();
    let old = w.doc().clone();
    record(&mut w, &[("green_instance", "i-1")]).unwrap();
    w.with(Action::Release, release(&["vol-1"])).unwrap();
    let newest = w.doc().clone();
    let restored = old.restored(
        newest.revision + 1,
        Actor::default(),
        w.clock,
        "restored".into(),
        &w.ladder,
        Some(&newest),
    );
    assert_eq!(restored.verify(&w.ladder), Ok(()));
    let holding = |id: &str| {
        restored
            .resources
            .iter()
            .rev()
            .find(|r| r.id == id)
            .map(|r| (r.holding, r.why.clone().unwrap_or_default()))
            .unwrap()
    };
    let (h, why) = holding("i-1");
    assert_eq!(h, Holding::Leaked, "carried in, leaked");
    assert!(why.contains("put aside"), "{why}");
    assert_eq!(holding("vol-1").0, Holding::Released, "released since");
}

fn arb_step() -> impl Strategy<Value = (u8, u8)> {
    (0u8..12, 0u8..4)
}

proptest! {
    /// Any sequence of actions keeps every resource ever recorded in the
    /// document, in one holding (`released` only by a release, which a
    /// restart archives), none live once the run is over, and a held one
    /// only with its time.
    #[test]
    fn nothing_is_ever_forgotten(steps in proptest::collection::vec(arb_step(), 1..80)) {
        let mut w = World::new();
        w.retry.default = stage(3, None, None);
        w.retry.states.insert(20, stage(2, Some(10), None));
        w.ok(Action::Init { restart: false });
        let mut recorded: Vec<String> = Vec::new();
        let mut released: Vec<String> = Vec::new();
        for (i, (kind, pick)) in steps.into_iter().enumerate() {
            let n = w.doc().state;
            let name = ["green_instance", "volume", "sg", "builder"][pick as usize].to_string();
            let id = format!("r-{i}");
            let r = match kind {
                0 => w.with(Action::Start(n), ResourceChange {
                    adopt: vec![name],
                    ..ResourceChange::default()
                }),
                1 => w.with(Action::Start(n), ResourceChange::default()),
                2 => w.with(Action::Complete(n), ResourceChange::default()),
                3 => w.with(fail(n, "boom"), ResourceChange {
                    hold: (pick == 0).then(|| std::time::Duration::from_secs(600)),
                    ..ResourceChange::default()
                }),
                4 | 5 => {
                    let attempt = w.doc().attempt_in_progress();
                    let out = w.with(Action::Created { state: Some(n), run: Some(w.doc().run), attempt }, created(&[(&name, &id)]));
                    if out.is_ok() { recorded.push(id.clone()); }
                    out
                }
                6 => {
                    let target = recorded.get(pick as usize * 3 % recorded.len().max(1)).cloned().unwrap_or(name);
                    w.with(Action::Release, release(&[&target]))
                }
                7 => w.with(Action::Retry(n), ResourceChange::default()),
                8 => w.with(Action::Cancel { reason: "stop".into() }, ResourceChange::default()),
                9 => w.with(Action::Init { restart: true }, ResourceChange::default()),
                10 => w.with(Action::Hold, ResourceChange {
                    hold: Some(std::time::Duration::from_secs(60 * pick as u64)),
                    ..ResourceChange::default()
                }),
                _ => {
                    w.clock += Duration::minutes(7);
                    let out = clock(w.doc(), w.clock, Actor::default(), None, &w.rules());
                    if let Outcome::Write(d) = &out { w.doc = Some(d.clone()); }
                    Ok(out)
                }
            };
            let _ = r;
            w.clock += Duration::minutes(1);
            let d = w.doc();
            prop_assert_eq!(d.verify(&w.ladder), Ok(()));
            for r in &d.resources {
                if r.holding == Holding::Released && !released.contains(&r.id) {
                    released.push(r.id.clone());
                }
                prop_assert_eq!(r.holding == Holding::Held, r.until.is_some());
                prop_assert!(r.holding != Holding::Live || r.run.is_none(), "a live resource of an earlier run: {:?}", r);
                if matches!(d.status, Status::Completed | Status::Cancelled) {
                    prop_assert!(r.holding != Holding::Live, "live after the run is over: {:?}", r);
                }
            }
            for id in &recorded {
                let here = d.resources.iter().any(|r| &r.id == id);
                prop_assert!(here || released.contains(id), "{} was forgotten: {:#?}", id, d.resources);
            }
            let back: Document = serde_json::from_slice(&d.to_bytes()).unwrap();
            prop_assert_eq!(&back, d);
        }
    }
}
