//! What a document's history is made of: statuses, failure kinds and
//! errors, actions, who acted, and the events themselves.

use super::ladder::Code;
use super::time::{Timestamp, rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Where the stage stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The stage is due and nobody has started it.
    Pending,
    /// The stage was started.
    InProgress,
    /// The stage failed and will be retried.
    Failed,
    /// A human must look.
    Blocked,
    /// The stage needs a human's approval before it may start (a stage
    /// policy `approval: true`).
    AwaitingApproval,
    /// The build is delivered (final state only).
    Completed,
    /// The build was abandoned.
    Cancelled,
}

impl Status {
    /// Every status, in the order of the table in the README.
    pub(crate) const ALL: [Status; 7] = [
        Status::Pending,
        Status::InProgress,
        Status::Failed,
        Status::Blocked,
        Status::AwaitingApproval,
        Status::Completed,
        Status::Cancelled,
    ];

    /// The status as written in documents and versions.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Failed => "failed",
            Status::Blocked => "blocked",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
        }
    }

    /// A status from its written form.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a failure is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Retried (after a backoff).
    Transient,
    /// Blocks the stage at once.
    Persistent,
}

impl FailureKind {
    /// A kind from its written form.
    pub fn parse(s: &str) -> Option<FailureKind> {
        match s.trim() {
            "transient" => Some(FailureKind::Transient),
            "persistent" => Some(FailureKind::Persistent),
            _ => None,
        }
    }

    /// The kind as written in documents.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Persistent => "persistent",
        }
    }
}

/// A recorded failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// What went wrong (bounded to 4000 characters, the end kept).
    pub(crate) message: String,
    /// Whether it is retried.
    pub(crate) kind: FailureKind,
    /// The source pattern that gave `kind` (`persistent_errors: ...` or
    /// `transient_errors: ...`); absent when the put gave the kind or no
    /// pattern matched (unknown: transient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rule: Option<String>,
}

impl ErrorInfo {
    /// An error of a kind given explicitly.
    pub fn new(message: String, kind: FailureKind) -> ErrorInfo {
        ErrorInfo {
            message,
            kind,
            rule: None,
        }
    }
}

/// The action an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// A new build (or a no-op while it is at its initial state).
    Init,
    /// A stage started.
    Start,
    /// A stage succeeded.
    Complete,
    /// A stage failed.
    Fail,
    /// A human's retry of a stage.
    Retry,
    /// A manual override.
    Set,
    /// The build was abandoned.
    Cancel,
    /// A human approved the stage (`approve N`).
    Approve,
    /// A new run (the old one archived).
    Restart,
    /// An earlier stored version of the document put back (`build-state
    /// restore`): the history up to it, then this event at a new revision.
    Restore,
    /// A stage's outcome from a Concourse build that never started it (it
    /// failed before its `start` landed: a gate or repo get, the start put
    /// itself): nothing is counted, the stage stays where it was and is due
    /// again at the event's `retry_at` (a new revision: a new version for
    /// its gate to trigger on).
    Defer,
    /// Resources an attempt created, recorded from inside its task
    /// (`build-state created`) or by a put: nothing else changes.
    Created,
    /// Resources removed (`release`): nothing else changes.
    Release,
    /// Resources kept for a human until a time (`hold`): nothing else
    /// changes.
    Hold,
    /// A hold whose time passed, recorded by the clock (the timer's
    /// hand-off): its resources are leaked now.
    Leak,
}

impl ActionKind {
    /// Whether the event only records resources (`created`, `release`,
    /// `hold`, `leak`): the stage's logic (its attempt, its start, its
    /// deadlines, its gate's version) looks past such events.
    pub(crate) fn is_resource_record(self) -> bool {
        matches!(
            self,
            ActionKind::Created | ActionKind::Release | ActionKind::Hold | ActionKind::Leak
        )
    }

    /// The action as written in documents.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActionKind::Init => "init",
            ActionKind::Start => "start",
            ActionKind::Complete => "complete",
            ActionKind::Fail => "fail",
            ActionKind::Retry => "retry",
            ActionKind::Set => "set",
            ActionKind::Cancel => "cancel",
            ActionKind::Approve => "approve",
            ActionKind::Restart => "restart",
            ActionKind::Restore => "restore",
            ActionKind::Defer => "defer",
            ActionKind::Created => "created",
            ActionKind::Release => "release",
            ActionKind::Hold => "hold",
            ActionKind::Leak => "leak",
        }
    }

    /// Events after which the stage starts afresh: attempts count from 0.
    pub(super) fn resets_attempts(self) -> bool {
        matches!(
            self,
            ActionKind::Init
                | ActionKind::Restart
                | ActionKind::Complete
                | ActionKind::Retry
                | ActionKind::Set
        )
    }

    /// Events after which `last_error` is cleared (a human `retry` keeps it,
    /// so the next attempt still shows what went wrong).
    /// A human's decision (or a new run): start-over counts begin again.
    pub(super) fn resets_start_overs(self) -> bool {
        matches!(
            self,
            ActionKind::Init | ActionKind::Restart | ActionKind::Retry | ActionKind::Set
        )
    }

    pub(super) fn clears_error(self) -> bool {
        self.resets_attempts() && self != ActionKind::Retry
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a change: a Concourse build, or a person at the CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `BUILD_TEAM_NAME`
    pub(crate) team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `BUILD_PIPELINE_NAME`
    pub(crate) pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `BUILD_JOB_NAME`
    pub(crate) job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `BUILD_NAME`
    pub(crate) build_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `BUILD_ID`
    pub(crate) build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The build's page.
    pub(crate) build_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A person or a host (the CLI).
    pub(crate) user: Option<String>,
    /// Who started the Concourse build (`BUILD_CREATED_BY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl Actor {
    /// One short phrase: `team/pipeline/job #12` (with who ran it by hand,
    /// when the resource exposes it: `... #12 (by alice)`), or `cli:alice`.
    pub(crate) fn describe(&self) -> String {
        if let Some(job) = &self.job {
            let mut s = String::new();
            for part in [&self.team, &self.pipeline].into_iter().flatten() {
                s.push_str(part);
                s.push('/');
            }
            s.push_str(job);
            if let Some(name) = &self.build_name {
                s.push_str(" #");
                s.push_str(name);
            }
            if let Some(who) = &self.created_by {
                s.push_str(&format!(" (by {who})"));
            }
            s
        } else if let Some(id) = &self.build_id {
            format!("concourse build {id}")
        } else if let Some(user) = &self.user {
            format!("cli:{user}")
        } else {
            "unknown".to_string()
        }
    }
}

/// One change to the document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The revision this event made.
    pub(crate) revision: u64,
    #[serde(with = "rfc3339")]
    /// When.
    pub(crate) at: Timestamp,
    /// What.
    pub action: ActionKind,
    /// The code the action named (`complete 25` has target 25, state 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<Code>,
    /// State after the event.
    pub(crate) state: Code,
    /// Status after the event.
    pub(crate) status: Status,
    /// The attempt at the stage this event concerns (1-based; 0 when the
    /// stage has not been attempted).
    pub(crate) attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// With `fail` (and `defer`): what went wrong.
    pub(crate) error: Option<ErrorInfo>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    /// With `fail` (retried) and `defer`: when the stage is due again.
    pub(crate) retry_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    /// Variables this event merged into the document's `vars`.
    pub(crate) vars: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// With `set`, `cancel` and `approve`: why; with `defer`, and a `fail`
    /// recorded for another build's dead attempt: what the resource decided.
    pub(crate) reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Free text.
    pub note: Option<String>,
    #[serde(default)]
    /// Who.
    pub by: Actor,
    /// The behaviour settings (ladder, retry policy, error patterns) of the
    /// resource that made this event, recorded when they differ from the
    /// ones the run recorded last: what the CLI decides by when it is not
    /// given its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<Value>,
    /// What the event did to the build's cloud resources.
    #[serde(flatten)]
    pub(crate) resources: super::resources::ResourceEvents,
}
