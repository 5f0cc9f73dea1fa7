//! The Concourse model at its failure edges, through `build-state
//! simulate` and the library: the fault sweep on every shipped pipeline
//! and release (and what it found on the old texts), each failure edge of
//! the old texts shown by its scenario, refused heartbeats that fail a
//! play, scenarios and pipelines the model refuses (exit 2), and approvals
//! that record no one.

use build_state::concourse::Release;
use build_state::concourse::atc::pipeline::Pipeline;
use build_state::concourse::play::faults::sweep;
use build_state::concourse::play::memory::InMemory;
use build_state::concourse::play::scenario::Scenario;
use build_state::concourse::{replace_storage, simulate};
use build_state::pipeline;
use serde_json::{Value, json};
use std::path::Path;
use std::rc::Rc;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README's vars.
const VARS: [&str; 12] = [
    "-v",
    "build_id=rhel8-web",
    "-v",
    "retry_backoff=5m",
    "-v",
    "kickstart_backoff=10m",
    "-v",
    "kickstart_timeout=2h",
    "-v",
    "stage_timeout=1h",
    "-v",
    "state_webhook_token=t",
];

fn typed(text: &str) -> Pipeline {
    typed_on(text, Release::LATEST)
}

fn typed_on(text: &str, release: Release) -> Pipeline {
    let vars: pipeline::Vars = VARS
        .chunks(2)
        .map(|kv| {
            let (k, v) = kv[1].split_once('=').unwrap();
            (k.to_string(), Value::String(v.to_string()))
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.yml");
    std::fs::write(&file, text).unwrap();
    let (mut value, _) = pipeline::load_partly(&file, &vars).unwrap();
    replace_storage(
        &mut value,
        json!({"local_dir": "/simulated"}).as_object().unwrap(),
    );
    Pipeline::parse(&value, release).unwrap()
}

fn staged() -> String {
    std::fs::read_to_string(root().join("pipelines/staged-image-build.yml")).unwrap()
}

/// `text` without job `job` (and out of its groups).
fn without_job(text: &str, job: &str) -> String {
    let start = text.find(&format!("- name: {job}\n")).unwrap();
    let end = text[start + 1..].find("\n- name: ").unwrap() + start + 2;
    format!("{}{}", &text[..start], &text[end..]).replace(&format!("{job}, "), "")
}

/// A shipped pipeline as it was before its failure edges were mended
/// (`tests/fixtures/before-fault-edges/`).
fn old(file: &str) -> String {
    std::fs::read_to_string(root().join("tests/fixtures/before-fault-edges").join(file)).unwrap()
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::util::cli_path())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// The sweep of the old staged pipeline text finds plays that stall, run a
/// stage's task twice and count a failure no task had; the same text with
/// `attempts: 3` on every get and put (a blip retried) finds fewer.
#[test]
fn the_fault_sweep_finds_what_the_old_text_did_wrong() {
    let s = Scenario::default();
    let two = std::time::Duration::from_secs(2);
    let text = old("staged-image-build.yml");
    let p = typed(&text);
    let (base, today) = sweep(&p, "staged-image-build", Release::LATEST, &s, two).unwrap();
    assert!(base.failures.is_empty(), "{:#?}", base.failures);
    assert!(today.moments > 50, "{}", today.moments);
    let says = |v: &str| {
        today
            .findings
            .iter()
            .any(|f| f.verdicts.iter().any(|x| x.contains(v)))
    };
    assert!(says("stalled: "), "{:#?}", today.findings.len());
    assert!(says("times (without the fault"));
    assert!(says("a failure no task had"));
    let retried = text
        .replace("    no_get: true\n", "    no_get: true\n    attempts: 3\n")
        .replace(
            "      trigger: true\n",
            "      trigger: true\n      attempts: 3\n",
        );
    let p = typed(&retried);
    let (_, with) = sweep(&p, "staged-image-build", Release::LATEST, &s, two).unwrap();
    assert!(
        with.findings.len() < today.findings.len(),
        "{} with attempts, {} without",
        with.findings.len(),
        today.findings.len()
    );
}

/// Every shipped pipeline, on every release it claims, passes the sweep: a
/// 2 s store outage at every moment a step touches the store, and each
/// task hanging: no play stalls, runs a stage's task twice or counts a
/// failure no task had.
#[test]
fn the_shipped_pipelines_pass_the_fault_sweep() {
    let s = Scenario::default();
    let two = std::time::Duration::from_secs(2);
    let mut sweeps = Vec::new();
    for (file, from_8_2) in [
        ("staged-image-build.yml", true),
        ("staged-image-build-7x.yml", false),
        ("resumable-single-job.yml", false),
    ] {
        for r in Release::TRIED {
            if from_8_2 && !r.has_build_status() {
                continue;
            }
            sweeps.push((file, r));
        }
    }
    let started = std::time::Instant::now();
    let mut wrong = Vec::new();
    for (file, release) in sweeps {
        let text = std::fs::read_to_string(root().join("pipelines").join(file)).unwrap();
        let p = typed_on(&text, release);
        let name = file.trim_end_matches(".yml");
        let (base, found) = sweep(&p, name, release, &s, two).unwrap();
        assert!(base.passed(), "{file} on {release}: {:#?}", base.failures);
        assert!(found.moments > 20, "{file}: {} moments", found.moments);
        for f in &found.findings {
            wrong.push(format!(
                "{file} on {release}: {} at {}s: {:?}",
                f.fault, f.at, f.verdicts
            ));
        }
    }
    println!("the sweeps took {:.1} s", started.elapsed().as_secs_f64());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `simulate --faults` through the CLI: exit 1 on the old text, each
/// finding with its moment and the timeline's tail; exit 0 on a shipped
/// pipeline; a bad duration is exit 2.
#[test]
fn simulate_faults_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let before = tmp.path().join("staged-image-build.yml");
    std::fs::write(&before, old("staged-image-build.yml")).unwrap();
    let mut args = vec!["simulate", before.to_str().unwrap()];
    args.extend(VARS);
    args.push("--faults");
    let out = cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("the store down for 2s from put to state {start: 5}"),
        "{stdout}"
    );
    assert!(stdout.contains("stalled: rhel8-web is at"), "{stdout}");
    assert!(
        stdout.contains("           | "),
        "the timeline's tail: {stdout}"
    );
    let mut good = args.clone();
    good[1] = "pipelines/resumable-single-job.yml";
    let out = cli(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.ends_with("ok: no play stalls, runs a task twice or counts a failure no task had\n"),
        "{stdout}"
    );
    args.push("0s");
    let out = cli(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--faults \"0s\": a duration"));
}

/// Each failure edge the old text had, shown by its scenario there and not
/// on the new text (`every_scenario_holds_on_every_pipeline_and_release`):
/// 1. a build that fails before its start landed uses the stage up;
/// 2. a hung task (or a worker lost unnoticed) stalls its stage;
/// 3. a blip on the success put runs a succeeded stage again;
/// 6. a dead attempt that a start blocks alerts a human an hour late.
#[test]
fn the_old_text_shows_each_failure_edge() {
    let edges: [(&str, &[&str]); 5] = [
        (
            "start-put-lost.yml",
            &[
                "expected the build delivered; it was not: rhel8-web is at 5 (kickstart initiated, pending)",
            ],
        ),
        (
            "hung-task.yml",
            &[
                "expected the build delivered; it was not: rhel8-web is at 15 (base configuration, in_progress)",
            ],
        ),
        (
            "lost-heartbeat.yml",
            &[
                "expected the build delivered; it was not: rhel8-web is at 5 (kickstart initiated, in_progress)",
            ],
        ),
        (
            "success-put-blip.yml",
            &["expected 1 run(s) of task packer-kickstart; it ran 2"],
        ),
        (
            "dead-attempt-blocks.yml",
            &["expected an alert within 2m of the build becoming blocked; the first came after"],
        ),
    ];
    for file in ["staged-image-build.yml", "staged-image-build-7x.yml"] {
        let p = typed(&old(file));
        for (scenario, says) in edges {
            let text =
                std::fs::read_to_string(root().join("pipelines/scenarios").join(scenario)).unwrap();
            let s = Scenario::parse(&text).unwrap();
            let name = file.trim_end_matches(".yml");
            let r = simulate(&p, name, Release::LATEST, &s, Rc::new(InMemory::new())).unwrap();
            for said in says {
                assert!(
                    r.failures.iter().any(|f| f.starts_with(said)),
                    "{scenario} on the old {file}: {said:?} not in {:#?}",
                    r.failures
                );
            }
        }
        // The old text had no step timeouts: the wiring check names them.
        let r = simulate(
            &p,
            "staged-image-build",
            Release::LATEST,
            &Scenario::default(),
            Rc::new(InMemory::new()),
        )
        .unwrap();
        assert!(
            r.wiring.iter().any(|w| w.starts_with(
                "stage 15 (base configuration): task ansible-base-configuration of job base-configuration has no step timeout"
            )),
            "{:#?}",
            r.wiring
        );
    }
}

/// A rerun of a kickstart whose attempt has moved on: on the old text its
/// task names the attempt of the gate's `state.env` (the version the
/// rerun reuses), so each heartbeat is refused as a zombie's, with the
/// likely cause named, and the play fails unless the scenario expects it.
/// On the new text the task names the attempt its own start recorded (the
/// start put's implicit get): every heartbeat is taken.
#[test]
fn refused_heartbeats_fail_a_play_unless_expected() {
    let text = "task_time: 10m\nheartbeat_every: 1m\ntasks:\n  packer-kickstart:\n  - {outcome: fail, error: ssh timeout}\nevents:\n- {at: 40m, rerun: kickstart}\n";
    // Without the timer's job: the retry then waits for the gate's hourly
    // check, and the rerun at 40 minutes is the retry.
    let now = typed(&without_job(&staged(), "wake-the-gates"));
    let s = Scenario::parse(text).unwrap();
    let r = simulate(
        &now,
        "staged-image-build",
        Release::LATEST,
        &s,
        Rc::new(InMemory::new()),
    )
    .unwrap();
    assert!(r.failures.is_empty(), "{:#?} {:#?}", r.failures, r.wiring);
    assert_eq!(r.summary.heartbeats[&5].refused, 0);
    assert!(r.summary.heartbeats[&5].accepted > 0);
    let p = typed(&old("staged-image-build.yml"));
    let play = |extra: &str| {
        let s = Scenario::parse(&format!("{text}{extra}")).unwrap();
        simulate(
            &p,
            "staged-image-build",
            Release::LATEST,
            &s,
            Rc::new(InMemory::new()),
        )
        .unwrap()
    };
    let r = play("");
    assert!(!r.failures.is_empty());
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("expected 0 refused put(s) or heartbeat(s)")
                && f.contains("kickstart #1.1: task packer-kickstart: heartbeat 5 refused")
                && f.contains("it is for attempt 1, and attempt 2 is in progress (if this worker is alive, the likely cause is a stale state.env")),
        "{:#?}",
        r.failures
    );
    assert!(r.summary.heartbeats[&5].refused > 0);
    assert!(
        r.played
            .atc
            .timeline
            .iter()
            .any(|l| l.what.contains("heartbeat 5 refused"))
    );
    let expected = play("expect: {delivered: true, refused: \">=1\"}\n");
    assert!(expected.failures.is_empty(), "{:#?}", expected.failures);
}

/// What the model refuses before playing, exit 2 with the field named: a
/// scenario naming a task, job or resource the pipeline lacks; a duration
/// Go does not read.
#[test]
fn what_the_model_refuses_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    for (scenario, says) in [
        (
            "tasks: {install-update: [fail]}\n",
            "tasks.install-update: the pipeline has no task install-update (its tasks: ansible-application-deployment",
        ),
        (
            "expect: {builds: {kickstarts: 1}}\n",
            "expect.builds.kickstarts: the pipeline has no job kickstarts (its jobs: start-build",
        ),
        (
            "events: [{at: 1h, check: at-nowhere}]\n",
            "events[0]: the pipeline has no resource at-nowhere (its resources: image-repo",
        ),
        (
            "expect: {task_runs: {packer: 1}}\n",
            "expect.task_runs.packer: the pipeline has no task packer",
        ),
    ] {
        let f = tmp.path().join("s.yml");
        std::fs::write(&f, scenario).unwrap();
        let mut args = vec![
            "simulate",
            "pipelines/staged-image-build.yml",
            "--scenario",
            f.to_str().unwrap(),
        ];
        args.extend(VARS);
        let out = cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{scenario}: {stderr}");
        assert!(stderr.contains(says), "{scenario}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    let daily = tmp.path().join("daily.yml");
    std::fs::write(
        &daily,
        staged().replacen("check_every: 1h", "check_every: 1d", 1),
    )
    .unwrap();
    let mut args = vec!["simulate", daily.to_str().unwrap()];
    args.extend(VARS);
    let out = cli(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("resources.state: check_every: time: unknown unit \"d\" in duration \"1d\""),
        "{stderr}"
    );
}

/// An approval put to a resource without `expose_build_created_by`
/// records no one in the play (Concourse gives `BUILD_CREATED_BY` to no
/// other put), and the wiring check names it.
#[test]
fn an_approval_without_expose_build_created_by_is_anonymous() {
    let with = typed(&staged());
    let r = simulate(
        &with,
        "s",
        Release::LATEST,
        &Scenario::default(),
        Rc::new(InMemory::new()),
    )
    .unwrap();
    assert!(r.passed(), "{:#?} {:#?}", r.wiring, r.failures);
    let approver = |r: &build_state::concourse::Report| {
        let doc = r.played.document.as_ref().unwrap();
        let e = doc
            .history
            .iter()
            .find(|e| e.action == build_state::model::ActionKind::Approve)
            .unwrap();
        e.by.created_by.clone()
    };
    assert_eq!(approver(&r), Some("admin".to_string()));
    let without = typed(&staged().replace("  expose_build_created_by: true\n", ""));
    let r = simulate(
        &without,
        "s",
        Release::LATEST,
        &Scenario::default(),
        Rc::new(InMemory::new()),
    )
    .unwrap();
    assert_eq!(approver(&r), None);
    assert!(
        r.wiring.iter().any(|w| w.starts_with("job approve-sealing: approves 95 through state, which lacks expose_build_created_by: true")),
        "{:#?}",
        r.wiring
    );
}

/// An idle staged pipeline (the build blocked at its first stage, nothing
/// to do for hours): at most two checks a minute in all, the timer's every
/// minute and the gates' hourly ones (each check one S3 request and one
/// Concourse check build).
#[test]
fn an_idle_staged_pipeline_checks_at_most_twice_a_minute() {
    let idle = |hours: u32| {
        let text = format!(
            "task_time: 10m\ntasks: {{packer-kickstart: [{{outcome: fail, error: \"license expired\"}}]}}\nevents: [{{at: {hours}h, check: at-kickstart}}]\nexpect: {{delivered: false}}\n"
        );
        let s = Scenario::parse(&text).unwrap();
        let p = typed(&staged());
        let r = simulate(
            &p,
            "staged-image-build",
            Release::LATEST,
            &s,
            Rc::new(InMemory::new()),
        )
        .unwrap();
        assert!(r.failures.is_empty(), "{:#?}", r.failures);
        r.summary.checks
    };
    let per_hour = (idle(10) - idle(4)) as f64 / 6.0;
    assert!(per_hour <= 120.0, "{per_hour} checks an hour");
    assert!(
        per_hour >= 60.0,
        "the timer is checked every minute: {per_hour}"
    );
}

/// `simulate` is bounded: a pipeline too deep for the parser, one whose top
/// level is not a mapping, a scenario playing too long, a pipeline beyond
/// the budget: each exit 2 at once, with the bound named.
#[test]
fn simulate_refuses_what_it_cannot_play_in_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let deep = write(
        "deep.yml",
        &format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    );
    let list = write("list.yml", "- a\n- b\n");
    let long = write("long.yml", "until: 100000h\n");
    let many = {
        let mut text =
            String::from("resources:\n- {name: t, type: time, source: {interval: 1h}}\njobs:\n");
        for i in 0..400 {
            text.push_str(&format!(
                "- name: j{i}\n  plan:\n  - get: t\n    trigger: true\n"
            ));
        }
        write("many.yml", &text)
    };
    for (args, said) in [
        (
            vec!["simulate", deep.as_str()],
            "nested 100000 deep; at most 64 levels",
        ),
        (vec!["simulate", list.as_str()], "a pipeline is a mapping"),
        (
            vec![
                "simulate",
                "pipelines/staged-image-build.yml",
                "-l",
                "pipelines/vars/example.yml",
                "--scenario",
                long.as_str(),
            ],
            "until: 4166d 16h is more than the 30d a simulation plays",
        ),
        (
            vec!["simulate", many.as_str()],
            "400 jobs and 1 resources over 2d: more than a simulation plays",
        ),
    ] {
        let started = std::time::Instant::now();
        let out = cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}
