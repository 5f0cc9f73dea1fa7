//! Scenario files as they are read.

use super::scenario::*;
use std::time::Duration;

#[test]
fn a_scenario_reads_and_refuses_unknown_fields() {
    let s = Scenario::parse(
        r#"
description: two failures
task_time: 10m
tasks:
  packer-kickstart:
  - {outcome: fail, error: "ssh timeout"}
  - die
events:
- {at: 2h, commit: true}
- {at: 1h, store_down: 10m}
- {at: 3h, put: {retry: 25}}
expect:
  builds: {alert-a-human: ">=1", kickstart: 3}
  failures: {"5": 2}
"#,
    )
    .unwrap();
    assert_eq!(s.task_time, Duration::from_secs(600));
    assert_eq!(
        s.tasks["packer-kickstart"][1].outcome,
        TaskOutcome::WorkerLost
    );
    assert_eq!(
        s.events[0].what,
        Happening::StoreDown(Duration::from_secs(600))
    );
    assert_eq!(s.expect.builds["alert-a-human"], Count::AtLeast(1));
    assert_eq!(s.expect.failures[&5], Count::Exactly(2));
    assert_eq!(s.expect.delivered, None);
    for (bad, says) in [
        (
            "tasks: {t: [{outcome: fail, eror: x}]}",
            "tasks.t[0]: unknown field `eror`",
        ),
        (
            "tasks: {t: [explode]}",
            "tasks.t[0]: unknown variant `explode`",
        ),
        ("events: [{at: 1h}]", "events[0]: an event is one of"),
        ("events: [{at: 1h, commit: true, trigger: a}]", "(2 given)"),
        (
            "expect: {builds: {a: lots}}",
            "expect.builds.a: \"lots\" is not a count",
        ),
        ("expectations: {}", "unknown field `expectations`"),
        ("until: forever", "until: "),
    ] {
        let e = Scenario::parse(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
