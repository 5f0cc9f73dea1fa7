//! The S3 store: `If-None-Match: *` to create, `If-Match` to replace, and a
//! conditional GET (304) so that an unchanged document costs one request
//! and no body.

use super::{Fetched, Precondition, Store, StoreError};
use crate::config::{Credentials as SourceCredentials, Encryption, S3Config};
use aws_config::SdkConfig;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::imds;
use aws_config::provider_config::ProviderConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_smithy_async::rt::sleep::default_async_sleep;
use aws_smithy_async::time::SharedTimeSource;
use aws_smithy_http_client::tls;
use std::time::Duration;

pub struct S3Store {
    client: Client,
    bucket: String,
    sse: Option<Encryption>,
}

/// Builds the HTTPS client: rustls with ring (small, fast to start), the
/// system's roots plus `ca_bundle`.
fn http_client(
    ca_bundle: Option<&str>,
) -> Result<aws_sdk_s3::config::SharedHttpClient, StoreError> {
    let mut trust = tls::TrustStore::default();
    if let Some(pem) = ca_bundle {
        trust = trust.with_pem_certificate(pem.as_bytes().to_vec());
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| StoreError::Other(format!("source.ca_bundle cannot be used: {e}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(context)
        .build_https())
}

impl S3Store {
    pub async fn connect(cfg: &S3Config) -> Result<S3Store, StoreError> {
        let http = http_client(cfg.ca_bundle.as_deref())?;
        let region = Region::new(cfg.region.clone());
        // Without these, a server that accepts a connection and never answers
        // hangs the step forever. Timeouts are retried: bound the whole call.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(20))
            .operation_attempt_timeout(Duration::from_secs(30))
            .operation_timeout(Duration::from_secs(75))
            .build();
        let sleep = default_async_sleep();
        let mut sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .http_client(http.clone())
            .time_source(SharedTimeSource::default())
            .timeout_config(timeouts);
        sdk.set_sleep_impl(sleep.clone());
        let sdk = sdk.build();

        let base = match &cfg.credentials {
            SourceCredentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret_access_key.expose(),
                session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "build-state-source",
            )),
            SourceCredentials::Chain => {
                let mut provider = ProviderConfig::empty()
                    .with_http_client(http.clone())
                    .with_region(Some(region.clone()));
                if let Some(sleep) = sleep {
                    provider = provider.with_sleep_impl(sleep);
                }
                // Off EC2, instance metadata would stall each step for seconds:
                // one short attempt, then on to the next provider.
                let imds = imds::Client::builder()
                    .configure(&provider)
                    .connect_timeout(Duration::from_secs(1))
                    .read_timeout(Duration::from_secs(1))
                    .max_attempts(1)
                    .build();
                SharedCredentialsProvider::new(
                    DefaultCredentialsChain::builder()
                        .configure(provider)
                        .region(region.clone())
                        .imds_client(imds)
                        .build()
                        .await,
                )
            }
        };
        let credentials = match &cfg.role_arn {
            None => base,
            Some(arn) => SharedCredentialsProvider::new(
                AssumeRoleProvider::builder(arn)
                    .session_name("build-state")
                    .region(region.clone())
                    .configure(&sdk)
                    .build_from_provider(base)
                    .await,
            ),
        };

        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .credentials_provider(credentials)
            .force_path_style(cfg.path_style)
            // Checksum headers and aws-chunked bodies break several
            // S3-compatible servers; send them only where S3 requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &cfg.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        Ok(S3Store {
            client: Client::from_conf(conf.build()),
            bucket: cfg.bucket.clone(),
            sse: cfg.sse.clone(),
        })
    }
}

fn status_of<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// An error and its sources on one line, without the SDK's Debug dump.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
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
fn classify<E>(bucket: &str, e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
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
            } else {
                StoreError::Other(text)
            }
        }
    }
}

impl Store for S3Store {
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(if_none_match.map(str::to_string))
            .send()
            .await;
        match result {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let body =
                    out.body.collect().await.map_err(|e| {
                        StoreError::Other(format!("reading the body of {key}: {e}"))
                    })?;
                Ok(Fetched::Found {
                    body: body.into_bytes().to_vec(),
                    etag,
                })
            }
            Err(e) => {
                if status_of(&e) == Some(304) {
                    return Ok(Fetched::Unchanged);
                }
                // NoSuchKey, or a 404 without a code (some servers, and any
                // HEAD-like answer); a missing bucket is a 404 too, and an error.
                let no_such_key =
                    matches!(&e, SdkError::ServiceError(se) if se.err().is_no_such_key());
                if no_such_key || (status_of(&e) == Some(404) && e.code() != Some("NoSuchBucket")) {
                    return Ok(Fetched::Absent);
                }
                match classify(&self.bucket, e) {
                    StoreError::AccessDenied(m) => Err(StoreError::AccessDenied(format!(
                        "{m} (without s3:ListBucket, S3 also answers 403 for a key that does not exist: grant s3:GetObject and s3:ListBucket)"
                    ))),
                    other => Err(other),
                }
            }
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        when: Precondition<'_>,
    ) -> Result<String, StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        req = match when {
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Matches(etag) => req.if_match(etag),
        };
        req = match &self.sse {
            None => req,
            Some(Encryption::Aes256) => req.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Encryption::Kms { key_id }) => req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(key_id.clone()),
        };
        match req.send().await {
            Ok(out) => Ok(out.e_tag().unwrap_or_default().to_string()),
            // If-Match on a key that was deleted meanwhile: S3 answers 404.
            Err(e)
                if matches!(when, Precondition::Matches(_))
                    && status_of(&e) == Some(404)
                    && e.code() != Some("NoSuchBucket") =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(classify(&self.bucket, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&self.bucket, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&self.bucket, e))
    }
}
