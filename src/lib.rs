//! build-state: a Concourse resource type that records each build's
//! milestone (a state code) and status in one JSON document per build.
#![warn(missing_docs)]

pub mod model;

/// The current time, rounded to what a document stores (milliseconds), so
/// that a value survives a round trip through JSON unchanged.
pub fn now() -> model::Timestamp {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(3)
}

pub mod app;
pub mod config;
pub mod engine;
pub mod inputs;
pub mod protocol;
pub mod resource;
pub mod store;

/// The runtime every program runs on: one thread (a step is one request at
/// a time; the CLI's scans use concurrency within it).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
pub mod pipeline;
