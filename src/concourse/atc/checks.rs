//! Checks as the ATC runs them: every check is a check build that runs on
//! a worker and takes time ([`CHECK_TIME`]); a check that ends, failed or
//! not, sets the resource's next periodic check one interval later
//! (`atc/db/resource_config_scope.go` `UpdateLastCheckEndTime`:
//! `next_check_time = now() + interval`; `atc/exec/check_step.go` calls it
//! for failed checks too). The lidar scanner looks every [`TICK`] for
//! resources whose `next_check_time` has passed (`atc/db/check_factory.go`
//! `TryCreateCheck`, `Resources`: before 8.2 every input resource, since
//! 8.2 the trigger inputs without `passed` and the inputs nobody has
//! checked yet). A webhook (`atc/api/resourceserver/check_webhook.go`) or
//! `fly check-resource` runs a check build at once, whatever the interval.
//! New versions only mark the jobs that use them for the scheduler's next
//! tick (`saveVersions` → `requestScheduleForJobsUsingResourceConfigScope`).

use super::super::Release;
use super::pipeline::{Pipeline, Resource};
use super::{Atc, CHECK_TIME, Handed, Observer, Worker};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What the ATC knows of each resource's checks and versions.
#[derive(Default)]
pub(super) struct Scopes {
    /// Saved versions, oldest first (the check order).
    pub(super) versions: BTreeMap<String, Vec<Value>>,
    scopes: BTreeMap<String, Scope>,
    /// Resources whose last check failed (said once).
    failing: BTreeSet<String>,
    /// What the scanner looks at: every input (before 8.2), or the
    /// trigger inputs without `passed` (8.2).
    scanned: BTreeSet<String>,
    only_triggers: bool,
    /// Inputs of some job (the others are checked only when unchecked).
    inputs: BTreeSet<String>,
    /// Check builds of build-state resources.
    pub(super) build_state_checks: u64,
    /// Check webhooks taken.
    pub(super) webhooks: u64,
}

/// One resource's check scope.
#[derive(Default)]
struct Scope {
    /// When the scanner may check it next (zero: never checked).
    next: Duration,
    /// When its last check ended, and whether it succeeded.
    last: Option<(Duration, bool)>,
    /// Check builds of it running now.
    running: u32,
}

/// The stand-ins for resources other than build-state's: git (a commit
/// counter), time (an interval), anything else (one version).
#[derive(Default)]
pub(super) struct StandIns {
    pub(super) commits: u64,
    pub(super) time_ticks: BTreeMap<String, Duration>,
}

impl Scopes {
    pub(super) fn new(p: &Pipeline, release: Release) -> Scopes {
        let inputs: BTreeSet<String> = p
            .jobs
            .iter()
            .flat_map(|j| j.gets())
            .map(|g| g.resource.clone())
            .collect();
        let only_triggers = release.checks_only_triggers();
        Scopes {
            scanned: if only_triggers {
                p.triggers()
            } else {
                inputs.clone()
            },
            only_triggers,
            inputs,
            ..Scopes::default()
        }
    }

    /// Whether a check build runs.
    pub(super) fn running(&self) -> bool {
        self.scopes.values().any(|s| s.running > 0)
    }

    /// When `name`'s last check ended (`None`: never).
    pub(super) fn last_end(&self, name: &str) -> Option<Duration> {
        self.scopes.get(name).and_then(|s| s.last.map(|(t, _)| t))
    }

    /// Whether a check build of `name` runs.
    pub(super) fn checking(&self, name: &str) -> bool {
        self.scopes.get(name).is_some_and(|s| s.running > 0)
    }

    /// `name`'s `next_check_time`.
    pub(super) fn next(&self, name: &str) -> Duration {
        self.scopes.get(name).map_or(Duration::ZERO, |s| s.next)
    }

    /// Whether the scanner looks at `name` (`check_factory.go` `Resources`).
    fn scans(&self, name: &str) -> bool {
        if self.scanned.contains(name) {
            return true;
        }
        // 8.2: put-only or non-triggering resources that errored or were
        // never checked, and non-triggering inputs without versions. Before:
        // put-only resources that errored or were never checked.
        let failed_or_new = self
            .scopes
            .get(name)
            .and_then(|s| s.last)
            .is_none_or(|(_, ok)| !ok);
        let no_versions = self.versions.get(name).is_none_or(Vec::is_empty);
        if self.only_triggers {
            failed_or_new || (self.inputs.contains(name) && no_versions)
        } else {
            !self.inputs.contains(name) && failed_or_new
        }
    }
}

impl<H: Worker + Observer + 'static> Atc<H> {
    /// The lidar scanner: a check build for every resource it looks at
    /// whose `next_check_time` has passed and that is not being checked.
    pub(super) fn scan(&self) {
        let now = self.elapsed();
        let due: Vec<String> = {
            let s = self.checks.borrow();
            self.p
                .resources
                .iter()
                .filter(|r| r.check_every.is_some() && s.scans(&r.name))
                .filter(|r| {
                    let scope = s.scopes.get(&r.name);
                    scope.is_none_or(|sc| sc.running == 0 && now >= sc.next)
                })
                .map(|r| r.name.clone())
                .collect()
        };
        for name in due {
            self.spawn_check(&name);
        }
    }

    /// Starts a check build of `name` now (it runs [`CHECK_TIME`]).
    pub(crate) fn spawn_check(&self, name: &str) {
        if self.p.resource(name).is_none() {
            return;
        }
        self.checks
            .borrow_mut()
            .scopes
            .entry(name.to_string())
            .or_default()
            .running += 1;
        let me = self.self_rc();
        let name = name.to_string();
        tokio::task::spawn_local(async move { me.check_build(&name).await });
    }

    /// `fly check-resource`: a check build now.
    pub(crate) fn check_resource(&self, name: &str) {
        self.log(None, format!("fly check-resource {name}"), None);
        self.spawn_check(name);
    }

    async fn check_build(&self, name: &str) {
        let r = self.p.resource(name).expect("checked by spawn_check");
        tokio::time::sleep(CHECK_TIME).await;
        let found = self.run_check(r).await;
        let end = self.elapsed();
        let interval = r
            .check_every
            .unwrap_or(super::pipeline::DEFAULT_CHECK_EVERY);
        {
            let mut s = self.checks.borrow_mut();
            let scope = s.scopes.entry(name.to_string()).or_default();
            scope.running -= 1;
            scope.last = Some((end, found.is_ok()));
            scope.next = end + interval;
        }
        // A pending build may wait for this check (`scheduler`).
        self.builds.borrow_mut().epoch += 1;
        // A failing check is said once (and when checks work again), not
        // once per resource.
        match found {
            Ok(v) => {
                let again = {
                    let mut s = self.checks.borrow_mut();
                    s.failing.remove(name) && s.failing.is_empty()
                };
                if again {
                    self.log(None, "checks work again".into(), None);
                }
                self.save_versions(name, v);
            }
            Err(e) => {
                let first = {
                    let mut s = self.checks.borrow_mut();
                    let first = s.failing.is_empty();
                    s.failing.insert(name.to_string());
                    first
                };
                if first {
                    self.log(
                        None,
                        format!(
                            "check of {name} failed (so do the others until it works again): {e}"
                        ),
                        None,
                    );
                }
            }
        }
    }

    async fn run_check(&self, r: &Resource) -> Result<Vec<Value>, String> {
        if r.build_state {
            let from = self
                .checks
                .borrow()
                .versions
                .get(&r.name)
                .and_then(|v| v.last().cloned());
            self.checks.borrow_mut().build_state_checks += 1;
            return self
                .host
                .check(r, from.as_ref(), self.now())
                .await
                .map_err(|e| e.to_string());
        }
        let elapsed = self.elapsed();
        let mut s = self.stand_ins.borrow_mut();
        Ok(match r.kind.as_str() {
            "git" => vec![json!({"ref": format!("commit-{}", s.commits)})],
            "time" => {
                let interval = r.source["interval"]
                    .as_str()
                    .and_then(|i| super::duration::parse(i).ok())
                    .unwrap_or(Duration::from_secs(60));
                let last = s.time_ticks.get(&r.name).copied();
                if last.is_none_or(|t| elapsed >= t + interval) {
                    s.time_ticks.insert(r.name.clone(), elapsed);
                    vec![json!({"time": format!("{}s", elapsed.as_secs())})]
                } else {
                    vec![]
                }
            }
            _ => vec![json!({"version": "1"})],
        })
    }

    /// `SaveVersions`: when anything is new, every version given moves to
    /// the front (newest last here), in the order given, and the jobs are
    /// marked for the scheduler.
    pub(super) fn save_versions(&self, resource: &str, found: Vec<Value>) -> bool {
        {
            let mut s = self.checks.borrow_mut();
            let list = s.versions.entry(resource.to_string()).or_default();
            if found.iter().all(|v| list.contains(v)) {
                return false;
            }
            for v in found {
                list.retain(|x| *x != v);
                list.push(v);
            }
        }
        self.builds.borrow_mut().epoch += 1;
        true
    }

    /// The ATC's side of a check webhook (`check_webhook.go`): 404 for a
    /// resource the pipeline lacks, 401 for a token that is not the
    /// resource's `webhook_token`, else a check build now.
    pub(super) fn webhook(&self, build: usize, h: &Handed) {
        let Some(r) = self.p.resource(&h.resource) else {
            self.log(
                Some(build),
                format!("webhook check of {}: 404 (no such resource)", h.resource),
                None,
            );
            return;
        };
        if r.webhook_token.as_deref() != Some(h.token.as_str()) {
            let which = if r.webhook_token.is_some() {
                "another"
            } else {
                "no"
            };
            self.log(
                Some(build),
                format!(
                    "webhook check of {}: 401 (the resource has {which} webhook_token)",
                    h.resource
                ),
                None,
            );
            return;
        }
        self.checks.borrow_mut().webhooks += 1;
        self.spawn_check(&h.resource);
    }
}
