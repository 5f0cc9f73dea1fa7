//! The `build-state` command line: inspect and repair states, run inside
//! image builds, migrate from the old scripts, and the fleet's views. Every
//! command goes through the same source parser, translator, store and
//! transitions as the resource.
//!
//! This file is the schema and the dispatch; each group of commands lives
//! in a room of its own with its own `run`: one build's actions
//! (`build`), the fleet's views (`fleet`), operations on stored builds
//! (`ops`). The fleet scan is `scan`.

mod atc;
mod build;
mod fleet;
mod ops;
mod simulate;
mod source;
mod terminal;
#[cfg(test)]
mod testing;

use crate::Notes;
use crate::config::Settings;
use crate::store::AnyStore;
use anyhow::{Result, anyhow};
use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use terminal::Out;

pub(crate) use fleet::scan::Row;

/// Exit codes, as documented in the README: an error.
pub(crate) const EXIT_ERROR: u8 = 1;
/// Exit codes: a usage error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit codes: no such build.
pub(crate) const EXIT_NOT_FOUND: u8 = 3;

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
struct Cli {
    #[command(flatten)]
    source: source::SourceArgs,
    #[command(flatten)]
    atc: atc::AtcArgs,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Read every document (list, watch, report, metrics, serve): no local cache
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Build(build::Command),
    #[command(flatten)]
    Fleet(fleet::Command),
    #[command(flatten)]
    Ops(ops::Command),
    /// Play a pipeline on virtual time before fly set-pipeline: Concourse's
    /// scheduling, the resource in memory, the tasks as a scenario says
    Simulate(simulate::Args),
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
    /// Run the resource's check (request JSON on stdin), as Concourse does
    Check,
    /// Run the resource's in (request JSON on stdin) into DIR
    In { dir: PathBuf },
    /// Run the resource's out (request JSON on stdin) from DIR
    Out { dir: PathBuf },
}

/// What every room is given: where the source comes from, the terminal,
/// and whether the fleet cache may be used.
pub(crate) struct Ctx<'a> {
    pub(crate) source: &'a source::SourceArgs,
    pub(crate) atc: &'a atc::AtcArgs,
    pub(crate) out: &'a Out,
    pub(crate) no_cache: bool,
    /// What the views judge ages and staleness by (this process's clock;
    /// a test's own). Actions take their time from the store's clock.
    pub(crate) clock: Arc<dyn crate::app::Clock + Send + Sync>,
}

impl Ctx<'_> {
    /// Now, by the views' clock.
    pub(crate) fn now(&self) -> crate::model::Timestamp {
        self.clock.now()
    }

    /// One build's configuration (the source's, or the policy its
    /// document recorded) and its store: how every command about one
    /// build opens it.
    pub(crate) async fn build(
        &self,
        build_id: &str,
    ) -> Result<(crate::config::Config, crate::store::AnyStore), Error> {
        Ok(self.source.build(build_id, &self.out.notes).await?)
    }

    /// The prefix's settings and its store: how every command about the
    /// fleet (or the bucket) opens it.
    pub(crate) async fn prefix(&self) -> anyhow::Result<(Arc<Settings>, AnyStore)> {
        let settings = self.source.settings()?;
        let store = AnyStore::open(&settings)
            .await
            .map_err(|e| anyhow!("opening the store: {e}"))?;
        Ok((settings, store))
    }
}

/// How a command failed, and the exit code that says so (as the README
/// documents): each failure is classified where it happens, never guessed
/// from a message afterwards.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// No such build (no document under its key): exit 3.
    #[error("{0}")]
    NotFound(String),
    /// Input the command cannot use (`simulate`'s unreadable pipeline or
    /// scenario): exit 2, as a usage error.
    #[error("{0}")]
    Usage(String),
    /// Anything else (a refused transition, the store, unreadable input):
    /// exit 1.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl Error {
    /// The exit code.
    pub(crate) fn code(&self) -> u8 {
        match self {
            Error::NotFound(_) => EXIT_NOT_FOUND,
            Error::Usage(_) => EXIT_USAGE,
            Error::Failed(_) => EXIT_ERROR,
        }
    }
}

/// The engine's errors, classified: a build with no document is not found.
impl From<crate::engine::Error> for Error {
    fn from(e: crate::engine::Error) -> Error {
        match &e.kind {
            crate::engine::ErrorKind::Refused(crate::model::Refusal::NoDocument { .. }) => {
                Error::NotFound(e.to_string())
            }
            _ => Error::Failed(e.into()),
        }
    }
}

/// Runs the CLI on `args` (the first is the program's name); notes,
/// warnings and errors go to `notes`, results to stdout.
pub fn main(args: impl Iterator<Item = OsString>, notes: Arc<Notes>) -> Result<ExitCode> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return Ok(ExitCode::from(code));
        }
    };
    let out = Out::new(cli.json, notes.clone());
    let result = if let Command::Simulate(args) = &cli.command {
        // Its own runtime, on virtual time.
        simulate::run(args, &cli.source.vars, &cli.source.yaml_vars, &out)
    } else {
        crate::run_to_end(run(cli, &out))?.map(|()| 0)
    };
    // The one place a command's error is printed.
    Ok(ExitCode::from(match result {
        Ok(code) => code,
        Err(e) => {
            notes.note(format!("error: {e}"));
            e.code()
        }
    }))
}

async fn run(cli: Cli, out: &Out) -> Result<(), Error> {
    let ctx = Ctx {
        source: &cli.source,
        atc: &cli.atc,
        out,
        no_cache: cli.no_cache,
        clock: Arc::new(crate::app::SystemClock),
    };
    match cli.command {
        Command::Build(c) => build::run(c, &ctx).await,
        Command::Fleet(c) => Ok(fleet::run(c, &ctx).await?),
        Command::Ops(c) => Ok(ops::run(c, &ctx).await?),
        // Played by `main` on a runtime of its own.
        Command::Simulate(_) => Ok(()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "build-state", &mut script);
            Ok(out.write(&String::from_utf8_lossy(&script))?)
        }
        Command::Check => Ok(resource_cmd(crate::resource::Program::Check, out).await?),
        Command::In { dir } => Ok(resource_cmd(crate::resource::Program::In(dir), out).await?),
        Command::Out { dir } => Ok(resource_cmd(crate::resource::Program::Out(dir), out).await?),
    }
}

async fn resource_cmd(program: crate::resource::Program, out: &Out) -> Result<()> {
    let reply = program.answer(std::io::stdin().lock(), &out.notes).await?;
    out.write(&String::from_utf8_lossy(&reply))
}

/// A duration flag, read as the source's durations are.
pub(crate) fn duration_flag(flag: &str, text: &str) -> Result<std::time::Duration> {
    crate::model::time::parse(text)
        .map_err(|e| anyhow!("{flag}: {e}; write e.g. 30s, 5m, 1h or 30d"))
}

pub(crate) use crate::store::local::write_atomically;
