//! Reading a document: gates for `check`, requirements for `in`, and the
//! next step a job should take.

use super::document::{Document, Status, Timestamp};
use super::heartbeat::Heartbeat;
use super::ladder::Code;
use super::policy::RetryPolicy;
use std::fmt;

/// Where a condition looks on the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Anywhere (with `status: blocked` only).
    Any,
    /// At N (for a gate: and the stage is due).
    State(Code),
    /// At N or past it.
    MinState(Code),
}

/// A condition on the build: `{state: N}`, `{min_state: N}`, a status
/// that needs a human (`{status: blocked}`, `{status: awaiting_approval}`),
/// or such a status with one of the first two; or, for a gate only,
/// `{timer: true}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    /// Where on the ladder.
    pub(crate) at: At,
    /// Only when the build stands there in this status (`blocked` or
    /// `awaiting_approval`: a human is needed).
    pub(crate) status: Option<Status>,
    /// `{timer: true}` (with `at: Any`, no status): passes when the clock
    /// alone has made something due that no write will announce (see
    /// [`clock_opened`]).
    pub(crate) timer: bool,
    /// `{leaked: true}` (with `at: Any`, no status): passes while the
    /// build has leaked resources (a cleanup job's gate).
    pub(crate) leaked: bool,
}

/// Whether the clock alone, with nothing written, has made something of
/// the build due at `now`: a failed (or deferred) stage whose `retry_at`
/// passed, an attempt in progress past its deadline (a dead attempt), a
/// stage overdue. What `{timer: true}` passes on: a gate checked often,
/// whose job hands off to the stage gates (checked rarely) that can open.
pub(crate) fn clock_opened(
    doc: &Document,
    now: Timestamp,
    retry: &RetryPolicy,
    heartbeat: Option<&Heartbeat>,
) -> bool {
    let due = |t: Option<Timestamp>| t.is_some_and(|t| t <= now);
    match doc.status {
        Status::Failed | Status::Pending if due(doc.retry_at) => true,
        Status::InProgress if doc.is_dead(now, retry, heartbeat) => true,
        Status::InProgress => super::resources::hold_ended(&doc.resources, now),
        _ => {
            super::attention::overdue_since(doc, retry, now).is_some()
                || super::resources::hold_ended(&doc.resources, now)
        }
    }
}

/// The statuses a condition may name: both need a human.
pub const HUMAN_STATUSES: [Status; 2] = [Status::Blocked, Status::AwaitingApproval];

impl Condition {
    /// `{state: N}`.
    #[cfg(test)]
    pub(crate) fn state(n: Code) -> Condition {
        Condition {
            at: At::State(n),
            status: None,
            timer: false,
            leaked: false,
        }
    }

    /// `{min_state: N}`.
    #[cfg(test)]
    pub(crate) fn min_state(n: Code) -> Condition {
        Condition {
            at: At::MinState(n),
            status: None,
            timer: false,
            leaked: false,
        }
    }

    /// `{timer: true}`.
    pub(crate) fn timer() -> Condition {
        Condition {
            at: At::Any,
            status: None,
            timer: true,
            leaked: false,
        }
    }

    /// `{leaked: true}`.
    pub(crate) fn leaked() -> Condition {
        Condition {
            leaked: true,
            ..Condition::timer_off()
        }
    }

    fn timer_off() -> Condition {
        Condition {
            timer: false,
            ..Condition::timer()
        }
    }

    /// The revision the gate emits when it passes: a stage's gate the
    /// newest that changed the stage (it must not trigger its job again on
    /// a revision that only recorded a created instance), a `leaked` gate
    /// the newest that leaked something (one cleanup per leak), the timer
    /// the newest.
    pub(crate) fn emits(self, doc: &Document) -> u64 {
        if self.leaked {
            doc.leak_revision()
        } else if self.timer {
            doc.revision
        } else {
            doc.stage_event().revision
        }
    }

    /// The code the condition names, if any.
    pub(crate) fn code(self) -> Option<Code> {
        match self.at {
            At::Any => None,
            At::State(n) | At::MinState(n) => Some(n),
        }
    }

    /// Whether this is a stage's gate (`{state: N}` alone): it opens when
    /// the stage is due.
    pub(crate) fn is_stage_gate(self) -> bool {
        !self.timer && !self.leaked && self.status.is_none() && matches!(self.at, At::State(_))
    }

    fn place_holds(self, doc: &Document) -> bool {
        match self.at {
            At::Any => true,
            At::State(n) => doc.state == n,
            At::MinState(n) => doc.state >= n,
        }
    }

    /// Gate semantics (check). `{state: N}` passes when the build is at N
    /// and the stage is due: pending, failed with its `retry_at` passed, or
    /// in progress past the stage's `timeout` or `heartbeat_timeout` (a
    /// dead attempt; `heartbeat` is the stored heartbeat, if read).
    /// `{min_state: N}` passes when the build is at N or past it. With a
    /// status, the gate passes when the build stands there in that status
    /// (or anywhere, alone): a human is needed; `blocked` passes for a
    /// stage overdue too (due for long, no build starting it).
    pub(crate) fn gate_passes(
        self,
        doc: &Document,
        now: Timestamp,
        retry: &RetryPolicy,
        heartbeat: Option<&Heartbeat>,
    ) -> bool {
        if self.timer {
            return clock_opened(doc, now, retry, heartbeat);
        }
        if self.leaked {
            // As the revision records it: a hold that ended is leaked by
            // the next write (the timer's hand-off makes one), so that
            // `in` of the version emitted lists it in `leaked.json`.
            return doc
                .resources
                .iter()
                .any(|r| r.holding == super::resources::Holding::Leaked);
        }
        if let Some(status) = self.status {
            // A stage due for long that no build starts needs a human as
            // much as a blocked one: the alert job hears of it too.
            let overdue = status == Status::Blocked
                && super::attention::overdue_since(doc, retry, now).is_some();
            return (doc.status == status || overdue) && self.place_holds(doc);
        }
        match self.at {
            At::State(n) => {
                doc.state == n
                    && match doc.status {
                        // A deferred stage (its last build never started
                        // it) has a `retry_at` too.
                        Status::Pending | Status::Failed => doc.retry_at.is_none_or(|t| t <= now),
                        Status::InProgress => doc.is_dead(now, retry, heartbeat),
                        _ => false,
                    }
            }
            At::MinState(_) | At::Any => self.place_holds(doc),
        }
    }

    /// Whether deciding this gate on `doc` at `now` needs the stored
    /// heartbeat: the stage is in progress at the gate's state, has a
    /// `heartbeat_timeout`, is not dead by its timeout already, and its
    /// start alone no longer proves it alive. Otherwise no heartbeat can
    /// change the answer, and none is read.
    pub(crate) fn needs_heartbeat(
        self,
        doc: &Document,
        now: Timestamp,
        retry: &RetryPolicy,
    ) -> bool {
        (self.timer || self.is_stage_gate() && self.code() == Some(doc.state))
            && doc.needs_heartbeat(now, retry)
    }

    /// Requirement semantics (in): `{state: N}` holds when the revision is
    /// at N, whatever its status; `{min_state: N}` when it is at N or past
    /// it; with a status, when the revision stands in it.
    pub(crate) fn require(self, doc: &Document) -> bool {
        self.place_holds(doc) && self.status.is_none_or(|s| doc.status == s)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.at {
            At::Any => None,
            At::State(n) => Some(format!("state: {n}")),
            At::MinState(n) => Some(format!("min_state: {n}")),
        };
        if self.timer {
            return f.write_str("timer: true");
        }
        if self.leaked {
            return f.write_str("leaked: true");
        }
        match (self.status, place) {
            (Some(s), Some(p)) => write!(f, "status: {s}, {p}"),
            (Some(s), None) => write!(f, "status: {s}"),
            (None, Some(p)) => f.write_str(&p),
            (None, None) => f.write_str("anything"),
        }
    }
}

/// What a job that got this revision should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// The stage is due (pending, or in progress after a run that died).
    Run,
    /// The stage failed and will be retried, not before its `retry_at`.
    Retry,
    /// The stage failed (or was deferred) and is not due yet (only from
    /// `NextStep::live`, which reads the clock).
    Wait,
    /// A human must look.
    Blocked,
    /// The stage waits for a human's approval (`approve N`).
    Approval,
    /// The build is delivered.
    Done,
    /// The build was abandoned.
    Cancelled,
}

impl NextStep {
    /// The next step as a function of the revision alone: what `in` writes.
    /// A version's contents never change (Concourse caches a get by its
    /// version), so a failed stage reads `Retry` whenever it is fetched;
    /// when the retry is due is `retry_at`'s business (a gated check emits
    /// the version once it is due).
    pub(crate) fn of(doc: &Document) -> NextStep {
        match doc.status {
            Status::Pending | Status::InProgress => NextStep::Run,
            Status::Failed => NextStep::Retry,
            Status::Blocked => NextStep::Blocked,
            Status::AwaitingApproval => NextStep::Approval,
            Status::Completed => NextStep::Done,
            Status::Cancelled => NextStep::Cancelled,
        }
    }

    /// The next step now: `Wait` for a failed or deferred stage that is not
    /// due at `now` (for the CLI, which reads the live document).
    pub(crate) fn live(doc: &Document, now: Timestamp) -> NextStep {
        match NextStep::of(doc) {
            NextStep::Retry | NextStep::Run
                if doc.status != Status::InProgress && doc.retry_at.is_some_and(|t| t > now) =>
            {
                NextStep::Wait
            }
            step => step,
        }
    }

    /// The step as written in `action` and `state.env`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NextStep::Run => "run",
            NextStep::Retry => "retry",
            NextStep::Wait => "wait",
            NextStep::Blocked => "blocked",
            NextStep::Approval => "approval",
            NextStep::Done => "done",
            NextStep::Cancelled => "cancelled",
        }
    }
}
