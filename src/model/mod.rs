//! The state model. Pure: no I/O, no clock (callers pass the time in).

pub mod attention;
pub mod document;
pub mod event;
pub mod gate;
pub mod heartbeat;
pub mod ladder;
pub mod policy;
pub mod resources;
pub mod rules;
pub mod time;
pub mod transition;

pub use attention::{Need, NeedKind, needs_human};
pub use document::{
    ActionKind, Actor, Document, DocumentError, ErrorInfo, Event, FailureKind, Status, Summary,
    Timestamp, fold,
};
pub use gate::{At, Condition, HUMAN_STATUSES, NextStep};
pub use heartbeat::{Claim, Heartbeat, heartbeat};
pub use ladder::{Code, Ladder, LadderError, OffLadder, Step};
pub use policy::{RetryPolicy, StageRetry};
pub use resources::{Holding, Resource, ResourceChange};
pub use transition::{Action, Outcome, Refusal, Rules, Update, allowed, apply, clock, extend};

#[cfg(test)]
mod outcome_tests;
#[cfg(test)]
mod tests;
