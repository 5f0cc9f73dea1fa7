//! Reading a document: gates for `check`, requirements for `in`, and the
//! next step a job should take.

use super::document::{Document, Status, Timestamp};
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

/// A condition on the build: `{state: N}`, `{min_state: N}`,
/// `{status: blocked}`, or `status: blocked` with one of the first two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    /// Where on the ladder.
    pub at: At,
    /// Only when the build is blocked (it needs a human).
    pub blocked: bool,
}

impl Condition {
    /// `{state: N}`.
    pub fn state(n: Code) -> Condition {
        Condition {
            at: At::State(n),
            blocked: false,
        }
    }

    /// `{min_state: N}`.
    pub fn min_state(n: Code) -> Condition {
        Condition {
            at: At::MinState(n),
            blocked: false,
        }
    }

    /// The code the condition names, if any.
    pub fn code(self) -> Option<Code> {
        match self.at {
            At::Any => None,
            At::State(n) | At::MinState(n) => Some(n),
        }
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
    /// in progress past the stage's `timeout` (a dead attempt).
    /// `{min_state: N}` passes when the build is at N or past it. With
    /// `status: blocked`, the gate passes when the build is blocked there
    /// (or anywhere, alone): a human is needed.
    pub fn gate_passes(self, doc: &Document, now: Timestamp, retry: &RetryPolicy) -> bool {
        if self.blocked {
            return doc.status == Status::Blocked && self.place_holds(doc);
        }
        match self.at {
            At::State(n) => {
                doc.state == n
                    && match doc.status {
                        Status::Pending => true,
                        Status::Failed => doc.retry_at.is_none_or(|t| t <= now),
                        Status::InProgress => doc.timed_out(now, retry),
                        _ => false,
                    }
            }
            At::MinState(_) | At::Any => self.place_holds(doc),
        }
    }

    /// Requirement semantics (in): `{state: N}` holds when the revision is
    /// at N, whatever its status; `{min_state: N}` when it is at N or past
    /// it; `status: blocked` when it is blocked.
    pub fn require(self, doc: &Document) -> bool {
        self.place_holds(doc) && (!self.blocked || doc.status == Status::Blocked)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.at {
            At::Any => None,
            At::State(n) => Some(format!("state: {n}")),
            At::MinState(n) => Some(format!("min_state: {n}")),
        };
        match (self.blocked, place) {
            (true, Some(p)) => write!(f, "status: blocked, {p}"),
            (true, None) => f.write_str("status: blocked"),
            (false, Some(p)) => f.write_str(&p),
            (false, None) => f.write_str("anything"),
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
    /// The stage failed and its retry is not due yet (only from
    /// [`NextStep::live`], which reads the clock).
    Wait,
    /// A human must look.
    Blocked,
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
    pub fn of(doc: &Document) -> NextStep {
        match doc.status {
            Status::Pending | Status::InProgress => NextStep::Run,
            Status::Failed => NextStep::Retry,
            Status::Blocked => NextStep::Blocked,
            Status::Completed => NextStep::Done,
            Status::Cancelled => NextStep::Cancelled,
        }
    }

    /// The next step now: `Wait` for a failed stage whose retry is not due
    /// at `now` (for the CLI, which reads the live document).
    pub fn live(doc: &Document, now: Timestamp) -> NextStep {
        match NextStep::of(doc) {
            NextStep::Retry if doc.retry_at.is_some_and(|t| t > now) => NextStep::Wait,
            step => step,
        }
    }

    /// The step as written in `action` and `state.env`.
    pub fn as_str(self) -> &'static str {
        match self {
            NextStep::Run => "run",
            NextStep::Retry => "retry",
            NextStep::Wait => "wait",
            NextStep::Blocked => "blocked",
            NextStep::Done => "done",
            NextStep::Cancelled => "cancelled",
        }
    }
}
