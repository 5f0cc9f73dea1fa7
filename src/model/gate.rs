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
    /// The stage failed and its retry is due.
    Retry,
    /// The stage failed and its retry is not due yet.
    Wait,
    /// A human must look.
    Blocked,
    /// The build is delivered.
    Done,
    Cancelled,
}

impl NextStep {
    pub fn of(doc: &Document, now: Timestamp) -> NextStep {
        match doc.status {
            Status::Pending | Status::InProgress => NextStep::Run,
            Status::Failed => {
                if doc.retry_at.is_none_or(|t| t <= now) {
                    NextStep::Retry
                } else {
                    NextStep::Wait
                }
            }
            Status::Blocked => NextStep::Blocked,
            Status::Completed => NextStep::Done,
            Status::Cancelled => NextStep::Cancelled,
        }
    }

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
