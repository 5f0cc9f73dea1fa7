//! What an S3 server's answers mean: each SDK error classified into a
//! [`StoreError`] (a conflict, an uncertain write, a missing bucket, denied
//! access, bad credentials, a connection that failed and where it went).

use super::StoreError;
use crate::config::S3Config;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

pub(super) fn status_of<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Where the requests for `cfg`'s bucket go, and what decided that, in
/// words: the host tried is named in any error that cannot connect.
pub(super) fn reach(cfg: &S3Config) -> String {
    use aws_sdk_s3::config::endpoint::{Params, ResolveEndpoint};
    use futures_util::FutureExt;
    let url = aws_sdk_s3::config::endpoint::DefaultResolver::new()
        .resolve_endpoint(
            &Params::builder()
                .bucket(&cfg.bucket)
                .region(&cfg.region)
                .set_endpoint(cfg.endpoint.clone())
                .force_path_style(cfg.path_style)
                .build()
                .expect("bucket and region are set"),
        )
        .now_or_never()
        .and_then(Result::ok)
        .map(|e| e.url().to_string());
    let url = url.unwrap_or_else(|| cfg.endpoint.clone().unwrap_or_default());
    match &cfg.endpoint {
        Some(_) => format!(
            "could not connect to {url} (set by {}; use_path_style: {})",
            cfg.endpoint_origin, cfg.path_style
        ),
        None => format!(
            "could not connect to {url} (AWS S3 in region {}: no endpoint is given; for a local or S3-compatible server set source.endpoint, e.g. http://127.0.0.1:9000, and source.use_path_style: true)",
            cfg.region
        ),
    }
}

/// Whether an error is a failure to reach the server at all.
pub(super) fn cannot_connect<E, R>(e: &SdkError<E, R>, text: &str) -> bool {
    matches!(e, SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout())
        || text.contains("dns error")
        || text.contains("Connection refused")
}

/// An error and its sources on one line, without the SDK's Debug dump.
pub(super) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Maps an SDK error to a store error.
pub(super) fn classify<E>(
    (bucket, reach): (&str, &str),
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = status_of(&e);
    let code = e.code().map(str::to_string);
    let message = e.message().map(str::to_string);
    let detail = || match (&code, &message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        _ => one_line(&e),
    };
    match (code.as_deref(), status) {
        (Some("NoSuchBucket"), _) => StoreError::NoSuchBucket(bucket.to_string()),
        (
            Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"),
            _,
        ) => StoreError::Credentials(detail()),
        (Some("AccessDenied"), _) | (_, Some(403)) => StoreError::AccessDenied(detail()),
        (Some("PreconditionFailed" | "ConditionalRequestConflict"), _) | (_, Some(412 | 409)) => {
            StoreError::Conflict
        }
        (
            Some(
                c @ ("PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException"),
            ),
            _,
        ) => StoreError::Other(format!(
            "{c}: {} (the bucket is in another region than source.region_name says)",
            message
                .as_deref()
                .unwrap_or("the bucket must be addressed in its own region")
        )),
        _ => {
            let text = one_line(&e);
            if status.is_none()
                && (text.contains("no credentials") || text.contains("credential provider"))
            {
                StoreError::Credentials(format!(
                    "{text} (set access_key_id and secret_access_key in the source, or give the worker credentials)"
                ))
            } else if text.contains("invalid peer certificate") {
                StoreError::Other(format!(
                    "{text} (for an endpoint with a private CA, put the CA's PEM in source.ca_bundle)"
                ))
            } else if cannot_connect(&e, &text) {
                StoreError::Other(format!("{reach}: {text}"))
            } else {
                StoreError::Other(text)
            }
        }
    }
}

/// Maps the error of a write: an answer that never came, or a 5xx, leaves
/// the write's outcome unknown.
pub(super) fn classify_write<E>(
    bucket: (&str, &str),
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let uncertain = match &e {
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) | SdkError::TimeoutError(_) => {
            true
        }
        _ => status_of(&e).is_some_and(|s| s >= 500),
    };
    match classify(bucket, e) {
        StoreError::Other(m) if uncertain => StoreError::Uncertain(m),
        other => other,
    }
}
