//! Scenario files for `build-state simulate`: what each task does, what
//! happens when (commits, store outages, humans), and what must hold.
//!
//! ```yaml
//! description: kickstart fails twice, then succeeds
//! pipelines: [staged-image-build, staged-image-build-7x]
//! task_time: 10m
//! tasks:
//!   packer-kickstart:
//!   - {outcome: fail, error: "packer: ssh timeout"}
//!   - {outcome: fail, error: "packer: ssh timeout", after: 20m}
//! events:
//! - {at: 3h, put: {retry: 25}}
//! approve_after: 30m      # a human approves a waiting stage (or: never)
//! heartbeat_every: 1m     # tasks that run `build-state heartbeat`
//! expect:
//!   delivered: true
//!   failures: {"5": 2}
//! ```

use crate::model::time;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// How a task run ends.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// It succeeds (writing the files the job's puts read from its outputs).
    Succeed,
    /// It exits 1 (writing its error to the `error_file` the puts name).
    Fail,
    /// It errors before it runs (its image cannot be fetched, say).
    Error,
    /// It never finishes (until a `timeout` on the step interrupts it).
    Hang,
    /// Its worker vanishes: a minute later the ATC errors the step and
    /// `on_error` runs (or, with the scenario's
    /// `atc: {rerun_when_worker_disappears: true}`, the build runs again).
    #[serde(alias = "die")]
    WorkerLost,
    /// Its worker vanishes on an ATC started with
    /// `--enable-rerun-when-worker-disappears`: the build runs again from
    /// its start (`on_error` skipped, `ensure` run).
    WorkerLostRerun,
    /// Its worker vanishes and the ATC never notices: the build stays
    /// running, no hook runs, a serial job starts nothing (concourse#3011).
    Stuck,
    /// A human aborts the build while it runs.
    Abort,
}

/// One run of a task.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TaskRun {
    /// How it ends.
    pub(crate) outcome: TaskOutcome,
    /// What it says went wrong (`fail`, `error`).
    pub(crate) error: Option<String>,
    /// How long it takes (the scenario's `task_time` when not given).
    pub(crate) after: Option<Duration>,
    /// Cloud resources it creates (by name), besides what its script
    /// records with `build-state created`.
    pub(crate) creates: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFields {
    outcome: TaskOutcome,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    creates: Vec<String>,
}

/// Something that happens at a given time.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioEvent {
    /// When, from the start of the simulation.
    pub(crate) at: Duration,
    pub(crate) what: Happening,
}

/// What an event is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Happening {
    /// A new commit on every git resource.
    Commit,
    /// The store refuses every request for this long.
    StoreDown(Duration),
    /// A human's put to a build-state resource (the first ungated one
    /// unless named): `{retry: 25}`, `{approve: 95}`, `{cancel: why}`.
    Put {
        /// The put's params.
        params: Value,
        resource: Option<String>,
    },
    /// `fly trigger-job` of this job.
    Trigger(String),
    /// `fly check-resource` of this resource (as a webhook would ask).
    Check(String),
    /// `fly rerun-build` of this job's newest build (its inputs again).
    Rerun(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFields {
    at: String,
    #[serde(default)]
    commit: Option<bool>,
    #[serde(default)]
    store_down: Option<String>,
    #[serde(default)]
    put: Option<Value>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    rerun: Option<String>,
}

/// A number of times: exactly (`3`) or a bound (`">=1"`, `"<=2"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    /// Exactly.
    Exactly(u64),
    /// At least.
    AtLeast(u64),
    /// At most.
    AtMost(u64),
}

impl Count {
    /// Whether `n` satisfies it.
    pub(crate) fn holds(&self, n: u64) -> bool {
        match self {
            Count::Exactly(m) => n == *m,
            Count::AtLeast(m) => n >= *m,
            Count::AtMost(m) => n <= *m,
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Exactly(n) => write!(f, "{n}"),
            Count::AtLeast(n) => write!(f, ">={n}"),
            Count::AtMost(n) => write!(f, "<={n}"),
        }
    }
}

fn count(v: &Value, at: &str) -> Result<Count, String> {
    let bad = || format!("{at}: {v} is not a count (3, \">=1\" or \"<=2\")");
    if let Some(n) = v.as_u64() {
        return Ok(Count::Exactly(n));
    }
    let s = v.as_str().ok_or_else(bad)?.trim();
    let num = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
    if let Some(t) = s.strip_prefix(">=") {
        Ok(Count::AtLeast(num(t)?))
    } else if let Some(t) = s.strip_prefix("<=") {
        Ok(Count::AtMost(num(t)?))
    } else {
        Ok(Count::Exactly(num(s)?))
    }
}

/// What must hold at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Expect {
    /// Delivered (the final state, completed), or not.
    pub(crate) delivered: Option<bool>,
    /// Delivered within this time.
    pub(crate) within: Option<Duration>,
    /// The build's state at the end.
    pub(crate) state: Option<u32>,
    /// The build's status at the end.
    pub(crate) status: Option<String>,
    /// Builds per job.
    pub(crate) builds: BTreeMap<String, Count>,
    /// Runs per task.
    pub(crate) task_runs: BTreeMap<String, Count>,
    /// Failures recorded per stage (in the current run's history).
    pub(crate) failures: BTreeMap<u32, Count>,
    /// Runs of the build (1 unless restarted).
    pub(crate) runs: Option<u64>,
    /// Puts and heartbeats the resource refuses (none unless said).
    pub(crate) refused: Option<Count>,
    /// An alert job's build starts within this time of the build first
    /// becoming blocked.
    pub(crate) alerted_within: Option<Duration>,
    /// Every stage starts within this time of becoming due (pending, or
    /// its retry due): the worst handoff.
    pub(crate) handoffs_within: Option<Duration>,
    /// Every dead attempt is recorded within this time of its deadline.
    pub(crate) dead_found_within: Option<Duration>,
    /// Cloud resources left behind at the end (leaked or held): `0` once
    /// the cleanup job removed them all.
    pub(crate) leaked: Option<Count>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFields {
    #[serde(default)]
    delivered: Option<bool>,
    #[serde(default)]
    within: Option<String>,
    #[serde(default)]
    state: Option<u32>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    builds: BTreeMap<String, Value>,
    #[serde(default)]
    task_runs: BTreeMap<String, Value>,
    #[serde(default)]
    failures: BTreeMap<String, Value>,
    #[serde(default)]
    runs: Option<u64>,
    #[serde(default)]
    refused: Option<Value>,
    #[serde(default)]
    alerted_within: Option<String>,
    #[serde(default)]
    handoffs_within: Option<String>,
    #[serde(default)]
    dead_found_within: Option<String>,
    #[serde(default)]
    leaked: Option<Value>,
}

/// The longest a scenario may play (virtual time): a month.
pub(crate) const MAX_UNTIL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A whole scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// What it shows.
    pub(crate) description: String,
    /// The pipeline files (their names without `.yml`) it applies to; empty:
    /// any.
    pub(crate) pipelines: Vec<String>,
    /// The releases it applies to; empty: any.
    pub(crate) releases: Vec<super::Release>,
    /// How long a task takes when its run does not say.
    pub(crate) task_time: Duration,
    /// Runs of each task, by task name (or `job/task`), in order; once they
    /// are used up, the task succeeds.
    pub(crate) tasks: BTreeMap<String, Vec<TaskRun>>,
    /// What happens when.
    pub(crate) events: Vec<ScenarioEvent>,
    /// The end of simulated time.
    pub(crate) until: Duration,
    /// How long after a stage starts waiting for its approval a human
    /// gives it (`None`: nobody does).
    pub(crate) approve_after: Option<Duration>,
    /// How often a task that sends heartbeats (its script runs
    /// `build-state heartbeat`) sends one while it runs.
    pub(crate) heartbeat_every: Duration,
    /// How the ATC is set up.
    pub(crate) atc: AtcSettings,
    /// What must hold.
    pub(crate) expect: Expect,
}

/// The ATC's flags a scenario may set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AtcSettings {
    /// `--enable-rerun-when-worker-disappears`.
    #[serde(default)]
    pub(crate) rerun_when_worker_disappears: bool,
}

/// The default end of simulated time.
pub(crate) const DEFAULT_UNTIL: Duration = Duration::from_secs(48 * 3600);

/// The default time a task takes: long enough that a step or stage
/// timeout shorter than a real task shows.
pub(crate) const DEFAULT_TASK_TIME: Duration = Duration::from_secs(600);

/// How often a task sends its heartbeat when the scenario does not say.
pub(crate) const DEFAULT_HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFields {
    #[serde(default)]
    description: String,
    #[serde(default)]
    pipelines: Vec<String>,
    #[serde(default)]
    releases: Vec<String>,
    #[serde(default)]
    task_time: Option<String>,
    #[serde(default)]
    tasks: BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    events: Vec<EventFields>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    approve_after: Option<String>,
    #[serde(default)]
    heartbeat_every: Option<String>,
    #[serde(default)]
    atc: AtcSettings,
    #[serde(default)]
    expect: Option<ExpectFields>,
}

fn dur(text: &str, at: &str) -> Result<Duration, String> {
    time::parse(text).map_err(|e| format!("{at}: {e}"))
}

fn task_runs(name: &str, runs: Vec<Value>) -> Result<Vec<TaskRun>, String> {
    let mut out = Vec::new();
    for (i, r) in runs.into_iter().enumerate() {
        let at = format!("tasks.{name}[{i}]");
        let run = match r {
            Value::String(_) => TaskRun {
                outcome: serde_json::from_value(r).map_err(|e| format!("{at}: {e}"))?,
                error: None,
                after: None,
                creates: Vec::new(),
            },
            other => {
                let fields: RunFields =
                    serde_json::from_value(other).map_err(|e| format!("{at}: {e}"))?;
                TaskRun {
                    outcome: fields.outcome,
                    error: fields.error,
                    after: fields.after.map(|a| dur(&a, &at)).transpose()?,
                    creates: {
                        if let Some(m) = fields
                            .creates
                            .iter()
                            .find_map(|n| crate::model::resources::bad_name(n))
                        {
                            return Err(format!("{at}.creates: {m}"));
                        }
                        fields.creates
                    },
                }
            }
        };
        out.push(run);
    }
    Ok(out)
}

fn event(i: usize, e: EventFields) -> Result<ScenarioEvent, String> {
    let at = format!("events[{i}]");
    let when = dur(&e.at, &format!("{at}.at"))?;
    let mut whats = Vec::new();
    if e.commit == Some(true) {
        whats.push(Happening::Commit);
    }
    if let Some(d) = &e.store_down {
        whats.push(Happening::StoreDown(dur(d, &format!("{at}.store_down"))?));
    }
    if let Some(p) = e.put {
        if !p.is_object() {
            return Err(format!("{at}.put: the put's params, a mapping"));
        }
        whats.push(Happening::Put {
            params: p,
            resource: e.resource.clone(),
        });
    } else if e.resource.is_some() {
        return Err(format!("{at}.resource goes with put"));
    }
    whats.extend(e.trigger.map(Happening::Trigger));
    whats.extend(e.check.map(Happening::Check));
    whats.extend(e.rerun.map(Happening::Rerun));
    let [what] = <[Happening; 1]>::try_from(whats).map_err(|w| {
        format!(
            "{at}: an event is one of commit: true, store_down: DURATION, put: PARAMS, trigger: JOB, rerun: JOB, check: RESOURCE ({} given)",
            w.len()
        )
    })?;
    Ok(ScenarioEvent { at: when, what })
}

fn expect(x: ExpectFields) -> Result<Expect, String> {
    let counts = |m: BTreeMap<String, Value>, what: &str| {
        m.into_iter()
            .map(|(k, v)| {
                let c = count(&v, &format!("expect.{what}.{k}"))?;
                Ok((k, c))
            })
            .collect::<Result<BTreeMap<String, Count>, String>>()
    };
    let failures = counts(x.failures, "failures")?
        .into_iter()
        .map(|(k, c)| {
            k.parse::<u32>()
                .map(|n| (n, c))
                .map_err(|_| format!("expect.failures: {k:?} is not a state code"))
        })
        .collect::<Result<_, String>>()?;
    Ok(Expect {
        delivered: x.delivered,
        within: x.within.map(|w| dur(&w, "expect.within")).transpose()?,
        state: x.state,
        status: x.status,
        builds: counts(x.builds, "builds")?,
        task_runs: counts(x.task_runs, "task_runs")?,
        failures,
        runs: x.runs,
        refused: x.refused.map(|v| count(&v, "expect.refused")).transpose()?,
        leaked: x.leaked.map(|v| count(&v, "expect.leaked")).transpose()?,
        alerted_within: x
            .alerted_within
            .map(|w| dur(&w, "expect.alerted_within"))
            .transpose()?,
        handoffs_within: x
            .handoffs_within
            .map(|w| dur(&w, "expect.handoffs_within"))
            .transpose()?,
        dead_found_within: x
            .dead_found_within
            .map(|w| dur(&w, "expect.dead_found_within"))
            .transpose()?,
    })
}

impl Default for Scenario {
    /// Every task succeeds; the build must be delivered.
    fn default() -> Scenario {
        Scenario {
            description: "every task succeeds".into(),
            pipelines: vec![],
            releases: vec![],
            task_time: DEFAULT_TASK_TIME,
            tasks: BTreeMap::new(),
            events: vec![],
            until: DEFAULT_UNTIL,
            approve_after: Some(Duration::ZERO),
            heartbeat_every: DEFAULT_HEARTBEAT_EVERY,
            atc: AtcSettings::default(),
            expect: Expect {
                delivered: Some(true),
                ..Expect::default()
            },
        }
    }
}

impl Scenario {
    /// Reads a scenario from YAML (or JSON); unknown fields are refused.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let value = crate::pipeline::parse_yaml(text).map_err(|e| format!("{e:#}"))?;
        if !value.is_object() && !value.is_null() {
            return Err("a scenario is a mapping (description, tasks, events, expect, ...)".into());
        }
        let f: ScenarioFields = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let tasks = f
            .tasks
            .into_iter()
            .map(|(name, runs)| Ok((name.clone(), task_runs(&name, runs)?)))
            .collect::<Result<_, String>>()?;
        let mut events = f
            .events
            .into_iter()
            .enumerate()
            .map(|(i, e)| event(i, e))
            .collect::<Result<Vec<_>, String>>()?;
        events.sort_by_key(|e| e.at);
        Ok(Scenario {
            description: f.description,
            pipelines: f.pipelines,
            releases: f
                .releases
                .iter()
                .map(|r| r.parse())
                .collect::<Result<_, String>>()
                .map_err(|e| format!("releases: {e}"))?,
            task_time: f
                .task_time
                .map(|t| dur(&t, "task_time"))
                .transpose()?
                .unwrap_or(DEFAULT_TASK_TIME),
            tasks,
            events,
            until: match f.until.map(|u| dur(&u, "until")).transpose()? {
                Some(u) if u > MAX_UNTIL => {
                    return Err(format!(
                        "until: {} is more than the {} a simulation plays",
                        crate::model::time::format(u),
                        crate::model::time::format(MAX_UNTIL)
                    ));
                }
                u => u.unwrap_or(DEFAULT_UNTIL),
            },
            approve_after: match f.approve_after.as_deref().map(str::trim) {
                None => Some(Duration::ZERO),
                Some("never") => None,
                Some(t) => Some(dur(t, "approve_after")?),
            },
            heartbeat_every: match &f.heartbeat_every {
                None => DEFAULT_HEARTBEAT_EVERY,
                Some(t) => match dur(t, "heartbeat_every")? {
                    d if d.is_zero() => {
                        return Err("heartbeat_every: must be longer than 0s".into());
                    }
                    d => d,
                },
            },
            atc: f.atc,
            expect: f.expect.map(expect).transpose()?.unwrap_or(Expect {
                delivered: Some(true),
                ..Expect::default()
            }),
        })
    }

    /// Refuses a scenario that names a task, job or resource the pipeline
    /// lacks (it would test nothing), saying what the pipeline has.
    pub(crate) fn check_names(
        &self,
        p: &crate::concourse::atc::pipeline::Pipeline,
    ) -> Result<(), String> {
        let tasks = p.tasks();
        let jobs: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
        let resources: Vec<&str> = p.resources.iter().map(|r| r.name.as_str()).collect();
        let list = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
        let no_task = |at: &str, t: &str| {
            format!(
                "{at}: the pipeline has no task {t} (its tasks: {})",
                list(&mut tasks.iter().map(String::as_str))
            )
        };
        let no_job = |at: &str, j: &str| {
            format!(
                "{at}: the pipeline has no job {j} (its jobs: {})",
                list(&mut jobs.iter().copied())
            )
        };
        for key in self.tasks.keys() {
            match key.split_once('/') {
                Some((job, task)) => {
                    let Some(j) = p.job(job) else {
                        return Err(no_job(&format!("tasks.{key}"), job));
                    };
                    let mut has = false;
                    j.plan.visit(&mut |s| {
                        has |= matches!(&s.kind, crate::concourse::atc::pipeline::StepKind::Task(t) if t.name == task)
                    });
                    if !has {
                        return Err(no_task(&format!("tasks.{key}"), task));
                    }
                }
                None if !tasks.contains(key) => return Err(no_task(&format!("tasks.{key}"), key)),
                None => {}
            }
        }
        for task in self.expect.task_runs.keys() {
            if !tasks.contains(task) {
                return Err(no_task(&format!("expect.task_runs.{task}"), task));
            }
        }
        for job in self.expect.builds.keys() {
            if !jobs.contains(&job.as_str()) {
                return Err(no_job(&format!("expect.builds.{job}"), job));
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            let at = format!("events[{i}]");
            let (job, resource) = match &e.what {
                Happening::Trigger(j) | Happening::Rerun(j) => (Some(j), None),
                Happening::Check(r) => (None, Some(r)),
                Happening::Put { resource, .. } => (None, resource.as_ref()),
                _ => (None, None),
            };
            if let Some(j) = job.filter(|j| !jobs.contains(&j.as_str())) {
                return Err(no_job(&at, j));
            }
            if let Some(r) = resource.filter(|r| !resources.contains(&r.as_str())) {
                return Err(format!(
                    "{at}: the pipeline has no resource {r} (its resources: {})",
                    list(&mut resources.iter().copied())
                ));
            }
        }
        Ok(())
    }

    /// Whether it applies to the pipeline file named `stem` on `release`.
    pub fn applies_to(&self, stem: &str, release: super::Release) -> bool {
        (self.pipelines.is_empty() || self.pipelines.iter().any(|p| p == stem))
            && (self.releases.is_empty() || self.releases.contains(&release))
    }
}
