//! Reading a document: gates for `check`, requirements for `in`, and the
//! next step a job should take.

use super::document::{Document, Status, Timestamp};
use super::ladder::Code;
use std::fmt;

/// A condition on the build's state: `{state: N}` or `{min_state: N}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// At N (for a gate: and the stage is due).
    State(Code),
    /// At N or past it.
    MinState(Code),
}

impl Condition {
    /// The code the condition names.
    pub fn code(self) -> Code {
        match self {
            Condition::State(n) | Condition::MinState(n) => n,
        }
    }

    /// Gate semantics (check): `State(N)` passes when the build is at N and
    /// the stage is due: pending, or failed with its `retry_at` passed.
    /// `MinState(N)` passes when the build is at N or past it.
    pub fn gate_passes(self, doc: &Document, now: Timestamp) -> bool {
        match self {
            Condition::State(n) => {
                doc.state == n
                    && match doc.status {
                        Status::Pending => true,
                        Status::Failed => doc.retry_at.is_none_or(|t| t <= now),
                        _ => false,
                    }
            }
            Condition::MinState(n) => doc.state >= n,
        }
    }

    /// Requirement semantics (in): `State(N)` holds when the revision is at
    /// N, whatever its status; `MinState(N)` when it is at N or past it.
    pub fn require(self, doc: &Document) -> bool {
        match self {
            Condition::State(n) => doc.state == n,
            Condition::MinState(n) => doc.state >= n,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::State(n) => write!(f, "state: {n}"),
            Condition::MinState(n) => write!(f, "min_state: {n}"),
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
