//! The rules of the state machine, written once: which action is allowed
//! from where (the rule table), what is allowed now (for messages), and why
//! an update is refused. `transition` decides by them, `heartbeat` refuses
//! by them.

use super::document::{ActionKind, Document, Status};
use super::ladder::OffLadder;

/// Why an update was refused. Every message says where the build is and
/// what the caller can do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{build_id} has no state yet; cannot {attempted} (put `init: true` first)")]
    /// The build has no document yet.
    NoDocument {
        /// The build.
        build_id: String,
        /// The action refused.
        attempted: String,
    },
    #[error("{whereabouts}; cannot {attempted}; allowed now: {allowed}")]
    /// The action is not allowed from where the build is.
    NotAllowed {
        /// Where the build is.
        whereabouts: String,
        /// The action refused.
        attempted: String,
        /// What is allowed now.
        allowed: String,
    },
    #[error(transparent)]
    /// A code off the ladder.
    OffLadder(#[from] OffLadder),
    #[error("{0}")]
    /// Anything else, in words.
    Invalid(String),
    /// A whole document would replace an existing one (the importer says
    /// how to replace it on purpose).
    #[error("a document exists ({0})")]
    Exists(String),
}

/// The transition rules, written once: for each action on a stage, the
/// statuses of that stage (the build's state) it is allowed from. `apply`
/// refuses by this table and `allowed` lists from it.
const STAGE_RULES: [(ActionKind, &[Status]); 5] = [
    (
        ActionKind::Start,
        &[Status::Pending, Status::Failed, Status::InProgress],
    ),
    (
        ActionKind::Complete,
        &[Status::Pending, Status::InProgress, Status::Failed],
    ),
    (
        ActionKind::Fail,
        &[Status::Pending, Status::InProgress, Status::Failed],
    ),
    (
        ActionKind::Retry,
        &[Status::Failed, Status::Blocked, Status::InProgress],
    ),
    (ActionKind::Approve, &[Status::AwaitingApproval]),
];

/// Whether the staged action `kind` is allowed from `status`.
pub(crate) fn stage_allows(kind: ActionKind, status: Status) -> bool {
    STAGE_RULES
        .iter()
        .any(|(k, from)| *k == kind && from.contains(&status))
}

/// Whether a run in `status` is over (delivered or cancelled): `init` with
/// `restart` starts a new one, `cancel` has nothing left to cancel.
pub(crate) fn run_is_over(status: Status) -> bool {
    matches!(status, Status::Completed | Status::Cancelled)
}

/// What may be done to the build as it stands, for refusal messages.
pub fn allowed(doc: &Document) -> String {
    let n = doc.state;
    let mut out: Vec<String> = STAGE_RULES
        .iter()
        .filter(|(_, from)| from.contains(&doc.status))
        .map(|(kind, _)| format!("{kind} {n}"))
        .collect();
    if run_is_over(doc.status) {
        out.push("init with restart: true".to_string());
    }
    out.push("set (with a reason)".to_string());
    if !run_is_over(doc.status) {
        out.push("cancel".to_string());
    }
    out.push("restart".to_string());
    out.join(", ")
}
