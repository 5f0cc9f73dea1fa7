//! A model of Concourse, for `build-state simulate` and the project's own
//! pipeline tests: a pipeline typed as Concourse reads it and validated per
//! release ([`validate`], [`config`]), and its scheduling played on virtual
//! time ([`sim`]): checks on `check_every` and webhooks, check order,
//! triggers, `passed`, serial jobs and serial groups, pending builds that
//! adopt their inputs when they start, the get cache, put outputs as
//! versions, hooks and `BUILD_*` as each release gives them. Resource steps
//! run through [`sim::Steps`]: in memory with the resource's own functions
//! ([`memory::InMemory`], what `simulate` uses), or elsewhere (the tests run
//! the real binaries over a real S3 server through it).
//!
//! Read from concourse/concourse (v7.0.0 to v8.2.4): `atc/configvalidate`,
//! `atc/step_validator.go`, `atc/scheduler` (`algorithm`, `buildstarter.go`),
//! `atc/db/versions_db.go`, `atc/exec` (`get_step.go`, `put_step.go`),
//! `atc/engine/builder.go`, `atc/lidar/check_factory.go`.

pub mod config;
pub mod memory;
pub mod scenario;
pub mod sim;
pub mod validate;
pub mod wiring;

use std::fmt;
use std::str::FromStr;

/// A Concourse release (`7.11`, `8.0`, `8.2`): what its ATC accepts and
/// does differs where this resource cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    /// The major version.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl Release {
    /// The newest release modelled.
    pub const LATEST: Release = Release { major: 8, minor: 2 };

    /// The releases the shipped pipelines are tried on: the first 7.x with
    /// `no_get`, the last 7.x, 8.0 and 8.2.
    pub const TRIED: [Release; 4] = [
        Release { major: 7, minor: 9 },
        Release {
            major: 7,
            minor: 11,
        },
        Release { major: 8, minor: 0 },
        Release { major: 8, minor: 2 },
    ];

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// `no_get` on a put: since v7.9.0 (commit f08aa8104).
    pub const fn has_no_get(self) -> bool {
        self.at_least(7, 9)
    }

    /// `BUILD_URL` in a resource's environment: since 8.0.
    pub const fn has_build_url(self) -> bool {
        self.at_least(8, 0)
    }

    /// `BUILD_STATUS` for steps inside `on_*` hooks: since 8.2
    /// (`atc/engine/builder.go`).
    pub const fn has_build_status(self) -> bool {
        self.at_least(8, 2)
    }

    /// A put's `inputs` default to `detect` (the artifacts its params name)
    /// since 8.0 (`atc/exec/put_step.go`); before, `all`.
    pub const fn detects_put_inputs(self) -> bool {
        self.at_least(8, 0)
    }

    /// Since 8.2 only resources some job triggers on are checked on their
    /// `check_every` (`atc/lidar/check_factory.go`); the others are checked
    /// when a build needs them.
    pub const fn checks_only_triggers(self) -> bool {
        self.at_least(8, 2)
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for Release {
    type Err = String;

    fn from_str(s: &str) -> Result<Release, String> {
        let bad = || format!("{s:?} is not a Concourse release (such as 7.11, 8.0 or 8.2)");
        let mut parts = s.trim().trim_start_matches('v').split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: u32 = parts.next().unwrap_or("0").parse().map_err(|_| bad())?;
        if parts.next().is_some_and(|p| p.parse::<u32>().is_err()) {
            return Err(bad());
        }
        if !(7..=8).contains(&major) {
            return Err(format!(
                "release {s}: the model knows Concourse 7.x and 8.x"
            ));
        }
        Ok(Release { major, minor })
    }
}

use config::Pipeline;
use scenario::Scenario;
use serde::Serialize;
use serde_json::Value;
use sim::{Played, Steps};
use std::collections::BTreeMap;
use std::rc::Rc;

/// The storage fields of a build-state source, replaced by the in-memory
/// store when a pipeline is simulated.
pub const STORAGE_FIELDS: [&str; 12] = [
    "bucket",
    "local_dir",
    "endpoint",
    "region_name",
    "use_path_style",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_role_arn",
    "ca_bundle",
    "enable_aws_creds_provider",
    "sse_kms_key_id",
];

/// Replaces the storage of every build-state resource of an interpolated
/// pipeline with `storage` (the fields of a source that say where the
/// documents are), keeping their behaviour settings.
pub fn replace_storage(pipeline: &mut Value, storage: &serde_json::Map<String, Value>) {
    let types = crate::pipeline::build_state_types(pipeline);
    for r in pipeline["resources"].as_array_mut().into_iter().flatten() {
        if !r["type"].as_str().is_some_and(|t| types.contains(t)) {
            continue;
        }
        let Some(src) = r.get_mut("source").and_then(Value::as_object_mut) else {
            continue;
        };
        for f in STORAGE_FIELDS {
            src.remove(f);
        }
        src.remove("server_side_encryption");
        for (k, v) in storage {
            src.insert(k.clone(), v.clone());
        }
    }
}

/// What a simulation found, for people and for `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The pipeline's name.
    pub pipeline: String,
    /// The release modelled.
    pub release: String,
    /// The scenario's description.
    pub scenario: String,
    /// Wiring problems (any of them fails the simulation).
    pub wiring: Vec<String>,
    /// Expectations that did not hold, and invariants broken.
    pub failures: Vec<String>,
    /// The summary.
    pub summary: Summary,
    /// What happened.
    pub played: Played,
}

impl Report {
    /// Whether the wiring is right and every expectation held.
    pub fn passed(&self) -> bool {
        self.wiring.is_empty() && self.failures.is_empty()
    }
}

/// The summary of a simulation.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The build was delivered.
    pub delivered: bool,
    /// When (seconds since the start).
    pub delivered_at: Option<u64>,
    /// Seconds simulated.
    pub elapsed: u64,
    /// The build's state, status and run at the end.
    pub end: Option<String>,
    /// Attempts started per stage (the current run).
    pub attempts: BTreeMap<u32, u32>,
    /// Failures recorded per stage (the current run).
    pub failures: BTreeMap<u32, u32>,
    /// Builds of the alert jobs (jobs triggered by a gate on a status).
    pub alerts: u64,
    /// Handoffs, in seconds: from each stage becoming due (pending, or its
    /// retry due) to its `start` landing; what checks and scheduling add
    /// to a build.
    pub handoffs: Vec<f64>,
    /// Check webhooks the ATC took.
    pub webhooks: u64,
    /// Checks of build-state resources (each at least one S3 request).
    pub checks: u64,
    /// Why the simulation stopped.
    pub stopped: String,
}

/// The handoffs of a run's history: for each `start` that follows the
/// event that made its stage due (at that stage: pending, or failed with
/// its retry due), the seconds between them.
pub fn handoffs(doc: &crate::model::Document) -> Vec<f64> {
    use crate::model::{ActionKind, Status};
    doc.history
        .windows(2)
        .filter_map(|w| {
            let (before, start) = (&w[0], &w[1]);
            if start.action != ActionKind::Start || before.state != start.state {
                return None;
            }
            let due = match before.status {
                Status::Pending => before.at,
                Status::Failed => before.retry_at.map_or(before.at, |t| t.max(before.at)),
                _ => return None,
            };
            Some((start.at - due).num_milliseconds().max(0) as f64 / 1000.0)
        })
        .collect()
}

/// Simulates `pipeline` (named `name`) on `release` under `scenario`, with
/// `steps` running the resource; checks the wiring and the expectations.
pub fn simulate<S: Steps + 'static>(
    pipeline: &Pipeline,
    name: &str,
    release: Release,
    scenario: &Scenario,
    steps: Rc<S>,
) -> Result<Report, String> {
    let wiring = wiring::problems(pipeline, release);
    let opts = sim::Options {
        release,
        pipeline: name.to_string(),
        t0: "2026-12-01T08:00:00Z".parse().expect("a valid time"),
    };
    let played = sim::play(pipeline, steps, &opts, scenario)?;
    let summary = summarize(pipeline, &played);
    let failures = expectations(scenario, &played, &summary);
    Ok(Report {
        pipeline: name.to_string(),
        release: release.to_string(),
        scenario: scenario.description.clone(),
        wiring,
        failures,
        summary,
        played,
    })
}

fn summarize(p: &Pipeline, played: &Played) -> Summary {
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
    let alert_jobs: Vec<&str> = p
        .jobs
        .iter()
        .filter(|j| {
            j.gets().iter().any(|g| {
                g.trigger
                    && p.resource(&g.resource)
                        .is_some_and(|r| r.build_state && r.source["gate"].get("status").is_some())
            })
        })
        .map(|j| j.name.as_str())
        .collect();
    Summary {
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
        alerts: played
            .builds
            .iter()
            .filter(|b| alert_jobs.contains(&b.job.as_str()) && b.started.is_some())
            .count() as u64,
        handoffs: played.document.as_ref().map(handoffs).unwrap_or_default(),
        webhooks: played.webhooks,
        checks: played.checks,
        stopped: played.stopped.clone(),
    }
}

fn expectations(s: &Scenario, played: &Played, summary: &Summary) -> Vec<String> {
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
    if let Some(within) = x.within {
        let limit = within.as_secs();
        if summary.delivered_at.is_none_or(|t| t > limit) {
            out.push(format!(
                "expected delivery within {}; {}",
                duration::format(within),
                summary
                    .delivered_at
                    .map_or("never delivered".to_string(), |t| format!(
                        "delivered after {}",
                        duration::format(std::time::Duration::from_secs(t))
                    ))
            ));
        }
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
    for (job, want) in &x.builds {
        let n = played
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
    out
}

use crate::model::duration;
