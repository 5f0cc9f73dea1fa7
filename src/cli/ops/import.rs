//! `import-sqlite`: migrate builds from the old per-build SQLite databases
//! (`builds` and `state_history`) into documents whose history reproduces
//! the old events, through the same transitions as the resource.

use crate::cli::terminal::{Out, Table};
use crate::config::Settings;
use crate::engine::Builds;
use crate::model::{
    Action, Actor, Document, Outcome, Refusal, Rules, Status, Timestamp, Update, apply,
};
use crate::store::AnyStore;
use anyhow::{Context, Result, anyhow, bail};
use chrono::{NaiveDateTime, TimeZone, Utc};
use rusqlite::{Connection, OpenFlags, types::ValueRef};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

struct OldBuild {
    build_id: String,
    current_state: u32,
    cloud_provider: Option<String>,
    image_type: Option<String>,
    start_time: Option<Timestamp>,
    status: String,
    history: Vec<OldEvent>,
}

struct OldEvent {
    id: i64,
    state: u32,
    at: Timestamp,
    status: String,
    error: Option<String>,
}

fn timestamp(v: ValueRef<'_>) -> Result<Option<Timestamp>> {
    Ok(match v {
        ValueRef::Null => None,
        ValueRef::Integer(secs) => Utc.timestamp_opt(secs, 0).single(),
        ValueRef::Real(secs) => Utc.timestamp_opt(secs as i64, 0).single(),
        ValueRef::Text(t) => {
            let s = String::from_utf8_lossy(t).trim().to_string();
            let parsed = crate::model::document::rfc3339::parse(&s).ok().or_else(|| {
                [
                    "%Y-%m-%d %H:%M:%S%.f",
                    "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%d %H:%M",
                ]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(&s, f).ok())
                .map(|n| n.and_utc())
            });
            Some(parsed.ok_or_else(|| anyhow!("{s:?} is not a date and time"))?)
        }
        ValueRef::Blob(_) => bail!("a timestamp is a blob"),
    })
}

fn read_db(path: &Path) -> Result<Vec<OldBuild>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| anyhow!("cannot open {} as SQLite: {e}", path.display()))?;
    let unreadable = |e: rusqlite::Error| {
        anyhow!(
            "{} is not a readable build-state database of the old scripts (tables builds and state_history): {e}",
            path.display()
        )
    };
    let mut q = conn
        .prepare("SELECT build_id, current_state, cloud_provider, image_type, start_time, status FROM builds ORDER BY build_id")
        .map_err(unreadable)?;
    let mut builds = Vec::new();
    let mut rows = q.query([]).map_err(unreadable)?;
    while let Some(r) = rows.next().map_err(unreadable)? {
        let build_id: String = r.get(0).map_err(unreadable)?;
        let ctx = |what: &str| format!("{}: build {build_id:?}: {what}", path.display());
        let state: i64 = r.get(1).with_context(|| ctx("current_state"))?;
        builds.push(OldBuild {
            current_state: u32::try_from(state)
                .map_err(|_| anyhow!("{}", ctx("current_state is negative")))?,
            cloud_provider: r.get(2).with_context(|| ctx("cloud_provider"))?,
            image_type: r.get(3).with_context(|| ctx("image_type"))?,
            start_time: timestamp(r.get_ref(4)?).with_context(|| ctx("start_time"))?,
            status: r
                .get::<_, Option<String>>(5)
                .with_context(|| ctx("status"))?
                .unwrap_or_default(),
            build_id,
            history: Vec::new(),
        });
    }
    let mut q = conn
        .prepare("SELECT id, state, timestamp, status, error_message FROM state_history WHERE build_id = ?1 ORDER BY timestamp, id")
        .map_err(unreadable)?;
    for b in &mut builds {
        let mut rows = q.query([&b.build_id]).map_err(unreadable)?;
        while let Some(r) = rows.next().map_err(unreadable)? {
            let id: i64 = r.get(0)?;
            let ctx = |what: &str| {
                format!(
                    "{}: build {:?}: state_history id {id}: {what}",
                    path.display(),
                    b.build_id
                )
            };
            let state: i64 = r.get(1).with_context(|| ctx("state"))?;
            b.history.push(OldEvent {
                id,
                state: u32::try_from(state).map_err(|_| anyhow!("{}", ctx("state is negative")))?,
                at: timestamp(r.get_ref(2)?)
                    .with_context(|| ctx("timestamp"))?
                    .ok_or_else(|| anyhow!("{}", ctx("timestamp is empty")))?,
                status: r
                    .get::<_, Option<String>>(3)
                    .with_context(|| ctx("status"))?
                    .unwrap_or_default(),
                error: r.get(4).with_context(|| ctx("error_message"))?,
            });
        }
    }
    Ok(builds)
}

impl OldBuild {
    /// When the build started: its start time, else its first event.
    fn start(&self) -> Timestamp {
        self.start_time
            .or(self.history.first().map(|e| e.at))
            .unwrap_or_else(crate::now)
    }
}

/// The source's labels and the old build's cloud provider and image type.
fn labels_of(config: &Settings, b: &OldBuild) -> std::collections::BTreeMap<String, String> {
    let mut labels = config.labels.clone();
    for (k, v) in [
        ("cloud_provider", &b.cloud_provider),
        ("image_type", &b.image_type),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            labels.insert(k.to_string(), v.clone());
        }
    }
    labels
}

/// Who the imported events are by: the database they came from.
fn importer(db: &Path) -> Actor {
    Actor {
        user: Some(format!(
            "import-sqlite:{}",
            db.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        )),
        ..Actor::default()
    }
}

/// Replays an old build through the transitions.
fn to_document(config: &Settings, db: &Path, b: &OldBuild) -> Result<Document> {
    let inconsistent = |m: String| {
        anyhow!(
            "{}: build {:?} is inconsistent: {m}",
            db.display(),
            b.build_id
        )
    };
    crate::config::validate_build_id(&b.build_id).map_err(&inconsistent)?;
    let labels = labels_of(config, b);
    let rules = Rules {
        build_id: &b.build_id,
        ladder: &config.ladder,
        retry: &config.retry,
        labels: &labels,
    };
    let by = importer(db);
    let start = b.start();
    let step = |doc: Option<&Document>,
                action: Action,
                at: Timestamp,
                note: Option<String>|
     -> Result<Document, Refusal> {
        let mut u = Update::new(action, by.clone(), at);
        u.note = note;
        match apply(doc, &u, &rules)? {
            Outcome::Write(d) => Ok(d),
            other => Err(Refusal::Invalid(format!("unexpected outcome {other:?}"))),
        }
    };
    let mut doc = step(
        None,
        Action::Init { restart: false },
        start,
        Some(format!("imported from {}", db.display())),
    )
    .map_err(|e| inconsistent(e.to_string()))?;
    let bridge = |doc: &Document, state: u32, at: Timestamp, why: String| {
        step(
            Some(doc),
            Action::Set {
                state,
                status: Status::Pending,
                reason: why,
            },
            at,
            None,
        )
    };
    for (i, e) in b.history.iter().enumerate() {
        if i == 0 && e.state != doc.state {
            doc = bridge(
                &doc,
                e.state,
                e.at,
                format!("imported: the old history starts at {}", e.state),
            )
            .map_err(|r| inconsistent(format!("state_history id {}: {r}", e.id)))?;
        }
        let action = old_action(config, e).map_err(&inconsistent)?;
        doc = step(Some(&doc), action, e.at, None).map_err(|r| {
            inconsistent(format!(
                "state_history id {} ({} {} at {}) does not follow: {r}",
                e.id, e.status, e.state, e.at
            ))
        })?;
    }
    if b.history.is_empty() && b.current_state != doc.state {
        doc = bridge(
            &doc,
            b.current_state,
            start,
            format!("imported: no history; builds says {}", b.current_state),
        )
        .map_err(|r| inconsistent(r.to_string()))?;
    }
    agrees(config, b, &doc).map_err(inconsistent)?;
    Ok(doc)
}

/// What was imported (or would be, or why not), as a table or JSON.
fn print(report: &[(String, String, Option<Document>)], out: &Out) -> Result<()> {
    if out.json {
        let v: Vec<_> = report
            .iter()
            .map(|(id, what, doc)| json!({"build_id": id, "result": what, "document": doc}))
            .collect();
        return out.print_json(&serde_json::Value::Array(v));
    }
    {
        let mut t = Table::new(&["BUILD", "RESULT", "STATE", "STATUS", "EVENTS", "LABELS"]);
        for (id, what, doc) in report {
            let (state, status, events, labels) = match doc {
                Some(d) => (
                    format!("{} {}", d.state, d.state_name),
                    out.status(d.status),
                    d.history.len().to_string(),
                    d.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                None => ("-".into(), "-".into(), "-".into(), String::new()),
            };
            t.row(vec![
                id.clone(),
                what.clone(),
                state,
                status,
                events,
                labels,
            ]);
        }
        out.table(&t)
    }
}

/// Whether the replayed document agrees with the old `builds` row.
fn agrees(config: &Settings, b: &OldBuild, doc: &Document) -> Result<(), String> {
    let final_code = config.ladder.final_code();
    let agrees = match b.status.as_str() {
        "running" => {
            (doc.state == b.current_state
                && matches!(doc.status, Status::Pending | Status::InProgress))
                || (doc.state == final_code
                    && b.current_state == final_code
                    && doc.status == Status::Completed)
        }
        "failed" => {
            doc.state == b.current_state && matches!(doc.status, Status::Failed | Status::Blocked)
        }
        other => {
            return Err(format!(
                "builds.status is {other:?} (expected running or failed)"
            ));
        }
    };
    if !agrees {
        return Err(format!(
            "builds says {} {} but its state_history ends at {} {}",
            b.current_state, b.status, doc.state, doc.status
        ));
    }
    Ok(())
}

/// The model action an old `state_history` row records.
fn old_action(config: &Settings, e: &OldEvent) -> Result<Action, String> {
    Ok(match e.status.as_str() {
        "completed" => Action::Complete(e.state),
        "failed" => {
            let message = e
                .error
                .clone()
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| format!("stage {} failed (no message recorded)", e.state));
            Action::Fail {
                state: e.state,
                error: config.classifier.error(message, None),
            }
        }
        other => {
            return Err(format!(
                "state_history id {} has status {other:?} (expected completed or failed)",
                e.id
            ));
        }
    })
}

/// The imported run, renumbered to follow an existing document (run and
/// revisions continue, so no revision ever repeats).
fn follow(existing: &Document, doc: &Document, config: &Settings) -> Document {
    let mut history = doc.history.clone();
    for e in &mut history {
        e.revision += existing.revision;
    }
    Document::from_history(
        &doc.build_id,
        existing.run + 1,
        doc.labels.clone(),
        history,
        &config.ladder,
    )
}

/// Writes one imported document (over an existing one only with
/// `force`, archiving its run): what happened, and the document written
/// (`None` when it was not, with the error in the notes).
async fn write_one(
    config: &Arc<Settings>,
    builds: &Builds<'_, AnyStore>,
    doc: Document,
    force: bool,
    out: &Out,
) -> (String, Option<Document>) {
    let result = builds
        .update(|cur| match cur {
            None => Ok(Outcome::Write(doc.clone())),
            Some(existing) if force => Ok(Outcome::Restart {
                archive: existing.clone(),
                document: follow(existing, &doc, config),
            }),
            Some(existing) => Err(Refusal::Exists(existing.whereabouts())),
        })
        .await;
    match result {
        Ok(a) => (
            format!("imported (revision {})", a.doc.revision),
            Some(a.doc),
        ),
        // Say what really failed: a document in the way, or the store
        // (access, network, a corrupt document).
        Err(e) => match &e.kind {
            crate::engine::ErrorKind::Refused(Refusal::Exists(_)) => {
                out.note(format!(
                    "error: {e}; it is never overwritten without --force"
                ));
                ("not imported: exists (use --force)".to_string(), None)
            }
            kind => {
                out.note(format!("error: {e}"));
                (format!("not imported: {kind}"), None)
            }
        },
    }
}

pub(super) async fn import(
    config: &Arc<Settings>,
    store: &AnyStore,
    dbs: &[std::path::PathBuf],
    dry_run: bool,
    force: bool,
    out: &Out,
) -> Result<()> {
    let mut report: Vec<(String, String, Option<Document>)> = Vec::new();
    let mut failures = 0;
    for db in dbs {
        for b in read_db(db)? {
            let doc = match to_document(config, db, &b) {
                Ok(d) => d,
                Err(e) => {
                    out.note(format!("error: {e:#}"));
                    report.push((
                        b.build_id.clone(),
                        "not imported: inconsistent".into(),
                        None,
                    ));
                    failures += 1;
                    continue;
                }
            };
            let cfg = config.for_build(&b.build_id)?;
            let builds = Builds::new(&cfg, store);
            if dry_run {
                let existing = builds.current().await?;
                let what = match (&existing, force) {
                    (None, _) => "would create".to_string(),
                    (Some(c), true) => format!("would replace (run {} archived)", c.doc.run),
                    (Some(_), false) => "exists: would be skipped (use --force)".to_string(),
                };
                report.push((b.build_id.clone(), what, Some(doc)));
                continue;
            }
            let (what, doc) = write_one(config, &builds, doc, force, out).await;
            if doc.is_none() {
                failures += 1;
            }
            report.push((b.build_id.clone(), what, doc));
        }
    }
    print(&report, out)?;
    if failures > 0 {
        bail!(
            "{failures} of {} not imported (see above)",
            crate::cli::terminal::count(report.len() as u64, "build")
        );
    }
    Ok(())
}
