//! What a simulation found: the summary, and the scenario's expectations
//! held against what was played.

use super::scenario::Scenario;
use super::stand::Played;
use crate::concourse::Release;
use crate::concourse::atc::pipeline::Pipeline;
use crate::model::time;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a simulation found, for people and for `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The pipeline's name.
    pub(crate) pipeline: String,
    /// The release modelled.
    pub(crate) release: String,
    /// The scenario's description.
    pub(crate) scenario: String,
    /// Wiring problems (any of them fails the simulation).
    pub wiring: Vec<String>,
    /// Expectations that did not hold, and invariants broken.
    pub failures: Vec<String>,
    /// The summary.
    pub summary: PlaySummary,
    /// What happened.
    pub played: Played,
}

/// The summary of a simulation.
#[derive(Debug, Serialize)]
pub struct PlaySummary {
    /// The build was delivered.
    pub(crate) delivered: bool,
    /// When (seconds since the start).
    pub(crate) delivered_at: Option<u64>,
    /// Seconds simulated.
    pub(crate) elapsed: u64,
    /// The build's state, status and run at the end.
    pub(crate) end: Option<String>,
    /// Attempts started per stage (the current run).
    pub(crate) attempts: BTreeMap<u32, u32>,
    /// Failures recorded per stage (the current run).
    pub(crate) failures: BTreeMap<u32, u32>,
    /// Heartbeats per stage: accepted and refused.
    pub heartbeats: BTreeMap<u32, Beats>,
    /// Builds of the alert jobs (jobs triggered by a gate on a status).
    pub(crate) alerts: u64,
    /// Handoffs, in seconds: from each stage becoming due (pending, or its
    /// retry due) to its `start` landing; what checks and scheduling add
    /// to a build.
    pub(crate) handoffs: Vec<f64>,
    /// Check webhooks the ATC took.
    pub webhooks: u64,
    /// Check builds of build-state resources (each at least one S3 request).
    pub checks: u64,
    /// Cloud resources left behind at the end (leaked or held).
    pub(crate) left_behind: u64,
    /// Why the simulation stopped.
    pub(crate) stopped: String,
}

/// Heartbeats of one stage.
#[derive(Debug, Serialize)]
pub struct Beats {
    /// Taken.
    pub accepted: u64,
    /// Refused (a zombie's, as the resource judged).
    pub refused: u64,
}

impl Report {
    pub(super) fn new(
        p: &Pipeline,
        name: &str,
        release: Release,
        scenario: &Scenario,
        wiring: Vec<String>,
        played: Played,
    ) -> Report {
        let summary = summarize(p, &played);
        let failures = expectations(p, scenario, &played, &summary);
        Report {
            pipeline: name.to_string(),
            release: release.to_string(),
            scenario: scenario.description.clone(),
            wiring,
            failures,
            summary,
            played,
        }
    }

    /// Whether the wiring is right and every expectation held.
    pub fn passed(&self) -> bool {
        self.wiring.is_empty() && self.failures.is_empty()
    }
}

/// The handoffs of a run's history: for each `start` that follows the
/// event that made its stage due (at that stage: pending, or failed with
/// its retry due), the seconds between them.
pub(crate) fn handoffs(doc: &crate::model::Document) -> Vec<f64> {
    use crate::model::{ActionKind, Status as DocStatus};
    doc.history
        .windows(2)
        .filter_map(|w| {
            let (before, start) = (&w[0], &w[1]);
            if start.action != ActionKind::Start || before.state != start.state {
                return None;
            }
            let due = match before.status {
                DocStatus::Pending => before.at,
                DocStatus::Failed => before.retry_at.map_or(before.at, |t| t.max(before.at)),
                _ => return None,
            };
            Some((start.at - due).num_milliseconds().max(0) as f64 / 1000.0)
        })
        .collect()
}

fn summarize(p: &Pipeline, played: &Played) -> PlaySummary {
    let mut attempts = BTreeMap::new();
    let mut failures = BTreeMap::new();
    if let Some(doc) = &played.document {
        for e in &doc.history {
            let Some(n) = e.target else { continue };
            match e.action {
                crate::model::ActionKind::Start => *attempts.entry(n).or_insert(0) += 1,
                crate::model::ActionKind::Fail => *failures.entry(n).or_insert(0) += 1,
                _ => {}
            }
        }
    }
    let alert_jobs = alert_jobs(p);
    PlaySummary {
        delivered: played.delivered_at.is_some(),
        delivered_at: played.delivered_at,
        elapsed: played.elapsed,
        end: played.document.as_ref().map(|d| {
            format!(
                "{} (run {}, revision {})",
                d.whereabouts(),
                d.run,
                d.revision
            )
        }),
        attempts,
        failures,
        heartbeats: played
            .heartbeats
            .iter()
            .map(|(n, (a, r))| {
                (
                    *n,
                    Beats {
                        accepted: *a,
                        refused: *r,
                    },
                )
            })
            .collect(),
        alerts: played
            .atc
            .builds
            .iter()
            .filter(|b| alert_jobs.contains(&b.job.as_str()) && b.started.is_some())
            .count() as u64,
        handoffs: played.document.as_ref().map(handoffs).unwrap_or_default(),
        webhooks: played.atc.webhooks,
        checks: played.atc.checks,
        left_behind: played.left_behind.len() as u64,
        stopped: played.stopped.clone(),
    }
}

/// The jobs a build-state gate whose `gate` block `opens` triggers.
fn jobs_on_gate(p: &Pipeline, opens: impl Fn(&serde_json::Value) -> bool) -> Vec<&str> {
    p.jobs
        .iter()
        .filter(|j| {
            j.gets().iter().any(|g| {
                g.trigger
                    && p.resource(&g.resource)
                        .is_some_and(|r| r.build_state && opens(&r.source["gate"]))
            })
        })
        .map(|j| j.name.as_str())
        .collect()
}

/// The cleanup jobs: triggered by a build-state gate `{leaked: true}`:
/// they delete what attempts left behind, so they run whenever a fault
/// made an attempt fail (they are no stage).
pub(super) fn cleanup_jobs(p: &Pipeline) -> Vec<&str> {
    jobs_on_gate(p, |gate| gate["leaked"] == true)
}

/// The alert jobs: triggered by a build-state gate on a status (blocked,
/// awaiting approval): they tell a human.
pub(super) fn alert_jobs(p: &Pipeline) -> Vec<&str> {
    jobs_on_gate(p, |gate| gate.get("status").is_some())
}

fn expectations(p: &Pipeline, s: &Scenario, played: &Played, summary: &PlaySummary) -> Vec<String> {
    let x = &s.expect;
    let mut out = played.violations.clone();
    let end = summary.end.clone().unwrap_or_else(|| "no document".into());
    match x.delivered {
        Some(true) if !summary.delivered => out.push(format!(
            "expected the build delivered; it was not: {end}; {}",
            played.stopped
        )),
        Some(false) if summary.delivered => {
            out.push("expected the build not delivered; it was".into())
        }
        _ => {}
    }
    if let Some(within) = x.within
        && summary.delivered_at.is_none_or(|t| t > within.as_secs())
    {
        let got = summary
            .delivered_at
            .map_or("never delivered".to_string(), |t| {
                format!("delivered after {}", time::format(Duration::from_secs(t)))
            });
        out.push(format!(
            "expected delivery within {}; {got}",
            time::format(within)
        ));
    }
    let doc = played.document.as_ref();
    if let Some(n) = x.state
        && doc.map(|d| d.state) != Some(n)
    {
        out.push(format!("expected state {n} at the end; {end}"));
    }
    if let Some(st) = &x.status
        && doc.map(|d| d.status.to_string()).as_deref() != Some(st.as_str())
    {
        out.push(format!("expected status {st} at the end; {end}"));
    }
    if let Some(r) = x.runs
        && doc.map(|d| d.run) != Some(r)
    {
        out.push(format!("expected run {r} at the end; {end}"));
    }
    counts(x, played, summary, &mut out);
    if let Some(within) = x.alerted_within {
        out.extend(alerted(p, played, within));
    }
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    if let Some(within) = x.handoffs_within
        && worst(&summary.handoffs) > within.as_secs_f64()
    {
        out.push(format!(
            "expected every stage to start within {} of becoming due; the worst took {:.0}s ({:?})",
            time::format(within),
            worst(&summary.handoffs),
            summary.handoffs
        ));
    }
    if let Some(within) = x.dead_found_within {
        if played.dead_found.is_empty() {
            out.push("expected a dead attempt to be found; none was".into());
        } else if worst(&played.dead_found) > within.as_secs_f64() {
            out.push(format!(
                "expected every dead attempt found within {} of its deadline; the worst took {:.0}s",
                time::format(within),
                worst(&played.dead_found)
            ));
        }
    }
    out
}

/// Whether an alert job's build started within `within` of the build first
/// becoming blocked (the time a human waits to hear of it).
fn alerted(p: &Pipeline, played: &Played, within: Duration) -> Option<String> {
    let t0 = super::t0();
    let blocked = played
        .document
        .as_ref()?
        .history
        .iter()
        .find(|e| e.status == crate::model::Status::Blocked)
        .map(|e| (e.at - t0).num_seconds().max(0) as u64);
    let Some(blocked) = blocked else {
        return Some("expected an alert after the build became blocked; it never was".into());
    };
    let jobs = alert_jobs(p);
    let alert = played
        .atc
        .builds
        .iter()
        .filter(|b| jobs.contains(&b.job.as_str()))
        .filter_map(|b| b.started)
        .filter(|t| *t >= blocked)
        .min();
    match alert {
        Some(t) if t - blocked <= within.as_secs() => None,
        Some(t) => Some(format!(
            "expected an alert within {} of the build becoming blocked; the first came after {}",
            time::format(within),
            time::format(Duration::from_secs(t - blocked))
        )),
        None => Some(format!(
            "expected an alert within {} of the build becoming blocked; none came",
            time::format(within)
        )),
    }
}

/// The counted expectations: builds, task runs, failures, refusals.
fn counts(
    x: &super::scenario::Expect,
    played: &Played,
    summary: &PlaySummary,
    out: &mut Vec<String>,
) {
    for (job, want) in &x.builds {
        let n = played
            .atc
            .builds
            .iter()
            .filter(|b| b.job == *job && b.started.is_some())
            .count() as u64;
        if !want.holds(n) {
            out.push(format!("expected {want} build(s) of {job}; it ran {n}"));
        }
    }
    for (task, want) in &x.task_runs {
        let n = played.task_runs.get(task).copied().unwrap_or(0);
        if !want.holds(n) {
            out.push(format!("expected {want} run(s) of task {task}; it ran {n}"));
        }
    }
    for (code, want) in &x.failures {
        let n = summary.failures.get(code).copied().unwrap_or(0) as u64;
        if !want.holds(n) {
            out.push(format!(
                "expected {want} failure(s) recorded at {code}; the history has {n}"
            ));
        }
    }
    if let Some(want) = &x.leaked {
        let n = played.left_behind.len() as u64;
        if !want.holds(n) {
            let what: Vec<String> = played
                .left_behind
                .iter()
                .map(|l| format!("{} {} ({}: {})", l.name, l.id, l.holding.as_str(), l.why))
                .collect();
            out.push(format!(
                "expected {want} cloud resource(s) left behind at the end; {n} were: {}",
                what.join("; ")
            ));
        }
    }
    // A refused put or heartbeat is a failure of the play unless expected.
    let refused = played.refused.len() as u64;
    let want = x
        .refused
        .clone()
        .unwrap_or(super::scenario::Count::Exactly(0));
    if !want.holds(refused) {
        let first = played
            .refused
            .first()
            .map(|r| format!(": the first: {r}"))
            .unwrap_or_default();
        out.push(format!(
            "expected {want} refused put(s) or heartbeat(s) (expect.refused); the resource refused {refused}{first}"
        ));
    }
}
