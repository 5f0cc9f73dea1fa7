//! Integration tests: the real programs, JSON on stdin, a real store. A
//! test goes in the module of the behaviour it checks; one that uses the S3
//! server lives in a module named `s3` (the Ceph pass selects them), most
//! through `both_stores!`.

// The harness.
/// A misbehaving S3 server: a proxy in front of the real one.
mod proxy;
/// Running the programs as Concourse does, worlds on either store, servers.
mod util;

// The resource's programs, as Concourse runs them.
/// `check`: versions of the current run, and gates.
mod check;
/// Every bad input the README's Errors section names.
mod errors;
/// `in`: the files a get writes, old revisions, `require`.
mod get;
/// A put's `check:` hand-off to the ATC's webhooks.
mod handoff;
/// Approvals and heartbeats.
mod humans;
/// Stage policies: ranges, a human's stage, start-over, timeouts.
pub(crate) mod policies;
/// `out`: every action, on both stores.
mod put;
/// Cloud resources an attempt leaves behind: recorded, leaked, released.
mod resources;

// Promises at the edges.
/// One clock: deadlines judged on the store's clock, workers' clocks off.
mod clocks;
/// Many writers at once on one document: no lost update.
mod concurrency;
/// Workers behind a proxy (http_proxy, no_proxy), TLS to S3 and the ATC.
mod egress;
/// Hostile text and planted files: no terminal, shell or reader hijacked.
mod hostile;
/// The README's IAM policies against the S3 calls the code makes.
mod iam;
/// S3 servers that break the promise, and what `doctor` says of each.
mod servers;

// The CLI and the operator's views.
/// The `build-state` CLI on both stores; `serve` and its helpers.
pub(crate) mod cli;
/// `prune` and `restore`.
mod retention;

// Pipelines and the Concourse model.
/// Day one: every documented command, link and example works.
mod docs;
/// The model at its failure edges: the fault sweep on every pipeline.
mod model;
/// The example pipelines' files and the documented commands as written.
mod pipelines;
/// Every example scenario played through the Concourse model.
mod simulate;

// The image.
/// The resource's contract inside the built image (`scripts/image test`).
mod image;
