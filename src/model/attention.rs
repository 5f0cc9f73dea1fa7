//! Who needs a human: a build that is blocked, waits for an approval,
//! whose attempt in progress shows no sign of life, or whose stage has been
//! due for long with no build starting it; since when, why, and
//! what unblocks it. One function, so that `list`, `show`, `metrics` and
//! the dashboard say the same thing.

use super::document::{ActionKind, Document, FailureKind, Status, Timestamp, rfc3339};
use super::heartbeat::Heartbeat;
use super::policy::RetryPolicy;
use serde::Serialize;

/// Why a build needs a human.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NeedKind {
    /// Attempts exhausted, a persistent error, or an aborted build.
    Blocked,
    /// A stage waits for its approval.
    AwaitingApproval,
    /// The attempt in progress shows no sign of life (past its `timeout`
    /// or `heartbeat_timeout`): its worker is gone.
    Stale,
    /// The stage has been due for long (`overdue_since`) and no build
    /// started it: its job cannot run (a paused pipeline or job, an input
    /// that keeps failing, the resource unreachable).
    Overdue,
}

impl NeedKind {
    /// As written in output and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NeedKind::Blocked => "blocked",
            NeedKind::AwaitingApproval => "awaiting_approval",
            NeedKind::Stale => "stale",
            NeedKind::Overdue => "overdue",
        }
    }
}

/// A build that needs a human.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Need {
    /// The build.
    pub(crate) build_id: String,
    /// The stage.
    pub(crate) state: super::ladder::Code,
    /// The stage's name.
    pub(crate) state_name: String,
    /// Why, in one word.
    pub(crate) kind: NeedKind,
    /// Since when.
    #[serde(with = "rfc3339")]
    pub(crate) since: Timestamp,
    /// Why, in words (the last error and what decided it, the heartbeat).
    pub(crate) why: String,
    /// What unblocks it: the exact command, or the Concourse job to run.
    pub(crate) unblock: String,
}

/// Whether `doc` needs a human at `now`, and what for.
pub fn needs_human(
    doc: &Document,
    retry: &RetryPolicy,
    heartbeat: Option<&Heartbeat>,
    now: Timestamp,
) -> Option<Need> {
    let id = &doc.build_id;
    let n = doc.state;
    let policy = retry.for_state(n);
    let need = |kind, since, why: String, unblock: String| Need {
        build_id: id.clone(),
        state: n,
        state_name: doc.state_name.clone(),
        kind,
        since,
        why,
        unblock,
    };
    match doc.status {
        Status::Blocked => {
            let error = doc.last_error.as_ref();
            let message = error.map_or("no error recorded", |e| e.message.as_str());
            // Set to blocked by hand: why is its reason, not an error.
            let set = doc
                .history
                .iter()
                .rev()
                .find(|e| e.action != ActionKind::Restore)
                .filter(|e| e.action == ActionKind::Set);
            let why = match (set, error) {
                (Some(e), _) => format!(
                    "set to blocked by {}: {}",
                    e.by.describe(),
                    e.reason.as_deref().unwrap_or("no reason given")
                ),
                (None, error) => match error {
                    Some(e) if e.message.contains(" was aborted; a human decides") => {
                        format!("the build was aborted: {message}")
                    }
                    Some(e) if e.kind == FailureKind::Persistent => match &e.rule {
                        Some(rule) => format!("a persistent error (matched {rule}): {message}"),
                        None => format!("a persistent error: {message}"),
                    },
                    _ => format!(
                        "attempts exhausted ({} of {}): {message}",
                        doc.attempts, policy.max_attempts
                    ),
                },
            };
            Some(need(
                NeedKind::Blocked,
                doc.stage_since(),
                why,
                format!("fix the cause, then: build-state retry {id} {n}"),
            ))
        }
        Status::AwaitingApproval => Some(need(
            NeedKind::AwaitingApproval,
            doc.stage_since(),
            format!("stage {n} ({}) needs a human's approval", doc.state_name),
            format!(
                "build-state approve {id} {n} --reason TEXT (or run the pipeline's approval job)"
            ),
        )),
        Status::InProgress => {
            let dead = doc.dead_since(retry, heartbeat).filter(|t| now >= *t)?;
            let start = doc
                .history
                .iter()
                .rev()
                .find(|e| e.action == ActionKind::Start);
            let sign = match doc.own_heartbeat(heartbeat) {
                Some(h) => format!("last heartbeat at {}", rfc3339::format(&h.at)),
                None => format!("in progress since {}", rfc3339::format(&doc.stage_since())),
            };
            // Names a pipeline chose: quoted for a shell, word by word, so
            // that pasting the command runs that command and nothing else.
            let job = start
                .and_then(|e| Some((e.by.pipeline.as_ref()?, e.by.job.as_ref()?)))
                .and_then(|(p, j)| shell_word(&format!("{p}/{j}")))
                .map(|pj| format!("its gate is open: fly trigger-job -j {pj} runs it now, "))
                .unwrap_or_default();
            Some(need(
                NeedKind::Stale,
                dead,
                format!(
                    "no sign of life: {sign}; the attempt counts as dead since {}",
                    rfc3339::format(&dead)
                ),
                format!(
                    "{job}the next start {n} records the dead attempt; or build-state retry {id} {n}"
                ),
            ))
        }
        Status::Pending | Status::Failed => {
            let since = overdue_since(doc, retry, now)?;
            let due = due_since(doc)?;
            let deferred = doc
                .history
                .iter()
                .rev()
                .take_while(|e| e.action != ActionKind::Start && e.at >= due)
                .filter(|e| e.action == ActionKind::Defer)
                .count();
            let tried = match deferred {
                0 => "no build started it".to_string(),
                1 => "one build tried and failed before its start landed".to_string(),
                k => format!("{k} builds tried and failed before their start landed"),
            };
            Some(need(
                NeedKind::Overdue,
                since,
                format!(
                    "stage {n} ({}) has been due since {} and {tried}: is the pipeline or its job paused, or does an input of the job keep failing?",
                    doc.state_name,
                    rfc3339::format(&due)
                ),
                format!(
                    "make the stage's job run (fly unpause-job, fix its inputs, fly trigger-job); or build-state set {id} {n} --status pending --reason TEXT"
                ),
            ))
        }
        _ => None,
    }
}

/// `word` as one shell word (quoted when it must be), or `None` when no
/// quoting makes it safe to show and paste (a control character, a NUL).
pub(crate) fn shell_word(word: &str) -> Option<String> {
    if word.chars().any(char::is_control) {
        return None;
    }
    shlex::try_quote(word).ok().map(|w| w.into_owned())
}

/// How long a stage may be due with no start before it needs a human:
/// twice its `timeout` (an hour when it has none).
pub(crate) fn overdue_after(retry: &RetryPolicy, n: super::ladder::Code) -> std::time::Duration {
    2 * retry
        .for_state(n)
        .timeout
        .unwrap_or(std::time::Duration::from_secs(3600))
}

/// When the stage the build is at became due and stayed so with no start:
/// the event that made it pending, or its failure's `retry_at`;
/// deferrals (builds that never started it) and restores do not change it.
pub(crate) fn due_since(doc: &Document) -> Option<Timestamp> {
    if !matches!(doc.status, Status::Pending | Status::Failed) {
        return None;
    }
    let e = doc
        .history
        .iter()
        .rev()
        .find(|e| !matches!(e.action, ActionKind::Defer | ActionKind::Restore))?;
    match e.status {
        Status::Pending => Some(e.at),
        Status::Failed => Some(e.retry_at.unwrap_or(e.at).max(e.at)),
        _ => None,
    }
}

/// When the stage the build is at becomes overdue (due for longer than
/// [`overdue_after`] with no start), if it stays as it is.
pub(crate) fn overdue_at(doc: &Document, retry: &RetryPolicy) -> Option<Timestamp> {
    let bound = chrono::Duration::from_std(overdue_after(retry, doc.state)).ok()?;
    due_since(doc)?.checked_add_signed(bound)
}

/// Since when the stage the build is at is overdue at `now`, if it is.
pub(crate) fn overdue_since(
    doc: &Document,
    retry: &RetryPolicy,
    now: Timestamp,
) -> Option<Timestamp> {
    overdue_at(doc, retry).filter(|t| now >= *t)
}
