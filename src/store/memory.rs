//! Stores in memory, for `build-state simulate` and for tests: [`MemoryStore`] keeps
//! objects in memory with the same conditional semantics as S3 (ETag =
//! quoted MD5 of the body, compared as every store compares), and
//! [`FaultyStore`] wraps any store to inject faults on demand: an error on
//! the nth call, a write applied and then reported lost (the ambiguous
//! write), or another writer's change slipped in just before a write (a
//! real conflict). In the style of mountpoint-s3's failure client.

pub(crate) use super::etag_of;
use super::{Fetched, Precondition, Store, StoreError, same_etag};
use crate::model::Timestamp;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Objects in memory, with S3's conditional semantics.
#[derive(Default)]
pub(crate) struct MemoryStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    /// With versioning: every body each key has had, oldest first.
    versions: Option<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>,
    /// Rises with every change: what was read at one generation is still
    /// what is stored.
    generation: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub(crate) fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store that keeps every version, as a bucket with
    /// versioning does (version ids `v1`, `v2`, ...).
    #[cfg(test)]
    pub(crate) fn versioned() -> MemoryStore {
        MemoryStore {
            versions: Some(Mutex::default()),
            ..MemoryStore::default()
        }
    }

    /// Rises with every change of what is stored.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn keep(&self, key: &str, body: &[u8]) {
        if let Some(v) = &self.versions {
            v.lock()
                .unwrap()
                .entry(key.to_string())
                .or_default()
                .push(body.to_vec());
        }
    }

    /// The body stored under `key`, if any.
    pub(crate) fn body(&self, key: &str) -> Option<Vec<u8>> {
        self.objects.lock().unwrap().get(key).cloned()
    }

    /// Removes `key` unconditionally (another tool's delete).
    #[cfg(test)]
    pub(crate) fn remove(&self, key: &str) {
        self.changed();
        self.objects.lock().unwrap().remove(key);
    }

    /// Writes `key` unconditionally (a hand edit, another tool).
    #[cfg(test)]
    pub(crate) fn set(&self, key: &str, body: Vec<u8>) {
        self.changed();
        self.keep(key, &body);
        self.objects.lock().unwrap().insert(key.to_string(), body);
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError> {
        let objects = self.objects.lock().unwrap();
        Ok(match objects.get(key) {
            None => Fetched::Absent,
            Some(body) => {
                let etag = etag_of(body);
                if if_none_match.is_some_and(|e| same_etag(e, &etag)) {
                    Fetched::Unchanged
                } else {
                    Fetched::Found {
                        body: body.clone(),
                        etag,
                    }
                }
            }
        })
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        when: Precondition<'_>,
    ) -> Result<String, StoreError> {
        let mut objects = self.objects.lock().unwrap();
        let holds = match (when, objects.get(key)) {
            (Precondition::Absent, None) | (Precondition::Any, _) => true,
            (Precondition::Matches(e), Some(b)) => same_etag(e, &etag_of(b)),
            _ => false,
        };
        if !holds {
            return Err(StoreError::Conflict);
        }
        let etag = etag_of(&body);
        self.keep(key, &body);
        self.changed();
        objects.insert(key.to_string(), body);
        Ok(etag)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.changed();
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn list_tags(&self, prefix: &str) -> Result<Vec<super::Listed>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, b)| super::Listed {
                key: k.clone(),
                tag: etag_of(b),
            })
            .collect())
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        let mut objects = self.objects.lock().unwrap();
        match objects.get(key) {
            Some(b) if same_etag(etag, &etag_of(b)) => {
                self.changed();
                objects.remove(key);
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn versioning(&self) -> Result<super::Versioning, StoreError> {
        Ok(match self.versions {
            Some(_) => super::Versioning::On,
            None => super::Versioning::Off,
        })
    }

    async fn versions(&self, key: &str) -> Result<Vec<super::StoredVersion>, StoreError> {
        let Some(v) = &self.versions else {
            return Err(StoreError::NotVersioned(
                "this store keeps no versions".into(),
            ));
        };
        let v = v.lock().unwrap();
        let n = v.get(key).map_or(0, Vec::len);
        Ok((1..=n)
            .rev()
            .map(|i| super::StoredVersion {
                version_id: format!("v{i}"),
                stored_at: crate::now(),
                latest: i == n,
                deleted: false,
            })
            .collect())
    }

    async fn get_version(&self, key: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        let v = self
            .versions
            .as_ref()
            .ok_or_else(|| StoreError::NotVersioned("this store keeps no versions".into()))?;
        let i: usize = id.trim_start_matches('v').parse().unwrap_or(0);
        v.lock()
            .unwrap()
            .get(key)
            .and_then(|b| b.get(i.wrapping_sub(1)))
            .cloned()
            .ok_or_else(|| StoreError::Other(format!("no version {id} of {key}")))
    }
}

/// A store operation, for counting and for aiming faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Op {
    /// A read.
    Get,
    /// A write.
    Put,
    /// A listing.
    List,
    /// A delete.
    Delete,
}

/// What to do to one call of a store `S` (`simulate` injects failures; the
/// tests every kind).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Fault<S = MemoryStore> {
    /// Fail without touching the store.
    Fail(StoreError),
    /// Apply a write, then report it lost ([`StoreError::Uncertain`]).
    ApplyThenLose,
    /// Before the call, let another writer change the store (a closure
    /// given the inner store), so that a write conflicts for real.
    Interleave(Box<dyn FnOnce(&S) + Send>),
}

/// The faults aimed at one operation: (the nth call, what to do).
type Queue<S> = VecDeque<(usize, Fault<S>)>;

/// Wraps any store (the memory store by default, the local store too);
/// faults are queued per operation and fire on the calls they are aimed at
/// (the nth call of that operation, 1-based).
pub(crate) struct FaultyStore<S = MemoryStore> {
    inner: S,
    faults: Mutex<BTreeMap<Op, Queue<S>>>,
    calls: Mutex<BTreeMap<Op, usize>>,
    /// Outages: every call at a time in one of these windows fails.
    outages: Mutex<Vec<(Timestamp, Timestamp)>>,
    /// The time calls are made at (set by whoever drives a clock).
    clock: Mutex<Option<Timestamp>>,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner` with no fault yet.
    pub(crate) fn new(inner: S) -> FaultyStore<S> {
        FaultyStore {
            inner,
            faults: Mutex::default(),
            calls: Mutex::default(),
            outages: Mutex::default(),
            clock: Mutex::default(),
        }
    }

    /// Every call made at a time from `from` until `until` fails, as a
    /// store that is down does (the time is the one [`FaultyStore::at`] set);
    /// such a call is neither counted nor met by a fault aimed at a call.
    pub(crate) fn outage(&self, from: Timestamp, until: Timestamp) {
        self.outages.lock().unwrap().push((from, until));
    }

    /// The calls that follow are made at `now`.
    pub(crate) fn at(&self, now: Timestamp) {
        *self.clock.lock().unwrap() = Some(now);
    }

    /// Whether the store is down now (an outage covers the clock).
    pub(crate) fn down(&self) -> bool {
        let Some(now) = *self.clock.lock().unwrap() else {
            return false;
        };
        self.outages
            .lock()
            .unwrap()
            .iter()
            .any(|(a, b)| *a <= now && now < *b)
    }

    /// Aims `fault` at the `nth` call of `op` (1-based, counted from the
    /// store's creation).
    #[cfg(test)]
    pub(crate) fn on(&self, op: Op, nth: usize, fault: Fault<S>) -> &Self {
        self.faults
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .push_back((nth, fault));
        self
    }

    /// Calls of `op` so far.
    #[cfg(test)]
    pub(crate) fn calls(&self, op: Op) -> usize {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    /// The wrapped store.
    pub(crate) fn inner(&self) -> &S {
        &self.inner
    }

    /// Counts the call; returns the fault aimed at it, if any.
    fn next(&self, op: Op) -> Option<Fault<S>> {
        if self.down() {
            return Some(Fault::Fail(StoreError::Other(
                "connection refused: the store is down (an outage)".into(),
            )));
        }
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        let mut faults = self.faults.lock().unwrap();
        let queue = faults.get_mut(&op)?;
        let at = queue.iter().position(|(nth, _)| *nth == n)?;
        queue.remove(at).map(|(_, f)| f)
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn clock(&self) -> Option<super::StoreTime> {
        self.inner.clock()
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError> {
        match self.next(Op::Get) {
            Some(Fault::Fail(e)) => return Err(e),
            Some(Fault::Interleave(f)) => f(&self.inner),
            Some(Fault::ApplyThenLose) | None => {}
        }
        self.inner.get(key, if_none_match).await
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        when: Precondition<'_>,
    ) -> Result<String, StoreError> {
        match self.next(Op::Put) {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Interleave(f)) => {
                f(&self.inner);
                self.inner.put(key, body, when).await
            }
            Some(Fault::ApplyThenLose) => {
                self.inner.put(key, body, when).await?;
                Err(StoreError::Uncertain(
                    "connection closed before the answer".into(),
                ))
            }
            None => self.inner.put(key, body, when).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self.next(Op::List) {
            Some(Fault::Fail(e)) => Err(e),
            _ => self.inner.list(prefix).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.next(Op::Delete) {
            Some(Fault::Fail(e)) => Err(e),
            _ => self.inner.delete(key).await,
        }
    }

    async fn list_tags(&self, prefix: &str) -> Result<Vec<super::Listed>, StoreError> {
        match self.next(Op::List) {
            Some(Fault::Fail(e)) => Err(e),
            _ => self.inner.list_tags(prefix).await,
        }
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        match self.next(Op::Delete) {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Interleave(f)) => {
                f(&self.inner);
                self.inner.delete_if(key, etag).await
            }
            _ => self.inner.delete_if(key, etag).await,
        }
    }

    async fn versioning(&self) -> Result<super::Versioning, StoreError> {
        self.inner.versioning().await
    }

    async fn versions(&self, key: &str) -> Result<Vec<super::StoredVersion>, StoreError> {
        self.inner.versions(key).await
    }

    async fn get_version(&self, key: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        self.inner.get_version(key, id).await
    }
}
