//! A model of Concourse, for `build-state simulate` and the project's own
//! pipeline tests: a pipeline typed as Concourse reads it and validated per
//! release ([`validate`], [`config`]), and its scheduling played on virtual
//! time ([`sim`]): checks on `check_every` and webhooks, check order,
//! triggers, `passed`, serial jobs and serial groups, pending builds that
//! adopt their inputs when they start, the get cache, put outputs as
//! versions, hooks and `BUILD_*` as each release gives them. Resource steps
//! run through [`sim::Steps`]: in memory with the resource's own functions
//! ([`memory::InMemory`], what `simulate` uses), or elsewhere (the tests run
//! the real binaries over a real S3 server through it).
//!
//! Read from concourse/concourse (v7.0.0 to v8.2.4): `atc/configvalidate`,
//! `atc/step_validator.go`, `atc/scheduler` (`algorithm`, `buildstarter.go`),
//! `atc/db/versions_db.go`, `atc/exec` (`get_step.go`, `put_step.go`),
//! `atc/engine/builder.go`, `atc/lidar/check_factory.go`.

pub mod config;
pub mod memory;
pub mod scenario;
pub mod sim;
pub mod validate;
pub mod wiring;

use std::fmt;
use std::str::FromStr;

/// A Concourse release (`7.11`, `8.0`, `8.2`): what its ATC accepts and
/// does differs where this resource cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    /// The major version.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl Release {
    /// The newest release modelled.
    pub const LATEST: Release = Release { major: 8, minor: 2 };

    /// The releases the shipped pipelines are tried on: the first 7.x with
    /// `no_get`, the last 7.x, 8.0 and 8.2.
    pub const TRIED: [Release; 4] = [
        Release { major: 7, minor: 9 },
        Release { major: 7, minor: 11 },
        Release { major: 8, minor: 0 },
        Release { major: 8, minor: 2 },
    ];

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// `no_get` on a put: since v7.9.0 (commit f08aa8104).
    pub const fn has_no_get(self) -> bool {
        self.at_least(7, 9)
    }

    /// `BUILD_URL` in a resource's environment: since 8.0.
    pub const fn has_build_url(self) -> bool {
        self.at_least(8, 0)
    }

    /// `BUILD_STATUS` for steps inside `on_*` hooks: since 8.2
    /// (`atc/engine/builder.go`).
    pub const fn has_build_status(self) -> bool {
        self.at_least(8, 2)
    }

    /// A put's `inputs` default to `detect` (the artifacts its params name)
    /// since 8.0 (`atc/exec/put_step.go`); before, `all`.
    pub const fn detects_put_inputs(self) -> bool {
        self.at_least(8, 0)
    }

    /// Since 8.2 only resources some job triggers on are checked on their
    /// `check_every` (`atc/lidar/check_factory.go`); the others are checked
    /// when a build needs them.
    pub const fn checks_only_triggers(self) -> bool {
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
