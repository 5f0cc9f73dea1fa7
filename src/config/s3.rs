//! The S3 part of a source: bucket, region, endpoint, path style,
//! credentials (static, a profile, a role to assume, or the chain), server
//! side encryption and a private CA bundle.

use super::{ConfigError, err, non_empty};
use crate::protocol::{Secret, Source};

#[derive(Clone, Debug)]
/// Where an S3 store is and how to reach it.
pub struct S3Config {
    pub(crate) bucket: String,
    /// The key prefix, ending in `/` (or empty).
    pub(crate) prefix: String,
    /// The bucket's region.
    pub(crate) region: String,
    /// A custom endpoint (S3-compatible servers).
    pub(crate) endpoint: Option<String>,
    /// What set `endpoint`, in words for an error (`source.endpoint`; the
    /// CLI names its flag or variable).
    pub(crate) endpoint_origin: String,
    /// Path-style addressing.
    pub(crate) path_style: bool,
    /// Which credentials sign requests.
    pub(crate) credentials: Credentials,
    /// A role to assume with them.
    pub(crate) role_arn: Option<String>,
    /// PEM certificates to trust besides the system's.
    pub(crate) ca_bundle: Option<String>,
    /// Server-side encryption of written documents.
    pub(crate) sse: Option<Encryption>,
}

#[derive(Clone, Debug)]
/// Which credentials sign S3 requests.
pub enum Credentials {
    /// Keys from the source.
    Static {
        /// The access key.
        access_key_id: String,
        /// The secret key (never shown).
        secret_access_key: Secret,
        /// A session token for temporary credentials.
        session_token: Option<Secret>,
    },
    /// The standard AWS credential chain (`enable_aws_creds_provider`).
    Chain,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// Server-side encryption.
pub enum Encryption {
    /// `AES256`: keys managed by S3.
    Aes256,
    /// `aws:kms`, with a key (or the bucket's default key).
    Kms {
        /// The KMS key.
        key_id: Option<String>,
    },
}

pub(super) fn s3_config(
    s: &Source,
    bucket: String,
    prefix: String,
) -> Result<S3Config, ConfigError> {
    let key = non_empty(&s.access_key_id);
    let secret = s
        .secret_access_key
        .clone()
        .filter(|k| !k.expose().trim().is_empty());
    let credentials = match (key, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token: s.session_token.clone().filter(|t| !t.expose().is_empty()),
        },
        (Some(_), None) => return err("secret_access_key", "is required with access_key_id"),
        (None, Some(_)) => return err("access_key_id", "is required with secret_access_key"),
        (None, None) if s.enable_aws_creds_provider => Credentials::Chain,
        (None, None) => {
            return err(
                "access_key_id",
                "no credentials: set access_key_id and secret_access_key, or set enable_aws_creds_provider: true to use the AWS credential chain (environment, profile, web identity, container or instance role)",
            );
        }
    };
    let sse = match non_empty(&s.server_side_encryption).as_deref() {
        None => {
            if non_empty(&s.sse_kms_key_id).is_some() {
                return err("sse_kms_key_id", "needs server_side_encryption: aws:kms");
            }
            None
        }
        Some("AES256") => Some(Encryption::Aes256),
        Some("aws:kms") => Some(Encryption::Kms {
            key_id: non_empty(&s.sse_kms_key_id),
        }),
        Some(other) => {
            return err(
                "server_side_encryption",
                format!("{other:?} must be AES256 or aws:kms"),
            );
        }
    };
    let endpoint = non_empty(&s.endpoint).map(|e| {
        if e.contains("://") {
            e
        } else {
            format!("https://{e}")
        }
    });
    Ok(S3Config {
        bucket,
        prefix,
        region: non_empty(&s.region_name).unwrap_or_else(|| "us-east-1".to_string()),
        endpoint,
        endpoint_origin: "source.endpoint".to_string(),
        path_style: s.use_path_style,
        credentials,
        role_arn: non_empty(&s.aws_role_arn),
        ca_bundle: ca_bundle(&s.ca_bundle)?,
        sse,
    })
}

/// `ca_bundle`, when given, must hold at least one PEM certificate: a bundle
/// that holds none would silently trust only the system's roots.
pub(super) fn ca_bundle(given: &Option<String>) -> Result<Option<String>, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(pem) = given else {
        return Ok(None);
    };
    let mut certificates = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        match cert {
            Ok(_) => certificates += 1,
            Err(e) => return err("ca_bundle", format!("is not valid PEM ({e})")),
        }
    }
    if certificates == 0 {
        return err(
            "ca_bundle",
            "holds no certificate: give the PEM text of the CA's certificate (-----BEGIN CERTIFICATE----- ...)",
        );
    }
    Ok(Some(pem.clone()))
}
