//! One build's commands: what it is (`show`, `history`, `next`, `states`)
//! and its actions (`init` ... `restart`, and the old `update`). Actions
//! become a [`Request`] and go through the library's one translator, as a
//! put's params do.

use super::{Ctx, Error, terminal::Out, terminal::Table};

mod show;
use crate::app::{Change, StoreClock};
use crate::config::{Config, Settings};
use crate::engine::Builds;
use crate::inputs::WorkingDir;
use crate::model::{Actor, Document};
use crate::protocol::{BuildEnv, PutAction};
use crate::request::{Context, Front, Request, translate};
use crate::store::AnyStore;
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub(super) struct Extras {
    /// A JSON object merged into the build's vars
    #[arg(long, value_name = "FILE")]
    vars_file: Option<PathBuf>,
    /// Free text recorded in the history entry
    #[arg(long)]
    note: Option<String>,
    /// Once the change landed, ask Concourse to check this resource at once
    /// (its check webhook; repeatable). The pipeline: --atc-url, --team and
    /// --pipeline NAME, or --fly-target, or inside a build ATC_EXTERNAL_URL,
    /// BUILD_TEAM_NAME and BUILD_PIPELINE_NAME; the token: --webhook-token
    /// or the source's webhook_token
    #[arg(long = "check", value_name = "RESOURCE")]
    check: Vec<String>,
    /// A cloud resource this attempt created (repeatable; with start,
    /// complete or fail)
    #[arg(long = "created", value_name = "NAME=ID")]
    created: Vec<String>,
    /// A resource removed: its id, or the name of a live one (repeatable)
    #[arg(long = "release", value_name = "ID")]
    release: Vec<String>,
    /// With start: a resource of the failed attempt the retry keeps using
    /// (its name; repeatable)
    #[arg(long = "adopt", value_name = "NAME")]
    adopt: Vec<String>,
}

/// A build and one of its stages.
#[derive(clap::Args, Debug)]
pub(super) struct Stage {
    build_id: String,
    /// The stage's state code
    state: u32,
    #[command(flatten)]
    extras: Extras,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum Command {
    /// Show a build's state
    Show { build_id: String },
    /// Show a build's history (the current run)
    History { build_id: String },
    /// Print what a job should do now: run, retry, wait (a retry not due
    /// yet), blocked, done or cancelled
    Next { build_id: String },
    /// Create a build at its initial state
    Init {
        build_id: String,
        /// A label, e.g. cloud_provider=aws (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Start a new run if the build completed or was cancelled
        #[arg(long)]
        restart: bool,
        #[command(flatten)]
        extras: Extras,
    },
    /// Mark stage N as running
    Start(Stage),
    /// Stage N succeeded: move on to the next state
    Complete(Stage),
    /// Stage N failed
    Fail {
        build_id: String,
        state: u32,
        /// What went wrong
        #[arg(long)]
        error: Option<String>,
        /// A file holding what went wrong
        #[arg(long)]
        error_file: Option<PathBuf>,
        /// transient (retried) or persistent (blocked at once); default: from the source's regex lists
        #[arg(long)]
        kind: Option<String>,
        /// Keep this attempt's resources for a human this long (2h)
        #[arg(long, value_name = "DURATION")]
        hold: Option<String>,
        #[command(flatten)]
        extras: Extras,
    },
    /// A human's decision: stage N is due again (attempts reset)
    Retry(Stage),
    /// Manual override: put the build at state N
    Set {
        build_id: String,
        state: u32,
        #[arg(long, default_value = "pending")]
        status: String,
        /// Why (recorded in the history)
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        extras: Extras,
    },
    /// Abandon a build
    Cancel { build_id: String, reason: String },
    /// A human approves stage N (awaiting approval): its gate opens
    Approve {
        build_id: String,
        state: u32,
        /// Why, or what was checked (recorded in the history)
        #[arg(long)]
        reason: Option<String>,
        /// Once approved, ask Concourse to check this resource (the stage's
        /// gate) at once (repeatable)
        #[arg(long = "check", value_name = "RESOURCE")]
        check: Vec<String>,
    },
    /// Stage N (in progress) is alive: from inside the Packer provisioner
    /// or Ansible play of a stage with a heartbeat_timeout. Refused (exit 1)
    /// when the attempt it names is over: stop that worker.
    Heartbeat {
        build_id: String,
        state: u32,
        /// The run this worker works for (state.env's BUILD_STATE_RUN)
        #[arg(long, env = "BUILD_STATE_RUN")]
        run: Option<u64>,
        /// The attempt this worker works for (state.env's BUILD_STATE_ATTEMPT)
        #[arg(long, env = "BUILD_STATE_ATTEMPT")]
        attempt: Option<u32>,
    },
    /// Record cloud resources the attempt in progress at stage N created,
    /// the moment they exist (from inside its Packer or Ansible task).
    /// Refused (exit 1) when the attempt it names is over
    Created {
        build_id: String,
        state: u32,
        /// What each is to the pipeline, and its cloud id
        #[arg(required = true, value_name = "NAME=ID")]
        resources: Vec<String>,
        /// The run this worker works for (state.env's BUILD_STATE_RUN)
        #[arg(long, env = "BUILD_STATE_RUN")]
        run: Option<u64>,
        /// The attempt this worker works for (state.env's BUILD_STATE_ATTEMPT)
        #[arg(long, env = "BUILD_STATE_ATTEMPT")]
        attempt: Option<u32>,
    },
    /// Record resources removed: their ids (or names of live ones)
    Release {
        build_id: String,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// Once recorded, ask Concourse to check this resource (repeatable)
        #[arg(long = "check", value_name = "RESOURCE")]
        check: Vec<String>,
    },
    /// Keep the build's resources (all but those of an attempt in
    /// progress) for a human until DURATION from now; they are leaked then
    Hold {
        build_id: String,
        /// How long (2h, 30m)
        duration: String,
    },
    /// Archive the current run and start a new one at the initial state
    Restart {
        build_id: String,
        #[command(flatten)]
        extras: Extras,
    },
    /// Show the ladder and the retry policy
    States,
    /// The old update-state.sh: update BUILD_ID STATE [completed|failed] [ERROR]
    Update {
        build_id: String,
        state: u32,
        /// completed (complete STATE), failed (fail STATE with ERROR); none: start STATE
        status: Option<String>,
        error: Option<String>,
    },
}

fn path(p: &Option<PathBuf>) -> Option<String> {
    p.as_deref().map(|p| p.to_string_lossy().into_owned())
}

/// The request an action command makes, with its build.
fn request(command: Command) -> Result<(String, Request, Vec<String>)> {
    let with = |action: PutAction, extras: &Extras| {
        let mut r = Request::new(action);
        r.vars_file = path(&extras.vars_file);
        r.note = extras.note.clone();
        r.check = extras.check.clone();
        r.release = extras.release.clone();
        r.adopt = extras.adopt.clone();
        r.created = pairs(&extras.created)?;
        Ok::<_, anyhow::Error>(r)
    };
    Ok(match command {
        Command::Init {
            build_id,
            labels,
            restart,
            extras,
        } => (
            build_id,
            with(PutAction::Init { restart }, &extras)?,
            labels,
        ),
        Command::Start(s) => (
            s.build_id,
            with(PutAction::Start(s.state), &s.extras)?,
            vec![],
        ),
        Command::Complete(s) => (
            s.build_id,
            with(PutAction::Complete(s.state), &s.extras)?,
            vec![],
        ),
        Command::Retry(s) => (
            s.build_id,
            with(PutAction::Retry(s.state), &s.extras)?,
            vec![],
        ),
        Command::Fail {
            build_id,
            state,
            error,
            error_file,
            kind,
            hold,
            extras,
        } => {
            let mut r = with(PutAction::Fail(state), &extras)?;
            (r.error, r.error_file, r.kind, r.hold) = (error, path(&error_file), kind, hold);
            (build_id, r, vec![])
        }
        Command::Set {
            build_id,
            state,
            status,
            reason,
            extras,
        } => {
            let mut r = with(PutAction::Set(state), &extras)?;
            (r.status, r.reason) = (Some(status), Some(reason));
            (build_id, r, vec![])
        }
        Command::Cancel { build_id, reason } => {
            (build_id, Request::new(PutAction::Cancel(reason)), vec![])
        }
        Command::Approve {
            build_id,
            state,
            reason,
            check,
        } => {
            let mut r = Request::new(PutAction::Approve(state));
            r.reason = reason;
            r.check = check;
            (build_id, r, vec![])
        }
        Command::Restart { build_id, extras } => {
            (build_id, with(PutAction::Restart, &extras)?, vec![])
        }
        Command::Update {
            build_id,
            state,
            status,
            error,
        } => (build_id, old_update(state, status, error)?, vec![]),
        Command::Created {
            build_id,
            state,
            resources,
            run,
            attempt,
        } => {
            let mut r = Request::new(PutAction::Created(Some(state)));
            (r.run, r.attempt) = (run, attempt);
            r.created = pairs(&resources)?;
            (build_id, r, vec![])
        }
        Command::Release {
            build_id,
            ids,
            check,
        } => {
            let mut r = Request::new(PutAction::Release);
            (r.release, r.check) = (ids, check);
            (build_id, r, vec![])
        }
        Command::Hold { build_id, duration } => {
            let mut r = Request::new(PutAction::Hold);
            r.hold = Some(duration);
            (build_id, r, vec![])
        }
        other => unreachable!("{other:?} is not an action"),
    })
}

/// `NAME=ID` arguments, as a map (names and ids are checked by the
/// translator).
fn pairs(args: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(n, i)| (n.trim().to_string(), i.trim().to_string()))
                .ok_or_else(|| anyhow!("{a:?} is not NAME=ID (green_instance=i-0abc123)"))
        })
        .collect()
}

/// The old scripts' `update BUILD_ID STATE [completed|failed] [ERROR]`.
fn old_update(state: u32, status: Option<String>, error: Option<String>) -> Result<Request> {
    // Empty arguments (an unset variable in a script) count as absent.
    let status = status.filter(|s| !s.trim().is_empty());
    let error = error.filter(|e| !e.trim().is_empty());
    Ok(match status.as_deref().map(str::trim) {
        None => Request::new(PutAction::Start(state)),
        Some("completed") => Request::new(PutAction::Complete(state)),
        Some("failed") => {
            let mut r = Request::new(PutAction::Fail(state));
            r.error = Some(error.unwrap_or_else(|| format!("stage {state} failed")));
            r
        }
        Some(other) => bail!("update: status {other:?} must be completed or failed"),
    })
}

/// What a command does once its build is open.
enum Then {
    Show,
    History,
    Next,
    Heartbeat(Request),
    /// An action's request, with `init`'s labels.
    Act(Request, Vec<String>),
}

pub(super) async fn run(command: Command, ctx: &Ctx<'_>) -> Result<(), Error> {
    let out = ctx.out;
    // What the arguments ask is read before the store is opened: a usage
    // mistake is said as one, whatever the store.
    let (build_id, then) = match command {
        Command::States => {
            let settings = ctx.source.behaviour()?;
            return Ok(states(&settings, out)?);
        }
        Command::Show { build_id } => (build_id, Then::Show),
        Command::History { build_id } => (build_id, Then::History),
        Command::Next { build_id } => (build_id, Then::Next),
        Command::Heartbeat {
            build_id,
            state,
            run,
            attempt,
        } => {
            let mut req = Request::new(PutAction::Heartbeat(state));
            (req.run, req.attempt) = (run, attempt);
            (build_id, Then::Heartbeat(req))
        }
        action => {
            let (build_id, req, labels) = request(action)?;
            (build_id, Then::Act(req, labels))
        }
    };
    let (config, store) = ctx.build(&build_id).await?;
    match then {
        Then::Show => {
            let doc = current(&config, &store).await?;
            let beat = if doc.status == crate::model::Status::InProgress {
                Builds::new(&config, &store).heartbeat().await?
            } else {
                None
            };
            Ok(out.document(&config, &doc, beat.as_ref(), ctx.now())?)
        }
        Then::History => Ok(out.history(&current(&config, &store).await?)?),
        Then::Next => {
            let doc = current(&config, &store).await?;
            let now = crate::app::Clock::now(&StoreClock(&store));
            Ok(next(&doc, now, out)?)
        }
        Then::Heartbeat(req) => {
            act(&config, &store, &req, &crate::handoff::Handoff::none(), out).await
        }
        Then::Act(req, labels) => {
            let config = with_labels(config, &build_id, &labels)?;
            let atc = ctx
                .atc
                .target(BuildEnv::from_env(), ctx.source.concourse_pipeline())?;
            let token = ctx.atc.token().or_else(|| config.webhook_token.clone());
            let handoff = crate::handoff::Handoff::new(&req.check, &atc, token.as_ref())
                .map_err(|m| anyhow!("--check: {m}"))?;
            act(&config, &store, &req, &handoff, out).await
        }
    }
}

/// `init --label K=V`: the labels join the source's.
fn with_labels(config: Config, build_id: &str, labels: &[String]) -> Result<Config> {
    if labels.is_empty() {
        return Ok(config);
    }
    let mut settings: Settings = (*config.settings).clone();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("--label {l:?} is not KEY=VALUE"))?;
        settings
            .labels
            .insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(std::sync::Arc::new(settings).for_build(build_id)?)
}

fn next(doc: &Document, now: crate::model::Timestamp, out: &Out) -> Result<()> {
    let step = crate::model::NextStep::live(doc, now);
    if out.json {
        out.print_json(&json!({
            "next": step.as_str(),
            "state": doc.state,
            "status": doc.status,
            "retry_at": doc.retry_at.map(|t| crate::model::document::rfc3339::format(&t)),
        }))
    } else {
        out.write(&format!("{}\n", step.as_str()))
    }
}

/// The person (or build) making a change from the CLI.
pub(super) fn actor() -> Actor {
    let env = BuildEnv::from_env();
    let mut a = if env.build_id.is_some() {
        env.actor()
    } else {
        Actor::default()
    };
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok());
    a.user = Some(match host {
        Some(h) => format!("{user}@{h}"),
        None => user,
    });
    a
}

/// The live document of the configured build, or `NotFound`.
pub(crate) async fn current(config: &Config, store: &AnyStore) -> Result<Document, Error> {
    match Builds::new(config, store).current().await? {
        Some(c) => Ok(c.doc),
        None => Err(Error::NotFound(format!(
            "{} has no state at {} (check the build id and the prefix; `build-state list` shows every build)",
            config.build_id,
            config.location(&config.state_key())
        ))),
    }
}

/// Translates `req` as the CLI's arguments, applies it and prints the result.
pub(super) async fn act(
    config: &Config,
    store: &AnyStore,
    req: &Request,
    handoff: &crate::handoff::Handoff,
    out: &Out,
) -> Result<(), Error> {
    let env = BuildEnv::from_env();
    // The store's clock: actions take their time from it (the translator's
    // is set again at each attempt of the compare-and-swap).
    let clock = StoreClock(store);
    let change = translate(
        req,
        &Context {
            front: Front::Cli,
            config,
            env: &env,
            actor: actor(),
            now: crate::app::Clock::now(&clock),
            files: &WorkingDir,
            notes: &out.notes,
        },
    )
    .map_err(anyhow::Error::from)?;
    let described = match &change {
        Change::Apply(u) => u.action.describe(),
        Change::File(_) => "file".to_string(),
        Change::Heartbeat(c) => format!("heartbeat {}", c.state),
        Change::HandOff(_) => "check".to_string(),
    };
    let applied = crate::app::act(config, store, &clock, change, handoff, &out.notes).await?;
    match &applied.beat {
        Some(beat) => out.beat(&applied.doc, beat)?,
        None => out.applied(&described, &applied.doc, applied.written)?,
    }
    Ok(())
}

fn states(config: &Settings, out: &Out) -> Result<()> {
    let fmt = crate::model::time::format;
    for warning in config.retry.capped() {
        out.note(warning);
    }
    if out.json {
        let steps: Vec<Value> = config
            .ladder
            .steps()
            .iter()
            .map(|s| {
                let r = config.retry.for_state(s.code);
                let waits: Vec<String> = config.retry.waits(s.code).into_iter().map(fmt).collect();
                json!({"code": s.code, "name": s.name, "policy": config.retry.source_of(s.code),
                       "max_attempts": r.max_attempts, "backoff": fmt(r.backoff),
                       "factor": r.factor, "max_backoff": fmt(r.max_backoff), "waits": waits,
                       "resume_from": r.resume_from, "timeout": r.timeout.map(fmt),
                       "heartbeat_timeout": r.heartbeat_timeout.map(fmt), "approval": r.approval,
                       "final": s.code == config.ladder.final_code()})
            })
            .collect();
        return out.print_json(&Value::Array(steps));
    }
    let mut t = Table::new(&[
        "CODE",
        "NAME",
        "POLICY",
        "ATTEMPTS",
        "WAITS BEFORE EACH RETRY",
        "ON FAILURE",
        "TIMEOUT",
        "HEARTBEAT",
        "APPROVAL",
    ]);
    let dash = || "-".to_string();
    for s in config.ladder.steps() {
        let r = config.retry.for_state(s.code);
        if s.code == config.ladder.final_code() {
            // No job runs at the final code: the build is delivered.
            t.row(vec![
                s.code.to_string(),
                s.name.clone(),
                "final".into(),
                dash(),
                "(delivered: no job runs here)".into(),
                dash(),
                dash(),
                dash(),
                dash(),
            ]);
            continue;
        }
        let on_failure = match (r.max_attempts, r.resume_from) {
            (1, _) => "a human".to_string(),
            (_, Some(m)) => format!("back to {m}"),
            _ => "retry".to_string(),
        };
        let waits: Vec<String> = config.retry.waits(s.code).into_iter().map(fmt).collect();
        t.row(vec![
            s.code.to_string(),
            s.name.clone(),
            config.retry.source_of(s.code),
            r.max_attempts.to_string(),
            if waits.is_empty() {
                "none: a human after the first failure".into()
            } else {
                waits.join(", ")
            },
            on_failure,
            r.timeout.map(fmt).unwrap_or_else(dash),
            r.heartbeat_timeout.map(fmt).unwrap_or_else(dash),
            if r.approval { "yes".into() } else { dash() },
        ]);
    }
    out.table(&t)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The build commands on the in-memory store, their output read from a
    //! buffer.

    use super::*;
    use crate::cli::testing::{settings, text, walk};
    use crate::store::memory::MemoryStore;
    use std::path::Path;

    #[tokio::test]
    async fn actions_say_what_they_did_and_refusals_say_why() {
        let store = AnyStore::Memory(MemoryStore::new());
        let (out, buf) = Out::buffered(false);
        walk(&store, "rhel8-web", &out).await;
        let said = text(&buf);
        assert!(
            said.contains("rhel8-web: init → 0 initial (pending), revision 1"),
            "{said}"
        );
        assert!(
            said.contains("rhel8-web: fail 5 → 5 kickstart initiated (failed), revision 4"),
            "{said}"
        );
        let config = settings().for_build("rhel8-web").unwrap();
        let err = act(
            &config,
            &store,
            &Request::new(PutAction::Complete(25)),
            &crate::handoff::Handoff::none(),
            &out,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot complete 25; allowed now: start 5"),
            "{err}"
        );
        assert_eq!(text(&buf), "", "a refusal prints nothing on stdout");
        // Again in JSON.
        let (json_out, buf) = Out::buffered(true);
        act(
            &config,
            &store,
            &Request::new(PutAction::Retry(5)),
            &crate::handoff::Handoff::none(),
            &json_out,
        )
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text(&buf)).unwrap();
        assert_eq!(
            (v["written"].as_bool(), v["document"]["status"].as_str()),
            (Some(true), Some("pending"))
        );
    }

    /// The CLI's failure with a missing --vars-file is recorded, and the
    /// warning arrives in the terminal's notes, not on stdout.
    #[tokio::test]
    async fn a_missing_vars_file_on_a_failure_is_a_note() {
        let store = AnyStore::Memory(MemoryStore::new());
        let (out, buf) = Out::buffered(false);
        walk(&store, "rhel8-web", &out).await;
        let config = settings().for_build("rhel8-web").unwrap();
        act(
            &config,
            &store,
            &Request::new(PutAction::Retry(5)),
            &crate::handoff::Handoff::none(),
            &out,
        )
        .await
        .unwrap();
        text(&buf);
        out.notes.take();
        let mut req = Request::new(PutAction::Fail(5));
        req.error = Some("ansible: unreachable".into());
        req.vars_file = Some(Path::new("/nonexistent/vars.json").display().to_string());
        act(
            &config,
            &store,
            &req,
            &crate::handoff::Handoff::none(),
            &out,
        )
        .await
        .unwrap();
        let notes = out.notes.take();
        assert!(
            notes.iter().any(|n| n
                .starts_with("warning: --vars-file: cannot read /nonexistent/vars.json")
                && n.ends_with("recording the failure without vars")),
            "{notes:?}"
        );
        assert!(text(&buf).contains("fail 5 → 5 kickstart initiated (failed)"));
    }

    #[tokio::test]
    async fn states_show_the_policy_per_code() {
        let (out, buf) = Out::buffered(false);
        states(&settings(), &out).unwrap();
        let table = text(&buf);
        assert!(
            table.contains(
                "5     kickstart initiated       default  3         30s, 1m                        retry       -"
            ),
            "{table}"
        );
        assert_eq!(table.lines().count(), 22, "a header and 21 codes");
    }
}
