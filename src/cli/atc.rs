//! Where a human's `--check` goes: the ATC a terminal names. Inside a
//! Concourse build the pipeline comes from `ATC_EXTERNAL_URL`,
//! `BUILD_TEAM_NAME` and `BUILD_PIPELINE_NAME`; at a terminal (or in a
//! task, which Concourse gives no build metadata) from `--atc-url`,
//! `--team` and `--pipeline`, or a `fly` target (`--fly-target NAME`: its
//! `api` and `team` from `~/.flyrc`, as fly keeps them), with
//! `--instance-var` for an instanced pipeline. The token is the source's
//! `webhook_token`, or `--webhook-token` (`BUILD_STATE_WEBHOOK_TOKEN`).

use crate::protocol::{BuildEnv, Secret};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct AtcArgs {
    /// The ATC a --check goes to (its external URL)
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) atc_url: Option<String>,
    /// The team of the pipeline a --check goes to
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) team: Option<String>,
    /// A fly target (~/.flyrc) whose api and team a --check goes to
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) fly_target: Option<String>,
    /// An instance var of the pipeline a --check goes to, as fly's -i
    /// (KEY=VALUE, the value YAML; repeatable)
    #[arg(long = "instance-var", global = true, value_name = "KEY=VALUE")]
    pub(crate) instance_vars: Vec<String>,
    /// The gates' webhook token (else the source's webhook_token)
    #[arg(
        long,
        global = true,
        env = "BUILD_STATE_WEBHOOK_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) webhook_token: Option<String>,
}

impl AtcArgs {
    /// The pipeline a `--check` goes to: `env` (a build's), with what the
    /// flags and the fly target name; `pipeline` is `--pipeline NAME`.
    pub(crate) fn target(&self, mut env: BuildEnv, pipeline: Option<&str>) -> Result<BuildEnv> {
        if let Some(name) = &self.fly_target {
            let (api, team) = fly_target(name)?;
            env.external_url = Some(api);
            env.team = Some(team);
        }
        if let Some(url) = self.atc_url.as_deref().filter(|u| !u.is_empty()) {
            env.external_url = Some(url.trim_end_matches('/').to_string());
        }
        if let Some(team) = self.team.as_deref().filter(|t| !t.is_empty()) {
            env.team = Some(team.to_string());
        }
        if let Some(p) = pipeline.filter(|p| !p.is_empty()) {
            env.pipeline = Some(p.to_string());
        }
        if !self.instance_vars.is_empty() {
            let mut vars = Map::new();
            for kv in &self.instance_vars {
                let (k, v) = kv
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| anyhow!("--instance-var {kv:?}: give KEY=VALUE"))?;
                let value: Value = crate::pipeline::parse_yaml(v)
                    .map_err(|e| anyhow!("--instance-var {k}: {e:#}"))?;
                vars.insert(k.to_string(), value);
            }
            env.instance_vars = Some(Value::Object(vars).to_string());
        }
        Ok(env)
    }

    /// `--webhook-token`, when given.
    pub(crate) fn token(&self) -> Option<Secret> {
        self.webhook_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| Secret::new(t.to_string()))
    }
}

/// `~/.flyrc`, as fly keeps it.
fn flyrc() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("--fly-target: HOME is not set"))?;
    Ok(PathBuf::from(home).join(".flyrc"))
}

/// The `api` and `team` of fly target `name`.
fn fly_target(name: &str) -> Result<(String, String)> {
    let path = flyrc()?;
    let size = std::fs::metadata(&path)
        .with_context(|| format!("--fly-target {name}: reading {}", path.display()))?
        .len();
    if size > 1 << 20 {
        bail!(
            "--fly-target {name}: {} is {size} bytes, more than fly writes",
            path.display()
        );
    }
    let text = crate::pipeline::read_text(&path)
        .with_context(|| format!("--fly-target {name}: reading {}", path.display()))?;
    let rc: Value = crate::pipeline::parse_yaml(&text)
        .with_context(|| format!("--fly-target {name}: {} is not fly's YAML", path.display()))?;
    let targets = rc["targets"].as_object();
    let Some(target) = targets.and_then(|t| t.get(name)) else {
        let known: Vec<&str> = targets
            .map(|t| t.keys().map(String::as_str).collect())
            .unwrap_or_default();
        bail!(
            "--fly-target {name}: no such target in {} (it has: {}); fly -t {name} login makes it",
            path.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let api = target["api"]
        .as_str()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "--fly-target {name}: the target has no api in {}",
                path.display()
            )
        })?;
    let team = target["team"].as_str().unwrap_or("main");
    Ok((api.trim_end_matches('/').to_string(), team.to_string()))
}
