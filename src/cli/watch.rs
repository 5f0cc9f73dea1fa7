//! `watch`: poll with conditional GETs and print each transition once.

use super::cache::Cache;
use super::output::Out;
use anyhow::{Result, anyhow};
use build_state::config::Settings;
use build_state::engine::{Builds, Read};
use build_state::model::Document;
use build_state::store::{AnyStore, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Seen {
    etag: String,
    run: u64,
    revision: u64,
    /// When the stage in progress counts as dead, if it has a timeout.
    dead_since: Option<build_state::model::Timestamp>,
}

/// Follows one build, or every build under the prefix. For a prefix, the
/// documents of `cache` that the listing shows unchanged are where the
/// builds stand at the start (no read); what is read goes into it.
pub async fn watch(
    config: &Arc<Settings>,
    store: &AnyStore,
    one: Option<&str>,
    interval: Duration,
    until: Option<Duration>,
    mut cache: Option<Cache>,
    out: &Out,
) -> Result<()> {
    let deadline = until.map(|d| Instant::now() + d);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    // Revisions already said to be stale, by build.
    let mut stale: HashMap<String, u64> = HashMap::new();
    let mut first = true;
    // The cache is written after the first sweep, then now and then.
    let mut saved: Option<Instant> = None;
    // For a prefix: each build's listing tag at the last sweep. A sweep of
    // builds that did not change costs the listing only.
    let mut tags: HashMap<String, String> = HashMap::new();
    loop {
        // The builds to look at, each with its document when the cache has
        // it at its listing tag (the first sweep).
        let ids: Vec<(String, Option<(Document, String)>)> = if let Some(id) = one {
            vec![(id.to_string(), None)]
        } else {
            let listed = store
                .list_tags(config.prefix())
                .await
                .map_err(|e| anyhow!("listing {}: {e}", config.location(config.prefix())))?;
            let mut changed = Vec::new();
            let mut now = HashMap::new();
            for l in listed {
                if let Some(id) = config.build_id_of_key(&l.key) {
                    let unchanged = tags.get(&id) == Some(&l.tag);
                    let dead = seen
                        .get(&id)
                        .and_then(|s| s.dead_since.map(|t| (t, s.revision)))
                        .is_some_and(|(t, rev)| {
                            build_state::now() >= t && stale.get(&id) != Some(&rev)
                        });
                    let cached = if first {
                        cache
                            .as_ref()
                            .and_then(|c| c.get(&id, &l.tag))
                            .filter(|d| d.build_id == id && d.verify(&config.ladder).is_ok())
                            .cloned()
                    } else {
                        None
                    };
                    if let Some(doc) = cached {
                        changed.push((id.clone(), Some((doc, l.tag.clone()))));
                    } else if !unchanged || dead {
                        changed.push((id.clone(), None));
                    }
                    now.insert(id, l.tag);
                }
            }
            if let Some(c) = cache.as_mut() {
                c.retain(&now.keys().cloned().collect());
            }
            tags = now;
            changed
        };
        for (id, cached) in ids {
            if let Some((doc, tag)) = cached {
                // Where it stands, from the cache: the listing's tag is what
                // a later change is told by.
                seen_found(config, out, &mut seen, &mut stale, &id, &doc, &tag)?;
                continue;
            }
            let cfg = config.for_build(&id)?;
            let builds = Builds::new(&cfg, store);
            let known = seen.get(&id);
            match builds.read(known.map(|s| s.etag.as_str())).await {
                Ok(Read::Unchanged) => {
                    if let Some(s) = known
                        && let Some(since) = s.dead_since
                        && build_state::now() >= since
                        && stale.get(&id) != Some(&s.revision)
                    {
                        let doc = builds.current().await?.map(|c| c.doc);
                        if let Some(doc) = doc.filter(|d| d.revision == s.revision) {
                            out.stale(&id, &doc, &since)?;
                            stale.insert(id.clone(), s.revision);
                        }
                    }
                }
                Ok(Read::Absent) => {
                    if one.is_some() && first {
                        eprintln!("build-state: {id} has no state yet; waiting for it");
                    }
                }
                Ok(Read::Found(c)) => {
                    if let (Some(cache), Some(tag)) = (cache.as_mut(), tags.get(&id)) {
                        cache.put(&id, tag, &c.doc);
                    }
                    seen_found(config, out, &mut seen, &mut stale, &id, &c.doc, &c.etag)?;
                }
                Err(e) => eprintln!("build-state: {e}"),
            }
        }
        first = false;
        // What was read is kept for the next watch or list (written when it
        // changed, at most once a minute).
        if let Some(c) = cache.as_mut()
            && saved.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            c.save();
            saved = Some(Instant::now());
        }
        let mut wait = interval;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            wait = wait.min(left);
        }
        tokio::time::sleep(wait).await;
    }
}

/// A build's document was read (or found in the cache at its listing tag
/// `etag`): print what is new since it was last seen, and whether its stage
/// is stale.
fn seen_found(
    config: &Settings,
    out: &Out,
    seen: &mut HashMap<String, Seen>,
    stale: &mut HashMap<String, u64>,
    id: &str,
    doc: &Document,
    etag: &str,
) -> Result<()> {
    let new: Vec<_> = match seen.get(id) {
        // Starting: where the build stands now.
        None => doc.history.last().into_iter().collect(),
        Some(s) if s.run == doc.run => doc
            .history
            .iter()
            .filter(|e| e.revision > s.revision)
            .collect(),
        Some(_) => doc.history.iter().collect(),
    };
    for e in new {
        out.event(id, e)?;
    }
    let dead_since = doc.dead_since(&config.retry);
    if let Some(since) = dead_since.filter(|t| build_state::now() >= *t)
        && stale.get(id) != Some(&doc.revision)
    {
        out.stale(id, doc, &since)?;
        stale.insert(id.to_string(), doc.revision);
    }
    seen.insert(
        id.to_string(),
        Seen {
            etag: etag.to_string(),
            run: doc.run,
            revision: doc.revision,
            dead_since,
        },
    );
    Ok(())
}
