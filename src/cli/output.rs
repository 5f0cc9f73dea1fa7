//! Human output (tables, colour only on a terminal) and `--json`.

use super::Row;
use crate::config::Config;
use crate::model::document::rfc3339;
use crate::model::resources::{Holding, LeftBehind};
use crate::model::{
    Document, Event, Heartbeat, Need, NeedKind, RetryPolicy, Status, Timestamp, needs_human,
};
use anyhow::Result;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::path::Path;

/// Answers a question (unit tests).
#[cfg(test)]
type Answer = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The CLI's terminal: results on stdout (or, in unit tests, a buffer),
/// and everything else (progress, warnings, notes) handed to the
/// [`Notes`](crate::Notes) the binary gave it.
pub(crate) struct Out {
    pub(crate) json: bool,
    colour: bool,
    /// Where output goes: stdout, or (in unit tests) a buffer.
    sink: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
    /// Where notes go.
    pub(crate) notes: std::sync::Arc<crate::Notes>,
    /// Who answers questions instead of the terminal (unit tests).
    #[cfg(test)]
    answer: Option<Answer>,
}

/// A plain text table with aligned columns.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn width(s: &str) -> usize {
    // ANSI colour sequences take no room.
    let mut w = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            _ => w += 1,
        }
    }
    w
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                line.push_str(c);
                if i + 1 < n {
                    line.push_str(&" ".repeat(widths[i] - width(c) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

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

/// `3m`, `2h`, `5d`: how long ago.
pub(super) fn age(t: &chrono::DateTime<chrono::Utc>) -> String {
    crate::model::time::ago((chrono::Utc::now() - *t).num_seconds())
}

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

/// Stored text on one line, at most `max` characters, every control
/// character shown escaped ([`crate::visible`]).
fn one_line(s: &str, max: usize) -> String {
    let s = crate::visible(&s.split_whitespace().collect::<Vec<_>>().join(" ")).into_owned();
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s
    }
}

impl Out {
    pub(crate) fn new(json: bool, notes: std::sync::Arc<crate::Notes>) -> Out {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Out {
            json,
            colour,
            sink: None,
            notes,
            #[cfg(test)]
            answer: None,
        }
    }

    /// A line for stderr (the binary prefixes `build-state: `).
    pub(crate) fn note(&self, line: impl Into<String>) {
        self.notes.note(line);
    }

    /// Asks a yes/no question on the terminal; refuses without one.
    pub(crate) fn ask(&self, question: &str, without: &str) -> Result<bool> {
        use std::io::BufRead;
        #[cfg(test)]
        if let Some(answer) = &self.answer {
            return Ok(answer(question));
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("{without}");
        }
        eprint!("{question}");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    }

    /// The same output, its questions answered by `answer` (which may
    /// change the world while "the person" thinks).
    #[cfg(test)]
    pub(crate) fn answering(
        mut self,
        answer: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Out {
        self.answer = Some(Box::new(answer));
        self
    }

    /// Output into a buffer (for tests), never coloured.
    #[cfg(test)]
    pub(crate) fn buffered(json: bool) -> (Out, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            Out {
                json,
                colour: false,
                sink: Some(sink.clone()),
                notes: std::sync::Arc::new(crate::Notes::new()),
                answer: None,
            },
            sink,
        )
    }

    /// Writes text to the output, flushed.
    pub(crate) fn write(&self, s: &str) -> Result<()> {
        match &self.sink {
            Some(buf) => buf.lock().unwrap().extend_from_slice(s.as_bytes()),
            None => {
                let mut stdout = std::io::stdout().lock();
                let written = stdout.write_all(s.as_bytes()).and_then(|()| stdout.flush());
                // A reader that stopped reading (`| head`) is not an error.
                match written {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }

    /// Prints a table.
    pub(crate) fn table(&self, t: &Table) -> Result<()> {
        self.write(&t.render())
    }

    pub(crate) fn print_json(&self, v: &Value) -> Result<()> {
        let mut s = serde_json::to_string_pretty(v)?;
        s.push('\n');
        self.write(&s)
    }

    pub(crate) fn status(&self, s: Status) -> String {
        if !self.colour {
            return s.to_string();
        }
        let code = match s {
            Status::Pending => "36",
            Status::InProgress => "34",
            Status::Failed => "33",
            Status::Blocked => "1;31",
            Status::AwaitingApproval => "1;35",
            Status::Completed => "32",
            Status::Cancelled => "2",
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    }

    pub(crate) fn document(
        &self,
        config: &Config,
        doc: &Document,
        heartbeat: Option<&Heartbeat>,
    ) -> Result<()> {
        let now = crate::now();
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
        self.attention_rows(&mut t, doc, need.as_ref(), beat);
        left_rows(&mut t, doc, now);
        detail_rows(&mut t, config, doc);
        t.row(vec![
            "updated".into(),
            format!(
                "{} ({} ago) by {}",
                rfc3339::format(&doc.updated_at),
                age(&doc.updated_at),
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
    ) {
        if doc.status == Status::InProgress {
            t.row(vec![
                "heartbeat".into(),
                match beat {
                    Some(h) => format!(
                        "{} ({} ago) by {}",
                        rfc3339::format(&h.at),
                        age(&h.at),
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
                    age(&n.since),
                    one_line(&n.why, 200)
                ),
            ]);
            t.row(vec![
                "to unblock".into(),
                crate::visible(&n.unblock).into_owned(),
            ]);
        }
    }

    fn event_row(&self, e: &Event) -> Vec<String> {
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

    /// A stage `watch` finds in progress past its timeout.
    pub(crate) fn stale(&self, build_id: &str, doc: &Document, since: &Timestamp) -> Result<()> {
        if self.json {
            let v = json!({"build_id": build_id, "revision": doc.revision, "state": doc.state,
                           "status": doc.status, "stale": true, "dead_since": rfc3339::format(since)});
            return self.write(&format!("{}\n", serde_json::to_string(&v)?));
        }
        self.write(&format!(
            "{} {build_id} r{} {} in_progress is stale: no sign of life within the stage's timeout or heartbeat_timeout, dead since {} (a worker that vanished?)\n",
            rfc3339::format(&crate::now()),
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

    pub(crate) fn list(&self, rows: &[Row], retry: &RetryPolicy) -> Result<()> {
        let now = crate::now();
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
                    age(&d.updated_at),
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
                    format!("{} ago", age(&n.since)),
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

    pub(crate) fn report(&self, path: &Path, builds: usize) -> Result<()> {
        if self.json {
            return self.print_json(&json!({"out": path, "builds": builds}));
        }
        self.write(&format!(
            "wrote {} ({})\n",
            path.display(),
            count(builds as u64, "build")
        ))
    }
}

/// A failure's kind and, when a source pattern decided it, the pattern:
/// `persistent, by persistent_errors: AccessDenied`.
fn kind_of(e: &crate::model::ErrorInfo) -> String {
    match &e.rule {
        Some(rule) => format!("{}, by {rule}", e.kind.as_str()),
        None => e.kind.as_str().to_string(),
    }
}

/// `n` things in words: "1 build", "2 builds".
pub(super) fn count(n: impl Into<u64>, one: &str) -> String {
    match n.into() {
        1 => format!("1 {one}"),
        n => format!("{n} {one}s"),
    }
}

#[cfg(test)]
mod count_tests {
    #[test]
    fn counts_are_in_words() {
        assert_eq!(super::count(1u64, "build"), "1 build");
        assert_eq!(super::count(0u64, "build"), "0 builds");
        assert_eq!(super::count(2u32, "failure"), "2 failures");
    }
}
