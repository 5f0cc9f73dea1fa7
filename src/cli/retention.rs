//! Retention and recovery: `prune` removes (or moves) finished builds that
//! are old enough, never a live one and never one that changed since it was
//! judged; `restore` puts a stored version of a document back, as a new
//! revision, by compare-and-swap.

use super::output::{Out, Table};
use super::{Row, build::actor, scan::scan};
use crate::config::{Config, Settings};
use crate::engine::Builds;
use crate::model::document::rfc3339;
use crate::model::{Document, Status};
use crate::store::{AnyStore, Fetched, Precondition, Store, StoreError, Versioning};
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// What prune did with one build, and why.
struct Decision {
    build_id: String,
    status: String,
    updated: String,
    action: String,
    why: String,
}

/// `prune --older-than D [--dry-run] [--archive-to PREFIX]`.
pub async fn prune(
    settings: &Arc<Settings>,
    store: &AnyStore,
    older_than: Duration,
    dry_run: bool,
    archive_to: Option<&str>,
    out: &Out,
) -> Result<()> {
    let archive_to = archive_to.map(|p| {
        let p = p.trim().trim_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        }
    });
    if archive_to.as_deref() == Some(settings.prefix()) {
        bail!("--archive-to names the prefix being pruned");
    }
    let cutoff = crate::now()
        - chrono::Duration::from_std(older_than)
            .map_err(|_| anyhow!("--older-than is too long"))?;
    let rows: Vec<Row> = scan(settings, store, 16, None).await?;
    let mut decisions = Vec::new();
    let mut failures = 0;
    for row in rows {
        let keep = |status: String, updated: String, why: String| Decision {
            build_id: row.build_id.clone(),
            status,
            updated,
            action: "kept".into(),
            why,
        };
        let doc = match &row.doc {
            Err(e) => {
                decisions.push(keep(
                    "unreadable".into(),
                    "-".into(),
                    format!("unreadable ({e}); repair it or `build-state restore` it"),
                ));
                continue;
            }
            Ok(d) => d,
        };
        let updated = rfc3339::format(&doc.updated_at);
        if !matches!(doc.status, Status::Completed | Status::Cancelled) {
            decisions.push(keep(
                doc.status.to_string(),
                updated,
                format!("live: {}", doc.whereabouts()),
            ));
            continue;
        }
        if doc.updated_at > cutoff {
            decisions.push(keep(
                doc.status.to_string(),
                updated,
                format!(
                    "updated less than {} ago",
                    crate::model::duration::format(older_than)
                ),
            ));
            continue;
        }
        let config = settings.for_build(&row.build_id)?;
        let decision = if dry_run {
            Decision {
                build_id: row.build_id.clone(),
                status: doc.status.to_string(),
                updated,
                action: match &archive_to {
                    Some(p) => format!("would move to {p}"),
                    None => "would delete".into(),
                },
                why: "finished and old enough".into(),
            }
        } else {
            match remove(&config, store, doc, archive_to.as_deref()).await {
                Ok(action) => Decision {
                    build_id: row.build_id.clone(),
                    status: doc.status.to_string(),
                    updated,
                    action,
                    why: "finished and old enough".into(),
                },
                Err(Kept(why)) => Decision {
                    build_id: row.build_id.clone(),
                    status: doc.status.to_string(),
                    updated,
                    action: "kept".into(),
                    why,
                },
                Err(Failed(e)) => {
                    failures += 1;
                    out.note(format!("error: {}: {e:#}", row.build_id));
                    Decision {
                        build_id: row.build_id.clone(),
                        status: doc.status.to_string(),
                        updated,
                        action: "failed".into(),
                        why: e.to_string(),
                    }
                }
            }
        };
        decisions.push(decision);
    }
    if out.json {
        let v: Vec<Value> = decisions
            .iter()
            .map(|d| json!({"build_id": d.build_id, "status": d.status, "updated_at": d.updated, "action": d.action, "why": d.why}))
            .collect();
        out.print_json(&Value::Array(v))?;
    } else {
        let mut t = Table::new(&["BUILD", "STATUS", "UPDATED", "ACTION", "WHY"]);
        for d in &decisions {
            t.row(vec![
                d.build_id.clone(),
                d.status.clone(),
                d.updated.clone(),
                d.action.clone(),
                d.why.clone(),
            ]);
        }
        out.table(&t)?;
    }
    if failures > 0 {
        bail!(
            "{} could not be pruned (see above)",
            super::output::count(failures as u64, "build")
        );
    }
    Ok(())
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
pub async fn restore(
    config: &Config,
    store: &AnyStore,
    version_id: Option<&str>,
    yes: bool,
    out: &Out,
) -> Result<()> {
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
    let mut t = Table::new(&["VERSION", "STORED", "REVISION", "STATE", "STATUS"]);
    for c in &candidates {
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
    if !out.json {
        out.table(&t)?;
    }
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
        && !confirm(
            &format!("restore {} as {what}? [y/N] ", config.build_id),
            out,
        )?
    {
        bail!("not restored");
    }
    let restored = doc.restored(
        highest + 1,
        actor(),
        crate::now(),
        format!("restored {what}"),
        &config.ladder,
    );
    // Compare-and-swap over whatever is stored now, corrupt or not.
    let when_etag = match store.get(&key, None).await? {
        Fetched::Found { etag, .. } => Some(etag),
        _ => None,
    };
    let when = match &when_etag {
        Some(e) => Precondition::Matches(e),
        None => Precondition::Absent,
    };
    store
        .put(&key, restored.to_bytes(), when)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => anyhow!(
                "{} changed while restoring; nothing written, run it again",
                config.build_id
            ),
            e => e.into(),
        })?;
    out.applied(&format!("restore ({what})"), &restored, true)
}

fn short(s: &str) -> String {
    let s: String = s.chars().take(80).collect();
    s
}

/// Asks on the terminal; refuses without one.
fn confirm(question: &str, out: &Out) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("restore asks before it writes, and there is no terminal to ask on: give --yes");
    }
    out.prompt(question);
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

#[cfg(test)]
mod tests {
    //! `prune` against a build that changes meanwhile.

    use super::*;
    use crate::cli::build::current;
    use crate::cli::build::tests::{act_with, settings, text};
    use crate::cli::output::Out;
    use crate::cli::scan::scan;
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
            std::time::Duration::ZERO,
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
}
