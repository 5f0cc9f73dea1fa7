//! `simulate --faults`: the pipeline played once without faults, then once
//! for every moment a step of that play touched the store (a check, a get,
//! a put; not the periodic checks of a resource checked every minute) with
//! the store down for a while from that moment, and once with each task
//! hanging. A play that stalls (the build not delivered), runs a
//! task more often than the play without faults, or records a failure no
//! task had is a finding.

use super::memory::InMemory;
use super::scenario::{Happening, Scenario, ScenarioEvent, TaskOutcome, TaskRun};
use super::{Report, Unplayable, simulate, t0};
use crate::concourse::Release;
use crate::concourse::atc::Line;
use crate::concourse::atc::pipeline::{Pipeline, StepKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

/// What a sweep found.
#[derive(Debug, Serialize)]
pub struct Sweep {
    /// The pipeline's name.
    pub(crate) pipeline: String,
    /// The release modelled.
    pub(crate) release: String,
    /// How long each outage lasts (seconds).
    pub(crate) outage: f64,
    /// Moments a step touched the store in the play without faults.
    pub moments: usize,
    /// Plays, the one without faults included.
    pub(crate) plays: usize,
    /// The plays that went wrong.
    pub findings: Vec<Finding>,
}

/// One play that went wrong.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// When the fault began (seconds since the start; 0 for a hang).
    pub at: u64,
    /// The fault: the step that met the outage, or the task that hung.
    pub fault: String,
    /// What went wrong: stalled, a task run twice, a failure no task had.
    pub verdicts: Vec<String>,
    /// The last lines of its timeline.
    pub(crate) tail: Vec<Line>,
}

/// One play to make: an outage at a moment, or a task that hangs.
#[derive(Clone, Debug)]
enum Fault {
    Outage { at: Duration, what: String },
    Hang { task: String },
}

/// Sweeps `pipeline` under `scenario` (whose tasks should all succeed in
/// the end: every failure it records is held against the play without
/// faults) with outages of `outage`.
pub fn sweep(
    pipeline: &Pipeline,
    name: &str,
    release: Release,
    scenario: &Scenario,
    outage: Duration,
) -> Result<(Report, Sweep), Unplayable> {
    let steps = Rc::new(InMemory::new());
    let base = simulate(pipeline, name, release, scenario, steps.clone())?;
    let mut faults = moments(&steps, pipeline);
    let moments = faults.len();
    faults.extend(
        pipeline
            .tasks()
            .into_iter()
            .filter(|t| base.played.task_runs.contains_key(t))
            .map(|task| Fault::Hang { task }),
    );
    let findings: Vec<Finding> = std::thread::scope(|scope| {
        let halves: Vec<Vec<Fault>> = vec![
            faults.iter().step_by(2).cloned().collect(),
            faults.iter().skip(1).step_by(2).cloned().collect(),
        ];
        let handles: Vec<_> = halves
            .into_iter()
            .map(|half| {
                let base = &base;
                scope.spawn(move || {
                    half.into_iter()
                        .filter_map(|f| judge(pipeline, name, release, scenario, outage, base, f))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Finding> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sweep thread"))
            .collect();
        all.sort_by(|a, b| (a.at, &a.fault).cmp(&(b.at, &b.fault)));
        all
    });
    let sweep = Sweep {
        pipeline: name.to_string(),
        release: release.to_string(),
        outage: outage.as_secs_f64(),
        moments,
        plays: faults.len() + 1,
        findings,
    };
    Ok((base, sweep))
}

/// The distinct moments the play without faults touched the store, but
/// for the periodic checks of a resource checked every minute or more
/// often (the timer): an outage there costs one interval, and the next
/// check is the retry.
fn moments(steps: &InMemory, pipeline: &Pipeline) -> Vec<Fault> {
    let start = t0();
    let frequent: Vec<String> = pipeline
        .resources
        .iter()
        .filter(|r| r.check_every.is_some_and(|c| c <= Duration::from_secs(60)))
        .map(|r| format!("check of {}", r.name))
        .collect();
    let mut seen: BTreeMap<i64, (String, usize)> = BTreeMap::new();
    for (when, what) in steps
        .touches()
        .into_iter()
        .filter(|(_, what)| !frequent.contains(what))
    {
        let ms = (when - start).num_milliseconds();
        seen.entry(ms)
            .and_modify(|(_, n)| *n += 1)
            .or_insert((what, 0));
    }
    seen.into_iter()
        .map(|(ms, (what, more))| Fault::Outage {
            at: Duration::from_millis(ms.max(0) as u64),
            what: if more > 0 {
                format!("{what} (and {more} more at that moment)")
            } else {
                what
            },
        })
        .collect()
}

/// Plays one fault; a finding when the play went wrong.
fn judge(
    p: &Pipeline,
    name: &str,
    release: Release,
    scenario: &Scenario,
    outage: Duration,
    base: &Report,
    fault: Fault,
) -> Option<Finding> {
    let mut s = scenario.clone();
    let (at, label, hung) = match &fault {
        Fault::Outage { at, what } => {
            s.events.push(ScenarioEvent {
                at: *at,
                what: Happening::StoreDown(outage),
            });
            s.events.sort_by_key(|e| e.at);
            (
                at.as_secs(),
                format!(
                    "the store down for {} from {what}",
                    crate::model::time::format(outage)
                ),
                None,
            )
        }
        Fault::Hang { task } => {
            let runs = s.tasks.entry(task.clone()).or_default();
            runs.insert(
                0,
                TaskRun {
                    outcome: TaskOutcome::Hang,
                    error: None,
                    after: None,
                    creates: Vec::new(),
                },
            );
            (0, format!("task {task} hangs"), Some(task.clone()))
        }
    };
    let r = match simulate(p, name, release, &s, Rc::new(InMemory::new())) {
        Ok(r) => r,
        Err(e) => {
            return Some(Finding {
                at,
                fault: label,
                verdicts: vec![format!("could not be played: {e}")],
                tail: vec![],
            });
        }
    };
    let verdicts = verdicts(p, base, &r, hung.as_deref());
    if verdicts.is_empty() {
        return None;
    }
    let timeline = &r.played.atc.timeline;
    Some(Finding {
        at,
        fault: label,
        verdicts,
        tail: timeline[timeline.len().saturating_sub(8)..].to_vec(),
    })
}

/// What went wrong in `r` against the play without faults; `hung` is the
/// task that hung (its stage may run it again and count its failure). A
/// play that ends blocked with a human told (an alert job ran) was handed
/// to a human, as the stage's policy says (a hung task at a human's stage):
/// not a stall, and the alert's tasks may run.
fn verdicts(p: &Pipeline, base: &Report, r: &Report, hung: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let alerts = super::report::alert_jobs(p);
    let builds_of = |rep: &Report, job: &str| {
        rep.played
            .atc
            .builds
            .iter()
            .filter(|b| b.job == job)
            .count()
    };
    let handed = alerts.iter().any(|j| builds_of(r, j) > builds_of(base, j))
        && r.played
            .document
            .as_ref()
            .is_some_and(|d| d.status == crate::model::Status::Blocked);
    if base.summary.delivered && !r.summary.delivered && !handed {
        out.push(format!(
            "stalled: {}; {}",
            r.summary.end.as_deref().unwrap_or("no document"),
            r.summary.stopped
        ));
    }
    // Runs allowed beyond the play without faults: the hung task once
    // more, the stages a start-over loop from its stage re-runs, and the
    // alert's tasks when the play was handed to a human.
    let mut again: Vec<String> = hung.map(|t| vec![t.to_string()]).unwrap_or_default();
    if let Some(t) = hung {
        let looped = looped_stages(p, &stages_of_task(p, t));
        again.extend(tasks_of_stages(p, &looped));
    }
    if handed {
        again.extend(tasks_of(p, &alerts));
    }
    // A cleanup job runs once per leak: a fault that failed an attempt
    // leaked its resources, and cleaning them up is no stage run twice.
    let cleanups = tasks_of(p, &super::report::cleanup_jobs(p));
    for (task, n) in &r.played.task_runs {
        if cleanups.contains(task) {
            continue;
        }
        let before = base.played.task_runs.get(task).copied().unwrap_or(0);
        // A task that records on a document copy counts per stage.
        let name = task
            .split_once(": stage ")
            .map_or(task.as_str(), |(t, _)| t);
        let allowed = before + u64::from(again.iter().any(|a| a == name));
        if *n > allowed {
            out.push(format!(
                "task {task} ran {n} times (without the fault: {before})"
            ));
        }
    }
    // Nothing a fault made an attempt leave behind may stay behind.
    let (left, before) = (r.played.left_behind.len(), base.played.left_behind.len());
    if left > before && !handed {
        let what: Vec<String> = r
            .played
            .left_behind
            .iter()
            .map(|l| format!("{} {} ({})", l.name, l.id, l.holding.as_str()))
            .collect();
        out.push(format!(
            "left {left} cloud resource(s) behind (without the fault: {before}): {}",
            what.join(", ")
        ));
    }
    let hung_stages = hung.map(|t| stages_of_task(p, t)).unwrap_or_default();
    for (stage, n) in &r.summary.failures {
        let before = base.summary.failures.get(stage).copied().unwrap_or(0);
        let allowed = before + u32::from(hung_stages.contains(stage));
        if *n > allowed {
            out.push(format!(
                "{n} failure(s) recorded at {stage} (without the fault: {before}): a failure no task had"
            ));
        }
    }
    out
}

/// The stages a failure at `stages` sends the build back through (a
/// `resume_from` policy): from the code it resumes from, up to the stage.
fn looped_stages(p: &Pipeline, stages: &[u32]) -> Vec<u32> {
    let Some(config) = p
        .state_resource()
        .and_then(|r| serde_json::from_value(r.source.clone()).ok())
        .and_then(|s| crate::resource::configure(&s).ok())
    else {
        return vec![];
    };
    let mut out = Vec::new();
    for n in stages {
        if let Some(from) = config.retry.for_state(*n).resume_from {
            out.extend(
                config
                    .ladder
                    .steps()
                    .iter()
                    .map(|s| s.code)
                    .filter(|c| *c >= from && c < n),
            );
        }
    }
    out
}

/// The tasks of the jobs that start `stages`.
fn tasks_of_stages(p: &Pipeline, stages: &[u32]) -> Vec<String> {
    let jobs: Vec<&str> = p
        .jobs
        .iter()
        .filter(|j| {
            j.puts().iter().any(|put| {
                put.params["start"]
                    .as_u64()
                    .is_some_and(|n| stages.contains(&(n as u32)))
            })
        })
        .map(|j| j.name.as_str())
        .collect();
    tasks_of(p, &jobs)
}

/// The tasks of `jobs`.
fn tasks_of(p: &Pipeline, jobs: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for j in p.jobs.iter().filter(|j| jobs.contains(&j.name.as_str())) {
        j.plan.visit(&mut |s| {
            if let StepKind::Task(t) = &s.kind {
                out.push(t.name.clone());
            }
        });
    }
    out
}

/// The stages the jobs that run task `task` start.
fn stages_of_task(p: &Pipeline, task: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for j in &p.jobs {
        let mut has = false;
        j.plan
            .visit(&mut |s| has |= matches!(&s.kind, StepKind::Task(t) if t.name == task));
        if has {
            for put in j.puts() {
                if let Some(n) = put.params["start"].as_u64() {
                    out.push(n as u32);
                }
            }
        }
    }
    out
}
