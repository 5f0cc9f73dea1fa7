//! The resource's own `check`, `in` and `out`, in memory: the functions
//! the programs run ([`crate::resource`]), on a `MemoryStore` behind the
//! project's one fault wrapper (`FaultyStore`: outages at the
//! simulation's clock).

use super::Steps;
use crate::Notes;
use crate::app::ManualClock;
use crate::concourse::atc::pipeline::Resource;
use crate::concourse::atc::{Artifacts, Handed, StepError};
use crate::inputs::FilesInMemory as InMemoryFiles;
use crate::model::{Document, Timestamp};
use crate::protocol::BuildEnv;
use crate::store::StoreError;
use crate::store::memory::{FaultyStore, MemoryStore};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// The resource steps in memory: what `build-state simulate` runs.
pub struct InMemory {
    store: FaultyStore<MemoryStore>,
    /// Every moment a step touched the store: (when, what), for the
    /// fault sweep.
    touches: RefCell<Vec<(Timestamp, String)>>,
    /// Each resource's configuration, read once.
    configs: RefCell<BTreeMap<String, crate::config::Config>>,
    /// The last check of each resource: what it answered, for which
    /// stored body and given version, and until when that answer holds.
    checks: RefCell<BTreeMap<String, Memo>>,
    /// The last document read: the store's generation and what it held.
    decoded: RefCell<Option<(u64, Option<Document>)>>,
    /// The check webhooks puts called since the simulation last asked.
    handoffs: RefCell<Vec<Handed>>,
}

/// A check's answer, which holds while the stored body and the version
/// given are the same and the clock has not reached the next time the
/// answer depends on (a retry due, a timeout): `check` is a function of
/// those alone, so a simulation need not decode an unchanged document
/// every minute for every gate.
struct Memo {
    generation: u64,
    from: Option<Value>,
    until: Option<Timestamp>,
    answer: Vec<Value>,
}

impl Default for InMemory {
    fn default() -> InMemory {
        InMemory::new()
    }
}

impl InMemory {
    /// The stored heartbeat, if any.
    fn stored_heartbeat(&self, config: &crate::config::Config) -> Option<crate::model::Heartbeat> {
        let body = self.store.inner().body(&config.heartbeat_key())?;
        serde_json::from_slice(&body).ok()
    }

    /// A fresh, empty store.
    pub fn new() -> InMemory {
        InMemory {
            store: FaultyStore::new(MemoryStore::new()),
            touches: RefCell::default(),
            configs: RefCell::default(),
            checks: RefCell::default(),
            decoded: RefCell::default(),
            handoffs: RefCell::default(),
        }
    }

    /// Every moment a step touched the store so far: (when, what).
    pub(crate) fn touches(&self) -> Vec<(Timestamp, String)> {
        self.touches.borrow().clone()
    }

    fn at(&self, now: Timestamp, what: String) {
        self.store.at(now);
        self.touches.borrow_mut().push((now, what));
    }

    /// The resource's configuration (read from its source once).
    fn config(&self, resource: &Resource) -> Result<crate::config::Config, String> {
        if let Some(c) = self.configs.borrow().get(&resource.name) {
            return Ok(c.clone());
        }
        let source = serde_json::from_value(resource.source.clone())
            .map_err(|e| format!("resources.{}.source: {e}", resource.name))?;
        let c = crate::resource::configure(&source).map_err(|e| format!("{e:#}"))?;
        self.configs
            .borrow_mut()
            .insert(resource.name.clone(), c.clone());
        Ok(c)
    }
}

/// A resource error as the play judges it: the store's (another try may
/// work) or the resource's refusal.
fn judged(e: anyhow::Error) -> StepError {
    let text = format!("{e:#}");
    let store = e.chain().any(|c| {
        c.downcast_ref::<StoreError>().is_some()
            || c.downcast_ref::<crate::engine::Error>().is_some_and(|e| {
                matches!(
                    e.kind,
                    crate::engine::ErrorKind::Store(_) | crate::engine::ErrorKind::Contended(_)
                )
            })
    });
    if store {
        StepError::Unavailable(text)
    } else {
        StepError::Refused(text)
    }
}

impl Steps for InMemory {
    async fn check(
        &self,
        resource: &Resource,
        from: Option<&Value>,
        now: Timestamp,
    ) -> Result<Vec<Value>, StepError> {
        self.at(now, format!("check of {}", resource.name));
        let config = self.config(resource).map_err(StepError::Refused)?;
        let generation = self.store.inner().generation();
        if let Some(m) = self.checks.borrow().get(&resource.name)
            && !self.store.down()
            && m.generation == generation
            && m.from.as_ref() == from
            && m.until.is_none_or(|t| now < t)
        {
            return Ok(m.answer.clone());
        }
        let answer = self.check_now(&config, from, now).await?;
        if let Some(doc) = self.stored(&config) {
            // The next time the answer can change with the clock alone.
            let beat = self.stored_heartbeat(&config);
            let until = [
                doc.retry_at,
                doc.dead_since(&config.retry, beat.as_ref()),
                crate::model::attention::overdue_at(&doc, &config.retry),
            ]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min();
            self.checks.borrow_mut().insert(
                resource.name.clone(),
                Memo {
                    generation,
                    from: from.cloned(),
                    until,
                    answer: answer.clone(),
                },
            );
        }
        Ok(answer)
    }

    async fn get(
        &self,
        resource: &Resource,
        version: &Value,
        params: &Value,
        now: Timestamp,
    ) -> Result<Artifacts, StepError> {
        self.at(now, format!("get of {}", resource.name));
        let req = json!({"source": resource.source, "version": version, "params": params});
        let (config, version, require) =
            crate::resource::get_request(req.to_string().as_bytes()).map_err(judged)?;
        let (_, files) =
            crate::resource::get_files(&config, &self.store, version, require, &Notes::new())
                .await
                .map_err(judged)?;
        Ok(files.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    async fn put(
        &self,
        resource: &Resource,
        params: &Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Artifacts>,
        now: Timestamp,
    ) -> Result<(Value, Vec<String>), StepError> {
        self.at(
            now,
            format!(
                "put to {} {}",
                resource.name,
                crate::concourse::atc::compact(params)
            ),
        );
        let mut files = InMemoryFiles::default();
        for (name, art) in artifacts {
            for (path, body) in art {
                files.insert(&format!("{name}/{path}"), body);
            }
        }
        let req = json!({"source": resource.source, "params": params});
        let notes = Notes::new();
        let (config, change, handoff) =
            crate::resource::put_request(req.to_string().as_bytes(), &files, env, now, &notes)
                .map_err(judged)?;
        let result = crate::resource::put_landed(
            &config,
            &self.store,
            &ManualClock::at(now),
            change,
            // The simulation plays the ATC's side of the hand-off below.
            &crate::handoff::Handoff::none(),
            &notes,
        )
        .await;
        // What `out` posts to the ATC once the write landed (the
        // simulation plays the ATC's side).
        if crate::resource::landed(&result) && !handoff.is_empty() {
            match &handoff.target {
                Ok((_, token)) => self
                    .handoffs
                    .borrow_mut()
                    .extend(handoff.resources.iter().map(|r| Handed {
                        resource: r.clone(),
                        token: token.expose().to_string(),
                    })),
                Err(why) => notes.note(format!(
                    "check of {} skipped: {why}",
                    handoff.resources.join(", ")
                )),
            }
        }
        let (reply, _) = result.map_err(judged)?;
        Ok((
            serde_json::to_value(&reply.version).expect("a version serializes"),
            notes.take(),
        ))
    }

    async fn document(&self, resource: &Resource) -> Option<Document> {
        let config = self.config(resource).ok()?;
        self.stored(&config)
    }

    async fn heartbeat(&self, resource: &Resource) -> Option<crate::model::Heartbeat> {
        let config = self.config(resource).ok()?;
        self.stored_heartbeat(&config)
    }

    fn take_handoffs(&self) -> Vec<Handed> {
        std::mem::take(&mut *self.handoffs.borrow_mut())
    }

    async fn beat(
        &self,
        resource: &Resource,
        claim: crate::model::Claim,
    ) -> Result<String, StepError> {
        self.store.at(claim.at);
        let config = self.config(resource).map_err(StepError::Refused)?;
        let (_, beat) = crate::engine::Builds::new(&config, &self.store)
            .beat(&claim)
            .await
            .map_err(|e| judged(e.into()))?;
        Ok(format!(
            "heartbeat {}: attempt {} alive",
            beat.state, beat.attempt
        ))
    }

    async fn created(
        &self,
        resource: &Resource,
        claim: crate::model::Claim,
        resources: BTreeMap<String, String>,
    ) -> Result<String, StepError> {
        self.store.at(claim.at);
        let config = self.config(resource).map_err(StepError::Refused)?;
        let mut update = crate::model::Update::new(
            crate::model::Action::Created {
                state: Some(claim.state),
                run: claim.run,
                attempt: claim.attempt,
            },
            claim.by,
            claim.at,
        );
        update.resources.created = resources;
        let notes = Notes::new();
        let applied = crate::app::record(
            &config,
            &self.store,
            &ManualClock::at(claim.at),
            crate::app::Change::Apply(update),
            &notes,
        )
        .await
        .map_err(|e| judged(e.into()))?;
        Ok(applied.doc.last_event().resources.describe())
    }

    fn outage(&self, from: Timestamp, until: Timestamp) -> bool {
        self.store.outage(from, until);
        true
    }
}

impl InMemory {
    /// The stored document (decoded once per generation of the store; the
    /// simulation has one build).
    fn stored(&self, config: &crate::config::Config) -> Option<Document> {
        let generation = self.store.inner().generation();
        if let Some((g, d)) = &*self.decoded.borrow()
            && *g == generation
        {
            return d.clone();
        }
        let key = config.state_key();
        let doc = self.store.inner().body(&key).and_then(|body| {
            crate::engine::Builds::new(config, self.store.inner())
                .decode(&key, &body)
                .ok()
        });
        *self.decoded.borrow_mut() = Some((generation, doc.clone()));
        doc
    }

    async fn check_now(
        &self,
        config: &crate::config::Config,
        from: Option<&Value>,
        now: Timestamp,
    ) -> Result<Vec<Value>, StepError> {
        let version = from
            .map(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| StepError::Refused(format!("version: {e}")))
            })
            .transpose()?;
        let found = crate::resource::check_store(
            config,
            &self.store,
            &ManualClock::at(now),
            version,
            &Notes::new(),
        )
        .await
        .map_err(judged)?;
        Ok(found
            .into_iter()
            .map(|v| serde_json::to_value(v).expect("a version serializes"))
            .collect())
    }
}
