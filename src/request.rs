//! One translator from input to the model. A put's params and the CLI's
//! arguments both become a [`Request`], and [`translate`] alone turns it into
//! the [`Change`] the application layer records: which action, on which
//! code, with which error, kind, vars and note. Every rule and message about
//! input lives here once; a [`Front`] only decides how a field is spelled in
//! a message (`params.error_file` for a put, `--error-file` for the CLI), and
//! files are read through the [`Files`] seam (the sources directory, the
//! working directory, or memory in tests).

use crate::Notes;
use crate::app::Change;
use crate::config::Config;
use crate::inputs::{Files, InputError};
use crate::model::resources::{bad_id, bad_name};
use crate::model::{
    Action, Actor, Document, FailureKind, ResourceChange, Status, Timestamp, Update,
};
use crate::protocol::{BuildEnv, OutParams, PutAction};
use serde_json::{Map, Value};

/// Where a request came from: how its fields are spelled in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Front {
    /// A put's params: `params.error_file`.
    Put,
    /// The CLI's arguments: `--error-file`.
    Cli,
}

impl Front {
    /// The field as a name: `params.error` / `--error`.
    pub(crate) fn name(self, field: &str) -> String {
        match self {
            Front::Put => format!("params.{field}"),
            Front::Cli => format!("--{}", field.replace('_', "-")),
        }
    }

    /// The field before its value: `params.status: "done"` / `--status "done"`.
    fn value(self, field: &str) -> String {
        match self {
            Front::Put => format!("params.{field}:"),
            Front::Cli => self.name(field),
        }
    }

    /// The field before what is wrong with its file: `params.vars_file:` /
    /// `--vars-file:`.
    fn file(self, field: &str) -> String {
        format!("{}:", self.name(field))
    }

    /// The field named in a sentence: `` `error` `` / `--error`.
    fn option(self, field: &str) -> String {
        match self {
            Front::Put => format!("`{field}`"),
            Front::Cli => self.name(field),
        }
    }

    /// The action as the subject of a sentence: `params.fail` / `fail`.
    fn action(self, name: &str) -> String {
        match self {
            Front::Put => format!("params.{name}"),
            Front::Cli => name.to_string(),
        }
    }
}

/// What is wrong with a request: the field, and the whole message (which
/// names the field as its front spells it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct RequestError {
    /// The field it is about (`error_file`, `status`, ...).
    pub(crate) field: &'static str,
    /// What is wrong, in words.
    pub(crate) message: String,
}

fn refuse(field: &'static str, message: String) -> RequestError {
    RequestError { field, message }
}

/// One change asked for: an action and what goes with it, as given (files
/// not read yet, words not parsed yet).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Request {
    /// The action and its code (or reason, or file).
    pub(crate) action: PutAction,
    /// What went wrong (`fail`, `finish`).
    pub(crate) error: Option<String>,
    /// A file holding what went wrong (`fail`, `finish`).
    pub(crate) error_file: Option<String>,
    /// `transient` or `persistent` (`fail`, `finish`).
    pub(crate) kind: Option<String>,
    /// The status a `set` puts the build in.
    pub(crate) status: Option<String>,
    /// Why a `set` overrides the ladder.
    pub(crate) reason: Option<String>,
    /// A file holding a JSON object merged into the build's vars.
    pub(crate) vars_file: Option<String>,
    /// Free text recorded in the history entry.
    pub note: Option<String>,
    /// The resources Concourse checks at once after the write landed.
    pub(crate) check: Vec<String>,
    /// With `heartbeat`: the run the worker works for (the CLI's `--run`;
    /// a put's heartbeat is its build's, judged by the build).
    pub(crate) run: Option<u64>,
    /// With `heartbeat` and `created`: the attempt the worker works for.
    pub(crate) attempt: Option<u32>,
    /// Resources created: name to id.
    pub(crate) created: std::collections::BTreeMap<String, String>,
    /// A file holding a JSON object of resources created, name to id.
    pub(crate) created_file: Option<String>,
    /// Resources removed: ids, or names of live ones.
    pub(crate) release: Vec<String>,
    /// A file holding a JSON array of resources removed.
    pub(crate) release_file: Option<String>,
    /// With `start`: names of resources the retry keeps using.
    pub(crate) adopt: Vec<String>,
    /// With a failure, or alone: how long to keep resources for a human.
    pub(crate) hold: Option<String>,
}

impl Request {
    /// `action` with nothing else.
    pub(crate) fn new(action: PutAction) -> Request {
        Request {
            action,
            error: None,
            error_file: None,
            kind: None,
            status: None,
            reason: None,
            vars_file: None,
            note: None,
            check: Vec::new(),
            run: None,
            attempt: None,
            created: Default::default(),
            created_file: None,
            release: Vec::new(),
            release_file: None,
            adopt: Vec::new(),
            hold: None,
        }
    }

    /// A put's params: exactly one action, plus what goes with it.
    pub(crate) fn from_params(p: &OutParams) -> Result<Request, RequestError> {
        let action = PutAction::of(p).map_err(|m| refuse("params", m))?;
        Ok(Request {
            action,
            error: p.error.clone(),
            error_file: p.error_file.clone(),
            kind: p.kind.clone(),
            status: p.status.clone(),
            reason: p.reason.clone(),
            vars_file: p.vars_file.clone(),
            note: p.note.clone(),
            check: p.check.clone().unwrap_or_default(),
            run: None,
            attempt: None,
            created: p.created.clone().unwrap_or_default(),
            created_file: p.created_file.clone(),
            release: p.release.clone().unwrap_or_default(),
            release_file: p.release_file.clone(),
            adopt: p.adopt.clone().unwrap_or_default(),
            hold: p.hold.clone(),
        })
    }
}

/// Everything a request is translated against.
pub(crate) struct Context<'a> {
    /// Spells the fields in messages.
    pub(crate) front: Front,
    /// The build's configuration: ladder, classifier.
    pub(crate) config: &'a Config,
    /// The Concourse build (for `finish`: its status and name).
    pub(crate) env: &'a BuildEnv,
    /// Who makes the change.
    pub(crate) actor: Actor,
    /// When (the application layer sets it again at each attempt).
    pub(crate) now: Timestamp,
    /// Where named files are read.
    pub(crate) files: &'a dyn Files,
    /// Where warnings go.
    pub(crate) notes: &'a Notes,
}

/// Turns `req` into the change to record, or says what is wrong with it.
/// Nothing is written; warnings (a fallback taken) go to `cx.notes`.
pub(crate) fn translate(req: &Request, cx: &Context<'_>) -> Result<Change, RequestError> {
    let front = cx.front;
    let name = req.action.name();
    let fails = matches!(req.action, PutAction::Fail(_) | PutAction::Finish(_));
    let sets = matches!(req.action, PutAction::Set(_));
    let reasons = matches!(req.action, PutAction::Set(_) | PutAction::Approve(_));
    let staged = matches!(
        req.action,
        PutAction::Start(_)
            | PutAction::Complete(_)
            | PutAction::Fail(_)
            | PutAction::Finish(_)
            | PutAction::Created(_)
    );
    let creates = !req.created.is_empty() || req.created_file.is_some();
    let releases = !matches!(
        req.action,
        PutAction::File(_) | PutAction::Heartbeat(_) | PutAction::HandOff
    );
    let holds = fails || matches!(req.action, PutAction::Hold);
    for (field, present, belongs, with) in [
        (
            "created",
            creates,
            staged,
            "start, complete, fail or finish (or alone)",
        ),
        (
            "release",
            !req.release.is_empty() || req.release_file.is_some(),
            releases,
            "any action that writes the document",
        ),
        (
            "adopt",
            !req.adopt.is_empty(),
            matches!(req.action, PutAction::Start(_)),
            "start",
        ),
        (
            "hold",
            req.hold.is_some(),
            holds,
            "fail or finish (or alone)",
        ),
        ("error", req.error.is_some(), fails, "fail or finish"),
        (
            "error_file",
            req.error_file.is_some(),
            fails,
            "fail or finish",
        ),
        ("kind", req.kind.is_some(), fails, "fail or finish"),
        ("status", req.status.is_some(), sets, "set"),
        ("reason", req.reason.is_some(), reasons, "set or approve"),
    ] {
        if present && !belongs {
            return Err(refuse(
                field,
                format!("{} goes with {with}, not with {name}", front.name(field)),
            ));
        }
    }
    let action = match &req.action {
        PutAction::File(path) => {
            if req.vars_file.is_some() || req.note.is_some() {
                return Err(refuse(
                    "file",
                    format!(
                        "{} and {} do not go with file (the document carries its own)",
                        front.name("vars_file"),
                        front.name("note")
                    ),
                ));
            }
            let body = read(cx, "file", path).map_err(|(_, e)| e)?;
            let doc: Document = serde_json::from_slice(&body).map_err(|e| {
                refuse(
                    "file",
                    format!("{} {path} is not a state document: {e}", front.file("file")),
                )
            })?;
            return Ok(Change::File(doc));
        }
        PutAction::Heartbeat(n) => {
            if !req.check.is_empty() {
                return Err(refuse(
                    "check",
                    format!(
                        "{} does not go with heartbeat (a heartbeat changes nothing a gate sees)",
                        front.name("check")
                    ),
                ));
            }
            if req.vars_file.is_some() || req.note.is_some() {
                return Err(refuse(
                    "heartbeat",
                    format!(
                        "{} and {} do not go with heartbeat (a heartbeat changes nothing in the document)",
                        front.name("vars_file"),
                        front.name("note")
                    ),
                ));
            }
            let state = cx
                .config
                .ladder
                .check(*n)
                .map_err(|e| refuse("state", format!("{}: {e}", front.action("heartbeat"))))?;
            return Ok(Change::Heartbeat(crate::model::Claim {
                state,
                run: req.run,
                attempt: req.attempt,
                by: cx.actor.clone(),
                at: cx.now,
            }));
        }
        PutAction::HandOff => return Ok(Change::HandOff(cx.actor.clone())),
        other => action(req, other, cx)?,
    };
    let resources = resource_change(req, cx)?;
    if let (Action::Complete(n), Front::Put, Some(path)) = (&action, front, &req.vars_file)
        && let Err((true, e)) = read(cx, "vars_file", path)
    {
        let mut update = vars_missing(*n, path, e, cx);
        update.resources = resources;
        return Ok(Change::Apply(update));
    }
    let failing = matches!(action, Action::Fail { .. });
    let mut update = Update::new(action, cx.actor.clone(), cx.now);
    update.vars = vars(req, cx, failing)?;
    update.note = req.note.clone().filter(|n| !n.trim().is_empty());
    update.resources = resources;
    Ok(Change::Apply(update))
}

/// What a request asks of the build's resources: `created` (and the
/// object in `created_file`, merged), `release`, `adopt`, `hold`; each
/// name and id checked.
fn resource_change(req: &Request, cx: &Context<'_>) -> Result<ResourceChange, RequestError> {
    let front = cx.front;
    let mut created = req.created.clone();
    if let Some(path) = &req.created_file
        && let Some(map) = file_json(req, cx, "created_file", path)?
    {
        let bad = |m: String| {
            refuse(
                "created_file",
                format!("{} {path} {m}", front.file("created_file")),
            )
        };
        let Value::Object(map) = map else {
            return Err(bad(
                "must hold a JSON object of names and ids ({\"green_instance\": \"i-0abc\"})"
                    .into(),
            ));
        };
        for (name, id) in map {
            let Value::String(id) = id else {
                return Err(bad(format!("gives {name} an id that is not a string")));
            };
            created.insert(name, id);
        }
    }
    let mut release = req.release.clone();
    if let Some(path) = &req.release_file
        && let Some(list) = file_json(req, cx, "release_file", path)?
    {
        let bad = |m: String| {
            refuse(
                "release_file",
                format!("{} {path} {m}", front.file("release_file")),
            )
        };
        let Value::Array(list) = list else {
            return Err(bad("must hold a JSON array of ids ([\"i-0abc\"])".into()));
        };
        for id in list {
            let Value::String(id) = id else {
                return Err(bad(format!("holds {id}, not an id")));
            };
            release.push(id);
        }
    }
    let field = |f: &'static str, m: String| refuse(f, format!("{} {m}", front.value(f)));
    for (name, id) in &created {
        if let Some(m) = bad_name(name).or_else(|| bad_id(id)) {
            return Err(field("created", m));
        }
    }
    for token in &release {
        if bad_id(token).is_some() {
            return Err(field(
                "release",
                format!("{token:?} is not a resource's id or name"),
            ));
        }
    }
    for name in &req.adopt {
        if let Some(m) = bad_name(name) {
            return Err(field("adopt", m));
        }
    }
    let hold = req
        .hold
        .as_deref()
        .map(|h| crate::model::time::parse(h).map_err(|e| field("hold", format!("{h:?}: {e}"))))
        .transpose()?;
    if created.len() + release.len() > 100 {
        return Err(field(
            "created",
            "and release name more than 100 resources at once; record them in smaller batches"
                .into(),
        ));
    }
    Ok(ResourceChange {
        created,
        release,
        adopt: req.adopt.clone(),
        hold,
    })
}

/// The JSON in a resources file (`created_file`, `release_file`), or
/// `None` when the file is not there: a task that died before it wrote
/// one created or removed nothing it could say (a note says so). Any
/// other problem with it is an error.
fn file_json(
    _req: &Request,
    cx: &Context<'_>,
    field: &'static str,
    path: &str,
) -> Result<Option<Value>, RequestError> {
    let body = match read(cx, field, path) {
        Ok(body) => body,
        Err((true, e)) => {
            cx.notes.note(format!("{e}: nothing recorded from it"));
            return Ok(None);
        }
        Err((false, e)) => return Err(e),
    };
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        refuse(
            field,
            format!("{} {path} is not valid JSON: {e}", cx.front.file(field)),
        )
    })
}

/// A stage whose build succeeded without writing its `vars_file`: what the
/// later stages need is missing, so the stage is recorded blocked with that
/// cause (not completed, and not failed as if its task had failed), and the
/// put fails after the write. The build's `on_failure` hook, which runs
/// next, then repeats this failure and changes nothing.
fn vars_missing(n: u32, path: &str, e: RequestError, cx: &Context<'_>) -> Update {
    let message = format!(
        "{} succeeded but did not write {path}, which {} names ({}); the stages after {n} need what it holds: make the task write it, then retry {n}",
        cx.env.actor().describe(),
        cx.front.name("vars_file"),
        e.message
    );
    let mut update = Update::new(
        Action::Fail {
            state: n,
            error: crate::model::ErrorInfo::new(message.clone(), FailureKind::Persistent),
        },
        cx.actor.clone(),
        cx.now,
    );
    update.then_refuse = Some(format!("recorded {n} as blocked: {message}"));
    update
}

/// The model action `asked` names, its code on the ladder.
fn action(req: &Request, asked: &PutAction, cx: &Context<'_>) -> Result<Action, RequestError> {
    let front = cx.front;
    let name = asked.name();
    let code = |n: u32| {
        cx.config
            .ladder
            .check(n)
            .map_err(|e| refuse("state", format!("{}: {e}", front.action(name))))
    };
    let failure = |n: u32, message: String, kind: Option<FailureKind>| Action::Fail {
        state: n,
        error: cx.config.classifier.error(message, kind),
    };
    Ok(match asked {
        PutAction::Init { restart } => Action::Init { restart: *restart },
        PutAction::Restart => Action::Restart,
        PutAction::Start(n) => Action::Start(code(*n)?),
        PutAction::Complete(n) => Action::Complete(code(*n)?),
        PutAction::Retry(n) => Action::Retry(code(*n)?),
        PutAction::Fail(n) => {
            let n = code(*n)?;
            failure(n, error_message(req, cx, None)?, kind(req, front)?)
        }
        PutAction::Finish(n) => {
            let n = code(*n)?;
            finish(req, cx, n, failure)?
        }
        PutAction::Set(n) => {
            let n = code(*n)?;
            let status = match req.status.as_deref().map(str::trim) {
                None => Status::Pending,
                Some(s) => Status::parse(s).ok_or_else(|| {
                    refuse("status", format!(
                        "{} {s:?} must be one of pending, in_progress, failed, blocked, awaiting_approval, completed, cancelled",
                        front.value("status")
                    ))
                })?,
            };
            let reason = req.reason.as_deref().map(str::trim).unwrap_or_default();
            if reason.is_empty() {
                return Err(refuse(
                    "reason",
                    format!(
                        "{} needs a {} (a manual override is recorded with why)",
                        front.action("set"),
                        front.option("reason")
                    ),
                ));
            }
            Action::Set {
                state: n,
                status,
                reason: reason.to_string(),
            }
        }
        PutAction::Cancel(reason) => {
            let reason = reason.trim();
            if reason.is_empty() {
                return Err(refuse(
                    "cancel",
                    match front {
                        Front::Put => {
                            "params.cancel takes the reason: cancel: \"superseded by rhel8-web-2\""
                                .to_string()
                        }
                        Front::Cli => "cancel takes the reason: build-state cancel BUILD_ID \"superseded by rhel8-web-2\"".to_string(),
                    },
                ));
            }
            Action::Cancel {
                reason: reason.to_string(),
            }
        }
        PutAction::Approve(n) => Action::Approve {
            state: code(*n)?,
            reason: req
                .reason
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
        },
        PutAction::Created(n) => Action::Created {
            state: n.map(code).transpose()?,
            run: req.run,
            attempt: req.attempt,
        },
        PutAction::Release => Action::Release,
        PutAction::Hold => Action::Hold,
        PutAction::File(_) | PutAction::Heartbeat(_) | PutAction::HandOff => {
            unreachable!("a file, a heartbeat or a hand-off is not an action")
        }
    })
}

/// `finish: N`: complete or fail by the Concourse build's status.
fn finish(
    req: &Request,
    cx: &Context<'_>,
    n: u32,
    failure: impl Fn(u32, String, Option<FailureKind>) -> Action,
) -> Result<Action, RequestError> {
    let who = cx.env.actor().describe();
    // Concourse gives succeeded/failed/errored/aborted; its docs spell the
    // first two success/failure.
    match cx.env.status.as_deref() {
        Some("succeeded" | "success") => Ok(Action::Complete(n)),
        Some(status @ ("failed" | "failure" | "errored")) => {
            let default = format!("{who} {status}");
            Ok(failure(
                n,
                error_message(req, cx, Some(default))?,
                kind(req, cx.front)?,
            ))
        }
        Some("aborted") => Ok(failure(
            n,
            format!("{who} was aborted; a human decides what happens next"),
            Some(FailureKind::Persistent),
        )),
        Some(other) => Err(refuse(
            "finish",
            format!(
                "{}: unknown build status BUILD_STATUS={other:?} (expected succeeded, failed, errored or aborted)",
                cx.front.action("finish")
            ),
        )),
        None => Err(refuse(
            "finish",
            format!(
                "{} needs the build status that Concourse 8.2+ gives puts in on_success/on_failure/on_error/on_abort hooks, and BUILD_STATUS is not set; use complete: N and fail: N in separate hooks instead",
                cx.front.action("finish")
            ),
        )),
    }
}

fn kind(req: &Request, front: Front) -> Result<Option<FailureKind>, RequestError> {
    req.kind
        .as_deref()
        .map(|k| {
            FailureKind::parse(k).ok_or_else(|| {
                refuse(
                    "kind",
                    format!(
                        "{} {k:?} must be transient or persistent",
                        front.value("kind")
                    ),
                )
            })
        })
        .transpose()
}

/// Reads the file a field names; the error says whether it is only missing
/// (a task that failed early may not have written it).
fn read(
    cx: &Context<'_>,
    field: &'static str,
    path: &str,
) -> Result<Vec<u8>, (bool, RequestError)> {
    cx.files.read(path).map_err(|e| {
        let missing = matches!(e, InputError::Missing(_));
        (
            missing,
            refuse(field, format!("{} {e}", cx.front.file(field))),
        )
    })
}

/// The error of a failing stage: `error_file` (its contents), else `error`,
/// else `default` (for `finish`), else a clear complaint.
fn error_message(
    req: &Request,
    cx: &Context<'_>,
    default: Option<String>,
) -> Result<String, RequestError> {
    let front = cx.front;
    if let Some(file) = &req.error_file {
        match read(cx, "error_file", file) {
            Ok(body) => {
                let text = String::from_utf8_lossy(&body).trim().to_string();
                if !text.is_empty() {
                    return Ok(text);
                }
            }
            // A file that exists but may not be read is always an error.
            Err((false, e)) => return Err(e),
            Err((true, e)) if req.error.is_none() && default.is_none() => {
                return Err(refuse(
                    "error_file",
                    format!(
                        "{e}; make the task write it (also when it fails early), or give {} as a fallback",
                        front.option("error")
                    ),
                ));
            }
            // `finish` in an on_error/on_abort hook: the task may never have run.
            Err((true, e)) => cx.notes.warn(format!(
                "{e}; using {}",
                if req.error.is_some() {
                    front.name("error")
                } else {
                    "a message naming the build".to_string()
                }
            )),
        }
    }
    if let Some(e) = req
        .error
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        return Ok(e.to_string());
    }
    default.ok_or_else(|| {
        refuse(
            "error",
            format!(
                "{} needs {} or {} (what went wrong)",
                front.action("fail"),
                front.option("error"),
                front.option("error_file")
            ),
        )
    })
}

/// Reads `vars_file`. When the change records a failure, a task that failed
/// before writing the file is no reason to lose the failure: it is skipped
/// with a warning.
fn vars(
    req: &Request,
    cx: &Context<'_>,
    failing: bool,
) -> Result<Map<String, Value>, RequestError> {
    let Some(path) = &req.vars_file else {
        return Ok(Map::new());
    };
    let body = match read(cx, "vars_file", path) {
        Ok(b) => b,
        Err((true, e)) if failing => {
            cx.notes
                .warn(format!("{e}; recording the failure without vars"));
            return Ok(Map::new());
        }
        Err((_, e)) => return Err(e),
    };
    crate::model::document::parse_vars(&body).map_err(|e| {
        refuse(
            "vars_file",
            format!("{} {path} {e}", cx.front.file("vars_file")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::FilesInMemory;

    fn config() -> Config {
        let source: crate::protocol::Source =
            serde_json::from_str(r#"{"local_dir": "/nowhere", "build_id": "rhel8-web"}"#).unwrap();
        Config::from_source(&source).unwrap()
    }

    fn run(
        req: &Request,
        front: Front,
        files: &FilesInMemory,
        notes: &Notes,
    ) -> Result<Change, RequestError> {
        let config = config();
        let env = BuildEnv::default();
        translate(
            req,
            &Context {
                front,
                config: &config,
                env: &env,
                actor: Actor::default(),
                now: crate::now(),
                files,
                notes,
            },
        )
    }

    /// A failure whose task never wrote its vars is recorded; the warning
    /// comes back in the notes, spelled as the front spells the field.
    #[test]
    fn a_missing_vars_file_on_a_failure_is_a_note() {
        let mut req = Request::new(PutAction::Fail(5));
        req.error = Some("packer: ssh timeout".into());
        req.vars_file = Some("out/vars.json".into());
        for (front, spelled) in [
            (Front::Put, "params.vars_file:"),
            (Front::Cli, "--vars-file:"),
        ] {
            let notes = Notes::new();
            let change = run(&req, front, &FilesInMemory::default(), &notes).unwrap();
            let Change::Apply(u) = change else {
                panic!("an action")
            };
            assert!(matches!(u.action, Action::Fail { state: 5, .. }));
            assert!(u.vars.is_empty());
            let said = notes.take();
            assert_eq!(said.len(), 1, "{said:?}");
            assert!(
                said[0].starts_with(&format!("warning: {spelled} "))
                    && said[0].ends_with("; recording the failure without vars"),
                "{said:?}"
            );
        }
        // Not failing: the same missing file is an error, and no note.
        let mut start = Request::new(PutAction::Start(5));
        start.vars_file = Some("out/vars.json".into());
        let notes = Notes::new();
        let err = run(&start, Front::Put, &FilesInMemory::default(), &notes).unwrap_err();
        assert_eq!(err.field, "vars_file");
        assert!(err.message.starts_with("params.vars_file: "), "{err}");
        assert!(notes.take().is_empty());
    }

    /// A put that completes a stage whose build did not write its
    /// `vars_file` records the stage blocked with that cause and fails after
    /// the write; the CLI refuses, as before.
    #[test]
    fn a_success_without_its_vars_file_blocks_the_stage() {
        let mut req = Request::new(PutAction::Complete(5));
        req.vars_file = Some("out/vars.json".into());
        let notes = Notes::new();
        let Change::Apply(u) = run(&req, Front::Put, &FilesInMemory::default(), &notes).unwrap()
        else {
            panic!("an action")
        };
        let Action::Fail { state: 5, error } = &u.action else {
            panic!("{:?}", u.action)
        };
        assert_eq!(error.kind, FailureKind::Persistent);
        assert!(
            error.message.contains(
                "succeeded but did not write out/vars.json, which params.vars_file names"
            ),
            "{}",
            error.message
        );
        assert!(
            u.then_refuse
                .as_deref()
                .is_some_and(|m| m.starts_with("recorded 5 as blocked: ")),
            "{:?}",
            u.then_refuse
        );
        let err = run(&req, Front::Cli, &FilesInMemory::default(), &notes).unwrap_err();
        assert_eq!(err.field, "vars_file");
        // Written: no refusal, a completion.
        let mut files = FilesInMemory::default();
        files.insert("out/vars.json", b"{\"ami\": \"ami-1\"}");
        let Change::Apply(u) = run(&req, Front::Put, &files, &notes).unwrap() else {
            panic!("an action")
        };
        assert_eq!((u.action, u.then_refuse), (Action::Complete(5), None));
    }

    /// The same rule, the same message, two spellings.
    #[test]
    fn one_message_per_rule_in_each_front() {
        let files = FilesInMemory::default();
        let notes = Notes::new();
        let fail = Request::new(PutAction::Fail(5));
        assert_eq!(
            run(&fail, Front::Put, &files, &notes).unwrap_err().message,
            "params.fail needs `error` or `error_file` (what went wrong)"
        );
        assert_eq!(
            run(&fail, Front::Cli, &files, &notes).unwrap_err().message,
            "fail needs --error or --error-file (what went wrong)"
        );
        let mut set = Request::new(PutAction::Set(25));
        set.status = Some("done".into());
        set.reason = Some("by hand".into());
        assert!(
            run(&set, Front::Cli, &files, &notes)
                .unwrap_err()
                .message
                .starts_with("--status \"done\" must be one of pending")
        );
        assert!(
            run(&set, Front::Put, &files, &notes)
                .unwrap_err()
                .message
                .starts_with("params.status: \"done\" must be one of pending")
        );
        let mut off = Request::new(PutAction::Start(7));
        off.note = None;
        let e = run(&off, Front::Put, &files, &notes).unwrap_err();
        assert_eq!(e.field, "state");
        assert!(e.message.starts_with("params.start: "), "{e}");
        assert!(notes.take().is_empty());
    }

    /// The error file wins over `error`; a missing one falls back to
    /// `error` with a warning; an empty one to `error` silently.
    #[test]
    fn the_error_file_and_its_fallbacks() {
        let mut files = FilesInMemory::default();
        files.insert("err.txt", b"  kickstart: no network\n");
        files.insert("empty.txt", b"  \n");
        let notes = Notes::new();
        let message = |req: &Request| match run(req, Front::Put, &files, &notes).unwrap() {
            Change::Apply(Update {
                action: Action::Fail { error, .. },
                ..
            }) => error.message,
            other => panic!("{other:?}"),
        };
        let mut req = Request::new(PutAction::Fail(5));
        req.error = Some("fallback".into());
        req.error_file = Some("err.txt".into());
        assert_eq!(message(&req), "kickstart: no network");
        req.error_file = Some("empty.txt".into());
        assert_eq!(message(&req), "fallback");
        assert!(notes.take().is_empty());
        req.error_file = Some("gone.txt".into());
        assert_eq!(message(&req), "fallback");
        let said = notes.take();
        assert!(
            said.len() == 1
                && said[0].starts_with("warning: params.error_file: ")
                && said[0].ends_with("; using params.error"),
            "{said:?}"
        );
    }
}
