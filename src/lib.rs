//! build-state: a Concourse resource type that records each build's
//! milestone (a state code) and status in one JSON document per build.

pub mod model;

/// The current time, rounded to what a document stores (milliseconds), so
/// that a value survives a round trip through JSON unchanged.
pub fn now() -> model::Timestamp {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(3)
}

pub mod config;
pub mod protocol;
