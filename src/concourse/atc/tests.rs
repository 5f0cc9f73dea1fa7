//! Each rule the ATC model follows, on a tiny pipeline (two or three
//! jobs, resources of stand-in types), citing the Concourse file it
//! follows (concourse/concourse at v8.2.5 unless a release is named).

use super::pipeline::{Pipeline, Resource};
use super::*;
use crate::concourse::Release;
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A worker whose tasks do what a test says (by task name: a queue of
/// outcomes, each taking a minute), and whose build-state resources
/// record every put with its environment.
#[derive(Default)]
struct Host {
    tasks: RefCell<BTreeMap<String, Vec<&'static str>>>,
    /// (seconds, build, task) of every task run.
    runs: RefCell<Vec<(u64, String, String)>>,
    /// (resource, params, env) of every put to a build-state resource.
    puts: RefCell<Vec<(String, Value, BuildEnv)>>,
    /// The artifacts each put saw.
    seen: RefCell<Vec<Vec<String>>>,
    clock: Cell<u64>,
}

impl Worker for Host {
    async fn check(
        &self,
        _: &Resource,
        _: Option<&Value>,
        _: Timestamp,
    ) -> Result<Vec<Value>, StepError> {
        Ok(vec![json!({"n": 0})])
    }
    async fn get(
        &self,
        _: &Resource,
        _: &Value,
        _: &Value,
        _: Timestamp,
    ) -> Result<Artifacts, StepError> {
        Ok(Artifacts::new())
    }
    async fn put(
        &self,
        r: &Resource,
        params: &Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Artifacts>,
        _: Timestamp,
    ) -> Result<PutDone, super::PutFailed> {
        self.seen
            .borrow_mut()
            .push(artifacts.keys().cloned().collect());
        let mut puts = self.puts.borrow_mut();
        puts.push((r.name.clone(), params.clone(), env.clone()));
        Ok(PutDone {
            version: json!({"n": puts.len()}),
            said: vec![],
            handoffs: params["check"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| Handed {
                    resource: n.as_str().unwrap().into(),
                    token: "t".into(),
                })
                .collect(),
        })
    }
    async fn task(&self, call: TaskCall<'_>) -> TaskEnd {
        let what = {
            let mut tasks = self.tasks.borrow_mut();
            let q = tasks.entry(call.task.name.clone()).or_default();
            if q.is_empty() { "ok" } else { q.remove(0) }
        };
        let now = self.clock.get();
        self.runs.borrow_mut().push((
            now,
            format!("{} #{}", call.build.job, call.build.name),
            call.task.name.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let exited = |status| TaskEnd::Exited {
            status,
            outputs: call
                .task
                .outputs
                .iter()
                .map(|o| (o.clone(), Artifacts::new()))
                .collect(),
            said: what.into(),
        };
        match what {
            "fail" => exited(BuildStatus::Failed),
            "lost" => TaskEnd::WorkerLost { rerun: false },
            "stuck" => TaskEnd::Stuck,
            "hang" => std::future::pending().await,
            _ => exited(BuildStatus::Succeeded),
        }
    }
}

impl Observer for Host {
    async fn state(&self) -> Option<String> {
        None
    }
    async fn put_landed(&self, _: &BuildRecord, _: &Resource) {}
}

/// What a test does at a time.
enum Act {
    Commit,
    Trigger(&'static str),
    Rerun(&'static str),
    Check(&'static str),
}

/// Plays the pipeline `yaml` on `release` for `hours`, with `acts` at
/// their times (seconds) and the host's task outcomes `tasks`.
fn play(
    yaml: &str,
    release: &str,
    rerun_flag: bool,
    tasks: &[(&str, &[&'static str])],
    acts: Vec<(u64, Act)>,
    hours: u64,
) -> (Record, Rc<Host>) {
    let value = crate::pipeline::parse_yaml(yaml).unwrap();
    let release: Release = release.parse().unwrap();
    let p = Pipeline::parse(&value, release).unwrap_or_else(|e| panic!("{e:#?}"));
    let host = Rc::new(Host::default());
    for (t, q) in tasks {
        host.tasks.borrow_mut().insert(t.to_string(), q.to_vec());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let record = local.block_on(&rt, async {
        let settings = Settings {
            release,
            pipeline: "p".into(),
            t0: crate::concourse::play::t0(),
            rerun_when_worker_disappears: rerun_flag,
        };
        let atc = Atc::new(p, host.clone(), settings);
        let mut acts = acts;
        acts.sort_by_key(|(t, _)| *t);
        let mut acts = acts.into_iter().peekable();
        while atc.elapsed() < Duration::from_secs(hours * 3600) {
            while let Some((_, act)) = acts.next_if(|(t, _)| atc.elapsed().as_secs() >= *t) {
                match act {
                    Act::Commit => {
                        atc.commit();
                    }
                    Act::Trigger(j) => {
                        atc.trigger_job(j);
                    }
                    Act::Rerun(j) => {
                        atc.rerun_build(j);
                    }
                    Act::Check(r) => atc.check_resource(r),
                }
            }
            host.clock.set(atc.elapsed().as_secs());
            atc.tick().await;
            tokio::time::sleep(TICK).await;
        }
        atc.record()
    });
    (record, host)
}

fn builds<'a>(r: &'a Record, job: &str) -> Vec<&'a BuildRecord> {
    r.builds
        .iter()
        .filter(|b| b.job == job && b.started.is_some())
        .collect()
}

fn lines(r: &Record) -> String {
    r.timeline
        .iter()
        .map(|l| format!("{} {:?} {:?} {}", l.at, l.job, l.build, l.what))
        .collect::<Vec<_>>()
        .join("\n")
}

const TYPES: &str =
    "resource_types:\n- {name: build-state, type: registry-image, source: {repository: x}}\n";

/// Hooks nest as `atc/job_config.go` `StepConfig` nests them: a failed
/// task runs `on_failure`, never `on_success`, and `ensure` last; puts in
/// hooks get `BUILD_STATUS` from 8.2 (`atc/engine/builder.go`), `ensure`
/// the status of the hook around it, and no `BUILD_STATUS` before 8.2.
#[test]
fn hooks_nest_and_build_status_per_release() {
    let yaml = format!(
        "{TYPES}resources:\n- {{name: repo, type: git, source: {{}}}}\n- {{name: s, type: build-state, source: {{}}}}\njobs:\n- name: a\n  plan:\n  - {{get: repo, trigger: true}}\n  - task: t\n    config: {{platform: linux, run: {{path: x}}}}\n  on_success: {{put: s, no_get: true, params: {{hook: success}}}}\n  on_failure: {{put: s, no_get: true, params: {{hook: failure}}}}\n  ensure: {{put: s, no_get: true, params: {{hook: ensure}}}}\n"
    );
    for (release, status) in [("8.2", Some("failed")), ("8.0", None)] {
        let (_, host) = play(&yaml, release, false, &[("t", &["fail"])], vec![], 1);
        let puts = host.puts.borrow();
        let hooks: Vec<(&str, Option<&str>)> = puts
            .iter()
            .map(|(_, p, e)| (p["hook"].as_str().unwrap(), e.status.as_deref()))
            .collect();
        assert_eq!(hooks, [("failure", status), ("ensure", None)], "{release}");
    }
}

/// A job triggers on a version no build of it has used as that input,
/// failed builds included (`atc/db/versions_db.go`,
/// `atc/scheduler/scheduler.go`): a failed build is not retried on the same
/// commit; a new commit triggers again.
#[test]
fn first_occurrence_only() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}}\njobs:\n- name: a\n  plan:\n  - {get: repo, trigger: true}\n  - task: t\n    config: {platform: linux, run: {path: x}}\n";
    let (r, _) = play(
        yaml,
        "8.2",
        false,
        &[("t", &["fail"])],
        vec![(1800, Act::Commit)],
        2,
    );
    let a = builds(&r, "a");
    assert_eq!(a.len(), 2, "{}", lines(&r));
    assert_eq!(a[0].status, Some(BuildStatus::Failed));
    assert_ne!(a[0].inputs["repo"], a[1].inputs["repo"]);
}

/// `passed` takes versions only from succeeded builds of the jobs listed
/// (`atc/scheduler/algorithm`, `atc/db/versions_db.go`
/// `SuccessfulBuildOutputs`): the commit of a's failed build never reaches b.
#[test]
fn passed_only_through_succeeded_builds() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}}\njobs:\n- name: a\n  plan:\n  - {get: repo, trigger: true}\n  - task: t\n    config: {platform: linux, run: {path: x}}\n- name: b\n  plan:\n  - {get: repo, trigger: true, passed: [a]}\n";
    let (r, _) = play(
        yaml,
        "8.2",
        false,
        &[("t", &["ok", "fail"])],
        vec![(1800, Act::Commit)],
        2,
    );
    let b = builds(&r, "b");
    assert_eq!(b.len(), 1, "{}", lines(&r));
    assert_eq!(b[0].inputs["repo"].1, json!({"ref": "commit-1"}));
}

/// Jobs that share a serial group run one build at a time between them
/// (`atc/job_config.go` `MaxInFlight`, `atc/db/job.go` `ScheduleBuild`).
#[test]
fn serial_groups_run_one_at_a_time() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}}\njobs:\n- name: a\n  serial_groups: [g]\n  plan:\n  - {get: repo, trigger: true}\n  - task: ta\n    config: {platform: linux, run: {path: x}}\n- name: b\n  serial_groups: [g]\n  plan:\n  - {get: repo, trigger: true}\n  - task: tb\n    config: {platform: linux, run: {path: x}}\n";
    let (r, _) = play(yaml, "8.2", false, &[], vec![], 1);
    let (a, b) = (builds(&r, "a")[0], builds(&r, "b")[0]);
    let (first, second) = if a.started < b.started {
        (a, b)
    } else {
        (b, a)
    };
    assert!(second.started >= first.finished, "{}", lines(&r));
}

/// `max_in_flight: 2` runs at most two builds of the job at once
/// (`atc/job_config.go` `MaxInFlight`).
#[test]
fn max_in_flight_bounds_running_builds() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}}\njobs:\n- name: a\n  max_in_flight: 2\n  plan:\n  - {get: repo}\n  - task: t\n    config: {platform: linux, run: {path: x}}\n";
    let acts = (0..4).map(|i| (i, Act::Trigger("a"))).collect();
    let (r, _) = play(yaml, "8.2", false, &[], acts, 1);
    let a = builds(&r, "a");
    assert_eq!(a.len(), 4, "{}", lines(&r));
    for b in &a {
        let t = b.started.unwrap();
        let running = a
            .iter()
            .filter(|o| o.started.unwrap() <= t && o.finished.unwrap() > t)
            .count();
        assert!(running <= 2, "{}", lines(&r));
    }
}

/// A get of a version fetched before with the same source and params is
/// served from the cache (`atc/exec/get_step.go`); a put's version becomes
/// a version of its resource that triggers (`atc/exec/put_step.go`).
#[test]
fn get_cache_and_put_outputs() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}}\n- {name: out, type: mock, source: {}, check_every: never}\njobs:\n- name: a\n  plan:\n  - {get: repo, trigger: true}\n  - {put: out, no_get: true}\n- name: b\n  plan:\n  - {get: out, trigger: true}\n  - {get: repo}\n";
    let (r, _) = play(yaml, "8.2", false, &[], vec![], 1);
    assert_eq!(builds(&r, "b").len(), 1, "{}", lines(&r));
    assert!(builds(&r, "b")[0].inputs["out"].1["put"].is_u64());
    assert_eq!(
        (r.gets_run, r.cache_hits),
        (2, 1),
        "repo's commit-1 fetched once"
    );
}

/// A put sees every artifact before 8.0 (`inputs: all`) and, since 8.0,
/// only those its params name (`inputs: detect`, `atc/exec/put_step.go`).
#[test]
fn put_inputs_detect_since_8_0() {
    let yaml = format!(
        "{TYPES}resources:\n- {{name: repo, type: git, source: {{}}}}\n- {{name: s, type: build-state, source: {{}}}}\njobs:\n- name: a\n  plan:\n  - {{get: repo, trigger: true}}\n  - task: t\n    config: {{platform: linux, run: {{path: x}}, outputs: [{{name: out}}]}}\n  - {{put: s, no_get: true, params: {{file: out/x}}}}\n"
    );
    let seen = |release| {
        let (_, host) = play(&yaml, release, false, &[], vec![], 1);
        host.seen.take()
    };
    assert_eq!(seen("7.11"), [vec!["out".to_string(), "repo".to_string()]]);
    assert_eq!(seen("8.0"), [vec!["out".to_string()]]);
}

/// Every check, a webhook's included, sets the next periodic check one
/// interval after it ends (`atc/db/resource_config_scope.go`
/// `UpdateLastCheckEndTime`), and the scanner looks every 10 s
/// (`--lidar-scanner-interval`).
#[test]
fn the_next_check_is_an_interval_after_every_check() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}, check_every: 1h}\njobs:\n- name: a\n  plan:\n  - {get: repo, trigger: true}\n";
    let (r, _) = play(
        yaml,
        "8.2",
        false,
        &[],
        vec![(1200, Act::Check("repo")), (1201, Act::Commit)],
        3,
    );
    // Checks at 0 (first scan), 20m (by hand), then 1h20m, not 1h.
    let a = builds(&r, "a");
    assert_eq!(a.len(), 2, "{}", lines(&r));
    let second = a[1].created;
    assert!(
        (4800..4830).contains(&second),
        "the commit found at 1h20m: {second}\n{}",
        lines(&r)
    );
}

/// New versions from a check only mark jobs for the scheduler, which runs
/// every 10 s (`atc/atccmd/command.go` `Interval: 10 * time.Second`;
/// `saveVersions` → `requestScheduleForJobsUsingResourceConfigScope`): a
/// webhook's check build (`check_webhook.go`) takes a few seconds, then
/// the build starts at the scheduler's next tick, not at once.
#[test]
fn a_webhook_check_then_the_tick() {
    let yaml = format!(
        "{TYPES}resources:\n- {{name: repo, type: git, source: {{}}, check_every: 24h, webhook_token: t}}\n- {{name: s, type: build-state, source: {{}}}}\njobs:\n- name: poke\n  plan:\n  - {{put: s, no_get: true, params: {{check: [repo]}}}}\n- name: a\n  plan:\n  - {{get: repo, trigger: true}}\n"
    );
    let (r, _) = play(
        &yaml,
        "8.2",
        false,
        &[],
        vec![(600, Act::Commit), (605, Act::Trigger("poke"))],
        1,
    );
    assert_eq!(r.webhooks, 1, "{}", lines(&r));
    let put = r
        .timeline
        .iter()
        .find(|l| l.what.starts_with("put s"))
        .unwrap()
        .at;
    let second = builds(&r, "a")[1].created;
    let found = put + CHECK_TIME.as_secs();
    assert!(
        second >= found && second < found + 10,
        "{put} {second}\n{}",
        lines(&r)
    );
    assert_eq!(second % 10, 0, "on the tick: {}", lines(&r));
}

/// A manual build checks every input without `passed` first and waits for
/// it (`atc/scheduler/buildstarter.go` `createChecks`, `atc/scheduler/
/// build.go` `ResourcesChecked`): a commit no periodic check has seen yet
/// is the one it builds.
#[test]
fn a_manual_build_checks_its_inputs_first() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}, check_every: 24h}\njobs:\n- name: a\n  plan:\n  - {get: repo}\n";
    let (r, _) = play(
        yaml,
        "8.2",
        false,
        &[],
        vec![(600, Act::Commit), (601, Act::Trigger("a"))],
        1,
    );
    let a = builds(&r, "a");
    assert_eq!(a.len(), 1, "{}", lines(&r));
    assert_eq!(a[0].inputs["repo"].1, json!({"ref": "commit-2"}));
    assert!(
        a[0].started.unwrap() >= 601 + CHECK_TIME.as_secs(),
        "{}",
        lines(&r)
    );
}

/// A rerun adopts the inputs of the build it reruns and is named after it
/// (`atc/scheduler/build.go` `rerunBuild`, `atc/db/job.go` `RerunBuild`).
#[test]
fn a_rerun_takes_the_original_inputs() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}}\njobs:\n- name: a\n  plan:\n  - {get: repo, trigger: true}\n  - task: t\n    config: {platform: linux, run: {path: x}}\n";
    let (r, _) = play(
        yaml,
        "8.2",
        false,
        &[("t", &["fail"])],
        vec![(600, Act::Commit), (601, Act::Rerun("a"))],
        1,
    );
    let a = builds(&r, "a");
    let rerun = a.iter().find(|b| b.rerun_of.is_some()).expect("a rerun");
    assert_eq!(rerun.name, "1.1");
    assert_eq!(
        rerun.inputs["repo"].1,
        json!({"ref": "commit-1"}),
        "{}",
        lines(&r)
    );
}

const LOST: &str = "resource_types:\n- {name: build-state, type: registry-image, source: {repository: x}}\nresources:\n- {name: repo, type: git, source: {}}\n- {name: s, type: build-state, source: {}}\njobs:\n- name: a\n  serial: true\n  plan:\n  - {get: repo, trigger: true}\n  - task: t\n    config: {platform: linux, run: {path: x}}\n  on_error: {put: s, no_get: true, params: {hook: error}}\n  ensure: {put: s, no_get: true, params: {hook: ensure}}\n";

fn hooks_run(host: &Host) -> Vec<String> {
    host.puts
        .borrow()
        .iter()
        .map(|(_, p, _)| p["hook"].as_str().unwrap().to_string())
        .collect()
}

/// A vanished worker errors its step and `on_error` runs
/// (`atc/exec/on_error.go`).
#[test]
fn a_lost_worker_errors_the_step_and_on_error_runs() {
    let (r, host) = play(LOST, "8.2", false, &[("t", &["lost"])], vec![], 1);
    assert_eq!(builds(&r, "a")[0].status, Some(BuildStatus::Errored));
    assert_eq!(hooks_run(&host), ["error", "ensure"]);
}

/// With `--enable-rerun-when-worker-disappears` the error is `Retriable`:
/// `on_error` is skipped (`atc/exec/on_error.go`), `ensure` runs
/// (`atc/exec/ensure_step.go`), the build is not finished
/// (`atc/engine/engine.go`) and the tracker runs it again from its start
/// (`atc/builds/tracker.go`): same build, the task twice.
#[test]
fn a_lost_worker_reruns_the_build_with_the_flag() {
    let (r, host) = play(LOST, "8.2", true, &[("t", &["lost"])], vec![], 1);
    let a = builds(&r, "a");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].status, Some(BuildStatus::Succeeded), "{}", lines(&r));
    assert_eq!(host.runs.borrow().len(), 2);
    assert_eq!(hooks_run(&host), ["ensure", "ensure"]);
}

/// When the ATC never notices the worker is gone the build stays running:
/// no hook, and a serial job starts nothing after it (concourse#3011).
#[test]
fn a_stuck_build_holds_a_serial_job() {
    let (r, host) = play(
        LOST,
        "8.2",
        false,
        &[("t", &["stuck"])],
        vec![(600, Act::Commit)],
        2,
    );
    assert_eq!(builds(&r, "a").len(), 1, "{}", lines(&r));
    assert_eq!(builds(&r, "a")[0].status, None);
    assert!(hooks_run(&host).is_empty());
}

/// `BUILD_CREATED_BY` reaches only puts to a resource with
/// `expose_build_created_by` (`atc/builds/planner.go`,
/// `atc/engine/builder.go` `stepMetadata`), and only for builds someone
/// created (a manual build).
#[test]
fn build_created_by_only_where_exposed() {
    let yaml = format!(
        "{TYPES}resources:\n- {{name: plain, type: build-state, source: {{}}}}\n- {{name: open, type: build-state, source: {{}}, expose_build_created_by: true}}\njobs:\n- name: a\n  plan:\n  - {{put: plain, no_get: true}}\n  - {{put: open, no_get: true}}\n"
    );
    let (_, host) = play(&yaml, "8.2", false, &[], vec![(0, Act::Trigger("a"))], 1);
    let by: Vec<(String, Option<String>)> = host
        .puts
        .borrow()
        .iter()
        .map(|(r, _, e)| (r.clone(), e.created_by.clone()))
        .collect();
    assert_eq!(
        by,
        [
            ("plain".into(), None),
            ("open".into(), Some("admin".into()))
        ]
    );
}

/// Since 8.2 the scanner checks trigger inputs without `passed` on their
/// interval, and a trigger with `passed` is not one of them
/// (`atc/db/check_factory.go` `Resources`: `passed_job_id IS NULL`;
/// other inputs once, while never checked); before 8.2 every input is
/// (v8.0.0's query).
#[test]
fn triggering_inputs_since_8_2() {
    let yaml = format!(
        "{TYPES}resources:\n- {{name: repo, type: git, source: {{}}, check_every: 10m}}\n- {{name: other, type: build-state, source: {{}}, check_every: 10m}}\njobs:\n- name: a\n  plan:\n  - {{get: repo, trigger: true}}\n  - {{get: other}}\n- name: b\n  plan:\n  - {{get: other, trigger: true, passed: [a]}}\n"
    );
    let checks = |release| play(&yaml, release, false, &[], vec![], 2).0.checks;
    assert_eq!(checks("8.2"), 1, "checked once, when never checked");
    assert!(checks("8.0") >= 12, "every 10 minutes: {}", checks("8.0"));
}

/// Durations are Go's `time.ParseDuration` (`atc/config.go`
/// `CheckEvery.UnmarshalJSON`): `1d` is refused, naming the field.
#[test]
fn go_durations_refuse_days() {
    let yaml = "resources:\n- {name: repo, type: git, source: {}, check_every: 1d}\njobs:\n- name: a\n  plan:\n  - {get: repo, trigger: true, timeout: 90 s}\n";
    let errors =
        Pipeline::parse(&crate::pipeline::parse_yaml(yaml).unwrap(), Release::LATEST).unwrap_err();
    assert!(
        errors.iter().any(
            |e| e == "resources.repo: check_every: time: unknown unit \"d\" in duration \"1d\""
        ),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("jobs.a.plan[0]: timeout: time: unknown unit")),
        "{errors:#?}"
    );
}
