//! Validated configuration, built from the raw [`Source`] block.

use crate::model::{
    At, Code, Condition, ErrorInfo, FailureKind, Ladder, RetryPolicy, StageRetry, Step,
};
use crate::protocol::{ConditionParam, Policy, RetryParam, Source};
use regex_lite::Regex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod s3;
use s3::s3_config;
pub use s3::{Credentials, Encryption, S3Config};

/// A source block that cannot be used. The message names the field and
/// says what a valid value looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("source.{field}: {message}")]
pub struct ConfigError {
    /// The source field at fault, e.g. `retry.backoff`.
    pub(crate) field: String,
    /// What is wrong with it.
    pub(crate) message: String,
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        message: message.into(),
    })
}

/// One build's configuration: the resource's [`Settings`] and the build id
/// (a parameter, not a setting: the fleet commands work on settings alone,
/// and make one of these per build they read).
#[derive(Clone, Debug)]
pub struct Config {
    /// The build whose document this is.
    pub(crate) build_id: String,
    /// The resource's settings, shared by every build under them.
    pub(crate) settings: Arc<Settings>,
}

impl std::ops::Deref for Config {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

/// The resource's configuration, validated from a raw source block
/// ([`Source`]): storage, ladder, retry policy, classifier, labels, gate.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the documents live.
    pub(crate) storage: Storage,
    /// The state ladder.
    pub ladder: Ladder,
    /// The retry policy, per stage.
    pub(crate) retry: RetryPolicy,
    /// How an error message is classified.
    pub(crate) classifier: Classifier,
    /// Labels stored by `init`.
    pub(crate) labels: BTreeMap<String, String>,
    /// The condition a gated `check` waits for.
    pub(crate) gate: Option<Condition>,
    /// The behaviour settings as written (what `out` records in the
    /// document for the CLI to decide by).
    pub(crate) policy: Policy,
    /// The token of the pipeline's check webhooks (a secret: never in the
    /// document, the output or an error).
    pub(crate) webhook_token: Option<crate::protocol::Secret>,
}

/// Where documents live, and under which prefix.
#[derive(Clone, Debug)]
pub(crate) enum Storage {
    /// A local directory.
    Local {
        dir: PathBuf,
        /// The key prefix (empty, or ending in `/`).
        prefix: String,
    },
    /// An S3 bucket.
    S3(S3Config),
}

/// Decides whether an error message is transient or persistent.
#[derive(Clone, Debug, Default)]
pub(crate) struct Classifier {
    /// Regexes of errors that are retried.
    pub(crate) transient: Vec<Regex>,
    /// Regexes of errors that block the stage at once.
    pub(crate) persistent: Vec<Regex>,
}

impl Classifier {
    /// A persistent match wins over a transient one (a human looks rather
    /// than a stage retrying something hopeless); no match means transient.
    #[cfg(test)]
    pub(crate) fn classify(&self, message: &str) -> FailureKind {
        self.error(message.to_string(), None).kind
    }

    /// The recorded error: of the kind given, else of the first pattern that
    /// matches (persistent ones first), which the error names; else
    /// transient (unknown).
    pub(crate) fn error(&self, message: String, given: Option<FailureKind>) -> ErrorInfo {
        if let Some(kind) = given {
            return ErrorInfo::new(message, kind);
        }
        let matched = |list: &[Regex], name: &str| {
            list.iter()
                .find(|r| r.is_match(&message))
                .map(|r| format!("{name}: {}", r.as_str()))
        };
        let (kind, rule) = match matched(&self.persistent, "persistent_errors") {
            Some(rule) => (FailureKind::Persistent, Some(rule)),
            None => (
                FailureKind::Transient,
                matched(&self.transient, "transient_errors"),
            ),
        };
        ErrorInfo {
            message,
            kind,
            rule,
        }
    }
}

/// Checks a build id: 1-128 characters of `[A-Za-z0-9._-]`, starting with a
/// letter or digit, so it can never name a parent directory.
pub(crate) fn validate_build_id(id: &str) -> Result<(), String> {
    let ok_len = (1..=128).contains(&id.len());
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let ok_first = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_first {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid build id: use 1-128 characters of [A-Za-z0-9._-], starting with a letter or digit"
        ))
    }
}

/// Normalizes a key prefix: no leading slash, a trailing slash when not
/// empty (`builds` and `builds/` both mean the folder `builds/`).
fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim().trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

fn duration(
    field: &str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => crate::model::time::parse(v)
            .or_else(|e| err(field, format!("{e}; write e.g. 30s, 5m or 1h"))),
    }
}

/// A key of `retry.states`: a code on the ladder (`"35"`), or an inclusive
/// range (`"10-65"`) that names at least one code of it.
fn stage_key(field: &str, key: &str, ladder: &Ladder) -> Result<(Code, Code), ConfigError> {
    let code = |s: &str| -> Result<Code, ConfigError> {
        s.trim().parse().or_else(|_| {
            err(
                field,
                format!("{key:?} is not a state code or a range of codes (\"35\" or \"10-65\")"),
            )
        })
    };
    match key.split_once('-') {
        None => {
            let n = code(key)?;
            ladder.check(n).or_else(|e| err(field, e.to_string()))?;
            Ok((n, n))
        }
        Some((a, b)) => {
            let (lo, hi) = (code(a)?, code(b)?);
            if lo > hi {
                return err(
                    field,
                    format!("the range {lo}-{hi} runs backwards; write {hi}-{lo}"),
                );
            }
            if !ladder.steps().iter().any(|s| (lo..=hi).contains(&s.code)) {
                return err(
                    field,
                    format!(
                        "the range {lo}-{hi} names no state of the ladder ({})",
                        ladder.codes()
                    ),
                );
            }
            Ok((lo, hi))
        }
    }
}

fn stage_retry(field: &str, p: &RetryParam, base: &StageRetry) -> Result<StageRetry, ConfigError> {
    let positive = |name: &str, given: &Option<String>, base: Option<Duration>| match given {
        None => Ok(base),
        Some(_) => {
            let t = duration(&format!("{field}.{name}"), given, Duration::ZERO)?;
            if t.is_zero() {
                return err(format!("{field}.{name}"), "must be longer than 0s");
            }
            Ok(Some(t))
        }
    };
    let timeout = positive("timeout", &p.timeout, base.timeout)?;
    let heartbeat_timeout = positive(
        "heartbeat_timeout",
        &p.heartbeat_timeout,
        base.heartbeat_timeout,
    )?;
    let r = StageRetry {
        max_attempts: p.max_attempts.unwrap_or(base.max_attempts),
        backoff: duration(&format!("{field}.backoff"), &p.backoff, base.backoff)?,
        factor: p.factor.unwrap_or(base.factor),
        max_backoff: duration(
            &format!("{field}.max_backoff"),
            &p.max_backoff,
            base.max_backoff,
        )?,
        resume_from: p.resume_from.as_ref().map(|c| c.0),
        timeout,
        approval: p.approval.unwrap_or(false),
        heartbeat_timeout,
    };
    if r.max_attempts == 0 {
        return err(format!("{field}.max_attempts"), "must be at least 1");
    }
    if !(r.factor.is_finite() && r.factor >= 1.0) {
        return err(
            format!("{field}.factor"),
            format!("{} must be a number >= 1", r.factor),
        );
    }
    Ok(r)
}

/// Parses a `{state: N}` / `{min_state: N}` / `{status: blocked}` block
/// against a ladder.
pub(crate) fn parse_condition(
    field: &str,
    p: &ConditionParam,
    ladder: &Ladder,
) -> Result<Condition, ConfigError> {
    let status = match p.status.as_deref().map(str::trim) {
        None => None,
        Some(s) => match crate::model::HUMAN_STATUSES
            .into_iter()
            .find(|h| h.as_str() == s)
        {
            Some(h) => Some(h),
            None => {
                return err(
                    format!("{field}.status"),
                    format!(
                        "{s:?}: only `status: blocked` and `status: awaiting_approval` are conditions (a build that needs a human)"
                    ),
                );
            }
        },
    };
    if p.leaked == Some(true) {
        if p.state.is_some() || p.min_state.is_some() || status.is_some() || p.timer.is_some() {
            return err(field, "`leaked: true` stands alone");
        }
        if field != "gate" {
            return err(
                format!("{field}.leaked"),
                "only a gate opens on leaked resources (`gate: {leaked: true}`); a cleanup task reads leaked.json",
            );
        }
        return Ok(Condition::leaked());
    }
    if p.timer == Some(true) {
        if p.state.is_some() || p.min_state.is_some() || status.is_some() {
            return err(field, "`timer: true` stands alone");
        }
        if field != "gate" {
            return err(
                format!("{field}.timer"),
                "only a gate waits for the clock (`gate: {timer: true}`)",
            );
        }
        return Ok(Condition::timer());
    }
    let at = match (p.state, p.min_state) {
        (Some(n), None) => At::State(n.0),
        (None, Some(n)) => At::MinState(n.0),
        (None, None) if status.is_some() => At::Any,
        _ => {
            return err(
                field,
                "give exactly one of `state: N` or `min_state: N` (or `status: blocked` / `status: awaiting_approval`, alone or with one of them; or, for a gate, `timer: true` or `leaked: true`)",
            );
        }
    };
    let c = Condition {
        at,
        status,
        timer: false,
        leaked: false,
    };
    if let Some(code) = c.code() {
        ladder.check(code).or_else(|e| err(field, e.to_string()))?;
    }
    Ok(c)
}

fn regexes(field: &str, list: &[String]) -> Result<Vec<Regex>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            Regex::new(r).or_else(|e| {
                err(
                    format!("{field}[{i}]"),
                    format!("{r:?} is not a valid regex: {e}"),
                )
            })
        })
        .collect()
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Config {
    /// Validates a raw source block, which must name its build.
    pub fn from_source(s: &Source) -> Result<Config, ConfigError> {
        let build_id = match non_empty(&s.build_id) {
            Some(id) => id,
            None => {
                return err(
                    "build_id",
                    "is required: the id of the build this resource tracks (e.g. rhel8-web)",
                );
            }
        };
        validate_build_id(&build_id).or_else(|m| err("build_id", m))?;
        Ok(Config {
            build_id,
            settings: Arc::new(Settings::from_source(s)?),
        })
    }

    /// The transition rules this configuration sets.
    pub(crate) fn rules(&self) -> crate::model::Rules<'_> {
        crate::model::Rules {
            build_id: &self.build_id,
            ladder: &self.ladder,
            retry: &self.retry,
            labels: &self.labels,
        }
    }

    /// The key of the live document: `<prefix><build_id>/state.json`.
    pub(crate) fn state_key(&self) -> String {
        format!("{}{}/state.json", self.prefix(), self.build_id)
    }

    /// `<prefix><build_id>/heartbeat.json`: the newest sign of life of the
    /// stage in progress (never part of the document).
    pub(crate) fn heartbeat_key(&self) -> String {
        format!("{}{}/heartbeat.json", self.prefix(), self.build_id)
    }

    /// `<prefix><build_id>/runs/<run>.json`.
    pub(crate) fn archive_key(&self, run: u64) -> String {
        format!("{}{}/runs/{run}.json", self.prefix(), self.build_id)
    }
}

impl Settings {
    /// Validates a raw source block; its `build_id`, if any, is not read.
    pub fn from_source(s: &Source) -> Result<Settings, ConfigError> {
        let prefix = normalize_prefix(&s.prefix);
        let storage = match (non_empty(&s.bucket), non_empty(&s.local_dir)) {
            (Some(_), Some(_)) => {
                return err("bucket", "give either bucket (S3) or local_dir, not both");
            }
            (None, None) => {
                return err(
                    "bucket",
                    "is required: the S3 bucket that holds the states (or set local_dir to keep them in a local directory)",
                );
            }
            (None, Some(dir)) => {
                if prefix.split('/').any(|c| c == ".." || c == ".") {
                    return err(
                        "prefix",
                        format!("{:?} must not contain . or .. path components", s.prefix),
                    );
                }
                Storage::Local {
                    dir: PathBuf::from(dir),
                    prefix,
                }
            }
            (Some(bucket), None) => Storage::S3(s3_config(s, bucket, prefix)?),
        };

        let ladder = match &s.states {
            None => Ladder::default(),
            Some(steps) => Ladder::new(
                steps
                    .iter()
                    .map(|st| Step {
                        code: st.code,
                        name: st.name.trim().to_string(),
                    })
                    .collect(),
            )
            .or_else(|e| err("states", e.to_string()))?,
        };

        let mut retry = RetryPolicy::default();
        if let Some(r) = &s.retry {
            if r.approval.is_some() {
                return err(
                    "retry.approval",
                    "belongs to a stage: write it under retry.states (e.g. states: {\"95\": {approval: true}})",
                );
            }
            if r.resume_from.is_some() {
                return err(
                    "retry.resume_from",
                    "belongs to a stage: write it under retry.states (e.g. states: {\"35\": {resume_from: 10}})",
                );
            }
            retry.default = stage_retry("retry", r, &StageRetry::default())?;
            for (key, p) in &r.states {
                let field = format!("retry.states.{key}");
                if !p.states.is_empty() {
                    return err(
                        format!("{field}.states"),
                        "states do not nest: give each code or range its own entry under retry.states",
                    );
                }
                let (lo, hi) = stage_key(&field, key, &ladder)?;
                let stage = stage_retry(&field, p, &retry.default)?;
                if stage.approval && lo == hi && lo == ladder.final_code() {
                    return err(
                        format!("{field}.approval"),
                        format!(
                            "{lo} is the final state: the build is delivered on reaching it, so it has no stage to approve (put the approval on the stage before it, e.g. {})",
                            ladder.steps().iter().rev().nth(1).map_or(0, |s| s.code)
                        ),
                    );
                }
                if let Some(m) = stage.resume_from {
                    ladder
                        .check(m)
                        .or_else(|e| err(format!("{field}.resume_from"), e.to_string()))?;
                    if m >= lo {
                        return err(
                            format!("{field}.resume_from"),
                            format!(
                                "{m} must be a state before {lo} (a start-over stage goes back to an earlier one)"
                            ),
                        );
                    }
                }
                if lo == hi && !key.contains('-') {
                    retry.states.insert(lo, stage);
                } else {
                    if let Some((a, b, _)) =
                        retry.ranges.iter().find(|(a, b, _)| lo <= *b && *a <= hi)
                    {
                        return err(
                            &field,
                            format!(
                                "the range {lo}-{hi} overlaps the range {a}-{b}; a stage has one policy"
                            ),
                        );
                    }
                    retry.ranges.push((lo, hi, stage));
                }
            }
        }

        let classifier = Classifier {
            transient: regexes("transient_errors", &s.transient_errors)?,
            persistent: regexes("persistent_errors", &s.persistent_errors)?,
        };
        let gate = s
            .gate
            .as_ref()
            .map(|g| parse_condition("gate", g, &ladder))
            .transpose()?;

        Ok(Settings {
            storage,
            ladder,
            retry,
            classifier,
            labels: s.labels.clone(),
            gate,
            policy: s.policy(),
            webhook_token: s
                .webhook_token
                .clone()
                .filter(|t| !t.expose().trim().is_empty()),
        })
    }

    /// The configuration of build `build_id` under these settings.
    pub(crate) fn for_build(self: &Arc<Self>, build_id: &str) -> Result<Config, ConfigError> {
        validate_build_id(build_id).or_else(|m| err("build_id", m))?;
        Ok(Config {
            build_id: build_id.to_string(),
            settings: Arc::clone(self),
        })
    }

    /// The build id a state key names (`<prefix><id>/state.json`), if any.
    pub(crate) fn build_id_of_key(&self, key: &str) -> Option<String> {
        let id = key
            .strip_prefix(self.prefix())?
            .strip_suffix("/state.json")?;
        validate_build_id(id).ok().map(|_| id.to_string())
    }

    /// The build a heartbeat object belongs to (`<prefix><id>/heartbeat.json`).
    pub(crate) fn build_id_of_heartbeat_key(&self, key: &str) -> Option<String> {
        let id = key
            .strip_prefix(self.prefix())?
            .strip_suffix("/heartbeat.json")?;
        validate_build_id(id).ok().map(|_| id.to_string())
    }

    /// The key prefix (empty, or ending in `/`).
    pub(crate) fn prefix(&self) -> &str {
        match &self.storage {
            Storage::Local { prefix, .. } => prefix,
            Storage::S3(s3) => &s3.prefix,
        }
    }

    /// Where a key lives, for messages: `s3://bucket/key` or a path.
    pub(crate) fn location(&self, key: &str) -> String {
        match &self.storage {
            Storage::Local { dir, .. } => dir.join(key).display().to_string(),
            Storage::S3(s3) => format!("s3://{}/{key}", s3.bucket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(json: &str) -> Source {
        serde_json::from_str(json).unwrap()
    }

    fn error(json: &str) -> String {
        Config::from_source(&source(json)).unwrap_err().to_string()
    }

    /// One retry type for the top and the stages: each refuses what
    /// belongs to the other.
    #[test]
    fn resume_from_is_a_stages_and_states_do_not_nest() {
        let e = error(r#"{"local_dir": "/x", "build_id": "b", "retry": {"resume_from": 10}}"#);
        assert!(
            e.starts_with("source.retry.resume_from: belongs to a stage"),
            "{e}"
        );
        let e = error(
            r#"{"local_dir": "/x", "build_id": "b", "retry": {"states": {"35": {"states": {"40": {}}}}}}"#,
        );
        assert!(
            e.starts_with("source.retry.states.35.states: states do not nest"),
            "{e}"
        );
    }

    #[test]
    fn stage_policies_by_code_and_by_range() {
        let c = Config::from_source(&source(
            r#"{"local_dir": "/x", "build_id": "b", "retry": {"timeout": "2h", "states": {
                "10-65": {"backoff": "1m"}, "70-90": {"max_attempts": 1},
                "35": {"max_attempts": 5, "resume_from": 10, "timeout": "30m"}}}}"#,
        ))
        .unwrap();
        let r = &c.retry;
        assert_eq!(r.for_state(10).backoff, Duration::from_secs(60));
        assert_eq!(r.for_state(35).max_attempts, 5);
        assert_eq!(r.for_state(35).resume_from, Some(10));
        assert_eq!(
            r.for_state(35).backoff,
            Duration::from_secs(30),
            "a code key takes the defaults, not the range's"
        );
        assert_eq!(r.for_state(35).timeout, Some(Duration::from_secs(1800)));
        assert_eq!(r.for_state(80).max_attempts, 1);
        assert_eq!(
            r.for_state(80).timeout,
            Some(Duration::from_secs(7200)),
            "inherited"
        );
        assert_eq!(r.for_state(5).backoff, Duration::from_secs(30));
        let base = r#"{"local_dir": "/x", "build_id": "b", "retry": {"states": "#;
        for (states, want) in [
            (
                r#"{"10-65": {}, "60-70": {}}"#,
                "source.retry.states.60-70: the range 60-70 overlaps the range 10-65",
            ),
            (
                r#"{"101-120": {}}"#,
                "source.retry.states.101-120: the range 101-120 names no state of the ladder",
            ),
            (
                r#"{"65-10": {}}"#,
                "the range 65-10 runs backwards; write 10-65",
            ),
            (
                r#"{"ten": {}}"#,
                "\"ten\" is not a state code or a range of codes",
            ),
            (
                r#"{"33": {}}"#,
                "source.retry.states.33: state 33 is not on the ladder",
            ),
            (
                r#"{"35": {"resume_from": 40}}"#,
                "source.retry.states.35.resume_from: 40 must be a state before 35",
            ),
            (
                r#"{"10-65": {"resume_from": 10}}"#,
                "resume_from: 10 must be a state before 10",
            ),
            (
                r#"{"35": {"resume_from": 12}}"#,
                "resume_from: state 12 is not on the ladder",
            ),
            (
                r#"{"35": {"timeout": "0s"}}"#,
                "source.retry.states.35.timeout: must be longer than 0s",
            ),
            (
                r#"{"35": {"heartbeat_timeout": "0s"}}"#,
                "source.retry.states.35.heartbeat_timeout: must be longer than 0s",
            ),
            (
                r#"{"100": {"approval": true}}"#,
                "source.retry.states.100.approval: 100 is the final state: the build is delivered on reaching it, so it has no stage to approve (put the approval on the stage before it, e.g. 95)",
            ),
        ] {
            let e = error(&format!("{base}{states}}}}}"));
            assert!(e.contains(want), "{states}: {e}");
        }
        let unknown = crate::protocol::parse::<Source>(
            format!(r#"{base}{{"35": {{"retries": 2}}}}}}}}"#).as_bytes(),
        )
        .unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("retry.states.35.retries: unknown field `retries`"),
            "{unknown}"
        );
    }

    /// `approval` belongs to a stage; `heartbeat_timeout` may be a
    /// default; a gate may wait for an approval.
    #[test]
    fn approvals_and_heartbeats_are_stage_policies() {
        let e = error(r#"{"local_dir": "/x", "build_id": "b", "retry": {"approval": true}}"#);
        assert!(
            e.starts_with("source.retry.approval: belongs to a stage"),
            "{e}"
        );
        let s: Source = serde_json::from_str(
            r#"{"local_dir": "/x", "build_id": "b", "retry": {"heartbeat_timeout": "5m", "states": {
                "90-95": {"approval": true}, "5": {"heartbeat_timeout": "2m"}}},
                "gate": {"status": "awaiting_approval", "state": 95}}"#,
        )
        .unwrap();
        let c = Config::from_source(&s).unwrap();
        let r = &c.retry;
        assert!(r.for_state(95).approval && r.for_state(90).approval && !r.for_state(85).approval);
        assert_eq!(
            r.for_state(5).heartbeat_timeout,
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            r.for_state(10).heartbeat_timeout,
            Some(Duration::from_secs(300))
        );
        let gate = c.gate.unwrap();
        assert_eq!(
            (gate.status, gate.code(), gate.to_string().as_str()),
            (
                Some(crate::model::Status::AwaitingApproval),
                Some(95),
                "status: awaiting_approval, state: 95"
            )
        );
        let e = error(r#"{"local_dir": "/x", "build_id": "b", "gate": {"status": "failed"}}"#);
        assert!(
            e.contains(
                "\"failed\": only `status: blocked` and `status: awaiting_approval` are conditions"
            ),
            "{e}"
        );
    }

    #[test]
    fn build_ids_cannot_escape() {
        for bad in [
            "",
            "../x",
            "..",
            "a/b",
            ".hidden",
            "-x",
            &"a".repeat(129),
            "a b",
        ] {
            assert!(validate_build_id(bad).is_err(), "{bad:?}");
        }
        for good in ["rhel8-web", "a", "A.b_c-9", &"a".repeat(128)] {
            assert!(validate_build_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn storage_and_credentials_are_required() {
        assert_eq!(
            error(r#"{"build_id": "b"}"#),
            "source.bucket: is required: the S3 bucket that holds the states (or set local_dir to keep them in a local directory)"
        );
        assert!(error(r#"{"bucket": "x"}"#).starts_with("source.build_id: is required"));
        assert!(
            error(r#"{"build_id": "b", "bucket": "x"}"#)
                .starts_with("source.access_key_id: no credentials")
        );
        assert!(
            Config::from_source(&source(
                r#"{"build_id": "b", "bucket": "x", "enable_aws_creds_provider": true}"#
            ))
            .is_ok()
        );
        assert_eq!(
            error(r#"{"build_id": "b", "local_dir": "/x", "prefix": "../up"}"#),
            "source.prefix: \"../up\" must not contain . or .. path components"
        );
    }

    #[test]
    fn retry_gate_and_ladder_are_checked() {
        let base = r#""build_id": "b", "local_dir": "/tmp/x""#;
        let c = Config::from_source(&source(&format!(
            r#"{{{base}, "prefix": "builds", "retry": {{"backoff": "1m", "states": {{"5": {{"max_attempts": 5}}}}}}, "gate": {{"state": 5}}}}"#
        )))
        .unwrap();
        assert_eq!(c.state_key(), "builds/b/state.json");
        assert_eq!(c.retry.for_state(5).max_attempts, 5);
        assert_eq!(c.retry.for_state(5).backoff, Duration::from_secs(60));
        assert_eq!(c.gate, Some(Condition::state(5)));
        assert!(
            error(&format!(r#"{{{base}, "gate": {{"state": 7}}}}"#))
                .contains("state 7 is not on the ladder")
        );
        assert!(error(&format!(r#"{{{base}, "gate": {{}}}}"#)).contains("exactly one of"));
        assert!(
            error(&format!(r#"{{{base}, "retry": {{"backoff": "soon"}}}}"#))
                .starts_with("source.retry.backoff: \"soon\" is not a duration")
        );
        assert!(
            error(&format!(
                r#"{{{base}, "retry": {{"states": {{"33": {{}}}}}}}}"#
            ))
            .starts_with("source.retry.states.33: state 33 is not on the ladder")
        );
        assert!(
            error(&format!(
                r#"{{{base}, "states": [{{"code": 5, "name": "a"}}, {{"code": 1, "name": "b"}}]}}"#
            ))
            .starts_with("source.states: states must be strictly increasing")
        );
        assert!(
            error(&format!(r#"{{{base}, "persistent_errors": ["("]}}"#))
                .starts_with("source.persistent_errors[0]: \"(\" is not a valid regex")
        );
    }

    #[test]
    fn classifier_prefers_persistent() {
        let c = Classifier {
            transient: vec![Regex::new("timeout").unwrap()],
            persistent: vec![Regex::new("(?i)license").unwrap()],
        };
        assert_eq!(c.classify("connection timeout"), FailureKind::Transient);
        assert_eq!(c.classify("LICENSE timeout"), FailureKind::Persistent);
        assert_eq!(c.classify("unknown"), FailureKind::Transient);
    }
}
