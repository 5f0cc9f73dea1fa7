//! Operations on stored builds: migrating from the old databases
//! (`import-sqlite`), checking the store (`doctor`), retention (`prune`)
//! and putting a stored version back (`restore`).

mod doctor;
mod import;
mod retention;

use super::{Ctx, duration_flag};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub(super) enum Command {
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
    /// Check credentials, bucket, region, path style and conditional writes
    Doctor,
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
}

pub(super) async fn run(command: Command, ctx: &Ctx<'_>) -> Result<()> {
    let (src, out) = (ctx.source, ctx.out);
    match command {
        Command::ImportSqlite {
            databases,
            dry_run,
            force,
        } => {
            let (config, store) = ctx.prefix().await?;
            import::import(&config, &store, &databases, dry_run, force, out).await
        }
        Command::Doctor => {
            let settings = src.settings()?;
            doctor::doctor(&settings, out, &*ctx.clock).await
        }
        Command::Prune {
            older_than,
            dry_run,
            archive_to,
        } => {
            let (settings, store) = ctx.prefix().await?;
            let older_than = duration_flag("--older-than", &older_than)?;
            let cutoff = ctx.now()
                - chrono::Duration::from_std(older_than)
                    .map_err(|_| anyhow::anyhow!("--older-than is too long"))?;
            retention::prune(
                &settings,
                &store,
                (older_than, cutoff),
                dry_run,
                archive_to.as_deref(),
                out,
            )
            .await
        }
        Command::Restore {
            build_id,
            version_id,
            yes,
        } => {
            let (config, store) = ctx.build(&build_id).await?;
            retention::restore(&config, &store, version_id.as_deref(), yes, out).await
        }
    }
}
