//! A pipeline as Concourse reads it: resources, jobs, and plans of typed
//! steps with the modifiers and hooks Concourse has. [`Pipeline::parse`]
//! validates first ([`super::validate`], per release, durations in Go's
//! grammar), so the conversion only meets what Concourse would accept.

use super::super::Release;
use super::{duration, validate};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// Concourse's default `check_every`.
pub(crate) const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(60);

/// A whole pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Its resources, in the file's order.
    pub(crate) resources: Vec<Resource>,
    /// Its jobs, in the file's order.
    pub(crate) jobs: Vec<Job>,
}

/// A resource.
#[derive(Clone, Debug)]
pub struct Resource {
    pub(crate) name: String,
    /// Its type's name.
    pub(crate) kind: String,
    /// Whether the type is build-state (see [`crate::pipeline::build_state_types`]).
    pub(crate) build_state: bool,
    /// Its `source`.
    pub source: Value,
    /// How often it is checked (`None`: `never`).
    pub(crate) check_every: Option<Duration>,
    /// `webhook_token`, when it has one (checked at once on a webhook).
    pub(crate) webhook_token: Option<String>,
    /// `expose_build_created_by`: its puts get `BUILD_CREATED_BY`
    /// (`atc/builds/planner.go`, `atc/engine/builder.go` `stepMetadata`).
    pub(crate) expose_build_created_by: bool,
}

/// A job.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) name: String,
    /// Its plan (a `do` of the plan's steps), with the job's hooks.
    pub(crate) plan: PlanStep,
    /// `serial: true` (or `max_in_flight: 1`).
    pub(crate) serial: bool,
    /// `serial_groups`: jobs sharing one run one build at a time.
    pub(crate) serial_groups: Vec<String>,
    /// `max_in_flight` (`None`: unbounded).
    pub(crate) max_in_flight: Option<u32>,
    /// `disable_manual_trigger` (read as Concourse reads it; no play
    /// triggers a job by hand that sets it).
    #[allow(dead_code)]
    pub(crate) disable_manual_trigger: bool,
}

impl Job {
    /// How many of its builds may run at once (`None`: any number).
    pub(crate) fn in_flight_limit(&self) -> Option<u32> {
        if self.serial || !self.serial_groups.is_empty() {
            Some(1)
        } else {
            self.max_in_flight
        }
    }

    /// Every get step of the job (plan and hooks), in order.
    pub(crate) fn gets(&self) -> Vec<&GetStep> {
        let mut out = Vec::new();
        self.plan.visit(&mut |s| {
            if let StepKind::Get(g) = &s.kind {
                out.push(g);
            }
        });
        out
    }

    /// Every put step of the job (plan and hooks), in order.
    pub(crate) fn puts(&self) -> Vec<&PutStep> {
        let mut out = Vec::new();
        self.plan.visit(&mut |s| {
            if let StepKind::Put(p) = &s.kind {
                out.push(p);
            }
        });
        out
    }
}

/// One step, with its modifiers and hooks.
#[derive(Clone, Debug)]
pub struct PlanStep {
    /// What it does.
    pub(crate) kind: StepKind,
    /// `attempts` (1 when not given).
    pub(crate) attempts: u32,
    /// `timeout`.
    pub(crate) timeout: Option<Duration>,
    pub(crate) hooks: Hooks,
}

/// The kinds of step.
#[derive(Clone, Debug)]
pub(crate) enum StepKind {
    /// `get`.
    Get(GetStep),
    /// `put`.
    Put(PutStep),
    /// `task`.
    Task(TaskStep),
    /// `in_parallel` (its `limit` and `fail_fast`).
    InParallel {
        steps: Vec<PlanStep>,
        /// At most this many at once (read, not modelled: the steps run
        /// one after another on virtual time).
        #[allow(dead_code)]
        limit: Option<u32>,
        /// Stop the others at the first failure (read, not modelled).
        #[allow(dead_code)]
        fail_fast: bool,
    },
    /// `do`.
    Do(Vec<PlanStep>),
    /// `try`.
    Try(Box<PlanStep>),
    /// A step the model does not play (`set_pipeline`, `load_var`): it
    /// succeeds.
    Other(String),
}

/// A step's hooks (and a job's).
#[derive(Clone, Debug, Default)]
pub(crate) struct Hooks {
    /// `on_success`.
    pub(crate) on_success: Option<Box<PlanStep>>,
    /// `on_failure`.
    pub(crate) on_failure: Option<Box<PlanStep>>,
    /// `on_error`.
    pub(crate) on_error: Option<Box<PlanStep>>,
    /// `on_abort`.
    pub(crate) on_abort: Option<Box<PlanStep>>,
    /// `ensure`.
    pub(crate) ensure: Option<Box<PlanStep>>,
}

impl Hooks {
    /// Whether there is none.
    pub(crate) fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }

    /// The hooks present, in Concourse's nesting order (innermost first).
    pub(crate) fn all(&self) -> impl Iterator<Item = &PlanStep> {
        [
            &self.on_success,
            &self.on_failure,
            &self.on_abort,
            &self.on_error,
            &self.ensure,
        ]
        .into_iter()
        .filter_map(|h| h.as_deref())
    }
}

/// A get.
#[derive(Clone, Debug)]
pub(crate) struct GetStep {
    /// The artifact's name.
    pub(crate) name: String,
    pub(crate) resource: String,
    /// `passed`.
    pub(crate) passed: Vec<String>,
    /// `trigger`.
    pub(crate) trigger: bool,
    /// `params`.
    pub(crate) params: Value,
    /// `version` (`latest`, `every`, or a pinned version).
    pub(crate) version: Option<Value>,
}

/// A put.
#[derive(Clone, Debug)]
pub(crate) struct PutStep {
    /// The artifact's name (of its implicit get).
    pub(crate) name: String,
    pub(crate) resource: String,
    /// `params`.
    pub(crate) params: Value,
    /// `get_params`.
    pub(crate) get_params: Value,
    /// `no_get`.
    pub(crate) no_get: bool,
    /// `inputs` (`all`, `detect`, or a list of artifact names).
    pub(crate) inputs: Option<Value>,
}

/// A task.
#[derive(Clone, Debug)]
pub struct TaskStep {
    /// The task's name.
    pub(crate) name: String,
    /// Its inputs: (name, optional), after `input_mapping`.
    pub inputs: Vec<(String, bool)>,
    /// Its outputs, after `output_mapping`.
    pub outputs: Vec<String>,
    /// Its config (`None`: from a `file:` the model does not read).
    pub config: Option<Value>,
    /// `file:`, when the config comes from an artifact (read; its task
    /// is played by the scenario, not from the file).
    #[allow(dead_code)]
    pub(crate) file: Option<String>,
}

impl PlanStep {
    /// Calls `f` on this step and every step inside it (hooks included).
    pub fn visit<'s>(&'s self, f: &mut impl FnMut(&'s PlanStep)) {
        f(self);
        match &self.kind {
            StepKind::InParallel { steps, .. } | StepKind::Do(steps) => {
                steps.iter().for_each(|s| s.visit(f))
            }
            StepKind::Try(s) => s.visit(f),
            _ => {}
        }
        for h in self.hooks.all() {
            h.visit(f);
        }
    }
}

impl Pipeline {
    /// Reads an interpolated pipeline for `release`: every error Concourse
    /// would give for it, or the typed pipeline.
    pub fn parse(value: &Value, release: Release) -> Result<Pipeline, Vec<String>> {
        let errors = validate::pipeline_errors(value, release);
        if !errors.is_empty() {
            return Err(errors);
        }
        let types = crate::pipeline::build_state_types(value);
        let resources = value["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| resource(r, &types))
            .collect();
        let jobs = value["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| {
                let name = text(&j["name"]);
                let steps = j["plan"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(step)
                    .collect();
                Job {
                    plan: PlanStep {
                        kind: StepKind::Do(steps),
                        attempts: 1,
                        timeout: None,
                        hooks: hooks(j),
                    },
                    serial: j["serial"] == true || j["max_in_flight"] == 1,
                    serial_groups: j["serial_groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(text)
                        .collect(),
                    max_in_flight: j["max_in_flight"].as_u64().map(|n| n as u32),
                    disable_manual_trigger: j["disable_manual_trigger"] == true,
                    name,
                }
            })
            .collect();
        Ok(Pipeline { resources, jobs })
    }

    /// The ungated build-state resource every put goes to: the build's
    /// document.
    pub(crate) fn state_resource(&self) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.build_state && r.source.get("gate").is_none())
    }

    /// The resource named `name`.
    pub(crate) fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The job named `name`.
    pub(crate) fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The resources some job gets with `trigger: true` and no `passed`:
    /// the ones 8.2's scanner checks on their `check_every`
    /// (`atc/db/check_factory.go` `Resources`: `job_inputs WHERE
    /// passed_job_id IS NULL`, `bool_or(trigger)`).
    pub(crate) fn triggers(&self) -> BTreeSet<String> {
        self.jobs
            .iter()
            .flat_map(|j| j.gets())
            .filter(|g| g.trigger && g.passed.is_empty())
            .map(|g| g.resource.clone())
            .collect()
    }

    /// Every task step's name, in the order of the jobs.
    pub(crate) fn tasks(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for j in &self.jobs {
            j.plan.visit(&mut |s| {
                if let StepKind::Task(t) = &s.kind {
                    out.insert(t.name.clone());
                }
            });
        }
        out
    }
}

fn resource(r: &Value, types: &BTreeSet<String>) -> Resource {
    let kind = text(&r["type"]);
    // Validated already: "never", or a Go duration.
    let check_every = match r.get("check_every").and_then(Value::as_str) {
        None | Some("") => Some(DEFAULT_CHECK_EVERY),
        Some("never") => None,
        // Concourse takes any interval, but its scanner looks every 10 s
        // (`--lidar-scanner-interval`): no resource is checked more often.
        Some(d) => Some(
            duration::parse(d)
                .unwrap_or(DEFAULT_CHECK_EVERY)
                .max(super::TICK),
        ),
    };
    Resource {
        build_state: types.contains(&kind),
        source: r.get("source").cloned().unwrap_or(Value::Null),
        webhook_token: r
            .get("webhook_token")
            .and_then(Value::as_str)
            .map(str::to_string),
        expose_build_created_by: r["expose_build_created_by"] == true,
        check_every,
        name: text(&r["name"]),
        kind,
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn hooks(holder: &Value) -> Hooks {
    let hook = |name: &str| holder.get(name).map(|h| Box::new(step(h)));
    Hooks {
        on_success: hook("on_success"),
        on_failure: hook("on_failure"),
        on_error: hook("on_error"),
        on_abort: hook("on_abort"),
        ensure: hook("ensure"),
    }
}

fn step(s: &Value) -> PlanStep {
    // Validated already (Go's grammar).
    let timeout = s
        .get("timeout")
        .and_then(Value::as_str)
        .and_then(|t| duration::parse(t).ok());
    let many =
        |v: &Value| -> Vec<PlanStep> { v.as_array().into_iter().flatten().map(step).collect() };
    let kind = if let Some(name) = s.get("get").and_then(Value::as_str) {
        StepKind::Get(get_step(s, name))
    } else if let Some(name) = s.get("put").and_then(Value::as_str) {
        StepKind::Put(PutStep {
            name: name.to_string(),
            resource: s["resource"].as_str().unwrap_or(name).to_string(),
            params: s.get("params").cloned().unwrap_or(Value::Null),
            get_params: s.get("get_params").cloned().unwrap_or(Value::Null),
            no_get: s["no_get"] == true,
            inputs: s.get("inputs").cloned(),
        })
    } else if let Some(name) = s.get("task").and_then(Value::as_str) {
        StepKind::Task(task_step(s, name))
    } else if let Some(inner) = s.get("in_parallel") {
        let (steps, limit, fail_fast) = match inner {
            Value::Array(_) => (many(inner), None, false),
            _ => (
                many(&inner["steps"]),
                inner["limit"].as_u64().map(|n| n as u32),
                inner["fail_fast"] == true,
            ),
        };
        StepKind::InParallel {
            steps,
            limit,
            fail_fast,
        }
    } else if let Some(inner) = s.get("do") {
        StepKind::Do(many(inner))
    } else if let Some(inner) = s.get("try") {
        StepKind::Try(Box::new(step(inner)))
    } else {
        let kind = s
            .as_object()
            .and_then(|m| m.keys().next().cloned())
            .unwrap_or_default();
        StepKind::Other(kind)
    };
    PlanStep {
        kind,
        attempts: s["attempts"].as_u64().map_or(1, |n| n.max(1) as u32),
        timeout,
        hooks: hooks(s),
    }
}

fn get_step(s: &Value, name: &str) -> GetStep {
    GetStep {
        name: name.to_string(),
        resource: s["resource"].as_str().unwrap_or(name).to_string(),
        passed: s["passed"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect(),
        trigger: s["trigger"] == true,
        params: s.get("params").cloned().unwrap_or(Value::Null),
        version: s.get("version").cloned(),
    }
}

fn task_step(s: &Value, name: &str) -> TaskStep {
    let config = s.get("config").cloned();
    let mapped = |field: &str, n: &str| s[field][n].as_str().unwrap_or(n).to_string();
    let list = |key: &str| -> Vec<Value> {
        config
            .as_ref()
            .and_then(|c| c[key].as_array().cloned())
            .unwrap_or_default()
    };
    TaskStep {
        name: name.to_string(),
        inputs: list("inputs")
            .iter()
            .map(|i| {
                (
                    mapped("input_mapping", i["name"].as_str().unwrap_or_default()),
                    i["optional"] == true,
                )
            })
            .collect(),
        outputs: list("outputs")
            .iter()
            .map(|o| mapped("output_mapping", o["name"].as_str().unwrap_or_default()))
            .collect(),
        file: s.get("file").and_then(Value::as_str).map(str::to_string),
        config,
    }
}
