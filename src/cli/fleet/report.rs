//! `report`: one self-contained HTML page (inline CSS and SVG, no network)
//! with every build's timeline, failures per stage, and the builds that need
//! a human.

use crate::cli::Row;
use crate::cli::terminal::{Out, count};
use crate::config::Settings;
use crate::model::document::rfc3339;
use crate::model::{ActionKind, Code, Document, Status, Timestamp};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

use crate::model::time::span as duration;

fn colour(s: Status) -> &'static str {
    match s {
        Status::Pending => "#7aa6c2",
        Status::InProgress => "#3b7dd8",
        Status::Failed => "#e0a526",
        Status::Blocked => "#d64541",
        Status::AwaitingApproval => "#8e44ad",
        Status::Completed => "#3aa55d",
        Status::Cancelled => "#9a9a9a",
    }
}

/// Time spent at each stage of a run: (state, entered, left, failures, how it ended).
pub(super) struct Span {
    pub(crate) state: Code,
    pub(crate) from: Timestamp,
    pub to: Timestamp,
    pub(crate) failures: u32,
    pub(crate) end: Status,
}

/// One stage across a fleet's current runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct StageTotals {
    /// Failures recorded at the stage (a `fail` event's target).
    pub(crate) failures: u64,
    /// Time the stage was worked on (in progress), in seconds: not the
    /// time a build sat there pending, failed, blocked or waiting.
    pub(crate) seconds: f64,
    /// Whether any build reached it.
    pub(crate) reached: bool,
    /// Builds at the stage now.
    pub(crate) builds: u64,
}

/// Failures, time and builds per stage across `docs` (for `metrics` and
/// `serve`).
pub(super) fn stage_totals<'a>(
    docs: impl IntoIterator<Item = &'a Document>,
    now: Timestamp,
) -> BTreeMap<Code, StageTotals> {
    let mut by: BTreeMap<Code, StageTotals> = BTreeMap::new();
    for doc in docs {
        by.entry(doc.state).or_default().builds += 1;
        for e in doc.history.iter().filter(|e| e.action == ActionKind::Fail) {
            by.entry(e.target.unwrap_or(e.state)).or_default().failures += 1;
        }
        for span in spans(doc, now) {
            by.entry(span.state).or_default().reached = true;
        }
        for (code, secs) in work_seconds(doc, now) {
            by.entry(code).or_default().seconds += secs;
        }
    }
    by
}

/// Per stage, the time it was worked on: from each event that left it in
/// progress to the next event (or `now`, while it still is).
pub(super) fn work_seconds(doc: &Document, now: Timestamp) -> BTreeMap<Code, f64> {
    let mut by: BTreeMap<Code, f64> = BTreeMap::new();
    for (i, e) in doc.history.iter().enumerate() {
        if e.status != Status::InProgress {
            continue;
        }
        let until = doc.history.get(i + 1).map_or(now.max(e.at), |next| next.at);
        *by.entry(e.state).or_default() += (until - e.at).num_milliseconds().max(0) as f64 / 1000.0;
    }
    by
}

pub(super) fn spans(doc: &Document, now: Timestamp) -> Vec<Span> {
    let mut out = Vec::new();
    let Some(first) = doc.history.first() else {
        return out;
    };
    let mut cur = Span {
        state: first.state,
        from: first.at,
        to: first.at,
        failures: 0,
        end: first.status,
    };
    for e in &doc.history[1..] {
        if e.state != cur.state {
            cur.to = e.at;
            cur.end = if e.action == ActionKind::Complete {
                Status::Completed
            } else {
                cur.end
            };
            let next = Span {
                state: e.state,
                from: e.at,
                to: e.at,
                failures: 0,
                end: e.status,
            };
            out.push(std::mem::replace(&mut cur, next));
        } else {
            cur.end = e.status;
        }
        if e.action == ActionKind::Fail {
            cur.failures += 1;
        }
    }
    cur.to = match doc.status {
        Status::Completed | Status::Cancelled => doc.updated_at,
        _ => now.max(doc.updated_at),
    };
    out.push(cur);
    out
}

fn timeline(config: &Settings, doc: &Document, now: Timestamp) -> String {
    let spans = spans(doc, now);
    let (start, end) = (
        doc.created_at,
        spans.last().map_or(doc.updated_at, |s| s.to),
    );
    let total = ((end - start).num_milliseconds().max(1)) as f64;
    let w = 900.0;
    let x = |t: Timestamp| ((t - start).num_milliseconds() as f64 / total * w).clamp(0.0, w);
    let mut svg = format!(
        r#"<svg class="timeline" viewBox="0 0 {w} 34" width="100%" height="34" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="timeline of {}">"#,
        esc(&doc.build_id)
    );
    for s in &spans {
        let (x0, x1) = (x(s.from), x(s.to));
        let width = (x1 - x0).max(2.0);
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="4" width="{width:.1}" height="22" rx="3" fill="{}" stroke="#fff"><title>{} {}: {} ({}, {})</title></rect>"##,
            colour(s.end),
            s.state,
            esc(config.ladder.name(s.state).unwrap_or("?")),
            duration((s.to - s.from).num_seconds()),
            crate::cli::terminal::count(s.failures, "failure"),
            s.end
        );
        if width > 22.0 {
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="19" font-size="11" fill="#fff">{}</text>"##,
                x0 + 4.0,
                s.state
            );
        }
    }
    for e in doc.history.iter().filter(|e| e.action == ActionKind::Fail) {
        let _ = write!(
            svg,
            r##"<circle cx="{:.1}" cy="30" r="3.5" fill="#d64541"><title>fail {} at {}: {}</title></circle>"##,
            x(e.at),
            e.state,
            rfc3339::format(&e.at),
            esc(e.error.as_ref().map_or("", |x| x.message.as_str()))
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A status as a coloured pill.
fn badge(s: Status) -> String {
    format!(
        r#"<span class="status" style="background:{}">{s}</span>"#,
        colour(s)
    )
}

pub(super) fn render(config: &Settings, rows: &[Row], now: Timestamp) -> String {
    let docs: Vec<&Document> = rows.iter().filter_map(|r| r.doc.as_ref().ok()).collect();
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>build-state report</title>
<style>
body{{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1000px;color:#222;padding:0 1rem}}
h1{{font-size:1.6rem;margin:0 0 .2rem}} h2{{font-size:1.2rem;margin:2rem 0 .6rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}}
.meta{{color:#666}} table{{border-collapse:collapse;width:100%;margin:.4rem 0}} th,td{{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee;vertical-align:top}}
th{{background:#f6f6f6;font-weight:600}} .status{{display:inline-block;padding:0 .45rem;border-radius:.6rem;color:#fff;font-size:12px}}
.wrap{{overflow-wrap:anywhere;white-space:pre-wrap}} code{{font-size:12px}}
.build{{border:1px solid #e3e3e3;border-radius:6px;padding:.6rem .8rem;margin:.8rem 0}} .build h3{{margin:0 0 .3rem;font-size:1.05rem;overflow-wrap:anywhere}} .meta{{overflow-wrap:anywhere}}
.legend span{{margin-right:1rem}} .legend i{{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:-1px}}
details summary{{cursor:pointer;color:#555}} .human{{background:#fff4f4}} .ok{{color:#3aa55d}}
</style></head><body>
<h1>build-state report</h1>
<p class="meta">{} under {} &middot; generated {}</p>
"#,
        crate::cli::terminal::count(rows.len() as u64, "build"),
        esc(&config.location(config.prefix())),
        rfc3339::format(&now)
    );

    needs_a_human(&mut h, config, rows, now);
    failures_per_stage(&mut h, config, &docs, now);
    builds(&mut h, config, rows, now);
    h.push_str("</body></html>\n");
    h
}

/// The builds that need a human (blocked, awaiting approval, stale), with
/// since when, why and what unblocks them, and the unreadable ones.
fn needs_a_human(h: &mut String, config: &Settings, rows: &[Row], now: Timestamp) {
    h.push_str("<h2>Needs a human</h2>\n");
    let needs = crate::cli::fleet::list::needs(rows, &config.retry, now);
    let unreadable: Vec<&Row> = rows.iter().filter(|r| r.doc.is_err()).collect();
    if needs.is_empty() && unreadable.is_empty() {
        h.push_str("<p class=\"ok\">Nobody needs a human.</p>\n");
        return;
    }
    h.push_str("<table class=\"human\"><tr><th>build</th><th>stage</th><th>why</th><th>since</th><th>detail</th><th>to unblock</th></tr>\n");
    for n in &needs {
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#b-{id}\">{id}</a></td><td>{} {}</td><td>{}</td><td>{}</td><td class=\"wrap\">{}</td><td class=\"wrap\"><code>{}</code></td></tr>",
            n.state,
            esc(&n.state_name),
            esc(n.kind.as_str()),
            rfc3339::format(&n.since),
            esc(&n.why),
            esc(&n.unblock),
            id = esc(&n.build_id)
        );
    }
    for r in &unreadable {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td colspan=\"5\" class=\"wrap\">unreadable: {}</td></tr>",
            esc(&r.build_id),
            esc(r.doc.as_ref().err().map_or("", |e| e.as_str()))
        );
    }
    h.push_str("</table>\n");
}

/// Failures per stage across the fleet, as bars.
fn failures_per_stage(h: &mut String, config: &Settings, docs: &[&Document], now: Timestamp) {
    // Failures per stage across builds.
    let mut fails: BTreeMap<Code, (u32, u32)> = BTreeMap::new(); // code -> (failures, builds reaching it)
    for d in docs {
        for s in spans(d, now) {
            let e = fails.entry(s.state).or_default();
            e.0 += s.failures;
            e.1 += 1;
        }
    }
    h.push_str("<h2>Failures per stage</h2>\n");
    let max = fails.values().map(|v| v.0).max().unwrap_or(0).max(1) as f64;
    let stages: Vec<_> = config
        .ladder
        .steps()
        .iter()
        .filter(|s| fails.contains_key(&s.code))
        .collect();
    let height = stages.len() * 22 + 8;
    let _ = write!(
        h,
        r#"<svg viewBox="0 0 900 {height}" width="100%" height="{height}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="failures per stage">"#
    );
    for (i, s) in stages.iter().enumerate() {
        let (n, reached) = fails[&s.code];
        let y = i * 22 + 4;
        let bar = n as f64 / max * 400.0;
        let rate = if reached > 0 {
            n as f64 / reached as f64
        } else {
            0.0
        };
        let _ = write!(
            h,
            r##"<text x="0" y="{}" font-size="12">{} {}</text><rect x="250" y="{y}" width="{bar:.1}" height="16" fill="#d64541" rx="2"/><text x="{:.1}" y="{}" font-size="12">{} in {} ({:.1} per build)</text>"##,
            y + 13,
            s.code,
            esc(&s.name),
            256.0 + bar,
            y + 13,
            crate::cli::terminal::count(n, "failure"),
            crate::cli::terminal::count(reached, "build"),
            rate
        );
    }
    h.push_str("</svg>\n");
}

/// Every build's timeline and time per stage.
fn builds(h: &mut String, config: &Settings, rows: &[Row], now: Timestamp) {
    let name = |c: Code| config.ladder.name(c).unwrap_or("?").to_string();
    // Every build's timeline.
    h.push_str("<h2>Builds</h2>\n<p class=\"legend\">");
    for s in [
        Status::Completed,
        Status::InProgress,
        Status::Pending,
        Status::Failed,
        Status::Blocked,
        Status::AwaitingApproval,
        Status::Cancelled,
    ] {
        let _ = write!(
            h,
            r#"<span><i style="background:{}"></i>{s}</span>"#,
            colour(s)
        );
    }
    h.push_str(
        "<span><i style=\"background:#d64541;border-radius:50%\"></i>a failure</span></p>\n",
    );
    for (d, beat) in rows
        .iter()
        .filter_map(|r| Some((r.doc.as_ref().ok()?, r.heartbeat.as_ref())))
    {
        let labels: Vec<String> = d
            .labels
            .iter()
            .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
            .collect();
        let _ = write!(
            h,
            "<div class=\"build\" id=\"b-{id}\"><h3>{id} {}</h3><div class=\"meta\">{}</div>{}",
            if d.is_dead(now, &config.retry, beat) {
                format!(
                    "{} <span class=\"status stale\" style=\"background:#8a6d00\" title=\"in progress past the stage's timeout: a dead attempt\">stale</span>",
                    badge(d.status)
                )
            } else {
                badge(d.status)
            },
            [
                format!("at {} {}", d.state, esc(&d.state_name)),
                format!("run {}", d.run),
                format!("revision {}", d.revision),
                labels.join(" "),
                format!("updated {}", rfc3339::format(&d.updated_at)),
            ]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" &middot; "),
            timeline(config, d, now),
            id = esc(&d.build_id)
        );
        h.push_str("<details><summary>time per stage</summary><table><tr><th>stage</th><th>worked on</th><th>there for</th><th>failures</th><th>ended</th></tr>");
        let work = work_seconds(d, now);
        for s in spans(d, now) {
            let _ = write!(
                h,
                "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s.state,
                esc(&name(s.state)),
                duration(work.get(&s.state).copied().unwrap_or(0.0) as i64),
                duration((s.to - s.from).num_seconds()),
                s.failures,
                s.end
            );
        }
        h.push_str("</table></details>");
        decisions(h, d);
        h.push_str("</div>\n");
    }
}

/// The decisions people made on a build (approvals, overrides, retries,
/// cancels, restarts, restores, and any change from a build someone ran by
/// hand), with who made them and why.
fn decisions(h: &mut String, d: &Document) {
    let made: Vec<&crate::model::Event> = d
        .history
        .iter()
        .filter(|e| {
            e.by.created_by.is_some()
                || matches!(
                    e.action,
                    ActionKind::Approve
                        | ActionKind::Retry
                        | ActionKind::Set
                        | ActionKind::Cancel
                        | ActionKind::Restart
                        | ActionKind::Restore
                )
        })
        .collect();
    if made.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<details><summary>decided by people ({})</summary><table class=\"decisions\"><tr><th>at</th><th>what</th><th>by</th><th>why</th></tr>",
        made.len()
    );
    for e in made {
        let why = [e.reason.as_deref(), e.note.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{} {}</td><td class=\"wrap\">{}</td><td class=\"wrap\">{}</td></tr>",
            rfc3339::format(&e.at),
            e.action,
            e.target.unwrap_or(e.state),
            esc(&e.by.describe()),
            esc(&why)
        );
    }
    h.push_str("</table></details>");
}

pub(super) fn write(config: &Settings, rows: &[Row], path: &Path, now: Timestamp) -> Result<()> {
    let html = render(config, rows, now);
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))
}

impl Out {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Action, Actor, ErrorInfo, FailureKind, Ladder, Outcome, RetryPolicy, Rules, Update, apply,
    };
    use chrono::{TimeZone, Utc};

    #[test]
    fn spans_measure_each_stage_and_count_its_failures() {
        let (ladder, retry, labels) = (
            Ladder::default(),
            RetryPolicy::default(),
            Default::default(),
        );
        let rules = Rules {
            build_id: "b",
            ladder: &ladder,
            retry: &retry,
            labels: &labels,
        };
        let t = |m: i64| {
            Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap() + chrono::Duration::minutes(m)
        };
        let mut doc: Option<Document> = None;
        let fail = |n| Action::Fail {
            state: n,
            error: ErrorInfo::new("x".into(), FailureKind::Transient),
        };
        for (m, action) in [
            (0, Action::Init { restart: false }),
            (1, Action::Complete(0)),
            (2, Action::Start(5)),
            (10, fail(5)),
            (20, Action::Start(5)),
            (50, Action::Complete(5)),
            (55, Action::Start(10)),
        ] {
            let u = Update::new(action, Actor::default(), t(m));
            match apply(doc.as_ref(), &u, &rules).unwrap() {
                Outcome::Write(d) => doc = Some(d),
                o => panic!("{o:?}"),
            }
        }
        let spans = spans(doc.as_ref().unwrap(), t(60));
        let got: Vec<(Code, i64, u32, Status)> = spans
            .iter()
            .map(|s| (s.state, (s.to - s.from).num_minutes(), s.failures, s.end))
            .collect();
        assert_eq!(
            got,
            [
                (0, 1, 0, Status::Completed),
                (5, 49, 1, Status::Completed),
                (10, 10, 0, Status::InProgress)
            ]
        );
        // Two such builds: per stage, failures and the time it was worked
        // on (in progress: 8 + 30 minutes at 5, not the 49 it was there)
        // add up; the builds there now are counted at their current stage.
        let doc = doc.unwrap();
        let totals = stage_totals([&doc, &doc], t(60));
        let five = totals[&5];
        assert_eq!(
            (five.failures, five.seconds, five.reached, five.builds),
            (2, 2.0 * 38.0 * 60.0, true, 0)
        );
        assert_eq!(totals[&10].builds, 2);
        assert!(!totals.contains_key(&15), "a stage nobody reached");
    }
}
