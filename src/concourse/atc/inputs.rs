//! Which versions a build's inputs take (`atc/scheduler/algorithm`,
//! `atc/db/versions_db.go`): a get without `passed` takes the newest
//! version (or its pinned one); with `passed`, a version that went through
//! a succeeded build of every job listed, newest first, and the inputs
//! that share a `passed` job take them from one build of it. A build's
//! inputs and outputs count for `passed` only once it has finished
//! (`atc/db/build.go` `Finish`).

use super::pipeline::{GetStep, Job};
use super::scheduler::Build;
use super::{Atc, BuildRecord, BuildStatus, Observer, Worker};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// A candidate version of an input, with the upstream builds (per
/// `passed` job) it went through.
type Cand = (Value, BTreeMap<String, BTreeSet<u64>>);

impl<H: Worker + Observer + 'static> Atc<H> {
    /// The inputs the next build of `job` would adopt, if every get has one.
    pub(super) fn next_inputs(&self, job: &Job) -> Option<BTreeMap<String, (String, Value)>> {
        let mut gets: Vec<&GetStep> = Vec::new();
        for g in job.gets() {
            if !gets.iter().any(|x| x.name == g.name) {
                gets.push(g);
            }
        }
        let cands: Vec<Vec<Cand>> = gets
            .iter()
            .map(|g| self.candidates(g))
            .collect::<Option<_>>()?;
        let mut picks = Vec::new();
        if !choose(0, &cands, &BTreeMap::new(), &mut picks) {
            return None;
        }
        Some(
            gets.iter()
                .zip(picks)
                .enumerate()
                .map(|(i, (g, k))| (g.name.clone(), (g.resource.clone(), cands[i][k].0.clone())))
                .collect(),
        )
    }

    /// The candidates of one get, newest first (`None`: none).
    fn candidates(&self, g: &GetStep) -> Option<Vec<Cand>> {
        let checks = self.checks.borrow();
        let versions = checks.versions.get(&g.resource)?;
        let mut list: Vec<Cand> = Vec::new();
        if g.passed.is_empty() {
            let pinned = g.version.as_ref().and_then(Value::as_object);
            let v = match pinned {
                Some(pin) => versions
                    .iter()
                    .rev()
                    .find(|v| pin.iter().all(|(k, want)| v.get(k) == Some(want)))?,
                None => versions.last()?,
            };
            list.push((v.clone(), BTreeMap::new()));
            return Some(list);
        }
        let builds = self.builds.borrow();
        fn done<'a>(list: &'a [Build], job: &'a str) -> impl Iterator<Item = &'a Build> + 'a {
            list.iter()
                .filter(move |b| b.rec.job == job && b.rec.status == Some(BuildStatus::Succeeded))
        }
        let succeeded = |job| done(&builds.list, job);
        let mut seen: Vec<Value> = Vec::new();
        let mut newest: Vec<&BuildRecord> = succeeded(&g.passed[0]).map(|b| &b.rec).collect();
        newest.sort_by_key(|b| std::cmp::Reverse(b.id));
        for b in newest {
            for v in build_versions(b, &g.resource) {
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
        }
        for v in seen {
            let mut through = BTreeMap::new();
            for pj in &g.passed {
                let ids: BTreeSet<u64> = succeeded(pj)
                    .filter(|b| build_versions(&b.rec, &g.resource).contains(&v))
                    .map(|b| b.rec.id)
                    .collect();
                if ids.is_empty() {
                    break;
                }
                through.insert(pj.clone(), ids);
            }
            if through.len() == g.passed.len() {
                list.push((v, through));
            }
            if list.len() >= 32 {
                break;
            }
        }
        (!list.is_empty()).then_some(list)
    }
}

/// Picks one candidate per input so that inputs sharing a `passed` job
/// come from one build of it.
fn choose(
    i: usize,
    cands: &[Vec<Cand>],
    allowed: &BTreeMap<String, BTreeSet<u64>>,
    out: &mut Vec<usize>,
) -> bool {
    if i == cands.len() {
        return true;
    }
    for (k, (_, through)) in cands[i].iter().enumerate() {
        let mut next = allowed.clone();
        let fits = through.iter().all(|(job, ids)| {
            let meet: BTreeSet<u64> = match allowed.get(job) {
                Some(a) => a.intersection(ids).copied().collect(),
                None => ids.clone(),
            };
            let ok = !meet.is_empty();
            next.insert(job.clone(), meet);
            ok
        });
        if fits {
            out.push(k);
            if choose(i + 1, cands, &next, out) {
                return true;
            }
            out.pop();
        }
    }
    false
}

/// The versions of `resource` a build had as inputs or outputs.
fn build_versions(b: &BuildRecord, resource: &str) -> Vec<Value> {
    b.inputs
        .values()
        .filter(|(r, _)| r == resource)
        .map(|(_, v)| v.clone())
        .chain(
            b.outputs
                .iter()
                .filter(|(r, _)| r == resource)
                .map(|(_, v)| v.clone()),
        )
        .collect()
}
