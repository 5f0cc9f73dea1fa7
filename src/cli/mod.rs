//! The `build-state` command line: inspect and repair states, run inside
//! image builds, migrate from the old scripts. Every command goes through
//! the same source parser, store and transitions as the resource.

mod cache;
mod doctor;
mod import;
mod metrics;
mod output;
mod report;
mod retention;
mod serve;
mod source;
mod watch;

use anyhow::{Context, Result, anyhow, bail};
use build_state::config::{Config, Settings};
use build_state::engine::{Builds, ErrorKind};
use build_state::model::{Action, Actor, Document, FailureKind, Refusal, Status, Update};
use build_state::protocol::BuildEnv;
use build_state::store::{AnyStore, Store};
use clap::{CommandFactory, Parser, Subcommand};
use futures_util::StreamExt;
use output::{Out, Table};
use serde_json::{Map, Value, json};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit codes, as documented in the README.
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "build-state",
    version,
    about = "Inspect and update build states (the build-state Concourse resource's documents)",
    after_help = "Configuration: --source FILE, --pipeline FILE --resource NAME, flags, or BUILD_STATE_* \
                  variables. Credentials come from the source or the standard AWS chain.\n\
                  Exit codes: 0 ok, 1 error (refused transition, unreadable input, store), 2 usage, \
                  3 no such build."
)]
pub struct Cli {
    #[command(flatten)]
    source: source::SourceArgs,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Read every document (list, watch, report, metrics, serve): no local cache
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct Extras {
    /// A JSON object merged into the build's vars
    #[arg(long, value_name = "FILE")]
    vars_file: Option<PathBuf>,
    /// Free text recorded in the history entry
    #[arg(long)]
    note: Option<String>,
}

/// A build and one of its stages.
#[derive(clap::Args, Debug)]
struct Stage {
    build_id: String,
    /// The stage's state code
    state: u32,
    #[command(flatten)]
    extras: Extras,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a build's state
    Show { build_id: String },
    /// Show a build's history (the current run)
    History { build_id: String },
    /// Print what a job should do now: run, retry, wait (a retry not due
    /// yet), blocked, done or cancelled
    Next { build_id: String },
    /// List every build under the prefix
    List {
        /// Only builds with this status (pending, in_progress, failed, blocked, completed, cancelled)
        #[arg(long)]
        status: Option<String>,
        /// Only builds at this state code
        #[arg(long)]
        state: Option<u32>,
        /// Documents read at once
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Follow one build (or every build under the prefix) and print each transition
    Watch {
        build_id: Option<String>,
        /// Time between polls (conditional GETs: an unchanged document costs no body)
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Stop after this long (default: run until interrupted)
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
    },
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
    /// Migrate builds from the old per-build SQLite databases
    ImportSqlite {
        #[arg(required = true)]
        databases: Vec<PathBuf>,
        /// Show what would be written, write nothing
        #[arg(long)]
        dry_run: bool,
        /// Replace existing documents (their run is archived first)
        #[arg(long)]
        force: bool,
    },
    /// Write a self-contained HTML report of every build under the prefix
    Report {
        #[arg(long, value_name = "FILE.html")]
        out: PathBuf,
    },
    /// Check credentials, bucket, region, path style and conditional writes
    Doctor,
    /// Print the fleet's metrics in the Prometheus text format
    Metrics {
        /// Write them to this file, atomically (a textfile collector)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Serve a live dashboard, /metrics and a JSON API for the fleet (read only)
    Serve {
        /// Address to listen on (port 0: any free port, printed on stderr)
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: String,
    },
    /// Delete (or move) finished builds older than a duration; never a live
    /// one, never one that changed since it was judged
    Prune {
        /// Completed or cancelled, and last updated longer ago than this (e.g. 30d)
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        /// Say what would be done; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Move the builds under this prefix instead of deleting them
        #[arg(long, value_name = "PREFIX")]
        archive_to: Option<String>,
    },
    /// Put a stored version of a build's document back (a bucket with
    /// versioning), as a new revision
    Restore {
        build_id: String,
        /// The version to restore (default: the newest that is not corrupt)
        #[arg(long)]
        version_id: Option<String>,
        /// Do not ask
        #[arg(long)]
        yes: bool,
    },
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
    /// Run the resource's check (request JSON on stdin), as Concourse does
    Check,
    /// Run the resource's in (request JSON on stdin) into DIR
    In { dir: PathBuf },
    /// Run the resource's out (request JSON on stdin) from DIR
    Out { dir: PathBuf },
}

/// A build with no document: exit 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(String);

pub fn main(args: impl Iterator<Item = OsString>) -> Result<ExitCode> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return Ok(ExitCode::from(code));
        }
    };
    let runtime = build_state::runtime()?;
    match runtime.block_on(run(cli)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("build-state: error: {e:#}");
            let not_found = e.downcast_ref::<NotFound>().is_some()
                || e.downcast_ref::<build_state::engine::Error>()
                    .is_some_and(|e| {
                        matches!(e.kind, ErrorKind::Refused(Refusal::NoDocument { .. }))
                    });
            Ok(ExitCode::from(if not_found {
                EXIT_NOT_FOUND
            } else {
                EXIT_ERROR
            }))
        }
    }
}

/// The person (or build) making a change from the CLI.
fn actor() -> Actor {
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

fn read_vars(extras: &Extras) -> Result<Map<String, Value>> {
    let Some(path) = &extras.vars_file else {
        return Ok(Map::new());
    };
    let body = build_state::inputs::read_regular(path).map_err(|e| anyhow!("--vars-file: {e}"))?;
    build_state::model::document::parse_vars(&body)
        .map_err(|e| anyhow!("--vars-file: {} {e}", path.display()))
}

fn parse_kind(kind: Option<&str>) -> Result<Option<FailureKind>> {
    kind.map(|k| {
        FailureKind::parse(k).ok_or_else(|| anyhow!("--kind {k:?} must be transient or persistent"))
    })
    .transpose()
}

async fn run(cli: Cli) -> Result<()> {
    let out = Out::new(cli.json);
    let src = &cli.source;
    let no_cache = cli.no_cache;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "build-state",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Check => resource_cmd(build_state::resource::Program::Check).await,
        Command::In { dir } => resource_cmd(build_state::resource::Program::In(dir)).await,
        Command::Out { dir } => resource_cmd(build_state::resource::Program::Out(dir)).await,
        Command::States => {
            let config = src.settings()?;
            states(&config, &out)
        }
        Command::Show { build_id } => {
            let (config, store) = src.build(&build_id).await?;
            let doc = current(&config, &store).await?;
            out.document(&config, &doc)
        }
        Command::Next { build_id } => {
            let (config, store) = src.build(&build_id).await?;
            let doc = current(&config, &store).await?;
            let step = build_state::model::NextStep::live(&doc, build_state::now());
            if out.json {
                out.print_json(&serde_json::json!({
                    "next": step.as_str(),
                    "state": doc.state,
                    "status": doc.status,
                    "retry_at": doc.retry_at.map(|t| build_state::model::document::rfc3339::format(&t)),
                }))
            } else {
                out.write(&format!("{}\n", step.as_str()))
            }
        }
        Command::History { build_id } => {
            let (config, store) = src.build(&build_id).await?;
            let doc = current(&config, &store).await?;
            out.history(&doc)
        }
        Command::List {
            status,
            state,
            concurrency,
        } => {
            let config = src.settings()?;
            let store = open(&config).await?;
            let status = status
                .map(|s| Status::parse(&s).ok_or_else(|| anyhow!("--status {s:?} is not a status")))
                .transpose()?;
            let mut cache = (!no_cache).then(|| cache::Cache::open(&config)).flatten();
            let rows =
                scan_cached(&config, &store, concurrency.max(1), true, cache.as_mut()).await?;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| match &r.doc {
                    Ok(d) => {
                        status.is_none_or(|s| d.status == s) && state.is_none_or(|n| d.state == n)
                    }
                    Err(_) => status.is_none() && state.is_none(),
                })
                .collect();
            out.list(&rows, &config.retry)
        }
        Command::Watch {
            build_id,
            interval,
            for_,
        } => {
            let config = src.settings()?;
            let store = open(&config).await?;
            let interval = duration_flag("--interval", &interval)?;
            let until = for_.map(|d| duration_flag("--for", &d)).transpose()?;
            // Watching a prefix starts from the fleet commands' cache.
            let cache = (build_id.is_none() && !no_cache)
                .then(|| cache::Cache::open(&config))
                .flatten();
            watch::watch(
                &config,
                &store,
                build_id.as_deref(),
                interval,
                until,
                cache,
                &out,
            )
            .await
        }
        Command::Init {
            build_id,
            labels,
            restart,
            extras,
        } => {
            let (config, store) = src.build(&build_id).await?;
            let mut settings = (*config.settings).clone();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--label {l:?} is not KEY=VALUE"))?;
                settings
                    .labels
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
            let config = std::sync::Arc::new(settings).for_build(&build_id)?;
            act(&(config, store), Action::Init { restart }, &extras, &out).await
        }
        Command::Start(a) => {
            act(
                &src.build(&a.build_id).await?,
                Action::Start(a.state),
                &a.extras,
                &out,
            )
            .await
        }
        Command::Complete(a) => {
            act(
                &src.build(&a.build_id).await?,
                Action::Complete(a.state),
                &a.extras,
                &out,
            )
            .await
        }
        Command::Fail {
            build_id,
            state,
            error,
            error_file,
            kind,
            extras,
        } => {
            let built = src.build(&build_id).await?;
            let config = &built.0;
            let message = match (&error_file, &error) {
                (Some(f), _) => match build_state::inputs::read_regular(f) {
                    Ok(t) if !String::from_utf8_lossy(&t).trim().is_empty() => {
                        String::from_utf8_lossy(&t).trim().to_string()
                    }
                    Ok(_) | Err(build_state::inputs::InputError::Missing(_)) if error.is_some() => {
                        error.clone().unwrap_or_default()
                    }
                    Ok(_) => bail!("--error-file {} is empty", f.display()),
                    Err(e) => bail!("--error-file: {e}"),
                },
                (None, Some(e)) => e.clone(),
                (None, None) => bail!("fail needs --error or --error-file (what went wrong)"),
            };
            let kind = parse_kind(kind.as_deref())?;
            let action = Action::Fail {
                state,
                error: config.classifier.error(message, kind),
            };
            act(&built, action, &extras, &out).await
        }
        Command::Retry(a) => {
            act(
                &src.build(&a.build_id).await?,
                Action::Retry(a.state),
                &a.extras,
                &out,
            )
            .await
        }
        Command::Set {
            build_id,
            state,
            status,
            reason,
            extras,
        } => {
            let status = Status::parse(&status).ok_or_else(|| {
                anyhow!("--status {status:?} must be one of pending, in_progress, failed, blocked, completed, cancelled")
            })?;
            act(
                &src.build(&build_id).await?,
                Action::Set {
                    state,
                    status,
                    reason,
                },
                &extras,
                &out,
            )
            .await
        }
        Command::Cancel { build_id, reason } => {
            act(
                &src.build(&build_id).await?,
                Action::Cancel { reason },
                &Extras::default(),
                &out,
            )
            .await
        }
        Command::Restart { build_id, extras } => {
            let built = src.build(&build_id).await?;
            act(&built, Action::Restart, &extras, &out).await
        }
        Command::Update {
            build_id,
            state,
            status,
            error,
        } => {
            let built = src.build(&build_id).await?;
            let config = &built.0;
            // Empty arguments (an unset variable in a script) count as absent.
            let status = status.filter(|s| !s.trim().is_empty());
            let error = error.filter(|e| !e.trim().is_empty());
            let action = match status.as_deref().map(str::trim) {
                None => Action::Start(state),
                Some("completed") => Action::Complete(state),
                Some("failed") => {
                    let message = error.unwrap_or_else(|| format!("stage {state} failed"));
                    Action::Fail {
                        state,
                        error: config.classifier.error(message, None),
                    }
                }
                Some(other) => bail!("update: status {other:?} must be completed or failed"),
            };
            act(&built, action, &Extras::default(), &out).await
        }
        Command::ImportSqlite {
            databases,
            dry_run,
            force,
        } => {
            let config = src.settings()?;
            let store = open(&config).await?;
            import::import(&config, &store, &databases, dry_run, force, &out).await
        }
        Command::Report { out: path } => {
            let config = src.settings()?;
            let store = open(&config).await?;
            let mut cache = (!no_cache).then(|| cache::Cache::open(&config)).flatten();
            let rows = scan_cached(&config, &store, 32, true, cache.as_mut()).await?;
            report::write(&config, &rows, &path)?;
            out.report(&path, rows.len())
        }
        Command::Doctor => {
            let config = src.settings()?;
            doctor::doctor(&config, &out).await
        }
        Command::Metrics { out: path } => {
            let config = src.settings()?;
            let store = open(&config).await?;
            let mut cache = (!no_cache).then(|| cache::Cache::open(&config)).flatten();
            let rows = scan_cached(&config, &store, 32, false, cache.as_mut()).await?;
            let text = metrics::render(&config, &rows, build_state::now());
            match path {
                Some(p) => metrics::write_atomically(&p, &text)
                    .map_err(|e| anyhow!("writing {}: {e}", p.display())),
                None => out.write(&text),
            }
        }
        Command::Serve { listen } => {
            let settings = src.settings()?;
            let store = open(&settings).await?;
            serve::serve(settings, store, &listen, no_cache).await
        }
        Command::Prune {
            older_than,
            dry_run,
            archive_to,
        } => {
            let settings = src.settings()?;
            let store = open(&settings).await?;
            let older_than = duration_flag("--older-than", &older_than)?;
            retention::prune(
                &settings,
                &store,
                older_than,
                dry_run,
                archive_to.as_deref(),
                &out,
            )
            .await
        }
        Command::Restore {
            build_id,
            version_id,
            yes,
        } => {
            let (config, store) = src.build(&build_id).await?;
            retention::restore(&config, &store, version_id.as_deref(), yes, &out).await
        }
    }
}

async fn resource_cmd(program: build_state::resource::Program) -> Result<()> {
    use std::io::Read;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading the request from stdin")?;
    let reply = program.run(&input).await?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}

async fn open(config: &Settings) -> Result<AnyStore> {
    AnyStore::open(config)
        .await
        .map_err(|e| anyhow!("opening the store: {e}"))
}

/// The live document of the configured build, or `NotFound`.
async fn current(config: &Config, store: &AnyStore) -> Result<Document> {
    match Builds::new(config, store).current().await? {
        Some(c) => Ok(c.doc),
        None => Err(NotFound(format!(
            "{} has no state at {} (check the build id and the prefix; `build-state list` shows every build)",
            config.build_id,
            config.location(&config.state_key())
        ))
        .into()),
    }
}

/// Applies one action with the resource's engine and prints the result.
async fn act(
    (config, store): &(Config, AnyStore),
    action: Action,
    extras: &Extras,
    out: &Out,
) -> Result<()> {
    act_with(config, store, action, extras, out).await
}

/// Applies one action in `store` and prints the result.
async fn act_with(
    config: &Config,
    store: &AnyStore,
    action: Action,
    extras: &Extras,
    out: &Out,
) -> Result<()> {
    let mut update = Update::new(action, actor(), build_state::now());
    update.vars = read_vars(extras)?;
    update.note = extras.note.clone().filter(|n| !n.trim().is_empty());
    let described = update.action.describe();
    let applied = build_state::app::record(
        config,
        store,
        &build_state::app::SystemClock,
        build_state::app::Change::Apply(update),
    )
    .await?;
    out.applied(&described, &applied.doc, applied.written)
}

/// A duration flag, read as the source's durations are.
fn duration_flag(flag: &str, text: &str) -> Result<std::time::Duration> {
    build_state::model::duration::parse(text)
        .map_err(|e| anyhow!("{flag}: {e}; write e.g. 30s, 5m, 1h or 30d"))
}

fn states(config: &Settings, out: &Out) -> Result<()> {
    let fmt = build_state::model::duration::format;
    if out.json {
        let steps: Vec<Value> = config
            .ladder
            .steps()
            .iter()
            .map(|s| {
                let r = config.retry.for_state(s.code);
                json!({"code": s.code, "name": s.name, "policy": config.retry.source_of(s.code),
                       "max_attempts": r.max_attempts, "backoff": fmt(r.backoff),
                       "factor": r.factor, "max_backoff": fmt(r.max_backoff),
                       "resume_from": r.resume_from, "timeout": r.timeout.map(fmt)})
            })
            .collect();
        return out.print_json(&Value::Array(steps));
    }
    let mut t = Table::new(&[
        "CODE",
        "NAME",
        "POLICY",
        "MAX ATTEMPTS",
        "BACKOFF",
        "ON FAILURE",
        "TIMEOUT",
    ]);
    for s in config.ladder.steps() {
        let r = config.retry.for_state(s.code);
        let on_failure = match (r.max_attempts, r.resume_from) {
            (1, _) => "a human".to_string(),
            (_, Some(m)) => format!("back to {m}"),
            _ => "retry".to_string(),
        };
        t.row(vec![
            s.code.to_string(),
            s.name.clone(),
            config.retry.source_of(s.code),
            r.max_attempts.to_string(),
            format!("{} ×{} ≤ {}", fmt(r.backoff), r.factor, fmt(r.max_backoff)),
            on_failure,
            r.timeout.map(fmt).unwrap_or_else(|| "-".into()),
        ]);
    }
    out.table(&t)?;
    Ok(())
}

/// One build found under the prefix.
pub struct Row {
    pub build_id: String,
    pub doc: Result<Document, String>,
}

/// Reads every build under the prefix, `concurrency` at a time, with
/// progress on stderr when it takes long.
pub async fn scan(
    config: &Arc<Settings>,
    store: &AnyStore,
    concurrency: usize,
    progress: bool,
) -> Result<Vec<Row>> {
    scan_cached(config, store, concurrency, progress, None).await
}

/// [`scan`], reading only the documents whose listing tag changed since
/// `cache` saw them: a fleet that did not change costs its listing.
pub async fn scan_cached(
    config: &Arc<Settings>,
    store: &AnyStore,
    concurrency: usize,
    progress: bool,
    mut cache: Option<&mut cache::Cache>,
) -> Result<Vec<Row>> {
    let listed = store
        .list_tags(config.prefix())
        .await
        .map_err(|e| anyhow!("listing {}: {e}", config.location(config.prefix())))?;
    let builds: Vec<(String, String)> = listed
        .into_iter()
        .filter_map(|l| config.build_id_of_key(&l.key).map(|id| (id, l.tag)))
        .collect();
    if let Some(c) = cache.as_deref_mut() {
        c.retain(&builds.iter().map(|(id, _)| id.clone()).collect());
    }
    let total = builds.len();
    let mut rows = Vec::with_capacity(total);
    let mut to_read = Vec::new();
    for (id, tag) in builds {
        let hit = cache
            .as_deref()
            .and_then(|c| c.get(&id, &tag))
            .filter(|d| d.build_id == id && d.verify(&config.ladder).is_ok());
        match hit {
            Some(doc) => rows.push(Row {
                build_id: id,
                doc: Ok(doc.clone()),
            }),
            None => to_read.push((id, tag)),
        }
    }
    let started = std::time::Instant::now();
    let mut last_report = started;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut results = futures_util::stream::iter(to_read.into_iter().map(|(id, tag)| async move {
        let doc = match config.for_build(&id) {
            Err(e) => Err(e.to_string()),
            Ok(c) => match Builds::new(&c, store).current().await {
                Ok(Some(cur)) => Ok(cur.doc),
                Ok(None) => Err("deleted while listing".to_string()),
                Err(e) => Err(match e.kind {
                    ErrorKind::Store(s) => s.to_string(),
                    k => k.to_string(),
                }),
            },
        };
        (Row { build_id: id, doc }, tag)
    }))
    .buffer_unordered(concurrency);
    while let Some((row, tag)) = results.next().await {
        if let (Some(c), Ok(doc)) = (cache.as_deref_mut(), &row.doc) {
            c.put(&row.build_id, &tag, doc);
        }
        rows.push(row);
        if progress && last_report.elapsed().as_millis() >= 1000 {
            last_report = std::time::Instant::now();
            if tty {
                eprint!("\rbuild-state: read {}/{total} builds ...", rows.len());
            } else {
                eprintln!("build-state: read {}/{total} builds ...", rows.len());
            }
        }
    }
    if progress && tty && started.elapsed().as_millis() >= 1000 {
        eprintln!(
            "\rbuild-state: read {total}/{total} builds in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(c) = cache {
        c.save();
    }
    rows.sort_by(|a, b| a.build_id.cmp(&b.build_id));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    //! The CLI's commands on the in-memory store (and `doctor` on a local
    //! directory), their output read from a buffer.

    use super::*;
    use build_state::model::{ErrorInfo, FailureKind};
    use build_state::store::memory::MemoryStore;

    fn settings() -> Arc<Settings> {
        let source: build_state::protocol::Source =
            serde_json::from_str(r#"{"local_dir": "/nowhere", "prefix": "fleet/"}"#).unwrap();
        Arc::new(Settings::from_source(&source).unwrap())
    }

    fn text(buf: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> String {
        String::from_utf8(std::mem::take(&mut *buf.lock().unwrap())).unwrap()
    }

    /// One sweep of `watch` (of `one` build, or of the prefix): what it said.
    async fn watch_once(
        settings: &Arc<Settings>,
        store: &AnyStore,
        one: Option<&str>,
        cache: Option<cache::Cache>,
    ) -> String {
        let (out, buf) = Out::buffered(false);
        watch::watch(
            settings,
            store,
            one,
            std::time::Duration::from_millis(1),
            Some(std::time::Duration::ZERO),
            cache,
            &out,
        )
        .await
        .unwrap();
        text(&buf)
    }

    async fn walk(store: &AnyStore, id: &str, out: &Out) {
        let config = settings().for_build(id).unwrap();
        for action in [
            Action::Init { restart: false },
            Action::Complete(0),
            Action::Start(5),
            Action::Fail {
                state: 5,
                error: ErrorInfo::new("packer: ssh timeout".into(), FailureKind::Transient),
            },
        ] {
            act_with(&config, store, action, &Extras::default(), out)
                .await
                .unwrap();
        }
    }

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
        let err = act_with(
            &config,
            &store,
            Action::Complete(25),
            &Extras::default(),
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
        act_with(
            &config,
            &store,
            Action::Retry(5),
            &Extras::default(),
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

    #[tokio::test]
    async fn list_reads_every_build_and_names_the_unreadable() {
        let store = AnyStore::Memory(MemoryStore::new());
        let (out, buf) = Out::buffered(false);
        walk(&store, "rhel8-web", &out).await;
        walk(&store, "rhel9-db", &out).await;
        text(&buf);
        if let AnyStore::Memory(m) = &store {
            m.set("fleet/broken/state.json", b"{not json".to_vec());
            m.set("fleet/notes.txt", b"not a build".to_vec());
        }
        let rows = scan(&settings(), &store, 4, false).await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.build_id.as_str()).collect();
        assert_eq!(ids, ["broken", "rhel8-web", "rhel9-db"]);
        out.list(&rows, &settings().retry).unwrap();
        let table = text(&buf);
        assert!(table.starts_with("BUILD"), "{table}");
        assert!(table.contains("broken     -      -"), "{table}");
        assert!(table.contains("unreadable"), "{table}");
        assert!(table.contains("packer: ssh timeout"), "{table}");
    }

    #[tokio::test]
    async fn states_show_the_policy_per_code() {
        let (out, buf) = Out::buffered(false);
        states(&settings(), &out).unwrap();
        let table = text(&buf);
        assert!(
            table.contains(
                "5     kickstart initiated       default  3             30s ×2 ≤ 1h  retry       -"
            ),
            "{table}"
        );
        assert_eq!(table.lines().count(), 22, "a header and 21 codes");
    }

    /// A stage in progress past its timeout is marked stale by list, show
    /// and watch.
    #[tokio::test]
    async fn a_stage_past_its_timeout_is_stale_everywhere() {
        let source: build_state::protocol::Source = serde_json::from_str(
            r#"{"local_dir": "/nowhere", "prefix": "fleet/", "retry": {"states": {"5": {"timeout": "10m"}}}}"#,
        )
        .unwrap();
        let settings = Arc::new(Settings::from_source(&source).unwrap());
        let config = settings.for_build("rhel8-web").unwrap();
        let hour_ago = build_state::now() - chrono::Duration::hours(1);
        let mut doc = None;
        for action in [
            Action::Init { restart: false },
            Action::Complete(0),
            Action::Start(5),
        ] {
            let u = Update::new(action, Actor::default(), hour_ago);
            doc = match build_state::model::apply(doc.as_ref(), &u, &config.rules()).unwrap() {
                build_state::model::Outcome::Write(d) => Some(d),
                other => panic!("{other:?}"),
            };
        }
        let store = MemoryStore::new();
        store.set(&config.state_key(), doc.unwrap().to_bytes());
        let store = AnyStore::Memory(store);
        let (out, buf) = Out::buffered(false);
        let rows = scan(&settings, &store, 1, false).await.unwrap();
        out.list(&rows, &settings.retry).unwrap();
        assert!(text(&buf).contains("in_progress (stale)"));
        out.document(&config, &current(&config, &store).await.unwrap())
            .unwrap();
        assert!(text(&buf).contains("in_progress (stale: past the stage's timeout since"));
        let said = watch_once(&settings, &store, Some("rhel8-web"), None).await;
        assert!(
            said.contains("rhel8-web r3 5 in_progress is stale"),
            "{said}"
        );
        let (json_out, buf) = Out::buffered(true);
        json_out.list(&rows, &settings.retry).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text(&buf)).unwrap();
        assert_eq!(v[0]["stale"], true);
    }

    /// A build that changes between prune's judging and its delete is kept:
    /// the delete carries If-Match on the ETag judged.
    #[tokio::test]
    async fn prune_keeps_a_build_that_changed_meanwhile() {
        use build_state::store::memory::{Fault, FaultyStore, Op};
        let settings = settings();
        let faulty = FaultyStore::new(MemoryStore::new());
        let store = AnyStore::Faulty(faulty);
        let (quiet, _) = Out::buffered(false);
        for id in ["done-a", "done-b"] {
            let config = settings.for_build(id).unwrap();
            act_with(
                &config,
                &store,
                Action::Init { restart: false },
                &Extras::default(),
                &quiet,
            )
            .await
            .unwrap();
            act_with(
                &config,
                &store,
                Action::Cancel {
                    reason: "superseded".into(),
                },
                &Extras::default(),
                &quiet,
            )
            .await
            .unwrap();
        }
        // Just before the first delete, someone restarts done-a.
        let key = settings.for_build("done-a").unwrap().state_key();
        let restarted = {
            let c = settings.for_build("done-a").unwrap();
            let cur = current(&c, &store).await.unwrap();
            let u = Update::new(Action::Restart, Actor::default(), build_state::now());
            match build_state::model::apply(Some(&cur), &u, &c.rules()).unwrap() {
                build_state::model::Outcome::Restart { document, .. } => document.to_bytes(),
                other => panic!("{other:?}"),
            }
        };
        if let AnyStore::Faulty(f) = &store {
            f.on(
                Op::Delete,
                1,
                Fault::Interleave(Box::new(move |m: &MemoryStore| m.set(&key, restarted))),
            );
        }
        let (out, buf) = Out::buffered(false);
        retention::prune(
            &settings,
            &store,
            std::time::Duration::ZERO,
            false,
            None,
            &out,
        )
        .await
        .unwrap();
        let table = text(&buf);
        let line = |id: &str| {
            table
                .lines()
                .find(|l| l.starts_with(id))
                .unwrap()
                .to_string()
        };
        let a = line("done-a");
        assert!(
            a.contains(" kept ")
                && a.contains("changed since it was judged (its delete was refused)"),
            "{table}"
        );
        let b = line("done-b");
        assert!(
            b.contains(" deleted ") && b.contains("finished and old enough"),
            "{table}"
        );
        let rows = scan(&settings, &store, 1, false).await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.build_id.as_str()).collect();
        assert_eq!(ids, ["done-a"]);
        assert_eq!(rows[0].doc.as_ref().unwrap().run, 2, "the restart survived");
    }

    /// A second scan of an unchanged fleet reads no document; a changed
    /// build is read again; a corrupt cache is rebuilt, never trusted.
    #[tokio::test]
    async fn the_cache_reads_only_what_changed() {
        use build_state::store::memory::{FaultyStore, Op};
        let settings = settings();
        let store = AnyStore::Faulty(FaultyStore::new(MemoryStore::new()));
        let (quiet, _) = Out::buffered(false);
        for id in ["a", "b", "c"] {
            walk(&store, id, &quiet).await;
        }
        let gets = |s: &AnyStore| match s {
            AnyStore::Faulty(f) => f.calls(Op::Get),
            _ => unreachable!(),
        };
        let dir = tempfile::tempdir().unwrap();
        let scan_once = |store: &'static AnyStore| {
            let dir = dir.path().to_path_buf();
            let settings = settings.clone();
            async move {
                let mut cache = cache::Cache::open_in(dir, &settings);
                scan_cached(&settings, store, 4, false, Some(&mut cache))
                    .await
                    .unwrap()
            }
        };
        let store: &'static AnyStore = Box::leak(Box::new(store));
        let g0 = gets(store);
        let first = scan_once(store).await;
        assert_eq!(gets(store) - g0, 3, "a cold scan reads every document");
        let g1 = gets(store);
        let second = scan_once(store).await;
        assert_eq!(gets(store) - g1, 0, "an unchanged fleet: its listing only");
        let docs = |rows: &[Row]| {
            rows.iter()
                .map(|r| r.doc.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(docs(&first), docs(&second));
        // One build changes: it alone is read.
        let config = settings.for_build("b").unwrap();
        act_with(&config, store, Action::Retry(5), &Extras::default(), &quiet)
            .await
            .unwrap();
        let g2 = gets(store);
        let third = scan_once(store).await;
        assert!(
            gets(store) - g2 >= 1 && gets(store) - g2 <= 2,
            "the changed build only"
        );
        assert_eq!(third[1].doc.as_ref().unwrap().status, Status::Pending);
        // A corrupt cache is rebuilt: every document read again.
        let path = cache::Cache::open_in(dir.path().to_path_buf(), &settings)
            .path()
            .to_path_buf();
        std::fs::write(&path, b"{not json").unwrap();
        let g3 = gets(store);
        let fourth = scan_once(store).await;
        assert_eq!(gets(store) - g3, 3);
        assert_eq!(docs(&fourth), docs(&third));
    }

    /// A long-lived cache (`serve`) writes its file only when a scan read
    /// something new.
    #[tokio::test]
    async fn a_long_lived_cache_is_written_when_it_changed() {
        let settings = settings();
        let store = AnyStore::Memory(MemoryStore::new());
        let (quiet, _) = Out::buffered(false);
        walk(&store, "a", &quiet).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cache = cache::Cache::open_in(dir.path().to_path_buf(), &settings);
        let path = cache.path().to_path_buf();
        scan_cached(&settings, &store, 4, false, Some(&mut cache))
            .await
            .unwrap();
        assert!(path.exists(), "the first scan saved what it read");
        std::fs::remove_file(&path).unwrap();
        scan_cached(&settings, &store, 4, false, Some(&mut cache))
            .await
            .unwrap();
        assert!(!path.exists(), "an unchanged fleet: nothing written");
        walk(&store, "b", &quiet).await;
        scan_cached(&settings, &store, 4, false, Some(&mut cache))
            .await
            .unwrap();
        assert!(path.exists(), "a new build: saved again");
    }

    /// An idle watch of a prefix costs listings only.
    #[tokio::test]
    async fn an_idle_watch_sweep_is_a_listing() {
        use build_state::store::memory::{FaultyStore, Op};
        let store = AnyStore::Faulty(FaultyStore::new(MemoryStore::new()));
        let (quiet, _) = Out::buffered(false);
        for id in ["a", "b", "c"] {
            walk(&store, id, &quiet).await;
        }
        let AnyStore::Faulty(f) = &store else {
            unreachable!()
        };
        let (gets, lists) = (f.calls(Op::Get), f.calls(Op::List));
        let (out, _) = Out::buffered(false);
        watch::watch(
            &settings(),
            &store,
            None,
            std::time::Duration::from_millis(5),
            Some(std::time::Duration::from_millis(60)),
            None,
            &out,
        )
        .await
        .unwrap();
        let AnyStore::Faulty(f) = &store else {
            unreachable!()
        };
        assert!(f.calls(Op::List) - lists >= 3, "several sweeps");
        assert_eq!(
            f.calls(Op::Get) - gets,
            3,
            "each build read once, then only listed"
        );
    }

    /// A watch of a prefix starts from the cache: only the builds that
    /// changed since are read, and it says the same as without the cache.
    #[tokio::test]
    async fn a_watch_starts_from_the_cache() {
        use build_state::store::memory::{FaultyStore, Op};
        let settings = settings();
        let store = AnyStore::Faulty(FaultyStore::new(MemoryStore::new()));
        let (quiet, _) = Out::buffered(false);
        for id in ["a", "b", "c"] {
            walk(&store, id, &quiet).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cache = cache::Cache::open_in(dir.path().to_path_buf(), &settings);
        scan_cached(&settings, &store, 4, false, Some(&mut cache))
            .await
            .unwrap();
        let config = settings.for_build("b").unwrap();
        act_with(
            &config,
            &store,
            Action::Retry(5),
            &Extras::default(),
            &quiet,
        )
        .await
        .unwrap();
        let gets = |s: &AnyStore| match s {
            AnyStore::Faulty(f) => f.calls(Op::Get),
            _ => unreachable!(),
        };
        let once = |cache: Option<cache::Cache>| {
            let (settings, store) = (&settings, &store);
            async move {
                let before = gets(store);
                let said = watch_once(settings, store, None, cache).await;
                (said, gets(store) - before)
            }
        };
        let (cold, cold_reads) = once(None).await;
        let (warm, warm_reads) = once(Some(cache::Cache::open_in(
            dir.path().to_path_buf(),
            &settings,
        )))
        .await;
        assert_eq!(cold_reads, 3);
        assert_eq!(warm_reads, 1, "only the build that changed is read");
        assert_eq!(warm, cold);
        assert!(cold.contains("b r5 retry"), "{cold}");
    }

    #[tokio::test]
    async fn watch_prints_where_each_build_stands() {
        let store = AnyStore::Memory(MemoryStore::new());
        let (quiet, _) = Out::buffered(false);
        walk(&store, "rhel8-web", &quiet).await;
        let said = watch_once(&settings(), &store, None, None).await;
        assert!(
            said.contains("rhel8-web r4 fail 5 → 5 failed (attempt 1)"),
            "{said}"
        );
    }

    #[tokio::test]
    async fn doctor_passes_on_a_sound_store_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let source: build_state::protocol::Source =
            serde_json::from_value(serde_json::json!({"local_dir": dir.path()})).unwrap();
        let settings = Settings::from_source(&source).unwrap();
        let (out, buf) = Out::buffered(false);
        doctor::doctor(&settings, &out).await.unwrap();
        let said = text(&buf);
        for want in [
            "compare-and-swap  ok",
            "race              ok",
            "cleanup           ok",
        ] {
            assert!(said.contains(want), "{want:?} in:\n{said}");
        }
        let left: Vec<_> = walkdir(dir.path());
        assert!(left.is_empty(), "{left:?}");
    }

    fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walkdir(&e.path()));
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
        out
    }
}
