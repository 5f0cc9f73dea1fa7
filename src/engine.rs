//! Reading and writing documents through a store: decode and verify on
//! every read; every write a compare-and-swap that, on a conflict, re-reads,
//! re-validates and tries again.

use crate::config::Config;
use crate::model::{Document, DocumentError, Outcome, Refusal};
use crate::store::{Fetched, Precondition, Store, StoreError};
use std::time::Duration;

/// An error about one build's document, with where it is stored.
#[derive(Debug, thiserror::Error)]
#[error("{build_id} ({location}): {kind}")]
pub struct Error {
    pub build_id: String,
    pub location: String,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(
        "{0}; repair it by hand or with `build-state set`, or restore an earlier version of the object"
    )]
    Document(DocumentError),
    #[error(
        "the document is not valid JSON ({0}); repair it by hand or restore an earlier version of the object"
    )]
    Unreadable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "gave up after {0} attempts: each time, another write had changed the document between this update's read and its write; run it again"
    )]
    Contended(u32),
    #[error("{0}")]
    Other(String),
}

/// A document and the ETag it was read with.
#[derive(Clone, Debug)]
pub struct Current {
    pub doc: Document,
    pub etag: String,
}

/// The answer to a conditional read.
#[derive(Clone, Debug)]
pub enum Read {
    Absent,
    Unchanged,
    Found(Current),
}

/// The result of an update.
#[derive(Clone, Debug)]
pub struct Applied {
    pub doc: Document,
    /// The document's ETag; `None` when other writes have already followed
    /// this one (its answer was lost, and a later read found it landed).
    pub etag: Option<String>,
    /// False when the update was a no-op (a replay, `init` of a fresh build,
    /// a `file` that adds nothing).
    pub written: bool,
}

/// Bounds the compare-and-swap loop.
const MAX_ATTEMPTS: u32 = 40;

/// Bounds the writes whose outcome was unknown, within that loop.
const MAX_UNCERTAIN: u32 = 10;

/// Waits before the next attempt: full jitter, growing to at most 500 ms.
async fn backoff(attempt: u32) {
    let cap = 10u64.saturating_mul(1 << attempt.min(6)).min(500);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=cap))).await;
}

/// One build's documents in one store.
pub struct Builds<'a, S> {
    pub config: &'a Config,
    pub store: &'a S,
}

impl<'a, S: Store> Builds<'a, S> {
    pub fn new(config: &'a Config, store: &'a S) -> Self {
        Builds { config, store }
    }

    pub fn error(&self, key: &str, kind: impl Into<ErrorKind>) -> Error {
        Error {
            build_id: self.config.build_id.clone(),
            location: self.config.location(key),
            kind: kind.into(),
        }
    }

    /// Decodes and verifies a stored document.
    pub fn decode(&self, key: &str, body: &[u8]) -> Result<Document, Error> {
        let doc: Document = serde_json::from_slice(body)
            .map_err(|e| self.error(key, ErrorKind::Unreadable(e.to_string())))?;
        if doc.build_id != self.config.build_id {
            return Err(self.error(
                key,
                ErrorKind::Document(DocumentError::Corrupt(format!(
                    "it belongs to build {:?}",
                    doc.build_id
                ))),
            ));
        }
        doc.verify(&self.config.ladder)
            .map_err(|e| self.error(key, ErrorKind::Document(e)))?;
        Ok(doc)
    }

    /// Reads the live document; with `etag`, answers `Unchanged` when the
    /// object still has it (one request, no body).
    pub async fn read(&self, etag: Option<&str>) -> Result<Read, Error> {
        let key = self.config.state_key();
        match self.store.get(&key, etag).await {
            Ok(Fetched::Absent) => Ok(Read::Absent),
            Ok(Fetched::Unchanged) => Ok(Read::Unchanged),
            Ok(Fetched::Found { body, etag }) => Ok(Read::Found(Current {
                doc: self.decode(&key, &body)?,
                etag,
            })),
            Err(e) => Err(self.error(&key, e)),
        }
    }

    /// Reads the live document, if any.
    pub async fn current(&self) -> Result<Option<Current>, Error> {
        match self.read(None).await? {
            Read::Found(c) => Ok(Some(c)),
            _ => Ok(None),
        }
    }

    /// The document as of `revision`: from the live run or an archived one.
    pub async fn at_revision(
        &self,
        current: Option<&Document>,
        revision: u64,
    ) -> Result<Document, Error> {
        let key = self.config.state_key();
        let not_found = |newest: Option<u64>| {
            self.error(
                &key,
                ErrorKind::Other(match newest {
                    Some(n) => format!(
                        "revision {revision} does not exist (the newest is {n}, and no archived run holds it)"
                    ),
                    None => format!("revision {revision} does not exist: the build has no state yet"),
                }),
            )
        };
        let Some(doc) = current else {
            return Err(not_found(None));
        };
        if let Some(d) = doc.at_revision(revision, &self.config.ladder) {
            return Ok(d);
        }
        if revision > doc.revision {
            return Err(not_found(Some(doc.revision)));
        }
        for run in (1..doc.run).rev() {
            let akey = self.config.archive_key(run);
            match self.store.get(&akey, None).await {
                Ok(Fetched::Found { body, .. }) => {
                    let archived = self.decode(&akey, &body)?;
                    if let Some(d) = archived.at_revision(revision, &self.config.ladder) {
                        return Ok(d);
                    }
                    if revision > archived.revision {
                        break;
                    }
                }
                Ok(_) => continue,
                Err(e) => return Err(self.error(&akey, e)),
            }
        }
        Err(not_found(Some(doc.revision)))
    }

    /// Read, decide, write-if-unchanged; on a conflict, again (bounded, with
    /// jitter). `decide` sees the freshest document every time, so a refusal
    /// is always a real one.
    ///
    /// A write whose answer was lost (a dropped connection, a timeout, a 5xx)
    /// is judged by the next read: when the stored history holds the event
    /// it added (the same revision, time, action and writer), it landed,
    /// and it is not applied a second time.
    pub async fn update<F>(&self, mut decide: F) -> Result<Applied, Error>
    where
        F: FnMut(Option<&Document>) -> Result<Outcome, Refusal>,
    {
        let key = self.config.state_key();
        // The last document sent whose answer said nothing certain, and the
        // event it adds.
        let mut sent: Option<(Document, crate::model::Event)> = None;
        let mut uncertain = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            let current = self.current().await?;
            if let (Some((doc, event)), Some(c)) = (&sent, &current)
                && c.doc.history.contains(event)
            {
                // The write landed (later writes may have followed it).
                return Ok(Applied {
                    doc: doc.clone(),
                    etag: (c.doc == *doc).then(|| c.etag.clone()),
                    written: true,
                });
            }
            let outcome =
                decide(current.as_ref().map(|c| &c.doc)).map_err(|r| self.error(&key, r))?;
            let when = match &current {
                Some(c) => Precondition::Matches(&c.etag),
                None => Precondition::Absent,
            };
            let doc = match outcome {
                Outcome::Unchanged => {
                    let c = current.expect("an unchanged outcome has a document");
                    return Ok(Applied {
                        doc: c.doc,
                        etag: Some(c.etag),
                        written: false,
                    });
                }
                Outcome::Write(doc) => doc,
                Outcome::Restart { archive, document } => {
                    self.archive(&archive).await?;
                    document
                }
            };
            let bytes = doc.to_bytes();
            let result = self.store.put(&key, bytes.clone(), when).await;
            // The event this write adds, as a later read will decode it.
            let event = self
                .decode(&key, &bytes)?
                .history
                .last()
                .cloned()
                .expect("a written document has a history");
            sent = Some((doc, event));
            match result {
                Ok(etag) => {
                    let (doc, _) = sent.expect("just sent");
                    return Ok(Applied {
                        doc,
                        etag: Some(etag),
                        written: true,
                    });
                }
                Err(StoreError::Conflict) => {
                    if attempt > 1 {
                        eprintln!(
                            "build-state: {key} changed since it was read; reading it again (attempt {attempt})"
                        );
                    }
                    backoff(attempt).await;
                }
                Err(StoreError::Uncertain(m)) if uncertain < MAX_UNCERTAIN => {
                    uncertain += 1;
                    eprintln!(
                        "build-state: no answer to the write of {key} ({m}); reading it again to see whether it landed"
                    );
                    backoff(attempt).await;
                }
                Err(e) => return Err(self.error(&key, e)),
            }
        }
        Err(self.error(&key, ErrorKind::Contended(MAX_ATTEMPTS)))
    }

    /// Writes a finished run to `runs/<run>.json`, once. An archive left by
    /// a restart that lost its race (a prefix of this run) is replaced; any
    /// other existing archive is never overwritten.
    async fn archive(&self, run: &Document) -> Result<(), Error> {
        let key = self.config.archive_key(run.run);
        let body = run.to_bytes();
        match self
            .store
            .put(&key, body.clone(), Precondition::Absent)
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict) => {}
            Err(e) => return Err(self.error(&key, e)),
        }
        let (existing, etag) = match self.store.get(&key, None).await {
            Ok(Fetched::Found { body, etag }) => (self.decode(&key, &body)?, etag),
            Ok(_) => return Err(self.error(&key, StoreError::Conflict)),
            Err(e) => return Err(self.error(&key, e)),
        };
        if existing == *run {
            return Ok(());
        }
        let is_prefix = existing.run == run.run
            && existing.history.len() < run.history.len()
            && run.history[..existing.history.len()] == existing.history[..];
        if !is_prefix {
            return Err(self.error(
                &key,
                ErrorKind::Other(format!(
                    "an archive of run {} already exists and differs from this run; it is never overwritten (move it aside to restart)",
                    run.run
                )),
            ));
        }
        self.store
            .put(&key, body, Precondition::Matches(&etag))
            .await
            .map(|_| ())
            .map_err(|e| self.error(&key, e))
    }
}
