//! build-state's side of a simulation: the resource's steps ([`Steps`]:
//! in memory with the resource's own functions, [`memory::InMemory`], or
//! elsewhere: the tests run the packaged programs through it), the task
//! stand-ins and their heartbeats (`tasks.rs`), the scenario's humans and
//! events, the stop rule and the invariants (`stand::Play`), what must
//! hold ([`report`]), the wiring check ([`wiring`]) and the fault sweep
//! ([`faults`]). The ATC ([`super::atc`]) meets it at its `Worker` and
//! `Observer` traits, which `stand::Play` implements.

mod documents;
pub mod faults;
pub mod memory;
pub mod report;
pub mod scenario;
pub mod stand;
mod tasks;
#[cfg(test)]
mod tests;
pub mod wiring;

use super::Release;
use super::atc::pipeline::{Pipeline, Resource, TaskStep};
use super::atc::{Artifacts, BuildStatus, Handed, Settings, StepError};
use crate::model::{Document, Timestamp};
use crate::protocol::BuildEnv;
pub use report::{PlaySummary, Report};
use scenario::Scenario;
use std::collections::BTreeMap;
use std::rc::Rc;

/// The resource steps of build-state resources, and tasks run for real:
/// in memory ([`memory::InMemory`]) or through the packaged programs (the
/// project's end-to-end tests).
#[allow(async_fn_in_trait)]
pub trait Steps {
    /// `check` from `from` (the resource's newest version, if any).
    async fn check(
        &self,
        resource: &Resource,
        from: Option<&serde_json::Value>,
        now: Timestamp,
    ) -> Result<Vec<serde_json::Value>, StepError>;

    /// `in` of `version`: the files it writes.
    async fn get(
        &self,
        resource: &Resource,
        version: &serde_json::Value,
        params: &serde_json::Value,
        now: Timestamp,
    ) -> Result<Artifacts, StepError>;

    /// `out` with `params`, the build's `env`, and the artifacts it sees:
    /// the version it answers, and what it said on stderr.
    async fn put(
        &self,
        resource: &Resource,
        params: &serde_json::Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Artifacts>,
        now: Timestamp,
    ) -> Result<(serde_json::Value, Vec<String>), StepError>;

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
    ) -> Result<String, StepError> {
        Err(StepError::Refused(
            "heartbeats are not played by these steps".into(),
        ))
    }

    /// `build-state created BUILD_ID N NAME=ID...` from inside a task, for
    /// `claim`'s attempt: what it said, or why it was refused.
    async fn created(
        &self,
        _resource: &Resource,
        _claim: crate::model::Claim,
        _resources: BTreeMap<String, String>,
    ) -> Result<String, StepError> {
        Err(StepError::Refused(
            "recording resources is not played by these steps".into(),
        ))
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
        _artifacts: &BTreeMap<String, Artifacts>,
    ) -> Option<(BuildStatus, BTreeMap<String, Artifacts>, String)> {
        None
    }
}

/// Why a simulation could not be played.
#[derive(Debug, thiserror::Error)]
pub enum Unplayable {
    /// The pipeline has no ungated build-state resource.
    #[error("the pipeline has no ungated build-state resource (the one every put goes to)")]
    NoStateResource,
    /// The scenario names what the pipeline lacks.
    #[error("{0}")]
    Scenario(String),
    /// The scenario needs what these steps cannot do.
    #[error("{0}")]
    Steps(String),
    /// The runtime could not start.
    #[error("cannot start the simulation: {0}")]
    Runtime(String),
}

/// The moment every simulation starts at.
pub(crate) fn t0() -> Timestamp {
    "2026-12-01T08:00:00Z".parse().expect("a valid time")
}

/// Simulates `pipeline` (named `name`) on `release` under `scenario`, with
/// `steps` running the resource; checks the wiring and the expectations.
pub fn simulate<S: Steps + 'static>(
    pipeline: &Pipeline,
    name: &str,
    release: Release,
    scenario: &Scenario,
    steps: Rc<S>,
) -> Result<Report, Unplayable> {
    scenario
        .check_names(pipeline)
        .map_err(Unplayable::Scenario)?;
    let wiring = wiring::problems(pipeline, release);
    let settings = Settings {
        release,
        pipeline: name.to_string(),
        t0: t0(),
        rerun_when_worker_disappears: scenario.atc.rerun_when_worker_disappears,
    };
    let played = stand::play(pipeline, steps, settings, &with_init(pipeline, scenario))?;
    Ok(Report::new(
        pipeline, name, release, scenario, wiring, played,
    ))
}

/// `scenario`, with a human's `init` at the start when no job of the
/// pipeline creates the build and the scenario does not either (as the
/// single-job pipeline says: `build-state init` starts a build).
fn with_init(pipeline: &Pipeline, scenario: &Scenario) -> Scenario {
    let inits = |params: &serde_json::Value| params.get("init").is_some();
    let by_job = pipeline
        .jobs
        .iter()
        .any(|j| j.puts().iter().any(|p| inits(&p.params)));
    let by_event = scenario
        .events
        .iter()
        .any(|e| matches!(&e.what, scenario::Happening::Put { params, .. } if inits(params)));
    let mut s = scenario.clone();
    if !by_job && !by_event {
        s.events.insert(
            0,
            scenario::ScenarioEvent {
                at: std::time::Duration::ZERO,
                what: scenario::Happening::Put {
                    params: serde_json::json!({"init": true}),
                    resource: None,
                },
            },
        );
    }
    s
}
