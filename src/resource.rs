//! The Concourse resource: `check`, `in` (get) and `out` (put), each a
//! function from the request on stdin to the reply on stdout.

use crate::Notes;
use crate::app::{Change, Clock, StoreClock};
use crate::config::{Config, parse_condition};
use crate::engine::{Builds, ErrorKind, Read};
use crate::inputs::SourcesDir;
use crate::model::{Document, NextStep, Status, document::rfc3339};
use crate::protocol::{
    BuildEnv, CheckRequest, InRequest, MetadataField, OutRequest, Response, Source, Version, parse,
};
use crate::request::{Context, Front, Request, RequestError, translate};
use crate::store::{AnyStore, Store};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// Validates a source block; errors name the build when the source does.
pub(crate) fn configure(source: &Source) -> Result<Config> {
    Config::from_source(source).map_err(|e| match source.build_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() && !e.field.starts_with("build_id") => anyhow!("{id}: {e}"),
        _ => anyhow!(e),
    })
}

async fn open(config: &Config) -> Result<AnyStore> {
    AnyStore::open(config)
        .await
        .map_err(|e| anyhow!("{}: {e}", config.build_id))
}

/// One of the resource's three programs, with its directory argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// `check`
    Check,
    /// `in DEST`
    In(PathBuf),
    /// `out SOURCES`
    Out(PathBuf),
}

impl Program {
    /// The program a binary called `name` (the file name of `argv[0]`) is, with its
    /// first argument; `None` when the name is not one of them.
    pub fn named(name: &str, dir: Option<PathBuf>) -> Option<Result<Program>> {
        let need = |dir: Option<PathBuf>| {
            dir.ok_or_else(|| {
                anyhow!("usage: {name} DIRECTORY < request.json (Concourse passes the directory)")
            })
        };
        Some(match name {
            "check" => Ok(Program::Check),
            "in" => need(dir).map(Program::In),
            "out" => need(dir).map(Program::Out),
            _ => return None,
        })
    }

    /// Runs the program on the request `input`; answers the JSON reply.
    /// What it has to say besides goes to `notes` (the binary prints them
    /// on stderr, also when the program fails).
    pub async fn run(&self, input: &[u8], notes: &Notes) -> Result<Vec<u8>> {
        Ok(match self {
            Program::Check => serde_json::to_vec(&check(input, notes).await?)?,
            Program::In(dest) => serde_json::to_vec(&get(input, dest, notes).await?)?,
            Program::Out(sources) => {
                serde_json::to_vec(&put(input, sources, &BuildEnv::from_env(), notes).await?)?
            }
        })
    }

    /// Runs the program as Concourse does: the request read whole from
    /// `input` (the caller's stdin), the reply answered as one line of JSON
    /// for the caller to print. What the binary runs, and `build-state
    /// check|in|out`; the library itself touches neither stream.
    pub async fn answer(&self, mut input: impl std::io::Read, notes: &Notes) -> Result<Vec<u8>> {
        let mut request = Vec::new();
        input
            .read_to_end(&mut request)
            .context("reading the request from stdin")?;
        let mut reply = self.run(&request, notes).await?;
        reply.push(b'\n');
        Ok(reply)
    }
}

/// The version of the document as of one revision. Concourse identifies a
/// version by its whole JSON, so a revision is always emitted the same way
/// (by check, as the newest or as an intermediate revision, and by put): its
/// ETag is the one the document had when that revision was written, computed
/// from the revision itself, and it lets an unchanged check cost one 304.
pub(crate) fn version_of(doc: &Document) -> Version {
    Version {
        revision: doc.revision.to_string(),
        state: Some(doc.state.to_string()),
        status: Some(doc.status.to_string()),
        etag: Some(doc.etag()),
    }
}

fn parse_revision(v: &Version) -> Result<u64> {
    v.revision.trim().parse().map_err(|_| {
        anyhow!(
            "invalid payload: version.revision: {:?} is not a revision number",
            v.revision
        )
    })
}

/// `check`: with a gate, the current revision when it passes (else
/// nothing); without, every revision of the current run after the given one.
pub(crate) async fn check(input: &[u8], notes: &Notes) -> Result<Vec<Version>> {
    let (config, version) = check_request(input)?;
    let store = open(&config).await?;
    check_store(&config, &store, &StoreClock(&store), version, notes).await
}

/// A check request read and validated: the configuration and the version
/// given.
pub(crate) fn check_request(input: &[u8]) -> Result<(Config, Option<Version>)> {
    let req: CheckRequest = parse(input)?;
    let config = configure(&req.source)?;
    req.version.as_ref().map(parse_revision).transpose()?;
    Ok((config, req.version))
}

/// `check` on a given store, at the clock's time.
pub(crate) async fn check_store<S: Store>(
    config: &Config,
    store: &S,
    clock: &dyn Clock,
    version: Option<Version>,
    notes: &Notes,
) -> Result<Vec<Version>> {
    let given_rev = version.as_ref().map(parse_revision).transpose()?;
    let builds = Builds::new(config, store);
    // Only a whole version (as check emits it) may answer "unchanged" with
    // itself; a partial one is answered with the canonical version.
    let etag = version
        .as_ref()
        .filter(|v| v.state.is_some() && v.status.is_some())
        .and_then(|v| v.etag.as_deref());
    let current = match builds.read(etag).await? {
        // A typo in `prefix` or `build_id` must not look like an idle pipeline.
        Read::Absent => {
            notes.note(format!(
                "{}: no document at {} (check source.prefix and source.build_id; a put with `init: true` creates it)",
                config.build_id,
                config.location(&config.state_key())
            ));
            return Ok(vec![]);
        }
        // The given version was emitted for this very object: it still
        // stands (a gate that passed stays passed while nothing changes).
        Read::Unchanged => {
            notes.note(format!(
                "{} unchanged since revision {}",
                config.build_id,
                version.as_ref().map_or("?", |v| v.revision.as_str())
            ));
            return Ok(version.into_iter().collect());
        }
        Read::Found(c) => c,
    };
    let doc = &current.doc;
    // Computed only when emitted (its ETag serializes the document).
    let newest = || version_of(doc);
    if let Some(gate) = config.gate {
        // Never before what the document records (clocks that tell time
        // to a second may disagree by that much).
        let now = clock.now().max(doc.updated_at);
        // A stage with a heartbeat policy whose start no longer proves it
        // alive: its heartbeat decides (one more small GET, only then).
        let heartbeat = if gate.needs_heartbeat(doc, now, &config.retry) {
            builds.heartbeat().await?
        } else {
            None
        };
        let heartbeat = heartbeat.as_ref();
        if gate.gate_passes(doc, now, &config.retry, heartbeat) {
            let emitted = gate.emits(doc);
            if emitted == doc.revision {
                return Ok(vec![newest()]);
            }
            let then = doc
                .at_revision(emitted, &config.ladder)
                .expect("a revision of the history");
            return Ok(vec![version_of(&then)]);
        }
        let at_gate = gate.is_stage_gate() && gate.code() == Some(doc.state);
        let wait = match (
            doc.status,
            doc.retry_at,
            doc.dead_since(&config.retry, heartbeat),
        ) {
            (Status::Failed, Some(t), _) if at_gate => {
                format!(" (retry due at {})", rfc3339::format(&t))
            }
            (Status::InProgress, _, Some(t)) if at_gate => {
                let beat = doc
                    .own_heartbeat(heartbeat)
                    .map(|h| format!("last heartbeat at {}; ", rfc3339::format(&h.at)))
                    .unwrap_or_default();
                format!(" ({beat}a dead attempt after {})", rfc3339::format(&t))
            }
            (Status::AwaitingApproval, _, _) if at_gate => {
                format!(" (waiting for a human: approve {})", doc.state)
            }
            _ => String::new(),
        };
        notes.note(format!(
            "gate {{{gate}}} is shut: {}{wait}",
            doc.whereabouts()
        ));
        return Ok(vec![]);
    }
    let Some(given_rev) = given_rev else {
        return Ok(vec![newest()]);
    };
    if given_rev > doc.revision {
        return Ok(vec![newest()]);
    }
    // One revision is one Concourse version: the canonical JSON, whatever
    // shape the given one had (`fly check-resource --from revision:3`).
    let mut out = Vec::new();
    for e in doc.history.iter().filter(|e| e.revision >= given_rev) {
        if e.revision == doc.revision {
            out.push(newest());
        } else {
            let then = doc
                .at_revision(e.revision, &config.ladder)
                .expect("a revision of the history");
            out.push(version_of(&then));
        }
    }
    Ok(out)
}

/// Metadata shown in the Concourse UI.
pub(crate) fn metadata(doc: &Document) -> Vec<MetadataField> {
    let mut m = vec![
        ("state", doc.state.to_string()),
        ("state_name", doc.state_name.clone()),
        ("status", doc.status.to_string()),
        ("attempts", doc.attempts.to_string()),
    ];
    if let Some(t) = doc.retry_at {
        m.push(("retry_at", rfc3339::format(&t)));
    }
    if let Some(e) = &doc.last_error {
        m.push(("last_error", format!("{} ({})", e.message, e.kind.as_str())));
    }
    m.push(("updated_at", rfc3339::format(&doc.updated_at)));
    if let Some(e) = doc.history.last() {
        m.push(("updated_by", e.by.describe()));
    }
    m.into_iter()
        .map(|(name, value)| MetadataField {
            name: name.to_string(),
            value,
        })
        .collect()
}

/// Single-quotes a value for a POSIX shell.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The files `in` writes, by name.
pub(crate) fn files_for(doc: &Document, step: NextStep) -> Vec<(&'static str, Vec<u8>)> {
    let vars = Value::Object(doc.vars.clone());
    let mut vars_json = serde_json::to_vec_pretty(&vars).expect("vars serialize");
    vars_json.push(b'\n');
    let retry_at = doc
        .retry_at
        .map(|t| rfc3339::format(&t))
        .unwrap_or_default();
    let last_error = doc
        .last_error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    let env = [
        ("BUILD_STATE", doc.state.to_string()),
        ("BUILD_STATE_NAME", doc.state_name.clone()),
        ("BUILD_STATE_STATUS", doc.status.to_string()),
        ("BUILD_STATE_ATTEMPTS", doc.attempts.to_string()),
        ("BUILD_STATE_REVISION", doc.revision.to_string()),
        ("BUILD_STATE_ACTION", step.as_str().to_string()),
        ("BUILD_STATE_BUILD_ID", doc.build_id.clone()),
        ("BUILD_STATE_RUN", doc.run.to_string()),
        ("BUILD_STATE_ATTEMPT", doc.next_attempt().to_string()),
        ("BUILD_STATE_RETRY_AT", retry_at),
        ("BUILD_STATE_LAST_ERROR", last_error),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
    .collect::<String>();
    vec![
        ("state.json", doc.to_bytes()),
        ("state", doc.state.to_string().into_bytes()),
        ("state_name", doc.state_name.clone().into_bytes()),
        ("status", doc.status.to_string().into_bytes()),
        ("attempts", doc.attempts.to_string().into_bytes()),
        ("revision", doc.revision.to_string().into_bytes()),
        ("action", step.as_str().as_bytes().to_vec()),
        ("vars.json", vars_json),
        ("state.env", env.into_bytes()),
        ("leaked.json", leaked_json(doc)),
    ]
}

/// `leaked.json`: the resources a cleanup job deletes (leaked as of the
/// revision: a pure function of it, as everything `in` writes), each with
/// the build's labels (`cloud_provider`, ...), so that a task can act on
/// one entry alone. `[]` when there are none.
fn leaked_json(doc: &Document) -> Vec<u8> {
    let leaked: Vec<Value> = doc
        .resources
        .iter()
        .filter(|r| r.holding == crate::model::Holding::Leaked)
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "id": r.id,
                "stage": r.stage,
                "attempt": r.attempt,
                "run": r.run.unwrap_or(doc.run),
                "created_at": rfc3339::format(&r.created_at),
                "since": rfc3339::format(&r.since),
                "why": r.why,
                "build_id": doc.build_id,
                "labels": doc.labels,
            })
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&leaked).expect("leaked serializes");
    out.push(b'\n');
    out
}

/// `in`: the document as of the requested revision, into `dest`.
pub(crate) async fn get(input: &[u8], dest: &Path, notes: &Notes) -> Result<Response> {
    let (config, version, require) = get_request(input)?;
    let store = open(&config).await?;
    get_store(&config, &store, version, require, dest, notes).await
}

/// An `in` request read and validated: the configuration, the version and
/// the `require` condition.
pub(crate) fn get_request(
    input: &[u8],
) -> Result<(Config, Version, Option<crate::model::Condition>)> {
    let req: InRequest = parse(input)?;
    let config = configure(&req.source)?;
    parse_revision(&req.version)?;
    let require = match req.params.as_ref().and_then(|p| p.require.as_ref()) {
        Some(r) => Some(
            parse_condition("require", r, &config.ladder)
                .map_err(|e| anyhow!("{}: params.{}: {}", config.build_id, e.field, e.message))?,
        ),
        None => None,
    };
    Ok((config, req.version, require))
}

/// `in` on a given store, into `dest`.
pub(crate) async fn get_store<S: Store>(
    config: &Config,
    store: &S,
    version: Version,
    require: Option<crate::model::Condition>,
    dest: &Path,
    notes: &Notes,
) -> Result<Response> {
    let (response, files) = get_files(config, store, version, require, notes).await?;
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for (name, body) in files {
        let path = dest.join(name);
        fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(response)
}

/// `in` on a given store: the reply and the files it writes.
pub(crate) async fn get_files<S: Store>(
    config: &Config,
    store: &S,
    version: Version,
    require: Option<crate::model::Condition>,
    notes: &Notes,
) -> Result<(Response, Vec<(&'static str, Vec<u8>)>)> {
    let revision = parse_revision(&version)?;
    let builds = Builds::new(config, store);
    let current = builds.current().await?;
    let doc = builds
        .at_revision(current.as_ref().map(|c| &c.doc), revision)
        .await?;
    let differs = |given: &Option<String>, stored: String| {
        given.as_deref().is_some_and(|g| g.trim() != stored)
    };
    if differs(&version.state, doc.state.to_string())
        || differs(&version.status, doc.status.to_string())
    {
        bail!(builds.error(
            &config.state_key(),
            ErrorKind::NotThisVersion(Box::new(crate::engine::Mismatch {
                revision,
                state: version.state.clone().unwrap_or_else(|| "-".into()),
                status: version.status.clone().unwrap_or_else(|| "-".into()),
                found: doc.whereabouts(),
            }))
        ));
    }
    if let Some(cond) = require
        && !cond.require(&doc)
    {
        bail!(builds.error(
            &config.state_key(),
            ErrorKind::Unmet {
                revision,
                condition: cond.to_string(),
                found: doc.whereabouts(),
            }
        ));
    }
    let step = NextStep::of(&doc);
    notes.note(format!(
        "{} at revision {revision}; next: {}",
        doc.whereabouts(),
        step.as_str()
    ));
    // Answer with exactly the version asked for (Concourse matches it).
    Ok((
        Response {
            version,
            metadata: metadata(&doc),
        },
        files_for(&doc, step),
    ))
}

/// `out`: one action on the document, as a compare-and-swap.
pub(crate) async fn put(
    input: &[u8],
    sources: &Path,
    env: &BuildEnv,
    notes: &Notes,
) -> Result<Response> {
    let (config, change, handoff) =
        put_request(input, &SourcesDir(sources), env, crate::now(), notes)?;
    let store = open(&config).await?;
    let clock = StoreClock(&store);
    Ok(put_landed(&config, &store, &clock, change, &handoff, notes)
        .await?
        .0)
}

/// Whether a put's write landed: what a handoff waits for (never after a
/// refusal that wrote nothing, a replay or a heartbeat), even when the put
/// fails after it (a dead attempt recorded as blocked: the alert job must
/// hear of it at once).
pub(crate) fn landed(result: &Result<(Response, bool)>) -> bool {
    match result {
        Ok((_, landed)) => *landed,
        Err(e) => e
            .downcast_ref::<crate::engine::Error>()
            .is_some_and(crate::engine::Error::landed),
    }
}

/// An `out` request read and validated, its files read from `files`: the
/// configuration, the change to record and what to hand off once it
/// landed (`check:`). Nothing is written.
pub(crate) fn put_request(
    input: &[u8],
    files: &dyn crate::inputs::Files,
    env: &BuildEnv,
    now: crate::model::Timestamp,
    notes: &Notes,
) -> Result<(Config, Change, crate::handoff::Handoff)> {
    let req: OutRequest = parse(input)?;
    let config = configure(&req.source)?;
    for warning in config.retry.capped() {
        notes.note(warning);
    }
    if let Some(gate) = &config.gate {
        bail!(
            "{}: source.gate: a gated resource (gate {{{gate}}}) only triggers jobs; put to the ungated resource of the same build instead (a put's version would trigger the gated job with the gate shut)",
            config.build_id
        );
    }
    let params = req.params.unwrap_or_default();
    let invalid = |e: RequestError| anyhow!("{}: {e}", config.build_id);
    let request = Request::from_params(&params).map_err(invalid)?;
    let mut change = translate(
        &request,
        &Context {
            front: Front::Put,
            config: &config,
            env,
            actor: env.actor(),
            now,
            files,
            notes,
        },
    )
    .map_err(invalid)?;
    if let Change::Apply(update) = &mut change {
        // Recorded for the CLI inside the image build (one policy per build).
        update.policy = Some(serde_json::to_value(&config.policy)?);
    }
    let handoff = crate::handoff::Handoff::new(&request.check, env, config.webhook_token.as_ref())
        .map_err(|m| anyhow!("{}: params.check: {m}", config.build_id))?;
    Ok((config, change, handoff))
}

/// `out` on a given store, at the clock's time, once its params are read
/// (the tests'; the program hands off too: [`put_landed`]).
#[cfg(test)]
pub(crate) async fn put_store<S: Store>(
    config: &Config,
    store: &S,
    clock: &dyn Clock,
    change: Change,
    notes: &Notes,
) -> Result<Response> {
    let none = crate::handoff::Handoff::none();
    Ok(put_landed(config, store, clock, change, &none, notes)
        .await?
        .0)
}

/// `out` on a given store, and whether to hand off now: a write landed, or the put
/// only hands off (never after a refusal, a replay or a heartbeat).
pub(crate) async fn put_landed<S: Store>(
    config: &Config,
    store: &S,
    clock: &dyn Clock,
    change: Change,
    handoff: &crate::handoff::Handoff,
    notes: &Notes,
) -> Result<(Response, bool)> {
    let key = config.state_key();
    let hand_off = matches!(change, Change::HandOff(_));
    let applied = crate::app::act(config, store, clock, change, handoff, notes).await?;
    let doc = &applied.doc;
    if applied.written {
        let e = doc.last_event();
        let what = e
            .target
            .map_or(e.action.to_string(), |t| format!("{} {t}", e.action));
        // What the resource decided in the caller's stead (a deferral, a
        // dead attempt recorded for a build that never started the stage).
        let decided = match (&e.reason, e.action) {
            (Some(r), crate::model::ActionKind::Defer | crate::model::ActionKind::Fail) => {
                format!("; {r}")
            }
            _ => String::new(),
        };
        notes.note(format!(
            "{what}: {} (revision {}) at {}{decided}",
            doc.whereabouts(),
            doc.revision,
            config.location(&key)
        ));
    } else if let Some(beat) = &applied.beat {
        notes.note(format!(
            "heartbeat {}: attempt {} of {} alive at {} ({})",
            beat.state,
            beat.attempt,
            doc.whereabouts(),
            rfc3339::format(&beat.at),
            config.location(&config.heartbeat_key())
        ));
    } else if let Some(why) = &applied.ignored {
        notes.note(format!("no change: {why}"));
    } else if hand_off {
        notes.note(format!(
            "nothing to record: {} (revision {}); only handing off",
            doc.whereabouts(),
            doc.revision
        ));
    } else {
        notes.note(format!(
            "no change: {} (revision {}); the put repeats what is recorded",
            doc.whereabouts(),
            doc.revision
        ));
    }
    Ok((
        Response {
            version: version_of(doc),
            metadata: metadata(doc),
        },
        applied.written || hand_off,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ManualClock;
    use crate::model::{Action, Actor, ErrorInfo, FailureKind, Update};
    use crate::store::memory::{Fault, FaultyStore, MemoryStore, Op};

    /// `put_store` with its notes dropped.
    async fn quiet_put<S: Store>(
        c: &Config,
        store: &S,
        clock: &ManualClock,
        change: Change,
    ) -> Result<Response> {
        put_store(c, store, clock, change, &Notes::new()).await
    }

    fn config(extra: &str) -> Config {
        let source: Source = serde_json::from_str(&format!(
            r#"{{"local_dir": "/nowhere", "build_id": "rhel8-web", "retry": {{"backoff": "5m"}}{extra}}}"#
        ))
        .unwrap();
        Config::from_source(&source).unwrap()
    }

    fn clock() -> ManualClock {
        ManualClock::at("2026-12-01T10:00:00Z".parse().unwrap())
    }

    fn action(a: Action) -> Change {
        Change::Apply(Update::new(a, Actor::default(), crate::now()))
    }

    fn fail(n: u32) -> Action {
        Action::Fail {
            state: n,
            error: ErrorInfo::new("boom".into(), FailureKind::Transient),
        }
    }

    async fn at_5(c: &Config, store: &impl Store, clock: &ManualClock) {
        quiet_put(c, store, clock, action(Action::Init { restart: false }))
            .await
            .unwrap();
        quiet_put(c, store, clock, action(Action::Complete(0)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_gate_opens_when_the_clock_reaches_retry_at() {
        let c = config(r#", "gate": {"state": 5}"#);
        let (store, clock) = (MemoryStore::new(), clock());
        at_5(&c, &store, &clock).await;
        let due = check_store(&c, &store, &clock, None, &crate::Notes::new())
            .await
            .unwrap();
        assert_eq!(due[0].revision, "2");
        quiet_put(&c, &store, &clock, action(Action::Start(5)))
            .await
            .unwrap();
        assert!(
            check_store(&c, &store, &clock, None, &crate::Notes::new())
                .await
                .unwrap()
                .is_empty(),
            "in progress"
        );
        quiet_put(&c, &store, &clock, action(fail(5)))
            .await
            .unwrap();
        clock.advance(chrono::Duration::minutes(5) - chrono::Duration::milliseconds(1));
        assert!(
            check_store(&c, &store, &clock, None, &crate::Notes::new())
                .await
                .unwrap()
                .is_empty(),
            "not yet"
        );
        clock.advance(chrono::Duration::milliseconds(1));
        let due = check_store(&c, &store, &clock, None, &crate::Notes::new())
            .await
            .unwrap();
        assert_eq!(
            (due[0].revision.as_str(), due[0].status.as_deref()),
            ("4", Some("failed"))
        );
    }

    /// `hold: 2h` on a failure keeps its attempt's instance out of the
    /// `leaked` gate until then, on the store's (here: injected) clock; the
    /// timer's hand-off after that records it leaked and the gate emits
    /// that revision, whose `leaked.json` lists it. A stage's gate is not
    /// opened by the records.
    #[tokio::test]
    async fn a_hold_keeps_a_failure_out_of_the_leaked_gate_until_its_time() {
        let c = config("");
        let leaked = config(r#", "gate": {"leaked": true}"#);
        let stage = config(r#", "gate": {"state": 5}"#);
        let (store, clock) = (MemoryStore::new(), clock());
        let check = |c: &Config| {
            let (c, store, clock) = (c.clone(), &store, &clock);
            async move {
                check_store(&c, store, clock, None, &Notes::new())
                    .await
                    .unwrap()
            }
        };
        at_5(&c, &store, &clock).await;
        quiet_put(&c, &store, &clock, action(Action::Start(5)))
            .await
            .unwrap();
        let mut record = Update::new(
            Action::Created {
                state: Some(5),
                run: Some(1),
                attempt: Some(1),
            },
            Actor::default(),
            crate::now(),
        );
        record
            .resources
            .created
            .insert("packer_builder".into(), "i-1".into());
        quiet_put(&c, &store, &clock, Change::Apply(record))
            .await
            .unwrap();
        assert!(check(&stage).await.is_empty(), "a record opens no stage");
        let mut failure = Update::new(fail(5), Actor::default(), crate::now());
        failure.resources.hold = Some(std::time::Duration::from_secs(7200));
        quiet_put(&c, &store, &clock, Change::Apply(failure))
            .await
            .unwrap();
        clock.advance(chrono::Duration::minutes(5));
        quiet_put(&c, &store, &clock, action(Action::Start(5)))
            .await
            .unwrap();
        clock.advance(chrono::Duration::minutes(100));
        assert!(check(&leaked).await.is_empty(), "held");
        let hand_off = || Change::HandOff(Actor::default());
        quiet_put(&c, &store, &clock, hand_off()).await.unwrap();
        assert!(check(&leaked).await.is_empty(), "still held");
        clock.advance(chrono::Duration::minutes(15));
        let out = quiet_put(&c, &store, &clock, hand_off()).await.unwrap();
        let emitted = check(&leaked).await;
        assert_eq!(emitted, vec![out.version.clone()], "leaked by the clock");
        let doc = Builds::new(&c, &store)
            .current()
            .await
            .unwrap()
            .unwrap()
            .doc;
        assert_eq!(doc.last_event().action, crate::model::ActionKind::Leak);
        let files = files_for(&doc, NextStep::of(&doc));
        let (_, body) = files.iter().find(|(n, _)| *n == "leaked.json").unwrap();
        let list: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(list[0]["id"], "i-1");
        assert!(list[0]["why"].as_str().unwrap().contains("its hold ended"));
    }

    #[tokio::test]
    async fn an_unchanged_check_is_one_conditional_read() {
        let c = config("");
        let (store, clock) = (FaultyStore::new(MemoryStore::new()), clock());
        at_5(&c, &store, &clock).await;
        let newest = check_store(&c, &store, &clock, None, &crate::Notes::new())
            .await
            .unwrap();
        let gets = store.calls(Op::Get);
        let again = check_store(
            &c,
            &store,
            &clock,
            newest.first().cloned(),
            &crate::Notes::new(),
        )
        .await
        .unwrap();
        assert_eq!(again, newest);
        assert_eq!(store.calls(Op::Get), gets + 1);
        // The version put answered is the one check emits (one identity).
        let out = quiet_put(&c, &store, &clock, action(Action::Start(5)))
            .await
            .unwrap();
        assert_eq!(
            check_store(&c, &store, &clock, None, &crate::Notes::new())
                .await
                .unwrap(),
            [out.version]
        );
    }

    #[tokio::test]
    async fn in_refuses_a_version_its_revision_does_not_hold() {
        let c = config("");
        let (store, clock) = (MemoryStore::new(), clock());
        at_5(&c, &store, &clock).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("got");
        let wrong = Version {
            revision: "2".into(),
            state: Some("95".into()),
            status: Some("completed".into()),
            etag: None,
        };
        let err = get_store(&c, &store, wrong, None, &dest, &crate::Notes::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("does not match revision 2"),
            "{err}"
        );
        assert!(!dest.exists(), "nothing written");
        let right = Version {
            revision: "2".into(),
            state: Some("5".into()),
            status: Some("pending".into()),
            etag: None,
        };
        get_store(&c, &store, right, None, &dest, &crate::Notes::new())
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("action")).unwrap(), "run");
    }

    #[tokio::test]
    async fn a_put_whose_answer_is_lost_lands_once() {
        let c = config("");
        let (store, clock) = (FaultyStore::new(MemoryStore::new()), clock());
        at_5(&c, &store, &clock).await;
        store.on(Op::Put, 3, Fault::ApplyThenLose);
        let out = quiet_put(&c, &store, &clock, action(Action::Start(5)))
            .await
            .unwrap();
        assert_eq!(out.version.revision, "3");
        assert_eq!(store.calls(Op::Put), 3);
    }

    /// Whatever a put is given (vars of any depth and size, errors and
    /// notes of any text), either the stored document still reads back with
    /// the same code every reader uses, or nothing was written.
    mod any_input {
        use super::*;
        use crate::inputs::FilesInMemory;
        use crate::request::{Context, Front, Request, translate};
        use proptest::prelude::*;

        fn nested(depth: usize, leaf: String) -> String {
            format!(
                "{}{}{}",
                "[".repeat(depth),
                serde_json::to_string(&leaf).unwrap(),
                "]".repeat(depth)
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn a_put_is_readable_or_not_written(
                depth in 0usize..140,
                width in 0usize..3000,
                text in "\\PC{0,40}",
                fail in any::<bool>(),
            ) {
                let rt = crate::runtime().unwrap();
                rt.block_on(async {
                    let c = config("");
                    let (store, clock) = (MemoryStore::new(), clock());
                    at_5(&c, &store, &clock).await;
                    let before = store.body(&c.state_key());
                    let mut files = FilesInMemory::default();
                    let vars = format!(
                        "{{\"deep\": {}, \"wide\": {:?}}}",
                        nested(depth, text.clone()),
                        "x".repeat(width)
                    );
                    files.insert("vars.json", vars.as_bytes());
                    let mut req = Request::new(if fail {
                        crate::protocol::PutAction::Fail(5)
                    } else {
                        crate::protocol::PutAction::Start(5)
                    });
                    req.vars_file = Some("vars.json".into());
                    req.note = Some(text.clone());
                    if fail {
                        req.error = Some(text.clone() + "x");
                    }
                    let env = BuildEnv::default();
                    let notes = Notes::new();
                    let change = translate(&req, &Context {
                        front: Front::Put, config: &c, env: &env, actor: Actor::default(),
                        now: clock.now(), files: &files, notes: &notes,
                    });
                    let written = match change {
                        Err(_) => false,
                        Ok(change) => put_store(&c, &store, &clock, change, &notes).await.is_ok(),
                    };
                    let after = store.body(&c.state_key()).unwrap();
                    let reads = Builds::new(&c, &store).decode(&c.state_key(), &after).is_ok();
                    prop_assert!(reads, "the stored document no longer reads (depth {depth})");
                    if !written {
                        prop_assert_eq!(Some(after), before, "a refused put wrote something");
                    }
                    Ok(())
                })?;
            }
        }
    }

    /// One revision is one Concourse version: a partial version given to
    /// check (`fly check-resource --from revision:3`, a pinned version) is
    /// answered with the canonical one, never echoed.
    #[tokio::test]
    async fn a_partial_version_is_answered_canonically() {
        let c = config("");
        let (store, clock) = (MemoryStore::new(), clock());
        at_5(&c, &store, &clock).await;
        let partial = Version {
            revision: "1".into(),
            state: None,
            status: None,
            etag: None,
        };
        let out = check_store(&c, &store, &clock, Some(partial), &Notes::new())
            .await
            .unwrap();
        let current = Builds::new(&c, &store)
            .current()
            .await
            .unwrap()
            .unwrap()
            .doc;
        let first = current.at_revision(1, &c.ladder).unwrap();
        assert_eq!(out, vec![version_of(&first), version_of(&current)]);
        // A partial version carrying an ETag is no "unchanged" either.
        let mut partial = version_of(&current);
        partial.state = None;
        let out = check_store(&c, &store, &clock, Some(partial), &Notes::new())
            .await
            .unwrap();
        assert_eq!(out, vec![version_of(&current)]);
    }

    /// A put to a gated resource is refused before anything is read or
    /// written: its version would trigger the gated job with the gate shut.
    #[tokio::test]
    async fn a_put_to_a_gated_resource_is_refused() {
        let input = br#"{"source": {"local_dir": "/nowhere", "build_id": "rhel8-web", "gate": {"state": 5}}, "params": {"start": 5}}"#;
        let err = put(
            input,
            Path::new("/nowhere"),
            &BuildEnv::default(),
            &Notes::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rhel8-web: source.gate: a gated resource (gate {state: 5}) only triggers jobs; put to the ungated resource of the same build instead (a put's version would trigger the gated job with the gate shut)"
        );
    }

    fn beat(n: u32) -> Change {
        Change::Heartbeat(crate::model::Claim {
            state: n,
            run: Some(1),
            attempt: Some(1),
            by: Actor::default(),
            at: crate::now(),
        })
    }

    /// What heartbeats cost: a heartbeat is one read of the document and
    /// one write beside it (the document untouched); a gated check of a
    /// stage with a heartbeat policy reads the heartbeat only once the
    /// start alone no longer proves the attempt alive (one more small
    /// GET), and one without a policy costs what it always did.
    #[tokio::test]
    async fn heartbeats_cost_what_the_spec_says() {
        let c = config(r#", "gate": {"state": 5}"#);
        let c = {
            let source: Source = serde_json::from_str(
                r#"{"local_dir": "/nowhere", "build_id": "rhel8-web", "retry": {"backoff": "5m", "states": {"5": {"heartbeat_timeout": "2m"}}}}"#,
            )
            .unwrap();
            let mut hb = Config::from_source(&source).unwrap();
            let mut settings = (*hb.settings).clone();
            settings.gate = c.gate;
            hb.settings = std::sync::Arc::new(settings);
            hb
        };
        let ungated = {
            let mut u = c.clone();
            let mut settings = (*u.settings).clone();
            settings.gate = None;
            u.settings = std::sync::Arc::new(settings);
            u
        };
        let (store, clock) = (FaultyStore::new(MemoryStore::new()), clock());
        at_5(&ungated, &store, &clock).await;
        let started = quiet_put(&ungated, &store, &clock, action(Action::Start(5)))
            .await
            .unwrap();
        let calls = |op| store.calls(op);
        let g = calls(Op::Get);
        let quiet = Notes::new();
        let check = || check_store(&c, &store, &clock, None, &quiet);
        assert!(check().await.unwrap().is_empty(), "alive by its start");
        assert_eq!(calls(Op::Get), g + 1, "the document only");
        clock.advance(chrono::Duration::seconds(60));
        let (g, p0) = (calls(Op::Get), calls(Op::Put));
        let out = quiet_put(&ungated, &store, &clock, beat(5)).await.unwrap();
        assert_eq!(out.version, started.version, "no new version");
        assert_eq!(
            (calls(Op::Get), calls(Op::Put)),
            (g + 1, p0 + 1),
            "two requests"
        );
        clock.advance(chrono::Duration::seconds(90));
        let g = calls(Op::Get);
        assert!(check().await.unwrap().is_empty(), "alive by its heartbeat");
        assert_eq!(calls(Op::Get), g + 2, "the document and the heartbeat");
        clock.advance(chrono::Duration::seconds(31));
        assert_eq!(
            check().await.unwrap(),
            vec![started.version.clone()],
            "dead"
        );
        // Without a heartbeat policy: one read, whatever the clock.
        let plain = config(r#", "gate": {"state": 5}"#);
        let g = calls(Op::Get);
        check_store(&plain, &store, &clock, None, &Notes::new())
            .await
            .unwrap();
        assert_eq!(calls(Op::Get), g + 1);
        // The start after it reads the heartbeat once and records the dead
        // attempt with it.
        let g = calls(Op::Get);
        quiet_put(&ungated, &store, &clock, action(Action::Start(5)))
            .await
            .unwrap();
        assert_eq!(calls(Op::Get), g + 2, "the heartbeat, then the document");
        let doc = Builds::new(&ungated, &store)
            .current()
            .await
            .unwrap()
            .unwrap()
            .doc;
        let dead = &doc.history[doc.history.len() - 2];
        assert!(
            dead.error
                .as_ref()
                .unwrap()
                .message
                .contains("lost its heartbeat: its last heartbeat at 2026-12-01T10:01:00.000Z"),
            "{dead:?}"
        );
        // A zombie's heartbeat (attempt 1; attempt 2 runs now) writes nothing.
        let p = calls(Op::Put);
        let err = quiet_put(&ungated, &store, &clock, beat(5))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("heartbeat 5 refused: it is for attempt 1, and attempt 2 is in progress"),
            "{err}"
        );
        assert_eq!(calls(Op::Put), p, "nothing written");
    }
}
