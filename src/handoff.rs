//! Handoffs: after a put's write landed, ask Concourse to check the named
//! resources at once, through its check webhook
//! (`POST /api/v1/teams/:team/pipelines/:pipeline/resources/:resource/check/webhook?webhook_token=TOKEN`,
//! concourse/concourse `atc/routes.go`, `atc/api/resourceserver/check_webhook.go`:
//! 400 without a token, 404 for a resource the pipeline lacks, 401 for a
//! token that is not the resource's `webhook_token`, 201 with the check
//! build). Best effort: every call together has a few seconds, a failure
//! is one line of notes naming the resource and the cause (never the
//! token), and the gate's periodic check is the fallback.

use crate::Notes;
use crate::protocol::{BuildEnv, Secret};
use serde_json::Value;
use std::time::Duration;

/// The most resources one put may name.
pub(crate) const MAX_CHECKS: usize = 32;

/// How long all the webhook calls of one put may take together.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(4);

/// The pipeline whose resources a handoff checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pipeline {
    /// `ATC_EXTERNAL_URL`, without a trailing slash.
    pub(crate) external_url: String,
    /// `BUILD_TEAM_NAME`.
    pub(crate) team: String,
    /// `BUILD_PIPELINE_NAME`.
    pub(crate) pipeline: String,
    /// `BUILD_PIPELINE_INSTANCE_VARS`, as `vars.` query parameters.
    pub(crate) instance_vars: Vec<(String, String)>,
}

/// What a put (or a CLI action) hands off: the resources to check, and
/// where, when that can be known.
#[derive(Clone, Debug)]
pub(crate) struct Handoff {
    /// The resources, in the order given.
    pub(crate) resources: Vec<String>,
    /// The pipeline, or why there is none to call (no `ATC_EXTERNAL_URL`,
    /// no `webhook_token`, ...): said once, after the write.
    pub(crate) target: Result<(Pipeline, Secret), String>,
}

impl Handoff {
    /// Nothing to check.
    pub(crate) fn none() -> Handoff {
        Handoff {
            resources: Vec::new(),
            target: Err(String::new()),
        }
    }

    /// The handoff of `resources` (as given in `check:`), for the build of
    /// `env` with the source's `token`. A bad name is an error (nothing is
    /// written then); a missing pipeline or token is not: the put still
    /// records, and says the handoff was skipped.
    pub(crate) fn new(
        resources: &[String],
        env: &BuildEnv,
        token: Option<&Secret>,
    ) -> Result<Handoff, String> {
        if resources.len() > MAX_CHECKS {
            return Err(format!(
                "names {} resources; a put checks at most {MAX_CHECKS}",
                resources.len()
            ));
        }
        let mut names = Vec::new();
        for r in resources {
            let name = r.trim();
            // `.` and `..` would vanish from the webhook's path.
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.chars().any(|c| c.is_control() || c == '/')
            {
                return Err(format!("{r:?} is not a resource name"));
            }
            if !names.iter().any(|n: &String| n == name) {
                names.push(name.to_string());
            }
        }
        if names.is_empty() {
            return Ok(Handoff::none());
        }
        let target = pipeline(env).and_then(|p| match token {
            Some(t) => Ok((p, t.clone())),
            None => Err(
                "the source has no webhook_token (the gated resources' webhook_token; the CLI also takes --webhook-token)".to_string(),
            ),
        });
        Ok(Handoff {
            resources: names,
            target,
        })
    }

    /// Whether there is anything to check.
    pub(crate) fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The webhook URL of `resource` (the token in its query).
    pub(crate) fn url(
        pipeline: &Pipeline,
        resource: &str,
        token: &Secret,
    ) -> Result<url::Url, String> {
        // Not quoted: a URL that does not parse may hold a password.
        let mut u = url::Url::parse(&pipeline.external_url)
            .map_err(|e| format!("ATC_EXTERNAL_URL is not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!(
                "ATC_EXTERNAL_URL {:?} is not an http(s) URL",
                pipeline.external_url
            ));
        }
        u.path_segments_mut()
            .map_err(|_| {
                format!(
                    "ATC_EXTERNAL_URL {:?} cannot take a path",
                    pipeline.external_url
                )
            })?
            .pop_if_empty()
            .extend([
                "api",
                "v1",
                "teams",
                &pipeline.team,
                "pipelines",
                &pipeline.pipeline,
                "resources",
                resource,
                "check",
                "webhook",
            ]);
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("webhook_token", token.expose());
            for (k, v) in &pipeline.instance_vars {
                q.append_pair(k, v);
            }
        }
        Ok(u)
    }
}

/// The pipeline of a Concourse build, from its variables.
fn pipeline(env: &BuildEnv) -> Result<Pipeline, String> {
    let missing = |v: &str, flag: &str| {
        format!(
            "{v} is not set (a put outside a Concourse build?; at a terminal, give {flag} or --fly-target)"
        )
    };
    let external_url = env
        .external_url
        .clone()
        .ok_or_else(|| missing("ATC_EXTERNAL_URL", "--atc-url"))?
        .trim_end_matches('/')
        .to_string();
    let team = env
        .team
        .clone()
        .ok_or_else(|| missing("BUILD_TEAM_NAME", "--team"))?;
    let pipeline = env.pipeline.clone().ok_or_else(|| {
        "BUILD_PIPELINE_NAME is not set (a put outside a Concourse build?; at a terminal, give --pipeline NAME)".to_string()
    })?;
    let instance_vars = match &env.instance_vars {
        None => Vec::new(),
        Some(text) => {
            let v: Value = serde_json::from_str(text)
                .map_err(|e| format!("BUILD_PIPELINE_INSTANCE_VARS is not JSON ({e})"))?;
            let mut out = Vec::new();
            flatten("vars", &v, &mut out);
            out.sort();
            out
        }
    };
    Ok(Pipeline {
        external_url,
        team,
        pipeline,
        instance_vars,
    })
}

/// Instance vars as Concourse's `PipelineRef.QueryParams` writes them: one
/// `vars.<path>` parameter per leaf, its value as JSON (`vars.branch="main"`),
/// a key that is not a plain word quoted (`vars."my key"`).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let plain = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                let key = if plain {
                    k.clone()
                } else {
                    Value::String(k.clone()).to_string()
                };
                flatten(&format!("{prefix}.{key}"), x, out);
            }
        }
        leaf if prefix != "vars" => out.push((prefix.to_string(), leaf.to_string())),
        _ => {}
    }
}

/// Posts the webhook of every resource of `handoff`, at once, within
/// [`TIMEOUT`] for all; says in `notes` what was checked and what failed.
/// Hands off once a write `landed` (the webhooks called), or says, once,
/// that the checks were skipped because nothing was written.
pub(crate) async fn after(handoff: &Handoff, landed: bool, notes: &Notes) {
    if landed {
        call(handoff, notes).await;
    } else if !handoff.is_empty() {
        notes.note(format!(
            "check of {} skipped: nothing was written",
            handoff.resources.join(", ")
        ));
    }
}

pub(crate) async fn call(handoff: &Handoff, notes: &Notes) {
    if handoff.is_empty() {
        return;
    }
    let (pipeline, token) = match &handoff.target {
        Ok(t) => t,
        Err(why) => {
            notes.note(format!(
                "check of {} skipped: {why}; their periodic checks will find the change",
                handoff.resources.join(", ")
            ));
            return;
        }
    };
    let connector = match client() {
        Ok(c) => c,
        Err(e) => {
            notes.note(format!("check webhooks skipped: {e}"));
            return;
        }
    };
    let calls = handoff.resources.iter().map(|r| {
        let connector = &connector;
        async move { (r, post(connector, pipeline, r, token).await) }
    });
    let all = futures_util::future::join_all(calls);
    match tokio::time::timeout(TIMEOUT, all).await {
        Ok(results) => {
            let mut done = Vec::new();
            for (r, result) in results {
                match result {
                    Ok(()) => done.push(r.as_str()),
                    Err(e) => notes.note(format!(
                        "check webhook of {r} failed: {e}; its periodic check will find the change"
                    )),
                }
            }
            if !done.is_empty() {
                notes.note(format!("asked Concourse to check {}", done.join(", ")));
            }
        }
        Err(_) => notes.note(format!(
            "check webhooks of {} gave no answer within {}s ({}); their periodic checks will find the change",
            handoff.resources.join(", "),
            TIMEOUT.as_secs(),
            host_of(&pipeline.external_url)
        )),
    }
}

/// The S3 client's connector ([`crate::net`]: hyper with rustls, the
/// system's roots, the environment's proxies): the webhook adds no HTTP
/// stack of its own.
type Client = aws_smithy_http_client::Connector;

fn client() -> Result<Client, String> {
    let tls = crate::net::tls_context(None)?;
    Ok(crate::net::connector(
        &tls,
        crate::net::Route::Environment,
        None,
        None,
    ))
}

/// `https://ci.example.com`: the URL's origin, for messages (never its
/// query, which holds the token).
fn host_of(external_url: &str) -> String {
    url::Url::parse(external_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "ATC_EXTERNAL_URL".to_string())
}

async fn post(
    connector: &Client,
    pipeline: &Pipeline,
    resource: &str,
    token: &Secret,
) -> Result<(), String> {
    use aws_smithy_runtime_api::client::http::HttpConnector;
    let url = Handoff::url(pipeline, resource, token)?;
    let mut req = aws_smithy_runtime_api::client::orchestrator::HttpRequest::new(
        aws_smithy_types::body::SdkBody::empty(),
    );
    req.set_method("POST")
        .map_err(|e| format!("cannot make the request: {e}"))?;
    req.set_uri(url.as_str())
        .map_err(|_| "cannot make the request: an invalid URL".to_string())?;
    req.headers_mut().insert("content-length", "0");
    let host = host_of(&pipeline.external_url);
    let answer = connector.call(req).await.map_err(|e| {
        // The error names the connection, never the URL with its query.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        format!("{host}: {}", cause.replace(token.expose(), "<redacted>"))
    })?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let status = hyper::StatusCode::from_u16(status.as_u16())
        .map_err(|_| format!("{host} answered {}", status.as_u16()))?;
    let why = match status.as_u16() {
        401 | 403 => " (the token is not the resource's webhook_token)",
        404 => " (no such resource in the pipeline, or no such pipeline)",
        _ => "",
    };
    Err(format!("{host} answered {status}{why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: Option<&str>) -> BuildEnv {
        BuildEnv {
            external_url: Some("https://ci.example.com/".into()),
            team: Some("main".into()),
            pipeline: Some("rhel8 aws".into()),
            instance_vars: vars.map(str::to_string),
            ..BuildEnv::default()
        }
    }

    fn secret(s: &str) -> Secret {
        serde_json::from_value(Value::String(s.into())).unwrap()
    }

    /// `.` and `..` are no resource names: they would vanish from the
    /// webhook's path, and the put would report a check it did not ask for.
    #[test]
    fn dot_names_are_refused() {
        for name in [".", "..", "a/b", ""] {
            let e = Handoff::new(&[name.to_string()], &env(None), Some(&secret("t"))).unwrap_err();
            assert_eq!(e, format!("{name:?} is not a resource name"));
        }
        assert!(Handoff::new(&["a.b".to_string()], &env(None), Some(&secret("t"))).is_ok());
    }

    /// The URL Concourse's router takes: team, pipeline and resource as
    /// path segments (escaped), the token and the instance vars as
    /// `vars.` parameters with JSON values, as `PipelineRef.QueryParams`.
    #[test]
    fn the_webhook_url_is_the_atcs() {
        let h = Handoff::new(
            &[
                "at-base-configuration".into(),
                "at-base-configuration".into(),
            ],
            &env(Some(
                r#"{"branch": "feature/x", "env": {"region": "eu"}, "my key": 1}"#,
            )),
            Some(&secret("t0k&n")),
        )
        .unwrap();
        assert_eq!(h.resources, ["at-base-configuration"], "once each");
        let (p, token) = h.target.as_ref().unwrap();
        let url = Handoff::url(p, &h.resources[0], token).unwrap();
        assert_eq!(
            url.as_str(),
            "https://ci.example.com/api/v1/teams/main/pipelines/rhel8%20aws/resources/at-base-configuration/check/webhook?webhook_token=t0k%26n&vars.%22my+key%22=1&vars.branch=%22feature%2Fx%22&vars.env.region=%22eu%22"
        );
        let plain = Handoff::new(&["a".into()], &env(None), Some(&secret("t"))).unwrap();
        let (p, token) = plain.target.as_ref().unwrap();
        assert_eq!(
            Handoff::url(p, "a", token).unwrap().as_str(),
            "https://ci.example.com/api/v1/teams/main/pipelines/rhel8%20aws/resources/a/check/webhook?webhook_token=t"
        );
    }

    /// What is wrong with the names refuses the put; what is missing
    /// around it only skips the handoff, saying why.
    #[test]
    fn bad_names_refuse_and_missing_targets_skip() {
        for bad in ["", " ", "a/b", "a\nb"] {
            assert!(
                Handoff::new(&[bad.into()], &env(None), None).is_err(),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..33).map(|i| format!("r{i}")).collect();
        assert!(
            Handoff::new(&many, &env(None), None)
                .unwrap_err()
                .contains("at most 32")
        );
        let no_token = Handoff::new(&["a".into()], &env(None), None).unwrap();
        assert!(no_token.target.unwrap_err().contains("no webhook_token"));
        let outside =
            Handoff::new(&["a".into()], &BuildEnv::default(), Some(&secret("t"))).unwrap();
        assert!(
            outside
                .target
                .unwrap_err()
                .contains("ATC_EXTERNAL_URL is not set")
        );
        let bad_vars = Handoff::new(&["a".into()], &env(Some("{")), Some(&secret("t"))).unwrap();
        assert!(
            bad_vars
                .target
                .unwrap_err()
                .contains("BUILD_PIPELINE_INSTANCE_VARS is not JSON")
        );
    }
}
