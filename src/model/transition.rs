//! Transitions: a function from the current document and an update to the
//! next document, or a refusal that says what would be allowed.

use super::document::{
    ActionKind, Actor, Document, DocumentError, ErrorInfo, Event, FailureKind, Status, Timestamp,
};
use super::ladder::{Code, Ladder};
use super::policy::RetryPolicy;
use super::resources::{self, ResourceChange};
pub use super::rules::{Refusal, allowed};
use super::rules::{run_is_over, stage_allows};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What a put (or a CLI command) asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the build at its initial state; with `restart`, start a new run
    /// of a completed or cancelled build.
    Init {
        /// Start a new run of a completed or cancelled build.
        restart: bool,
    },
    /// Stage N started.
    Start(Code),
    /// Stage N succeeded: on to the next code.
    Complete(Code),
    /// Stage N failed.
    Fail {
        /// The stage.
        state: Code,
        /// What went wrong.
        error: ErrorInfo,
    },
    /// A human's retry of stage N.
    Retry(Code),
    /// A manual override.
    Set {
        /// The state to put the build at.
        state: Code,
        /// The status it has there.
        status: Status,
        /// Why (required).
        reason: String,
    },
    /// Abandon the build.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Archive the run and start a new one.
    Restart,
    /// A human approves stage N (it was awaiting approval).
    Approve {
        /// The stage.
        state: Code,
        /// Why, or what was checked (optional).
        reason: Option<String>,
    },
    /// Resources (in the update's `resources`) that the attempt in progress at
    /// stage N created, recorded from inside its task: refused for an
    /// attempt that is over, as a heartbeat is.
    Created {
        /// The stage (a put's `created` alone: the stage in progress).
        state: Option<Code>,
        /// The run the task works for (`state.env`), when it knows it.
        run: Option<u64>,
        /// The attempt the task works for, when it knows it.
        attempt: Option<u32>,
    },
    /// Resources removed (`release` alone): ids, or names of live ones.
    Release,
    /// Keep the build's resources for a human (`hold` alone).
    Hold,
}

impl Action {
    /// The kind recorded in the event.
    pub(crate) fn kind(&self) -> ActionKind {
        match self {
            Action::Init { .. } => ActionKind::Init,
            Action::Start(_) => ActionKind::Start,
            Action::Complete(_) => ActionKind::Complete,
            Action::Fail { .. } => ActionKind::Fail,
            Action::Retry(_) => ActionKind::Retry,
            Action::Set { .. } => ActionKind::Set,
            Action::Cancel { .. } => ActionKind::Cancel,
            Action::Restart => ActionKind::Restart,
            Action::Approve { .. } => ActionKind::Approve,
            Action::Created { .. } => ActionKind::Created,
            Action::Release => ActionKind::Release,
            Action::Hold => ActionKind::Hold,
        }
    }

    /// The code the action names, if any.
    pub(crate) fn target(&self) -> Option<Code> {
        match self {
            Action::Start(n) | Action::Complete(n) | Action::Retry(n) => Some(*n),
            Action::Fail { state, .. }
            | Action::Set { state, .. }
            | Action::Approve { state, .. } => Some(*state),
            Action::Created { state, .. } => *state,
            Action::Init { .. }
            | Action::Cancel { .. }
            | Action::Restart
            | Action::Release
            | Action::Hold => None,
        }
    }

    /// `complete 25`, `init`, `cancel`.
    pub(crate) fn describe(&self) -> String {
        match self.target() {
            Some(n) => format!("{} {n}", self.kind()),
            None => self.kind().to_string(),
        }
    }
}

/// An action with what goes along with it into the history entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub(crate) action: Action,
    /// Variables to merge into the document.
    pub(crate) vars: Map<String, Value>,
    /// Free text for the event.
    pub note: Option<String>,
    /// Who.
    pub(crate) by: Actor,
    /// When.
    pub(crate) at: Timestamp,
    /// The behaviour settings the update was decided by, recorded in its
    /// event when they differ from the ones the run recorded last.
    pub(crate) policy: Option<Value>,
    /// Refuse after writing, with this message (the write records what
    /// went wrong, and the put must fail all the same).
    pub(crate) then_refuse: Option<String>,
    /// The stored heartbeat of the stage, when the caller read it (a
    /// `start` of a stage with a `heartbeat_timeout`): whether the attempt
    /// in progress is dead depends on it.
    pub(crate) heartbeat: Option<super::heartbeat::Heartbeat>,
    /// What the update asks of the build's cloud resources.
    pub(crate) resources: ResourceChange,
}

impl Update {
    /// An update with no vars and no note.
    pub fn new(action: Action, by: Actor, at: Timestamp) -> Update {
        Update {
            action,
            vars: Map::new(),
            note: None,
            by,
            at,
            policy: None,
            then_refuse: None,
            heartbeat: None,
            resources: ResourceChange::default(),
        }
    }
}

/// The configuration a transition needs.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// The build the document must belong to.
    pub build_id: &'a str,
    /// The state ladder.
    pub ladder: &'a Ladder,
    /// The retry policy.
    pub retry: &'a RetryPolicy,
    /// Labels given to a new document (init) or a new run (restart).
    pub labels: &'a BTreeMap<String, String>,
}

/// What to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing: the document already reflects the update (a replayed put,
    /// or `init` of a build that is still at its initial state).
    Unchanged,
    /// Nothing, for the reason given: an outcome put from a Concourse build
    /// that did not start the stage's current attempt (a job run early by
    /// hand, or queued while the stage was failing) must count nothing.
    Ignored(String),
    /// Write this document (create it when there was none).
    Write(Document),
    /// Archive the finished run once, then write the new run.
    Restart {
        /// The finished run, for `runs/<run>.json`.
        archive: Document,
        /// The new run's document.
        document: Document,
    },
    /// Write this document, then refuse the update all the same: what was
    /// found must be recorded (a dead attempt that used the stage's last
    /// attempt), and the caller must hear that it cannot go on.
    WriteAndRefuse {
        /// The document to write.
        document: Document,
        /// Why the update itself does not go on.
        refusal: Refusal,
    },
}

/// Applies `update` to `current` (`None`: no document yet).
pub fn apply(
    current: Option<&Document>,
    update: &Update,
    rules: &Rules,
) -> Result<Outcome, Refusal> {
    let mut outcome = decide(current, update, rules)?;
    settle(current, &mut outcome, update, rules)?;
    if let Some(policy) = &update.policy {
        record_policy(&mut outcome, policy);
    }
    if let (Some(message), Outcome::Write(_)) = (&update.then_refuse, &outcome) {
        let Outcome::Write(document) = outcome else {
            unreachable!("matched above")
        };
        outcome = Outcome::WriteAndRefuse {
            document,
            refusal: Refusal::Invalid(message.clone()),
        };
    }
    Ok(outcome)
}

/// Decides what the written events do to the build's resources (see
/// [`resources::settle`]). An update whose action writes nothing (a replay,
/// an outcome that counts nothing) still records the resources it names
/// that are new, and releases what it names: nothing recorded is lost.
fn settle(
    current: Option<&Document>,
    outcome: &mut Outcome,
    update: &Update,
    rules: &Rules,
) -> Result<(), Refusal> {
    let change = &update.resources;
    let rebuild = |doc: &mut Document, new: usize| -> Result<(), Refusal> {
        let mut history = std::mem::take(&mut doc.history);
        resources::settle(&mut history, new, change)?;
        *doc = doc.continued(history, rules.ladder);
        Ok(())
    };
    let new = current.map_or(0, |d| d.history.len());
    match outcome {
        Outcome::Write(doc) => {
            rebuild(doc, new)?;
            // A release or hold that changed nothing writes nothing.
            let last = doc.last_event();
            if last.action.is_resource_record() && last.resources.is_empty() {
                *outcome = Outcome::Unchanged;
            }
            Ok(())
        }
        Outcome::WriteAndRefuse { document: doc, .. } => rebuild(doc, new),
        Outcome::Restart { document, .. } => rebuild(document, 0),
        Outcome::Unchanged | Outcome::Ignored(_) => {
            let Some(doc) = current.filter(|_| !change.is_empty()) else {
                return Ok(());
            };
            let ignored = match outcome {
                Outcome::Ignored(why) => Some(why.clone()),
                _ => None,
            };
            if let Some(written) = resources_alone(doc, update, rules, ignored)? {
                *outcome = Outcome::Write(written);
            }
            Ok(())
        }
    }
}

/// The resources an update names, recorded in an event of their own when
/// its action wrote nothing: `None` when they change nothing. An outcome
/// that counted nothing (`ignored`) is of an attempt that is over: what it
/// created is leaked at once.
fn resources_alone(
    doc: &Document,
    update: &Update,
    rules: &Rules,
    ignored: Option<String>,
) -> Result<Option<Document>, Refusal> {
    let change = &update.resources;
    if change.created.is_empty() && change.release.is_empty() {
        return Ok(None);
    }
    let mut e = record_event(doc, update);
    let zombie = ignored.is_some() && !change.created.is_empty();
    if zombie {
        e.reason = ignored;
    }
    let mut history = doc.history.clone();
    let new = history.len();
    history.push(e);
    resources::settle(&mut history, new, &update.resources)?;
    let last = history.last_mut().expect("pushed");
    if zombie {
        let ids: Vec<String> = last.resources.created.values().cloned().collect();
        last.resources.leaked.extend(ids);
    }
    if last.resources.is_empty() {
        return Ok(None);
    }
    Ok(Some(doc.continued(history, rules.ladder)))
}

/// An event that records resources only: the build stays where it is.
fn record_event(doc: &Document, update: &Update) -> Event {
    let last = doc.last_event();
    let kind = if !update.resources.created.is_empty() {
        ActionKind::Created
    } else if !update.resources.release.is_empty() {
        ActionKind::Release
    } else {
        ActionKind::Hold
    };
    let mut e = event(
        update,
        doc.revision + 1,
        doc.state,
        doc.status,
        last.attempt,
    );
    e.action = kind;
    e.retry_at = last.retry_at;
    e.vars = Map::new();
    e
}

/// Records `policy` in the event a written document adds, unless the run
/// already recorded exactly these settings last.
fn record_policy(outcome: &mut Outcome, policy: &Value) {
    let doc = match outcome {
        Outcome::Unchanged | Outcome::Ignored(_) => return,
        Outcome::Write(doc)
        | Outcome::Restart { document: doc, .. }
        | Outcome::WriteAndRefuse { document: doc, .. } => doc,
    };
    let Some((last, earlier)) = doc.history.split_last_mut() else {
        return;
    };
    let recorded = earlier.iter().rev().find_map(|e| e.policy.as_ref());
    if recorded != Some(policy) {
        last.policy = Some(policy.clone());
    }
}

fn decide(current: Option<&Document>, update: &Update, rules: &Rules) -> Result<Outcome, Refusal> {
    let action = &update.action;
    if let Some(code) = action.target() {
        rules.ladder.check(code)?;
    }
    let Some(doc) = current else {
        return create(update, rules);
    };

    if is_replay(doc, update) {
        return Ok(Outcome::Unchanged);
    }
    if let Some(outcome) = another_builds_outcome(doc, update, rules) {
        return Ok(outcome);
    }

    let refuse = || {
        Err(Refusal::NotAllowed {
            whereabouts: doc.whereabouts(),
            attempted: action.describe(),
            allowed: allowed(doc),
        })
    };
    let at_stage = |n: Code, kind: ActionKind| doc.state == n && stage_allows(kind, doc.status);
    use Status::*;

    let (state, status, attempt, retry_at, error) = match action {
        Action::Init { restart } => return init(doc, update, rules, *restart),
        Action::Created {
            state: n,
            run,
            attempt,
        } => {
            doc.own_attempt(
                n.unwrap_or(doc.state),
                *run,
                *attempt,
                &update.by,
                "created",
            )?;
            return Ok(record(doc, update, rules));
        }
        Action::Release | Action::Hold => return Ok(record(doc, update, rules)),
        Action::Restart => return Ok(restart_run(doc, update, rules)),
        Action::Start(n) => {
            if !at_stage(*n, ActionKind::Start) {
                return refuse();
            }
            binding_backoff(doc, update, *n)?;
            if doc.is_dead(update.at, rules.retry, update.heartbeat.as_ref()) {
                return Ok(dead_attempt(doc, update, rules, *n, Finder::Start));
            }
            (*n, InProgress, doc.attempts + 1, None, None)
        }
        Action::Complete(n) => {
            if !at_stage(*n, ActionKind::Complete) {
                return refuse();
            }
            let final_code = rules.ladder.final_code();
            let next = rules.ladder.next(*n).unwrap_or(final_code);
            let status = if next == final_code {
                Completed
            } else {
                arrival(&doc.history, next, rules)
            };
            (next, status, doc.attempts + 1, None, None)
        }
        Action::Fail { state: n, error } => {
            if !at_stage(*n, ActionKind::Fail) {
                return refuse();
            }
            failed(doc, update, rules, *n, error)
        }
        Action::Retry(n) => {
            if !at_stage(*n, ActionKind::Retry) {
                return refuse();
            }
            // A human's reset: the stage's approval (if it needs one) is
            // asked for again.
            (*n, arrival(&[], *n, rules), 0, None, None)
        }
        Action::Approve { state: n, .. } => {
            if !at_stage(*n, ActionKind::Approve) {
                return refuse();
            }
            (*n, Pending, doc.attempts, None, None)
        }
        Action::Set {
            state: n,
            status,
            reason,
        } => set(doc, rules, *n, *status, reason)?,
        Action::Cancel { .. } => {
            if run_is_over(doc.status) {
                return refuse();
            }
            (doc.state, Cancelled, doc.attempts, None, None)
        }
    };

    let mut e = event(update, doc.revision + 1, state, status, attempt);
    e.retry_at = retry_at;
    e.error = error;
    let mut history = doc.history.clone();
    history.push(e);
    Ok(Outcome::Write(doc.continued(history, rules.ladder)))
}
/// An event that records resources alone (what they are is [`settle`]'s).
fn record(doc: &Document, update: &Update, rules: &Rules) -> Outcome {
    let mut history = doc.history.clone();
    history.push(record_event(doc, update));
    Outcome::Write(doc.continued(history, rules.ladder))
}

/// The first document of a build: only `init` (or `restart`) creates it.
fn create(update: &Update, rules: &Rules) -> Result<Outcome, Refusal> {
    match &update.action {
        Action::Init { .. } | Action::Restart => Ok(Outcome::Write(Document::from_history(
            rules.build_id,
            1,
            rules.labels.clone(),
            vec![event(
                update,
                1,
                rules.ladder.initial(),
                arrival(&[], rules.ladder.initial(), rules),
                0,
            )],
            rules.ladder,
        ))),
        action => Err(Refusal::NoDocument {
            build_id: rules.build_id.to_string(),
            attempted: action.describe(),
        }),
    }
}

/// An event's fields as a stage action decides them: state, status,
/// attempt, `retry_at`, error.
type Next = (Code, Status, u32, Option<Timestamp>, Option<ErrorInfo>);

/// `init` on a build that has a document: a no-op at the initial state, a
/// new run once the run is over (`restart`), refused otherwise, saying so
/// plainly for a new commit while a run is under way.
fn init(doc: &Document, update: &Update, rules: &Rules, restart: bool) -> Result<Outcome, Refusal> {
    use Status::*;
    if doc.state == rules.ladder.initial() && matches!(doc.status, Pending | AwaitingApproval) {
        return Ok(Outcome::Unchanged);
    }
    if restart && run_is_over(doc.status) {
        return Ok(restart_run(doc, update, rules));
    }
    if restart {
        return Err(Refusal::Invalid(format!(
            "{}; run {} is under way, so init with restart starts no new run: that happens once this run is delivered or cancelled (run the job again then, or cancel the build to start over now)",
            doc.whereabouts(),
            doc.run
        )));
    }
    Err(Refusal::NotAllowed {
        whereabouts: doc.whereabouts(),
        attempted: update.action.describe(),
        allowed: allowed(doc),
    })
}

/// The backoff is binding: a stage job run early does not retry. (A
/// deferral only says when the gate opens again: a human's build may start
/// the stage before.)
fn binding_backoff(doc: &Document, update: &Update, n: Code) -> Result<(), Refusal> {
    if doc.status == Status::Failed
        && doc.stage_event().action != ActionKind::Defer
        && let Some(due) = doc.retry_at
        && update.at < due
    {
        return Err(Refusal::Invalid(format!(
            "{}; its retry is due at {} (in {}): start {n} is refused until then (the backoff is binding); a human retries at once with retry {n}",
            doc.whereabouts(),
            super::document::rfc3339::format(&due),
            super::time::format((due - update.at).to_std().unwrap_or_default()),
        )));
    }
    Ok(())
}

/// The event of a failure of stage `n`: blocked after its last attempt or
/// on a persistent error, else failed with its backoff, sent back to its
/// `resume_from` on a start-over stage (the error names this stage).
fn failed(doc: &Document, update: &Update, rules: &Rules, n: Code, error: &ErrorInfo) -> Next {
    use Status::*;
    let policy = rules.retry.for_state(n);
    let attempts = doc.attempts + 1;
    let error = bounded(error);
    if error.kind == FailureKind::Persistent || attempts >= policy.max_attempts {
        return (n, Blocked, attempts, None, Some(error));
    }
    let wait =
        chrono::Duration::from_std(policy.backoff_after(attempts)).unwrap_or(chrono::Duration::MAX);
    let retry_at = update.at.checked_add_signed(wait);
    let back_to = policy.resume_from.unwrap_or(n);
    // Sent back to a stage that needs an approval it no longer has (it
    // completed since, or a `set` skipped it): it waits for one, as on any
    // arrival there.
    if back_to != n && arrival(&doc.history, back_to, rules) == AwaitingApproval {
        (back_to, AwaitingApproval, attempts, None, Some(error))
    } else {
        (back_to, Failed, attempts, retry_at, Some(error))
    }
}

/// `set n`: a human's override, with a reason; only the final state may be
/// set completed; set to pending on a stage that needs approval waits for
/// it (a manual override resets the stage's approval).
fn set(
    doc: &Document,
    rules: &Rules,
    n: Code,
    status: Status,
    reason: &str,
) -> Result<Next, Refusal> {
    use Status::*;
    if reason.trim().is_empty() {
        return Err(Refusal::Invalid(format!(
            "{}; set {n} needs a reason (a manual override is recorded with why)",
            doc.whereabouts()
        )));
    }
    if status == Completed && n != rules.ladder.final_code() {
        return Err(Refusal::Invalid(format!(
            "{}; cannot set {n} to completed: only the final state {} can be completed",
            doc.whereabouts(),
            rules.ladder.label(rules.ladder.final_code())
        )));
    }
    let status = if status == Pending {
        arrival(&[], n, rules)
    } else {
        status
    };
    Ok((n, status, 0, None, None))
}

/// A put that repeats the newest history entry of the same Concourse build
/// (same action and code) changes nothing, so a re-run put step is safe.
fn is_replay(doc: &Document, update: &Update) -> bool {
    let last = doc.stage_event();
    update.by.build_id.is_some()
        && last.by.build_id == update.by.build_id
        && last.action == update.action.kind()
        && last.target == update.action.target()
}

/// An outcome (`complete N`, `fail N`) from a Concourse build that did not
/// start the stage's current attempt, or that already recorded the stage
/// complete: what it does instead of counting. `None`: it counts (its own
/// attempt, a human at the CLI, or a stage no job starts, such as
/// `complete 0` right after `init`).
///
/// - A failure after the same build recorded the stage complete (its
///   `on_success` put landed and failed all the same, so `on_failure`
///   ran): a recorded success stays a success.
/// - A failure from a build that never started the stage (it failed at its
///   gate get, its repo get, its start put) while the stage is due: the
///   build used up its gate's version, so the stage is deferred: a new
///   revision, due again after the stage's backoff, nothing counted. When
///   the stage was in progress past its deadline (a dead attempt, which is
///   why the gate let this build in), the dead attempt is recorded as the
///   next start would have recorded it.
/// - Otherwise, when another build started the current attempt (a job run
///   early by hand, queued while the stage was failing, a zombie): nothing.
fn another_builds_outcome(doc: &Document, update: &Update, rules: &Rules) -> Option<Outcome> {
    let kind = update.action.kind();
    let (ActionKind::Complete | ActionKind::Fail) = kind else {
        return None;
    };
    let n = update.action.target()?;
    let mine = update.by.build_id.as_ref()?;
    let own = doc.history.iter().rev().find(|e| {
        e.target == Some(n)
            && e.by.build_id.as_ref() == Some(mine)
            && !e.action.is_resource_record()
    });
    if kind == ActionKind::Fail
        && let Some(done) = own.filter(|e| e.action == ActionKind::Complete)
    {
        return Some(Outcome::Ignored(format!(
            "{}; fail {n} from {} counts nothing: this build recorded stage {n} complete at revision {} (its success put landed, and the build went on as if it had not: a recorded success stays a success)",
            doc.whereabouts(),
            update.by.describe(),
            done.revision
        )));
    }
    if kind == ActionKind::Fail
        && let Some(said) = own.filter(|e| matches!(e.action, ActionKind::Defer | ActionKind::Fail))
    {
        // Its outcome was taken already (its failure, a deferral, a dead
        // attempt recorded in its name): a replay after another write.
        return Some(Outcome::Ignored(format!(
            "{}; fail {n} from {} counts nothing: its {} at revision {} already answered for it",
            doc.whereabouts(),
            update.by.describe(),
            said.action,
            said.revision
        )));
    }
    let start = current_start(doc, n);
    if start.is_some_and(|s| s.by.build_id.as_ref().is_none_or(|b| b == mine)) {
        return None;
    }
    if kind == ActionKind::Fail && own.is_none() && doc.state == n {
        let due = doc.retry_at.is_none_or(|t| t <= update.at);
        match doc.status {
            Status::Pending | Status::Failed if due => return Some(defer(doc, update, rules, n)),
            Status::InProgress
                if doc.is_dead(update.at, rules.retry, update.heartbeat.as_ref()) =>
            {
                return Some(dead_attempt(doc, update, rules, n, Finder::Outcome));
            }
            Status::Pending | Status::Failed if start.is_none() => {
                // Not due yet (a backoff or a deferral runs): a build run
                // early, which never started the stage.
                return Some(Outcome::Ignored(format!(
                    "{}; fail {n} from {} counts nothing: it never started stage {n}, which is not due until {} (a stage job run early)",
                    doc.whereabouts(),
                    update.by.describe(),
                    doc.retry_at
                        .map(|t| super::document::rfc3339::format(&t))
                        .unwrap_or_default()
                )));
            }
            _ => {}
        }
    }
    if let Some(mine) = own.filter(|e| e.action == ActionKind::Start) {
        // Its attempt ended (a human reset the stage, or another start
        // recorded it dead): a zombie's outcome.
        let ended = doc
            .history
            .iter()
            .rev()
            .take_while(|e| e.revision > mine.revision)
            .filter(|e| e.target == Some(n))
            .last();
        let since = match (start, ended) {
            (Some(s), _) => format!(
                "{} started another at revision {}",
                s.by.describe(),
                s.revision
            ),
            (None, Some(e)) if e.action == ActionKind::Fail => format!(
                "it was recorded failed at revision {} by {}",
                e.revision,
                e.by.describe()
            ),
            _ => "a human reset the stage since".to_string(),
        };
        return Some(Outcome::Ignored(format!(
            "{}; {kind} {n} from {} counts nothing: the attempt it started at revision {} is over ({since})",
            doc.whereabouts(),
            update.by.describe(),
            mine.revision
        )));
    }
    // The stage's newest start since it was last reset, if its attempt is
    // over: this build did not make it either.
    let start = start.or_else(|| last_start(doc, n))?;
    Some(Outcome::Ignored(format!(
        "{}; {} {n} from {} counts nothing: this build did not start the stage's current attempt ({} did, at revision {}); a stage job run early (by hand, or queued while the stage was failing) neither retries nor fails the stage",
        doc.whereabouts(),
        kind,
        update.by.describe(),
        start.by.describe(),
        start.revision
    )))
}

/// The newest `start n` since the stage was last reset (its attempt may
/// be over).
fn last_start(doc: &Document, n: Code) -> Option<&Event> {
    doc.history
        .iter()
        .rev()
        .find_map(|e| match e.action {
            ActionKind::Start if e.target == Some(n) => Some(Some(e)),
            ActionKind::Init | ActionKind::Restart => Some(None),
            ActionKind::Retry | ActionKind::Set if e.target == Some(n) => Some(None),
            _ => None,
        })
        .flatten()
}

/// The `start n` of the stage's current attempt: the newest since the
/// stage was last reset (`retry`, `set`, a new run), unless the attempt
/// ended (a failure recorded after it: its own, or its death).
fn current_start(doc: &Document, n: Code) -> Option<&Event> {
    let start = last_start(doc, n)?;
    let ended = doc
        .history
        .iter()
        .rev()
        .take_while(|e| e.revision > start.revision)
        .any(|e| e.action == ActionKind::Fail && e.target == Some(n));
    (!ended).then_some(start)
}

/// What the clock alone has decided of `doc` at `now` (a put that only
/// hands off, the timer's job): an attempt in progress past its deadline is
/// recorded dead (its backoff, or blocked); otherwise nothing.
pub fn clock(
    doc: &Document,
    now: Timestamp,
    by: Actor,
    heartbeat: Option<super::heartbeat::Heartbeat>,
    rules: &Rules,
) -> Outcome {
    if doc.status != Status::InProgress || !doc.is_dead(now, rules.retry, heartbeat.as_ref()) {
        if !resources::hold_ended(&doc.resources, now) {
            return Outcome::Unchanged;
        }
        // A hold whose time passed: its resources are leaked now (a new
        // revision, which the `leaked` gate emits).
        let mut e = record_event(doc, &Update::new(Action::Hold, by, now));
        e.action = ActionKind::Leak;
        let mut history = doc.history.clone();
        history.push(e);
        let new = history.len() - 1;
        resources::settle(&mut history, new, &ResourceChange::default())
            .expect("leaking adds no resource");
        return Outcome::Write(doc.continued(history, rules.ladder));
    }
    let n = doc.state;
    let mut update = Update::new(
        Action::Fail {
            state: n,
            error: ErrorInfo::new(String::new(), FailureKind::Transient),
        },
        by,
        now,
    );
    update.heartbeat = heartbeat;
    dead_attempt(doc, &update, rules, n, Finder::Clock)
}

/// A failure from a build that never started stage `n`, while the stage is
/// due: nothing counted; the stage stays where it is and is due again after
/// its backoff (a `defer` event: a new revision, so its gate triggers the
/// stage job again then).
fn defer(doc: &Document, update: &Update, rules: &Rules, n: Code) -> Outcome {
    let policy = rules.retry.for_state(n);
    let wait = chrono::Duration::from_std(policy.backoff_after(doc.attempts.max(1)))
        .unwrap_or(chrono::Duration::MAX);
    let due = update.at.checked_add_signed(wait);
    let mut e = event(update, doc.revision + 1, n, doc.status, doc.attempts);
    e.action = ActionKind::Defer;
    e.retry_at = due;
    e.vars = Map::new();
    if let Action::Fail { error, .. } = &update.action {
        e.error = Some(bounded(error));
    }
    e.reason = Some(format!(
        "{} failed before its start {n} landed (a get or the start put): it never ran the stage, so nothing is counted; stage {n} is due again at {}",
        update.by.describe(),
        due.map_or("the end of time".into(), |t| {
            super::document::rfc3339::format(&t)
        })
    ));
    let mut history = doc.history.clone();
    history.push(e);
    Outcome::Write(doc.continued(history, rules.ladder))
}

fn restart_run(doc: &Document, update: &Update, rules: &Rules) -> Outcome {
    let mut labels = doc.labels.clone();
    labels.extend(rules.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut first = event(
        update,
        doc.revision + 1,
        rules.ladder.initial(),
        arrival(&[], rules.ladder.initial(), rules),
        0,
    );
    first.resources.carried =
        resources::carry(&doc.resources, doc.run, update.at, doc.revision + 1);
    Outcome::Restart {
        archive: doc.clone(),
        document: Document::from_history(
            &doc.build_id,
            doc.run + 1,
            labels,
            vec![first],
            rules.ladder,
        ),
    }
}

/// Who records a dead attempt, and what follows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finder {
    /// A `start N`: the stage starts again at once; with no attempt left
    /// the failure blocks the stage and the start is refused.
    Start,
    /// The outcome put of a build that never started the stage: the
    /// failure waits for its backoff, the outcome counts nothing.
    Outcome,
    /// A put that only hands off (the timer's job): the clock found it.
    Clock,
}

/// A stage in progress past its deadline: the dead attempt is recorded as a
/// transient failure, and what follows is `finder`'s (see [`Finder`]).
fn dead_attempt(
    doc: &Document,
    update: &Update,
    rules: &Rules,
    n: Code,
    finder: Finder,
) -> Outcome {
    let then_start = finder == Finder::Start;
    let policy = rules.retry.for_state(n);
    let attempts = doc.attempts + 1;
    let since = super::document::rfc3339::format(&doc.stage_since());
    let heartbeat = update.heartbeat.as_ref();
    // Which deadline passed first: the heartbeat's, or the timeout's.
    let (by_timeout, by_heartbeat) = doc.deadlines(rules.retry, heartbeat);
    let lost_heartbeat =
        by_heartbeat.filter(|b| *b <= update.at && by_timeout.is_none_or(|t| *b < t));
    let message = match (lost_heartbeat, policy.heartbeat_timeout) {
        (Some(dead), Some(beat)) => {
            let sign = match doc.own_heartbeat(heartbeat) {
                Some(h) => format!(
                    "its last heartbeat at {}",
                    super::document::rfc3339::format(&h.at)
                ),
                None => format!("no heartbeat since its start at {since}"),
            };
            format!(
                "attempt {attempts} lost its heartbeat: {sign}, and no sign of life within the stage's heartbeat_timeout ({}) after it (dead since {}); its worker stopped",
                super::time::format(beat),
                super::document::rfc3339::format(&dead)
            )
        }
        _ => format!(
            "attempt {attempts} timed out: in progress since {since}, longer than the stage's timeout ({}); its worker never reported",
            policy.timeout.map(super::time::format).unwrap_or_default()
        ),
    };
    let error = ErrorInfo::new(message, FailureKind::Transient);
    let blocked = attempts >= policy.max_attempts;
    let mut fail = event(
        update,
        doc.revision + 1,
        n,
        if blocked {
            Status::Blocked
        } else {
            Status::Failed
        },
        attempts,
    );
    fail.action = ActionKind::Fail;
    fail.target = Some(n);
    fail.error = Some(error);
    fail.vars = Map::new();
    fail.note = None;
    if !then_start {
        if !blocked {
            let wait = chrono::Duration::from_std(policy.backoff_after(attempts))
                .unwrap_or(chrono::Duration::MAX);
            fail.retry_at = update.at.checked_add_signed(wait);
        }
        fail.reason = Some(match finder {
            Finder::Clock => format!(
                "found by the clock ({}), past the attempt's deadline",
                update.by.describe()
            ),
            _ => format!(
                "recorded for {}, which never started stage {n}: its own failure counts nothing",
                update.by.describe()
            ),
        });
    }
    let mut history = doc.history.clone();
    history.push(fail);
    if then_start && !blocked {
        history.push(event(
            update,
            doc.revision + 2,
            n,
            Status::InProgress,
            attempts + 1,
        ));
    }
    let document = doc.continued(history, rules.ladder);
    if blocked && then_start {
        let refusal = Refusal::Invalid(format!(
            "{}; its attempt {attempts} timed out and was the last (max_attempts {}): recorded as blocked, so start {n} does not go on; a human decides (retry {n})",
            document.whereabouts(),
            policy.max_attempts
        ));
        Outcome::WriteAndRefuse { document, refusal }
    } else {
        Outcome::Write(document)
    }
}

/// The status a build has when it arrives at stage `n` (the previous stage
/// completed, a run began, a human reset the stage): `pending`, or
/// `awaiting_approval` for a stage with `approval: true` unless its
/// approval still holds in `history` (an `approve n` since the stage was
/// last reset or completed: a failure that sent the build back to an
/// earlier state does not ask again).
fn arrival(history: &[Event], n: Code, rules: &Rules) -> Status {
    if !rules.retry.for_state(n).approval {
        return Status::Pending;
    }
    let holds = history
        .iter()
        .rev()
        .find_map(|e| match e.action {
            ActionKind::Approve if e.target == Some(n) => Some(true),
            ActionKind::Complete | ActionKind::Retry | ActionKind::Set if e.target == Some(n) => {
                Some(false)
            }
            ActionKind::Init | ActionKind::Restart => Some(false),
            _ => None,
        })
        .unwrap_or(false);
    if holds {
        Status::Pending
    } else {
        Status::AwaitingApproval
    }
}

/// Free text (a reason, a note) as a document keeps it: at most
/// [`MAX_ERROR_CHARS`] characters, the start kept (four 1 MB notes would
/// fill a build to its cap).
fn capped(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text.to_string();
    }
    let mut kept: String = text.chars().take(MAX_ERROR_CHARS - 1).collect();
    kept.push('…');
    kept
}

fn event(update: &Update, revision: u64, state: Code, status: Status, attempt: u32) -> Event {
    let reason = match &update.action {
        Action::Set { reason, .. } | Action::Cancel { reason } => Some(capped(reason)),
        Action::Approve { reason, .. } => reason.as_deref().map(capped),
        _ => None,
    };
    Event {
        revision,
        at: update.at,
        action: update.action.kind(),
        target: update.action.target(),
        state,
        status,
        attempt,
        error: None,
        retry_at: None,
        vars: update.vars.clone(),
        reason,
        note: update.note.as_deref().map(capped),
        by: update.by.clone(),
        policy: None,
        resources: Default::default(),
    }
}

/// The longest error message a document keeps, in characters. Task output
/// can be huge; the end of it (where the cause usually is) is kept.
pub(crate) const MAX_ERROR_CHARS: usize = 4000;

/// `error` with its message cut to its last [`MAX_ERROR_CHARS`] characters.
fn bounded(error: &ErrorInfo) -> ErrorInfo {
    let n = error.message.chars().count();
    if n <= MAX_ERROR_CHARS {
        return error.clone();
    }
    let tail: String = error
        .message
        .chars()
        .skip(n - (MAX_ERROR_CHARS - 1))
        .collect();
    ErrorInfo {
        message: format!("…{tail}"),
        ..error.clone()
    }
}

/// Accepts a whole document produced elsewhere (a task, the CLI) when it
/// extends the stored history: same build and run, the stored events
/// unchanged, new events appended, summary equal to the fold.
pub fn extend(
    current: Option<&Document>,
    proposed: Document,
    rules: &Rules,
) -> Result<Outcome, Refusal> {
    let invalid = |m: String| Err(Refusal::Invalid(format!("the document in `file` {m}")));
    if proposed.build_id != rules.build_id {
        return invalid(format!(
            "is for build {:?}, not {}",
            proposed.build_id, rules.build_id
        ));
    }
    if let Err(e) = proposed.verify(rules.ladder) {
        return match e {
            DocumentError::OffLadder(e) => Err(e.into()),
            e => invalid(format!("cannot be used: {e}")),
        };
    }
    let mut proposed = proposed;
    proposed.state_name = rules
        .ladder
        .name(proposed.state)
        .unwrap_or_default()
        .to_string();
    let Some(doc) = current else {
        if proposed.first_revision() != 1 || proposed.run != 1 {
            return invalid(format!(
                "starts at revision {} of run {} but {} has no state yet (a new document starts at revision 1 of run 1)",
                proposed.first_revision(),
                proposed.run,
                rules.build_id
            ));
        }
        return Ok(Outcome::Write(proposed));
    };
    if proposed.run != doc.run {
        return invalid(format!(
            "is run {} but the stored document is run {}",
            proposed.run, doc.run
        ));
    }
    let n = doc.history.len();
    if proposed.history.len() < n || proposed.history[..n] != doc.history[..] {
        return invalid(format!(
            "does not extend the stored history of {} (revision {}): its first {} events must be the stored ones",
            rules.build_id, doc.revision, n
        ));
    }
    if proposed.history.len() == n {
        return Ok(Outcome::Unchanged);
    }
    Ok(Outcome::Write(proposed))
}
