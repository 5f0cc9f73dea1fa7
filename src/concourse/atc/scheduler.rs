//! The scheduler, every [`super::TICK`] (`atc/scheduler`): a job gets a
//! pending build when a `trigger: true` input's newest candidate was never
//! an input of that get in any build of the job, failed builds included
//! (`atc/db/versions_db.go`, `scheduler.go`); a pending build starts when
//! the job may run one more (`serial`, `max_in_flight`, `serial_groups`:
//! `atc/job_config.go` `MaxInFlight`) and once it is ready
//! (`atc/scheduler/build.go`): a manual build when every input without
//! `passed` was checked after it was created (`ResourcesChecked`; the
//! checks it asks for run at once, `buildstarter.go` `createChecks`), a
//! scheduled build on 8.2 when its non-trigger inputs were checked within
//! their interval (`NonTriggeringResourcesChecked`), a rerun at once with
//! the inputs of the build it reruns (`AdoptRerunInputsAndPipes`). It
//! adopts its inputs when it starts, not when it was created.

use super::pipeline::Job;
use super::{Atc, BuildRecord, Observer, Worker};
use std::collections::{BTreeMap, BTreeSet};

/// The builds, and what scheduling them needs.
#[derive(Default)]
pub(super) struct Builds {
    /// Every build, in creation order.
    pub(super) list: Vec<Build>,
    /// The last build number per job.
    numbers: BTreeMap<usize, u64>,
    /// Builds running per job.
    running: BTreeMap<usize, u32>,
    /// Serial groups with a build running.
    groups_busy: BTreeSet<String>,
    /// Rises whenever what scheduling looks at changes (a version saved, a
    /// check ended, a build created, started or finished); a job is looked
    /// at again only when it rose since its last look.
    pub(super) epoch: u64,
    looked: BTreeMap<usize, u64>,
    /// Builds whose worker vanished, to run again at the tracker's tick.
    pub(super) to_rerun: Vec<usize>,
    /// Builds that stay running: their worker vanished unnoticed.
    pub(super) stuck: BTreeSet<usize>,
}

/// One build and its job.
pub(super) struct Build {
    pub(super) rec: BuildRecord,
    pub(super) job: usize,
    /// A manual build asked for its inputs' checks.
    checks_asked: bool,
}

impl Builds {
    /// Whether a build runs that will end (pending ones start at the
    /// scheduler's tick, or wait for what will not come).
    pub(super) fn busy(&self) -> bool {
        !self.to_rerun.is_empty()
            || self.list.iter().enumerate().any(|(i, b)| {
                b.rec.started.is_some() && b.rec.status.is_none() && !self.stuck.contains(&i)
            })
    }

    fn pending(&self, job: usize) -> Option<usize> {
        self.list
            .iter()
            .position(|b| b.job == job && b.rec.started.is_none() && b.rec.status.is_none())
    }

    /// The build `b` ended: its job may run another.
    pub(super) fn finished(&mut self, b: usize, groups: &[String]) {
        let job = self.list[b].job;
        if let Some(n) = self.running.get_mut(&job) {
            *n -= 1;
        }
        for g in groups {
            self.groups_busy.remove(g);
        }
        self.epoch += 1;
    }
}

impl<H: Worker + Observer + 'static> Atc<H> {
    pub(super) fn create_build(&self, job: usize, manual: bool, rerun_of: Option<usize>) -> usize {
        let created = self.elapsed().as_secs();
        let mut builds = self.builds.borrow_mut();
        let (name, inputs) = match rerun_of {
            Some(o) => {
                let orig = &builds.list[o].rec;
                let n = builds
                    .list
                    .iter()
                    .filter(|b| b.rec.rerun_of == Some(orig.id))
                    .count();
                (format!("{}.{}", orig.name, n + 1), orig.inputs.clone())
            }
            None => {
                let n = builds.numbers.entry(job).or_insert(0);
                *n += 1;
                (n.to_string(), BTreeMap::new())
            }
        };
        let id = builds.list.len() as u64 + 1;
        let rerun_of = rerun_of.map(|o| builds.list[o].rec.id);
        builds.epoch += 1;
        builds.list.push(Build {
            job,
            checks_asked: false,
            rec: BuildRecord {
                id,
                job: self.p.jobs[job].name.clone(),
                name,
                manual,
                rerun_of,
                status: None,
                created,
                started: None,
                finished: None,
                inputs,
                outputs: vec![],
            },
        });
        builds.list.len() - 1
    }

    /// `fly trigger-job`: a manual pending build (`None`: no such job).
    pub(crate) fn trigger_job(&self, job: &str) -> Option<usize> {
        let ji = self.p.jobs.iter().position(|j| j.name == job)?;
        let b = self.create_build(ji, true, None);
        self.log(Some(b), "fly trigger-job: a pending build".into(), None);
        Some(b)
    }

    /// `fly rerun-build` of the job's newest build: a pending build with
    /// its inputs (`None`: the job has no build to rerun).
    pub(crate) fn rerun_build(&self, job: &str) -> Option<usize> {
        let newest = self.builds.borrow().list.iter().rposition(|b| {
            b.rec.job == job && b.rec.rerun_of.is_none() && b.rec.started.is_some()
        })?;
        let ji = self.builds.borrow().list[newest].job;
        let b = self.create_build(ji, false, Some(newest));
        self.log(Some(b), "fly rerun-build: a pending build".into(), None);
        Some(b)
    }

    fn may_start(&self, ji: usize) -> bool {
        let job = &self.p.jobs[ji];
        let builds = self.builds.borrow();
        let running = builds.running.get(&ji).copied().unwrap_or(0);
        if job.in_flight_limit().is_some_and(|l| running >= l) {
            return false;
        }
        !job.serial_groups
            .iter()
            .any(|g| builds.groups_busy.contains(g))
    }

    /// The scheduler's tick: every job whose world changed since its last
    /// look gets a pending build when a trigger input is new, and its
    /// pending builds start while they may and are ready.
    pub(super) async fn schedule(&self) {
        for ji in 0..self.p.jobs.len() {
            {
                let mut b = self.builds.borrow_mut();
                let epoch = b.epoch;
                if b.looked.insert(ji, epoch) == Some(epoch) {
                    continue;
                }
            }
            let job = &self.p.jobs[ji];
            if self.builds.borrow().pending(ji).is_none()
                && let Some(inputs) = self.next_inputs(job)
                && job
                    .gets()
                    .iter()
                    .any(|g| g.trigger && self.first_occurrence(ji, &g.name, &inputs[&g.name].1))
            {
                self.create_build(ji, false, None);
            }
            loop {
                let pending = self.builds.borrow().pending(ji);
                let Some(b) = pending else { break };
                if !self.may_start(ji) || !self.ready(b, job) {
                    break;
                }
                let rerun = self.builds.borrow().list[b].rec.rerun_of.is_some();
                let inputs = if rerun {
                    Some(self.builds.borrow().list[b].rec.inputs.clone())
                } else {
                    self.next_inputs(job)
                };
                let Some(inputs) = inputs else { break };
                self.start_build(b, ji, inputs);
            }
        }
    }

    fn start_build(
        &self,
        b: usize,
        ji: usize,
        inputs: BTreeMap<String, (String, serde_json::Value)>,
    ) {
        {
            let started = self.elapsed().as_secs();
            let mut builds = self.builds.borrow_mut();
            let rec = &mut builds.list[b].rec;
            rec.inputs = inputs;
            rec.started = Some(started);
            builds.epoch += 1;
            *builds.running.entry(ji).or_insert(0) += 1;
            for g in &self.p.jobs[ji].serial_groups {
                builds.groups_busy.insert(g.clone());
            }
        }
        let me = self.self_rc();
        tokio::task::spawn_local(async move { me.run_build(b).await });
    }

    /// Whether pending build `b` may determine its inputs; asks for the
    /// checks it waits for.
    fn ready(&self, b: usize, job: &Job) -> bool {
        let (manual, rerun, created, asked) = {
            let builds = self.builds.borrow();
            let build = &builds.list[b];
            (
                build.rec.manual,
                build.rec.rerun_of.is_some(),
                std::time::Duration::from_secs(build.rec.created),
                build.checks_asked,
            )
        };
        if rerun {
            return true;
        }
        let unpinned: Vec<&str> = job
            .gets()
            .iter()
            .filter(|g| g.passed.is_empty() && g.version.as_ref().is_none_or(|v| !v.is_object()))
            .filter(|g| manual || !g.trigger)
            .map(|g| g.resource.as_str())
            .collect();
        let waiting: Vec<&str> = {
            let checks = self.checks.borrow();
            unpinned
                .into_iter()
                .filter(|r| {
                    if manual {
                        checks.last_end(r).is_none_or(|t| t < created)
                    } else {
                        self.settings.release.checks_only_triggers() && checks.next(r) < created
                    }
                })
                .collect()
        };
        if waiting.is_empty() {
            return true;
        }
        if manual && !asked {
            self.builds.borrow_mut().list[b].checks_asked = true;
            for r in &waiting {
                self.spawn_check(r);
            }
        } else if !manual {
            // `TryCreateCheck` without skipping the interval: only what is due.
            let now = self.elapsed();
            for r in waiting {
                let due = {
                    let c = self.checks.borrow();
                    now >= c.next(r) && !c.checking(r)
                };
                if due {
                    self.spawn_check(r);
                }
            }
        }
        false
    }

    fn first_occurrence(&self, ji: usize, name: &str, version: &serde_json::Value) -> bool {
        !self.builds.borrow().list.iter().any(|b| {
            b.job == ji
                && b.rec.started.is_some()
                && b.rec.inputs.get(name).is_some_and(|(_, v)| v == version)
        })
    }

    /// The build tracker: builds whose worker vanished run again from their
    /// start (`atc/builds/tracker.go` finds them still started).
    pub(super) fn track(&self) {
        let again = std::mem::take(&mut self.builds.borrow_mut().to_rerun);
        for b in again {
            self.log(
                Some(b),
                "the build tracker runs it again from its start".into(),
                None,
            );
            let me = self.self_rc();
            tokio::task::spawn_local(async move { me.run_build(b).await });
        }
    }
}
