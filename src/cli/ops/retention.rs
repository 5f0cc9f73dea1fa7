//! Retention and recovery: `prune` removes (or moves) finished builds that
//! are old enough, never a live one and never one that changed since it was
//! judged; `restore` puts a stored version of a document back, as a new
//! revision, by compare-and-swap.

use crate::cli::terminal::{Out, Table};
use crate::config::{Config, Settings};
use crate::engine::Builds;
use crate::model::document::rfc3339;
use crate::model::{Document, Status};
use crate::store::{AnyStore, Fetched, Precondition, Store, StoreError, Versioning};
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use {crate::cli::Row, crate::cli::build::actor, crate::cli::fleet::scan::scan};

/// What prune did with one build, and why.
struct Decision {
    build_id: String,
    status: String,
    updated: String,
    action: String,
    why: String,
}

/// `--archive-to PREFIX`, checked: a prefix of the same store, beside the
/// one pruned, never a path that climbs out of it.
fn archive_prefix(settings: &Settings, given: &str) -> Result<String> {
    let p = given.trim();
    if p.starts_with('/') {
        bail!(
            "--archive-to {given:?} is a prefix in the same store (e.g. archive/), not a path: drop the leading /"
        );
    }
    let p = p.trim_end_matches('/');
    if p.is_empty()
        || p.split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        bail!(
            "--archive-to {given:?} must be a prefix of plain names (e.g. archive/images/): no empty, . or .. segments"
        );
    }
    let p = format!("{p}/");
    let pruned = settings.prefix();
    if pruned.is_empty() {
        // The builds are at the top of the store: the archive goes beside
        // them under a name no build can have (a build id starts with a
        // letter or a digit), so no build's removal ever reaches it.
        let first = p.split('/').next().unwrap_or_default();
        if crate::config::validate_build_id(first).is_ok() {
            bail!(
                "--archive-to {given:?}: the builds are at the top of the store (no prefix), where {first:?} could be a build's folder; name the archive with a leading _ (e.g. _archive/)"
            );
        }
        return Ok(p);
    }
    if p == pruned || pruned.starts_with(&p) || p.starts_with(pruned) {
        bail!("--archive-to {given:?} overlaps the prefix being pruned ({pruned})");
    }
    Ok(p)
}

/// `prune --older-than D [--dry-run] [--archive-to PREFIX]`.
pub(super) async fn prune(
    settings: &Arc<Settings>,
    store: &AnyStore,
    (older_than, cutoff): (Duration, crate::model::Timestamp),
    dry_run: bool,
    archive_to: Option<&str>,
    out: &Out,
) -> Result<()> {
    let archive_to = archive_to
        .map(|p| archive_prefix(settings, p))
        .transpose()?;
    let rows: Vec<Row> = scan(settings, store, 16, None).await?;
    let mut decisions = Vec::new();
    let mut failures = 0;
    for row in rows {
        let (status, updated, verdict) = match judge(&row, cutoff, older_than) {
            Err((status, updated, why)) => (status, updated, Err(Kept(why))),
            Ok(doc) => {
                let updated = rfc3339::format(&doc.updated_at);
                let verdict = if dry_run {
                    Ok(match &archive_to {
                        Some(p) => format!("would move to {p}"),
                        None => "would delete".into(),
                    })
                } else {
                    let config = settings.for_build(&row.build_id)?;
                    remove(&config, store, doc, archive_to.as_deref()).await
                };
                (doc.status.to_string(), updated, verdict)
            }
        };
        let (action, why) = match verdict {
            Ok(action) => (action, "finished and old enough".to_string()),
            Err(Kept(why)) => ("kept".to_string(), why),
            Err(Failed(e)) => {
                failures += 1;
                out.note(format!("error: {}: {e:#}", row.build_id));
                ("failed".to_string(), e.to_string())
            }
        };
        decisions.push(Decision {
            build_id: row.build_id.clone(),
            status,
            updated,
            action,
            why,
        });
    }
    print_decisions(&decisions, out)?;
    if failures > 0 {
        bail!(
            "{} could not be pruned (see above)",
            crate::cli::terminal::count(failures as u64, "build")
        );
    }
    Ok(())
}

/// A build prune may remove (finished, and old enough), or why it keeps
/// it: (status, updated, why).
fn judge(
    row: &Row,
    cutoff: crate::model::Timestamp,
    older_than: Duration,
) -> Result<&Document, (String, String, String)> {
    let doc = match &row.doc {
        Err(e) => {
            return Err((
                "unreadable".into(),
                "-".into(),
                format!("unreadable ({e}); repair it or `build-state restore` it"),
            ));
        }
        Ok(d) => d,
    };
    let kept = |why: String| {
        Err((
            doc.status.to_string(),
            rfc3339::format(&doc.updated_at),
            why,
        ))
    };
    if !matches!(doc.status, Status::Completed | Status::Cancelled) {
        return kept(format!("live: {}", doc.whereabouts()));
    }
    let left: Vec<String> = doc
        .resources
        .iter()
        .filter(|r| r.holding != crate::model::Holding::Released)
        .map(|r| format!("{} {} ({})", r.name, r.id, r.holding.as_str()))
        .collect();
    if !left.is_empty() {
        // Its document is the only record of them: pruned, they would be
        // forgotten and cost money until someone found them.
        return kept(crate::visible(&format!(
            "left {} behind: {}; delete them, then `build-state release {} ID...` (or let the pipeline's cleanup job do it)",
            crate::cli::terminal::count(left.len() as u64, "cloud resource"),
            left.join(", "),
            doc.build_id
        ))
        .into_owned());
    }
    if doc.updated_at > cutoff {
        return kept(format!(
            "updated less than {} ago",
            crate::model::time::format(older_than)
        ));
    }
    Ok(doc)
}

fn print_decisions(decisions: &[Decision], out: &Out) -> Result<()> {
    if out.json {
        let v: Vec<Value> = decisions
            .iter()
            .map(|d| json!({"build_id": d.build_id, "status": d.status, "updated_at": d.updated, "action": d.action, "why": d.why}))
            .collect();
        return out.print_json(&Value::Array(v));
    }
    let mut t = Table::new(&["BUILD", "STATUS", "UPDATED", "ACTION", "WHY"]);
    for d in decisions {
        t.row(vec![
            d.build_id.clone(),
            d.status.clone(),
            d.updated.clone(),
            d.action.clone(),
            d.why.clone(),
        ]);
    }
    out.table(&t)
}

use Removal::{Failed, Kept};

/// Why a build was not removed.
enum Removal {
    /// It changed since it was judged: kept, as it should be.
    Kept(String),
    /// The store failed.
    Failed(anyhow::Error),
}

/// Removes one judged build: its document first, with `If-Match` on the
/// ETag judged (a build that changed meanwhile is kept), then its archived
/// runs. With `archive_to`, copies everything there first (and removes the
/// copies again when the document turns out to have changed).
async fn remove(
    config: &Config,
    store: &AnyStore,
    judged: &Document,
    archive_to: Option<&str>,
) -> Result<String, Removal> {
    let key = config.state_key();
    let (body, etag) = match store.get(&key, None).await {
        Ok(Fetched::Found { body, etag }) => (body, etag),
        Ok(_) => return Err(Kept("deleted meanwhile".into())),
        Err(e) => return Err(Failed(e.into())),
    };
    if body != judged.to_bytes()
        && serde_json::from_slice::<Document>(&body).ok().as_ref() != Some(judged)
    {
        return Err(Kept("changed since it was judged".into()));
    }
    let build_prefix = format!("{}{}/", config.prefix(), config.build_id);
    let keys = store
        .list(&build_prefix)
        .await
        .map_err(|e| Failed(e.into()))?;
    let mut copied = Vec::new();
    if let Some(dest) = archive_to {
        for k in &keys {
            let target = format!("{dest}{}", &k[config.prefix().len()..]);
            let b = match store.get(k, None).await {
                Ok(Fetched::Found { body, .. }) => body,
                Ok(_) => continue,
                Err(e) => return Err(Failed(e.into())),
            };
            match store.put(&target, b, Precondition::Absent).await {
                Ok(_) => copied.push(target),
                Err(StoreError::Conflict) => {
                    undo(store, &copied).await;
                    return Err(Kept(format!("{target} exists already; nothing moved")));
                }
                Err(e) => {
                    undo(store, &copied).await;
                    return Err(Failed(e.into()));
                }
            }
        }
    }
    match store.delete_if(&key, &etag).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            undo(store, &copied).await;
            return Err(Kept(
                "changed since it was judged (its delete was refused)".into(),
            ));
        }
        Err(e) => {
            undo(store, &copied).await;
            return Err(Failed(e.into()));
        }
    }
    for k in keys.iter().filter(|k| **k != key) {
        store.delete(k).await.map_err(|e| Failed(e.into()))?;
    }
    Ok(match archive_to {
        Some(p) => format!("moved to {p}"),
        None => "deleted".into(),
    })
}

async fn undo(store: &AnyStore, copied: &[String]) {
    for k in copied {
        let _ = store.delete(k).await;
    }
}

/// One stored version, read and judged.
struct Candidate {
    version_id: String,
    stored_at: String,
    latest: bool,
    doc: Result<Document, String>,
}

/// `restore BUILD_ID [--version-id ID] [--yes]`.
pub(super) async fn restore(
    config: &Config,
    store: &AnyStore,
    version_id: Option<&str>,
    yes: bool,
    out: &Out,
) -> Result<()> {
    let key = config.state_key();
    // What is stored now, before anything is shown or asked: the restore
    // replaces exactly this, and nothing that lands while the prompt waits.
    let judged = match store.get(&key, None).await? {
        Fetched::Found { etag, .. } => Some(etag),
        _ => None,
    };
    let candidates = candidates(config, store).await?;
    if !out.json {
        out.table(&candidates_table(&candidates))?;
    }
    let (chosen, doc) = choose(config, &candidates, version_id)?;
    // The newest readable version: what the build recorded last of its
    // resources, none of which a restore may forget.
    let newest = candidates
        .iter()
        .filter_map(|c| c.doc.as_ref().ok())
        .max_by_key(|d| d.revision);
    // Revisions keep rising: above every revision any version has had.
    let highest = candidates
        .iter()
        .filter_map(|c| c.doc.as_ref().ok())
        .map(|d| d.revision)
        .max()
        .unwrap_or(doc.revision);
    let what = format!(
        "revision {} ({}, {}) of version {} stored {}",
        doc.revision, doc.state, doc.status, chosen.version_id, chosen.stored_at
    );
    if !yes
        && !out.ask(
            &format!("restore {} as {what}? [y/N] ", config.build_id),
            "restore asks before it writes, and there is no terminal to ask on: give --yes",
        )?
    {
        bail!("not restored");
    }
    // An event like any action's: its time from the store's clock.
    let restored = doc.restored(
        highest + 1,
        actor(),
        crate::app::Clock::now(&crate::app::StoreClock(store)),
        format!("restored {what}"),
        &config.ladder,
        newest,
    );
    // Compare-and-swap over what was judged, corrupt or not.
    let when = match &judged {
        Some(e) => Precondition::Matches(e),
        None => Precondition::Absent,
    };
    store
        .put(&key, restored.to_bytes(), when)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => anyhow!(
                "{} changed since its versions were listed (a write landed meanwhile); nothing written: run restore again to see it",
                config.build_id
            ),
            e => e.into(),
        })?;
    out.applied(&format!("restore ({what})"), &restored, true)
}

/// Every stored version of the build's document, read and judged, newest
/// first; refuses a store that keeps no versions.
async fn candidates(config: &Config, store: &AnyStore) -> Result<Vec<Candidate>> {
    let key = config.state_key();
    let bucket = config.location("");
    match store.versioning().await {
        Ok(Versioning::On | Versioning::Suspended) => {}
        Ok(Versioning::Off) => {
            if let Err(StoreError::NotVersioned(m)) = store.versions(&key).await {
                bail!("{m}");
            }
            bail!(
                "versioning is off on {bucket}: there is no earlier version to restore. Turn it on (aws s3api put-bucket-versioning --bucket BUCKET --versioning-configuration Status=Enabled); from then on every write keeps the previous version"
            );
        }
        Err(e) => return Err(e.into()),
    }
    let versions = store.versions(&key).await?;
    if versions.is_empty() {
        bail!(
            "{} has no stored version at {}",
            config.build_id,
            config.location(&key)
        );
    }
    let builds = Builds::new(config, store);
    let mut candidates = Vec::new();
    for v in versions.iter().filter(|v| !v.deleted) {
        let body = store.get_version(&key, &v.version_id).await?;
        candidates.push(Candidate {
            version_id: v.version_id.clone(),
            stored_at: rfc3339::format(&v.stored_at),
            latest: v.latest,
            doc: builds.decode(&key, &body).map_err(|e| e.kind.to_string()),
        });
    }
    Ok(candidates)
}

fn candidates_table(candidates: &[Candidate]) -> Table {
    let mut t = Table::new(&["VERSION", "STORED", "REVISION", "STATE", "STATUS"]);
    for c in candidates {
        let (rev, state, status) = match &c.doc {
            Ok(d) => (
                d.revision.to_string(),
                d.state.to_string(),
                d.status.to_string(),
            ),
            Err(e) => ("-".into(), "-".into(), format!("corrupt: {}", short(e))),
        };
        t.row(vec![
            format!(
                "{}{}",
                c.version_id,
                if c.latest { " (current)" } else { "" }
            ),
            c.stored_at.clone(),
            rev,
            state,
            status,
        ]);
    }
    t
}

/// The version to restore: the one named, else the newest that is not
/// corrupt (and not the current one).
fn choose<'c>(
    config: &Config,
    candidates: &'c [Candidate],
    version_id: Option<&str>,
) -> Result<(&'c Candidate, &'c Document)> {
    let chosen = match version_id {
        Some(id) => candidates
            .iter()
            .find(|c| c.version_id == id)
            .ok_or_else(|| anyhow!("no stored version {id:?} of {}", config.build_id))?,
        None => candidates.iter().find(|c| c.doc.is_ok()).ok_or_else(|| {
            anyhow!(
                "every stored version of {} is corrupt; repair one by hand",
                config.build_id
            )
        })?,
    };
    let doc = chosen.doc.as_ref().map_err(|e| {
        anyhow!(
            "version {} is corrupt ({e}); choose another",
            chosen.version_id
        )
    })?;
    if chosen.latest && version_id.is_none() {
        bail!(
            "the current document of {} is not corrupt: nothing to restore (give --version-id to go back to an earlier version)",
            config.build_id
        );
    }
    Ok((chosen, doc))
}

fn short(s: &str) -> String {
    let s: String = s.chars().take(80).collect();
    s
}

#[cfg(test)]
mod tests {
    //! `prune` against a build that changes meanwhile.

    use super::*;
    use crate::cli::build::current;
    use crate::cli::fleet::scan::scan;
    use crate::cli::terminal::Out;
    use crate::cli::testing::{act_with, settings, text};
    use crate::model::{Action, Actor, Update};
    use crate::store::memory::MemoryStore;

    /// A build that changes between prune's judging and its delete is kept:
    /// the delete carries If-Match on the ETag judged.
    #[tokio::test]
    async fn prune_keeps_a_build_that_changed_meanwhile() {
        use crate::store::memory::{Fault, FaultyStore, Op};
        let settings = settings();
        let faulty = FaultyStore::new(MemoryStore::new());
        let store = AnyStore::Faulty(faulty);
        let (quiet, _) = Out::buffered(false);
        for id in ["done-a", "done-b"] {
            let config = settings.for_build(id).unwrap();
            act_with(&config, &store, Action::Init { restart: false }, &quiet)
                .await
                .unwrap();
            act_with(
                &config,
                &store,
                Action::Cancel {
                    reason: "superseded".into(),
                },
                &quiet,
            )
            .await
            .unwrap();
        }
        // Just before the first delete, someone restarts done-a.
        let key = settings.for_build("done-a").unwrap().state_key();
        let restarted = {
            let c = settings.for_build("done-a").unwrap();
            let cur = current(&c, &store).await.unwrap();
            let u = Update::new(Action::Restart, Actor::default(), crate::now());
            match crate::model::apply(Some(&cur), &u, &c.rules()).unwrap() {
                crate::model::Outcome::Restart { document, .. } => document.to_bytes(),
                other => panic!("{other:?}"),
            }
        };
        if let AnyStore::Faulty(f) = &store {
            f.on(
                Op::Delete,
                1,
                Fault::Interleave(Box::new(move |m: &MemoryStore| m.set(&key, restarted))),
            );
        }
        let (out, buf) = Out::buffered(false);
        prune(
            &settings,
            &store,
            (std::time::Duration::ZERO, crate::now()),
            false,
            None,
            &out,
        )
        .await
        .unwrap();
        let table = text(&buf);
        let line = |id: &str| {
            table
                .lines()
                .find(|l| l.starts_with(id))
                .unwrap()
                .to_string()
        };
        let a = line("done-a");
        assert!(
            a.contains(" kept ")
                && a.contains("changed since it was judged (its delete was refused)"),
            "{table}"
        );
        let b = line("done-b");
        assert!(
            b.contains(" deleted ") && b.contains("finished and old enough"),
            "{table}"
        );
        let rows = scan(&settings, &store, 1, None).await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.build_id.as_str()).collect();
        assert_eq!(ids, ["done-a"]);
        assert_eq!(rows[0].doc.as_ref().unwrap().run, 2, "the restart survived");
    }

    /// A write that lands while restore's question waits is never
    /// overwritten: the restore replaces only what it listed and showed.
    #[tokio::test]
    async fn restore_keeps_a_write_that_lands_while_it_asks() {
        let settings = settings();
        let config = settings.for_build("rhel8-web").unwrap();
        // 'static, so that the answer can write through it.
        let store: &'static AnyStore =
            Box::leak(Box::new(AnyStore::Memory(MemoryStore::versioned())));
        let (quiet, _) = Out::buffered(false);
        for a in [
            Action::Init { restart: false },
            Action::Complete(0),
            Action::Start(5),
        ] {
            act_with(&config, store, a, &quiet).await.unwrap();
        }
        // While the person reads the question, the pipeline's fail lands.
        let cur = current(&config, store).await.unwrap();
        let u = Update::new(
            Action::Fail {
                state: 5,
                error: crate::model::ErrorInfo::new(
                    "packer: ssh timeout".into(),
                    crate::model::FailureKind::Transient,
                ),
            },
            Actor::default(),
            crate::now(),
        );
        let landed = match crate::model::apply(Some(&cur), &u, &config.rules()).unwrap() {
            crate::model::Outcome::Write(d) => d.to_bytes(),
            other => panic!("{other:?}"),
        };
        let key = config.state_key();
        let AnyStore::Memory(mem) = store else {
            unreachable!()
        };
        let (out, buf) = Out::buffered(false);
        let out = out.answering(move |question| {
            assert!(
                question.starts_with("restore rhel8-web as revision 2"),
                "{question}"
            );
            mem.set(&key, landed.clone());
            true
        });
        let err = restore(&config, store, Some("v2"), false, &out)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("changed since its versions were listed"),
            "{err}"
        );
        let after = current(&config, store).await.unwrap();
        assert_eq!(
            (after.revision, after.status),
            (4, crate::model::Status::Failed),
            "the fail that landed is what is stored"
        );
        assert!(text(&buf).contains("v2"), "the versions were shown");
    }

    /// `--archive-to` names a prefix of the same store: never a path out
    /// of it, never an absolute path, never the prefix pruned.
    #[tokio::test]
    async fn archive_to_is_a_plain_prefix() {
        let settings = settings();
        let store = AnyStore::Memory(MemoryStore::new());
        let (out, buf) = Out::buffered(false);
        for (given, says) in [
            ("../../../outside", "no empty, . or .. segments"),
            ("archive/../..", "no empty, . or .. segments"),
            ("/var/archive", "not a path: drop the leading /"),
            ("fleet/", "overlaps the prefix being pruned"),
            ("fleet/old/", "overlaps the prefix being pruned"),
            ("", "no empty, . or .. segments"),
        ] {
            let err = prune(
                &settings,
                &store,
                (Duration::ZERO, crate::now()),
                false,
                Some(given),
                &out,
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains(says), "{given:?}: {err}");
        }
        assert_eq!(text(&buf), "", "nothing judged, nothing printed");
        assert_eq!(
            archive_prefix(&settings, " archive/images ").unwrap(),
            "archive/images/"
        );
        // Builds at the top of the store (the default prefix): an archive
        // beside them, under a name no build can have.
        let top: crate::protocol::Source =
            serde_json::from_str(r#"{"local_dir": "/nowhere"}"#).unwrap();
        let top = Settings::from_source(&top).unwrap();
        assert_eq!(archive_prefix(&top, "_archive").unwrap(), "_archive/");
        let err = archive_prefix(&top, "archive/").unwrap_err().to_string();
        assert!(err.contains("name the archive with a leading _"), "{err}");
    }
}
