//! Every type that crosses the wire between Concourse (or a pipeline file)
//! and this resource. Strict: unknown fields are rejected by name; every
//! version field is a string. Validation into usable configuration happens
//! in [`crate::config`].

use crate::model::Step;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A secret string: never printed, not even by `Debug`, nor echoed by a
/// parse error when it has the wrong type.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from its value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret's value, for the one place that needs it (signing requests).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string (quote it)"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string (quote it)"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string (quote it)"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string (quote it)"))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A state code as written in YAML: `25` or `"25"` (a `((var))` may be
/// either).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct CodeParam(pub u32);

impl<'de> Deserialize<'de> for CodeParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = CodeParam;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a state code (a non-negative integer such as 25)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CodeParam, E> {
                u32::try_from(v)
                    .map(CodeParam)
                    .map_err(|_| E::custom(format!("state code {v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CodeParam, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("state code {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CodeParam, E> {
                if v.fract() == 0.0 && v >= 0.0 && v <= u32::MAX as f64 {
                    Ok(CodeParam(v as u32))
                } else {
                    Err(E::custom(format!(
                        "state code {v} is not a non-negative integer"
                    )))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CodeParam, E> {
                v.trim().parse::<u32>().map(CodeParam).map_err(|_| {
                    E::custom(format!("state code {v:?} is not a non-negative integer"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `{state: N}`, `{min_state: N}` and/or `{status: blocked}`, for `gate`
/// (source) and `require` (get).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConditionParam {
    /// `{state: N}`: at N.
    pub(crate) state: Option<CodeParam>,
    /// `{min_state: N}`: at N or past it.
    pub(crate) min_state: Option<CodeParam>,
    /// `{status: blocked}` / `{status: awaiting_approval}`: only when the
    /// build stands so (a human is needed).
    pub(crate) status: Option<String>,
    /// `{timer: true}` (a gate only): when the clock alone has made
    /// something due (a retry, a dead attempt, an overdue stage).
    pub(crate) timer: Option<bool>,
    /// `{leaked: true}` (a gate only): while the build has leaked
    /// resources (a cleanup job's gate).
    pub(crate) leaked: Option<bool>,
}

/// Retry settings, as written in `source.retry` and under its `states`
/// (one type for both: `resume_from` belongs to a stage, `states` to the
/// top; the configuration refuses either in the other place).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryParam {
    /// Failures of a stage before it is blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_attempts: Option<u32>,
    /// The wait after the first failure (`30s`, `5m`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backoff: Option<String>,
    /// Each further failure multiplies the wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) factor: Option<f64>,
    /// The wait never exceeds this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_backoff: Option<String>,
    /// A stage whose retry starts over from this earlier state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resume_from: Option<CodeParam>,
    /// A stage `in_progress` longer than this is a dead attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<String>,
    /// A human approves the stage before it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) approval: Option<bool>,
    /// An attempt with no sign of life (start or heartbeat) for longer than
    /// this is a dead attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) heartbeat_timeout: Option<String>,
    /// Per-state overrides, keyed by a code (`"35"`) or an inclusive range
    /// of codes (`"10-65"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) states: BTreeMap<String, RetryParam>,
}

/// The resource's `source` block, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// S3 bucket holding the states (or `local_dir`).
    pub(crate) bucket: Option<String>,
    /// A local directory instead of S3.
    pub(crate) local_dir: Option<String>,
    #[serde(default)]
    /// Key prefix (`builds` and `builds/` both mean the folder `builds/`).
    pub(crate) prefix: String,
    /// The build this resource tracks.
    pub(crate) build_id: Option<String>,
    /// AWS region (default `us-east-1`).
    pub(crate) region_name: Option<String>,
    /// A custom S3 endpoint (S3-compatible servers).
    pub(crate) endpoint: Option<String>,
    #[serde(default)]
    /// Path-style addressing (`endpoint/bucket/key`).
    pub(crate) use_path_style: bool,
    /// Static credentials, with `secret_access_key`.
    pub(crate) access_key_id: Option<String>,
    /// Never printed, logged or written anywhere.
    pub(crate) secret_access_key: Option<Secret>,
    /// For temporary credentials; never printed.
    pub(crate) session_token: Option<Secret>,
    /// A role to assume (STS).
    pub(crate) aws_role_arn: Option<String>,
    /// PEM certificates to trust besides the system's (at least one).
    pub(crate) ca_bundle: Option<String>,
    /// `AES256` or `aws:kms`.
    pub(crate) server_side_encryption: Option<String>,
    /// The KMS key, with `aws:kms`.
    pub(crate) sse_kms_key_id: Option<String>,
    #[serde(default)]
    /// Without keys, use the standard AWS credential chain.
    pub(crate) enable_aws_creds_provider: bool,
    #[serde(default)]
    /// Free string labels stored in the document by `init`.
    pub(crate) labels: BTreeMap<String, String>,
    /// A custom ladder of `{code, name}`, strictly increasing.
    pub(crate) states: Option<Vec<Step>>,
    /// The retry policy.
    pub(crate) retry: Option<RetryParam>,
    #[serde(default)]
    /// Regexes: a matching error is retried.
    pub(crate) transient_errors: Vec<String>,
    #[serde(default)]
    /// Regexes: a matching error blocks the stage at once.
    pub(crate) persistent_errors: Vec<String>,
    /// Makes `check` emit a version only when the condition passes.
    pub(crate) gate: Option<ConditionParam>,
    /// The token of the pipeline's check webhooks (the gated resources'
    /// `webhook_token`), for a put's `check:`; a secret.
    pub(crate) webhook_token: Option<Secret>,
}

/// The behaviour settings that decide what a put means (the ladder, the
/// retry policy and the error patterns), as written in a source: `out`
/// records them in the document, so that the CLI inside an image build
/// decides exactly as the pipeline's resource does ("one policy per
/// build").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Policy {
    /// `states`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) states: Option<Vec<Step>>,
    /// `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry: Option<RetryParam>,
    /// `transient_errors`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) transient_errors: Vec<String>,
    /// `persistent_errors`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) persistent_errors: Vec<String>,
}

impl Policy {
    /// Whether it says nothing (every setting at its default).
    pub(crate) fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

impl Source {
    /// The source's behaviour settings.
    pub(crate) fn policy(&self) -> Policy {
        Policy {
            states: self.states.clone(),
            retry: self.retry.clone(),
            transient_errors: self.transient_errors.clone(),
            persistent_errors: self.persistent_errors.clone(),
        }
    }

    /// The source with `policy` in place of its own behaviour settings.
    pub(crate) fn with_policy(&self, policy: Policy) -> Source {
        Source {
            states: policy.states,
            retry: policy.retry,
            transient_errors: policy.transient_errors,
            persistent_errors: policy.persistent_errors,
            ..self.clone()
        }
    }
}

/// A version: `{"revision": "42", "state": "25", "status": "failed"}`, plus
/// the ETag of the object when the version is the current revision.
///
/// Unlike every other request field, a version tolerates fields it does not
/// know: Concourse keeps the versions an older image emitted and sends them
/// back to a newer one, which must keep working with them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Version {
    /// The document's revision, as a string.
    pub(crate) revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The state code at that revision.
    pub(crate) state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The status at that revision.
    pub(crate) status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The document's ETag at that revision (for the conditional read).
    pub(crate) etag: Option<String>,
}

/// Name/value metadata shown in the Concourse UI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetadataField {
    /// The field's name, e.g. `state`.
    pub(crate) name: String,
    /// Its value, as text.
    pub(crate) value: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
/// What Concourse sends `check`.
pub(crate) struct CheckRequest {
    /// The resource's source block.
    pub(crate) source: Source,
    /// The newest version Concourse has, if any.
    pub(crate) version: Option<Version>,
}

/// `get` params.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InParams {
    /// Fail the step unless the revision satisfies this condition.
    pub(crate) require: Option<ConditionParam>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
/// What Concourse sends `in`.
pub(crate) struct InRequest {
    /// The resource's source block.
    pub(crate) source: Source,
    /// The version to fetch.
    pub(crate) version: Version,
    /// The get step's params.
    pub(crate) params: Option<InParams>,
}

/// `put` params: exactly one action, plus what goes with it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutParams {
    /// Create the build at its initial state.
    pub(crate) init: Option<bool>,
    /// With `init`: start a new run after a delivered or cancelled one; alone: archive and restart.
    pub(crate) restart: Option<bool>,
    /// Stage N is running.
    pub(crate) start: Option<CodeParam>,
    /// Stage N succeeded.
    pub(crate) complete: Option<CodeParam>,
    /// Stage N failed.
    pub(crate) fail: Option<CodeParam>,
    /// Complete or fail stage N by `BUILD_STATUS`.
    pub(crate) finish: Option<CodeParam>,
    /// A human's retry of stage N.
    pub(crate) retry: Option<CodeParam>,
    /// A manual override to state N.
    pub(crate) set: Option<CodeParam>,
    /// Abandon the build, for this reason.
    pub(crate) cancel: Option<String>,
    /// A whole document that extends the stored one.
    pub(crate) file: Option<String>,
    /// A human approves stage N (awaiting approval).
    pub(crate) approve: Option<CodeParam>,
    /// Stage N (in progress) is alive.
    pub(crate) heartbeat: Option<CodeParam>,
    /// With `fail` / `finish`: the error message, or the file holding it.
    pub(crate) error: Option<String>,
    /// With `fail` / `finish`: a file holding the error message.
    pub(crate) error_file: Option<String>,
    /// With `fail` / `finish`: `transient` or `persistent`.
    pub(crate) kind: Option<String>,
    /// With `set`.
    pub(crate) status: Option<String>,
    /// With `set`: why (required); with `approve`: why (optional).
    pub(crate) reason: Option<String>,
    /// With any action.
    pub(crate) vars_file: Option<String>,
    /// With any action: free text in the history entry.
    pub note: Option<String>,
    /// With any action that writes: the resources whose check Concourse
    /// runs at once (its check webhook), after the write landed.
    pub(crate) check: Option<Vec<String>>,
    /// Cloud resources the attempt created: `{NAME: ID, ...}` (with a stage
    /// action, or alone for the attempt in progress).
    pub(crate) created: Option<std::collections::BTreeMap<String, String>>,
    /// A file holding such a JSON object (a task writes it as it creates).
    pub(crate) created_file: Option<String>,
    /// Resources removed: ids, or names of live ones.
    pub(crate) release: Option<Vec<String>>,
    /// A file holding a JSON array of such ids (a cleanup task writes what
    /// it deleted); a file that is not there releases nothing.
    pub(crate) release_file: Option<String>,
    /// With `start`: names of the failed attempt's resources the retry
    /// keeps using.
    pub(crate) adopt: Option<Vec<String>>,
    /// With `fail` / `finish` (or alone): keep the attempt's resources for
    /// a human this long (`2h`).
    pub(crate) hold: Option<String>,
}

/// The one action a put names, parsed once from its params: adding an
/// action is a variant here, and the compiler finds every place that must
/// handle it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PutAction {
    /// `init: true`, with `restart: true` to start a new run after a
    /// delivered or cancelled one.
    Init {
        /// Whether to start a new run after a delivered or cancelled one.
        restart: bool,
    },
    /// `restart: true` alone.
    Restart,
    /// `start: N`
    Start(u32),
    /// `complete: N`
    Complete(u32),
    /// `fail: N`
    Fail(u32),
    /// `finish: N`: complete or fail by `BUILD_STATUS`.
    Finish(u32),
    /// `retry: N`
    Retry(u32),
    /// `set: N`
    Set(u32),
    /// `cancel: REASON`.
    Cancel(String),
    /// `file: PATH`: a whole document that extends the stored one.
    File(String),
    /// `approve: N`
    Approve(u32),
    /// `heartbeat: N`
    Heartbeat(u32),
    /// No action, only `check: [...]`: records nothing and hands off (the
    /// timer job: the clock made something due that no write announced).
    HandOff,
    /// No action, `created` or `created_file`: resources the attempt in
    /// progress created (a put's: the stage in progress; the CLI names it).
    Created(Option<u32>),
    /// No action, only `release`: resources removed (a cleanup job).
    Release,
    /// No action, only `hold`: keep the build's resources for a human.
    Hold,
}

/// Every action a put may name, for messages.
pub(crate) const PUT_ACTIONS: &str =
    "init, start, complete, fail, finish, retry, set, cancel, restart, approve, heartbeat or file";

impl PutAction {
    /// The param that names it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            PutAction::Init { .. } => "init",
            PutAction::Restart => "restart",
            PutAction::Start(_) => "start",
            PutAction::Complete(_) => "complete",
            PutAction::Fail(_) => "fail",
            PutAction::Finish(_) => "finish",
            PutAction::Retry(_) => "retry",
            PutAction::Set(_) => "set",
            PutAction::Cancel(_) => "cancel",
            PutAction::File(_) => "file",
            PutAction::Approve(_) => "approve",
            PutAction::Heartbeat(_) => "heartbeat",
            PutAction::HandOff => "check",
            PutAction::Created(_) => "created",
            PutAction::Release => "release",
            PutAction::Hold => "hold",
        }
    }

    /// The put's action: exactly one must be given.
    pub(crate) fn of(p: &OutParams) -> Result<PutAction, String> {
        let restart = p.restart == Some(true);
        let code = |c: &Option<CodeParam>| c.as_ref().map(|c| c.0);
        let given: Vec<PutAction> = [
            (p.init == Some(true)).then_some(PutAction::Init { restart }),
            (restart && p.init != Some(true)).then_some(PutAction::Restart),
            code(&p.start).map(PutAction::Start),
            code(&p.complete).map(PutAction::Complete),
            code(&p.fail).map(PutAction::Fail),
            code(&p.finish).map(PutAction::Finish),
            code(&p.retry).map(PutAction::Retry),
            code(&p.set).map(PutAction::Set),
            p.cancel.clone().map(PutAction::Cancel),
            p.file.clone().map(PutAction::File),
            code(&p.approve).map(PutAction::Approve),
            code(&p.heartbeat).map(PutAction::Heartbeat),
        ]
        .into_iter()
        .flatten()
        .collect();
        let resources = p.created.is_some() || p.created_file.is_some();
        match given.as_slice() {
            [one] => Ok(one.clone()),
            [] if resources => Ok(PutAction::Created(None)),
            [] if (p.release.is_some() || p.release_file.is_some()) && p.hold.is_none() => {
                Ok(PutAction::Release)
            }
            [] if p.hold.is_some() && p.release.is_none() => Ok(PutAction::Hold),
            [] if p.check.as_ref().is_some_and(|c| !c.is_empty())
                && p.vars_file.is_none()
                && p.note.is_none() =>
            {
                Ok(PutAction::HandOff)
            }
            [] => Err(format!(
                "params: no action given; a put takes exactly one of {PUT_ACTIONS} (or only check: [...], to hand off; or created, release or hold alone, for resources)"
            )),
            many => Err(format!(
                "params: {} given; a put takes exactly one action ({PUT_ACTIONS})",
                many.iter()
                    .map(PutAction::name)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
/// What Concourse sends `out`.
pub(crate) struct OutRequest {
    /// The resource's source block.
    pub(crate) source: Source,
    /// The put step's params.
    pub(crate) params: Option<OutParams>,
}

/// The reply of `in` and `out`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Response {
    /// The version the step fetched or produced.
    pub(crate) version: Version,
    /// Shown in the Concourse UI.
    pub(crate) metadata: Vec<MetadataField>,
}

/// Parses a request, naming the path of the offending field.
pub fn parse<T: serde::de::DeserializeOwned>(input: &[u8]) -> Result<T, PayloadError> {
    let de = &mut serde_json::Deserializer::from_slice(input);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // The field's path says where; the line and column of stdin (one
        // line of JSON that Concourse wrote) would only say it again, worse.
        if path != "." && inner.line() > 0 {
            let at = format!(" at line {} column {}", inner.line(), inner.column());
            if let Some(m) = message.strip_suffix(&at) {
                message = m.to_string();
            }
        }
        PayloadError {
            path: if path == "." { String::new() } else { path },
            message,
        }
    })
}

/// A request that is not valid JSON or does not fit the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid payload: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct PayloadError {
    /// The path of the offending field (`source.retry.backoff`), empty for the whole request.
    pub(crate) path: String,
    /// What is wrong with it.
    pub(crate) message: String,
}

#[cfg(test)]
mod fuzz {
    //! The request parsers on arbitrary input: raw bytes, and JSON built
    //! from the requests' own vocabulary with values of every type. They
    //! never panic, and what they accept validates (or is refused) without
    //! panicking either. Runs in `cargo test`.

    use super::*;
    use crate::config::Config;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const KEYS: &[&str] = &[
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
        "ca_bundle",
        "states",
        "retry",
        "gate",
        "labels",
        "transient_errors",
        "persistent_errors",
        "max_attempts",
        "backoff",
        "factor",
        "max_backoff",
        "code",
        "name",
        "state",
        "min_state",
        "revision",
        "status",
        "etag",
        "init",
        "restart",
        "start",
        "complete",
        "fail",
        "finish",
        "set",
        "cancel",
        "file",
        "error",
        "error_file",
        "kind",
        "reason",
        "vars_file",
        "note",
        "require",
        "server_side_encryption",
        "sse_kms_key_id",
    ];
    const SOURCE: &[&str] = &[
        "bucket",
        "prefix",
        "build_id",
        "region_name",
        "endpoint",
        "use_path_style",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "ca_bundle",
        "states",
        "retry",
        "gate",
        "labels",
        "transient_errors",
        "persistent_errors",
        "server_side_encryption",
        "sse_kms_key_id",
    ];
    const PARAMS: &[&str] = &[
        "init",
        "restart",
        "start",
        "complete",
        "fail",
        "finish",
        "retry",
        "set",
        "cancel",
        "file",
        "error",
        "error_file",
        "kind",
        "status",
        "reason",
        "vars_file",
        "note",
        "require",
    ];
    const VERSION: &[&str] = &["revision", "state", "status", "etag"];

    /// An object with some of `keys`, each with any value.
    fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        proptest::collection::vec((proptest::sample::select(keys), value()), 0..5)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u32..120).prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z0-9./ -]{0,12}".prop_map(Value::from),
            (0u32..120).prop_map(|n| Value::from(n.to_string())),
            Just(Value::from("10-65")),
            Just(Value::from("5m")),
            Just(Value::from("(?i)timeout")),
            Just(Value::from("(")),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                    |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                ),
            ]
        })
    }

    /// A put's params of the right shape: one action with a code near the
    /// ladder, and some of the fields that go with actions.
    fn put_params() -> impl Strategy<Value = Value> {
        (
            proptest::sample::select(&["start", "complete", "fail", "finish", "retry", "set"][..]),
            prop_oneof![(0u32..21).prop_map(|n| n * 5), 0u32..120],
            proptest::collection::btree_map(
                proptest::sample::select(&["error", "kind", "status", "reason", "note"][..]),
                "[a-z_ ]{0,12}",
                0..3,
            )
            .prop_map(|m| json!(m)),
        )
            .prop_map(|(action, code, mut extra)| {
                extra[action] = json!(code);
                extra
            })
    }

    /// A source of the right shape: a local store and a build, with some
    /// policy fields of any value.
    fn local_source() -> impl Strategy<Value = Value> {
        object(&[
            "retry",
            "gate",
            "states",
            "labels",
            "transient_errors",
            "persistent_errors",
            "prefix",
        ])
        .prop_map(|mut s| {
            s["local_dir"] = json!("/nowhere");
            s["build_id"] = json!("rhel8-web");
            s
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn well_shaped_puts_never_panic(source in local_source(), params in put_params()) {
            let out = serde_json::to_vec(&json!({"source": source, "params": params})).unwrap();
            if let Ok(r) = parse::<OutRequest>(&out) {
                let _ = Config::from_source(&r.source);
                let action = PutAction::of(r.params.as_ref().unwrap());
                prop_assert!(action.is_ok(), "{:?}", action);
            }
        }

        #[test]
        fn raw_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse::<CheckRequest>(&bytes);
            let _ = parse::<InRequest>(&bytes);
            let _ = parse::<OutRequest>(&bytes);
        }

        #[test]
        fn structured_requests_never_panic(
            source in object(SOURCE),
            version in object(VERSION),
            params in object(PARAMS),
            local in any::<bool>(),
        ) {
            let mut source = source;
            if local && let Value::Object(m) = &mut source {
                m.insert("local_dir".into(), json!("/nowhere"));
                m.insert("build_id".into(), json!("rhel8-web"));
            }
            let out = serde_json::to_vec(&json!({"source": source, "params": params})).unwrap();
            let check = serde_json::to_vec(&json!({"source": source, "version": version})).unwrap();
            let get = serde_json::to_vec(&json!({"source": source, "version": version, "params": params})).unwrap();
            if let Ok(r) = parse::<OutRequest>(&out) {
                let _ = Config::from_source(&r.source);
                if let Some(p) = &r.params {
                    let _ = PutAction::of(p);
                }
            }
            if let Ok(r) = parse::<CheckRequest>(&check) {
                let _ = Config::from_source(&r.source);
            }
            if let Ok(r) = parse::<InRequest>(&get)
                && let Some(p) = &r.params
                && let (Ok(c), Some(cond)) = (Config::from_source(&r.source), &p.require)
            {
                let _ = crate::config::parse_condition("require", cond, &c.ladder);
            }
            let bytes = out;
            // An error always names where it is (`bytes` is the out request).
            if let Err(e) = parse::<OutRequest>(&bytes) {
                prop_assert!(e.to_string().starts_with("invalid payload: "));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named() {
        let e =
            parse::<CheckRequest>(br#"{"source": {"build_id": "x", "bukket": "b"}}"#).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "invalid payload: source.bukket: unknown field `bukket`, expected one of `bucket`"
            ),
            "{e}"
        );
        let e = parse::<OutRequest>(br#"{"source": {}, "params": {"start": 5, "stat": 1}}"#)
            .unwrap_err();
        assert!(
            e.to_string().contains("params.stat: unknown field `stat`"),
            "{e}"
        );
    }

    #[test]
    fn codes_are_numbers_or_numeric_strings() {
        let p: OutParams = serde_json::from_str(r#"{"start": "25"}"#).unwrap();
        assert_eq!(p.start, Some(CodeParam(25)));
        let p: OutParams = serde_json::from_str(r#"{"start": 25}"#).unwrap();
        assert_eq!(p.start, Some(CodeParam(25)));
        let e = parse::<OutParams>(br#"{"start": -5}"#).unwrap_err();
        assert!(e.to_string().contains("state code -5 is negative"), "{e}");
        let e = parse::<OutParams>(br#"{"start": "abc"}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"abc\" is not a non-negative integer"),
            "{e}"
        );
    }

    #[test]
    fn versions_are_strings() {
        let e = parse::<InRequest>(br#"{"source": {}, "version": {"revision": 4}}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("version.revision: invalid type: integer `4`"),
            "{e}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s: Source = serde_json::from_str(
            r#"{"secret_access_key": "hunter2-secret", "session_token": "tok-secret"}"#,
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("tok-secret"),
            "{dbg}"
        );
        // A mistyped secret is refused without echoing it.
        let e = parse::<Source>(br#"{"secret_access_key": 987654321}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid payload: secret_access_key: a secret must be a string (quote it)"
        );
    }
}

/// What Concourse tells a step about its build, from the environment
/// (`BUILD_*`, `ATC_EXTERNAL_URL`, and `BUILD_STATUS` in hooks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// `BUILD_TEAM_NAME`
    pub team: Option<String>,
    /// `BUILD_PIPELINE_NAME`
    pub pipeline: Option<String>,
    /// `BUILD_JOB_NAME`
    pub job: Option<String>,
    /// `BUILD_NAME` (the build's number in its job)
    pub build_name: Option<String>,
    /// `BUILD_ID` (unique in the Concourse installation)
    pub build_id: Option<String>,
    /// `ATC_EXTERNAL_URL`
    pub external_url: Option<String>,
    /// `succeeded`, `failed`, `errored` or `aborted`: set for puts inside
    /// `on_*` hooks (Concourse 8.2+).
    pub status: Option<String>,
    /// `BUILD_URL`: the build's page as Concourse 8.0+ links it.
    pub url: Option<String>,
    /// `BUILD_CREATED_BY`: who started the build, when the resource has
    /// `expose_build_created_by: true`.
    pub(crate) created_by: Option<String>,
    /// `BUILD_PIPELINE_INSTANCE_VARS`: the pipeline's instance vars, as
    /// JSON (an instanced pipeline).
    pub(crate) instance_vars: Option<String>,
}

/// `url` without the user and password it may carry (`http://admin:pw@ci`):
/// they are never stored or printed. A URL that does not parse is kept as
/// it is (the webhook says it cannot use it, without quoting it).
fn without_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}

impl BuildEnv {
    /// The build's variables, from this process's environment.
    pub(crate) fn from_env() -> BuildEnv {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The build's variables, from a lookup (for tests).
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> BuildEnv {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        BuildEnv {
            team: var("BUILD_TEAM_NAME"),
            pipeline: var("BUILD_PIPELINE_NAME"),
            job: var("BUILD_JOB_NAME"),
            build_name: var("BUILD_NAME"),
            build_id: var("BUILD_ID"),
            external_url: var("ATC_EXTERNAL_URL").map(|u| without_userinfo(&u)),
            status: var("BUILD_STATUS"),
            url: var("BUILD_URL").map(|u| without_userinfo(&u)),
            created_by: var("BUILD_CREATED_BY"),
            instance_vars: var("BUILD_PIPELINE_INSTANCE_VARS"),
        }
    }

    /// The build's page: `BUILD_URL` when Concourse gives it (8.0+), else
    /// made from `ATC_EXTERNAL_URL` as Concourse makes it; none from a URL
    /// that does not parse (it is stored, and might hold a secret).
    pub(crate) fn build_url(&self) -> Option<String> {
        if let Some(url) = &self.url {
            return url::Url::parse(url).is_ok().then(|| url.clone());
        }
        let base = self.external_url.as_deref()?.trim_end_matches('/');
        url::Url::parse(base).ok()?;
        match (&self.team, &self.pipeline, &self.job, &self.build_name) {
            (Some(t), Some(p), Some(j), Some(n)) => Some(format!(
                "{base}/teams/{t}/pipelines/{p}/jobs/{j}/builds/{n}"
            )),
            _ => self
                .build_id
                .as_ref()
                .map(|id| format!("{base}/builds/{id}")),
        }
    }

    /// Who made a change: this Concourse build.
    pub(crate) fn actor(&self) -> crate::model::Actor {
        crate::model::Actor {
            team: self.team.clone(),
            pipeline: self.pipeline.clone(),
            job: self.job.clone(),
            build_name: self.build_name.clone(),
            build_id: self.build_id.clone(),
            build_url: self.build_url(),
            user: None,
            created_by: self.created_by.clone(),
        }
    }
}
