//! `metrics`: the fleet in the Prometheus text format, for a node-exporter
//! textfile collector (`--out FILE`, written atomically) or a push gateway.
//! Names and labels are stable; the README lists them.

use crate::cli::Row;
use crate::config::Settings;
use crate::model::{Document, Status, Timestamp};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;

/// A label value, escaped as the text format requires (`\\`, `\"`, `\n`):
/// prometheus-client 0.24 writes a `String` value as it is, so a state
/// named `build "golden" image` would break the scrape and a newline in a
/// name would inject lines.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Value(String);

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value(s)
    }
}

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByState {
    state: Value,
    state_name: Value,
    status: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByBuild {
    build_id: Value,
    state: Value,
    state_name: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByNeed {
    build_id: Value,
    state: Value,
    state_name: Value,
    reason: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByHolding {
    build_id: Value,
    holding: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByStage {
    state: Value,
    state_name: Value,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// The families `render` fills.
struct Families {
    builds: Family<ByState, Gauge>,
    attempts: Family<ByBuild, Gauge>,
    blocked: Family<ByBuild, Gauge>,
    failures: Family<ByStage, Counter>,
    seconds: Family<ByStage, FloatCounter>,
    oldest_in_progress: FloatGauge,
    oldest_blocked: FloatGauge,
    stale: Gauge<i64>,
    unreadable: Gauge<i64>,
    awaiting_approval: Family<ByBuild, Gauge>,
    awaiting_approval_seconds: Family<ByBuild, FloatGauge>,
    oldest_awaiting_approval: FloatGauge,
    heartbeat_age: Family<ByBuild, FloatGauge>,
    heartbeat_timeout: Family<ByBuild, FloatGauge>,
    needs_human: Family<ByNeed, Gauge>,
    leaked: Family<ByHolding, Gauge>,
    oldest_leaked: FloatGauge,
}

impl Families {
    /// Every family, registered with its help text.
    fn register(reg: &mut Registry) -> Families {
        Families {
            builds: registered(
                reg,
                "builds",
                "Builds under the prefix, by state and status",
            ),
            attempts: registered(reg, "attempts", "Failures of each build's current stage"),
            blocked: registered(
                reg,
                "blocked",
                "1 for each build that needs a human (attempts exhausted, a persistent failure, an aborted build)",
            ),
            failures: registered(
                reg,
                "stage_failures",
                "Failures recorded per stage, across the builds' current runs",
            ),
            seconds: registered(
                reg,
                "stage_seconds",
                "Time spent per stage, across the builds' current runs, in seconds",
            ),
            oldest_in_progress: registered(
                reg,
                "oldest_in_progress_seconds",
                "Age of the oldest stage in progress, in seconds (0 when none)",
            ),
            oldest_blocked: registered(
                reg,
                "oldest_blocked_seconds",
                "How long the longest-blocked build has waited for a human, in seconds (0 when none)",
            ),
            stale: registered(
                reg,
                "stale_stages",
                "Stages in progress past their timeout (dead attempts)",
            ),
            unreadable: registered(
                reg,
                "unreadable_documents",
                "Documents that cannot be read (corrupt, or the store failed)",
            ),
            awaiting_approval: registered(
                reg,
                "awaiting_approval",
                "1 for each build whose stage waits for a human's approval",
            ),
            awaiting_approval_seconds: registered(
                reg,
                "awaiting_approval_seconds",
                "How long each build has waited for its stage's approval, in seconds",
            ),
            oldest_awaiting_approval: registered(
                reg,
                "oldest_awaiting_approval_seconds",
                "How long the longest-waiting approval has waited, in seconds (0 when none)",
            ),
            heartbeat_age: registered(
                reg,
                "heartbeat_age_seconds",
                "Age of the last sign of life (start or heartbeat) of each stage in progress with a heartbeat_timeout, in seconds",
            ),
            heartbeat_timeout: registered(
                reg,
                "heartbeat_timeout_seconds",
                "The heartbeat_timeout of each stage in progress that has one, in seconds",
            ),
            needs_human: registered(
                reg,
                "needs_human",
                "1 for each build that needs a human, by reason (blocked, awaiting_approval, stale)",
            ),
            leaked: registered(
                reg,
                "leaked_resources",
                "Cloud resources each build left behind, by holding: leaked (to be deleted; a hold past its time counts) or held (kept for a human)",
            ),
            oldest_leaked: registered(
                reg,
                "oldest_leaked_seconds",
                "Age of the oldest leaked resource, in seconds (0 when none)",
            ),
        }
    }
}

/// A new metric, registered under `name` with `help`.
fn registered<M: Metric + Default + Clone>(reg: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    reg.register(name, help, metric.clone());
    metric
}

/// The fleet's metrics at `now`, in the Prometheus/OpenMetrics text format.
pub(super) fn render(settings: &Settings, rows: &[Row], now: Timestamp) -> String {
    let name = |c: u32| settings.ladder.name(c).unwrap_or("?").to_string();
    let mut reg = Registry::with_prefix("build_state");
    let f = Families::register(&mut reg);
    let mut oldest = Oldest::default();
    for row in rows {
        match &row.doc {
            Ok(doc) => observe(&f, settings, doc, row.heartbeat.as_ref(), now, &mut oldest),
            Err(_) => {
                f.unreadable.inc();
            }
        }
    }
    let docs = rows.iter().filter_map(|r| r.doc.as_ref().ok());
    for (code, t) in super::report::stage_totals(docs, now) {
        let stage = ByStage {
            state: code.to_string().into(),
            state_name: name(code).into(),
        };
        if t.failures > 0 {
            f.failures.get_or_create(&stage).inc_by(t.failures);
        }
        if t.reached {
            f.seconds.get_or_create(&stage).inc_by(millis(t.seconds));
        }
    }
    f.oldest_in_progress.set(millis(oldest.in_progress));
    f.oldest_blocked.set(millis(oldest.blocked));
    f.oldest_awaiting_approval.set(millis(oldest.approval));
    f.oldest_leaked.set(millis(oldest.leaked));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("encoding to a string");
    prometheus_text(&out)
}

/// The longest waits seen so far, in seconds.
#[derive(Default)]
struct Oldest {
    in_progress: f64,
    blocked: f64,
    approval: f64,
    leaked: f64,
}

/// One readable build's series.
fn observe(
    f: &Families,
    settings: &Settings,
    doc: &Document,
    beat: Option<&crate::model::Heartbeat>,
    now: Timestamp,
    oldest: &mut Oldest,
) {
    let name = |c: u32| settings.ladder.name(c).unwrap_or("?").to_string();
    let age = |t: &Timestamp| (now - *t).num_milliseconds().max(0) as f64 / 1000.0;
    let Families {
        builds,
        attempts,
        blocked,
        stale,
        awaiting_approval,
        awaiting_approval_seconds,
        heartbeat_age,
        heartbeat_timeout,
        needs_human,
        leaked,
        ..
    } = f;
    for l in crate::cli::fleet::list::left_behind(doc, now) {
        leaked
            .get_or_create(&ByHolding {
                build_id: doc.build_id.clone().into(),
                holding: l.holding.as_str().to_string().into(),
            })
            .inc();
        if l.holding == crate::model::Holding::Leaked {
            oldest.leaked = oldest.leaked.max(age(&l.since));
        }
    }
    builds
        .get_or_create(&ByState {
            state: doc.state.to_string().into(),
            state_name: name(doc.state).into(),
            status: doc.status.to_string().into(),
        })
        .inc();
    let here = ByBuild {
        build_id: doc.build_id.clone().into(),
        state: doc.state.to_string().into(),
        state_name: name(doc.state).into(),
    };
    attempts.get_or_create(&here).set(i64::from(doc.attempts));
    match doc.status {
        Status::Blocked => {
            blocked.get_or_create(&here).set(1);
            oldest.blocked = oldest.blocked.max(age(&doc.stage_since()));
        }
        Status::AwaitingApproval => {
            awaiting_approval.get_or_create(&here).set(1);
            let waited = age(&doc.stage_since());
            awaiting_approval_seconds
                .get_or_create(&here)
                .set(millis(waited));
            oldest.approval = oldest.approval.max(waited);
        }
        Status::InProgress => {
            oldest.in_progress = oldest.in_progress.max(age(&doc.stage_since()));
            if doc.is_dead(now, &settings.retry, beat) {
                stale.inc();
            }
            if let Some(t) = settings.retry.for_state(doc.state).heartbeat_timeout {
                heartbeat_age
                    .get_or_create(&here)
                    .set(millis(age(&doc.last_sign_of_life(beat))));
                heartbeat_timeout
                    .get_or_create(&here)
                    .set(millis(t.as_secs_f64()));
            }
        }
        _ => {}
    }
    if let Some(need) = crate::model::needs_human(doc, &settings.retry, beat, now) {
        needs_human
            .get_or_create(&ByNeed {
                build_id: here.build_id.clone(),
                state: here.state.clone(),
                state_name: here.state_name.clone(),
                reason: need.kind.as_str().to_string().into(),
            })
            .set(1);
    }
}

/// Seconds rounded to the millisecond: sums of many spans print as
/// `36.85`, not `36.85000000000001`.
fn millis(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// The Prometheus text format (0.0.4), which the node exporter's textfile
/// collector and `promtool` read, from the OpenMetrics text the encoder
/// writes: a counter family's HELP and TYPE lines name its `_total` samples,
/// and there is no `# EOF` line.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    // Within a family, the encoder writes its series in the order of a hash
    // map: sorted here, so that the text is the same from run to run.
    let mut lines: Vec<&str> = Vec::new();
    let mut series: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if line.starts_with('#') {
            series.sort_unstable();
            lines.append(&mut series);
            lines.push(line);
        } else {
            series.push(line);
        }
    }
    series.sort_unstable();
    lines.append(&mut series);
    let mut out = String::new();
    for line in lines {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Writes `text` to `path` atomically (a textfile collector never reads half
/// a file).
pub(super) fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    // Readable by the node exporter, which often runs as another user.
    crate::cli::write_atomically(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::terminal::Out;
    use crate::cli::testing::{act_with, text};
    use crate::model::Action;
    use crate::store::AnyStore;
    use crate::store::memory::MemoryStore;

    /// Label values a scrape must survive: quotes, backslashes, newlines
    /// (a line injected by a state's name would be a metric of its own).
    #[tokio::test]
    async fn adversarial_names_are_escaped() {
        let source: crate::protocol::Source = serde_json::from_value(serde_json::json!({
            "local_dir": "/nowhere", "prefix": "fleet/",
            "states": [
                {"code": 0, "name": "build \"golden\" image"},
                {"code": 5, "name": "a\\b\n# TYPE evil gauge\nevil 1"},
                {"code": 10, "name": "done"}
            ]
        }))
        .unwrap();
        let settings = std::sync::Arc::new(Settings::from_source(&source).unwrap());
        let store = AnyStore::Memory(MemoryStore::new());
        let (out, buf) = Out::buffered(false);
        for (id, actions) in [
            ("quoted", vec![Action::Init { restart: false }]),
            (
                "newline",
                vec![Action::Init { restart: false }, Action::Complete(0)],
            ),
        ] {
            let config = settings.for_build(id).unwrap();
            for a in actions {
                act_with(&config, &store, a, &out).await.unwrap();
            }
        }
        text(&buf);
        let rows = super::super::scan::scan(&settings, &store, 2, None)
            .await
            .unwrap();
        let metrics = render(&settings, &rows, crate::now());
        assert!(
            metrics.contains(r#"state_name="build \"golden\" image""#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"state_name="a\\b\n# TYPE evil gauge\nevil 1""#),
            "{metrics}"
        );
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("# TYPE evil") || l.starts_with("evil")),
            "no line injected:\n{metrics}"
        );
    }

    /// `--out` never writes through a link planted where the old code put
    /// its temporary file, and the result is readable by the exporter.
    #[test]
    fn out_is_written_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let out = dir.path().join("build_state.prom");
        let planted = dir
            .path()
            .join(format!(".build_state.prom.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomically(&out, "build_state_builds 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "build_state_builds 1\n"
        );
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && !n.contains(&std::process::id().to_string()))
            .collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
    }

    #[test]
    fn seconds_are_rounded_to_the_millisecond() {
        assert_eq!(super::millis(36.85000000000001), 36.85);
        assert_eq!(super::millis(0.1 + 0.2), 0.3);
        assert_eq!(super::millis(1.0004), 1.0);
        assert_eq!(format!("{}", super::millis(12.3456)), "12.346");
    }

    #[test]
    fn series_are_in_a_stable_order() {
        let text = "# HELP a x.\n# TYPE a gauge\na{b=\"2\"} 1\na{b=\"1\"} 1\n# HELP c y.\n# TYPE c counter\nc_total{d=\"z\"} 1\nc_total{d=\"a\"} 2\n# EOF\n";
        assert_eq!(
            super::prometheus_text(text),
            "# HELP a x.\n# TYPE a gauge\na{b=\"1\"} 1\na{b=\"2\"} 1\n# HELP c_total y.\n# TYPE c_total counter\nc_total{d=\"a\"} 2\nc_total{d=\"z\"} 1\n"
        );
    }
}
