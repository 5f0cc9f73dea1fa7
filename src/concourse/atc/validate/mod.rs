//! Concourse's own rules for pipelines and task configs, as `fly
//! set-pipeline` and `fly execute` apply them (`atc/configvalidate`,
//! `atc/step_validator.go`, `atc/steps.go`, `atc/task.go`), per release:
//! known fields only (a field a release does not have, such as `no_get`
//! before 7.9, is unknown to it), names that exist, `passed` jobs that
//! touch the resource, every job in a group, task configs with a platform
//! and a command, and (beyond what set-pipeline checks, as a build would
//! fail at run time) every task input produced by an earlier step.

use super::super::Release;

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Modifiers and hooks any step may carry.
const MODIFIERS: &[&str] = &[
    "attempts",
    "timeout",
    "tags",
    "across",
    "on_success",
    "on_failure",
    "on_error",
    "on_abort",
    "ensure",
];

/// The core step kinds and the fields each takes (besides the modifiers).
const STEPS: &[(&str, &[&str])] = &[
    (
        "get",
        &["resource", "version", "params", "passed", "trigger"],
    ),
    (
        "put",
        &["resource", "params", "inputs", "get_params", "no_get"],
    ),
    (
        "task",
        &[
            "privileged",
            "hermetic",
            "file",
            "container_limits",
            "config",
            "params",
            "vars",
            "input_mapping",
            "output_mapping",
            "image",
        ],
    ),
    ("in_parallel", &[]),
    ("do", &[]),
    ("try", &[]),
    (
        "set_pipeline",
        &["file", "team", "vars", "var_files", "instance_vars"],
    ),
    ("load_var", &["file", "format", "reveal"]),
];

const JOB_FIELDS: &[&str] = &[
    "name",
    "old_name",
    "plan",
    "serial",
    "serial_groups",
    "max_in_flight",
    "build_log_retention",
    "build_logs_to_retain",
    "public",
    "disable_manual_trigger",
    "interruptible",
    "on_success",
    "on_failure",
    "on_error",
    "on_abort",
    "ensure",
];

const RESOURCE_FIELDS: &[&str] = &[
    "name",
    "old_name",
    "type",
    "source",
    "icon",
    "check_every",
    "check_timeout",
    "version",
    "webhook_token",
    "tags",
    "public",
    "expose_build_created_by",
];

const RESOURCE_TYPE_FIELDS: &[&str] = &[
    "name",
    "type",
    "source",
    "privileged",
    "params",
    "check_every",
    "tags",
    "defaults",
];

/// Resource types every Concourse worker has.
const BASE_TYPES: &[&str] = &[
    "registry-image",
    "git",
    "time",
    "s3",
    "semver",
    "docker-image",
    "github-release",
    "pool",
    "mock",
];

fn unknown(
    map: &Map<String, Value>,
    known: &[&str],
    extra: &[&str],
    at: &str,
    out: &mut Vec<String>,
) {
    for k in map.keys() {
        if !known.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
            out.push(format!("{at}: unknown field {k:?}"));
        }
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

fn duplicates(list: &[String], what: &str, out: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    for n in list {
        if !seen.insert(n) {
            out.push(format!("{what} {n:?} appears twice"));
        }
    }
}

/// Every error Concourse would give for this pipeline (empty: it is valid).
pub fn pipeline_errors(p: &Value, release: Release) -> Vec<String> {
    let mut out = Vec::new();
    let Some(top) = p.as_object() else {
        return vec!["a pipeline is a mapping".into()];
    };
    unknown(
        top,
        &[
            "resource_types",
            "resources",
            "jobs",
            "groups",
            "var_sources",
            "display",
        ],
        &[],
        "pipeline",
        &mut out,
    );
    let resources = resource_errors(p, &mut out);
    let jobs = p["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        out.push("jobs: pipeline must contain at least one job".into());
    }
    let job_names = names(&p["jobs"]);
    duplicates(&job_names, "job", &mut out);
    let touches = touches(&jobs);
    let names = steps::Names {
        resources: &resources,
        touches: &touches,
        release,
    };
    for job in &jobs {
        job_errors(job, &names, &mut out);
    }
    group_errors(p, &job_names, &mut out);
    out
}

/// The resource types' and resources' errors; the resources' names.
fn resource_errors(p: &Value, out: &mut Vec<String>) -> Vec<String> {
    let types = names(&p["resource_types"]);
    duplicates(&types, "resource type", out);
    for t in p["resource_types"].as_array().into_iter().flatten() {
        let at = format!("resource_types.{}", t["name"].as_str().unwrap_or("?"));
        let Some(map) = t.as_object() else {
            out.push(format!("{at}: a resource type is a mapping"));
            continue;
        };
        unknown(map, RESOURCE_TYPE_FIELDS, &[], &at, out);
    }
    let resources = names(&p["resources"]);
    duplicates(&resources, "resource", out);
    for r in p["resources"].as_array().into_iter().flatten() {
        let at = format!("resources.{}", r["name"].as_str().unwrap_or("?"));
        let Some(map) = r.as_object() else {
            out.push(format!("{at}: a resource is a mapping"));
            continue;
        };
        unknown(map, RESOURCE_FIELDS, &[], &at, out);
        let ty = r["type"].as_str().unwrap_or_default();
        if !types.iter().any(|t| t == ty) && !BASE_TYPES.contains(&ty) {
            out.push(format!("{at}: unknown resource type {ty:?}"));
        }
        // `CheckEvery.UnmarshalJSON` (atc/config.go): "never" or Go's
        // time.ParseDuration.
        match r.get("check_every") {
            None => {}
            Some(Value::String(s)) if s == "never" || s.is_empty() => {}
            Some(Value::String(s)) => {
                if let Err(e) = super::duration::parse(s) {
                    out.push(format!("{at}: check_every: {e}"));
                }
            }
            Some(_) => out.push(format!("{at}: check_every: non-string value provided")),
        }
    }
    resources
}

/// Which resources each job gets or puts (for `passed`).
fn touches(jobs: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    jobs.iter()
        .map(|j| {
            let mut rs = BTreeSet::new();
            visit(j, &mut |s| {
                for kind in ["get", "put"] {
                    if let Some(n) = s.get(kind).and_then(Value::as_str) {
                        rs.insert(s["resource"].as_str().unwrap_or(n).to_string());
                    }
                }
            });
            (j["name"].as_str().unwrap_or_default().to_string(), rs)
        })
        .collect()
}

fn job_errors(job: &Value, names: &steps::Names<'_>, out: &mut Vec<String>) {
    let name = job["name"].as_str().unwrap_or("?");
    let at = format!("jobs.{name}");
    let Some(map) = job.as_object() else {
        out.push(format!("{at}: a job is a mapping"));
        return;
    };
    unknown(map, JOB_FIELDS, &[], &at, out);
    if job["plan"].as_array().is_none_or(Vec::is_empty) {
        out.push(format!("{at}: no plan"));
    }
    let mut gets = BTreeSet::new();
    for (i, step) in job["plan"].as_array().into_iter().flatten().enumerate() {
        steps::step_errors(step, &format!("{at}.plan[{i}]"), names, &mut gets, out);
    }
    for hook in HOOKS {
        if let Some(h) = job.get(hook) {
            steps::step_errors(h, &format!("{at}.{hook}"), names, &mut gets, out);
        }
    }
    out.extend(steps::missing_inputs(job, &at));
}

fn group_errors(p: &Value, job_names: &[String], out: &mut Vec<String>) {
    let Some(groups) = p["groups"].as_array() else {
        return;
    };
    duplicates(&names(&p["groups"]), "group", out);
    let mut grouped = BTreeSet::new();
    for g in groups {
        for j in g["jobs"].as_array().into_iter().flatten() {
            let j = j.as_str().unwrap_or_default();
            if !job_names.iter().any(|n| n == j) {
                out.push(format!("group {:?} has unknown job {j:?}", g["name"]));
            }
            grouped.insert(j.to_string());
        }
    }
    for j in job_names {
        if !grouped.contains(j) {
            out.push(format!("job {j:?} belongs to no group"));
        }
    }
}

/// The hooks a step or a job may carry.
const HOOKS: [&str; 5] = ["on_success", "on_failure", "on_error", "on_abort", "ensure"];

/// Calls `f` on every step of a job (plan and hooks, nested).
pub fn visit(step: &Value, f: &mut impl FnMut(&Value)) {
    match step {
        Value::Array(items) => items.iter().for_each(|s| visit(s, f)),
        Value::Object(m) => {
            if m.contains_key("get") || m.contains_key("put") || m.contains_key("task") {
                f(step);
            }
            for key in [
                "in_parallel",
                "do",
                "try",
                "on_success",
                "on_failure",
                "on_error",
                "on_abort",
                "ensure",
                "steps",
                "plan",
            ] {
                if let Some(v) = m.get(key) {
                    visit(v, f);
                }
            }
        }
        _ => {}
    }
}

mod steps;
pub use steps::task_errors;

#[cfg(test)]
mod tests;
