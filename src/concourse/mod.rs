//! A model of Concourse, for `build-state simulate` and the project's own
//! pipeline tests, in two rooms:
//! - [`atc`]: Concourse alone, as its source says (concourse/concourse
//!   `atc/`, read at v7.0.0 to v8.2.5): the pipeline typed and validated
//!   per release, checks as check builds with `next_check_time`, webhooks,
//!   the scheduler's 10 s tick, pending builds, first occurrence, `passed`,
//!   serial groups, `max_in_flight`, manual builds and reruns, build
//!   execution with hooks and `BUILD_*` per release, workers that vanish;
//! - [`play`]: build-state's side: the resource's steps (in memory, or the
//!   packaged programs in the tests), scenarios and their humans, task
//!   stand-ins and heartbeats, the stop rule, invariants, expectations,
//!   the wiring check and the fault sweep.
//!
//! They meet at the ATC's `Worker` and `Observer` traits.

pub mod atc;
pub mod play;

use std::fmt;
use std::str::FromStr;

/// A Concourse release (`7.11`, `8.0`, `8.2`): what its ATC accepts and
/// does differs where this resource cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    /// The major version.
    pub(crate) major: u32,
    /// The minor version.
    pub(crate) minor: u32,
}

impl Release {
    /// The newest release modelled.
    pub const LATEST: Release = Release { major: 8, minor: 2 };

    /// The releases the shipped pipelines are tried on: the first 7.x with
    /// `no_get`, the last 7.x, 8.0 and 8.2.
    pub const TRIED: [Release; 4] = [
        Release { major: 7, minor: 9 },
        Release {
            major: 7,
            minor: 11,
        },
        Release { major: 8, minor: 0 },
        Release { major: 8, minor: 2 },
    ];

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// `no_get` on a put: since v7.9.0 (commit f08aa8104).
    pub(crate) const fn has_no_get(self) -> bool {
        self.at_least(7, 9)
    }

    /// `BUILD_URL` in a resource's environment: since 8.0.
    pub(crate) const fn has_build_url(self) -> bool {
        self.at_least(8, 0)
    }

    /// `BUILD_STATUS` for steps inside `on_*` hooks: since 8.2
    /// (`atc/engine/builder.go`).
    pub const fn has_build_status(self) -> bool {
        self.at_least(8, 2)
    }

    /// A put's `inputs` default to `detect` (the artifacts its params name)
    /// since 8.0 (`atc/exec/put_step.go`); before, `all`.
    pub(crate) const fn detects_put_inputs(self) -> bool {
        self.at_least(8, 0)
    }

    /// Since 8.2 only resources some job triggers on are checked on their
    /// `check_every` (`atc/lidar/check_factory.go`); the others are checked
    /// when a build needs them.
    pub(crate) const fn checks_only_triggers(self) -> bool {
        self.at_least(8, 2)
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for Release {
    type Err = String;

    fn from_str(s: &str) -> Result<Release, String> {
        let bad = || format!("{s:?} is not a Concourse release (such as 7.11, 8.0 or 8.2)");
        let mut parts = s.trim().trim_start_matches('v').split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: u32 = parts.next().unwrap_or("0").parse().map_err(|_| bad())?;
        if parts.next().is_some_and(|p| p.parse::<u32>().is_err()) {
            return Err(bad());
        }
        if !(7..=8).contains(&major) {
            return Err(format!(
                "release {s}: the model knows Concourse 7.x and 8.x"
            ));
        }
        Ok(Release { major, minor })
    }
}

pub use play::{PlaySummary, Report, simulate};
use serde_json::Value;

/// The storage fields of a build-state source, replaced by the in-memory
/// store when a pipeline is simulated.
pub(crate) const STORAGE_FIELDS: [&str; 12] = [
    "bucket",
    "local_dir",
    "endpoint",
    "region_name",
    "use_path_style",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_role_arn",
    "ca_bundle",
    "enable_aws_creds_provider",
    "sse_kms_key_id",
];

/// Replaces the storage of every build-state resource of an interpolated
/// pipeline with `storage` (the fields of a source that say where the
/// documents are), keeping their behaviour settings.
pub fn replace_storage(pipeline: &mut Value, storage: &serde_json::Map<String, Value>) {
    let types = crate::pipeline::build_state_types(pipeline);
    let resources = pipeline.get_mut("resources").and_then(Value::as_array_mut);
    for r in resources.into_iter().flatten() {
        if !r["type"].as_str().is_some_and(|t| types.contains(t)) {
            continue;
        }
        let Some(src) = r.get_mut("source").and_then(Value::as_object_mut) else {
            continue;
        };
        for f in STORAGE_FIELDS {
            src.remove(f);
        }
        src.remove("server_side_encryption");
        for (k, v) in storage {
            src.insert(k.clone(), v.clone());
        }
    }
}
