//! Reading and writing documents through a store: decode and verify on
//! every read; every write a compare-and-swap that, on a conflict, re-reads,
//! re-validates and tries again.

use crate::config::Config;
use crate::model::{Claim, Document, DocumentError, Heartbeat, Outcome, Refusal};
use crate::store::{Fetched, Precondition, Store, StoreError};
use std::time::Duration;

/// An error about one build's document, with where it is stored.
#[derive(Debug, thiserror::Error)]
#[error("{build_id} ({location}): {kind}")]
pub(crate) struct Error {
    /// The build the document belongs to.
    pub(crate) build_id: String,
    /// Where it is stored (`s3://bucket/key` or a path).
    pub(crate) location: String,
    /// What went wrong.
    pub(crate) kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
/// What went wrong with a document.
pub(crate) enum ErrorKind {
    #[error(transparent)]
    /// The model refused the change.
    Refused(#[from] Refusal),
    #[error(
        "{0}; the way out: `build-state restore BUILD_ID` puts back the newest stored version that is not corrupt (a bucket with versioning, or a local directory), or repair it by hand"
    )]
    /// The stored document breaks the model's rules.
    Document(DocumentError),
    #[error(
        "the document is not valid JSON ({0}); the way out: `build-state restore BUILD_ID` puts back the newest stored version that is not corrupt (a bucket with versioning, or a local directory), or repair it by hand"
    )]
    /// The stored document is not JSON.
    Unreadable(String),
    #[error("{0}")]
    /// The change was written (what was found had to be recorded: a dead
    /// attempt that used the stage's last attempt), then refused all the
    /// same: the caller cannot go on, but a write landed.
    Recorded(Box<Refusal>),
    #[error(transparent)]
    /// The store failed.
    Store(#[from] StoreError),
    #[error(
        "gave up after {0} attempts: each time, another write had changed the document between this update's read and its write; run it again"
    )]
    /// Other writers changed the document before every attempt.
    Contended(u32),
    #[error("revision {revision} does not exist{}", match newest {
        Some(n) => format!(" (the newest is {n}, and no archived run holds it)"),
        None => ": the build has no state yet".to_string(),
    })]
    /// `in` asked for a revision no run holds.
    NoRevision {
        /// The revision asked for.
        revision: u64,
        /// The newest revision of the live run, if any.
        newest: Option<u64>,
    },
    #[error(
        "this change would write a document that cannot be read back ({0}); nothing was written"
    )]
    /// The document a change would write does not decode (e.g. vars nested
    /// deeper than a read accepts): refused before it is sent.
    Unwritable(String),
    #[error("{0}")]
    /// `in` was given a version its revision does not hold.
    NotThisVersion(Box<Mismatch>),
    #[error("revision {revision} does not satisfy require {{{condition}}}: {found}")]
    /// `in` with `require`: the revision does not satisfy it.
    Unmet {
        /// The revision read.
        revision: u64,
        /// The condition, as written.
        condition: String,
        /// Where the revision stands.
        found: String,
    },
    #[error(
        "an archive of run {0} already exists and differs from this run; it is never overwritten (move it aside to restart)"
    )]
    /// A restart found another run's archive under this run's number.
    ArchiveDiffers(u64),
    #[error(
        "the policy the pipeline's resource recorded cannot be read ({0}); give the source's states, retry and error patterns (--source or --pipeline)"
    )]
    /// The policy recorded in the document does not parse.
    RecordedPolicy(String),
}

impl Error {
    /// Whether a write landed before the error (a refusal after recording
    /// what was found): a put hands off all the same.
    pub(crate) fn landed(&self) -> bool {
        matches!(self.kind, ErrorKind::Recorded(_))
    }
}

/// A version given to `in` that its revision does not hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "version {{revision: {revision}, state: {state}, status: {status}}} does not match revision {revision} of this build ({found}); it was not emitted for this source (is build_id or prefix different from the resource that emitted it?)"
)]
pub(crate) struct Mismatch {
    /// The revision asked for.
    pub(crate) revision: u64,
    /// The state the version names (`-` when none).
    pub(crate) state: String,
    /// The status the version names (`-` when none).
    pub(crate) status: String,
    /// Where the revision really stands.
    pub(crate) found: String,
}

/// A document and the ETag it was read with.
#[derive(Clone, Debug)]
pub(crate) struct Current {
    pub(crate) doc: Document,
    pub(crate) etag: String,
}

/// The answer to a conditional read.
#[derive(Clone, Debug)]
pub(crate) enum Read {
    /// No document.
    Absent,
    /// The document still has the ETag the caller knew.
    Unchanged,
    Found(Current),
}

/// The result of an update.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    /// The document as written (or as found, for a no-op).
    pub(crate) doc: Document,
    /// The document's ETag; `None` when other writes have already followed
    /// this one (its answer was lost, and a later read found it landed).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) etag: Option<String>,
    /// False when the update was a no-op (a replay, `init` of a fresh build,
    /// a `file` that adds nothing).
    pub(crate) written: bool,
    /// Why a no-op counted nothing, when it was not a replay.
    pub(crate) ignored: Option<String>,
    /// The heartbeat written (beside the document, which is unchanged).
    pub(crate) beat: Option<Heartbeat>,
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
pub(crate) struct Builds<'a, S> {
    /// The configuration (build, storage, rules).
    pub(crate) config: &'a Config,
    pub(crate) store: &'a S,
    /// Where the compare-and-swap loop says what it does (a conflict, a
    /// lost answer); nowhere when not given.
    notes: Option<&'a crate::Notes>,
}

impl<'a, S: Store> Builds<'a, S> {
    /// The documents of `config`'s build in `store`.
    pub(crate) fn new(config: &'a Config, store: &'a S) -> Self {
        Builds {
            config,
            store,
            notes: None,
        }
    }

    /// The same, saying what its writes meet in `notes`.
    pub(crate) fn with_notes(self, notes: &'a crate::Notes) -> Self {
        Builds {
            notes: Some(notes),
            ..self
        }
    }

    fn note(&self, line: String) {
        if let Some(n) = self.notes {
            n.note(line);
        }
    }

    /// An error about `key`, naming the build and the location.
    pub(crate) fn error(&self, key: &str, kind: impl Into<ErrorKind>) -> Error {
        Error {
            build_id: self.config.build_id.clone(),
            location: self.config.location(key),
            kind: kind.into(),
        }
    }

    /// Decodes and verifies a stored document.
    pub(crate) fn decode(&self, key: &str, body: &[u8]) -> Result<Document, Error> {
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
    pub(crate) async fn read(&self, etag: Option<&str>) -> Result<Read, Error> {
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

    /// The stored heartbeat of the build, if any. One that does not decode
    /// (written by another release) counts as none: a sign of life is
    /// never a reason to refuse anything.
    pub(crate) async fn heartbeat(&self) -> Result<Option<Heartbeat>, Error> {
        let key = self.config.heartbeat_key();
        match self.store.get(&key, None).await {
            Ok(Fetched::Found { body, .. }) => Ok(serde_json::from_slice(&body).ok()),
            Ok(_) => Ok(None),
            // An object no heartbeat could be (too large; on a local
            // directory, a directory, a FIFO, a link): none, said once. A
            // gate that errored on it could never open.
            Err(e @ StoreError::TooLarge { .. }) => {
                self.note(format!(
                    "{}: not a heartbeat ({e}); taken as none",
                    self.config.location(&key)
                ));
                Ok(None)
            }
            Err(StoreError::Other(m))
                if matches!(self.config.storage, crate::config::Storage::Local { .. }) =>
            {
                self.note(format!(
                    "{}: not a heartbeat ({m}); taken as none",
                    self.config.location(&key)
                ));
                Ok(None)
            }
            Err(e) => Err(self.error(&key, e)),
        }
    }

    /// Records a heartbeat for `claim`: reads the document, lets the model
    /// decide, and writes `heartbeat.json` (last writer wins; the document
    /// is not touched). Two requests.
    pub(crate) async fn beat(&self, claim: &Claim) -> Result<(Document, Heartbeat), Error> {
        let state = self.config.state_key();
        let current = self.current().await?;
        // Its time is the store's, as the read just told it (one clock:
        // a worker whose own clock is behind still proves the attempt
        // alive).
        let mut claim = claim.clone();
        if let Some(t) = self.store.clock() {
            claim.at = crate::app::ms(t.now());
        }
        let beat = crate::model::heartbeat(
            current.as_ref().map(|c| &c.doc),
            &claim,
            &self.config.build_id,
        )
        .map_err(|r| self.error(&state, r))?;
        let key = self.config.heartbeat_key();
        let mut body = serde_json::to_vec_pretty(&beat).expect("a heartbeat serializes");
        body.push(b'\n');
        self.store
            .put(&key, body, Precondition::Any)
            .await
            .map_err(|e| self.error(&key, e))?;
        let doc = current
            .expect("a heartbeat was taken, so the document exists")
            .doc;
        Ok((doc, beat))
    }

    /// Reads the live document, if any.
    pub(crate) async fn current(&self) -> Result<Option<Current>, Error> {
        match self.read(None).await? {
            Read::Found(c) => Ok(Some(c)),
            _ => Ok(None),
        }
    }

    /// The document as of `revision`: from the live run or an archived one.
    pub(crate) async fn at_revision(
        &self,
        current: Option<&Document>,
        revision: u64,
    ) -> Result<Document, Error> {
        let key = self.config.state_key();
        let not_found =
            |newest: Option<u64>| self.error(&key, ErrorKind::NoRevision { revision, newest });
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
    pub(crate) async fn update<F>(&self, mut decide: F) -> Result<Applied, Error>
    where
        F: FnMut(Option<&Document>) -> Result<Outcome, Refusal>,
    {
        let key = self.config.state_key();
        // The last document sent whose answer said nothing certain, and the
        // event it adds.
        let mut sent: Option<(Document, crate::model::Event)> = None;
        // A refusal to give once the document is written.
        let mut then_refuse: Option<Refusal> = None;
        let mut uncertain = 0;
        // The archive a restart wrote, with its ETag, until its run's new
        // document lands.
        let mut archived: Option<(String, String)> = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let current = self.current().await?;
            if current.is_none()
                && let Some((archive_key, etag)) = archived.take()
            {
                // The document was deleted (pruned) between the restart's
                // archive and its write: the archive belongs to nothing now,
                // and left there it would refuse the next restart of a new
                // run 1. Removed only if it is still the one written.
                match self.store.delete_if(&archive_key, &etag).await {
                    Ok(()) | Err(StoreError::Conflict) => {}
                    Err(e) => return Err(self.error(&archive_key, e)),
                }
            }
            if let (Some((doc, event)), Some(c)) = (&sent, &current)
                && c.doc.history.contains(event)
            {
                // The write landed (later writes may have followed it).
                if let Some(r) = then_refuse {
                    return Err(self.error(&key, ErrorKind::Recorded(Box::new(r))));
                }
                return Ok(Applied {
                    doc: doc.clone(),
                    etag: (c.doc == *doc).then(|| c.etag.clone()),
                    written: true,
                    ignored: None,
                    beat: None,
                });
            }
            let outcome =
                decide(current.as_ref().map(|c| &c.doc)).map_err(|r| self.error(&key, r))?;
            let when = match &current {
                Some(c) => Precondition::Matches(&c.etag),
                None => Precondition::Absent,
            };
            let doc = match outcome {
                Outcome::Unchanged | Outcome::Ignored(_) => {
                    let c = current.expect("an unchanged outcome has a document");
                    return Ok(Applied {
                        doc: c.doc,
                        etag: Some(c.etag),
                        written: false,
                        ignored: match outcome {
                            Outcome::Ignored(why) => Some(why),
                            _ => None,
                        },
                        beat: None,
                    });
                }
                Outcome::Write(doc) => {
                    then_refuse = None;
                    doc
                }
                Outcome::WriteAndRefuse { document, refusal } => {
                    then_refuse = Some(refusal);
                    document
                }
                Outcome::Restart { archive, document } => {
                    then_refuse = None;
                    if let Some(etag) = self.archive(&archive).await? {
                        archived = Some((self.config.archive_key(archive.run), etag));
                    }
                    document
                }
            };
            let bytes = doc.to_bytes();
            if bytes.len() as u64 > crate::store::MAX_OBJECT {
                return Err(self.error(
                    &key,
                    ErrorKind::Unwritable(format!(
                        "it would be {} bytes, more than the {} MiB a reader takes; restart the build to archive its history",
                        bytes.len(),
                        crate::store::MAX_OBJECT >> 20
                    )),
                ));
            }
            // What is written must read back: a document every later read
            // refuses would brick the build, so it is decoded before it is
            // sent, and never sent when it does not decode.
            let event = match self.decode(&key, &bytes) {
                Ok(written) => written
                    .history
                    .last()
                    .cloned()
                    .expect("a written document has a history"),
                Err(e) => return Err(self.error(&key, ErrorKind::Unwritable(e.kind.to_string()))),
            };
            let result = self.store.put(&key, bytes.clone(), when).await;
            sent = Some((doc, event));
            match result {
                Ok(etag) => {
                    if let Some(r) = then_refuse {
                        return Err(self.error(&key, ErrorKind::Recorded(Box::new(r))));
                    }
                    let (doc, _) = sent.expect("just sent");
                    return Ok(Applied {
                        doc,
                        etag: Some(etag),
                        written: true,
                        ignored: None,
                        beat: None,
                    });
                }
                Err(StoreError::Conflict) => {
                    if attempt > 1 {
                        self.note(format!(
                            "{key} changed since it was read; reading it again (attempt {attempt})"
                        ));
                    }
                    backoff(attempt).await;
                }
                Err(StoreError::Uncertain(m)) if uncertain < MAX_UNCERTAIN => {
                    uncertain += 1;
                    self.note(format!(
                        "no answer to the write of {key} ({m}); reading it again to see whether it landed"
                    ));
                    backoff(attempt).await;
                }
                Err(e) => return Err(self.error(&key, e)),
            }
        }
        Err(self.error(&key, ErrorKind::Contended(MAX_ATTEMPTS)))
    }

    /// Writes a finished run to `runs/<run>.json`, once; answers the ETag
    /// when this call wrote it. An archive left by a restart that lost its
    /// race (a prefix of this run) is replaced; any other existing archive
    /// is never overwritten.
    async fn archive(&self, run: &Document) -> Result<Option<String>, Error> {
        let key = self.config.archive_key(run.run);
        let body = run.to_bytes();
        match self
            .store
            .put(&key, body.clone(), Precondition::Absent)
            .await
        {
            Ok(etag) => return Ok(Some(etag)),
            Err(StoreError::Conflict) => {}
            Err(e) => return Err(self.error(&key, e)),
        }
        let (existing, etag) = match self.store.get(&key, None).await {
            Ok(Fetched::Found { body, etag }) => (self.decode(&key, &body)?, etag),
            Ok(_) => return Err(self.error(&key, StoreError::Conflict)),
            Err(e) => return Err(self.error(&key, e)),
        };
        if existing == *run {
            return Ok(None);
        }
        let is_prefix = existing.run == run.run
            && existing.history.len() < run.history.len()
            && run.history[..existing.history.len()] == existing.history[..];
        if !is_prefix {
            return Err(self.error(&key, ErrorKind::ArchiveDiffers(run.run)));
        }
        self.store
            .put(&key, body, Precondition::Matches(&etag))
            .await
            .map(Some)
            .map_err(|e| self.error(&key, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Change, ManualClock, record};
    use crate::model::{Action, Actor, ErrorInfo, FailureKind, Status, Update};
    use crate::store::memory::{Fault, FaultyStore, MemoryStore, Op};

    /// `record` with its notes dropped.
    async fn quiet_record<S: Store>(
        c: &Config,
        store: &S,
        clock: &ManualClock,
        change: Change,
    ) -> Result<Applied, Error> {
        record(c, store, clock, change, &crate::Notes::new()).await
    }

    fn config() -> Config {
        let source: crate::protocol::Source =
            serde_json::from_str(r#"{"local_dir": "/nowhere", "build_id": "rhel8-web"}"#).unwrap();
        Config::from_source(&source).unwrap()
    }

    fn clock() -> ManualClock {
        ManualClock::at("2026-12-01T10:00:00Z".parse().unwrap())
    }

    fn by(job: &str) -> Actor {
        Actor {
            job: Some(job.to_string()),
            build_id: Some(job.to_string()),
            ..Actor::default()
        }
    }

    fn change(action: Action, job: &str) -> Change {
        Change::Apply(Update::new(action, by(job), crate::now()))
    }

    fn fail(n: u32, message: &str) -> Action {
        Action::Fail {
            state: n,
            error: ErrorInfo::new(message.to_string(), FailureKind::Transient),
        }
    }

    async fn doc(store: &impl Store, c: &Config) -> Document {
        Builds::new(c, store).current().await.unwrap().unwrap().doc
    }

    /// A store with the build at 5 pending (revision 2).
    async fn started(c: &Config, clock: &ManualClock) -> FaultyStore {
        let store = FaultyStore::new(MemoryStore::new());
        quiet_record(
            c,
            &store,
            clock,
            change(Action::Init { restart: false }, "a"),
        )
        .await
        .unwrap();
        quiet_record(c, &store, clock, change(Action::Complete(0), "a"))
            .await
            .unwrap();
        store
    }

    /// The bytes the document would have after `action` by another writer.
    async fn after(c: &Config, store: &FaultyStore, action: Action) -> Vec<u8> {
        let cur = doc(store, c).await;
        let u = Update::new(action, crate::model::Actor::default(), crate::now());
        match crate::model::apply(Some(&cur), &u, &c.rules()).unwrap() {
            Outcome::Write(d) => d.to_bytes(),
            _ => panic!("the other writer's action changes nothing"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_rereads_and_applies_once() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        let other = after(&c, &store, Action::Start(5)).await;
        let key = c.state_key();
        // Another writer starts stage 5 just before our write.
        store.on(
            Op::Put,
            3,
            Fault::Interleave(Box::new(move |m: &MemoryStore| m.set(&key, other))),
        );
        let applied = quiet_record(&c, &store, &clock, change(fail(5, "boom"), "b"))
            .await
            .unwrap();
        assert!(applied.written);
        let d = doc(&store, &c).await;
        let actions: Vec<String> = d.history.iter().map(|e| e.action.to_string()).collect();
        assert_eq!(actions, ["init", "complete", "start", "fail"]);
        assert_eq!(d.attempts, 1);
        assert_eq!(
            store.calls(Op::Put),
            4,
            "init, complete, the conflict, the retry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_is_judged_by_the_stored_history() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        store.on(Op::Put, 3, Fault::ApplyThenLose);
        let applied = quiet_record(&c, &store, &clock, change(Action::Start(5), "b"))
            .await
            .unwrap();
        assert!(applied.written);
        assert_eq!(
            applied.etag.as_deref(),
            Some(doc(&store, &c).await.etag().as_str())
        );
        let d = doc(&store, &c).await;
        assert_eq!(d.revision, 3, "applied once, not twice");
        assert_eq!(store.calls(Op::Put), 3, "not sent again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_then_another_write_is_still_ours() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        store.on(Op::Put, 3, Fault::ApplyThenLose);
        // Between our lost write and our re-read, another writer fails the
        // stage we started.
        let key = c.state_key();
        let rules_config = c.clone();
        store.on(
            Op::Get,
            4,
            Fault::Interleave(Box::new(move |m: &MemoryStore| {
                let cur: Document = serde_json::from_slice(&m.body(&key).unwrap()).unwrap();
                let u = Update::new(
                    fail(5, "other"),
                    crate::model::Actor::default(),
                    crate::now(),
                );
                if let Outcome::Write(d) =
                    crate::model::apply(Some(&cur), &u, &rules_config.rules()).unwrap()
                {
                    m.set(&key, d.to_bytes());
                }
            })),
        );
        let applied = quiet_record(&c, &store, &clock, change(Action::Start(5), "b"))
            .await
            .unwrap();
        assert!(applied.written);
        assert_eq!(applied.etag, None, "no longer the live revision");
        assert_eq!(applied.doc.revision, 3);
        let d = doc(&store, &c).await;
        let actions: Vec<String> = d.history.iter().map(|e| e.action.to_string()).collect();
        assert_eq!(
            actions,
            ["init", "complete", "start", "fail"],
            "our start once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_write_that_did_not_land_is_sent_again() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        store.on(
            Op::Put,
            3,
            Fault::Fail(StoreError::Uncertain("timed out".into())),
        );
        quiet_record(&c, &store, &clock, change(Action::Start(5), "b"))
            .await
            .unwrap();
        assert_eq!(doc(&store, &c).await.revision, 3);
        assert_eq!(store.calls(Op::Put), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn endless_contention_gives_up_saying_what_happened() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        // Before each of our writes, another writer adds a note (a set).
        for n in 3..3 + MAX_ATTEMPTS as usize {
            let key = c.state_key();
            let rules_config = c.clone();
            store.on(
                Op::Put,
                n,
                Fault::Interleave(Box::new(move |m: &MemoryStore| {
                    let cur: Document = serde_json::from_slice(&m.body(&key).unwrap()).unwrap();
                    let u = Update::new(
                        Action::Set {
                            state: 5,
                            status: Status::Pending,
                            reason: format!("other {n}"),
                        },
                        by(&format!("other-{n}")),
                        crate::now(),
                    );
                    if let Outcome::Write(d) =
                        crate::model::apply(Some(&cur), &u, &rules_config.rules()).unwrap()
                    {
                        m.set(&key, d.to_bytes());
                    }
                })),
            );
        }
        let err = quiet_record(&c, &store, &clock, change(Action::Start(5), "b"))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Contended(MAX_ATTEMPTS)),
            "{err}"
        );
        assert!(
            err.to_string().contains(
                "gave up after 40 attempts: each time, another write had changed the document"
            ),
            "{err}"
        );
        let d = doc(&store, &c).await;
        assert!(
            d.history.iter().all(|e| e.action.to_string() != "start"),
            "nothing of ours"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_after_a_conflict_is_a_real_one() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        let other = after(&c, &store, Action::Complete(5)).await;
        let key = c.state_key();
        store.on(
            Op::Put,
            3,
            Fault::Interleave(Box::new(move |m: &MemoryStore| m.set(&key, other))),
        );
        let err = quiet_record(&c, &store, &clock, change(Action::Complete(5), "b"))
            .await
            .unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Refused(_)), "{err}");
        assert!(err.to_string().contains("cannot complete 5"), "{err}");
        assert_eq!(doc(&store, &c).await.revision, 3, "the other write only");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_refuses_the_condition_is_not_retried() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        store.on(
            Op::Put,
            3,
            Fault::Fail(StoreError::ConditionRefused(
                "412 to the current ETag".into(),
            )),
        );
        let err = quiet_record(&c, &store, &clock, change(Action::Start(5), "b"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot do compare-and-swap"),
            "{err}"
        );
        assert!(!err.to_string().contains("concurrent"), "{err}");
        assert_eq!(store.calls(Op::Put), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_event_time_comes_from_the_clock() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        clock.advance(chrono::Duration::minutes(7));
        quiet_record(&c, &store, &clock, change(fail(5, "boom"), "b"))
            .await
            .unwrap();
        let d = doc(&store, &c).await;
        let e = d.last_event();
        assert_eq!(e.at.to_rfc3339(), "2026-12-01T10:07:00+00:00");
        // Backoff 30s by default.
        assert_eq!(
            d.retry_at.unwrap().to_rfc3339(),
            "2026-12-01T10:07:30+00:00"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_archives_the_run_once() {
        let (c, clock) = (config(), clock());
        let store = started(&c, &clock).await;
        let run1 = doc(&store, &c).await;
        // An archive left by a restart that lost its race: a prefix of run 1.
        let prefix = run1.at_revision(1, &c.ladder).unwrap();
        store.inner().set(&c.archive_key(1), prefix.to_bytes());
        quiet_record(&c, &store, &clock, change(Action::Restart, "b"))
            .await
            .unwrap();
        let archived: Document =
            serde_json::from_slice(&store.inner().body(&c.archive_key(1)).unwrap()).unwrap();
        assert_eq!(archived, run1, "the prefix was replaced by the whole run");
        assert_eq!(doc(&store, &c).await.run, 2);
        // An archive that is not this run's is never overwritten.
        let run2 = doc(&store, &c).await;
        let mut other = run2.clone();
        other.history[0].note = Some("someone else's".into());
        store.inner().set(&c.archive_key(2), other.to_bytes());
        let err = quiet_record(&c, &store, &clock, change(Action::Restart, "c"))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("an archive of run 2 already exists and differs"),
            "{err}"
        );
        assert_eq!(doc(&store, &c).await, run2, "nothing written");
    }

    /// The same faults over the local store: a lost answer and a real
    /// conflict (another writer's file slipped in before ours), each
    /// judged by what is on disk, each landing once; the conflict is said
    /// in the notes.
    #[tokio::test(start_paused = true)]
    async fn faults_over_the_local_store() {
        use crate::store::local::LocalStore;
        let dir = tempfile::tempdir().unwrap();
        let source: crate::protocol::Source = serde_json::from_value(serde_json::json!({
            "local_dir": dir.path(), "build_id": "rhel8-web"
        }))
        .unwrap();
        let c = Config::from_source(&source).unwrap();
        let clock = clock();
        let store = FaultyStore::new(LocalStore::new(dir.path().to_path_buf()));
        let notes = crate::Notes::new();
        for a in [Action::Init { restart: false }, Action::Complete(0)] {
            record(&c, &store, &clock, change(a, "a"), &notes)
                .await
                .unwrap();
        }
        // The answer to the start is lost after the file was replaced.
        store.on(Op::Put, 3, Fault::ApplyThenLose);
        let applied = record(&c, &store, &clock, change(Action::Start(5), "b"), &notes)
            .await
            .unwrap();
        assert_eq!((applied.written, applied.doc.revision), (true, 3));
        assert!(
            notes
                .take()
                .iter()
                .any(|n| n.starts_with("no answer to the write of")),
            "the lost answer is said"
        );
        // Another writer fails stage 5 on disk just before our retry lands.
        let key = c.state_key();
        let theirs = {
            let cur = doc(&store, &c).await;
            let u = Update::new(
                fail(5, "theirs"),
                crate::model::Actor::default(),
                crate::now(),
            );
            match crate::model::apply(Some(&cur), &u, &c.rules()).unwrap() {
                Outcome::Write(d) => d.to_bytes(),
                other => panic!("{other:?}"),
            }
        };
        let path = dir.path().join(&key);
        store.on(
            Op::Put,
            4,
            Fault::Interleave(Box::new(move |_: &LocalStore| {
                std::fs::write(&path, theirs).unwrap()
            })),
        );
        let applied = record(&c, &store, &clock, change(Action::Retry(5), "c"), &notes)
            .await
            .unwrap();
        assert!(applied.written);
        let d = doc(&store, &c).await;
        let actions: Vec<String> = d.history.iter().map(|e| e.action.to_string()).collect();
        assert_eq!(actions, ["init", "complete", "start", "fail", "retry"]);
        assert_eq!(store.calls(Op::Put), 5, "the conflict, then the retry");
        assert!(
            notes.take().is_empty(),
            "a first conflict is not worth a line"
        );
    }

    /// A build pruned between a restart's archive and its write: the
    /// restart lands as a fresh run 1, and takes its archive with it, so
    /// the next restart of that run is not refused (issue 18 #3).
    #[tokio::test(start_paused = true)]
    async fn a_restart_racing_a_prune_leaves_no_orphan_archive() {
        let (c, clock) = (config(), clock());
        let store = FaultyStore::new(MemoryStore::new());
        let notes = crate::Notes::new();
        for a in [
            Action::Init { restart: false },
            Action::Cancel {
                reason: "superseded".into(),
            },
        ] {
            record(&c, &store, &clock, change(a, "a"), &notes)
                .await
                .unwrap();
        }
        // Puts: init, cancel, the archive, then the new run: prune deletes
        // the document just before that last one.
        let key = c.state_key();
        store.on(
            Op::Put,
            4,
            Fault::Interleave(Box::new(move |m: &MemoryStore| m.remove(&key))),
        );
        let applied = record(&c, &store, &clock, change(Action::Restart, "b"), &notes)
            .await
            .unwrap();
        assert_eq!((applied.doc.run, applied.doc.revision), (1, 1));
        assert!(
            store.inner().body(&c.archive_key(1)).is_none(),
            "the archive of the pruned run went with it"
        );
        // The new run 1 finishes and restarts like any other.
        record(
            &c,
            &store,
            &clock,
            change(
                Action::Cancel {
                    reason: "again".into(),
                },
                "c",
            ),
            &notes,
        )
        .await
        .unwrap();
        let again = record(&c, &store, &clock, change(Action::Restart, "d"), &notes)
            .await
            .unwrap();
        assert_eq!(again.doc.run, 2);
    }
}
