//! Unit and property tests of the pure state model, by what they check;
//! here, the fixtures they share.

use super::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use std::collections::BTreeMap;

mod gates;
mod humans;
mod properties;
mod resources;
mod retries;
mod transitions;

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

pub(super) struct World {
    pub(super) ladder: Ladder,
    pub(super) retry: RetryPolicy,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) doc: Option<Document>,
    pub(super) clock: DateTime<Utc>,
}

impl World {
    pub(super) fn new() -> World {
        World {
            ladder: Ladder::default(),
            retry: RetryPolicy::default(),
            labels: BTreeMap::from([("cloud_provider".to_string(), "aws".to_string())]),
            doc: None,
            clock: t0(),
        }
    }

    pub(super) fn rules(&self) -> Rules<'_> {
        Rules {
            build_id: "rhel8-web",
            ladder: &self.ladder,
            retry: &self.retry,
            labels: &self.labels,
        }
    }

    pub(super) fn update(&mut self, action: Action) -> Update {
        self.clock += Duration::seconds(1);
        // The CLI's actor: every outcome counts, nothing is a replay
        // (tests of Concourse builds set `by.build_id`).
        Update::new(action, Actor::default(), self.clock)
    }

    pub(super) fn try_do(&mut self, action: Action) -> Result<Outcome, Refusal> {
        let u = self.update(action);
        self.apply_update(u)
    }

    /// Applies `u` to the world's document, keeping what it writes.
    pub(super) fn apply_update(&mut self, u: Update) -> Result<Outcome, Refusal> {
        let out = apply(self.doc.as_ref(), &u, &self.rules())?;
        match &out {
            Outcome::Write(d) => self.doc = Some(d.clone()),
            Outcome::Restart { document, .. } | Outcome::WriteAndRefuse { document, .. } => {
                self.doc = Some(document.clone())
            }
            Outcome::Unchanged | Outcome::Ignored(_) => {}
        }
        if let Some(d) = &self.doc {
            // Every document the model writes verifies (its summary is the
            // fold of its history, every event's attempt is right).
            assert_eq!(d.verify(&self.ladder), Ok(()), "{d:#?}");
        }
        Ok(out)
    }

    #[track_caller]
    pub(super) fn ok(&mut self, action: Action) -> &Document {
        self.try_do(action).expect("transition refused");
        self.doc.as_ref().unwrap()
    }

    #[track_caller]
    pub(super) fn refused(&mut self, action: Action) -> String {
        let before = self.doc.clone();
        let err = self
            .try_do(action)
            .expect_err("transition allowed")
            .to_string();
        assert_eq!(before, self.doc, "a refusal changes nothing");
        err
    }

    pub(super) fn doc(&self) -> &Document {
        self.doc.as_ref().unwrap()
    }
}

pub(super) fn fail(state: Code, message: &str) -> Action {
    Action::Fail {
        state,
        error: ErrorInfo::new(message.into(), FailureKind::Transient),
    }
}

pub(super) fn stage(max: u32, resume_from: Option<Code>, timeout: Option<i64>) -> StageRetry {
    StageRetry {
        max_attempts: max,
        backoff: std::time::Duration::from_secs(60),
        resume_from,
        timeout: timeout.map(|s| std::time::Duration::from_secs(s as u64)),
        ..StageRetry::default()
    }
}

/// Walks a fresh build to `code`, pending.
pub(super) fn at(w: &mut World, code: Code) {
    w.ok(Action::Init { restart: false });
    let mut n = 0;
    while n < code {
        w.ok(Action::Complete(n));
        n += 5;
    }
}

/// An update from Concourse build `build`.
pub(super) fn from(w: &mut World, build: &str, action: Action) -> Update {
    let mut u = w.update(action);
    u.by.build_id = Some(build.into());
    u.by.build_name = Some(build.into());
    u
}

fn approval_stage(max: u32, resume_from: Option<Code>) -> StageRetry {
    StageRetry {
        approval: true,
        ..stage(max, resume_from, None)
    }
}

fn at_pending(w: &mut World) {
    w.ok(Action::Retry(5));
}
