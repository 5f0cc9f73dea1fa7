//! Heartbeats: a long stage's proof that its worker is alive. A heartbeat
//! is not a state change: it lives in an object of its own beside the
//! document (`<build_id>/heartbeat.json`), and is never part of the
//! history, so it adds no revision and no Concourse version.
//!
//! A heartbeat belongs to one attempt, the document's revision at which
//! the stage was in progress: while a stage is in progress every write to
//! the document ends that attempt (an outcome, a new start, a human), so a
//! heartbeat whose revision is not the document's is from a worker whose
//! attempt is over, and counts for nothing.

use super::document::{Actor, Document, Status, Timestamp, rfc3339};
use super::ladder::Code;
use super::policy::RetryPolicy;
use super::rules::{Refusal, allowed};
use serde::{Deserialize, Serialize};

/// `heartbeat.json`: the newest sign of life of an attempt in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The build.
    pub(crate) build_id: String,
    /// The run the attempt belongs to.
    pub(crate) run: u64,
    /// The stage.
    pub(crate) state: Code,
    /// The attempt (as the start recorded it).
    pub(crate) attempt: u32,
    /// The document's revision while this attempt is in progress.
    pub(crate) revision: u64,
    /// When the worker last showed it is alive.
    #[serde(with = "rfc3339")]
    pub(crate) at: Timestamp,
    /// Who sent it.
    pub(crate) by: Actor,
}

/// What a heartbeat says of itself: its stage, and, when the sender knows
/// them, the run and attempt it belongs to (from `state.env`).
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The stage.
    pub state: Code,
    /// The run the sender works for.
    pub run: Option<u64>,
    /// The attempt the sender works for.
    pub attempt: Option<u32>,
    /// Who sends it (a Concourse build is checked against the one that
    /// started the attempt).
    pub(crate) by: Actor,
    /// When.
    pub(crate) at: Timestamp,
}

impl Document {
    /// The attempt in progress, if the stage is in progress.
    pub(crate) fn attempt_in_progress(&self) -> Option<u32> {
        (self.status == Status::InProgress).then(|| self.stage_event().attempt)
    }

    /// The attempt this revision is about (a function of the revision
    /// alone, for `state.env`): the one in progress, or the next one to
    /// start. A start put's implicit get gives a task the attempt its own
    /// start recorded: what its heartbeats name.
    pub(crate) fn next_attempt(&self) -> u32 {
        self.attempts + 1
    }

    /// `heartbeat` if it belongs to the attempt in progress now.
    pub(crate) fn own_heartbeat<'a>(
        &self,
        heartbeat: Option<&'a Heartbeat>,
    ) -> Option<&'a Heartbeat> {
        heartbeat.filter(|h| {
            self.status == Status::InProgress
                && h.build_id == self.build_id
                && h.run == self.run
                && h.state == self.state
                && h.revision == self.stage_event().revision
        })
    }

    /// The newest sign of life of the attempt in progress: its start (the
    /// newest write), or its newest heartbeat.
    pub(crate) fn last_sign_of_life(&self, heartbeat: Option<&Heartbeat>) -> Timestamp {
        match self.own_heartbeat(heartbeat) {
            Some(h) if h.at > self.stage_since() => h.at,
            _ => self.stage_since(),
        }
    }

    /// When the stage in progress counts as a dead attempt, by each of its
    /// policies: (its start plus the stage's `timeout`, its last sign of
    /// life plus the stage's `heartbeat_timeout`); none for a policy the
    /// stage lacks, or when it is not in progress.
    pub(crate) fn deadlines(
        &self,
        retry: &RetryPolicy,
        heartbeat: Option<&Heartbeat>,
    ) -> (Option<Timestamp>, Option<Timestamp>) {
        if self.status != Status::InProgress {
            return (None, None);
        }
        let policy = retry.for_state(self.state);
        let after = |from: Timestamp, d: std::time::Duration| {
            from.checked_add_signed(chrono::Duration::from_std(d).ok()?)
        };
        (
            policy.timeout.and_then(|t| after(self.stage_since(), t)),
            policy
                .heartbeat_timeout
                .and_then(|t| after(self.last_sign_of_life(heartbeat), t)),
        )
    }

    /// When the stage in progress counts as a dead attempt: the earlier of
    /// its [`deadlines`](Document::deadlines).
    pub(crate) fn dead_since(
        &self,
        retry: &RetryPolicy,
        heartbeat: Option<&Heartbeat>,
    ) -> Option<Timestamp> {
        let (by_timeout, by_heartbeat) = self.deadlines(retry, heartbeat);
        [by_timeout, by_heartbeat].into_iter().flatten().min()
    }

    /// Whether the stage is in progress and its attempt dead at `now` (stale:
    /// a worker that vanished never reports).
    pub(crate) fn is_dead(
        &self,
        now: Timestamp,
        retry: &RetryPolicy,
        heartbeat: Option<&Heartbeat>,
    ) -> bool {
        self.dead_since(retry, heartbeat).is_some_and(|t| now >= t)
    }

    /// Whether the stored heartbeat could change whether the attempt in
    /// progress is dead at `now`: the stage has a `heartbeat_timeout`, its
    /// start alone no longer proves it alive, and its `timeout` (if any)
    /// has not passed. Only then does a reader fetch `heartbeat.json`.
    pub(crate) fn needs_heartbeat(&self, now: Timestamp, retry: &RetryPolicy) -> bool {
        let (by_timeout, by_start) = self.deadlines(retry, None);
        by_start.is_some_and(|t| now >= t) && by_timeout.is_none_or(|t| now < t)
    }
}

/// The heartbeat to store for `claim`, or why it is refused (nothing is
/// written then): the stage must be in progress at the claimed state, the
/// claimed run and attempt (when given) must be the ones in progress, a
/// Concourse build must be the one that started the attempt. A late
/// heartbeat of the attempt in progress (its worker was slow, not gone) is
/// taken until something records the attempt's end: once the next `start`
/// has recorded it dead, that worker's heartbeats are refused. Deciding
/// needs the document alone, so a heartbeat costs one read and one write.
pub fn heartbeat(
    doc: Option<&Document>,
    claim: &Claim,
    build_id: &str,
) -> Result<Heartbeat, Refusal> {
    let n = claim.state;
    let attempted = format!("heartbeat {n}");
    let Some(doc) = doc else {
        return Err(Refusal::NoDocument {
            build_id: build_id.to_string(),
            attempted,
        });
    };
    let attempt = doc.own_attempt(n, claim.run, claim.attempt, &claim.by, "heartbeat")?;
    Ok(Heartbeat {
        build_id: doc.build_id.clone(),
        run: doc.run,
        state: n,
        attempt,
        revision: doc.stage_event().revision,
        at: claim.at,
        by: claim.by.clone(),
    })
}

impl Document {
    /// The attempt in progress at stage `n` that a worker claims to work
    /// for (`what`: `heartbeat`, `created`), or why the claim is refused
    /// (nothing is written then): the stage must be in progress, the run
    /// and attempt (when given) the ones in progress, a Concourse build the
    /// one that started the attempt; outside a build, run and attempt must
    /// be given. A worker whose attempt is over (a zombie) is told to stop.
    pub(crate) fn own_attempt(
        &self,
        n: Code,
        run: Option<u64>,
        attempt_claimed: Option<u32>,
        by: &Actor,
        what: &str,
    ) -> Result<u32, Refusal> {
        let doc = self;
        let (a_what, guarded) = if what == "heartbeat" {
            ("a heartbeat".to_string(), "keep another alive")
        } else {
            (format!("`{what}`"), "record in another's name")
        };
        let zombie = |why: String| {
            Err(Refusal::Invalid(format!(
                "{}; {what} {n} refused: {why}; this worker's attempt is over (a zombie): stop it, nothing was changed",
                doc.whereabouts()
            )))
        };
        if let Some(run) = run.filter(|r| *r != doc.run) {
            return zombie(format!(
                "it is for run {run}, and the build is on run {}",
                doc.run
            ));
        }
        let Some(attempt) = doc.attempt_in_progress().filter(|_| doc.state == n) else {
            if run.is_some() || attempt_claimed.is_some() || by.build_id.is_some() {
                return zombie(format!(
                    "stage {n} is not in progress ({a_what} is for an attempt in progress)"
                ));
            }
            return Err(Refusal::NotAllowed {
                whereabouts: doc.whereabouts(),
                attempted: format!("{what} {n}"),
                allowed: format!("{} ({a_what} is for a stage in progress)", allowed(doc)),
            });
        };
        if let Some(theirs) = attempt_claimed.filter(|a| *a != attempt) {
            return zombie(format!(
                "it is for attempt {theirs}, and attempt {attempt} is in progress (if this worker is alive, the likely cause is a stale state.env: a gate's version fetched by a rerun or a manual build names an older attempt; take BUILD_STATE_ATTEMPT from the state.env of the stage's own start put, its implicit get)"
            ));
        }
        let start = doc.stage_event();
        // A Concourse build proves it is the attempt by being its starter; a
        // worker outside one (a task, a terminal) by naming the run and the
        // attempt its start recorded: one that names neither could be the
        // zombie of an earlier attempt, and would keep a dead one alive.
        match (&by.build_id, &start.by.build_id) {
            (Some(mine), starter) if starter.as_ref() != Some(mine) => {
                return zombie(format!(
                    "{} did not start attempt {attempt} ({} did, at revision {})",
                    by.describe(),
                    start.by.describe(),
                    start.revision
                ));
            }
            (None, _) if run.is_none() || attempt_claimed.is_none() => {
                return Err(Refusal::Invalid(format!(
                    "{}; {what} {n} refused: outside a Concourse build {a_what} names the run and the attempt it is for (--run {} --attempt {attempt}, or BUILD_STATE_RUN and BUILD_STATE_ATTEMPT from the state.env of the stage's start put), so that a worker whose attempt is over cannot {guarded}; nothing was changed",
                    doc.whereabouts(),
                    doc.run
                )));
            }
            _ => {}
        }
        Ok(attempt)
    }
}
