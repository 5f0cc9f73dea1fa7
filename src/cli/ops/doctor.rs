//! `doctor`: what new users get wrong, checked against the real store:
//! credentials, bucket, region, path style, and whether the endpoint really
//! enforces conditional writes (without that, concurrent puts lose updates).

use crate::cli::terminal::{Out, Table};
use crate::config::{Credentials, Settings, Storage};
use crate::store::{AnyStore, Fetched, Precondition, Store, StoreError, Versioning};
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

pub(super) async fn doctor(
    config: &Settings,
    out: &Out,
    wall: &dyn crate::app::Clock,
) -> Result<()> {
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
    s3_settings(config, &mut add);
    let store = match AnyStore::open(config).await {
        Ok(s) => Some(s),
        Err(e) => {
            add("store", Verdict::Fail, advice(&e));
            None
        }
    };
    if let Some(store) = &store {
        let bucket_ok = match store.list(config.prefix()).await {
            Ok(keys) => {
                let builds = keys
                    .iter()
                    .filter(|k| config.build_id_of_key(k).is_some())
                    .count();
                add(
                    "bucket",
                    Verdict::Ok,
                    format!(
                        "readable; {} under the prefix",
                        crate::cli::terminal::count(builds as u64, "build")
                    ),
                );
                true
            }
            Err(StoreError::AccessDenied(m)) => {
                add(
                    "bucket",
                    Verdict::Warn,
                    format!(
                        "listing denied ({m}): grant s3:ListBucket, or a build with no document yet answers 403 instead of 404"
                    ),
                );
                true
            }
            Err(e) => {
                add("bucket", Verdict::Fail, advice(&e));
                false
            }
        };
        // Without a bucket the write checks can only repeat that failure.
        if bucket_ok {
            probe(config, store, wall, &mut add).await;
        }
    }
    print(&checks, out)
}

/// The checks as a table (or JSON); fails when one failed.
fn print(checks: &[Check], out: &Out) -> Result<()> {
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
        for c in checks {
            let r = match c.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "WARNING",
                Verdict::Fail => "FAILED",
            };
            t.row(vec![c.name.to_string(), r.to_string(), c.detail.clone()]);
        }
        out.table(&t)?;
    }
    if failed > 0 {
        bail!("{failed} checks failed (see above)");
    }
    Ok(())
}

/// What the S3 settings themselves say: where credentials come from, and a
/// custom endpoint without path style.
fn s3_settings(config: &Settings, add: &mut impl FnMut(&'static str, Verdict, String)) {
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
}

/// Simultaneous writers in one round of the race probe.
const RACERS: usize = 8;
/// Rounds of the race probe.
const ROUNDS: usize = 3;

/// Proves conditional writes with real requests on a scratch object, then
/// removes it, whatever the checks found.
async fn probe(
    config: &Settings,
    store: &AnyStore,
    wall: &dyn crate::app::Clock,
    add: &mut impl FnMut(&'static str, Verdict, String),
) {
    let key = format!(
        "{}.build-state-doctor/{:016x}.json",
        config.prefix(),
        fastrand::u64(..)
    );
    let created = conditional_writes(store, &key, add).await;
    let versioned = matches!(config.storage, Storage::S3(_));
    match store.versioning().await {
        _ if !versioned => {}
        Ok(Versioning::On) => add(
            "versioning",
            Verdict::Ok,
            "on: build-state restore can bring back a broken document (expire old versions with a lifecycle rule)".into(),
        ),
        Ok(v) => add(
            "versioning",
            Verdict::Warn,
            format!(
                "{}: build-state restore cannot bring back a broken document; turn it on (aws s3api put-bucket-versioning --bucket BUCKET --versioning-configuration Status=Enabled)",
                if v == Versioning::Suspended { "suspended" } else { "off" }
            ),
        ),
        Err(e) => add("versioning", Verdict::Warn, format!("cannot tell: {}", advice(&e))),
    }
    clock(store, wall, add);
    let quirks = store.quirks();
    if !quirks.is_empty() {
        add(
            "quirks",
            Verdict::Ok,
            format!("worked around: {}", quirks.join("; ")),
        );
    }
    if created {
        delete_probe(store, &key, add).await;
    }
}

/// The store's clock, on which every deadline is judged.
fn clock(
    store: &AnyStore,
    wall: &dyn crate::app::Clock,
    add: &mut impl FnMut(&'static str, Verdict, String),
) {
    match store.clock() {
        Some(t) => {
            let off = (wall.now() - t.now()).num_seconds();
            let detail = if off.abs() <= 2 {
                "its answers carry the time: every deadline is judged on it".to_string()
            } else {
                format!(
                    "its answers carry the time, and this machine's clock is {}s {} it: deadlines are judged on the store's, so that is harmless",
                    off.abs(),
                    if off > 0 { "ahead of" } else { "behind" }
                )
            };
            add("clock", Verdict::Ok, detail);
        }
        None => add(
            "clock",
            Verdict::Warn,
            "its answers carry no usable time (no Date header, or a directory this process cannot write): each worker judges deadlines on its own clock, so keep the workers' clocks right (NTP)".into(),
        ),
    }
}

/// Whether a delete with a stale `If-Match` is refused (what `prune`
/// relies on), then the scratch object deleted.
async fn delete_probe(
    store: &AnyStore,
    key: &str,
    add: &mut impl FnMut(&'static str, Verdict, String),
) {
    // prune deletes with If-Match: does the server refuse a stale one?
    if let Ok(Fetched::Found { etag, .. }) = store.get(key, None).await {
        match store
            .delete_if(key, "\"00000000000000000000000000000000\"")
            .await
        {
            Err(StoreError::Conflict) => match store.delete_if(key, &etag).await {
                Ok(()) => add(
                    "If-Match DELETE",
                    Verdict::Ok,
                    "a delete with a stale If-Match was refused, one with the current ETag done: prune never deletes a build that changed".into(),
                ),
                Err(e) => add("If-Match DELETE", Verdict::Warn, format!("a delete with the current ETag failed: {}", advice(&e))),
            },
            Ok(()) => add(
                "If-Match DELETE",
                Verdict::Warn,
                "the server ignores If-Match on DELETE: prune checks the document just before deleting it, but a build updated in that instant could be deleted".into(),
            ),
            Err(e) => add("If-Match DELETE", Verdict::Warn, advice(&e)),
        }
    }
    match store.delete(key).await {
        Ok(()) => add("cleanup", Verdict::Ok, "deleted the scratch object".into()),
        Err(e) => add(
            "cleanup",
            Verdict::Warn,
            format!("could not delete {key}: {} (delete it by hand)", advice(&e)),
        ),
    }
}

const LOST: &str = "updates can be lost on this server: do not use it for build-state";

/// The checks on the scratch object; answers whether it may exist now.
async fn conditional_writes(
    store: &AnyStore,
    key: &str,
    add: &mut impl FnMut(&'static str, Verdict, String),
) -> bool {
    let body = |n: u32| format!("{{\"doctor\": {n}}}\n").into_bytes();
    match store.put(key, body(1), Precondition::Absent).await {
        Ok(_) => add(
            "write",
            Verdict::Ok,
            format!("wrote a scratch object {key}"),
        ),
        Err(e) => {
            add(
                "write",
                Verdict::Fail,
                format!("cannot write {key}: {} (grant s3:PutObject)", advice(&e)),
            );
            // A write whose answer was lost may have landed.
            return matches!(e, StoreError::Uncertain(_));
        }
    }
    match store.put(key, body(2), Precondition::Absent).await {
        Err(StoreError::Conflict) => add(
            "If-None-Match: *",
            Verdict::Ok,
            "a create over an existing object was refused (412)".into(),
        ),
        Ok(_) => add(
            "If-None-Match: *",
            Verdict::Fail,
            format!(
                "the server ignores If-None-Match: * (a create over an existing object succeeded): {LOST}"
            ),
        ),
        Err(e) => add("If-None-Match: *", Verdict::Fail, advice(&e)),
    }
    let current = match store.get(key, None).await {
        Ok(Fetched::Found { etag, .. }) => etag,
        Ok(_) => {
            add(
                "read",
                Verdict::Fail,
                format!("the scratch object {key} cannot be read back after it was written"),
            );
            return true;
        }
        Err(e) => {
            add(
                "read",
                Verdict::Fail,
                format!("cannot read {key}: {}", advice(&e)),
            );
            return true;
        }
    };
    let Some(etag) = replaces(store, key, current, add).await else {
        return true;
    };
    conditional_get(store, key, &etag, add).await;
    race(store, key, add).await;
    true
}

/// A replace with a stale ETag must be refused, one with the current ETag
/// accepted; answers the new ETag.
async fn replaces(
    store: &AnyStore,
    key: &str,
    current: String,
    add: &mut impl FnMut(&'static str, Verdict, String),
) -> Option<String> {
    let body = |n: u32| format!("{{\"doctor\": {n}}}\n").into_bytes();
    match store
        .put(
            key,
            body(3),
            Precondition::Matches("\"00000000000000000000000000000000\""),
        )
        .await
    {
        Err(StoreError::Conflict) => add(
            "If-Match",
            Verdict::Ok,
            "a write with a stale ETag was refused (412)".into(),
        ),
        Ok(_) => add(
            "If-Match",
            Verdict::Fail,
            format!("the server ignores If-Match (a write with a stale ETag succeeded): {LOST}"),
        ),
        Err(e) => add("If-Match", Verdict::Fail, advice(&e)),
    }
    let current = match store.get(key, None).await {
        Ok(Fetched::Found { etag, .. }) => etag,
        _ => current,
    };
    let etag = match store
        .put(key, body(4), Precondition::Matches(&current))
        .await
    {
        Ok(etag) => {
            add(
                "compare-and-swap",
                Verdict::Ok,
                "a write with the current ETag succeeded".into(),
            );
            etag
        }
        Err(e) => {
            add(
                "compare-and-swap",
                Verdict::Fail,
                format!("a write with the current ETag failed: {}", advice(&e)),
            );
            return None;
        }
    };
    Some(etag)
}

/// A GET with the current ETag must answer 304 (tried in both quotings).
async fn conditional_get(
    store: &AnyStore,
    key: &str,
    etag: &str,
    add: &mut impl FnMut(&'static str, Verdict, String),
) {
    for _ in 0..2 {
        match store.get(key, Some(etag)).await {
            Ok(Fetched::Unchanged) => {
                add(
                    "conditional GET",
                    Verdict::Ok,
                    "304 for an unchanged object: a check costs no body".into(),
                );
                return;
            }
            // The store tries the other quoting on the next call.
            Ok(_) => continue,
            Err(e) => {
                add("conditional GET", Verdict::Fail, advice(&e));
                return;
            }
        }
    }
    add(
        "conditional GET",
        Verdict::Warn,
        "no 304 for an unchanged object: every check downloads the document (works, costs more)"
            .into(),
    );
}

/// The race probe: rounds of simultaneous writes that all carry the same
/// current ETag. An atomic server lets exactly one win; a server that checks
/// `If-Match` and then writes lets several win, and loses updates.
async fn race(store: &AnyStore, key: &str, add: &mut impl FnMut(&'static str, Verdict, String)) {
    for round in 1..=ROUNDS {
        if !race_round(store, key, round, add).await {
            return;
        }
    }
    add(
        "race",
        Verdict::Ok,
        format!(
            "{ROUNDS} rounds of {RACERS} simultaneous writes with the same If-Match: exactly one won each time"
        ),
    );
}

/// One round of the race probe; false when it found a failure (added).
async fn race_round(
    store: &AnyStore,
    key: &str,
    round: usize,
    add: &mut impl FnMut(&'static str, Verdict, String),
) -> bool {
    let etag = match store.get(key, None).await {
        Ok(Fetched::Found { etag, .. }) => etag,
        Ok(_) => {
            add(
                "race",
                Verdict::Fail,
                format!("{key} vanished during the probe"),
            );
            return false;
        }
        Err(e) => {
            add("race", Verdict::Fail, advice(&e));
            return false;
        }
    };
    let bodies: Vec<Vec<u8>> = (0..RACERS)
        .map(|i| {
            format!("{{\"doctor\": \"race\", \"round\": {round}, \"writer\": {i}}}\n").into_bytes()
        })
        .collect();
    let results = futures_util::future::join_all(
        bodies
            .iter()
            .map(|b| store.put(key, b.clone(), Precondition::Matches(&etag))),
    )
    .await;
    let winners: Vec<usize> = (0..RACERS).filter(|&i| results[i].is_ok()).collect();
    let failure = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .find(|e| !matches!(e, StoreError::Conflict | StoreError::Uncertain(_)));
    if let Some(e) = failure {
        add(
            "race",
            Verdict::Fail,
            format!("a simultaneous write failed: {}", advice(e)),
        );
        return false;
    }
    judge_round(store, key, round, &bodies, &winners, add).await
}

/// After a round: exactly one writer won, and the object holds its write.
async fn judge_round(
    store: &AnyStore,
    key: &str,
    round: usize,
    bodies: &[Vec<u8>],
    winners: &[usize],
    add: &mut impl FnMut(&'static str, Verdict, String),
) -> bool {
    let stored = match store.get(key, None).await {
        Ok(Fetched::Found { body, .. }) => body,
        _ => Vec::new(),
    };
    if winners.len() > 1 {
        add(
            "race",
            Verdict::Fail,
            format!(
                "{} of {RACERS} simultaneous writes with the same If-Match succeeded (round {round}): the server checks If-Match but not atomically; {LOST}",
                winners.len()
            ),
        );
        return false;
    }
    let landed = bodies.iter().position(|b| *b == stored);
    match (winners.first(), landed) {
        (Some(w), Some(l)) if *w == l => {}
        (None, Some(_)) => {} // the winner's answer was lost, its write landed
        (Some(w), _) => {
            add(
                "race",
                Verdict::Fail,
                format!(
                    "writer {w} was told it won (round {round}), but the object holds another write: {LOST}"
                ),
            );
            return false;
        }
        (None, None) => {
            add(
                "race",
                Verdict::Fail,
                format!(
                    "none of {RACERS} simultaneous writes with the current ETag succeeded (round {round})"
                ),
            );
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    //! `doctor` on a local directory.

    use super::*;
    use crate::cli::terminal::Out;
    use crate::cli::testing::text;

    #[tokio::test]
    async fn doctor_passes_on_a_sound_store_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let source: crate::protocol::Source =
            serde_json::from_value(serde_json::json!({"local_dir": dir.path()})).unwrap();
        let settings = Settings::from_source(&source).unwrap();
        let (out, buf) = Out::buffered(false);
        doctor(&settings, &out, &crate::app::SystemClock)
            .await
            .unwrap();
        let said = text(&buf);
        for want in [
            "compare-and-swap  ok",
            "race              ok",
            "cleanup           ok",
        ] {
            assert!(said.contains(want), "{want:?} in:\n{said}");
        }
        let left: Vec<_> = walkdir(dir.path());
        assert!(left.is_empty(), "{left:?}");
    }

    fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walkdir(&e.path()));
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
        out
    }
}
