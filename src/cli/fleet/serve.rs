//! `serve --listen ADDR`: a read-only HTTP server for the fleet: `/metrics`,
//! `/api/builds` (the rows of `list --json`), `/api/builds/ID` (a document),
//! `/api/stages` (failures and time per stage) and `/`, a live dashboard that
//! refreshes itself (one self-contained page: no build step, no CDN). It
//! only lists and reads, with the fleet commands' cache; SIGTERM or Ctrl-C
//! stops it cleanly.
//!
//! Connections are served concurrently (a task each, on the one thread):
//! a client that connects and sends nothing, or stalls, holds only its own
//! connection, for at most [`HEADER_TIMEOUT`]. Concurrent requests for the
//! fleet share one scan (a result younger than [`FRESH`] is reused), and a
//! scan that the store does not answer in [`STORE_WAIT`] is a 504. The
//! `Host` header must name the address served (or a name given with
//! `--allow-host`), so a page that reaches it through DNS rebinding gets
//! nothing.

use crate::config::Settings;
use crate::engine::Builds;
use crate::store::AnyStore;
use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use {super::cache, super::metrics, super::scan::scan_cached, crate::cli::Row};

/// How long a connection may take to send its request's headers.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a whole connection is served.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a scan of the fleet may wait on the store.
pub(crate) const STORE_WAIT: Duration = Duration::from_secs(20);
/// A scan this young answers the next request too.
pub(crate) const FRESH: Duration = Duration::from_millis(250);
/// How long SIGTERM waits for the requests in flight.
const DRAIN: Duration = Duration::from_secs(4);

const DASHBOARD: &str = include_str!("dashboard.html");

/// The server's state: the settings, the store, the cache of what it read
/// (so that a refresh of an unchanged fleet costs a listing) and the last
/// scan.
struct Fleet {
    settings: Arc<Settings>,
    store: AnyStore,
    /// The hosts a request may name (`Host`), besides IP addresses.
    hosts: Vec<String>,
    /// Held while a scan runs (one at a time), with the cache it reads
    /// through.
    scan: tokio::sync::Mutex<Option<cache::Cache>>,
    /// The last scan, and what was rendered from it.
    last: std::cell::RefCell<Option<Last>>,
    /// What the views judge ages and staleness by.
    clock: Arc<dyn crate::app::Clock + Send + Sync>,
}

/// The last scan, and what was rendered from it (each view once per scan:
/// 200 clients asking for /metrics within a second cost one rendering).
struct Last {
    at: Instant,
    rows: Rc<Vec<Row>>,
    rendered: std::collections::HashMap<&'static str, Bytes>,
}

/// A scan that took longer than [`STORE_WAIT`].
#[derive(Debug, thiserror::Error)]
#[error("the store did not answer within {}s", STORE_WAIT.as_secs())]
struct StoreTimeout;

impl Fleet {
    /// The view `name` of the fleet, rendered by `render` from a scan at
    /// most [`FRESH`] old. One scan runs at a time: while it runs, requests
    /// are answered from the previous one (never more than a scan's time
    /// older than [`FRESH`]); only the very first requests wait for it.
    async fn view(
        &self,
        name: &'static str,
        render: impl FnOnce(&[Row]) -> Bytes,
    ) -> Result<Bytes> {
        loop {
            let fresh = self
                .last
                .borrow()
                .as_ref()
                .is_some_and(|l| l.at.elapsed() < FRESH);
            if !fresh {
                match self.scan.try_lock() {
                    Ok(mut cache) => {
                        let rows = tokio::time::timeout(
                            STORE_WAIT,
                            scan_cached(&self.settings, &self.store, 32, None, cache.as_mut()),
                        )
                        .await
                        .map_err(|_| StoreTimeout)??;
                        *self.last.borrow_mut() = Some(Last {
                            at: Instant::now(),
                            rows: Rc::new(rows),
                            rendered: Default::default(),
                        });
                    }
                    // A scan is running: answer from the last one, if any.
                    Err(_) if self.last.borrow().is_some() => {}
                    Err(_) => {
                        drop(self.scan.lock().await);
                        continue;
                    }
                }
            }
            let mut last = self.last.borrow_mut();
            let last = last.as_mut().expect("a scan was made");
            if let Some(b) = last.rendered.get(name) {
                return Ok(b.clone());
            }
            let body = render(&last.rows);
            last.rendered.insert(name, body.clone());
            return Ok(body);
        }
    }

    /// Whether `Host` names this server: an IP address, `localhost`, or a
    /// name given with `--allow-host` (a DNS-rebinding page names its own).
    fn host_allowed(&self, req: &Request<hyper::body::Incoming>) -> bool {
        let Some(host) = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
        else {
            return false;
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => {
                return v6
                    .split(']')
                    .next()
                    .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
            }
            None => host.rsplit_once(':').map_or(host, |(n, _)| n),
        };
        name.parse::<std::net::Ipv4Addr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

type Reply = Response<Full<Bytes>>;

/// The dashboard's policy: its own scripts and styles (inline, one page),
/// its API, nothing else, in no frame.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("content-security-policy", CSP)
        .header("referrer-policy", "no-referrer");
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r = r.header("allow", "GET, HEAD");
    }
    r.body(Full::new(body.into())).expect("a valid response")
}

fn json_reply(v: &Value) -> Reply {
    reply(StatusCode::OK, "application/json", v.to_string())
}

/// Failures and time spent per stage, and the builds there now, across the
/// builds: every stage of the ladder.
fn stages(settings: &Settings, rows: &[Row], now: crate::model::Timestamp) -> Value {
    let docs = rows.iter().filter_map(|r| r.doc.as_ref().ok());
    let totals = super::report::stage_totals(docs, now);
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
    if !fleet.host_allowed(req) {
        return Ok(reply(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain",
            "this server answers requests for its own address only (Host header); give --allow-host NAME to serve under a name\n",
        ));
    }
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
            let body = fleet
                .view("metrics", |rows| {
                    metrics::render(&fleet.settings, rows, fleet.clock.now()).into()
                })
                .await?;
            reply(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/api/builds" => {
            let body = fleet
                .view("builds", |rows| {
                    super::list::rows_json(rows, &fleet.settings.retry, fleet.clock.now())
                        .to_string()
                        .into()
                })
                .await?;
            reply(StatusCode::OK, "application/json", body)
        }
        "/api/stages" => {
            let body = fleet
                .view("stages", |rows| {
                    stages(&fleet.settings, rows, fleet.clock.now())
                        .to_string()
                        .into()
                })
                .await?;
            reply(StatusCode::OK, "application/json", body)
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
    allow_hosts: Vec<String>,
    no_cache: bool,
    notes: Arc<crate::Notes>,
    clock: Arc<dyn crate::app::Clock + Send + Sync>,
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
    let fleet = Rc::new(Fleet {
        settings,
        store,
        hosts: allow_hosts,
        scan: tokio::sync::Mutex::new(cache),
        last: std::cell::RefCell::new(None),
        clock,
    });
    let local = tokio::task::LocalSet::new();
    local
        .run_until(accept(listener, fleet.clone(), notes.clone()))
        .await?;
    if let Ok(mut cache) = fleet.scan.try_lock()
        && let Some(c) = cache.as_mut()
    {
        c.save();
    }
    notes.note("stopped");
    Ok(())
}

/// Accepts connections until SIGTERM or Ctrl-C, each served by a task of
/// its own; then waits at most [`DRAIN`] for the ones in flight.
async fn accept(
    listener: tokio::net::TcpListener,
    fleet: Rc<Fleet>,
    notes: Arc<crate::Notes>,
) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    notes.note(format!("accepting a connection failed: {e}"));
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            // Finished connections are reaped as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (fleet, notes) = (fleet.clone(), notes.clone());
        tasks.spawn_local(async move { connection(stream, fleet, notes).await });
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        notes.note(format!(
            "{} still open after {}s; closing",
            crate::cli::terminal::count(tasks.len() as u64, "connection"),
            DRAIN.as_secs()
        ));
        tasks.abort_all();
    }
    Ok(())
}

/// Serves one connection: one request (no keep-alive), its headers within
/// [`HEADER_TIMEOUT`], the whole within [`CONNECTION_TIMEOUT`].
async fn connection(stream: tokio::net::TcpStream, fleet: Rc<Fleet>, notes: Arc<crate::Notes>) {
    let service = hyper::service::service_fn(move |req| {
        let fleet = fleet.clone();
        async move {
            Ok::<_, std::convert::Infallible>(match route(&fleet, &req).await {
                Ok(r) => r,
                Err(e) if e.is::<StoreTimeout>() => {
                    reply(StatusCode::GATEWAY_TIMEOUT, "text/plain", format!("{e}\n"))
                }
                Err(e) => reply(StatusCode::BAD_GATEWAY, "text/plain", format!("{e:#}\n")),
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        // A client that sent nothing in time, or went away: its own business.
        Ok(Err(e)) if e.is_timeout() || e.is_incomplete_message() => {}
        Ok(Err(e)) => notes.note(format!("a connection failed: {e}")),
        Err(_) => notes.note("a connection took too long; closed"),
    }
}
