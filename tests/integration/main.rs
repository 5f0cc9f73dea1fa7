//! Integration tests: the real programs, JSON on stdin, a real store.

mod proxy;
mod util;

mod check;
pub(crate) mod cli;
mod clocks;
mod concurrency;
mod docs;
mod egress;
mod errors;
mod get;
mod handoff;
mod hostile;
mod humans;
mod iam;
mod image;
mod model;
mod pipelines;
pub(crate) mod policies;
mod put;
mod retention;
mod servers;
mod simulate;
