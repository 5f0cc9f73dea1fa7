//! The state document (`state.json`), its history, and the fold that
//! computes the summary fields from the history.

use super::ladder::{Code, Ladder};
use super::resources::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The schema version this program reads and writes.
pub(crate) const SCHEMA_VERSION: u32 = 1;

pub use super::time::{Timestamp, rfc3339};

pub use super::event::{ActionKind, Actor, ErrorInfo, Event, FailureKind, Status};

/// `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The document format's version.
    pub(crate) schema_version: u32,
    /// The build this document tracks.
    pub(crate) build_id: String,
    /// The run (1, 2, ... after each restart).
    pub(crate) run: u64,
    /// Rises by one with every write, across runs.
    pub(crate) revision: u64,
    #[serde(default)]
    /// Free string labels.
    pub(crate) labels: BTreeMap<String, String>,
    /// The state code: the last milestone reached.
    pub(crate) state: Code,
    /// The state's name on the ladder.
    pub(crate) state_name: String,
    /// The status of the stage at `state`.
    pub(crate) status: Status,
    /// Failures of the current stage.
    pub(crate) attempts: u32,
    #[serde(default, with = "rfc3339::option")]
    /// When failed: when the retry is due.
    pub(crate) retry_at: Option<Timestamp>,
    #[serde(default)]
    /// The stage's last failure.
    pub(crate) last_error: Option<ErrorInfo>,
    #[serde(default)]
    /// Variables merged from every event.
    pub(crate) vars: Map<String, Value>,
    #[serde(with = "rfc3339")]
    /// When the run started.
    pub(crate) created_at: Timestamp,
    #[serde(with = "rfc3339")]
    /// When the document last changed.
    pub(crate) updated_at: Timestamp,
    /// The cloud resources the build recorded, and where each stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) resources: Vec<Resource>,
    /// Every event of the run, oldest first; the summary above is their fold.
    pub history: Vec<Event>,
}

/// The fields of a document that are computed from its history.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The newest event's revision.
    pub(crate) revision: u64,
    /// The state code.
    pub(crate) state: Code,
    pub(crate) status: Status,
    /// Failures of the current stage.
    pub(crate) attempts: u32,
    /// When the retry is due.
    pub(crate) retry_at: Option<Timestamp>,
    /// The stage's last failure.
    pub(crate) last_error: Option<ErrorInfo>,
    /// Merged variables.
    pub(crate) vars: Map<String, Value>,
    /// The first event's time.
    pub(crate) created_at: Timestamp,
    /// The newest event's time.
    pub(crate) updated_at: Timestamp,
    /// The resources the history recorded.
    pub(crate) resources: Vec<Resource>,
}

/// Why a stored document cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("the document is corrupt: {0}")]
    /// The document breaks the model's rules.
    Corrupt(String),
    #[error(
        "schema_version {0} is not supported (this build-state reads version 1); upgrade build-state"
    )]
    /// A document format this version does not read.
    Schema(u32),
    #[error(transparent)]
    /// A code off the ladder.
    OffLadder(#[from] super::ladder::OffLadder),
}

/// Parses a vars file: a JSON object, or a message saying what is wrong.
pub(crate) fn parse_vars(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must hold a JSON object ({\"ami_id\": \"ami-123\"})".to_string()),
        Err(e) => Err(format!("is not valid JSON: {e}")),
    }
}

/// Merges `vars` into `into` key by key (a later value replaces an earlier one).
pub(crate) fn merge_vars(into: &mut Map<String, Value>, vars: &Map<String, Value>) {
    for (k, v) in vars {
        into.insert(k.clone(), v.clone());
    }
}

/// Walks a history counting the failures of the current stage: reset when
/// a stage is entered, a human decides or a run starts; the failures of a
/// start-over stage that sent the build back are counted again when the
/// stage comes round. Calls `on_fail` with every fail event and its failure
/// number; answers the count after the last event.
fn walk_attempts(history: &[Event], mut on_fail: impl FnMut(&Event, u32)) -> u32 {
    let mut attempts = 0;
    let mut resumed: BTreeMap<Code, u32> = BTreeMap::new();
    for e in history {
        if e.action.resets_attempts() {
            attempts = 0;
        }
        if e.action.resets_start_overs() {
            resumed.clear();
        }
        if e.action == ActionKind::Complete {
            attempts = resumed.get(&e.state).copied().unwrap_or(0);
        }
        if e.action == ActionKind::Fail {
            attempts += 1;
            on_fail(e, attempts);
            if let Some(stage) = e.target.filter(|t| *t != e.state) {
                // A start-over: the build went back to an earlier state.
                resumed.insert(stage, attempts);
                attempts = 0;
            }
        }
    }
    attempts
}

/// Computes the summary from a history: the single source of the summary
/// fields. `None` for an empty history.
pub fn fold(history: &[Event]) -> Option<Summary> {
    let first = history.first()?;
    let last = history.last()?;
    let attempts = walk_attempts(history, |_, _| {});
    let mut last_error = None;
    let mut vars = Map::new();
    for e in history {
        if e.action.clears_error() {
            last_error = None;
        }
        if e.action == ActionKind::Fail {
            last_error = e.error.clone();
        }
        merge_vars(&mut vars, &e.vars);
    }
    Some(Summary {
        revision: last.revision,
        state: last.state,
        status: last.status,
        attempts,
        retry_at: last.retry_at,
        last_error,
        vars,
        created_at: first.at,
        updated_at: last.at,
        resources: super::resources::fold(history),
    })
}

impl Document {
    /// Where the last error came from, when another stage than the one the
    /// build is at: the stage that failed and its attempt (a start-over
    /// stage's failure sends the build back to its `resume_from`, which
    /// then shows the error it did not make).
    pub(crate) fn error_elsewhere(&self) -> Option<(Code, u32)> {
        self.last_error.as_ref()?;
        let e = self
            .history
            .iter()
            .rev()
            .find(|e| e.action == ActionKind::Fail && e.error == self.last_error)?;
        let failed = e.target.unwrap_or(e.state);
        (failed != self.state).then_some((failed, e.attempt))
    }

    /// This document put back at `revision` (higher than any the build has
    /// had): its history, then a `restore` event that keeps where it stood
    /// (state, status, attempt, `retry_at`) and says which revision it
    /// restored and why.
    pub(crate) fn restored(
        &self,
        revision: u64,
        by: Actor,
        at: Timestamp,
        reason: String,
        ladder: &Ladder,
        newest: Option<&Document>,
    ) -> Document {
        let resources = newest
            .map(|n| self.resources_after(n, revision))
            .unwrap_or_default();
        let mut history = self.history.clone();
        history.push(Event {
            revision,
            at,
            action: ActionKind::Restore,
            target: Some(self.state),
            state: self.state,
            status: self.status,
            attempt: self.attempts,
            error: None,
            retry_at: self.retry_at,
            vars: Map::new(),
            reason: Some(reason),
            note: None,
            by,
            policy: None,
            resources,
        });
        self.continued(history, ladder)
    }

    /// What a restore of this document over `newest` (the newest stored
    /// version) does to resources, so that none is forgotten: what `newest`
    /// recorded and did not release that this one lacks is carried in,
    /// leaked (the run that made it can no longer be sure of it); what
    /// `newest` released that this one holds is released.
    fn resources_after(
        &self,
        newest: &Document,
        revision: u64,
    ) -> super::resources::ResourceEvents {
        use super::resources::Holding;
        let open_here = |id: &str| {
            self.resources
                .iter()
                .any(|r| r.id == id && r.holding != Holding::Released)
        };
        let mut out = super::resources::ResourceEvents::default();
        for r in &newest.resources {
            match r.holding {
                Holding::Released if open_here(&r.id) => out.released.push(r.id.clone()),
                Holding::Released => {}
                _ if open_here(&r.id) => {}
                _ => {
                    let mut r = r.clone();
                    r.run = r.run.or(Some(newest.run));
                    if r.holding == Holding::Live {
                        r.holding = Holding::Leaked;
                        r.why = Some(format!(
                            "recorded at revision {} or later, which the restore at revision {revision} put aside",
                            self.revision + 1
                        ));
                    }
                    out.carried.push(r);
                }
            }
        }
        out
    }

    /// This build's run with `history` (this history and what an update
    /// adds), its summary folded again.
    pub(crate) fn continued(&self, history: Vec<Event>, ladder: &Ladder) -> Document {
        Document::from_history(
            &self.build_id,
            self.run,
            self.labels.clone(),
            history,
            ladder,
        )
    }

    /// Builds a document whose summary is the fold of `history` (which must
    /// not be empty).
    pub(crate) fn from_history(
        build_id: &str,
        run: u64,
        labels: BTreeMap<String, String>,
        history: Vec<Event>,
        ladder: &Ladder,
    ) -> Document {
        let s = fold(&history).expect("a document has at least one event");
        Document {
            schema_version: SCHEMA_VERSION,
            build_id: build_id.to_string(),
            run,
            revision: s.revision,
            labels,
            state: s.state,
            state_name: ladder.name(s.state).unwrap_or_default().to_string(),
            status: s.status,
            attempts: s.attempts,
            retry_at: s.retry_at,
            last_error: s.last_error,
            vars: s.vars,
            created_at: s.created_at,
            updated_at: s.updated_at,
            resources: s.resources,
            history,
        }
    }

    /// The summary fields as stored.
    pub(crate) fn summary(&self) -> Summary {
        Summary {
            revision: self.revision,
            state: self.state,
            status: self.status,
            attempts: self.attempts,
            retry_at: self.retry_at,
            last_error: self.last_error.clone(),
            vars: self.vars.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            resources: self.resources.clone(),
        }
    }

    /// Checks that the document can be used: its schema, its history (one
    /// run, revisions rising by one), its summary (exactly the fold of the
    /// history) and its state (on the ladder). `state_name` is not compared:
    /// names may be edited in the source; it is rewritten on the next write.
    pub(crate) fn verify(&self, ladder: &Ladder) -> Result<(), DocumentError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(DocumentError::Schema(self.schema_version));
        }
        let corrupt = |m: String| Err(DocumentError::Corrupt(m));
        let Some(first) = self.history.first() else {
            return corrupt("its history is empty".into());
        };
        if !matches!(first.action, ActionKind::Init | ActionKind::Restart) {
            return corrupt(format!(
                "its history starts with '{}' at revision {}, not with init or restart",
                first.action, first.revision
            ));
        }
        for pair in self.history.windows(2) {
            // A restore continues from a later revision than the history it
            // brought back (revisions never go down).
            let restored = pair[1].action == ActionKind::Restore;
            if (restored && pair[1].revision <= pair[0].revision)
                || (!restored && pair[1].revision != pair[0].revision + 1)
            {
                return corrupt(format!(
                    "history revision {} is followed by {} (revisions rise by exactly 1)",
                    pair[0].revision, pair[1].revision
                ));
            }
        }
        let mut wrong = None;
        walk_attempts(&self.history, |e, failure| {
            if wrong.is_none() && e.attempt != failure {
                wrong = Some(format!(
                    "the fail at revision {} records attempt {} but it is failure {failure} of its stage",
                    e.revision, e.attempt
                ));
            }
        });
        if let Some(m) = wrong {
            return corrupt(m);
        }
        let folded = fold(&self.history).expect("history is not empty");
        let stored = self.summary();
        if folded != stored {
            return corrupt(describe_mismatch(&stored, &folded));
        }
        ladder.check(self.state)?;
        Ok(())
    }

    /// The document as it was at `revision`, rebuilt from the history;
    /// `None` when the revision is not in this run.
    pub(crate) fn at_revision(&self, revision: u64, ladder: &Ladder) -> Option<Document> {
        if revision == self.revision {
            return Some(self.clone());
        }
        let idx = self.history.iter().position(|e| e.revision == revision)?;
        let mut doc = self.continued(self.history[..=idx].to_vec(), ladder);
        if doc.state_name.is_empty() {
            doc.state_name = self.state_name.clone();
        }
        Some(doc)
    }

    /// The first revision of this run.
    pub(crate) fn first_revision(&self) -> u64 {
        self.history.first().map_or(self.revision, |e| e.revision)
    }

    /// The newest event that concerns the stage (not one that only
    /// records resources): the stage's start while it is in progress.
    pub(crate) fn stage_event(&self) -> &Event {
        self.history
            .iter()
            .rev()
            .find(|e| !e.action.is_resource_record())
            .unwrap_or_else(|| self.last_event())
    }

    /// The newest revision that leaked a resource (a transition, a hold
    /// that ended, a restart carrying leaked ones): what a `leaked` gate
    /// emits, so that a cleanup job runs once per leak, not again on every
    /// later write while the leak lasts.
    pub(crate) fn leak_revision(&self) -> u64 {
        use super::resources::Holding;
        self.history
            .iter()
            .rev()
            .find(|e| {
                !e.resources.leaked.is_empty()
                    || e.resources
                        .carried
                        .iter()
                        .any(|r| r.holding == Holding::Leaked)
            })
            .map_or(self.revision, |e| e.revision)
    }

    /// Since when the stage stands where it is (an attempt in progress:
    /// since its start).
    pub(crate) fn stage_since(&self) -> Timestamp {
        self.stage_event().at
    }

    /// The newest event.
    pub(crate) fn last_event(&self) -> &Event {
        self.history
            .last()
            .expect("a verified document has history")
    }

    /// `rhel8-web is at 30 (monitoring setup, pending)`.
    pub(crate) fn whereabouts(&self) -> String {
        let name = if self.state_name.is_empty() {
            String::new()
        } else {
            format!("{}, ", self.state_name)
        };
        format!(
            "{} is at {} ({name}{})",
            self.build_id, self.state, self.status
        )
    }

    /// The behaviour settings the run recorded last (see [`Event::policy`]).
    #[cfg(test)]
    pub(crate) fn policy(&self) -> Option<&Value> {
        self.history.iter().rev().find_map(|e| e.policy.as_ref())
    }

    /// Pretty-printed JSON with a trailing newline, as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a document always serializes");
        out.push(b'\n');
        out
    }

    /// The ETag of this document as build-state stores it: the MD5 of its
    /// bytes, quoted, as S3 (without SSE-KMS) and the local store give it.
    /// A pure function of the revision: the same whether the revision is
    /// the newest or rebuilt from a later history (see `at_revision`).
    pub(crate) fn etag(&self) -> String {
        use md5::{Digest, Md5};
        let digest = Md5::digest(self.to_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{hex}\"")
    }
}

fn describe_mismatch(stored: &Summary, folded: &Summary) -> String {
    let mut diffs = Vec::new();
    macro_rules! cmp {
        ($field:ident) => {
            if stored.$field != folded.$field {
                diffs.push(format!(
                    "{} is {:?} but its history says {:?}",
                    stringify!($field),
                    stored.$field,
                    folded.$field
                ));
            }
        };
    }
    cmp!(revision);
    cmp!(state);
    cmp!(status);
    cmp!(attempts);
    cmp!(retry_at);
    cmp!(last_error);
    cmp!(created_at);
    cmp!(updated_at);
    cmp!(resources);
    if stored.vars != folded.vars {
        diffs.push("vars differ from the vars its history set".to_string());
    }
    format!(
        "its summary disagrees with its history: {}",
        diffs.join("; ")
    )
}
