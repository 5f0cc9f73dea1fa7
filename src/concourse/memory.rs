//! The resource's own `check`, `in` and `out`, in memory: the functions
//! the programs run ([`crate::resource`]), on a [`MemoryStore`] that can be
//! made to refuse every request for a while (a store outage), at the
//! simulation's clock.

use super::config::Resource;
use super::sim::{Files, Steps};
use crate::Notes;
use crate::app::ManualClock;
use crate::inputs::InMemory as InMemoryFiles;
use crate::model::{Document, Timestamp};
use crate::protocol::BuildEnv;
use crate::store::memory::MemoryStore;
use crate::store::{Fetched, Listed, Precondition, Store, StoreError};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// A memory store with outages, at a clock set before each request.
#[derive(Default)]
pub struct OutageStore {
    inner: MemoryStore,
    down: RefCell<Vec<(Timestamp, Timestamp)>>,
    now: Cell<Option<Timestamp>>,
    /// Rises with every write that landed: what was read at one
    /// generation is still what is stored.
    generation: Cell<u64>,
}

impl OutageStore {
    fn refuse(&self) -> Result<(), StoreError> {
        let Some(now) = self.now.get() else {
            return Ok(());
        };
        if self
            .down
            .borrow()
            .iter()
            .any(|(a, b)| *a <= now && now < *b)
        {
            return Err(StoreError::Other(
                "connection refused: the store is down (a simulated outage)".into(),
            ));
        }
        Ok(())
    }
}

impl Store for OutageStore {
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError> {
        self.refuse()?;
        self.inner.get(key, if_none_match).await
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        when: Precondition<'_>,
    ) -> Result<String, StoreError> {
        self.refuse()?;
        let r = self.inner.put(key, body, when).await;
        if r.is_ok() {
            self.generation.set(self.generation.get() + 1);
        }
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.refuse()?;
        self.inner.list(prefix).await
    }

    async fn list_tags(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.refuse()?;
        self.inner.list_tags(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.refuse()?;
        self.generation.set(self.generation.get() + 1);
        self.inner.delete(key).await
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        self.refuse()?;
        self.generation.set(self.generation.get() + 1);
        self.inner.delete_if(key, etag).await
    }
}

/// The resource steps in memory: what `build-state simulate` runs.
#[derive(Default)]
pub struct InMemory {
    store: OutageStore,
    /// Each resource's configuration, read once.
    configs: RefCell<BTreeMap<String, crate::config::Config>>,
    /// The last check of each resource: what it answered, for which
    /// stored body and given version, and until when that answer holds.
    checks: RefCell<BTreeMap<String, Memo>>,
    /// The last document read: the store's generation and what it held.
    decoded: RefCell<Option<(u64, Option<Document>)>>,
    /// The check webhooks puts called since the simulation last asked.
    handoffs: RefCell<Vec<super::sim::Handed>>,
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

impl InMemory {
    /// The stored heartbeat, if any.
    fn stored_heartbeat(&self, config: &crate::config::Config) -> Option<crate::model::Heartbeat> {
        let body = self.store.inner.body(&config.heartbeat_key())?;
        serde_json::from_slice(&body).ok()
    }

    /// A fresh, empty store.
    pub fn new() -> InMemory {
        InMemory::default()
    }

    fn at(&self, now: Timestamp) {
        self.store.now.set(Some(now));
    }

    /// The resource's configuration (read from its source once).
    fn config(&self, resource: &Resource) -> Result<crate::config::Config, String> {
        if let Some(c) = self.configs.borrow().get(&resource.name) {
            return Ok(c.clone());
        }
        let source = serde_json::from_value(resource.source.clone())
            .map_err(|e| format!("resources.{}.source: {e}", resource.name))?;
        let c = crate::resource::configure(&source).map_err(text)?;
        self.configs
            .borrow_mut()
            .insert(resource.name.clone(), c.clone());
        Ok(c)
    }
}

fn text(e: anyhow::Error) -> String {
    format!("{e:#}")
}

impl Steps for InMemory {
    async fn check(
        &self,
        resource: &Resource,
        from: Option<&Value>,
        now: Timestamp,
    ) -> Result<Vec<Value>, String> {
        self.at(now);
        let config = self.config(resource)?;
        let generation = self.store.generation.get();
        if let Some(m) = self.checks.borrow().get(&resource.name)
            && self.store.refuse().is_ok()
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
            let until = [doc.retry_at, doc.dead_since(&config.retry, beat.as_ref())]
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
    ) -> Result<Files, String> {
        self.at(now);
        let req = json!({"source": resource.source, "version": version, "params": params});
        let (config, version, require) =
            crate::resource::get_request(req.to_string().as_bytes()).map_err(text)?;
        let (_, files) =
            crate::resource::get_files(&config, &self.store, version, require, &Notes::new())
                .await
                .map_err(text)?;
        Ok(files.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    async fn put(
        &self,
        resource: &Resource,
        params: &Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Files>,
        now: Timestamp,
    ) -> Result<(Value, Vec<String>), String> {
        self.at(now);
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
                .map_err(text)?;
        let (reply, landed) = crate::resource::put_landed(
            &config,
            &self.store,
            &ManualClock::at(now),
            change,
            &notes,
        )
        .await
        .map_err(text)?;
        // What `out` posts to the ATC once the write landed (the
        // simulation plays the ATC's side).
        if landed && !handoff.is_empty() {
            match &handoff.target {
                Ok((_, token)) => self
                    .handoffs
                    .borrow_mut()
                    .extend(handoff.resources.iter().map(|r| super::sim::Handed {
                        resource: r.clone(),
                        token: token.expose().to_string(),
                    })),
                Err(why) => notes.note(format!(
                    "check of {} skipped: {why}",
                    handoff.resources.join(", ")
                )),
            }
        }
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

    fn take_handoffs(&self) -> Vec<super::sim::Handed> {
        std::mem::take(&mut *self.handoffs.borrow_mut())
    }

    async fn beat(
        &self,
        resource: &Resource,
        claim: crate::model::Claim,
    ) -> Result<String, String> {
        self.at(claim.at);
        let config = self.config(resource)?;
        let (_, beat) = crate::engine::Builds::new(&config, &self.store)
            .beat(&claim)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "heartbeat {}: attempt {} alive",
            beat.state, beat.attempt
        ))
    }

    fn outage(&self, from: Timestamp, until: Timestamp) -> bool {
        self.store.down.borrow_mut().push((from, until));
        true
    }
}

impl InMemory {
    /// The stored document (decoded once per generation of the store; the
    /// simulation has one build).
    fn stored(&self, config: &crate::config::Config) -> Option<Document> {
        let generation = self.store.generation.get();
        if let Some((g, d)) = &*self.decoded.borrow()
            && *g == generation
        {
            return d.clone();
        }
        let key = config.state_key();
        let doc = self.store.inner.body(&key).and_then(|body| {
            crate::engine::Builds::new(config, &self.store.inner)
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
    ) -> Result<Vec<Value>, String> {
        let version = from
            .map(|v| serde_json::from_value(v.clone()).map_err(|e| format!("version: {e}")))
            .transpose()?;
        let found = crate::resource::check_store(
            config,
            &self.store,
            &ManualClock::at(now),
            version,
            &Notes::new(),
        )
        .await
        .map_err(text)?;
        Ok(found
            .into_iter()
            .map(|v| serde_json::to_value(v).expect("a version serializes"))
            .collect())
    }
}
