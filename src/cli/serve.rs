//! `serve --listen ADDR`: a read-only HTTP server for the fleet: `/metrics`,
//! `/api/builds` (the rows of `list --json`), `/api/builds/ID` (a document),
//! `/api/stages` (failures and time per stage) and `/`, a live dashboard that
//! refreshes itself (one self-contained page: no build step, no CDN). It
//! only lists and reads, with the fleet commands' cache; SIGTERM or Ctrl-C
//! stops it cleanly.

use super::{Row, cache, metrics, output, scan::scan_cached};
use crate::config::Settings;
use crate::engine::Builds;
use crate::store::AnyStore;
use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

const DASHBOARD: &str = include_str!("dashboard.html");

/// The server's state: the settings, the store, and the cache of what it
/// read (so that a refresh of an unchanged fleet costs a listing).
struct Fleet {
    settings: Arc<Settings>,
    store: AnyStore,
    cache: RefCell<Option<cache::Cache>>,
}

impl Fleet {
    async fn rows(&self) -> Result<Vec<Row>> {
        // The cache is taken out while the scan runs (requests are served
        // one at a time).
        let mut cache = self.cache.borrow_mut().take();
        let rows = scan_cached(&self.settings, &self.store, 32, None, cache.as_mut()).await;
        *self.cache.borrow_mut() = cache;
        rows
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("a valid response")
}

fn json_reply(v: &Value) -> Reply {
    reply(StatusCode::OK, "application/json", v.to_string())
}

/// Failures and time spent per stage, and the builds there now, across the
/// builds: every stage of the ladder.
fn stages(settings: &Settings, rows: &[Row]) -> Value {
    let docs = rows.iter().filter_map(|r| r.doc.as_ref().ok());
    let totals = super::report::stage_totals(docs, crate::now());
    Value::Array(
        settings
            .ladder
            .steps()
            .iter()
            .map(|s| {
                let t = totals.get(&s.code).copied().unwrap_or_default();
                json!({"state": s.code, "state_name": s.name, "failures": t.failures,
                       "seconds": t.seconds, "builds": t.builds})
            })
            .collect(),
    )
}

async fn route(fleet: &Fleet, req: &Request<hyper::body::Incoming>) -> Result<Reply> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "read only: GET\n",
        ));
    }
    let path = req.uri().path();
    Ok(match path {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        "/metrics" => {
            let rows = fleet.rows().await?;
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&fleet.settings, &rows, crate::now()),
            )
        }
        "/api/builds" => {
            let rows = fleet.rows().await?;
            json_reply(&output::rows_json(
                &rows,
                &fleet.settings.retry,
                crate::now(),
            ))
        }
        "/api/stages" => {
            let rows = fleet.rows().await?;
            json_reply(&stages(&fleet.settings, &rows))
        }
        _ => match path.strip_prefix("/api/builds/") {
            Some(id) => match fleet.settings.for_build(id) {
                Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                Ok(config) => match Builds::new(&config, &fleet.store).current().await {
                    Ok(Some(c)) => json_reply(&serde_json::to_value(&c.doc)?),
                    Ok(None) => reply(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("{id} has no state\n"),
                    ),
                    Err(e) => reply(StatusCode::BAD_GATEWAY, "text/plain", format!("{e}\n")),
                },
            },
            None => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        },
    })
}

/// Serves until SIGTERM or Ctrl-C.
pub(super) async fn serve(
    settings: Arc<Settings>,
    store: AnyStore,
    listen: &str,
    no_cache: bool,
    notes: Arc<crate::Notes>,
) -> Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:8080"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let cache = (!no_cache)
        .then(|| cache::Cache::open(&settings, &notes))
        .flatten();
    notes.note(format!(
        "serving {} on http://{} (read only; Ctrl-C or SIGTERM stops)",
        settings.location(settings.prefix()),
        listener.local_addr()?
    ));
    let fleet = Fleet {
        settings,
        store,
        cache: RefCell::new(cache),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        // One request per connection, one connection at a time: a read-only
        // page for a few people, and no shared state to lock.
        let fleet = &fleet;
        let service = hyper::service::service_fn(move |req| async move {
            match route(fleet, &req).await {
                Ok(r) => Ok::<_, std::convert::Infallible>(r),
                Err(e) => Ok(reply(
                    StatusCode::BAD_GATEWAY,
                    "text/plain",
                    format!("{e:#}\n"),
                )),
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        // A client that stalls must not hold the server.
        match tokio::time::timeout(std::time::Duration::from_secs(60), conn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => notes.note(format!("a connection failed: {e}")),
            Err(_) => notes.note("a connection timed out"),
        }
    }
    notes.note("stopped");
    Ok(())
}
