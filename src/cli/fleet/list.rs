//! `list`: every build under a prefix, who needs a human, and what the
//! builds left behind; the same rows as JSON for `list --json` and
//! `serve`'s `/api/builds`.

use crate::cli::Row;
use crate::cli::terminal::{Out, Table, age, one_line};
use crate::model::document::rfc3339;
use crate::model::resources::{Holding, LeftBehind};
use crate::model::{Document, Need, RetryPolicy, Timestamp, needs_human};
use anyhow::Result;
use serde_json::{Value, json};

/// Every build of `rows` that needs a human, the longest waiting first.
pub(crate) fn needs(rows: &[Row], retry: &RetryPolicy, now: Timestamp) -> Vec<Need> {
    let mut needs: Vec<Need> = rows
        .iter()
        .filter_map(|r| {
            let d = r.doc.as_ref().ok()?;
            needs_human(d, retry, r.heartbeat.as_ref(), now)
        })
        .collect();
    needs.sort_by(|a, b| a.since.cmp(&b.since).then(a.build_id.cmp(&b.build_id)));
    needs
}

/// The rows of `list --json` (and of `serve`'s `/api/builds`).
pub(super) fn rows_json(rows: &[Row], retry: &RetryPolicy, now: Timestamp) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| match &r.doc {
                Ok(d) => json!({
                    "build_id": d.build_id, "state": d.state, "state_name": d.state_name,
                    "status": d.status, "stale": d.is_dead(now, retry, r.heartbeat.as_ref()),
                    "needs_human": needs_human(d, retry, r.heartbeat.as_ref(), now),
                    "heartbeat_at": r.heartbeat.as_ref().map(|h| rfc3339::format(&h.at)),
                    "attempts": d.attempts, "revision": d.revision,
                    "run": d.run, "labels": d.labels,
                    "updated_at": rfc3339::format(&d.updated_at),
                    "retry_at": d.retry_at.map(|t| rfc3339::format(&t)),
                    "last_error": d.last_error,
                    "left_behind": left_behind(d, now),
                }),
                Err(e) => json!({"build_id": r.build_id, "error": e}),
            })
            .collect(),
    )
}

/// What a build left behind at `now` that a cleanup must see (leaked, or
/// held for a human): what `list`, the dashboard and `metrics` show.
pub(crate) fn left_behind(doc: &Document, now: Timestamp) -> Vec<LeftBehind> {
    crate::model::resources::left_behind(doc, now)
        .into_iter()
        .filter(|l| l.holding != Holding::Live)
        .collect()
}

impl Out {
    pub(crate) fn list(&self, rows: &[Row], retry: &RetryPolicy, now: Timestamp) -> Result<()> {
        if self.json {
            return self.print_json(&rows_json(rows, retry, now));
        }
        let mut t = Table::new(&[
            "BUILD",
            "STATE",
            "NAME",
            "STATUS",
            "ATTEMPTS",
            "AGE",
            "LAST ERROR",
        ]);
        for r in rows {
            t.row(match &r.doc {
                Ok(d) => vec![
                    d.build_id.clone(),
                    d.state.to_string(),
                    crate::visible(&d.state_name).into_owned(),
                    if d.is_dead(now, retry, r.heartbeat.as_ref()) {
                        format!("{} (stale)", self.status(d.status))
                    } else {
                        self.status(d.status)
                    },
                    d.attempts.to_string(),
                    age(&d.updated_at, now),
                    d.last_error
                        .as_ref()
                        .map(|e| match d.error_elsewhere() {
                            Some((stage, _)) => format!("at {stage}: {}", one_line(&e.message, 54)),
                            None => one_line(&e.message, 60),
                        })
                        .unwrap_or_default(),
                ],
                Err(e) => vec![
                    r.build_id.clone(),
                    "-".into(),
                    "-".into(),
                    "unreadable".into(),
                    "-".into(),
                    "-".into(),
                    one_line(e, 100),
                ],
            });
        }
        self.table(&t)?;
        if rows.is_empty() {
            self.note("no builds under this prefix");
        }
        let needs = needs(rows, retry, now);
        if !needs.is_empty() {
            self.write(&format!("\nNeeds a human ({}):\n", needs.len()))?;
            let mut t = Table::new(&["BUILD", "STAGE", "WHY", "SINCE", "DETAIL", "TO UNBLOCK"]);
            for n in &needs {
                t.row(vec![
                    n.build_id.clone(),
                    format!("{} {}", n.state, crate::visible(&n.state_name)),
                    n.kind.as_str().to_string(),
                    format!("{} ago", age(&n.since, now)),
                    one_line(&n.why, 80),
                    crate::visible(&n.unblock).into_owned(),
                ]);
            }
            self.table(&t)?;
        }
        self.left_panel(rows, now)
    }

    /// `list`'s panel of what builds left behind: what, since when, why,
    /// and the command that records it removed.
    fn left_panel(&self, rows: &[Row], now: Timestamp) -> Result<()> {
        let left: Vec<LeftBehind> = rows
            .iter()
            .filter_map(|r| r.doc.as_ref().ok())
            .flat_map(|d| left_behind(d, now))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        self.write(&format!("\nLeft behind ({}):\n", left.len()))?;
        let mut t = Table::new(&[
            "BUILD",
            "WHAT",
            "ID",
            "STAGE",
            "HOLDING",
            "SINCE",
            "WHY",
            "ONCE DELETED",
        ]);
        for l in &left {
            t.row(vec![
                l.build_id.clone(),
                crate::visible(&l.name).into_owned(),
                crate::visible(&l.id).into_owned(),
                format!("{} (attempt {})", l.stage, l.attempt),
                match l.until {
                    Some(u) => format!("held until {}", rfc3339::format(&u)),
                    None => l.holding.as_str().to_string(),
                },
                format!(
                    "{} ago",
                    crate::model::time::ago((now - l.since).num_seconds())
                ),
                one_line(&l.why, 60),
                crate::visible(&l.release).into_owned(),
            ]);
        }
        self.table(&t)
    }
}
