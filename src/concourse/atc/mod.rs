//! Concourse alone: what its ATC does with a pipeline, on virtual time.
//!
//! One current-thread tokio runtime with a paused clock runs every check
//! build, build and component tick as a task; time jumps to the next timer
//! when all of them wait, so hours of a pipeline play in milliseconds and
//! the same inputs always give the same timeline. What runs on workers
//! (resource scripts, tasks) is the `Worker`'s; what the ATC did is told
//! to the `Observer`. Both are build-state's side ([`super::play`]).
//!
//! The parts, each from concourse/concourse `atc/` (read at v8.2.5):
//! - [`pipeline`], [`validate`], [`duration`]: the pipeline as
//!   `fly set-pipeline` reads it, per release, durations in Go's grammar;
//! - `checks`: check builds (periodic, webhook, manual, a build's own),
//!   `next_check_time` one interval after every check, `SaveVersions`;
//! - `scheduler`: the 10 s tick, pending builds, first occurrence,
//!   `passed`, serial groups, `max_in_flight`, manual builds and reruns;
//! - `exec`: a build's plan, hooks, `BUILD_*` per release, workers that
//!   vanish.

pub mod duration;
pub mod pipeline;
pub mod validate;

mod checks;
mod exec;
pub(crate) use exec::{compact, strings};
mod inputs;
mod scheduler;
#[cfg(test)]
mod tests;

use super::Release;
use crate::model::Timestamp;
use crate::protocol::BuildEnv;
use pipeline::{Job, Pipeline, Resource, TaskStep};
use serde::Serialize;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The ATC's components' interval: the scheduler (`atccmd/command.go`,
/// `Interval: 10 * time.Second`), the lidar scanner
/// (`--lidar-scanner-interval`, 10s) and the build tracker
/// (`--build-tracker-interval`, 10s).
pub(crate) const TICK: Duration = Duration::from_secs(10);

/// How long a check build takes (a container, the resource's `check`).
pub(crate) const CHECK_TIME: Duration = Duration::from_secs(3);

/// How long a get takes (a container, a resource script).
pub(crate) const STEP_TIME: Duration = Duration::from_secs(3);

/// A put: its write lands this long after the step starts ...
pub(crate) const PUT_WRITES_AFTER: Duration = Duration::from_secs(1);

/// ... and the step ends this long after the write.
pub(crate) const PUT_ENDS_AFTER: Duration = Duration::from_secs(2);

/// A build finishes (its outputs count for `passed`) this long after its
/// last step.
pub(crate) const FINISH_TIME: Duration = Duration::from_secs(2);

/// From a worker vanishing to the ATC erroring the step that ran on it
/// (the worker's connection lost, its heartbeat's TTL passed).
pub(crate) const WORKER_GONE: Duration = Duration::from_secs(60);

/// The files of one artifact, by path inside it.
pub type Artifacts = BTreeMap<String, Vec<u8>>;

/// How a step, or a build, ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    /// Succeeded.
    Succeeded,
    /// Failed.
    Failed,
    /// Errored.
    Errored,
    /// Aborted.
    Aborted,
}

impl BuildStatus {
    /// As Concourse spells it (and gives it in `BUILD_STATUS`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
            BuildStatus::Errored => "errored",
            BuildStatus::Aborted => "aborted",
        }
    }
}

/// Why a resource script failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The store (or the network to it) failed: another try may work.
    #[error("{0}")]
    Unavailable(String),
    /// The resource refused the request (a transition not allowed, a
    /// zombie's heartbeat, a bad param): trying again changes nothing.
    #[error("{0}")]
    Refused(String),
}

/// What a put answered.
#[derive(Clone, Debug)]
pub(crate) struct PutDone {
    pub(crate) version: Value,
    /// What it said on stderr (each line).
    pub(crate) said: Vec<String>,
    /// The check webhooks it posted.
    pub(crate) handoffs: Vec<Handed>,
}

/// A put that failed, and the check webhooks it posted all the same (a
/// write that landed before the put was refused hands off).
#[derive(Clone, Debug)]
pub(crate) struct PutFailed {
    /// Why it failed.
    pub(crate) error: StepError,
    /// The check webhooks it posted.
    pub(crate) handoffs: Vec<Handed>,
}

/// A check webhook a put posted: the resource, and the token it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handed {
    /// The resource to check.
    pub resource: String,
    /// The `webhook_token` sent.
    pub token: String,
}

/// A task to run on a worker.
pub(crate) struct TaskCall<'a> {
    pub(crate) job: &'a Job,
    /// The build it runs in.
    pub(crate) build: &'a BuildRecord,
    /// The step.
    pub(crate) task: &'a TaskStep,
    /// The artifacts it sees.
    pub(crate) artifacts: &'a BTreeMap<String, Artifacts>,
}

/// How a task ended (a task that hangs never answers).
#[derive(Debug)]
pub(crate) enum TaskEnd {
    /// Its process exited: succeeded or failed, with its outputs.
    Exited {
        /// Succeeded or failed.
        status: BuildStatus,
        outputs: BTreeMap<String, Artifacts>,
        /// Its last word.
        said: String,
    },
    /// It errored before it ran (its image could not be fetched).
    Errored(String),
    /// A human aborted the build while it ran.
    Aborted,
    /// Its worker vanished; the ATC notices ([`WORKER_GONE`]) and errors
    /// the step, or (`rerun`, or the ATC's
    /// [`Settings::rerun_when_worker_disappears`]) runs the build again.
    WorkerLost {
        /// The ATC reruns builds whose worker vanished.
        rerun: bool,
    },
    /// Its worker vanished and the ATC never notices: the build stays
    /// running (concourse#3011).
    Stuck,
}

/// What runs on workers: the resource's scripts and the tasks.
#[allow(async_fn_in_trait)]
pub(crate) trait Worker {
    /// A check build's `check` from `from` (the resource's newest version).
    async fn check(
        &self,
        resource: &Resource,
        from: Option<&Value>,
        now: Timestamp,
    ) -> Result<Vec<Value>, StepError>;

    /// `in` of `version`: the files it writes.
    async fn get(
        &self,
        resource: &Resource,
        version: &Value,
        params: &Value,
        now: Timestamp,
    ) -> Result<Artifacts, StepError>;

    /// `out` with `params`, the build's `env` and the artifacts it sees.
    async fn put(
        &self,
        resource: &Resource,
        params: &Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Artifacts>,
        now: Timestamp,
    ) -> Result<PutDone, PutFailed>;

    /// A task (a hung one never answers: the step's `timeout` ends it).
    async fn task(&self, call: TaskCall<'_>) -> TaskEnd;
}

/// Told what the ATC does (build-state's side keeps its books with it).
#[allow(async_fn_in_trait)]
pub(crate) trait Observer {
    /// What to show beside a line of the timeline (the state after it).
    async fn state(&self) -> Option<String>;

    /// A put of `build` to `resource` landed.
    async fn put_landed(&self, build: &BuildRecord, resource: &Resource);
}

/// The ATC's settings that change what it does.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The Concourse release.
    pub(crate) release: Release,
    /// The pipeline's name (for `BUILD_PIPELINE_NAME`).
    pub(crate) pipeline: String,
    /// The virtual time the simulation starts at.
    pub(crate) t0: Timestamp,
    /// `--enable-rerun-when-worker-disappears` (since 7.6): a build whose
    /// worker vanished is run again from its start instead of erroring.
    pub(crate) rerun_when_worker_disappears: bool,
}

/// One line of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// Seconds since the start.
    pub at: u64,
    /// The job, if a build did it.
    pub job: Option<String>,
    /// The build's name in its job (`3`, or `3.1` for a rerun).
    pub build: Option<String>,
    /// What happened.
    pub what: String,
    /// The build's state and status after it, when a put changed them.
    pub state: Option<String>,
}

/// One build, as the model recorded it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BuildRecord {
    /// Unique in the simulation (`BUILD_ID`).
    pub(crate) id: u64,
    pub(crate) job: String,
    /// Its name in the job (`BUILD_NAME`): `3`, or `3.1` for a rerun.
    pub(crate) name: String,
    /// Triggered by hand (`fly trigger-job`).
    pub(crate) manual: bool,
    /// The build it reruns (`fly rerun-build`), by id.
    pub(crate) rerun_of: Option<u64>,
    /// How it ended (`None`: still pending or running at the end).
    pub(crate) status: Option<BuildStatus>,
    /// When it was created (seconds since the start).
    pub(crate) created: u64,
    /// When it started.
    pub(crate) started: Option<u64>,
    /// When it finished.
    pub(crate) finished: Option<u64>,
    /// Its inputs: get name → (resource, version).
    pub(crate) inputs: BTreeMap<String, (String, Value)>,
    /// Its outputs: (resource, version) of each put.
    pub(crate) outputs: Vec<(String, Value)>,
}

/// What the ATC did, at the end.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Record {
    /// The timeline.
    pub timeline: Vec<Line>,
    /// Every build.
    pub(crate) builds: Vec<BuildRecord>,
    /// Gets served from the cache.
    pub cache_hits: u64,
    /// Gets that ran `in`.
    pub(crate) gets_run: u64,
    /// Check builds of build-state resources (each an S3 request or more).
    pub(crate) checks: u64,
    /// Check webhooks the ATC took.
    pub(crate) webhooks: u64,
}

/// The ATC and what it knows.
pub(crate) struct Atc<H: Worker + Observer> {
    /// Itself, for the tasks it spawns.
    me: std::rc::Weak<Atc<H>>,
    p: Pipeline,
    host: std::rc::Rc<H>,
    settings: Settings,
    start: Instant,
    checks: RefCell<checks::Scopes>,
    builds: RefCell<scheduler::Builds>,
    cache: RefCell<exec::Cache>,
    stand_ins: RefCell<checks::StandIns>,
    timeline: RefCell<Vec<Line>>,
}

impl<H: Worker + Observer + 'static> Atc<H> {
    /// The ATC of `p` with `settings`, its workers and observer `host`;
    /// call from inside the paused runtime's `LocalSet`.
    pub(crate) fn new(
        p: Pipeline,
        host: std::rc::Rc<H>,
        settings: Settings,
    ) -> std::rc::Rc<Atc<H>> {
        std::rc::Rc::new_cyclic(|me| Atc {
            me: me.clone(),
            checks: RefCell::new(checks::Scopes::new(&p, settings.release)),
            p,
            host,
            settings,
            start: Instant::now(),
            builds: RefCell::default(),
            cache: RefCell::default(),
            stand_ins: RefCell::new(checks::StandIns {
                commits: 1,
                ..Default::default()
            }),
            timeline: RefCell::default(),
        })
    }

    fn self_rc(&self) -> std::rc::Rc<Atc<H>> {
        self.me.upgrade().expect("the ATC outlives its tasks")
    }

    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.p
    }

    /// Virtual time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    /// Virtual time as a timestamp.
    pub(crate) fn now(&self) -> Timestamp {
        let ms = self.elapsed().as_millis() as i64;
        self.settings.t0 + chrono::Duration::milliseconds(ms)
    }

    /// One round of the ATC's components: the lidar scanner creates the
    /// periodic checks that are due, the scheduler schedules and starts
    /// builds, the tracker runs the builds to rerun.
    pub(crate) async fn tick(&self) {
        self.scan();
        self.schedule().await;
        self.track();
    }

    /// Whether a build runs (one the ATC will see end), or a check build.
    pub(crate) fn busy(&self) -> bool {
        self.builds.borrow().busy() || self.checks.borrow().running()
    }

    /// The builds that stay running because their worker vanished unnoticed.
    pub(crate) fn stuck_builds(&self) -> Vec<String> {
        let builds = self.builds.borrow();
        builds
            .stuck
            .iter()
            .map(|b| format!("{} #{}", builds.list[*b].rec.job, builds.list[*b].rec.name))
            .collect()
    }

    /// Adds a line to the timeline (`build`: the build index that did it).
    pub(crate) fn log(&self, build: Option<usize>, what: String, state: Option<String>) {
        let (job, name) = match build {
            Some(b) => {
                let builds = self.builds.borrow();
                let rec = &builds.list[b].rec;
                (Some(rec.job.clone()), Some(rec.name.clone()))
            }
            None => (None, None),
        };
        self.timeline.borrow_mut().push(Line {
            at: self.elapsed().as_secs(),
            job,
            build: name,
            what,
            state,
        });
    }

    /// Adds a line for what `build` (a record the ATC gave out) did.
    pub(crate) fn note(&self, build: &BuildRecord, what: String, state: Option<String>) {
        self.timeline.borrow_mut().push(Line {
            at: self.elapsed().as_secs(),
            job: Some(build.job.clone()),
            build: Some(build.name.clone()),
            what,
            state,
        });
    }

    /// What happened, at the end.
    pub(crate) fn record(&self) -> Record {
        let checks = self.checks.borrow();
        let cache = self.cache.borrow();
        Record {
            timeline: self.timeline.borrow().clone(),
            builds: self
                .builds
                .borrow()
                .list
                .iter()
                .map(|b| b.rec.clone())
                .collect(),
            cache_hits: cache.hits,
            gets_run: cache.runs,
            checks: checks.build_state_checks,
            webhooks: checks.webhooks,
        }
    }

    /// A new commit on every git resource (found by their next check).
    pub(crate) fn commit(&self) -> u64 {
        let mut s = self.stand_ins.borrow_mut();
        s.commits += 1;
        s.commits
    }
}
