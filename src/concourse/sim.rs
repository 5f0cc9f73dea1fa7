//! Concourse's scheduling on virtual time.
//!
//! One current-thread tokio runtime with a paused clock: every check loop,
//! scenario event and build is a task, and time jumps to the next timer
//! when all of them wait, so hours of a pipeline play in milliseconds and
//! the same inputs always give the same timeline.
//!
//! What is modelled, from concourse/concourse:
//! - checks: each resource on its `check_every` (default 1m); since 8.2 only
//!   the resources some job triggers on, the others when a build needs them
//!   (`atc/lidar/check_factory.go`); a check that finds anything new moves
//!   every version it returned to the front, in its order (`SaveVersions`,
//!   `atc/db/resource_config_scope.go`); a put's output is saved as a
//!   version of its resource. A version, once saved, stays (a gated check
//!   that finds nothing removes none).
//! - scheduling every 10 s (`atc/scheduler`): a job gets a pending build when
//!   a `trigger: true` input's newest candidate was never an input of that
//!   get in any build of the job; a pending build starts when the job may
//!   run one more (`serial`, `max_in_flight`, `serial_groups`) and adopts
//!   its inputs then, not when it was created (`buildstarter.go`); `passed`
//!   takes the versions of the newest succeeded build of each job listed,
//!   one build for all the inputs that share that job
//!   (`atc/db/versions_db.go`), and a build's inputs and outputs count for
//!   `passed` only once it has finished (`atc/db/build.go` Finish).
//! - builds: the get cache (`atc/exec/get_step.go`: a get of a version
//!   already fetched with the same source and params does not run `in`);
//!   a put's implicit get unless `no_get`; put inputs `all` before 8.0,
//!   `detect` since (`put_step.go`); `attempts`, `timeout` (a timed-out
//!   step fails); hooks nested as `atc/steps.go` builds them (ensure outside
//!   on_error outside on_abort outside on_failure outside on_success: a
//!   failing `on_success` makes the step failed, so `on_failure` runs
//!   next); `BUILD_STATUS` for steps in hooks since 8.2, `ensure` inheriting
//!   the enclosing hook's (`atc/engine/builder.go`); `BUILD_URL` since 8.0;
//!   a resource script that exits non-zero fails its step, a task without
//!   its inputs or its image errors it.

use super::Release;
use super::config::{GetStep, Job, Pipeline, PutStep, Resource, Step, StepKind, TaskStep};
use super::scenario::{Happening, Outcome, Scenario, TaskRun};
use crate::model::{Document, Timestamp};
use crate::protocol::BuildEnv;
use serde::Serialize;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the scheduler looks at every job.
pub const SCHEDULER_TICK: Duration = Duration::from_secs(10);

/// How long a get takes (a container, a resource script).
pub const STEP_TIME: Duration = Duration::from_secs(3);

/// A put: its write lands this long after the step starts ...
pub const PUT_WRITES_AFTER: Duration = Duration::from_secs(1);

/// ... and the step ends this long after the write.
pub const PUT_ENDS_AFTER: Duration = Duration::from_secs(2);

/// A build finishes (its outputs count for `passed`) this long after its
/// last step.
pub const FINISH_TIME: Duration = Duration::from_secs(2);

/// The files of one artifact, by path inside it.
pub type Files = BTreeMap<String, Vec<u8>>;

/// How a step, or a build, ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Succeeded.
    Succeeded,
    /// Failed.
    Failed,
    /// Errored.
    Errored,
    /// Aborted.
    Aborted,
}

impl Status {
    /// As Concourse spells it (and gives it in `BUILD_STATUS`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Errored => "errored",
            Status::Aborted => "aborted",
        }
    }
}

/// The resource steps of build-state resources, and tasks run for real:
/// in memory ([`super::memory::InMemory`]) or through the packaged
/// programs (the project's end-to-end tests).
#[allow(async_fn_in_trait)]
pub trait Steps {
    /// `check` from `from` (the resource's newest version, if any).
    async fn check(
        &self,
        resource: &Resource,
        from: Option<&Value>,
        now: Timestamp,
    ) -> Result<Vec<Value>, String>;

    /// `in` of `version`: the files it writes.
    async fn get(
        &self,
        resource: &Resource,
        version: &Value,
        params: &Value,
        now: Timestamp,
    ) -> Result<Files, String>;

    /// `out` with `params`, the build's `env`, and the artifacts it sees:
    /// the version it answers, and what it said on stderr.
    async fn put(
        &self,
        resource: &Resource,
        params: &Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Files>,
        now: Timestamp,
    ) -> Result<(Value, Vec<String>), String>;

    /// The build's document as stored now.
    async fn document(&self, resource: &Resource) -> Option<Document>;

    /// The build's heartbeat as stored now (none when this implementation
    /// cannot read it).
    async fn heartbeat(&self, _resource: &Resource) -> Option<crate::model::Heartbeat> {
        None
    }

    /// The check webhooks the puts since the last call posted (after their
    /// writes landed), for the simulation to play the ATC's side.
    fn take_handoffs(&self) -> Vec<Handed> {
        Vec::new()
    }

    /// `build-state heartbeat` from inside a task, for `claim`: what it
    /// said, or why it was refused (or cannot be sent here).
    async fn beat(
        &self,
        _resource: &Resource,
        _claim: crate::model::Claim,
    ) -> Result<String, String> {
        Err("heartbeats are not played by these steps".into())
    }

    /// Makes the store refuse every request from `from` to `until`; false
    /// when this implementation cannot.
    fn outage(&self, _from: Timestamp, _until: Timestamp) -> bool {
        false
    }

    /// Runs a task for real: its status, its outputs and what it said;
    /// `None` plays the scenario's outcome instead.
    async fn task(
        &self,
        _task: &TaskStep,
        _artifacts: &BTreeMap<String, Files>,
    ) -> Option<(Status, BTreeMap<String, Files>, String)> {
        None
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Concourse release.
    pub release: Release,
    /// The pipeline's name (for `BUILD_PIPELINE_NAME`).
    pub pipeline: String,
    /// The virtual time the simulation starts at.
    pub t0: Timestamp,
}

/// One line of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// Seconds since the start.
    pub at: u64,
    /// The job, if a build did it.
    pub job: Option<String>,
    /// The build's number in its job.
    pub build: Option<u64>,
    /// What happened.
    pub what: String,
    /// The build's state and status after it, when a put changed them.
    pub state: Option<String>,
}

/// One build, as the model recorded it.
#[derive(Clone, Debug, Serialize)]
pub struct BuildRecord {
    /// Unique in the simulation.
    pub id: u64,
    /// Its job.
    pub job: String,
    /// Its number in the job.
    pub number: u64,
    /// Triggered by hand.
    pub manual: bool,
    /// How it ended (`None`: still pending or running at the end).
    pub status: Option<Status>,
    /// When it was created, started and finished (seconds since the start).
    pub created: u64,
    /// When it started.
    pub started: Option<u64>,
    /// When it finished.
    pub finished: Option<u64>,
    /// Its inputs: get name → (resource, version).
    pub inputs: BTreeMap<String, (String, Value)>,
    /// Its outputs: (resource, version) of each put.
    pub outputs: Vec<(String, Value)>,
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
pub struct Played {
    /// The timeline.
    pub timeline: Vec<Line>,
    /// Every build.
    pub builds: Vec<BuildRecord>,
    /// Runs per task.
    pub task_runs: BTreeMap<String, u64>,
    /// The build's document at the end.
    #[serde(skip)]
    pub document: Option<Document>,
    /// Seconds simulated.
    pub elapsed: u64,
    /// When the build was delivered (seconds since the start).
    pub delivered_at: Option<u64>,
    /// Gets served from the cache, and gets that ran `in`.
    pub cache_hits: u64,
    /// Gets that ran `in`.
    pub gets_run: u64,
    /// Checks of build-state resources (each one S3 request or more).
    pub checks: u64,
    /// Check webhooks the ATC took.
    pub webhooks: u64,
    /// Invariants the play broke (one run built two commits, ...).
    pub violations: Vec<String>,
    /// Why the play stopped.
    pub stopped: String,
}

struct BuildState {
    rec: BuildRecord,
    job: usize,
}

#[derive(Default)]
struct World {
    versions: BTreeMap<String, Vec<Value>>,
    builds: Vec<BuildState>,
    running: BTreeMap<usize, u32>,
    groups_busy: BTreeSet<String>,
    cache: BTreeMap<String, Files>,
    cache_hits: u64,
    gets_run: u64,
    checks: u64,
    commits: u64,
    last_tick: BTreeMap<String, Duration>,
    last_checked: BTreeMap<String, Duration>,
    check_failing: BTreeSet<String>,
    timeline: Vec<Line>,
    task_runs: BTreeMap<String, u64>,
    scripts: BTreeMap<String, VecDeque<TaskRun>>,
    numbers: BTreeMap<usize, u64>,
    /// run → the commits the builds that wrote to it had.
    commits_of_run: BTreeMap<u64, BTreeSet<String>>,
    last_change: Duration,
    last_doc: Option<(u64, String)>,
    delivered_at: Option<Duration>,
    future_events: usize,
    violations: Vec<String>,
    /// Rises whenever what scheduling looks at changes (a version saved, a
    /// build created, started or finished); a job is looked at again only
    /// when it rose since its last look.
    epoch: u64,
    looked: BTreeMap<usize, u64>,
    /// The revision whose approval a human was asked for.
    approval_asked: Option<u64>,
    /// Check webhooks the ATC took.
    webhooks: u64,
}

/// The simulation of one pipeline under one scenario.
struct Sim<S: Steps> {
    p: Pipeline,
    steps: Rc<S>,
    opts: Options,
    scenario: Scenario,
    w: RefCell<World>,
    start: Instant,
    /// The ungated build-state resource whose document is the build's.
    state: usize,
    /// Wakes the scheduler before its next tick (a webhook's check saved
    /// versions: Concourse schedules the jobs that use them at once).
    wake: tokio::sync::Notify,
    /// Its configuration.
    config: Option<crate::config::Config>,
}

/// A candidate version of an input, with the upstream builds (per
/// `passed` job) it went through.
type Cand = (Value, BTreeMap<String, BTreeSet<u64>>);

/// A check webhook a put posted: the resource, and the token it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handed {
    /// The resource to check.
    pub resource: String,
    /// The `webhook_token` sent.
    pub token: String,
}

/// One build as it runs.
struct Ctx {
    build: usize,
    job: usize,
    artifacts: RefCell<BTreeMap<String, Files>>,
    /// Lost with its worker: no hook runs.
    lost: Cell<bool>,
    /// Aborted: the rest of the plan is skipped, the hooks run.
    aborted: Cell<bool>,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Plays `scenario` on `pipeline`: the timeline and what happened.
pub fn play<S: Steps + 'static>(
    pipeline: &Pipeline,
    steps: Rc<S>,
    opts: &Options,
    scenario: &Scenario,
) -> Result<Played, String> {
    let state = pipeline
        .resources
        .iter()
        .position(|r| r.build_state && r.source.get("gate").is_none())
        .ok_or("the pipeline has no ungated build-state resource (the one every put goes to)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("cannot start the simulation: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let sim = Rc::new(Sim {
            p: pipeline.clone(),
            steps,
            opts: opts.clone(),
            scenario: scenario.clone(),
            w: RefCell::new(World {
                commits: 1,
                scripts: scenario
                    .tasks
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                    .collect(),
                future_events: scenario.events.len(),
                ..World::default()
            }),
            start: Instant::now(),
            state,
            wake: tokio::sync::Notify::new(),
            config: serde_json::from_value(pipeline.resources[state].source.clone())
                .ok()
                .and_then(|s| crate::resource::configure(&s).ok()),
        });
        sim.main().await
    })
}

impl<S: Steps + 'static> Sim<S> {
    fn state(&self) -> &Resource {
        &self.p.resources[self.state]
    }

    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    fn now(&self) -> Timestamp {
        let ms = self.elapsed().as_millis() as i64;
        self.opts.t0 + chrono::Duration::milliseconds(ms)
    }

    fn log(&self, build: Option<usize>, what: String, state: Option<String>) {
        let mut w = self.w.borrow_mut();
        let (job, number) = match build {
            Some(b) => (
                Some(w.builds[b].rec.job.clone()),
                Some(w.builds[b].rec.number),
            ),
            None => (None, None),
        };
        let at = self.elapsed().as_secs();
        w.timeline.push(Line {
            at,
            job,
            build: number,
            what,
            state,
        });
    }

    async fn main(self: Rc<Self>) -> Result<Played, String> {
        let until = self.scenario.until;
        let mut events = Vec::new();
        for e in &self.scenario.events {
            if let Happening::StoreDown(d) = &e.what {
                let from = self.opts.t0 + chrono::Duration::from_std(e.at).unwrap_or_default();
                let to = from + chrono::Duration::from_std(*d).unwrap_or_default();
                if !self.steps.outage(from, to) {
                    return Err("store_down needs the in-memory store".into());
                }
            }
            events.push(e.clone());
        }
        let mut tasks = Vec::new();
        // Scenario events, each at its time. (Spawned tasks borrow `self`
        // through an Rc clone; they end before `main` returns.)
        for e in events {
            let me = self.clone();
            tasks.push(spawn(async move {
                tokio::time::sleep_until(me.start + e.at).await;
                me.happen(&e.what).await;
                me.w.borrow_mut().future_events -= 1;
            }));
        }
        let triggers = self.p.triggers();
        for r in &self.p.resources {
            let Some(every) = r.check_every else { continue };
            let used = self
                .p
                .jobs
                .iter()
                .any(|j| j.gets().iter().any(|g| g.resource == r.name));
            if !used || (self.opts.release.checks_only_triggers() && !triggers.contains(&r.name)) {
                continue;
            }
            let me = self.clone();
            let name = r.name.clone();
            tasks.push(spawn(async move {
                loop {
                    me.check(&name).await;
                    tokio::time::sleep(every).await;
                }
            }));
        }
        let stopped = loop {
            self.schedule().await;
            self.observe().await;
            if let Some(why) = self.finished().await {
                break why;
            }
            if self.elapsed() >= until {
                break format!(
                    "the scenario's time ran out ({})",
                    crate::model::duration::format(until)
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(SCHEDULER_TICK) => {}
                _ = self.wake.notified() => {}
            }
        };
        for t in tasks {
            t.abort();
        }
        let document = self.steps.document(self.state()).await;
        let w = self.w.take();
        let mut violations = w.violations;
        for (run, commits) in &w.commits_of_run {
            if commits.len() > 1 {
                violations.push(format!(
                    "run {run} built more than one commit: {} (every stage of a run must build the commit it started with)",
                    commits.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(Played {
            timeline: w.timeline,
            builds: w.builds.into_iter().map(|b| b.rec).collect(),
            task_runs: w.task_runs,
            document,
            elapsed: self.elapsed().as_secs(),
            delivered_at: w.delivered_at.map(|d| d.as_secs()),
            cache_hits: w.cache_hits,
            gets_run: w.gets_run,
            checks: w.checks,
            webhooks: w.webhooks,
            violations,
            stopped,
        })
    }

    /// Notes a change of the document (for the stop rule and delivery),
    /// and asks the scenario's approver when a stage waits for approval.
    async fn observe(self: &Rc<Self>) {
        let doc = self.steps.document(self.state()).await;
        if let (Some(d), Some(after)) = (&doc, self.scenario.approve_after)
            && d.status == crate::model::Status::AwaitingApproval
            && self.w.borrow().approval_asked != Some(d.revision)
        {
            let (n, revision) = (d.state, d.revision);
            {
                let mut w = self.w.borrow_mut();
                w.approval_asked = Some(revision);
                w.future_events += 1;
            }
            let me = self.clone();
            spawn(async move {
                tokio::time::sleep(after).await;
                me.approve(n).await;
                me.w.borrow_mut().future_events -= 1;
            });
        }
        let key = doc.as_ref().map(|d| (d.revision, d.status.to_string()));
        let mut w = self.w.borrow_mut();
        if key != w.last_doc {
            w.last_doc = key;
            w.last_change = self.elapsed();
        }
        if let Some(d) = &doc
            && d.status == crate::model::Status::Completed
            && w.delivered_at.is_none()
        {
            w.delivered_at = Some(self.elapsed());
        }
    }

    /// Why the play is over, when it is: nothing runs or waits, no event
    /// is to come, the document has not changed for a while and no time
    /// opens a gate later (a retry due, a timeout).
    async fn finished(&self) -> Option<String> {
        // The longest a pipeline can wait for its next version: a check, or
        // a time resource's interval.
        let quiet = self
            .p
            .resources
            .iter()
            .filter_map(|r| {
                let interval = (r.kind == "time")
                    .then(|| r.source["interval"].as_str())
                    .flatten()
                    .and_then(|i| crate::model::duration::parse(i).ok());
                match (r.check_every, interval) {
                    (Some(c), Some(i)) => Some(c + i),
                    (c, i) => c.or(i),
                }
            })
            .max()
            .unwrap_or(super::config::DEFAULT_CHECK_EVERY)
            + Duration::from_secs(120);
        {
            let w = self.w.borrow();
            let busy = w.builds.iter().any(|b| b.rec.status.is_none());
            if busy || w.future_events > 0 || self.elapsed() < w.last_change + quiet {
                return None;
            }
        }
        let doc = self.steps.document(self.state()).await?;
        let heartbeat = self.steps.heartbeat(self.state()).await;
        let now = self.now();
        let config = self.config.as_ref()?;
        // A time that opens a gate, and then a check and a schedule after it.
        let margin = chrono::Duration::from_std(quiet).unwrap_or_default();
        let later = doc.retry_at.is_some_and(|t| t + margin > now)
            || doc
                .dead_since(&config.retry, heartbeat.as_ref())
                .is_some_and(|t| t + margin > now);
        if later {
            return None;
        }
        Some(format!(
            "nothing left to happen: {} (revision {}), no build running or pending, no gate to open later",
            doc.whereabouts(),
            doc.revision
        ))
    }

    async fn happen(self: &Rc<Self>, what: &Happening) {
        match what {
            Happening::Commit => {
                let n = {
                    let mut w = self.w.borrow_mut();
                    w.commits += 1;
                    w.commits
                };
                self.log(None, format!("git: commit-{n} pushed"), None);
            }
            Happening::StoreDown(d) => {
                self.log(
                    None,
                    format!(
                        "the store goes down for {}",
                        crate::model::duration::format(*d)
                    ),
                    None,
                );
                // The event lasts until the store is back: what was waiting
                // for it happens after that.
                tokio::time::sleep(*d).await;
                self.log(None, "the store is back".into(), None);
                self.w.borrow_mut().last_change = self.elapsed();
            }
            Happening::Check(name) => {
                self.log(None, format!("fly check-resource {name}"), None);
                self.check(name).await;
                // New versions request a schedule of the jobs that use
                // them: at once here.
                self.schedule().await;
            }
            Happening::Trigger(job) => {
                let Some(ji) = self.p.jobs.iter().position(|j| j.name == *job) else {
                    self.log(None, format!("fly trigger-job {job}: no such job"), None);
                    return;
                };
                let b = self.create_build(ji, true);
                self.log(Some(b), "fly trigger-job: a pending build".into(), None);
            }
            Happening::Put { params, resource } => {
                let r = match resource {
                    Some(n) => match self.p.resource(n) {
                        Some(r) => r,
                        None => {
                            self.log(
                                None,
                                format!("a human's put to {n}: no such resource"),
                                None,
                            );
                            return;
                        }
                    },
                    None => self.state(),
                };
                let env = BuildEnv::default();
                let result = self
                    .steps
                    .put(r, params, &env, &BTreeMap::new(), self.now())
                    .await;
                let after = self.where_now().await;
                match result {
                    Ok((v, _)) => {
                        self.save_versions(&r.name, vec![v]);
                        self.log(None, format!("a human puts {params} to {}", r.name), after);
                    }
                    Err(e) => self.log(
                        None,
                        format!("a human puts {params} to {}: refused: {e}", r.name),
                        after,
                    ),
                }
            }
        }
    }

    /// A human approves stage `n`: by running the job whose put approves
    /// it (the pipeline's approval job), else with the CLI.
    async fn approve(self: &Rc<Self>, n: u32) {
        let job = self.p.jobs.iter().position(|j| {
            j.puts()
                .iter()
                .any(|p| p.params.get("approve").and_then(Value::as_u64) == Some(u64::from(n)))
        });
        match job {
            Some(ji) => {
                let b = self.create_build(ji, true);
                self.log(
                    Some(b),
                    format!("a human approves {n}: fly trigger-job"),
                    None,
                );
            }
            None => {
                let params = json!({"approve": n, "reason": "approved by the scenario's human"});
                self.happen(&Happening::Put {
                    params,
                    resource: None,
                })
                .await;
            }
        }
    }

    async fn where_now(&self) -> Option<String> {
        self.steps
            .document(self.state())
            .await
            .map(|d| format!("{} {} r{}", d.state, d.status, d.revision))
    }

    /// `SaveVersions`: when anything is new, every version given moves to
    /// the front (newest last here), in the order given.
    fn save_versions(&self, resource: &str, found: Vec<Value>) -> bool {
        let mut w = self.w.borrow_mut();
        let list = w.versions.entry(resource.to_string()).or_default();
        if found.iter().all(|v| list.contains(v)) {
            return false;
        }
        for v in found {
            list.retain(|x| *x != v);
            list.push(v);
        }
        w.epoch += 1;
        true
    }

    async fn check(&self, name: &str) {
        let Some(r) = self.p.resource(name) else {
            return;
        };
        let elapsed = self.elapsed();
        self.w
            .borrow_mut()
            .last_checked
            .insert(name.to_string(), elapsed);
        let found: Result<Vec<Value>, String> = if r.build_state {
            let from = self
                .w
                .borrow()
                .versions
                .get(name)
                .and_then(|v| v.last().cloned());
            self.w.borrow_mut().checks += 1;
            self.steps.check(r, from.as_ref(), self.now()).await
        } else {
            match r.kind.as_str() {
                "git" => Ok(vec![
                    json!({"ref": format!("commit-{}", self.w.borrow().commits)}),
                ]),
                "time" => {
                    let interval = r.source["interval"]
                        .as_str()
                        .and_then(|i| crate::model::duration::parse(i).ok())
                        .unwrap_or(Duration::from_secs(60));
                    let mut w = self.w.borrow_mut();
                    let last = w.last_tick.get(name).copied();
                    if last.is_none_or(|t| elapsed >= t + interval) {
                        w.last_tick.insert(name.to_string(), elapsed);
                        Ok(vec![json!({"time": format!("{}s", elapsed.as_secs())})])
                    } else {
                        Ok(vec![])
                    }
                }
                _ => Ok(vec![json!({"version": "1"})]),
            }
        };
        // A failing check is said once (and when checks work again), not
        // once per resource.
        match found {
            Ok(v) => {
                let again = {
                    let mut w = self.w.borrow_mut();
                    w.check_failing.remove(name) && w.check_failing.is_empty()
                };
                if again {
                    self.log(None, "checks work again".into(), None);
                }
                self.save_versions(name, v);
            }
            Err(e) => {
                let first = {
                    let mut w = self.w.borrow_mut();
                    let first = w.check_failing.is_empty();
                    w.check_failing.insert(name.to_string());
                    first
                };
                if first {
                    self.log(
                        None,
                        format!(
                            "check of {name} failed (so do the others until it works again): {e}"
                        ),
                        None,
                    );
                }
            }
        }
    }

    fn create_build(&self, job: usize, manual: bool) -> usize {
        let mut w = self.w.borrow_mut();
        let number = {
            let n = w.numbers.entry(job).or_insert(0);
            *n += 1;
            *n
        };
        let id = w.builds.len() as u64 + 1;
        let created = self.elapsed().as_secs();
        w.epoch += 1;
        w.builds.push(BuildState {
            job,
            rec: BuildRecord {
                id,
                job: self.p.jobs[job].name.clone(),
                number,
                manual,
                status: None,
                created,
                started: None,
                finished: None,
                inputs: BTreeMap::new(),
                outputs: vec![],
            },
        });
        w.builds.len() - 1
    }

    fn may_start(&self, ji: usize) -> bool {
        let job = &self.p.jobs[ji];
        let w = self.w.borrow();
        let running = w.running.get(&ji).copied().unwrap_or(0);
        if job.in_flight_limit().is_some_and(|l| running >= l) {
            return false;
        }
        !job.serial_groups.iter().any(|g| w.groups_busy.contains(g))
    }

    async fn schedule(self: &Rc<Self>) {
        let triggers = self.p.triggers();
        for (ji, job) in self.p.jobs.iter().enumerate() {
            {
                let mut w = self.w.borrow_mut();
                let epoch = w.epoch;
                if w.looked.insert(ji, epoch) == Some(epoch) {
                    continue;
                }
            }
            let pending = |w: &World| {
                w.builds
                    .iter()
                    .position(|b| b.job == ji && b.rec.started.is_none())
            };
            // Since 8.2 an input no job triggers on is checked when a build
            // needs it: here, the first time, so the trigger can be decided.
            if self.opts.release.checks_only_triggers() {
                for g in job.gets() {
                    let never = !self.w.borrow().last_checked.contains_key(&g.resource);
                    if !triggers.contains(&g.resource) && never {
                        self.check(&g.resource).await;
                    }
                }
            }
            if pending(&self.w.borrow()).is_none()
                && let Some(inputs) = self.next_inputs(job)
                && job
                    .gets()
                    .iter()
                    .any(|g| g.trigger && self.first_occurrence(ji, &g.name, &inputs[&g.name].1))
            {
                self.create_build(ji, false);
            }
            loop {
                let Some(b) = pending(&self.w.borrow()) else {
                    break;
                };
                if !self.may_start(ji) {
                    break;
                }
                if self.opts.release.checks_only_triggers() {
                    for g in job.gets() {
                        let stale = {
                            let w = self.w.borrow();
                            let every = self
                                .p
                                .resource(&g.resource)
                                .and_then(|r| r.check_every)
                                .unwrap_or(super::config::DEFAULT_CHECK_EVERY);
                            w.last_checked
                                .get(&g.resource)
                                .is_none_or(|t| self.elapsed() >= *t + every)
                        };
                        if !triggers.contains(&g.resource) && stale {
                            self.check(&g.resource).await;
                        }
                    }
                }
                let Some(inputs) = self.next_inputs(job) else {
                    break;
                };
                {
                    let mut w = self.w.borrow_mut();
                    let started = self.elapsed().as_secs();
                    let rec = &mut w.builds[b].rec;
                    rec.inputs = inputs;
                    rec.started = Some(started);
                    w.epoch += 1;
                    *w.running.entry(ji).or_insert(0) += 1;
                    for g in &job.serial_groups {
                        w.groups_busy.insert(g.clone());
                    }
                }
                let me = self.clone();
                spawn(async move { me.run_build(b).await });
            }
        }
    }

    fn first_occurrence(&self, ji: usize, name: &str, version: &Value) -> bool {
        !self.w.borrow().builds.iter().any(|b| {
            b.job == ji
                && b.rec.started.is_some()
                && b.rec.inputs.get(name).is_some_and(|(_, v)| v == version)
        })
    }

    /// The inputs the next build of `job` would adopt, if every get has one.
    fn next_inputs(&self, job: &Job) -> Option<BTreeMap<String, (String, Value)>> {
        let w = self.w.borrow();
        let mut gets: Vec<&GetStep> = Vec::new();
        for g in job.gets() {
            if !gets.iter().any(|x| x.name == g.name) {
                gets.push(g);
            }
        }
        // Candidates per get, newest first, each with the upstream builds
        // (per passed job) it went through.
        let mut cands: Vec<Vec<Cand>> = Vec::new();
        for g in &gets {
            let versions = w.versions.get(&g.resource)?;
            let mut list: Vec<Cand> = Vec::new();
            if g.passed.is_empty() {
                let pinned = g.version.as_ref().filter(|v| v.is_object());
                let v = match pinned {
                    Some(pin) => versions.iter().rev().find(|v| {
                        pin.as_object()
                            .expect("an object")
                            .iter()
                            .all(|(k, want)| v.get(k) == Some(want))
                    })?,
                    None => versions.last()?,
                };
                list.push((v.clone(), BTreeMap::new()));
            } else {
                let first = &g.passed[0];
                let mut seen: Vec<Value> = Vec::new();
                let mut by_build: Vec<&BuildState> = w
                    .builds
                    .iter()
                    .filter(|b| b.rec.job == *first && b.rec.status == Some(Status::Succeeded))
                    .collect();
                by_build.sort_by_key(|b| std::cmp::Reverse(b.rec.id));
                for b in by_build {
                    for v in build_versions(&b.rec, &g.resource) {
                        if !seen.contains(&v) {
                            seen.push(v);
                        }
                    }
                }
                for v in seen {
                    let mut through = BTreeMap::new();
                    let mut all = true;
                    for pj in &g.passed {
                        let ids: BTreeSet<u64> = w
                            .builds
                            .iter()
                            .filter(|b| {
                                b.rec.job == *pj
                                    && b.rec.status == Some(Status::Succeeded)
                                    && build_versions(&b.rec, &g.resource).contains(&v)
                            })
                            .map(|b| b.rec.id)
                            .collect();
                        if ids.is_empty() {
                            all = false;
                            break;
                        }
                        through.insert(pj.clone(), ids);
                    }
                    if all {
                        list.push((v, through));
                    }
                    if list.len() >= 32 {
                        break;
                    }
                }
            }
            if list.is_empty() {
                return None;
            }
            cands.push(list);
        }
        // Inputs that share a passed job come from one build of it.
        fn choose(
            i: usize,
            cands: &[Vec<Cand>],
            allowed: &BTreeMap<String, BTreeSet<u64>>,
            out: &mut Vec<usize>,
        ) -> bool {
            if i == cands.len() {
                return true;
            }
            for (k, (_, through)) in cands[i].iter().enumerate() {
                let mut next = allowed.clone();
                let fits = through.iter().all(|(job, ids)| {
                    let meet: BTreeSet<u64> = match allowed.get(job) {
                        Some(a) => a.intersection(ids).copied().collect(),
                        None => ids.clone(),
                    };
                    let ok = !meet.is_empty();
                    next.insert(job.clone(), meet);
                    ok
                });
                if fits {
                    out.push(k);
                    if choose(i + 1, cands, &next, out) {
                        return true;
                    }
                    out.pop();
                }
            }
            false
        }
        let mut picks = Vec::new();
        if !choose(0, &cands, &BTreeMap::new(), &mut picks) {
            return None;
        }
        Some(
            gets.iter()
                .zip(picks)
                .enumerate()
                .map(|(i, (g, k))| (g.name.clone(), (g.resource.clone(), cands[i][k].0.clone())))
                .collect(),
        )
    }

    async fn run_build(self: Rc<Self>, b: usize) {
        let ji = self.w.borrow().builds[b].job;
        let job = &self.p.jobs[ji];
        let at = self.where_now().await;
        self.log(Some(b), "started".into(), at);
        let ctx = Ctx {
            build: b,
            job: ji,
            artifacts: RefCell::default(),
            lost: Cell::new(false),
            aborted: Cell::new(false),
        };
        let status = self.exec(&ctx, &job.plan, None).await;
        tokio::time::sleep(FINISH_TIME).await;
        let after = self.where_now().await;
        {
            let mut w = self.w.borrow_mut();
            let finished = self.elapsed().as_secs();
            let rec = &mut w.builds[b].rec;
            rec.status = Some(status);
            rec.finished = Some(finished);
            w.epoch += 1;
            if let Some(n) = w.running.get_mut(&ji) {
                *n -= 1;
            }
            for g in &job.serial_groups {
                w.groups_busy.remove(g);
            }
        }
        let how = if ctx.lost.get() {
            "lost with its worker: errored, no hook ran".to_string()
        } else {
            status.as_str().to_string()
        };
        self.log(Some(b), how, after);
    }

    fn exec<'s>(&'s self, ctx: &'s Ctx, step: &'s Step, env: Option<Status>) -> Boxed<'s, Status> {
        Box::pin(async move {
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                let r = match step.timeout {
                    None => self.exec_kind(ctx, step, env).await,
                    Some(d) => {
                        match tokio::time::timeout(d, self.exec_kind(ctx, step, env)).await {
                            Ok(r) => r,
                            Err(_) => {
                                self.log(
                                    Some(ctx.build),
                                    format!(
                                        "{}: timed out after {}: failed",
                                        describe(step),
                                        crate::model::duration::format(d)
                                    ),
                                    None,
                                );
                                Status::Failed
                            }
                        }
                    }
                };
                if ctx.lost.get() || ctx.aborted.get() {
                    break r;
                }
                if matches!(r, Status::Failed | Status::Errored) && attempt < step.attempts {
                    self.log(
                        Some(ctx.build),
                        format!(
                            "{}: attempt {attempt} of {} {}; again",
                            describe(step),
                            step.attempts,
                            r.as_str()
                        ),
                        None,
                    );
                    continue;
                }
                break r;
            };
            if step.hooks.is_empty() || ctx.lost.get() {
                return result;
            }
            self.hooks(ctx, step, result, env).await
        })
    }

    /// The hooks of `step` around `result`, nested as Concourse builds
    /// them; `env` is the status the enclosing hook gives (for `ensure`).
    async fn hooks(&self, ctx: &Ctx, step: &Step, result: Status, env: Option<Status>) -> Status {
        // An aborted build still runs its hooks (on_abort, ensure); the
        // plan after them stays skipped.
        let aborted = ctx.aborted.replace(false);
        let r = self.run_hooks(ctx, step, result, env).await;
        ctx.aborted.set(aborted || ctx.aborted.get());
        r
    }

    async fn run_hooks(
        &self,
        ctx: &Ctx,
        step: &Step,
        result: Status,
        env: Option<Status>,
    ) -> Status {
        let h = &step.hooks;
        let mut r = result;
        if let Some(s) = &h.on_success
            && r == Status::Succeeded
        {
            r = self.exec(ctx, s, Some(Status::Succeeded)).await;
        }
        if let Some(s) = &h.on_failure
            && r == Status::Failed
        {
            let hr = self.exec(ctx, s, Some(Status::Failed)).await;
            if matches!(hr, Status::Errored | Status::Aborted) {
                r = hr;
            }
        }
        if let Some(s) = &h.on_abort
            && r == Status::Aborted
        {
            self.exec(ctx, s, Some(Status::Aborted)).await;
        }
        if let Some(s) = &h.on_error
            && r == Status::Errored
        {
            self.exec(ctx, s, Some(Status::Errored)).await;
        }
        if let Some(s) = &h.ensure {
            let hr = self.exec(ctx, s, env).await;
            if r == Status::Succeeded {
                r = hr;
            }
        }
        r
    }

    async fn exec_kind(&self, ctx: &Ctx, step: &Step, env: Option<Status>) -> Status {
        if ctx.aborted.get() || ctx.lost.get() {
            return Status::Aborted;
        }
        match &step.kind {
            StepKind::Do(steps) => {
                for s in steps {
                    let r = self.exec(ctx, s, env).await;
                    if r != Status::Succeeded {
                        return r;
                    }
                }
                Status::Succeeded
            }
            // `limit` and `fail_fast` are not modelled (README): all run.
            StepKind::InParallel { steps, .. } => {
                let results =
                    futures_util::future::join_all(steps.iter().map(|s| self.exec(ctx, s, env)))
                        .await;
                [Status::Aborted, Status::Errored, Status::Failed]
                    .into_iter()
                    .find(|bad| results.contains(bad))
                    .unwrap_or(Status::Succeeded)
            }
            StepKind::Try(inner) => match self.exec(ctx, inner, env).await {
                Status::Aborted => Status::Aborted,
                _ => Status::Succeeded,
            },
            StepKind::Get(g) => self.get(ctx, g).await,
            StepKind::Put(p) => self.put(ctx, p, env).await,
            StepKind::Task(t) => self.task(ctx, t).await,
            StepKind::Other(_) => Status::Succeeded,
        }
    }

    /// A get: from the cache when (source, params, version) was fetched
    /// before, else by `in` (ours) or a stand-in (git, time).
    async fn fetch(
        &self,
        resource: &Resource,
        version: &Value,
        params: &Value,
    ) -> Result<Files, String> {
        let key = json!([resource.source, params, version]).to_string();
        let cached = self.w.borrow().cache.get(&key).cloned();
        if let Some(files) = cached {
            self.w.borrow_mut().cache_hits += 1;
            return Ok(files);
        }
        tokio::time::sleep(STEP_TIME).await;
        let files = if resource.build_state {
            self.steps
                .get(resource, version, params, self.now())
                .await?
        } else {
            Files::new()
        };
        let mut w = self.w.borrow_mut();
        w.gets_run += 1;
        w.cache.insert(key, files.clone());
        Ok(files)
    }

    async fn get(&self, ctx: &Ctx, g: &GetStep) -> Status {
        let input = self.w.borrow().builds[ctx.build]
            .rec
            .inputs
            .get(&g.name)
            .cloned();
        let Some((resource, version)) = input else {
            self.log(
                Some(ctx.build),
                format!("get {}: no version: errored", g.name),
                None,
            );
            return Status::Errored;
        };
        let r = self.p.resource(&resource).expect("a validated resource");
        match self.fetch(r, &version, &g.params).await {
            Ok(files) => {
                ctx.artifacts.borrow_mut().insert(g.name.clone(), files);
                Status::Succeeded
            }
            Err(e) => {
                self.log(
                    Some(ctx.build),
                    format!("get {}: failed: {e}", g.name),
                    None,
                );
                Status::Failed
            }
        }
    }

    fn env(&self, ctx: &Ctx, status: Option<Status>) -> BuildEnv {
        let w = self.w.borrow();
        let rec = &w.builds[ctx.build].rec;
        let job = &self.p.jobs[ctx.job].name;
        let external = "https://ci.example.com";
        BuildEnv {
            team: Some("main".into()),
            pipeline: Some(self.opts.pipeline.clone()),
            job: Some(job.clone()),
            build_name: Some(rec.number.to_string()),
            build_id: Some(rec.id.to_string()),
            external_url: Some(external.into()),
            status: status
                .filter(|_| self.opts.release.has_build_status())
                .map(|s| s.as_str().to_string()),
            url: self.opts.release.has_build_url().then(|| {
                format!(
                    "{external}/teams/main/pipelines/{}/jobs/{job}/builds/{}",
                    self.opts.pipeline, rec.number
                )
            }),
            created_by: rec.manual.then(|| "admin".to_string()),
            instance_vars: None,
        }
    }

    /// The artifacts a put sees: all (before 8.0), the ones its params name
    /// (`detect`, since 8.0), or those listed.
    fn put_inputs(&self, ctx: &Ctx, p: &PutStep) -> BTreeMap<String, Files> {
        let all = ctx.artifacts.borrow().clone();
        let detect = match &p.inputs {
            Some(Value::String(s)) if s == "all" => false,
            Some(Value::String(s)) if s == "detect" => true,
            Some(Value::Array(names)) => {
                let names: BTreeSet<&str> = names.iter().filter_map(Value::as_str).collect();
                return all
                    .into_iter()
                    .filter(|(k, _)| names.contains(k.as_str()))
                    .collect();
            }
            _ => self.opts.release.detects_put_inputs(),
        };
        if !detect {
            return all;
        }
        let mut named = BTreeSet::new();
        strings(&p.params, &mut |s| {
            if let Some(first) = s.split('/').next() {
                named.insert(first.to_string());
            }
        });
        all.into_iter().filter(|(k, _)| named.contains(k)).collect()
    }

    async fn put(&self, ctx: &Ctx, p: &PutStep, env: Option<Status>) -> Status {
        let r = self.p.resource(&p.resource).expect("a validated resource");
        let shown = match env.filter(|_| self.opts.release.has_build_status()) {
            Some(s) => format!(
                "put {} {} [BUILD_STATUS={}]",
                p.name,
                compact(&p.params),
                s.as_str()
            ),
            None => format!("put {} {}", p.name, compact(&p.params)),
        };
        tokio::time::sleep(PUT_WRITES_AFTER).await;
        let version = if r.build_state {
            let inputs = self.put_inputs(ctx, p);
            let env = self.env(ctx, env);
            let result = self
                .steps
                .put(r, &p.params, &env, &inputs, self.now())
                .await;
            let after = self.where_now().await;
            match result {
                Ok((v, said)) => {
                    let said: Vec<&String> = said
                        .iter()
                        .filter(|l| l.starts_with("no change") || l.starts_with("warning"))
                        .collect();
                    let shown = match said.as_slice() {
                        [] => shown,
                        lines => format!(
                            "{shown}: {}",
                            lines
                                .iter()
                                .map(|l| l.as_str())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    };
                    self.log(Some(ctx.build), shown, after);
                    for h in self.steps.take_handoffs() {
                        self.webhook(ctx, &h).await;
                    }
                    v
                }
                Err(e) => {
                    self.log(Some(ctx.build), format!("{shown}: failed: {e}"), after);
                    return Status::Failed;
                }
            }
        } else {
            self.log(Some(ctx.build), shown, None);
            json!({"put": self.elapsed().as_secs()})
        };
        tokio::time::sleep(PUT_ENDS_AFTER).await;
        self.save_versions(&r.name, vec![version.clone()]);
        {
            let mut w = self.w.borrow_mut();
            w.builds[ctx.build]
                .rec
                .outputs
                .push((r.name.clone(), version.clone()));
        }
        if r.build_state && r.name == self.state().name {
            self.note_commit(ctx).await;
        }
        if p.no_get {
            return Status::Succeeded;
        }
        match self.fetch(r, &version, &p.get_params).await {
            Ok(files) => {
                ctx.artifacts.borrow_mut().insert(p.name.clone(), files);
                Status::Succeeded
            }
            Err(e) => {
                self.log(
                    Some(ctx.build),
                    format!("put {}: its implicit get failed: {e}", p.name),
                    None,
                );
                Status::Failed
            }
        }
    }

    /// The ATC's side of a check webhook (concourse/concourse
    /// `atc/api/resourceserver/check_webhook.go`): 404 for a resource the
    /// pipeline lacks, 401 for a token that is not the resource's
    /// `webhook_token`, else a check of it now, and the jobs that use its
    /// new versions scheduled at once.
    async fn webhook(&self, ctx: &Ctx, h: &Handed) {
        let Some(r) = self.p.resource(&h.resource) else {
            self.log(
                Some(ctx.build),
                format!("webhook check of {}: 404 (no such resource)", h.resource),
                None,
            );
            return;
        };
        if r.webhook_token.as_deref() != Some(h.token.as_str()) {
            self.log(
                Some(ctx.build),
                format!(
                    "webhook check of {}: 401 (the resource has {} webhook_token)",
                    h.resource,
                    if r.webhook_token.is_some() {
                        "another"
                    } else {
                        "no"
                    }
                ),
                None,
            );
            return;
        }
        self.w.borrow_mut().webhooks += 1;
        self.check(&h.resource).await;
        self.wake.notify_one();
    }

    /// Records which commit the build that wrote to the current run had.
    async fn note_commit(&self, ctx: &Ctx) {
        let Some(doc) = self.steps.document(self.state()).await else {
            return;
        };
        let commits: Vec<String> = {
            let w = self.w.borrow();
            w.builds[ctx.build]
                .rec
                .inputs
                .values()
                .filter(|(r, _)| self.p.resource(r).is_some_and(|r| r.kind == "git"))
                .filter_map(|(_, v)| v["ref"].as_str().map(str::to_string))
                .collect()
        };
        // What a build records for its own stage: not a human's put, not
        // the run's first event (start-build's init may be refused).
        let last = doc.last_event();
        let mine = self.w.borrow().builds[ctx.build].rec.id.to_string();
        if last.by.build_id.as_deref() != Some(mine.as_str()) {
            return;
        }
        let mut w = self.w.borrow_mut();
        for c in commits {
            w.commits_of_run.entry(doc.run).or_default().insert(c);
        }
    }

    async fn task(&self, ctx: &Ctx, t: &TaskStep) -> Status {
        {
            let arts = ctx.artifacts.borrow();
            for (name, optional) in &t.inputs {
                if !optional && !arts.contains_key(name) {
                    drop(arts);
                    self.log(
                        Some(ctx.build),
                        format!("task {}: missing input {name}: errored", t.name),
                        None,
                    );
                    return Status::Errored;
                }
            }
        }
        let job = &self.p.jobs[ctx.job];
        *self
            .w
            .borrow_mut()
            .task_runs
            .entry(t.name.clone())
            .or_insert(0) += 1;
        let artifacts = ctx.artifacts.borrow().clone();
        if let Some((status, outputs, said)) = self.steps.task(t, &artifacts).await {
            ctx.artifacts.borrow_mut().extend(outputs);
            self.log(
                Some(ctx.build),
                format!("task {}: {}: {said}", t.name, status.as_str()),
                None,
            );
            return status;
        }
        let run = {
            let mut w = self.w.borrow_mut();
            let key = format!("{}/{}", job.name, t.name);
            let queue = if w.scripts.contains_key(&key) {
                w.scripts.get_mut(&key)
            } else {
                w.scripts.get_mut(&t.name)
            };
            queue.and_then(VecDeque::pop_front).unwrap_or(TaskRun {
                outcome: Outcome::Succeed,
                error: None,
                after: None,
            })
        };
        let took = run.after.unwrap_or(self.scenario.task_time);
        if run.outcome == Outcome::Error {
            let why = run
                .error
                .clone()
                .unwrap_or_else(|| "its image could not be fetched".into());
            self.log(
                Some(ctx.build),
                format!("task {}: errored: {why}", t.name),
                None,
            );
            return Status::Errored;
        }
        let beats = self.heartbeats(ctx, t);
        if run.outcome == Outcome::Hang {
            self.log(Some(ctx.build), format!("task {}: hangs", t.name), None);
            // Its process lives on: its heartbeat loop too.
            beats.await;
            std::future::pending::<()>().await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(took) => {}
                _ = beats => {}
            }
        }
        let mut outputs: BTreeMap<String, Files> = t
            .outputs
            .iter()
            .map(|o| (o.clone(), Files::new()))
            .collect();
        let message = run
            .error
            .clone()
            .unwrap_or_else(|| format!("{} failed", t.name));
        // The files the job's puts read from this task's outputs.
        for p in job.puts() {
            for (field, on) in [
                ("vars_file", Outcome::Succeed),
                ("error_file", Outcome::Fail),
            ] {
                let Some(path) = p.params[field].as_str() else {
                    continue;
                };
                let Some((art, rest)) = path.split_once('/') else {
                    continue;
                };
                if run.outcome != on {
                    continue;
                }
                if let Some(files) = outputs.get_mut(art) {
                    let body = if field == "vars_file" {
                        json!({t.name.replace('-', "_"): format!("{} #{}", job.name, self.w.borrow().builds[ctx.build].rec.number)}).to_string()
                    } else {
                        message.clone()
                    };
                    files.insert(rest.to_string(), body.into_bytes());
                }
            }
        }
        ctx.artifacts.borrow_mut().extend(outputs);
        let (status, what) = match run.outcome {
            Outcome::Succeed => (Status::Succeeded, "succeeded".to_string()),
            Outcome::Fail => (Status::Failed, format!("failed: {message}")),
            Outcome::Abort => {
                ctx.aborted.set(true);
                (Status::Aborted, "aborted by a human".into())
            }
            Outcome::Die => {
                ctx.lost.set(true);
                (Status::Errored, "its worker vanished".into())
            }
            Outcome::Error | Outcome::Hang => unreachable!("handled above"),
        };
        self.log(Some(ctx.build), format!("task {}: {what}", t.name), None);
        status
    }
}

impl<S: Steps + 'static> Sim<S> {
    /// The heartbeats a task sends while it runs, when its script runs
    /// `build-state heartbeat BUILD_ID N`: one every `heartbeat_every`,
    /// for the run and attempt of the `state.env` among its inputs. Never
    /// ends by itself.
    async fn heartbeats(&self, ctx: &Ctx, t: &TaskStep) {
        let Some(n) = t.config.as_ref().and_then(heartbeat_stage) else {
            return std::future::pending().await;
        };
        let env_of = |key: &str| -> Option<u64> {
            let arts = ctx.artifacts.borrow();
            t.inputs.iter().find_map(|(name, _)| {
                let env = String::from_utf8_lossy(arts.get(name)?.get("state.env")?).into_owned();
                env.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .and_then(|v| v.trim_matches('\'').parse().ok())
            })
        };
        let (run, attempt) = (env_of("BUILD_STATE_RUN"), env_of("BUILD_STATE_ATTEMPT"));
        loop {
            tokio::time::sleep(self.scenario.heartbeat_every).await;
            let claim = crate::model::Claim {
                state: n,
                run,
                attempt: attempt.map(|a| a as u32),
                by: crate::model::Actor {
                    user: Some(format!("task {}", t.name)),
                    ..Default::default()
                },
                at: self.now(),
            };
            if let Err(e) = self.steps.beat(self.state(), claim).await {
                self.log(
                    Some(ctx.build),
                    format!("task {}: heartbeat {n} refused: {e}", t.name),
                    None,
                );
            }
        }
    }
}

/// The stage a task's script sends heartbeats for (`build-state
/// heartbeat BUILD_ID N`), if it does.
fn heartbeat_stage(config: &Value) -> Option<u32> {
    let mut found = None;
    strings(&config["run"], &mut |s| {
        if found.is_none()
            && let Some(rest) = s.split("build-state heartbeat ").nth(1)
        {
            found = rest.split_whitespace().nth(1).and_then(|n| n.parse().ok());
        }
    });
    found
}

/// The versions of `resource` a build had as inputs or outputs.
fn build_versions(b: &BuildRecord, resource: &str) -> Vec<Value> {
    b.inputs
        .values()
        .filter(|(r, _)| r == resource)
        .map(|(_, v)| v.clone())
        .chain(
            b.outputs
                .iter()
                .filter(|(r, _)| r == resource)
                .map(|(_, v)| v.clone()),
        )
        .collect()
}

fn strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, f)),
        Value::Object(m) => m.values().for_each(|x| strings(x, f)),
        _ => {}
    }
}

/// `{start: 5}` for a timeline.
fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}: {s}"),
                    Value::Array(a) if a.iter().all(Value::is_string) => format!(
                        "{k}: [{}]",
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Null => "{}".into(),
        other => other.to_string(),
    }
}

fn describe(step: &Step) -> String {
    match &step.kind {
        StepKind::Get(g) => format!("get {}", g.name),
        StepKind::Put(p) => format!("put {}", p.name),
        StepKind::Task(t) => format!("task {}", t.name),
        StepKind::InParallel { .. } => "in_parallel".into(),
        StepKind::Do(_) => "do".into(),
        StepKind::Try(_) => "try".into(),
        StepKind::Other(k) => k.clone(),
    }
}

fn spawn<F: Future<Output = ()> + 'static>(f: F) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(f)
}
