//! The wiring of a pipeline of build-state resources, checked before
//! anything is played: every stage recorded by some job, every gate
//! openable, each job recording the stage it starts, no job that triggers
//! itself, gated gets in serial jobs, a timeout on every stage a job starts
//! (so that a lost outcome put cannot stall it), no put to a gate, and
//! `finish` only where the release gives `BUILD_STATUS`.

use super::Release;
use super::config::{Job, Pipeline};
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
    let mut out = Vec::new();
    let Some(state) = p
        .resources
        .iter()
        .find(|r| r.build_state && r.source.get("gate").is_none())
    else {
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
    let ladder = &config.ladder;
    let mut recorded = BTreeSet::new();
    let mut reopened = BTreeSet::new();
    for job in &p.jobs {
        let (starts, outcomes) = stages(p, job);
        recorded.extend(outcomes.iter().copied());
        for put in job.puts() {
            for a in ["retry", "set"] {
                if let Some(n) = code(&put.params, a) {
                    reopened.insert(n);
                }
            }
            if let Some(r) = p.resource(&put.resource)
                && r.build_state
                && r.source.get("gate").is_some()
            {
                out.push(format!(
                    "job {}: puts to {}, a gated resource: the put is refused (put to {}, the ungated one)",
                    job.name, r.name, state.name
                ));
            }
            // A handoff to a resource the ATC would answer 404 or 401: the
            // stage would wait for its periodic check instead.
            let token = p
                .resource(&put.resource)
                .and_then(|r| r.source.get("webhook_token"))
                .and_then(Value::as_str);
            for name in put.params["check"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                let said = format!("job {}: checks {name}", job.name);
                if out.iter().any(|o| o.starts_with(&said)) {
                    continue;
                }
                match (p.resource(name), token) {
                    (None, _) => out.push(format!(
                        "{said}, which the pipeline lacks: the webhook is answered 404"
                    )),
                    (Some(_), None) => out.push(format!(
                        "{said}, but {}'s source has no webhook_token: the webhook is not posted",
                        put.resource
                    )),
                    (Some(r), Some(t)) if r.webhook_token.as_deref() != Some(t) => {
                        out.push(format!(
                            "{said}, whose webhook_token is not {}'s: the webhook is answered 401",
                            put.resource
                        ))
                    }
                    _ => {}
                }
            }
            let said = format!("job {}: finish needs", job.name);
            if put.params.get("finish").is_some()
                && !release.has_build_status()
                && !out.iter().any(|o| o.starts_with(&said))
            {
                out.push(format!(
                    "job {}: finish needs BUILD_STATUS, which Concourse gives puts in hooks since 8.2 (this is {release}): record the outcome with complete and fail hooks",
                    job.name
                ));
            }
        }
        if !starts.is_empty() {
            for m in outcomes.difference(&starts) {
                out.push(format!(
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
            if config.retry.for_state(*n).timeout.is_none() {
                out.push(format!(
                    "stage {}: job {} starts it, and it has no timeout (retry.states): if the put of its outcome errors (the store or the resource image unreachable), it stays in_progress and nothing triggers it again",
                    ladder.label(*n),
                    job.name
                ));
            }
        }
        let puts_to: BTreeSet<&str> = job.puts().iter().map(|p| p.resource.as_str()).collect();
        for g in job.gets() {
            // With `passed`, its own puts are no candidates.
            if g.trigger && g.passed.is_empty() && puts_to.contains(g.resource.as_str()) {
                out.push(format!(
                    "job {}: triggers itself: it gets {} with trigger: true and puts to it (every put is a new version)",
                    job.name, g.resource
                ));
            }
            // A stage's gate (`{state: N}`); an alert's gate may run twice.
            let gated = p.resource(&g.resource).is_some_and(|r| {
                r.build_state
                    && r.source
                        .get("gate")
                        .is_some_and(|g| g.get("state").is_some())
            });
            if gated && g.trigger && job.in_flight_limit() != Some(1) {
                out.push(format!(
                    "job {}: gets the gate {} without serial: true: once a timeout opens the gate again, a second build can run the stage beside the first",
                    job.name, g.resource
                ));
            }
        }
    }
    // A put of a whole document (`file:`) records what its task decided
    // (the single-job pipeline): the task, not the wiring, names stages.
    let by_documents = p
        .jobs
        .iter()
        .any(|j| j.puts().iter().any(|put| put.params.get("file").is_some()));
    for step in ladder.steps() {
        let c = step.code;
        if by_documents || c == ladder.final_code() || recorded.contains(&c) {
            continue;
        }
        out.push(format!(
            "stage {}: no job records it (no put with complete: {c} or finish: {c}): a build that reaches it stays there",
            ladder.label(c)
        ));
    }
    for r in p.resources.iter().filter(|r| r.build_state) {
        let Some(gate) = r.source.get("gate") else {
            continue;
        };
        if !p
            .jobs
            .iter()
            .any(|j| j.gets().iter().any(|g| g.resource == r.name))
        {
            out.push(format!("resource {}: a gate no job gets", r.name));
            continue;
        }
        let Some(cfg) = config_of(&r.source) else {
            continue;
        };
        let Some(cond) = cfg.gate else { continue };
        if let At::State(n) = cond.at
            && cond.status.is_none()
        {
            let before = ladder
                .steps()
                .iter()
                .take_while(|s| s.code != n)
                .last()
                .map(|s| s.code);
            let resumed = (0..=100).any(|c| config.retry.for_state(c).resume_from == Some(n));
            let opens = n == ladder.initial()
                || before.is_some_and(|b| recorded.contains(&b))
                || resumed
                || reopened.contains(&n);
            if !opens {
                out.push(format!(
                    "resource {}: a gate no job can open ({gate}): nothing records the stage before {}",
                    r.name,
                    ladder.label(n)
                ));
            }
        }
    }
    out
}
