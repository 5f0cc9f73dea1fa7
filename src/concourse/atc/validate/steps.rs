//! The rules for steps and task configs (`atc/step_validator.go`,
//! `atc/task.go`), and the check that every task input is produced by an
//! earlier step.

use super::super::Release;
use super::{HOOKS, MODIFIERS, STEPS, duplicates, names, unknown};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What a step is checked against.
pub(super) struct Names<'a> {
    pub(super) resources: &'a [String],
    pub(super) touches: &'a BTreeMap<String, BTreeSet<String>>,
    pub(super) release: Release,
}

pub(super) fn step_errors(
    step: &Value,
    at: &str,
    names: &Names<'_>,
    gets: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
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
    if *kind == "put" && !names.release.has_no_get() {
        known.retain(|f| *f != "no_get");
    }
    unknown(map, &known, MODIFIERS, at, out);
    // A step's `timeout` is Go's time.ParseDuration (atc/exec/timeout_step.go).
    match map.get("timeout") {
        None => {}
        Some(Value::String(t)) => {
            if let Err(e) = super::super::duration::parse(t) {
                out.push(format!("{at}: timeout: {e}"));
            }
        }
        Some(_) => out.push(format!("{at}: timeout: a duration string")),
    }
    for hook in HOOKS {
        if let Some(h) = map.get(hook) {
            step_errors(h, &format!("{at}.{hook}"), names, gets, out);
        }
    }
    match *kind {
        "get" | "put" => resource_step_errors(map, kind, at, names, gets, out),
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
            let items = match inner.as_object() {
                Some(m) => {
                    unknown(m, &["steps", "limit", "fail_fast"], &[], at, out);
                    &inner["steps"]
                }
                None => inner,
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

fn resource_step_errors(
    map: &Map<String, Value>,
    kind: &str,
    at: &str,
    names: &Names<'_>,
    gets: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let name = map[kind].as_str().unwrap_or_default();
    let resource = map.get("resource").and_then(Value::as_str).unwrap_or(name);
    if !names.resources.iter().any(|r| r == resource) {
        out.push(format!("{at}: unknown resource {resource:?}"));
    }
    if kind != "get" {
        if map.contains_key("passed") || map.contains_key("trigger") {
            out.push(format!("{at}: passed and trigger belong to a get"));
        }
        return;
    }
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
        match names.touches.get(job) {
            None => out.push(format!("{at}: passed: no matching job(s) for {job:?}")),
            Some(rs) if !rs.contains(resource) => out.push(format!(
                "{at}: passed: job {job:?} does not interact with resource {resource:?}"
            )),
            Some(_) => {}
        }
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
    run_errors(map, &mut out);
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
            // Objects and lists become JSON strings: allowed.
            Some(p) if p.keys().any(String::is_empty) => out.push("params: an empty name".into()),
            Some(_) => {}
            None => out.push("params must be a mapping".into()),
        }
    }
    for (list, fields) in [
        ("inputs", &["name", "path", "optional"][..]),
        ("outputs", &["name", "path"][..]),
        ("caches", &["path"][..]),
    ] {
        if let Some(items) = map.get(list) {
            list_errors(list, fields, items, &mut out);
        }
    }
    out
}

fn run_errors(map: &Map<String, Value>, out: &mut Vec<String>) {
    let Some(run) = map.get("run").and_then(Value::as_object) else {
        out.push("missing 'run'".into());
        return;
    };
    unknown(run, &["path", "args", "dir", "user"], &[], "run", out);
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

fn list_errors(list: &str, fields: &[&str], items: &Value, out: &mut Vec<String>) {
    let Some(items) = items.as_array() else {
        out.push(format!("{list} must be a list"));
        return;
    };
    let one = &list[..list.len() - 1];
    for (i, item) in items.iter().enumerate() {
        let Some(m) = item.as_object() else {
            out.push(format!("{list}[{i}] must be a mapping"));
            continue;
        };
        unknown(m, fields, &[], &format!("{list}[{i}]"), out);
        if list != "caches"
            && m.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            out.push(format!("  {one} in position {i} is missing a name"));
        }
    }
    if list != "caches" {
        duplicates(&names(&Value::Array(items.clone())), one, out);
    }
}

/// Task inputs that no earlier step of the job produces (a get, a put's
/// implicit get, a task's output): the build would error at run time.
pub(super) fn missing_inputs(job: &Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut have = BTreeSet::new();
    walk_artifacts(&job["plan"], &mut have, at, &mut out);
    for hook in HOOKS {
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
            task_artifacts(m, have, at, out);
            for hook in HOOKS {
                if let Some(h) = m.get(hook) {
                    let mut after = have.clone();
                    walk_artifacts(h, &mut after, at, out);
                }
            }
        }
        _ => {}
    }
}

/// A task step's inputs (each produced before it?) and outputs.
fn task_artifacts(
    m: &Map<String, Value>,
    have: &mut BTreeSet<String>,
    at: &str,
    out: &mut Vec<String>,
) {
    let (Some(task), Some(config)) = (m.get("task").and_then(Value::as_str), m.get("config"))
    else {
        return;
    };
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
