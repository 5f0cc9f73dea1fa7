//! Concourse pipeline files: YAML with anchors and merge keys, `((vars))`
//! interpolated as Concourse does, and the build-state resources in them.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The largest YAML text any reader takes (pipelines, scenarios, sources,
/// vars files): far beyond a real one, before the parser sees a byte.
pub(crate) const MAX_YAML_BYTES: usize = 4 << 20;

/// The deepest nesting of `[`/`{` a YAML text may have: the parser's time
/// grows with the square of it, so it is counted before parsing.
pub(crate) const MAX_YAML_DEPTH: usize = 64;

/// Refuses a YAML text that is too large or nested too deep, before the
/// parser runs (which would take minutes on 400 KB of `[[[[`).
pub(crate) fn check_yaml_shape(text: &str) -> Result<()> {
    if text.len() > MAX_YAML_BYTES {
        bail!(
            "{} bytes, more than the {} MiB a YAML text may be",
            text.len(),
            MAX_YAML_BYTES >> 20
        );
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            // A quote ends at its line's end here: an apostrophe in a
            // comment must not hide what follows from the count.
            (Some(_), '\n') => quote = None,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_YAML_DEPTH {
        bail!("nested {deepest} deep; at most {MAX_YAML_DEPTH} levels of [ and {{ are read");
    }
    Ok(())
}

/// Reads a YAML (or JSON) file a person gives: a regular file (links
/// followed, as a shell does), of at most [`MAX_YAML_BYTES`]; never a FIFO
/// or a device, which could block or never end.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    if meta.len() > MAX_YAML_BYTES as u64 {
        bail!(
            "{} bytes, more than the {} MiB a YAML text may be",
            meta.len(),
            MAX_YAML_BYTES >> 20
        );
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_YAML_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    check_yaml_shape(&text)?;
    Ok(text)
}

/// Parses a JSON or YAML document (anchors resolved, `<<` merge keys
/// applied), once `check_yaml_shape` took it.
pub fn parse_yaml(text: &str) -> Result<Value> {
    check_yaml_shape(text)?;
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    yaml.apply_merge()?;
    Ok(serde_json::to_value(yaml)?)
}

/// Values for `((vars))`, by name: what fly's `-v KEY=VALUE` (a string)
/// and `-y KEY=YAML` (typed) give.
pub type Vars = BTreeMap<String, Value>;

/// Parses fly's `-v KEY=VALUE` (the value is a string, whatever it looks
/// like) or, with `typed`, `-y KEY=YAML`. A dotted key sets a field:
/// `-v aws.key=x` gives `((aws.key))`.
pub fn parse_var(vars: &mut Vars, arg: &str, typed: bool) -> Result<()> {
    let flag = if typed { "-y" } else { "-v" };
    let (key, text) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("{flag} {arg:?} is not KEY=VALUE"))?;
    let value = if typed {
        serde_json::to_value(
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
                .with_context(|| format!("{flag} {key}: not YAML"))?,
        )?
    } else {
        Value::String(text.to_string())
    };
    let mut path = key.trim().split('.');
    let first = path.next().unwrap_or_default().to_string();
    let mut slot = vars.entry(first).or_insert(Value::Null);
    for field in path {
        if !slot.is_object() {
            *slot = Value::Object(Default::default());
        }
        slot = slot
            .as_object_mut()
            .expect("made an object")
            .entry(field.to_string())
            .or_insert(Value::Null);
    }
    *slot = value;
    Ok(())
}

/// Loads a whole pipeline with `vars` interpolated. Every `((var))` must be
/// given.
pub fn load(path: &Path, vars: &Vars) -> Result<Value> {
    let text = read_text(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value = parse_yaml(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut missing = BTreeSet::new();
    interpolate(&mut value, vars, &mut missing);
    require_all(path, &missing)?;
    Ok(value)
}

/// Loads a whole pipeline with the `vars` given interpolated, and names the
/// ones not given (left as written, as a credential manager would fill
/// them at run time).
pub fn load_partly(path: &Path, vars: &Vars) -> Result<(Value, BTreeSet<String>)> {
    let text = read_text(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value = parse_yaml(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut missing = BTreeSet::new();
    interpolate(&mut value, vars, &mut missing);
    Ok((value, missing))
}

/// The source of the build-state resource `name` in the pipeline at
/// `path`, with `vars` interpolated: only the vars that source uses must be
/// given (a pipeline's other vars, and `((...))` in task scripts, are none
/// of its business).
pub(crate) fn load_resource_source(
    path: &Path,
    name: &str,
    vars: &Vars,
    use_: SourceUse,
) -> Result<Value> {
    let text = read_text(path).with_context(|| format!("reading {}", path.display()))?;
    let pipeline = parse_yaml(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut source = resource_source(&pipeline, name)?;
    // A command that reads no store (`states`) needs none of the store's
    // fields, nor the vars that fill them (the bucket, the credentials).
    if use_ == SourceUse::BehaviourOnly
        && let Some(m) = source.as_object_mut()
    {
        m.retain(|k, _| !STORE_FIELDS.contains(&k.as_str()));
        m.insert("local_dir".into(), Value::from("."));
    }
    // The check webhooks' token is needed only by an action with `--check`:
    // left out when its vars are not given.
    let token = source
        .as_object_mut()
        .and_then(|m| m.remove("webhook_token"));
    let mut missing = BTreeSet::new();
    interpolate(&mut source, vars, &mut missing);
    require_all(path, &missing)?;
    if let Some(mut token) = token {
        let mut unresolved = BTreeSet::new();
        interpolate(&mut token, vars, &mut unresolved);
        if unresolved.is_empty()
            && let Some(m) = source.as_object_mut()
        {
            m.insert("webhook_token".into(), token);
        }
    }
    Ok(source)
}

/// What a command takes a resource's source for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceUse {
    /// The store and the behaviour: every var must be given.
    Everything,
    /// The behaviour only (states, retry, error patterns, gate): the
    /// store's fields are left out, and the vars only they use need not be
    /// given.
    BehaviourOnly,
}

/// The fields that say where the store is and how to reach it.
const STORE_FIELDS: &[&str] = &[
    "bucket",
    "local_dir",
    "prefix",
    "build_id",
    "region_name",
    "endpoint",
    "use_path_style",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_role_arn",
    "ca_bundle",
    "server_side_encryption",
    "sse_kms_key_id",
    "enable_aws_creds_provider",
];

fn require_all(path: &Path, missing: &BTreeSet<String>) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "{} uses {} that no -v gives",
        path.display(),
        missing
            .iter()
            .map(|m| format!("(({m}))"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Concourse's var syntax (`vars/template.go`): `((name))`, `((name.field))`,
/// `((source:name))`, `(("quoted.name"))`. Anything else between double
/// parentheses, such as the shell's `$((N + 1))`, is not a var.
fn var_pattern() -> &'static regex_lite::Regex {
    static RE: std::sync::OnceLock<regex_lite::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex_lite::Regex::new(r#"\(\((([-/.\w]+:)?[-/.:@"\w]+)\)\)"#).expect("a valid pattern")
    })
}

/// The value of the var named `name` (with its fields), if given.
fn lookup<'v>(vars: &'v Vars, name: &str) -> Option<&'v Value> {
    // A var with a source (`((vault:key))`) is the credential manager's
    // business: fly's -v never gives it (`vars/static_vars.go` finds only
    // references without a source).
    if name
        .split_once(':')
        .is_some_and(|(src, _)| !src.contains('"'))
    {
        return None;
    }
    if let Some(v) = vars.get(name.trim_matches('"')) {
        return Some(v);
    }
    let mut parts = split_fields(name).into_iter();
    let mut value = vars.get(&parts.next()?)?;
    for field in parts {
        value = value.get(&field)?;
    }
    Some(value)
}

/// `a.b."c.d"` → `a`, `b`, `c.d`.
fn split_fields(name: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in name.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("never empty").push(c),
        }
    }
    out
}

/// Replaces every `((var))` in every string. A string that is exactly one
/// var takes the var's value with its type (a `-y` number stays a number, a
/// `-v` string a string); inside a longer string a var is text.
pub fn interpolate(value: &mut Value, vars: &Vars, missing: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            let re = var_pattern();
            if let Some(c) = re.captures(s)
                && c.get(0)
                    .is_some_and(|m| m.start() == 0 && m.end() == s.len())
            {
                let name = c[1].to_string();
                match lookup(vars, &name) {
                    Some(v) => *value = v.clone(),
                    None => {
                        missing.insert(name);
                    }
                }
                return;
            }
            let replaced =
                re.replace_all(s, |c: &regex_lite::Captures| match lookup(vars, &c[1]) {
                    Some(Value::String(v)) => v.clone(),
                    Some(v) => v.to_string(),
                    None => {
                        missing.insert(c[1].to_string());
                        c[0].to_string()
                    }
                });
            *s = replaced.into_owned();
        }
        Value::Array(items) => items.iter_mut().for_each(|v| interpolate(v, vars, missing)),
        Value::Object(map) => map.values_mut().for_each(|v| interpolate(v, vars, missing)),
        _ => {}
    }
}

/// The names of the resource types that are build-state: a type named
/// `build-state`, or one whose image repository ends in `build-state`.
pub(crate) fn build_state_types(pipeline: &Value) -> BTreeSet<String> {
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
pub(crate) fn resource_source(pipeline: &Value, name: &str) -> Result<Value> {
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
        let mut vars = Vars::new();
        for v in ["bucket=states", "env=prod", "build_id=rhel8-web"] {
            parse_var(&mut vars, v, false).unwrap();
        }
        parse_var(&mut vars, "stage=25", true).unwrap();
        let mut missing = BTreeSet::new();
        interpolate(&mut v, &vars, &mut missing);
        assert!(missing.is_empty());
        assert_eq!(
            resource_source(&v, "state").unwrap(),
            json!({"bucket": "states", "prefix": "builds/prod/", "build_id": "rhel8-web", "gate": {"state": 25}})
        );
        let mut v = parse_yaml("a: ((x))\nb: pre-((y))-post").unwrap();
        interpolate(&mut v, &Vars::new(), &mut missing);
        assert_eq!(missing, BTreeSet::from(["x".to_string(), "y".to_string()]));
    }

    #[test]
    fn concourse_var_syntax() {
        let mut vars = Vars::new();
        parse_var(&mut vars, "key=12345", false).unwrap();
        parse_var(&mut vars, "aws.secret=s3cr3t", false).unwrap();
        parse_var(&mut vars, "n=7", true).unwrap();
        let mut v = json!({
            "id": "((key))",
            "typed": "((n))",
            "field": "((aws.secret))",
            "script": "echo $((BUILD_STATE_ATTEMPTS + 1)) ((key))",
            "spaced": "(( key ))",
        });
        let mut missing = BTreeSet::new();
        interpolate(&mut v, &vars, &mut missing);
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            v,
            json!({
                "id": "12345",
                "typed": 7,
                "field": "s3cr3t",
                "script": "echo $((BUILD_STATE_ATTEMPTS + 1)) 12345",
                "spaced": "(( key ))",
            })
        );
        assert!(parse_var(&mut vars, "novalue", false).is_err());
        // fly -v never gives a var with a source (`vars/static_vars.go`).
        let mut v = json!({"source": "((vault:key))"});
        interpolate(&mut v, &vars, &mut missing);
        assert_eq!(missing, BTreeSet::from(["vault:key".to_string()]));
    }
}
