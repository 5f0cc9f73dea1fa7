//! Concourse's own rules for pipelines and task configs, as `fly
//! set-pipeline` and `fly execute` apply them (`atc/configvalidate`,
//! `atc/step_validator.go`, `atc/steps.go`, `atc/task.go`), per release:
//! known fields only (a field a release does not have, such as `no_get`
//! before 7.9, is unknown to it), names that exist, `passed` jobs that
//! touch the resource, every job in a group, task configs with a platform
//! and a command, and (beyond what set-pipeline checks, as a build would
//! fail at run time) every task input produced by an earlier step.

use super::Release;

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
    let types = names(&p["resource_types"]);
    duplicates(&types, "resource type", &mut out);
    for t in p["resource_types"].as_array().into_iter().flatten() {
        let at = format!("resource_types.{}", t["name"].as_str().unwrap_or("?"));
        unknown(
            t.as_object().unwrap(),
            RESOURCE_TYPE_FIELDS,
            &[],
            &at,
            &mut out,
        );
    }
    let resources = names(&p["resources"]);
    duplicates(&resources, "resource", &mut out);
    for r in p["resources"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or("?");
        let at = format!("resources.{name}");
        unknown(r.as_object().unwrap(), RESOURCE_FIELDS, &[], &at, &mut out);
        let ty = r["type"].as_str().unwrap_or_default();
        if !types.iter().any(|t| t == ty) && !BASE_TYPES.contains(&ty) {
            out.push(format!("{at}: unknown resource type {ty:?}"));
        }
    }
    let jobs = p["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        out.push("jobs: pipeline must contain at least one job".into());
    }
    let job_names = names(&p["jobs"]);
    duplicates(&job_names, "job", &mut out);
    // Which resources each job gets or puts (for `passed`).
    let touches: BTreeMap<String, BTreeSet<String>> = jobs
        .iter()
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
        .collect();
    for job in &jobs {
        let name = job["name"].as_str().unwrap_or("?");
        let at = format!("jobs.{name}");
        unknown(job.as_object().unwrap(), JOB_FIELDS, &[], &at, &mut out);
        if job["plan"].as_array().is_none_or(Vec::is_empty) {
            out.push(format!("{at}: no plan"));
        }
        let mut gets = BTreeSet::new();
        for (i, step) in job["plan"].as_array().into_iter().flatten().enumerate() {
            step_errors(
                step,
                &format!("{at}.plan[{i}]"),
                &Names {
                    resources: &resources,
                    touches: &touches,
                    release,
                },
                &mut gets,
                &mut out,
            );
        }
        for hook in ["on_success", "on_failure", "on_error", "on_abort", "ensure"] {
            if let Some(h) = job.get(hook) {
                step_errors(
                    h,
                    &format!("{at}.{hook}"),
                    &Names {
                        resources: &resources,
                        touches: &touches,
                        release,
                    },
                    &mut gets,
                    &mut out,
                );
            }
        }
        out.extend(missing_inputs(job, &at));
    }
    if let Some(groups) = p["groups"].as_array() {
        let group_names = names(&p["groups"]);
        duplicates(&group_names, "group", &mut out);
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
        for j in &job_names {
            if !grouped.contains(j) {
                out.push(format!("job {j:?} belongs to no group"));
            }
        }
    }
    out
}

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

/// What a step is checked against.
struct Names<'a> {
    resources: &'a [String],
    touches: &'a BTreeMap<String, BTreeSet<String>>,
    release: Release,
}

fn step_errors(
    step: &Value,
    at: &str,
    names: &Names<'_>,
    gets: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let Names {
        resources,
        touches,
        release,
    } = names;
    let Some(map) = step.as_object() else {
        out.push(format!("{at}: a step is a mapping"));
        return;
    };
    let kinds: Vec<&(&str, &[&str])> = STEPS.iter().filter(|(k, _)| map.contains_key(*k)).collect();
    let [(kind, fields)] = kinds.as_slice() else {
        out.push(format!(
            "{at}: a step has exactly one of get, put, task, in_parallel, do, try, set_pipeline, load_var"
        ));
        return;
    };
    let mut known: Vec<&str> = fields.to_vec();
    known.push(kind);
    // `no_get` exists since v7.9.0 (concourse/concourse f08aa8104).
    if *kind == "put" && !release.has_no_get() {
        known.retain(|f| *f != "no_get");
    }
    unknown(map, &known, MODIFIERS, at, out);
    for hook in ["on_success", "on_failure", "on_error", "on_abort", "ensure"] {
        if let Some(h) = map.get(hook) {
            step_errors(h, &format!("{at}.{hook}"), names, gets, out);
        }
    }
    match *kind {
        "get" | "put" => {
            let name = map[*kind].as_str().unwrap_or_default();
            let resource = map.get("resource").and_then(Value::as_str).unwrap_or(name);
            if !resources.iter().any(|r| r == resource) {
                out.push(format!("{at}: unknown resource {resource:?}"));
            }
            if *kind == "get" {
                if !gets.insert(name.to_string()) {
                    out.push(format!("{at}: get {name:?}: repeated name"));
                }
                for job in map
                    .get("passed")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let job = job.as_str().unwrap_or_default();
                    match touches.get(job) {
                        None => out.push(format!("{at}: passed: no matching job(s) for {job:?}")),
                        Some(rs) if !rs.contains(resource) => out.push(format!(
                            "{at}: passed: job {job:?} does not interact with resource {resource:?}"
                        )),
                        Some(_) => {}
                    }
                }
            } else if map.contains_key("passed") || map.contains_key("trigger") {
                out.push(format!("{at}: passed and trigger belong to a get"));
            }
        }
        "task" => match (map.get("config"), map.get("file")) {
            (None, None) => out.push(format!("{at}: must specify either `file:` or `config:`")),
            (Some(_), Some(_)) => out.push(format!(
                "{at}: must specify one of `file:` or `config:`, not both"
            )),
            (Some(config), None) => out.extend(
                task_errors(config)
                    .into_iter()
                    .map(|e| format!("{at}.config: {e}")),
            ),
            (None, Some(_)) => {}
        },
        "in_parallel" => {
            let inner = &map["in_parallel"];
            let items = if inner.is_object() {
                unknown(
                    inner.as_object().unwrap(),
                    &["steps", "limit", "fail_fast"],
                    &[],
                    at,
                    out,
                );
                &inner["steps"]
            } else {
                inner
            };
            for (i, s) in items.as_array().into_iter().flatten().enumerate() {
                step_errors(s, &format!("{at}.in_parallel[{i}]"), names, gets, out);
            }
        }
        "do" => {
            for (i, s) in map["do"].as_array().into_iter().flatten().enumerate() {
                step_errors(s, &format!("{at}.do[{i}]"), names, gets, out);
            }
        }
        "try" => step_errors(&map["try"], &format!("{at}.try"), names, gets, out),
        _ => {}
    }
}

/// Every error Concourse gives for a task config (`fly execute`, or a
/// task step's `config:`).
pub fn task_errors(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(map) = config.as_object() else {
        return vec!["a task config is a mapping".into()];
    };
    unknown(
        map,
        &[
            "platform",
            "rootfs_uri",
            "image_resource",
            "container_limits",
            "params",
            "run",
            "inputs",
            "outputs",
            "caches",
        ],
        &[],
        "task",
        &mut out,
    );
    if map
        .get("platform")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        out.push("missing 'platform'".into());
    }
    match map.get("run").and_then(Value::as_object) {
        None => out.push("missing 'run'".into()),
        Some(run) => {
            unknown(run, &["path", "args", "dir", "user"], &[], "run", &mut out);
            if run
                .get("path")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push("missing path to executable to run".into());
            }
            if run.get("args").is_some_and(|a| !a.is_array()) {
                out.push("run.args must be a list".into());
            }
        }
    }
    if let Some(image) = map.get("image_resource").and_then(Value::as_object) {
        unknown(
            image,
            &["name", "type", "source", "version", "params", "tags"],
            &[],
            "image_resource",
            &mut out,
        );
    }
    if let Some(params) = map.get("params") {
        match params.as_object() {
            Some(p) => {
                for (k, v) in p {
                    if v.is_object() || v.is_array() {
                        // Concourse turns them into JSON strings: allowed.
                        continue;
                    }
                    if k.is_empty() {
                        out.push("params: an empty name".into());
                    }
                }
            }
            None => out.push("params must be a mapping".into()),
        }
    }
    for (list, fields) in [
        ("inputs", &["name", "path", "optional"][..]),
        ("outputs", &["name", "path"][..]),
        ("caches", &["path"][..]),
    ] {
        let Some(items) = map.get(list) else { continue };
        let Some(items) = items.as_array() else {
            out.push(format!("{list} must be a list"));
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            match item.as_object() {
                None => out.push(format!("{list}[{i}] must be a mapping")),
                Some(m) => {
                    unknown(m, fields, &[], &format!("{list}[{i}]"), &mut out);
                    if list != "caches"
                        && m.get("name")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                    {
                        out.push(format!(
                            "  {} in position {i} is missing a name",
                            &list[..list.len() - 1]
                        ));
                    }
                }
            }
        }
        if list != "caches" {
            duplicates(
                &names(&Value::Array(items.clone())),
                &list[..list.len() - 1],
                &mut out,
            );
        }
    }
    out
}

/// Task inputs that no earlier step of the job produces (a get, a put's
/// implicit get, a task's output): the build would error at run time.
fn missing_inputs(job: &Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut have = BTreeSet::new();
    walk_artifacts(&job["plan"], &mut have, at, &mut out);
    for hook in ["on_success", "on_failure", "on_error", "on_abort", "ensure"] {
        if let Some(h) = job.get(hook) {
            let mut have = have.clone();
            walk_artifacts(h, &mut have, &format!("{at}.{hook}"), &mut out);
        }
    }
    out
}

fn walk_artifacts(step: &Value, have: &mut BTreeSet<String>, at: &str, out: &mut Vec<String>) {
    match step {
        Value::Array(items) => items.iter().for_each(|s| walk_artifacts(s, have, at, out)),
        Value::Object(m) => {
            if let Some(inner) = m.get("in_parallel") {
                let items = inner.get("steps").unwrap_or(inner);
                walk_artifacts(items, have, at, out);
            }
            for key in ["do", "try"] {
                if let Some(inner) = m.get(key) {
                    walk_artifacts(inner, have, at, out);
                }
            }
            if let Some(name) = m.get("get").and_then(Value::as_str) {
                have.insert(name.to_string());
            }
            if let Some(name) = m.get("put").and_then(Value::as_str)
                && m.get("no_get") != Some(&Value::Bool(true))
            {
                have.insert(name.to_string());
            }
            if let Some(task) = m.get("task").and_then(Value::as_str)
                && let Some(config) = m.get("config")
            {
                let mapping = m.get("input_mapping").and_then(Value::as_object);
                for input in config["inputs"].as_array().into_iter().flatten() {
                    let name = input["name"].as_str().unwrap_or_default();
                    let from = mapping
                        .and_then(|mp| mp.get(name))
                        .and_then(Value::as_str)
                        .unwrap_or(name);
                    if input["optional"] != Value::Bool(true) && !have.contains(from) {
                        out.push(format!(
                            "{at}: task {task}: input {name:?} is produced by no earlier step"
                        ));
                    }
                }
                for output in config["outputs"].as_array().into_iter().flatten() {
                    if let Some(n) = output["name"].as_str() {
                        have.insert(n.to_string());
                    }
                }
            }
            for hook in ["on_success", "on_failure", "on_error", "on_abort", "ensure"] {
                if let Some(h) = m.get(hook) {
                    let mut after = have.clone();
                    walk_artifacts(h, &mut after, at, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_rules_catch_what_concourse_refuses() {
        let bad = serde_json::json!({
            "resources": [
                {"name": "state", "type": "build-state", "source": {}},
                {"name": "repo", "type": "git", "source": {}, "chek_every": "1m"},
            ],
            "resource_types": [{"name": "build-state", "type": "registry-image", "source": {}}],
            "jobs": [
                {"name": "a", "plan": [
                    {"get": "repo", "trigers": true},
                    {"get": "nope"},
                    {"put": "state", "no_get": true, "params": {}},
                    {"task": "t", "config": {"run": {"path": "sh"}, "inputs": [{"name": "state"}]}},
                ]},
                {"name": "b", "plan": [{"get": "repo", "passed": ["a", "c"]}, {"get": "state", "passed": ["b2"]}]},
                {"name": "b2", "plan": [{"task": "t", "config": {"platform": "linux", "run": {}}}]},
            ],
            "groups": [{"name": "g", "jobs": ["a", "b"]}],
        });
        let errors = pipeline_errors(&bad, Release::LATEST);
        for want in [
            "resources.repo: unknown field \"chek_every\"",
            "jobs.a.plan[0]: unknown field \"trigers\"",
            "jobs.a.plan[1]: unknown resource \"nope\"",
            "jobs.a.plan[3].config: missing 'platform'",
            "jobs.a: task t: input \"state\" is produced by no earlier step",
            "jobs.b.plan[0]: passed: no matching job(s) for \"c\"",
            "jobs.b.plan[1]: passed: job \"b2\" does not interact with resource \"state\"",
            "jobs.b2.plan[0].config: missing path to executable to run",
            "job \"b2\" belongs to no group",
        ] {
            assert!(
                errors.iter().any(|e| e == want),
                "{want:?} not in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 9, "{errors:#?}");
    }

    #[test]
    fn no_get_is_unknown_before_7_9() {
        let p = serde_json::json!({
            "resources": [{"name": "state", "type": "mock", "source": {}}],
            "jobs": [{"name": "a", "plan": [{"put": "state", "no_get": true}]}],
        });
        let on = |r: &str| pipeline_errors(&p, r.parse().unwrap());
        assert_eq!(on("7.8"), ["jobs.a.plan[0]: unknown field \"no_get\""]);
        assert!(on("7.9").is_empty());
        assert!(on("8.2").is_empty());
    }
}
