//! How one build is shown: `show`'s table (with who needs a human and
//! what the build left behind), `history`, and what an action or a
//! heartbeat says it did.

use crate::cli::terminal::{Out, Table, age, kind_of, one_line};
use crate::config::Config;
use crate::model::document::rfc3339;
use crate::model::resources::Holding;
use crate::model::{Document, Event, Heartbeat, NeedKind, Status, Timestamp, needs_human};
use anyhow::Result;
use serde_json::{Value, json};

/// `show`'s rows of detail: when the retry is due, the last error (and
/// whose, after a start-over), labels, vars.
fn detail_rows(t: &mut Table, config: &Config, doc: &Document) {
    let labels: Vec<String> = doc.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(r) = doc.retry_at {
        t.row(vec!["retry at".into(), rfc3339::format(&r)]);
    }
    if let Some(e) = &doc.last_error {
        let at = match doc.error_elsewhere() {
            Some((stage, attempt)) => format!(
                "at {stage} {}, attempt {attempt} (the run went back to {}): ",
                crate::visible(config.ladder.name(stage).unwrap_or("?")),
                doc.state
            ),
            None => String::new(),
        };
        t.row(vec![
            "last error".into(),
            format!("{at}{} ({})", one_line(&e.message, 200), kind_of(e)),
        ]);
    }
    if !labels.is_empty() {
        t.row(vec![
            "labels".into(),
            crate::visible(&labels.join(" ")).into_owned(),
        ]);
    }
    if !doc.vars.is_empty() {
        t.row(vec![
            "vars".into(),
            crate::visible(&Value::Object(doc.vars.clone()).to_string()).into_owned(),
        ]);
    }
}

/// `show`'s rows of the resources the build has not released: in use,
/// held until a time, or leaked since when and why, each with the command
/// that records it removed.
fn left_rows(t: &mut Table, doc: &Document, now: Timestamp) {
    for l in crate::model::resources::left_behind(doc, now) {
        let label = match l.holding {
            Holding::Live => "resource in use",
            _ => "left behind",
        };
        let state = match (l.holding, l.until) {
            (Holding::Held, Some(until)) => format!(
                "held until {} (in {})",
                rfc3339::format(&until),
                crate::model::time::ago((until - now).num_seconds())
            ),
            (Holding::Leaked, _) => format!(
                "leaked since {} ({} ago)",
                rfc3339::format(&l.since),
                crate::model::time::ago((now - l.since).num_seconds())
            ),
            _ => "live".to_string(),
        };
        let release = match l.holding {
            Holding::Live => String::new(),
            _ => format!("; once deleted: {}", crate::visible(&l.release)),
        };
        t.row(vec![
            label.into(),
            format!(
                "{} {} (stage {}, attempt {}): {state}: {}{release}",
                crate::visible(&l.name),
                crate::visible(&l.id),
                l.stage,
                l.attempt,
                one_line(&l.why, 120),
            ),
        ]);
    }
}

impl Out {
    pub(crate) fn document(
        &self,
        config: &Config,
        doc: &Document,
        heartbeat: Option<&Heartbeat>,
        now: Timestamp,
    ) -> Result<()> {
        let need = needs_human(doc, &config.retry, heartbeat, now);
        let beat = doc.own_heartbeat(heartbeat);
        if self.json {
            // The document itself, exactly as stored (a task may hand it
            // to a put's `file:`): who needs a human is in `list --json`.
            return self.print_json(&serde_json::to_value(doc)?);
        }
        let last = doc.last_event();
        let mut t = Table::new(&[
            "build",
            &format!(
                "{} (run {}, revision {})",
                doc.build_id, doc.run, doc.revision
            ),
        ]);
        t.row(vec![
            "state".into(),
            format!("{} {}", doc.state, crate::visible(&doc.state_name)),
        ]);
        let status = match &need {
            Some(n) if n.kind == NeedKind::Stale => format!(
                "{} (stale: {}; the next start records the dead attempt)",
                self.status(doc.status),
                n.why
            ),
            _ => self.status(doc.status),
        };
        t.row(vec!["status".into(), status]);
        t.row(vec!["attempts".into(), doc.attempts.to_string()]);
        self.attention_rows(&mut t, doc, need.as_ref(), beat, now);
        left_rows(&mut t, doc, now);
        detail_rows(&mut t, config, doc);
        t.row(vec![
            "updated".into(),
            format!(
                "{} ({} ago) by {}",
                rfc3339::format(&doc.updated_at),
                age(&doc.updated_at, now),
                crate::visible(&last.by.describe())
            ),
        ]);
        t.row(vec![
            "stored at".into(),
            config.location(&config.state_key()),
        ]);
        self.table(&t)?;
        Ok(())
    }

    /// `show`'s rows about attention: the heartbeat of a stage in progress,
    /// and who needs a human, with the command that unblocks it.
    fn attention_rows(
        &self,
        t: &mut Table,
        doc: &Document,
        need: Option<&crate::model::Need>,
        beat: Option<&Heartbeat>,
        now: Timestamp,
    ) {
        if doc.status == Status::InProgress {
            t.row(vec![
                "heartbeat".into(),
                match beat {
                    Some(h) => format!(
                        "{} ({} ago) by {}",
                        rfc3339::format(&h.at),
                        age(&h.at, now),
                        crate::visible(&h.by.describe())
                    ),
                    None => "none yet".to_string(),
                },
            ]);
        }
        if let Some(n) = need {
            t.row(vec![
                "needs a human".into(),
                format!(
                    "{} since {} ({} ago): {}",
                    n.kind.as_str(),
                    rfc3339::format(&n.since),
                    age(&n.since, now),
                    one_line(&n.why, 200)
                ),
            ]);
            t.row(vec![
                "to unblock".into(),
                crate::visible(&n.unblock).into_owned(),
            ]);
        }
    }

    pub(crate) fn event_row(&self, e: &Event) -> Vec<String> {
        let what = e
            .target
            .map_or(e.action.to_string(), |t| format!("{} {t}", e.action));
        let detail = e
            .error
            .as_ref()
            .map(|x| format!("{} ({})", one_line(&x.message, 80), kind_of(x)))
            .or_else(|| e.reason.as_deref().map(|r| one_line(r, 200)))
            .or_else(|| e.note.as_deref().map(|n| one_line(n, 200)))
            .unwrap_or_default();
        let things = e.resources.describe();
        let detail = match (detail.is_empty(), things.is_empty()) {
            (_, true) => detail,
            (true, false) => one_line(&things, 200),
            (false, false) => format!("{detail} [{}]", one_line(&things, 120)),
        };
        vec![
            e.revision.to_string(),
            rfc3339::format(&e.at),
            what,
            e.state.to_string(),
            self.status(e.status),
            e.attempt.to_string(),
            crate::visible(&e.by.describe()).into_owned(),
            detail,
        ]
    }

    pub(crate) fn history(&self, doc: &Document) -> Result<()> {
        if self.json {
            return self.print_json(&serde_json::to_value(&doc.history)?);
        }
        let mut t = Table::new(&[
            "REV", "AT", "ACTION", "STATE", "STATUS", "ATTEMPT", "BY", "DETAIL",
        ]);
        for e in &doc.history {
            t.row(self.event_row(e));
        }
        self.table(&t)?;
        Ok(())
    }

    /// A heartbeat taken.
    pub(crate) fn beat(&self, doc: &Document, beat: &Heartbeat) -> Result<()> {
        if self.json {
            return self.print_json(&json!({"written": false, "heartbeat": beat}));
        }
        self.write(&format!(
            "{}: heartbeat {}: attempt {} alive at {} (revision {} unchanged)\n",
            doc.build_id,
            beat.state,
            beat.attempt,
            rfc3339::format(&beat.at),
            doc.revision
        ))
    }

    pub(crate) fn applied(&self, described: &str, doc: &Document, written: bool) -> Result<()> {
        if self.json {
            return self.print_json(&json!({"written": written, "document": doc}));
        }
        let last = doc.last_event();
        if written && last.action.is_resource_record() {
            return self.write(&format!(
                "{}: {}, revision {}\n",
                doc.build_id,
                crate::visible(&last.resources.describe()),
                doc.revision
            ));
        }
        if written {
            self.write(&format!(
                "{}: {described} → {} {} ({}), revision {}\n",
                doc.build_id,
                doc.state,
                crate::visible(&doc.state_name),
                self.status(doc.status),
                doc.revision
            ))
        } else {
            self.write(&format!(
                "{}: {described}: no change; {} (revision {})\n",
                doc.build_id,
                doc.whereabouts(),
                doc.revision
            ))
        }
    }
}
