//! `doctor`: what new users get wrong, checked against the real store:
//! credentials, bucket, region, path style, and whether the endpoint really
//! enforces conditional writes (without that, concurrent puts lose updates).

use super::output::{Out, Table};
use crate::config::{Config, Credentials, Storage};
use crate::store::{AnyStore, Fetched, Precondition, Store, StoreError};
use anyhow::{Result, bail};
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

struct Check {
    name: &'static str,
    verdict: Verdict,
    detail: String,
}

fn advice(e: &StoreError) -> String {
    let text = e.to_string();
    if text.contains("PermanentRedirect")
        || text.contains("AuthorizationHeaderMalformed")
        || text.contains("region")
    {
        format!("{text} (is region_name the bucket's region?)")
    } else {
        text
    }
}

pub async fn doctor(config: &Config, out: &Out) -> Result<()> {
    let mut checks: Vec<Check> = Vec::new();
    let mut add = |name, verdict, detail: String| {
        checks.push(Check {
            name,
            verdict,
            detail,
        })
    };
    add(
        "configuration",
        Verdict::Ok,
        format!("store at {}", config.location(config.prefix())),
    );
    if let Storage::S3(s3) = &config.storage {
        add(
            "credentials",
            Verdict::Ok,
            match &s3.credentials {
                Credentials::Static { .. } => "static keys from the source".to_string(),
                Credentials::Chain => "the standard AWS credential chain".to_string(),
            } + &s3
                .role_arn
                .as_ref()
                .map(|r| format!(", assuming {r}"))
                .unwrap_or_default(),
        );
        if s3.endpoint.is_some() && !s3.path_style {
            add(
                "path style",
                Verdict::Warn,
                "a custom endpoint without use_path_style: most S3-compatible servers need use_path_style: true".into(),
            );
        }
    }
    let store = match AnyStore::open(config).await {
        Ok(s) => Some(s),
        Err(e) => {
            add("store", Verdict::Fail, advice(&e));
            None
        }
    };
    if let Some(store) = &store {
        match store.list(config.prefix()).await {
            Ok(keys) => {
                let builds = keys
                    .iter()
                    .filter(|k| config.build_id_of_key(k).is_some())
                    .count();
                add(
                    "bucket",
                    Verdict::Ok,
                    format!("readable; {builds} builds under the prefix"),
                );
            }
            Err(StoreError::AccessDenied(m)) => add(
                "bucket",
                Verdict::Warn,
                format!(
                    "listing denied ({m}): grant s3:ListBucket, or a build with no document yet answers 403 instead of 404"
                ),
            ),
            Err(e @ (StoreError::NoSuchBucket(_) | StoreError::Credentials(_))) => {
                add("bucket", Verdict::Fail, advice(&e))
            }
            Err(e) => add("bucket", Verdict::Fail, advice(&e)),
        }
        probe(config, store, &mut add).await;
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if out.json {
        let v: Vec<_> = checks
            .iter()
            .map(|c| {
                json!({"check": c.name, "result": match c.verdict { Verdict::Ok => "ok", Verdict::Warn => "warning", Verdict::Fail => "failed" }, "detail": c.detail})
            })
            .collect();
        out.print_json(&serde_json::Value::Array(v))?;
    } else {
        let mut t = Table::new(&["CHECK", "RESULT", "DETAIL"]);
        for c in &checks {
            let r = match c.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "WARNING",
                Verdict::Fail => "FAILED",
            };
            t.row(vec![c.name.to_string(), r.to_string(), c.detail.clone()]);
        }
        t.print();
    }
    if failed > 0 {
        bail!("{failed} checks failed (see above)");
    }
    Ok(())
}

/// Writes, conditionally rewrites and deletes a scratch object.
async fn probe(
    config: &Config,
    store: &AnyStore,
    add: &mut impl FnMut(&'static str, Verdict, String),
) {
    let key = format!(
        "{}.build-state-doctor/{:016x}.json",
        config.prefix(),
        fastrand::u64(..)
    );
    let body = |n: u32| format!("{{\"doctor\": {n}}}\n").into_bytes();
    let first = match store.put(&key, body(1), Precondition::Absent).await {
        Ok(etag) => etag,
        Err(e) => {
            add(
                "write",
                Verdict::Fail,
                format!("cannot write {key}: {} (grant s3:PutObject)", advice(&e)),
            );
            return;
        }
    };
    add(
        "write",
        Verdict::Ok,
        format!("wrote a scratch object {key}"),
    );
    match store.put(&key, body(2), Precondition::Absent).await {
        Err(StoreError::Conflict) => add("If-None-Match: *", Verdict::Ok, "a second create was refused (412)".into()),
        Ok(_) => add(
            "If-None-Match: *",
            Verdict::Fail,
            "THE ENDPOINT IGNORES If-None-Match: * — two inits can overwrite each other; do not use this server".into(),
        ),
        Err(e) => add("If-None-Match: *", Verdict::Fail, advice(&e)),
    }
    let current = match store.get(&key, None).await {
        Ok(Fetched::Found { etag, .. }) => etag,
        _ => first,
    };
    match store.put(&key, body(3), Precondition::Matches("\"00000000000000000000000000000000\"")).await {
        Err(StoreError::Conflict) => add("If-Match", Verdict::Ok, "a write with a stale ETag was refused (412)".into()),
        Ok(_) => add(
            "If-Match",
            Verdict::Fail,
            "THE ENDPOINT IGNORES If-Match — concurrent puts WILL LOSE UPDATES; do not use this server for build-state".into(),
        ),
        Err(e) => add("If-Match", Verdict::Fail, advice(&e)),
    }
    match store
        .put(&key, body(4), Precondition::Matches(&current))
        .await
    {
        Ok(etag) => {
            add(
                "compare-and-swap",
                Verdict::Ok,
                "a write with the current ETag succeeded".into(),
            );
            match store.get(&key, Some(&etag)).await {
                Ok(Fetched::Unchanged) => add("conditional GET", Verdict::Ok, "304 for an unchanged object: a check costs no body".into()),
                Ok(_) => add(
                    "conditional GET",
                    Verdict::Warn,
                    "no 304 for an unchanged object: every check downloads the document (works, costs more)".into(),
                ),
                Err(e) => add("conditional GET", Verdict::Fail, advice(&e)),
            }
        }
        Err(e) => add(
            "compare-and-swap",
            Verdict::Fail,
            format!("a write with the current ETag failed: {}", advice(&e)),
        ),
    }
    match store.delete(&key).await {
        Ok(()) => add("cleanup", Verdict::Ok, "deleted the scratch object".into()),
        Err(e) => add(
            "cleanup",
            Verdict::Warn,
            format!("could not delete {key}: {} (delete it by hand)", advice(&e)),
        ),
    }
}
