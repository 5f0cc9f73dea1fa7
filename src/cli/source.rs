//! Where the CLI's source block comes from: a file, a pipeline's resource,
//! `BUILD_STATE_*` variables and flags (later ones win), all parsed by the
//! resource's own source type.

use crate::app::recorded_policy;
use crate::config::{Config, Settings, Storage};
use crate::pipeline;
use crate::protocol::{Source, parse};
use crate::resource::configure;
use crate::store::AnyStore;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SourceArgs {
    /// The resource's source block, as JSON or YAML
    #[arg(
        long = "source",
        global = true,
        env = "BUILD_STATE_SOURCE",
        value_name = "FILE"
    )]
    pub(crate) source_file: Option<PathBuf>,
    /// Take the source from a pipeline file (with --resource); without
    /// --resource, the Concourse pipeline a --check goes to
    #[arg(long, global = true, value_name = "FILE|NAME")]
    pub(crate) pipeline: Option<PathBuf>,
    /// The build-state resource in --pipeline
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) resource: Option<String>,
    /// A ((var)) of --pipeline, as fly's -v: the value is a string (repeatable)
    #[arg(short = 'v', long = "var", global = true, value_name = "KEY=VALUE")]
    pub(crate) vars: Vec<String>,
    /// A ((var)) of --pipeline, as fly's -y: the value is YAML (repeatable)
    #[arg(short = 'y', long = "yaml-var", global = true, value_name = "KEY=YAML")]
    pub(crate) yaml_vars: Vec<String>,
    /// S3 bucket
    #[arg(long, global = true, env = "BUILD_STATE_BUCKET")]
    pub(crate) bucket: Option<String>,
    /// A local directory instead of S3
    #[arg(long, global = true, env = "BUILD_STATE_LOCAL_DIR")]
    pub(crate) local_dir: Option<String>,
    /// Key prefix
    #[arg(long, global = true, env = "BUILD_STATE_PREFIX")]
    pub(crate) prefix: Option<String>,
    /// AWS region
    #[arg(long, global = true, env = "BUILD_STATE_REGION")]
    pub(crate) region: Option<String>,
    /// S3 endpoint (S3-compatible servers)
    #[arg(long, global = true, env = "BUILD_STATE_ENDPOINT")]
    pub(crate) endpoint: Option<String>,
    /// Path-style addressing
    #[arg(long, global = true, env = "BUILD_STATE_USE_PATH_STYLE")]
    pub(crate) use_path_style: Option<bool>,
    /// A role to assume
    #[arg(long, global = true, env = "BUILD_STATE_ROLE_ARN")]
    pub(crate) role_arn: Option<String>,
    /// An access key of the CLI's own (with BUILD_STATE_SECRET_ACCESS_KEY),
    /// instead of the AWS credential chain: a task that runs Packer with
    /// one key sends heartbeats with another, which can only read and
    /// write the state prefix
    #[arg(
        long,
        global = true,
        env = "BUILD_STATE_ACCESS_KEY_ID",
        value_name = "ID"
    )]
    pub(crate) access_key_id: Option<String>,
    /// Its secret: from the environment only, never a flag (a flag shows
    /// in the process list)
    #[arg(skip = std::env::var("BUILD_STATE_SECRET_ACCESS_KEY").ok())]
    pub(crate) secret_access_key: Option<String>,
}

impl SourceArgs {
    /// `--pipeline` as a file to take the source from: with `--resource`,
    /// or when it names a file (so that a forgotten `--resource` is said).
    fn pipeline_file(&self) -> Option<&PathBuf> {
        self.pipeline.as_ref().filter(|p| {
            self.resource.is_some()
                || p.is_file()
                || p.extension().is_some_and(|e| e == "yml" || e == "yaml")
        })
    }

    /// `--pipeline NAME` as the Concourse pipeline a `--check` goes to.
    pub(crate) fn concourse_pipeline(&self) -> Option<&str> {
        match self.pipeline_file() {
            Some(_) => None,
            None => self.pipeline.as_deref().and_then(|p| p.to_str()),
        }
    }

    /// The raw source block, before validation, and what set its endpoint
    /// (in words, for an error that cannot connect).
    fn raw(&self) -> Result<(Value, String)> {
        self.raw_for(pipeline::SourceUse::Everything)
    }

    /// The source block as the file or the pipeline gives it (empty when
    /// neither is named).
    fn given(&self, use_: pipeline::SourceUse) -> Result<Value> {
        Ok(match (&self.source_file, self.pipeline_file()) {
            (Some(_), Some(_)) => bail!("give --source or --pipeline, not both"),
            (Some(path), None) => {
                let text = pipeline::read_text(path)
                    .with_context(|| format!("--source: reading {}", path.display()))?;
                let v = pipeline::parse_yaml(&text)
                    .with_context(|| format!("--source: parsing {}", path.display()))?;
                // A whole check/in/out request is accepted too.
                match v.get("source") {
                    Some(s) if s.is_object() => s.clone(),
                    _ => v,
                }
            }
            (None, Some(path)) => {
                let name = self.resource.as_deref().ok_or_else(|| {
                    anyhow!("--pipeline needs --resource NAME (the build-state resource to use)")
                })?;
                let mut vars = pipeline::Vars::new();
                for v in &self.vars {
                    pipeline::parse_var(&mut vars, v, false)?;
                }
                for v in &self.yaml_vars {
                    pipeline::parse_var(&mut vars, v, true)?;
                }
                pipeline::load_resource_source(path, name, &vars, use_)?
            }
            (None, None) => json!({}),
        })
    }

    /// The raw source block, for `use_`: the file's or the pipeline's, with
    /// the flags and variables over it.
    fn raw_for(&self, use_: pipeline::SourceUse) -> Result<(Value, String)> {
        let mut source = self.given(use_)?;
        if !source.is_object() {
            bail!("the source must be a mapping of fields");
        }
        let obj = source.as_object_mut().expect("checked");
        let mut origin = match (&self.source_file, self.pipeline_file()) {
            (Some(path), _) => format!("endpoint in {}", path.display()),
            (None, Some(path)) => format!(
                "the endpoint of resource {} in {}",
                self.resource.as_deref().unwrap_or_default(),
                path.display()
            ),
            (None, None) => "source.endpoint".to_string(),
        };
        if self.endpoint.as_deref().is_some_and(|e| !e.is_empty()) {
            origin = "--endpoint (or BUILD_STATE_ENDPOINT)".to_string();
        }
        self.set_flags(obj)?;
        // As the AWS tools do: with no endpoint named, AWS_ENDPOINT_URL_S3
        // or AWS_ENDPOINT_URL (for a bucket, not a local directory).
        if !obj.contains_key("endpoint")
            && !obj.contains_key("local_dir")
            && let Some((var, url)) = aws_endpoint()
        {
            obj.insert("endpoint".into(), Value::from(url));
            origin = var.to_string();
        }
        if self.local_dir.as_deref().is_some_and(|d| !d.is_empty()) {
            obj.remove("bucket");
        } else if self.bucket.as_deref().is_some_and(|b| !b.is_empty()) {
            obj.remove("local_dir");
        }
        // People and build hosts use the standard AWS credential chain.
        if !obj.contains_key("access_key_id") {
            obj.insert("enable_aws_creds_provider".into(), Value::Bool(true));
        }
        Ok((source, origin))
    }

    /// The store flags and `BUILD_STATE_*` variables over the source's
    /// fields.
    fn set_flags(&self, obj: &mut serde_json::Map<String, Value>) -> Result<()> {
        // An empty flag or variable (BUILD_STATE_BUCKET=) counts as not given.
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v.filter(|v| v.as_str() != Some("")) {
                obj.insert(k.to_string(), v);
            }
        };
        set("bucket", self.bucket.clone().map(Value::from));
        set("local_dir", self.local_dir.clone().map(Value::from));
        set("prefix", self.prefix.clone().map(Value::from));
        set("region_name", self.region.clone().map(Value::from));
        set("endpoint", self.endpoint.clone().map(Value::from));
        set("use_path_style", self.use_path_style.map(Value::from));
        set("aws_role_arn", self.role_arn.clone().map(Value::from));
        let key = self.access_key_id.as_deref().filter(|k| !k.is_empty());
        let secret = self.secret_access_key.as_deref().filter(|k| !k.is_empty());
        match (key, secret) {
            (Some(k), Some(s)) => {
                set("access_key_id", Some(Value::from(k)));
                set("secret_access_key", Some(Value::from(s)));
                obj.remove("session_token");
            }
            (None, None) => {}
            (Some(_), None) => bail!(
                "--access-key-id (or BUILD_STATE_ACCESS_KEY_ID) needs BUILD_STATE_SECRET_ACCESS_KEY in the environment"
            ),
            (None, Some(_)) => bail!(
                "BUILD_STATE_SECRET_ACCESS_KEY needs --access-key-id (or BUILD_STATE_ACCESS_KEY_ID)"
            ),
        }
        Ok(())
    }

    /// The raw source, naming `build_id` when one is given.
    fn source(&self, build_id: Option<&str>) -> Result<(Source, String)> {
        let (mut raw, origin) = self.raw()?;
        if raw.get("bucket").is_none() && raw.get("local_dir").is_none() {
            bail!(
                "no store: give --bucket (or BUILD_STATE_BUCKET), --local-dir, --source FILE, or --pipeline FILE --resource NAME"
            );
        }
        if let Some(id) = build_id {
            raw["build_id"] = Value::from(id);
        }
        let source = parse(&serde_json::to_vec(&raw)?).map_err(|e| {
            anyhow!(
                "{}",
                e.to_string()
                    .replacen("invalid payload: ", "invalid source: ", 1)
            )
        })?;
        Ok((source, origin))
    }

    /// The behaviour settings alone (the ladder, the retry policy, the
    /// error patterns), for a command that reads no store (`states`): a
    /// pipeline's store fields, and the vars only they use, are not needed.
    pub(crate) fn behaviour(&self) -> Result<Arc<Settings>> {
        let (mut raw, _) = self.raw_for(pipeline::SourceUse::BehaviourOnly)?;
        if raw.get("bucket").is_none() && raw.get("local_dir").is_none() {
            raw["local_dir"] = Value::from(".");
        }
        let source = parse(&serde_json::to_vec(&raw)?).map_err(|e| {
            anyhow!(
                "{}",
                e.to_string()
                    .replacen("invalid payload: ", "invalid source: ", 1)
            )
        })?;
        Ok(Arc::new(
            Settings::from_source(&source).map_err(|e| anyhow!(e))?,
        ))
    }

    /// The validated settings, for commands over every build (no build id).
    pub(crate) fn settings(&self) -> Result<Arc<Settings>> {
        let (source, origin) = self.source(None)?;
        let mut settings = Settings::from_source(&source).map_err(|e| anyhow!(e))?;
        name_endpoint(&mut settings, origin);
        Ok(Arc::new(settings))
    }
}

impl SourceArgs {
    /// Build `build_id`'s configuration and its store, deciding as the
    /// pipeline's resource does: without behaviour settings of its own
    /// (states, retry, error patterns), the CLI takes the ones the resource
    /// recorded in the document; with its own, it uses them, and warns
    /// when they differ from the recorded ones (one policy per build).
    pub(crate) async fn build(
        &self,
        build_id: &str,
        notes: &crate::Notes,
    ) -> Result<(Config, AnyStore)> {
        let (source, origin) = self.source(Some(build_id))?;
        let configured = |source: &Source| -> Result<Config> {
            let mut config = configure(source)?;
            if let Some(settings) = Arc::get_mut(&mut config.settings) {
                name_endpoint(settings, origin.clone());
            }
            Ok(config)
        };
        let config = configured(&source)?;
        let store = AnyStore::open(&config)
            .await
            .map_err(|e| anyhow!("opening the store: {e}"))?;
        let Some(recorded) = recorded_policy(&config, &store).await? else {
            return Ok((config, store));
        };
        let own = source.policy();
        if own.is_empty() {
            return Ok((configured(&source.with_policy(recorded))?, store));
        }
        if own != recorded {
            notes.warn(format!(
                "{build_id}: the states, retry or error patterns given here differ from the ones the pipeline's resource recorded in the document; deciding by the ones given here (give none to decide as the pipeline does)"
            ));
        }
        Ok((config, store))
    }
}

fn name_endpoint(settings: &mut Settings, origin: String) {
    if let Storage::S3(s3) = &mut settings.storage {
        s3.endpoint_origin = origin;
    }
}

/// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` (as the AWS CLI and SDKs
/// read them), with the variable's name.
fn aws_endpoint() -> Option<(&'static str, String)> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|var| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (var, v))
        })
}
