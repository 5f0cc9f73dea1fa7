//! `watch`: poll with conditional GETs and print each transition once.

use super::output::Out;
use anyhow::{Result, anyhow};
use build_state::config::Settings;
use build_state::engine::{Builds, Read};
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

pub async fn watch(
    config: &Arc<Settings>,
    store: &AnyStore,
    one: Option<&str>,
    interval: Duration,
    until: Option<Duration>,
    out: &Out,
) -> Result<()> {
    let deadline = until.map(|d| Instant::now() + d);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    // Revisions already said to be stale, by build.
    let mut stale: HashMap<String, u64> = HashMap::new();
    let mut first = true;
    // For a prefix: each build's listing tag at the last sweep. A sweep of
    // builds that did not change costs the listing only.
    let mut tags: HashMap<String, String> = HashMap::new();
    loop {
        let ids: Vec<String> = if let Some(id) = one {
            vec![id.to_string()]
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
                    if !unchanged || dead {
                        changed.push(id.clone());
                    }
                    now.insert(id, l.tag);
                }
            }
            tags = now;
            changed
        };
        for id in ids {
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
                    let doc = &c.doc;
                    let new: Vec<_> = match known {
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
                        out.event(&id, e)?;
                    }
                    let dead_since = doc.dead_since(&config.retry);
                    if let Some(since) = dead_since.filter(|t| build_state::now() >= *t)
                        && stale.get(&id) != Some(&doc.revision)
                    {
                        out.stale(&id, doc, &since)?;
                        stale.insert(id.clone(), doc.revision);
                    }
                    seen.insert(
                        id.clone(),
                        Seen {
                            etag: c.etag.clone(),
                            run: doc.run,
                            revision: doc.revision,
                            dead_since,
                        },
                    );
                }
                Err(e) => eprintln!("build-state: {e}"),
            }
        }
        first = false;
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
