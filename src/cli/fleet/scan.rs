//! The fleet scan: every build under the prefix, read `concurrency` at a
//! time, through the cache when there is one (a fleet that did not change
//! costs its listing).

use super::cache::Cache;
use crate::Notes;
use crate::config::Settings;
use crate::engine::{Builds, ErrorKind};
use crate::model::{Document, Heartbeat, Status};
use crate::store::{AnyStore, Store};
use anyhow::{Result, anyhow};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One build found under the prefix.
pub(crate) struct Row {
    /// The build.
    pub(crate) build_id: String,
    /// Its document, or why it cannot be read.
    pub(crate) doc: Result<Document, String>,
    /// The heartbeat of its attempt in progress, if it sent one.
    pub(crate) heartbeat: Option<Heartbeat>,
}

/// Reads every build under the prefix, `concurrency` at a time, with
/// progress to `progress` when it takes long.
pub(crate) async fn scan(
    config: &Arc<Settings>,
    store: &AnyStore,
    concurrency: usize,
    progress: Option<&Notes>,
) -> Result<Vec<Row>> {
    scan_cached(config, store, concurrency, progress, None).await
}

/// [`scan`], reading only the documents whose listing tag changed since
/// `cache` saw them: a fleet that did not change costs its listing.
pub(crate) async fn scan_cached(
    config: &Arc<Settings>,
    store: &AnyStore,
    concurrency: usize,
    progress: Option<&Notes>,
    mut cache: Option<&mut Cache>,
) -> Result<Vec<Row>> {
    let (builds, beats) = listed(config, store).await?;
    if let Some(c) = cache.as_deref_mut() {
        c.retain(&builds.iter().map(|(id, _)| id.clone()).collect());
    }
    let total = builds.len();
    let mut rows = Vec::with_capacity(total);
    let mut to_read = Vec::new();
    for (id, tag) in builds {
        let hit = cache
            .as_deref()
            .and_then(|c| c.get(&id, &tag))
            .filter(|d| d.build_id == id && d.verify(&config.ladder).is_ok());
        match hit {
            Some(doc) => rows.push(Row {
                build_id: id,
                doc: Ok(doc.clone()),
                heartbeat: None,
            }),
            None => to_read.push((id, tag)),
        }
    }
    read_documents(
        config,
        store,
        concurrency,
        progress,
        cache.as_deref_mut(),
        to_read,
        total,
        &mut rows,
    )
    .await;
    heartbeats(
        config,
        store,
        concurrency,
        &mut rows,
        &beats,
        cache.as_deref_mut(),
    )
    .await;
    if let Some(c) = cache {
        c.save();
    }
    rows.sort_by(|a, b| a.build_id.cmp(&b.build_id));
    Ok(rows)
}

/// The builds under the prefix, each with its document's listing tag, and
/// the heartbeat objects' tags by build.
async fn listed(
    config: &Settings,
    store: &AnyStore,
) -> Result<(Vec<(String, String)>, BTreeMap<String, String>)> {
    let listed = store
        .list_tags(config.prefix())
        .await
        .map_err(|e| anyhow!("listing {}: {e}", config.location(config.prefix())))?;
    let mut beats: BTreeMap<String, String> = BTreeMap::new();
    let builds: Vec<(String, String)> = listed
        .into_iter()
        .filter_map(|l| {
            if let Some(id) = config.build_id_of_heartbeat_key(&l.key) {
                beats.insert(id, l.tag);
                return None;
            }
            config.build_id_of_key(&l.key).map(|id| (id, l.tag))
        })
        .collect();
    Ok((builds, beats))
}

/// Reads the documents the cache did not have (`to_read`), `concurrency`
/// at a time, into `rows` and the cache, saying progress every second.
#[allow(clippy::too_many_arguments)]
async fn read_documents(
    config: &Arc<Settings>,
    store: &AnyStore,
    concurrency: usize,
    progress: Option<&Notes>,
    mut cache: Option<&mut Cache>,
    to_read: Vec<(String, String)>,
    total: usize,
    rows: &mut Vec<Row>,
) {
    let started = std::time::Instant::now();
    let mut last_report = started;
    let mut results = futures_util::stream::iter(to_read.into_iter().map(|(id, tag)| async move {
        let doc = match config.for_build(&id) {
            Err(e) => Err(e.to_string()),
            Ok(c) => match Builds::new(&c, store).current().await {
                Ok(Some(cur)) => Ok(cur.doc),
                Ok(None) => Err("deleted while listing".to_string()),
                Err(e) => Err(match e.kind {
                    ErrorKind::Store(s) => s.to_string(),
                    k => k.to_string(),
                }),
            },
        };
        (
            Row {
                build_id: id,
                doc,
                heartbeat: None,
            },
            tag,
        )
    }))
    .buffer_unordered(concurrency);
    while let Some((row, tag)) = results.next().await {
        if let (Some(c), Ok(doc)) = (cache.as_deref_mut(), &row.doc) {
            c.put(&row.build_id, &tag, doc);
        }
        rows.push(row);
        if let Some(p) = progress
            && last_report.elapsed().as_millis() >= 1000
        {
            last_report = std::time::Instant::now();
            p.progress(format!("read {}/{total} builds ...", rows.len()));
        }
    }
    if let Some(p) = progress
        && started.elapsed().as_millis() >= 1000
    {
        p.progress(format!(
            "read {total}/{total} builds in {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
}

/// The heartbeats of the builds whose stage is in progress and that sent
/// one (`beats`: the listed heartbeat objects and their tags), read only
/// when their tag changed since the cache saw them; each kept in its row
/// when it belongs to the attempt in progress. A heartbeat that cannot be
/// read is left out: it only shows a sign of life.
async fn heartbeats(
    config: &Arc<Settings>,
    store: &AnyStore,
    concurrency: usize,
    rows: &mut [Row],
    beats: &BTreeMap<String, String>,
    mut cache: Option<&mut Cache>,
) {
    let mut to_read = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let Ok(doc) = &row.doc else { continue };
        let Some(tag) = beats.get(&row.build_id) else {
            continue;
        };
        if doc.status != Status::InProgress {
            continue;
        }
        match cache
            .as_deref()
            .and_then(|c| c.heartbeat(&row.build_id, tag))
        {
            Some(h) => row.heartbeat = doc.own_heartbeat(Some(h)).cloned(),
            None => to_read.push((i, row.build_id.clone(), tag.clone())),
        }
    }
    let mut read = futures_util::stream::iter(to_read.into_iter().map(|(i, id, tag)| async move {
        let beat = match config.for_build(&id) {
            Ok(c) => Builds::new(&c, store).heartbeat().await.ok().flatten(),
            Err(_) => None,
        };
        (i, id, tag, beat)
    }))
    .buffer_unordered(concurrency);
    while let Some((i, id, tag, beat)) = read.next().await {
        let Some(beat) = beat else { continue };
        if let Some(c) = cache.as_deref_mut() {
            c.put_heartbeat(&id, &tag, &beat);
        }
        if let Ok(doc) = &rows[i].doc {
            rows[i].heartbeat = doc.own_heartbeat(Some(&beat)).cloned();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scan and its cache on the in-memory store.

    use super::*;
    use crate::cli::terminal::Out;
    use crate::cli::testing::{act_with, settings, text, walk};
    use crate::model::{Action, Status};
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn list_reads_every_build_and_names_the_unreadable() {
        let store = AnyStore::Memory(MemoryStore::new());
        let (out, buf) = Out::buffered(false);
        walk(&store, "rhel8-web", &out).await;
        walk(&store, "rhel9-db", &out).await;
        text(&buf);
        if let AnyStore::Memory(m) = &store {
            m.set("fleet/broken/state.json", b"{not json".to_vec());
            m.set("fleet/notes.txt", b"not a build".to_vec());
        }
        let rows = scan(&settings(), &store, 4, None).await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.build_id.as_str()).collect();
        assert_eq!(ids, ["broken", "rhel8-web", "rhel9-db"]);
        out.list(&rows, &settings().retry, crate::now()).unwrap();
        let table = text(&buf);
        assert!(table.starts_with("BUILD"), "{table}");
        assert!(table.contains("broken     -      -"), "{table}");
        assert!(table.contains("unreadable"), "{table}");
        assert!(table.contains("packer: ssh timeout"), "{table}");
    }

    /// A second scan of an unchanged fleet reads no document; a changed
    /// build is read again; a corrupt cache is rebuilt, never trusted.
    #[tokio::test]
    async fn the_cache_reads_only_what_changed() {
        use crate::store::memory::{FaultyStore, Op};
        let settings = settings();
        let store = AnyStore::Faulty(FaultyStore::new(MemoryStore::new()));
        let (quiet, _) = Out::buffered(false);
        for id in ["a", "b", "c"] {
            walk(&store, id, &quiet).await;
        }
        let gets = |s: &AnyStore| match s {
            AnyStore::Faulty(f) => f.calls(Op::Get),
            _ => unreachable!(),
        };
        let dir = tempfile::tempdir().unwrap();
        let scan_once = |store: &'static AnyStore| {
            let dir = dir.path().to_path_buf();
            let settings = settings.clone();
            async move {
                let mut cache = Cache::open_in(dir, &settings);
                scan_cached(&settings, store, 4, None, Some(&mut cache))
                    .await
                    .unwrap()
            }
        };
        let store: &'static AnyStore = Box::leak(Box::new(store));
        let g0 = gets(store);
        let first = scan_once(store).await;
        assert_eq!(gets(store) - g0, 3, "a cold scan reads every document");
        let g1 = gets(store);
        let second = scan_once(store).await;
        assert_eq!(gets(store) - g1, 0, "an unchanged fleet: its listing only");
        let docs = |rows: &[Row]| {
            rows.iter()
                .map(|r| r.doc.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(docs(&first), docs(&second));
        // One build changes: it alone is read.
        let config = settings.for_build("b").unwrap();
        act_with(&config, store, Action::Retry(5), &quiet)
            .await
            .unwrap();
        let g2 = gets(store);
        let third = scan_once(store).await;
        assert!(
            gets(store) - g2 >= 1 && gets(store) - g2 <= 2,
            "the changed build only"
        );
        assert_eq!(third[1].doc.as_ref().unwrap().status, Status::Pending);
        // A corrupt cache is rebuilt: every document read again.
        let path = Cache::open_in(dir.path().to_path_buf(), &settings)
            .path()
            .to_path_buf();
        std::fs::write(&path, b"{not json").unwrap();
        let g3 = gets(store);
        let fourth = scan_once(store).await;
        assert_eq!(gets(store) - g3, 3);
        assert_eq!(docs(&fourth), docs(&third));
    }

    /// Replaces a good cache file at `path` with `plant` (`copy`: where a
    /// link's copy goes); false when this user cannot plant it.
    fn plant_at(path: &std::path::Path, copy: &std::path::Path, plant: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        match plant {
            "mode 644" => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap()
            }
            // Only root may give a file away; others skip this one.
            "another owner" if std::os::unix::fs::chown(path, Some(65534), None).is_err() => {
                return false;
            }
            "/dev/zero" => {
                std::fs::remove_file(path).unwrap();
                std::os::unix::fs::symlink("/dev/zero", path).unwrap();
            }
            "link" => {
                std::fs::copy(path, copy).unwrap();
                std::fs::remove_file(path).unwrap();
                std::os::unix::fs::symlink(copy, path).unwrap();
            }
            "fifo" => {
                std::fs::remove_file(path).unwrap();
                assert!(
                    std::process::Command::new("mkfifo")
                        .arg(path)
                        .status()
                        .unwrap()
                        .success()
                );
            }
            _ => {}
        }
        true
    }

    /// Only a cache file of this user's own is trusted: one others could
    /// write (mode 644), one another user owns, a link to a copy, a link
    /// to /dev/zero, a FIFO (no hang) are ignored and rebuilt within a
    /// second, with a note; every document is read again.
    #[tokio::test]
    async fn a_cache_file_not_its_own_is_ignored() {
        use crate::store::memory::{FaultyStore, Op};
        let settings = settings();
        let store = AnyStore::Faulty(FaultyStore::new(MemoryStore::new()));
        let (quiet, _) = Out::buffered(false);
        for id in ["a", "b"] {
            walk(&store, id, &quiet).await;
        }
        let gets = || match &store {
            AnyStore::Faulty(f) => f.calls(Op::Get),
            _ => unreachable!(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = Cache::open_in(dir.path().to_path_buf(), &settings)
            .path()
            .to_path_buf();
        let copy = dir.path().join("copy.json");
        for plant in [
            "trusted",
            "mode 644",
            "another owner",
            "link",
            "/dev/zero",
            "fifo",
        ] {
            // A good cache first, then the plant.
            let _ = std::fs::remove_file(&path);
            let mut cache = Cache::open_in(dir.path().to_path_buf(), &settings);
            scan_cached(&settings, &store, 4, None, Some(&mut cache))
                .await
                .unwrap();
            if !plant_at(&path, &copy, plant) {
                continue;
            }
            let (before, started) = (gets(), std::time::Instant::now());
            let notes = std::sync::Arc::new(crate::Notes::new());
            let mut cache =
                Cache::open_in(dir.path().to_path_buf(), &settings).with_notes(notes.clone());
            scan_cached(&settings, &store, 4, None, Some(&mut cache))
                .await
                .unwrap();
            let read = gets() - before;
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{plant}: {:?}",
                started.elapsed()
            );
            let said = notes.take().join("\n");
            if plant == "trusted" {
                assert_eq!(read, 0, "its own cache is used");
            } else {
                assert_eq!(read, 2, "{plant}: every document read again");
                assert!(said.contains("is not to be trusted"), "{plant}: {said}");
            }
        }
    }

    /// A long-lived cache (`serve`) writes its file only when a scan read
    /// something new.
    #[tokio::test]
    async fn a_long_lived_cache_is_written_when_it_changed() {
        let settings = settings();
        let store = AnyStore::Memory(MemoryStore::new());
        let (quiet, _) = Out::buffered(false);
        walk(&store, "a", &quiet).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cache = Cache::open_in(dir.path().to_path_buf(), &settings);
        let path = cache.path().to_path_buf();
        scan_cached(&settings, &store, 4, None, Some(&mut cache))
            .await
            .unwrap();
        assert!(path.exists(), "the first scan saved what it read");
        std::fs::remove_file(&path).unwrap();
        scan_cached(&settings, &store, 4, None, Some(&mut cache))
            .await
            .unwrap();
        assert!(!path.exists(), "an unchanged fleet: nothing written");
        walk(&store, "b", &quiet).await;
        scan_cached(&settings, &store, 4, None, Some(&mut cache))
            .await
            .unwrap();
        assert!(path.exists(), "a new build: saved again");
    }

    /// The cache holds every document's vars and errors: its directory is
    /// 0700, its file 0600, and a link planted at the old temporary name is
    /// never followed.
    #[tokio::test]
    async fn the_cache_is_private_and_follows_no_link() {
        use std::os::unix::fs::PermissionsExt;
        let settings = settings();
        let store = AnyStore::Memory(MemoryStore::new());
        let (quiet, _) = Out::buffered(false);
        walk(&store, "a", &quiet).await;
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let victim = top.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(format!(".{}.tmp", std::process::id())))
            .unwrap();
        let mut cache = Cache::open_in(dir.clone(), &settings);
        scan_cached(&settings, &store, 4, None, Some(&mut cache))
            .await
            .unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(cache.path()), 0o600);
    }

    /// A document nested as deep as a reader takes is cached and read back
    /// (the cache used to nest it three levels deeper, past the limit).
    #[tokio::test]
    async fn a_deep_document_stays_cached() {
        let settings = settings();
        let store = AnyStore::Memory(MemoryStore::new());
        let (quiet, _) = Out::buffered(false);
        walk(&store, "deep", &quiet).await;
        let config = settings.for_build("deep").unwrap();
        let mut doc = crate::cli::build::current(&config, &store).await.unwrap();
        let nested = |d: usize| -> serde_json::Value {
            serde_json::from_str(&format!("{}{}", "[".repeat(d), "]".repeat(d))).unwrap()
        };
        let deepest = (1..127)
            .rev()
            .find(|&d| {
                doc.vars.insert("deep".into(), nested(d));
                serde_json::from_slice::<Document>(&doc.to_bytes()).is_ok()
            })
            .unwrap();
        assert!(deepest > 100, "{deepest}");
        let dir = tempfile::tempdir().unwrap();
        let mut cache = Cache::open_in(dir.path().to_path_buf(), &settings);
        cache.put("deep", "t1", &doc);
        cache.save();
        let again = Cache::open_in(dir.path().to_path_buf(), &settings);
        assert_eq!(
            again.get("deep", "t1"),
            Some(&doc),
            "read back, not rebuilt"
        );
    }
}
