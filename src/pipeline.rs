//! Concourse pipeline files: YAML with anchors and merge keys, `((vars))`
//! interpolated as Concourse does, and the build-state resources in them.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Parses a JSON or YAML document (anchors resolved, `<<` merge keys applied).
pub fn parse_yaml(text: &str) -> Result<Value> {
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    yaml.apply_merge()?;
    Ok(serde_json::to_value(yaml)?)
}

/// Loads a pipeline with `vars` interpolated. Every `((var))` must be given.
pub fn load(path: &Path, vars: &BTreeMap<String, String>) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value = parse_yaml(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut missing = BTreeSet::new();
    interpolate(&mut value, vars, &mut missing);
    if !missing.is_empty() {
        bail!(
            "{} uses {} that no -v gives",
            path.display(),
            missing
                .iter()
                .map(|m| format!("(({m}))"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(value)
}

/// Replaces `((name))` in every string. A string that is exactly one var
/// takes the var's value as a YAML scalar (`25` a number, `true` a bool), as
/// Concourse keeps a var's type; inside longer strings it is text.
pub fn interpolate(
    value: &mut Value,
    vars: &BTreeMap<String, String>,
    missing: &mut BTreeSet<String>,
) {
    match value {
        Value::String(s) => {
            if let Some(name) = whole_var(s) {
                match vars.get(name) {
                    Some(v) => {
                        *value = serde_yaml_ng::from_str::<Value>(v)
                            .ok()
                            .filter(|v| !v.is_object() && !v.is_array() && !v.is_null())
                            .unwrap_or_else(|| Value::String(v.clone()));
                    }
                    None => {
                        missing.insert(name.to_string());
                    }
                }
                return;
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("((") {
                let Some(len) = rest[start..].find("))") else {
                    break;
                };
                let name = rest[start + 2..start + len].trim();
                out.push_str(&rest[..start]);
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        missing.insert(name.to_string());
                        out.push_str(&rest[start..start + len + 2]);
                    }
                }
                rest = &rest[start + len + 2..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => items.iter_mut().for_each(|v| interpolate(v, vars, missing)),
        Value::Object(map) => map.values_mut().for_each(|v| interpolate(v, vars, missing)),
        _ => {}
    }
}

fn whole_var(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("((")?.strip_suffix("))")?;
    (!inner.contains("((") && !inner.contains("))")).then(|| inner.trim())
}

/// The names of the resource types that are build-state: a type named
/// `build-state`, or one whose image repository ends in `build-state`.
pub fn build_state_types(pipeline: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::from(["build-state".to_string()]);
    for t in pipeline["resource_types"].as_array().into_iter().flatten() {
        let repo = t["source"]["repository"].as_str().unwrap_or_default();
        if repo.trim_end_matches('/').ends_with("build-state")
            && let Some(name) = t["name"].as_str()
        {
            out.insert(name.to_string());
        }
    }
    out
}

/// Every build-state resource: (name, source).
pub fn build_state_resources(pipeline: &Value) -> Vec<(String, Value)> {
    let types = build_state_types(pipeline);
    pipeline["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["type"].as_str().is_some_and(|t| types.contains(t)))
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r.get("source").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// The source of the named build-state resource.
pub fn resource_source(pipeline: &Value, name: &str) -> Result<Value> {
    let all = build_state_resources(pipeline);
    all.iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.clone())
        .ok_or_else(|| {
            anyhow!(
                "the pipeline has no build-state resource named {name:?} (it has: {})",
                all.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anchors_merges_and_vars() {
        let text = r#"
base: &base {bucket: ((bucket)), prefix: "builds/((env))/"}
resources:
- name: state
  type: build-state
  source:
    <<: *base
    build_id: ((build_id))
    gate: {state: ((stage))}
"#;
        let mut v = parse_yaml(text).unwrap();
        let vars = BTreeMap::from([
            ("bucket".to_string(), "states".to_string()),
            ("env".to_string(), "prod".to_string()),
            ("build_id".to_string(), "rhel8-web".to_string()),
            ("stage".to_string(), "25".to_string()),
        ]);
        let mut missing = BTreeSet::new();
        interpolate(&mut v, &vars, &mut missing);
        assert!(missing.is_empty());
        assert_eq!(
            resource_source(&v, "state").unwrap(),
            json!({"bucket": "states", "prefix": "builds/prod/", "build_id": "rhel8-web", "gate": {"state": 25}})
        );
        let mut v = parse_yaml("a: ((x))\nb: pre-((y))-post").unwrap();
        interpolate(&mut v, &BTreeMap::new(), &mut missing);
        assert_eq!(missing, BTreeSet::from(["x".to_string(), "y".to_string()]));
    }
}
