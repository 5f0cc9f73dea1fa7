//! The application layer: one change to one build's document, under the
//! source's policy, written by compare-and-swap. The resource's `out` and
//! the CLI's actions both go through [`record`]; time comes from a
//! [`Clock`], so that tests choose it.

use crate::config::Config;
use crate::engine::{Applied, Builds, Error};
use crate::model::{Document, Timestamp, Update, apply, extend};
use crate::store::Store;

/// Where the time of an event comes from.
pub trait Clock {
    /// Now, at the precision a document stores (milliseconds).
    fn now(&self) -> Timestamp;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        crate::now()
    }
}

/// A clock that shows what it is set to (for tests).
pub struct ManualClock(pub std::sync::Mutex<Timestamp>);

impl ManualClock {
    /// A clock set to `at`.
    pub fn at(at: Timestamp) -> ManualClock {
        ManualClock(std::sync::Mutex::new(at))
    }

    /// Moves the clock on.
    pub fn advance(&self, by: chrono::Duration) {
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
pub enum Change {
    /// One action of the model (its time is set from the clock at each
    /// attempt of the compare-and-swap).
    Apply(Update),
    /// A whole document that must extend the stored one (`file:`).
    File(Document),
}

/// Applies `change` to the configured build's document by compare-and-swap.
pub async fn record<S: Store>(
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
        Change::Apply(mut update) => {
            builds
                .update(|cur| {
                    update.at = clock.now();
                    apply(cur, &update, &rules)
                })
                .await
        }
    }
}

/// The behaviour settings the pipeline's resource recorded in the build's
/// document (see [`crate::model::Event::policy`]), read from the raw JSON so
/// that a ladder the caller does not know yet is no obstacle; `None` when
/// there is no document or it recorded none. The CLI decides by them when
/// it is not given settings of its own (one policy per build).
pub async fn recorded_policy<S: Store>(
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
