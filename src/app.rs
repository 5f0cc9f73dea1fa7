//! The application layer: one change to one build's document, under the
//! source's policy, written by compare-and-swap. The resource's `out` and
//! the CLI's actions both go through [`record`]; time comes from a
//! [`Clock`], so that tests choose it.

use crate::config::Config;
use crate::engine::{Applied, Builds, Error};
use crate::model::{Document, Timestamp, Update, apply, extend};
use crate::store::Store;

/// Where the time of an event comes from.
pub(crate) trait Clock {
    /// Now, at the precision a document stores (milliseconds).
    fn now(&self) -> Timestamp;
}

/// This process's clock: what a person's terminal shows ages and
/// staleness by (the CLI's views, through its `Ctx`), and the tests'. The
/// programs decide by the store's.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        crate::now()
    }
}

/// The store's clock ([`Store::clock`]): what its newest answer told, plus
/// the time elapsed since on this process's monotonic clock; this
/// process's clock when the store tells none. One clock for every worker:
/// a worker whose own clock is off neither kills a live stage nor skips a
/// backoff.
pub(crate) struct StoreClock<'a, S: Store>(pub &'a S);

impl<S: Store> Clock for StoreClock<'_, S> {
    fn now(&self) -> Timestamp {
        ms(self.0.clock().map_or_else(crate::now, |t| t.now()))
    }
}

/// `t` as stored: milliseconds.
pub(crate) fn ms(t: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// A clock that shows what it is set to (tests, and the simulation's
/// virtual time).
pub(crate) struct ManualClock(pub std::sync::Mutex<Timestamp>);

impl ManualClock {
    /// A clock set to `at`.
    pub(crate) fn at(at: Timestamp) -> ManualClock {
        ManualClock(std::sync::Mutex::new(at))
    }

    /// Moves the clock on.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: chrono::Duration) {
        let mut t = self.0.lock().unwrap();
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

/// What a put or a CLI action asks for.
#[derive(Debug)]
pub(crate) enum Change {
    /// One action of the model (its time is set from the clock at each
    /// attempt of the compare-and-swap).
    Apply(Update),
    /// A whole document that must extend the stored one (`file:`).
    File(Document),
    /// A sign of life of the stage in progress (`heartbeat: N`): written
    /// beside the document, never to it.
    Heartbeat(crate::model::Claim),
    /// Only resources to check (`check:` alone, the timer's job): what the
    /// clock decided is recorded (an attempt past its deadline is dead),
    /// nothing else; the put answers the version.
    HandOff(crate::model::Actor),
}

/// Records `change` and hands off, the one way `out` and the CLI act: the
/// check webhooks of `handoff` are called once a write landed (also one
/// the change is refused after: a dead attempt recorded as blocked, whose
/// alert must hear of it at once) or when the change is a hand-off alone;
/// never after a refusal that wrote nothing, a replay or a heartbeat.
pub(crate) async fn act<S: Store>(
    config: &Config,
    store: &S,
    clock: &dyn Clock,
    change: Change,
    handoff: &crate::handoff::Handoff,
    notes: &crate::Notes,
) -> Result<Applied, Error> {
    let only = matches!(change, Change::HandOff(_));
    let result = record(config, store, clock, change, notes).await;
    let landed = match &result {
        Ok(a) => a.written || only,
        Err(e) => e.landed(),
    };
    crate::handoff::after(handoff, landed, notes).await;
    result
}

/// Applies `change` to the configured build's document by compare-and-swap.
pub(crate) async fn record<S: Store>(
    config: &Config,
    store: &S,
    clock: &dyn Clock,
    change: Change,
    notes: &crate::Notes,
) -> Result<Applied, Error> {
    let builds = Builds::new(config, store).with_notes(notes);
    let rules = config.rules();
    match change {
        Change::File(doc) => builds.update(|cur| extend(cur, doc.clone(), &rules)).await,
        Change::HandOff(by) => {
            // The clock may have decided something no write announced: an
            // attempt past its deadline is recorded dead (with the
            // heartbeat it was judged by).
            let Some(found) = builds.current().await? else {
                return Err(builds.error(
                    &config.state_key(),
                    crate::model::Refusal::NoDocument {
                        build_id: config.build_id.clone(),
                        attempted: "hand off".into(),
                    },
                ));
            };
            let doc = found.doc;
            let heartbeat = if doc.status == crate::model::Status::InProgress
                && config
                    .retry
                    .for_state(doc.state)
                    .heartbeat_timeout
                    .is_some()
            {
                builds.heartbeat().await?
            } else {
                None
            };
            builds
                .update(|cur| match cur {
                    Some(d) => Ok(crate::model::clock(
                        d,
                        clock.now().max(d.updated_at),
                        by.clone(),
                        heartbeat.clone(),
                        &rules,
                    )),
                    None => Err(crate::model::Refusal::NoDocument {
                        build_id: config.build_id.clone(),
                        attempted: "hand off".into(),
                    }),
                })
                .await
        }
        Change::Heartbeat(mut claim) => {
            claim.at = clock.now();
            let (doc, beat) = builds.beat(&claim).await?;
            Ok(Applied {
                etag: None,
                doc,
                written: false,
                ignored: None,
                beat: Some(beat),
            })
        }
        Change::Apply(mut update) => {
            // Whether a stage in progress is dead depends on its heartbeat
            // when it has a heartbeat policy: read it (once) before a start,
            // and before a Concourse build's failure (one that never
            // started the stage records a dead attempt it finds).
            let judges_the_attempt = match &update.action {
                crate::model::Action::Start(n) => Some(*n),
                crate::model::Action::Fail { state, .. } if update.by.build_id.is_some() => {
                    Some(*state)
                }
                _ => None,
            };
            if let Some(n) = judges_the_attempt
                && config.retry.for_state(n).heartbeat_timeout.is_some()
            {
                update.heartbeat = builds.heartbeat().await?;
            }
            let applied = builds
                .update(|cur| {
                    // Never before what the document records: one clock
                    // that tells time to a second may seem to go back.
                    update.at = cur.map_or_else(|| clock.now(), |d| clock.now().max(d.updated_at));
                    apply(cur, &update, &rules)
                })
                .await?;
            for token in &update.resources.release {
                let rs = &applied.doc.resources;
                if !rs.iter().any(|r| &r.id == token || &r.name == token) {
                    notes.note(format!(
                        "{}: release {}: no resource of that id or name is recorded (nothing released for it)",
                        config.build_id,
                        crate::visible(token)
                    ));
                }
            }
            Ok(applied)
        }
    }
}

/// The behaviour settings the pipeline's resource recorded in the build's
/// document (see [`crate::model::Event::policy`]), read from the raw JSON so
/// that a ladder the caller does not know yet is no obstacle; `None` when
/// there is no document or it recorded none. The CLI decides by them when
/// it is not given settings of its own (one policy per build).
pub(crate) async fn recorded_policy<S: Store>(
    config: &Config,
    store: &S,
) -> Result<Option<crate::protocol::Policy>, Error> {
    use crate::engine::ErrorKind;
    use crate::store::Fetched;
    let key = config.state_key();
    let fail = |kind: ErrorKind| Error {
        build_id: config.build_id.clone(),
        location: config.location(&key),
        kind,
    };
    let body = match store.get(&key, None).await.map_err(|e| fail(e.into()))? {
        Fetched::Found { body, .. } => body,
        Fetched::Absent | Fetched::Unchanged => return Ok(None),
    };
    #[derive(serde::Deserialize)]
    struct Recorded {
        #[serde(default)]
        history: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        policy: Option<serde_json::Value>,
    }
    let Ok(doc) = serde_json::from_slice::<Recorded>(&body) else {
        // Unreadable: the command that reads it next says why.
        return Ok(None);
    };
    let Some(policy) = doc.history.into_iter().rev().find_map(|e| e.policy) else {
        return Ok(None);
    };
    serde_json::from_value(policy)
        .map(Some)
        .map_err(|e| fail(ErrorKind::RecordedPolicy(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Actor};
    use crate::store::memory::MemoryStore;

    /// The CLI reads back the policy the resource recorded, the newest
    /// one; a build that recorded none has none.
    #[tokio::test]
    async fn the_recorded_policy_is_read_back() {
        let source: crate::protocol::Source = serde_json::from_str(
            r#"{"local_dir": "/nowhere", "build_id": "rhel8-web", "retry": {"backoff": "7m"}}"#,
        )
        .unwrap();
        let config = Config::from_source(&source).unwrap();
        let store = MemoryStore::new();
        let clock = ManualClock::at("2026-12-01T10:00:00Z".parse().unwrap());
        let notes = crate::Notes::new();
        assert_eq!(recorded_policy(&config, &store).await.unwrap(), None);
        let plain = Update::new(
            Action::Init { restart: false },
            Actor::default(),
            clock.now(),
        );
        record(&config, &store, &clock, Change::Apply(plain), &notes)
            .await
            .unwrap();
        assert_eq!(
            recorded_policy(&config, &store).await.unwrap(),
            None,
            "none recorded"
        );
        let mut u = Update::new(Action::Complete(0), Actor::default(), clock.now());
        u.policy = Some(serde_json::to_value(&config.policy).unwrap());
        record(&config, &store, &clock, Change::Apply(u), &notes)
            .await
            .unwrap();
        let got = recorded_policy(&config, &store).await.unwrap().unwrap();
        assert_eq!(got, config.policy);
        assert_eq!(got.retry.unwrap().backoff.as_deref(), Some("7m"));
    }
}
