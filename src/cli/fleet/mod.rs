//! The fleet's views: every build under the prefix, as a table (`list`),
//! a stream of transitions (`watch`), a page (`report`), metrics and a live
//! dashboard (`serve`). All read through [`scan`](super::scan) and its cache.

pub(crate) mod cache;
pub(crate) mod list;
mod metrics;
mod report;
pub(crate) mod scan;
mod serve;
mod watch;

use super::{Ctx, duration_flag};
use crate::model::Status;
use anyhow::{Result, anyhow};
use scan::scan_cached;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub(super) enum Command {
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
    /// Write a self-contained HTML report of every build under the prefix
    Report {
        #[arg(long, value_name = "FILE.html")]
        out: PathBuf,
    },
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
        /// A host name requests may use besides IP addresses and localhost
        /// (repeatable; e.g. the name of a reverse proxy)
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
    },
}

pub(super) async fn run(command: Command, ctx: &Ctx<'_>) -> Result<()> {
    let out = ctx.out;
    let (config, store) = ctx.prefix().await?;
    let cache = || {
        (!ctx.no_cache)
            .then(|| cache::Cache::open(&config, &out.notes))
            .flatten()
    };
    match command {
        Command::List {
            status,
            state,
            concurrency,
        } => {
            let status = status
                .map(|s| Status::parse(&s).ok_or_else(|| anyhow!("--status {s:?} is not a status")))
                .transpose()?;
            let rows = scan_cached(
                &config,
                &store,
                concurrency.max(1),
                Some(&out.notes),
                cache().as_mut(),
            )
            .await?;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| match &r.doc {
                    Ok(d) => {
                        status.is_none_or(|s| d.status == s) && state.is_none_or(|n| d.state == n)
                    }
                    Err(_) => status.is_none() && state.is_none(),
                })
                .collect();
            out.list(&rows, &config.retry, ctx.now())
        }
        Command::Watch {
            build_id,
            interval,
            for_,
        } => {
            let interval = duration_flag("--interval", &interval)?;
            let until = for_.map(|d| duration_flag("--for", &d)).transpose()?;
            // Watching a prefix starts from the fleet commands' cache.
            let cache = build_id.is_none().then(cache).flatten();
            watch::watch(
                &config,
                &store,
                build_id.as_deref(),
                (interval, until),
                cache,
                out,
                &*ctx.clock,
            )
            .await
        }
        Command::Report { out: path } => {
            let rows = scan_cached(&config, &store, 32, Some(&out.notes), cache().as_mut()).await?;
            report::write(&config, &rows, &path, ctx.now())?;
            out.report(&path, rows.len())
        }
        Command::Metrics { out: path } => {
            let rows = scan_cached(&config, &store, 32, None, cache().as_mut()).await?;
            let text = metrics::render(&config, &rows, ctx.now());
            match path {
                Some(p) => metrics::write_atomically(&p, &text)
                    .map_err(|e| anyhow!("writing {}: {e}", p.display())),
                None => out.write(&text),
            }
        }
        Command::Serve {
            listen,
            allow_hosts,
        } => {
            let notes = out.notes.clone();
            serve::serve(
                config,
                store,
                &listen,
                allow_hosts,
                ctx.no_cache,
                notes,
                ctx.clock.clone(),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    //! Staleness in every view.

    use super::{scan::scan, watch::tests::watch_once};
    use crate::cli::build::current;
    use crate::cli::terminal::Out;
    use crate::cli::testing::text;
    use crate::config::Settings;
    use crate::model::{Action, Actor, Update};
    use crate::store::AnyStore;
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;

    /// A stage in progress past its timeout is marked stale by list, show
    /// and watch.
    #[tokio::test]
    async fn a_stage_past_its_timeout_is_stale_everywhere() {
        let source: crate::protocol::Source = serde_json::from_str(
            r#"{"local_dir": "/nowhere", "prefix": "fleet/", "retry": {"states": {"5": {"timeout": "10m"}}}}"#,
        )
        .unwrap();
        let settings = Arc::new(Settings::from_source(&source).unwrap());
        let config = settings.for_build("rhel8-web").unwrap();
        let hour_ago = crate::now() - chrono::Duration::hours(1);
        let mut doc = None;
        for action in [
            Action::Init { restart: false },
            Action::Complete(0),
            Action::Start(5),
        ] {
            let u = Update::new(action, Actor::default(), hour_ago);
            doc = match crate::model::apply(doc.as_ref(), &u, &config.rules()).unwrap() {
                crate::model::Outcome::Write(d) => Some(d),
                other => panic!("{other:?}"),
            };
        }
        let store = MemoryStore::new();
        store.set(&config.state_key(), doc.unwrap().to_bytes());
        let store = AnyStore::Memory(store);
        let (out, buf) = Out::buffered(false);
        let rows = scan(&settings, &store, 1, None).await.unwrap();
        out.list(&rows, &settings.retry, crate::now()).unwrap();
        assert!(text(&buf).contains("in_progress (stale)"));
        out.document(
            &config,
            &current(&config, &store).await.unwrap(),
            None,
            crate::now(),
        )
        .unwrap();
        let shown = text(&buf);
        assert!(
            shown.contains("in_progress (stale: no sign of life: in progress since"),
            "{shown}"
        );
        assert!(shown.contains("needs a human  stale since"), "{shown}");
        let said = watch_once(&settings, &store, Some("rhel8-web"), None).await;
        assert!(
            said.contains("rhel8-web r3 5 in_progress is stale"),
            "{said}"
        );
        let (json_out, buf) = Out::buffered(true);
        json_out.list(&rows, &settings.retry, crate::now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text(&buf)).unwrap();
        assert_eq!(v[0]["stale"], true);
        assert_eq!(v[0]["needs_human"]["kind"], "stale");
    }
}
