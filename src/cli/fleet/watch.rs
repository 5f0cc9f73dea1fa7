//! `watch`: poll with conditional GETs and print each transition once.

use super::cache::Cache;
use crate::cli::terminal::Out;
use crate::config::Settings;
use crate::engine::{Builds, Read};
use crate::model::document::rfc3339;
use crate::model::{Document, Event, Heartbeat, Timestamp};
use crate::store::{AnyStore, Store};
use anyhow::{Result, anyhow};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Seen {
    etag: String,
    run: u64,
    revision: u64,
    /// When the stage in progress counts as dead, if it has a timeout.
    dead_since: Option<crate::model::Timestamp>,
    /// The document, while its stage is in progress with a
    /// `heartbeat_timeout` (its heartbeats move `dead_since`).
    beating: Option<Document>,
    /// The newest heartbeat said, and the ETag it was read with.
    beat_at: Option<crate::model::Timestamp>,
    beat_etag: Option<String>,
}

/// What a watch knows between sweeps.
struct Watcher<'a> {
    config: &'a Arc<Settings>,
    store: &'a AnyStore,
    out: &'a Out,
    /// What staleness is judged by.
    clock: &'a dyn crate::app::Clock,
    /// Each build as last seen.
    seen: HashMap<String, Seen>,
    /// Revisions already said to be stale, by build.
    stale: HashMap<String, u64>,
    /// For a prefix: each build's listing tag at the last sweep. A sweep of
    /// builds that did not change costs the listing only.
    tags: HashMap<String, String>,
    /// For a prefix: each heartbeat object's listing tag at the last sweep.
    beat_tags: HashMap<String, String>,
    /// Builds whose heartbeat changed in this sweep.
    beats_due: Vec<String>,
    cache: Option<Cache>,
    first: bool,
}

/// A build to look at in a sweep, with its document when the cache has it
/// at its listing tag (the first sweep).
type ToLook = (String, Option<(Document, String)>);

/// Follows one build, or every build under the prefix. For a prefix, the
/// documents of `cache` that the listing shows unchanged are where the
/// builds stand at the start (no read); what is read goes into it.
pub(super) async fn watch(
    config: &Arc<Settings>,
    store: &AnyStore,
    one: Option<&str>,
    (interval, until): (Duration, Option<Duration>),
    cache: Option<Cache>,
    out: &Out,
    clock: &dyn crate::app::Clock,
) -> Result<()> {
    let deadline = until.map(|d| Instant::now() + d);
    let mut w = Watcher {
        config,
        store,
        out,
        clock,
        seen: HashMap::new(),
        stale: HashMap::new(),
        tags: HashMap::new(),
        beat_tags: HashMap::new(),
        beats_due: Vec::new(),
        cache,
        first: true,
    };
    // The cache is written after the first sweep, then now and then.
    let mut saved: Option<Instant> = None;
    loop {
        let ids = match one {
            Some(id) => vec![(id.to_string(), None)],
            None => w.changed().await?,
        };
        for (id, cached) in ids {
            w.look(&id, cached, one.is_some()).await?;
        }
        let beats = match one {
            Some(id) => vec![id.to_string()],
            None => std::mem::take(&mut w.beats_due),
        };
        for id in beats {
            w.beat(&id).await?;
        }
        w.first = false;
        // What was read is kept for the next watch or list (written when it
        // changed, at most once a minute).
        if let Some(c) = w.cache.as_mut()
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

impl Watcher<'_> {
    /// The builds under the prefix whose listing tag changed since the last
    /// sweep (or whose stage is due to be said stale).
    async fn changed(&mut self) -> Result<Vec<ToLook>> {
        let config = self.config;
        let listed = self
            .store
            .list_tags(config.prefix())
            .await
            .map_err(|e| anyhow!("listing {}: {e}", config.location(config.prefix())))?;
        let mut changed = Vec::new();
        let mut now = HashMap::new();
        let mut beat_tags = HashMap::new();
        for l in listed {
            if let Some(id) = config.build_id_of_heartbeat_key(&l.key) {
                if self.beat_tags.get(&id) != Some(&l.tag) {
                    self.beats_due.push(id.clone());
                }
                beat_tags.insert(id, l.tag);
                continue;
            }
            let Some(id) = config.build_id_of_key(&l.key) else {
                continue;
            };
            let unchanged = self.tags.get(&id) == Some(&l.tag);
            let dead = self
                .seen
                .get(&id)
                .and_then(|s| s.dead_since.map(|t| (t, s.revision)))
                .is_some_and(|(t, rev)| self.clock.now() >= t && self.stale.get(&id) != Some(&rev));
            let cached = if self.first {
                self.cache
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
        if let Some(c) = self.cache.as_mut() {
            c.retain(&now.keys().cloned().collect());
        }
        self.tags = now;
        self.beat_tags = beat_tags;
        Ok(changed)
    }

    /// A build's heartbeat, when its stage is in progress with a heartbeat
    /// policy: said once per new heartbeat, and when the attempt counts as
    /// dead from then on.
    async fn beat(&mut self, id: &str) -> Result<()> {
        let Some(seen) = self.seen.get_mut(id) else {
            return Ok(());
        };
        let Some(doc) = seen.beating.as_ref() else {
            return Ok(());
        };
        // A conditional read: an unchanged heartbeat (one build's watch
        // asks every sweep) is a 304 with no body.
        let cfg = self.config.for_build(id)?;
        let key = cfg.heartbeat_key();
        let beat: Heartbeat = match self.store.get(&key, seen.beat_etag.as_deref()).await {
            Ok(crate::store::Fetched::Found { body, etag }) => {
                seen.beat_etag = Some(etag);
                match serde_json::from_slice(&body) {
                    Ok(b) => b,
                    Err(_) => return Ok(()),
                }
            }
            Ok(_) => return Ok(()),
            Err(e) => {
                self.out.note(format!("{}: {e}", cfg.location(&key)));
                return Ok(());
            }
        };
        let Some(beat) = doc.own_heartbeat(Some(&beat)) else {
            return Ok(());
        };
        if seen.beat_at.is_some_and(|t| t >= beat.at) {
            return Ok(());
        }
        seen.beat_at = Some(beat.at);
        seen.dead_since = doc.dead_since(&self.config.retry, Some(beat));
        self.out.heartbeat(id, doc, beat)
    }

    /// Looks at one build: from the cache, or with a conditional read.
    async fn look(
        &mut self,
        id: &str,
        cached: Option<(Document, String)>,
        one: bool,
    ) -> Result<()> {
        let (config, out) = (self.config, self.out);
        if let Some((doc, tag)) = cached {
            // Where it stands, from the cache: the listing's tag is what a
            // later change is told by.
            return seen_found(
                config,
                out,
                &mut self.seen,
                &mut self.stale,
                id,
                (&doc, &tag),
                self.clock.now(),
            );
        }
        let cfg = config.for_build(id)?;
        let builds = Builds::new(&cfg, self.store);
        let known = self.seen.get(id);
        match builds.read(known.map(|s| s.etag.as_str())).await {
            Ok(Read::Unchanged) => {
                if let Some(s) = known
                    && let Some(since) = s.dead_since
                    && self.clock.now() >= since
                    && self.stale.get(id) != Some(&s.revision)
                {
                    let revision = s.revision;
                    let doc = builds.current().await?.map(|c| c.doc);
                    if let Some(doc) = doc.filter(|d| d.revision == revision) {
                        out.stale(id, &doc, &since, self.clock.now())?;
                        self.stale.insert(id.to_string(), revision);
                    }
                }
            }
            Ok(Read::Absent) => {
                if one && self.first {
                    out.note(format!("{id} has no state yet; waiting for it"));
                }
            }
            Ok(Read::Found(c)) => {
                if let (Some(cache), Some(tag)) = (self.cache.as_mut(), self.tags.get(id)) {
                    cache.put(id, tag, &c.doc);
                }
                seen_found(
                    config,
                    out,
                    &mut self.seen,
                    &mut self.stale,
                    id,
                    (&c.doc, &c.etag),
                    self.clock.now(),
                )?;
            }
            Err(e) => out.note(e.to_string()),
        }
        Ok(())
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
    (doc, etag): (&Document, &str),
    now: Timestamp,
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
    let dead_since = doc.dead_since(&config.retry, None);
    if let Some(since) = dead_since.filter(|t| now >= *t)
        && stale.get(id) != Some(&doc.revision)
    {
        out.stale(id, doc, &since, now)?;
        stale.insert(id.to_string(), doc.revision);
    }
    seen.insert(
        id.to_string(),
        Seen {
            etag: etag.to_string(),
            run: doc.run,
            revision: doc.revision,
            dead_since,
            beating: (doc.status == crate::model::Status::InProgress
                && config
                    .retry
                    .for_state(doc.state)
                    .heartbeat_timeout
                    .is_some())
            .then(|| doc.clone()),
            beat_at: None,
            beat_etag: None,
        },
    );
    Ok(())
}

/// What `watch` prints as it sees it.
impl Out {
    /// A stage `watch` finds in progress past its timeout.
    pub(crate) fn stale(
        &self,
        build_id: &str,
        doc: &Document,
        since: &Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        if self.json {
            let v = json!({"build_id": build_id, "revision": doc.revision, "state": doc.state,
                           "status": doc.status, "stale": true, "dead_since": rfc3339::format(since)});
            return self.write(&format!("{}\n", serde_json::to_string(&v)?));
        }
        self.write(&format!(
            "{} {build_id} r{} {} in_progress is stale: no sign of life within the stage's timeout or heartbeat_timeout, dead since {} (a worker that vanished?)\n",
            rfc3339::format(&now),
            doc.revision,
            doc.state,
            rfc3339::format(since)
        ))
    }

    /// A heartbeat seen by `watch`.
    pub(crate) fn heartbeat(&self, build_id: &str, doc: &Document, beat: &Heartbeat) -> Result<()> {
        if self.json {
            let v = json!({"build_id": build_id, "revision": doc.revision, "state": doc.state,
                           "status": doc.status, "heartbeat": beat});
            return self.write(&format!("{}\n", serde_json::to_string(&v)?));
        }
        self.write(&format!(
            "{} {build_id} r{} {} in_progress heartbeat (attempt {}) by {}\n",
            rfc3339::format(&beat.at),
            doc.revision,
            doc.state,
            beat.attempt,
            crate::visible(&beat.by.describe())
        ))
    }

    /// One transition seen by `watch`.
    pub(crate) fn event(&self, build_id: &str, e: &Event) -> Result<()> {
        if self.json {
            let mut v = serde_json::to_value(e)?;
            v["build_id"] = json!(build_id);
            return self.write(&format!("{}\n", serde_json::to_string(&v)?));
        }
        let r = self.event_row(e);
        let line = format!(
            "{} {build_id} r{} {} → {} {} (attempt {}) by {}{}\n",
            r[1],
            r[0],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            if r[7].is_empty() {
                String::new()
            } else {
                format!(": {}", r[7])
            }
        );
        self.write(&line)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! `watch` on the in-memory store.

    use super::*;
    use crate::cli::fleet::{cache, scan::scan_cached};
    use crate::cli::terminal::Out;
    use crate::cli::testing::{act_with, settings, text, walk};
    use crate::model::Action;
    use crate::store::memory::MemoryStore;

    /// One sweep of `watch` (of `one` build, or of the prefix): what it said.
    pub(crate) async fn watch_once(
        settings: &Arc<Settings>,
        store: &AnyStore,
        one: Option<&str>,
        cache: Option<cache::Cache>,
    ) -> String {
        let (out, buf) = Out::buffered(false);
        watch(
            settings,
            store,
            one,
            (
                std::time::Duration::from_millis(1),
                Some(std::time::Duration::ZERO),
            ),
            cache,
            &out,
            &crate::app::SystemClock,
        )
        .await
        .unwrap();
        text(&buf)
    }

    /// A stage in progress with a heartbeat policy: `watch` (of the build,
    /// and of the prefix) says its heartbeat; a heartbeat of an attempt
    /// that is over (stored before a new start) is not said.
    #[tokio::test]
    async fn watch_says_the_heartbeat_of_the_attempt_in_progress() {
        let source: crate::protocol::Source = serde_json::from_str(
            r#"{"local_dir": "/nowhere", "prefix": "fleet/", "retry": {"states": {"5": {"heartbeat_timeout": "10m"}}}}"#,
        )
        .unwrap();
        let settings = Arc::new(Settings::from_source(&source).unwrap());
        let store = AnyStore::Memory(MemoryStore::new());
        let config = settings.for_build("rhel8-web").unwrap();
        let (quiet, _) = Out::buffered(false);
        for a in [
            Action::Init { restart: false },
            Action::Complete(0),
            Action::Start(5),
        ] {
            act_with(&config, &store, a, &quiet).await.unwrap();
        }
        let claim = crate::model::Claim {
            state: 5,
            run: Some(1),
            attempt: Some(1),
            by: crate::model::Actor {
                user: Some("packer".into()),
                ..Default::default()
            },
            at: crate::now(),
        };
        Builds::new(&config, &store).beat(&claim).await.unwrap();
        for one in [Some("rhel8-web"), None] {
            let said = watch_once(&settings, &store, one, None).await;
            assert!(
                said.contains("rhel8-web r3 5 in_progress heartbeat (attempt 1) by cli:packer"),
                "{one:?}: {said}"
            );
        }
        // A new start: the stored heartbeat is the old attempt's.
        act_with(&config, &store, Action::Start(5), &quiet)
            .await
            .unwrap();
        let said = watch_once(&settings, &store, Some("rhel8-web"), None).await;
        assert!(!said.contains("heartbeat"), "{said}");
    }

    /// An idle watch of a prefix costs listings only.
    #[tokio::test]
    async fn an_idle_watch_sweep_is_a_listing() {
        use crate::store::memory::{FaultyStore, Op};
        let store = AnyStore::Faulty(FaultyStore::new(MemoryStore::new()));
        let (quiet, _) = Out::buffered(false);
        for id in ["a", "b", "c"] {
            walk(&store, id, &quiet).await;
        }
        let AnyStore::Faulty(f) = &store else {
            unreachable!()
        };
        let (gets, lists) = (f.calls(Op::Get), f.calls(Op::List));
        let (out, _) = Out::buffered(false);
        watch(
            &settings(),
            &store,
            None,
            (
                std::time::Duration::from_millis(5),
                Some(std::time::Duration::from_millis(60)),
            ),
            None,
            &out,
            &crate::app::SystemClock,
        )
        .await
        .unwrap();
        let AnyStore::Faulty(f) = &store else {
            unreachable!()
        };
        assert!(f.calls(Op::List) - lists >= 3, "several sweeps");
        assert_eq!(
            f.calls(Op::Get) - gets,
            3,
            "each build read once, then only listed"
        );
    }

    /// A watch of a prefix starts from the cache: only the builds that
    /// changed since are read, and it says the same as without the cache.
    #[tokio::test]
    async fn a_watch_starts_from_the_cache() {
        use crate::store::memory::{FaultyStore, Op};
        let settings = settings();
        let store = AnyStore::Faulty(FaultyStore::new(MemoryStore::new()));
        let (quiet, _) = Out::buffered(false);
        for id in ["a", "b", "c"] {
            walk(&store, id, &quiet).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cache = cache::Cache::open_in(dir.path().to_path_buf(), &settings);
        scan_cached(&settings, &store, 4, None, Some(&mut cache))
            .await
            .unwrap();
        let config = settings.for_build("b").unwrap();
        act_with(&config, &store, Action::Retry(5), &quiet)
            .await
            .unwrap();
        let gets = |s: &AnyStore| match s {
            AnyStore::Faulty(f) => f.calls(Op::Get),
            _ => unreachable!(),
        };
        let once = |cache: Option<cache::Cache>| {
            let (settings, store) = (&settings, &store);
            async move {
                let before = gets(store);
                let said = watch_once(settings, store, None, cache).await;
                (said, gets(store) - before)
            }
        };
        let (cold, cold_reads) = once(None).await;
        let (warm, warm_reads) = once(Some(cache::Cache::open_in(
            dir.path().to_path_buf(),
            &settings,
        )))
        .await;
        assert_eq!(cold_reads, 3);
        assert_eq!(warm_reads, 1, "only the build that changed is read");
        assert_eq!(warm, cold);
        assert!(cold.contains("b r5 retry"), "{cold}");
    }

    #[tokio::test]
    async fn watch_prints_where_each_build_stands() {
        let store = AnyStore::Memory(MemoryStore::new());
        let (quiet, _) = Out::buffered(false);
        walk(&store, "rhel8-web", &quiet).await;
        let said = watch_once(&settings(), &store, None, None).await;
        assert!(
            said.contains("rhel8-web r4 fail 5 → 5 failed (attempt 1)"),
            "{said}"
        );
    }
}
