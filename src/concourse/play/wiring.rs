//! The wiring of a pipeline of build-state resources, checked before
//! anything is played, whatever the scenario: every stage recorded by some
//! job, every gate openable, each job recording the stage it starts, no job
//! that triggers itself, gated gets in serial jobs, a timeout on every
//! stage a job starts (so that a lost outcome put cannot stall it), a step
//! timeout on each of its tasks, shorter than its stage's, a heartbeat
//! stage whose task
//! sends heartbeats, no put to a gate, `finish` only where the release
//! gives `BUILD_STATUS`, handoffs the ATC takes, and approvals that record
//! who gave them.

use crate::concourse::Release;
use crate::concourse::atc::pipeline::{Job, Pipeline, PlanStep, PutStep, StepKind};
use crate::config::Config;
use crate::model::gate::At;
use serde_json::Value;
use std::collections::BTreeSet;

fn config_of(source: &Value) -> Option<Config> {
    crate::resource::configure(&serde_json::from_value(source.clone()).ok()?).ok()
}

/// The codes a put's params name with `action` (`start`, `complete`, ...).
fn code(params: &Value, action: &str) -> Option<u32> {
    match &params[action] {
        Value::Number(n) => n.as_u64().map(|n| n as u32),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What `job` starts and records: (starts, outcomes).
fn stages(p: &Pipeline, job: &Job) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut starts = BTreeSet::new();
    let mut outcomes = BTreeSet::new();
    for put in job.puts() {
        if !p.resource(&put.resource).is_some_and(|r| r.build_state) {
            continue;
        }
        if let Some(n) = code(&put.params, "start") {
            starts.insert(n);
        }
        for a in ["complete", "finish", "fail"] {
            if let Some(n) = code(&put.params, a) {
                outcomes.insert(n);
            }
        }
    }
    (starts, outcomes)
}

/// Every wiring problem of `p` on `release` (empty: none).
pub fn problems(p: &Pipeline, release: Release) -> Vec<String> {
    let Some(state) = p.state_resource() else {
        return vec![
            "no ungated build-state resource: the puts that record progress need one".into(),
        ];
    };
    let Some(config) = config_of(&state.source) else {
        return vec![format!(
            "resources.{}: its source is not a valid build-state source",
            state.name
        )];
    };
    let mut w = Wiring {
        p,
        release,
        state: &state.name,
        config: &config,
        out: Vec::new(),
        recorded: BTreeSet::new(),
        reopened: BTreeSet::new(),
    };
    for job in &p.jobs {
        w.job(job);
    }
    w.unrecorded();
    w.gates();
    w.cleanup();
    w.out
}

struct Wiring<'a> {
    p: &'a Pipeline,
    release: Release,
    state: &'a str,
    config: &'a Config,
    out: Vec<String>,
    /// Stages some job records the outcome of.
    recorded: BTreeSet<u32>,
    /// Stages some job retries or sets.
    reopened: BTreeSet<u32>,
}

impl Wiring<'_> {
    /// A task that records cloud resources (`build-state created`) with no
    /// job to delete what the build leaves behind: every failed attempt's,
    /// every start-over's would stay, and cost, until someone noticed.
    fn cleanup(&mut self) {
        let recorders: Vec<String> = self
            .p
            .jobs
            .iter()
            .flat_map(|j| tasks_with_timeouts(&j.plan, None))
            .filter(|(t, _)| {
                t.config
                    .as_ref()
                    .and_then(super::tasks::created_stage)
                    .is_some()
            })
            .map(|(t, _)| t.name.clone())
            .collect();
        if let Some(first) = recorders.first()
            && super::report::cleanup_jobs(self.p).is_empty()
        {
            self.say(format!(
                "task {first} records the cloud resources it creates, and no job triggers on a `gate: {{leaked: true}}` resource to delete what attempts leave behind (a failed attempt's, a start-over's): they would stay until someone noticed"
            ));
        }
    }

    fn say(&mut self, problem: String) {
        if !self.out.contains(&problem) {
            self.out.push(problem);
        }
    }

    fn job(&mut self, job: &Job) {
        let (starts, outcomes) = stages(self.p, job);
        self.recorded.extend(outcomes.iter().copied());
        for put in job.puts() {
            self.put(job, put);
        }
        if !starts.is_empty() {
            for m in outcomes.difference(&starts) {
                self.say(format!(
                    "job {}: starts {} but records the outcome of {m}",
                    job.name,
                    starts
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for n in &starts {
            self.stage_job(*n, job);
        }
        self.gets(job);
    }

    fn put(&mut self, job: &Job, put: &PutStep) {
        for a in ["retry", "set"] {
            if let Some(n) = code(&put.params, a) {
                self.reopened.insert(n);
            }
        }
        let Some(r) = self.p.resource(&put.resource).filter(|r| r.build_state) else {
            return;
        };
        if r.source.get("gate").is_some() {
            self.say(format!(
                "job {}: puts to {}, a gated resource: the put is refused (put to {}, the ungated one)",
                job.name, r.name, self.state
            ));
        }
        if let Some(n) = code(&put.params, "approve")
            && !r.expose_build_created_by
        {
            self.say(format!(
                "job {}: approves {n} through {}, which lacks expose_build_created_by: true: the approval records no one (Concourse gives BUILD_CREATED_BY only to puts to such a resource)",
                job.name, r.name
            ));
        }
        self.handoffs(job, put);
        if put.params.get("finish").is_some() && !self.release.has_build_status() {
            self.say(format!(
                "job {}: finish needs BUILD_STATUS, which Concourse gives puts in hooks since 8.2 (this is {}): record the outcome with complete and fail hooks",
                job.name, self.release
            ));
        }
    }

    /// A handoff to a resource the ATC would answer 404 or 401: the stage
    /// would wait for its periodic check instead.
    fn handoffs(&mut self, job: &Job, put: &PutStep) {
        let token = self
            .p
            .resource(&put.resource)
            .and_then(|r| r.source.get("webhook_token"))
            .and_then(Value::as_str);
        for name in put.params["check"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            let said = format!("job {}: checks {name}", job.name);
            let problem = match (self.p.resource(name), token) {
                (None, _) => {
                    format!("{said}, which the pipeline lacks: the webhook is answered 404")
                }
                (Some(_), None) => format!(
                    "{said}, but {}'s source has no webhook_token: the webhook is not posted",
                    put.resource
                ),
                (Some(r), Some(t)) if r.webhook_token.as_deref() != Some(t) => format!(
                    "{said}, whose webhook_token is not {}'s: the webhook is answered 401",
                    put.resource
                ),
                _ => continue,
            };
            self.say(problem);
        }
    }

    /// Stage `n`'s settings held against `job`, which starts it.
    fn stage_job(&mut self, n: u32, job: &Job) {
        let policy = self.config.retry.for_state(n);
        let label = self.config.ladder.label(n);
        let Some(timeout) = policy.timeout else {
            self.say(format!(
                "stage {label}: job {} starts it, and it has no timeout (retry.states): if the put of its outcome errors (the store or the resource image unreachable), it stays in_progress and nothing triggers it again",
                job.name
            ));
            return;
        };
        let mut beats = false;
        for (task, step_timeout) in tasks_with_timeouts(&job.plan, None) {
            beats |= task
                .config
                .as_ref()
                .and_then(super::tasks::heartbeat_stage)
                .is_some();
            let Some(step_timeout) = step_timeout else {
                self.say(format!(
                    "stage {label}: task {} of job {} has no step timeout: a task that hangs (an SSH session that never returns, a worker lost unnoticed) holds the serial job, and every later build of the stage waits behind it; give it a timeout shorter than the stage's ({})",
                    task.name,
                    job.name,
                    crate::model::time::format(timeout)
                ));
                continue;
            };
            if let Some(t) = Some(step_timeout).filter(|t| *t >= timeout) {
                self.say(format!(
                    "stage {label}: task {} of job {} has a step timeout of {}, not shorter than the stage's timeout ({}): the gate opens again while the task may still run",
                    task.name,
                    job.name,
                    crate::model::time::format(t),
                    crate::model::time::format(timeout)
                ));
            }
        }
        if policy.heartbeat_timeout.is_some() && !beats {
            self.say(format!(
                "stage {label}: it has a heartbeat_timeout, and no task of job {} sends heartbeats (build-state heartbeat): every attempt is dead once the heartbeat_timeout passes",
                job.name
            ));
        }
    }

    fn gets(&mut self, job: &Job) {
        // A job that writes back a document copy (`file:`) may trigger on
        // its own puts: a put that records something runs the next due
        // stage at once, one that repeats the document writes nothing and
        // so triggers nothing (the single-job pipeline's loop).
        let puts_to: BTreeSet<String> = job
            .puts()
            .iter()
            .filter(|p| p.params.get("file").is_none())
            .map(|p| p.resource.clone())
            .collect();
        for g in job.gets() {
            // With `passed`, its own puts are no candidates.
            if g.trigger && g.passed.is_empty() && puts_to.contains(&g.resource) {
                self.say(format!(
                    "job {}: triggers itself: it gets {} with trigger: true and puts to it (every put is a new version)",
                    job.name, g.resource
                ));
            }
            // A stage's gate (`{state: N}`); an alert's gate may run twice.
            let gated = self.p.resource(&g.resource).is_some_and(|r| {
                r.build_state
                    && r.source
                        .get("gate")
                        .is_some_and(|g| g.get("state").is_some())
            });
            if gated && g.trigger && job.in_flight_limit() != Some(1) {
                self.say(format!(
                    "job {}: gets the gate {} without serial: true: once a timeout opens the gate again, a second build can run the stage beside the first",
                    job.name, g.resource
                ));
            }
        }
    }

    /// Stages no job records (a put of a whole document, `file:`, records
    /// what its task decided: the task, not the wiring, names stages).
    fn unrecorded(&mut self) {
        let by_documents = self
            .p
            .jobs
            .iter()
            .any(|j| j.puts().iter().any(|put| put.params.get("file").is_some()));
        if by_documents {
            return;
        }
        let ladder = &self.config.ladder;
        for step in ladder.steps() {
            let c = step.code;
            if c == ladder.final_code() || self.recorded.contains(&c) {
                continue;
            }
            self.out.push(format!(
                "stage {}: no job records it (no put with complete: {c} or finish: {c}): a build that reaches it stays there",
                ladder.label(c)
            ));
        }
    }

    fn gates(&mut self) {
        let ladder = &self.config.ladder;
        for r in self.p.resources.iter().filter(|r| r.build_state) {
            let Some(gate) = r.source.get("gate") else {
                continue;
            };
            if !self
                .p
                .jobs
                .iter()
                .any(|j| j.gets().iter().any(|g| g.resource == r.name))
            {
                self.out
                    .push(format!("resource {}: a gate no job gets", r.name));
                continue;
            }
            let Some(cond) = config_of(&r.source).and_then(|c| c.gate) else {
                continue;
            };
            let (At::State(n), None) = (cond.at, cond.status) else {
                continue;
            };
            let codes: Vec<u32> = ladder.steps().iter().map(|s| s.code).collect();
            let before = codes.iter().take_while(|c| **c != n).last().copied();
            let resumed = codes
                .iter()
                .any(|c| self.config.retry.for_state(*c).resume_from == Some(n));
            let opens = n == ladder.initial()
                || before.is_some_and(|b| self.recorded.contains(&b))
                || resumed
                || self.reopened.contains(&n);
            if !opens {
                self.out.push(format!(
                    "resource {}: a gate no job can open ({gate}): nothing records the stage before {}",
                    r.name,
                    ladder.label(n)
                ));
            }
        }
    }
}

/// Every task under `step` with the step timeout that bounds it (its own
/// or an enclosing step's, the shortest).
fn tasks_with_timeouts(
    step: &PlanStep,
    bound: Option<std::time::Duration>,
) -> Vec<(
    &crate::concourse::atc::pipeline::TaskStep,
    Option<std::time::Duration>,
)> {
    let bound = match (bound, step.timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut out = Vec::new();
    match &step.kind {
        StepKind::Task(t) => out.push((t, bound)),
        StepKind::Do(steps) | StepKind::InParallel { steps, .. } => {
            for s in steps {
                out.extend(tasks_with_timeouts(s, bound));
            }
        }
        StepKind::Try(s) => out.extend(tasks_with_timeouts(s, bound)),
        _ => {}
    }
    out
}
