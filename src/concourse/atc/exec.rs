//! A build's plan as the ATC runs it (`atc/exec`, `atc/engine`):
//! - hooks nested as `atc/job_config.go` `StepConfig` nests them (ensure
//!   outside on_error outside on_abort outside on_failure outside
//!   on_success: a failing `on_success` makes the step failed, so
//!   `on_failure` runs next); `BUILD_STATUS` for steps in hooks since 8.2,
//!   `ensure` inheriting the enclosing hook's (`atc/engine/builder.go`);
//!   `BUILD_URL` since 8.0; `BUILD_CREATED_BY` only for puts to a resource
//!   with `expose_build_created_by` (`builder.go` `stepMetadata`);
//! - the get cache (`atc/exec/get_step.go`: a get of a version fetched
//!   before with the same source and params does not run `in`); a put's
//!   implicit get unless `no_get`; put inputs `all` before 8.0, `detect`
//!   since (`put_step.go`); `attempts`; `timeout` (a timed-out step fails);
//! - a worker that vanishes errors its step ([`WORKER_GONE`] later) and
//!   `on_error` runs (`atc/exec/on_error.go`); with
//!   `--enable-rerun-when-worker-disappears` the error is `Retriable`:
//!   `on_error` is skipped (`on_error.go`), `ensure` still runs
//!   (`ensure_step.go`), the build is not finished and the tracker runs it
//!   again from its start (`atc/engine/engine.go`, `atc/builds/tracker.go`);
//!   when the ATC never notices, the build stays running (concourse#3011).

use super::pipeline::{GetStep, PlanStep, PutStep, Resource, StepKind, TaskStep};
use super::{
    Artifacts, Atc, BuildStatus, FINISH_TIME, Observer, PUT_ENDS_AFTER, PUT_WRITES_AFTER,
    STEP_TIME, TaskCall, TaskEnd, WORKER_GONE, Worker,
};
use crate::protocol::BuildEnv;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// The get cache: (source, params, version) → files.
#[derive(Default)]
pub(super) struct Cache {
    files: BTreeMap<String, Artifacts>,
    pub(super) hits: u64,
    pub(super) runs: u64,
}

/// One build as it runs.
struct BuildCtx {
    build: usize,
    job: usize,
    artifacts: RefCell<BTreeMap<String, Artifacts>>,
    /// Aborted: the rest of the plan is skipped, the hooks run.
    aborted: Cell<bool>,
    /// Its worker vanished and the build is to run again: `on_error` is
    /// skipped, the build not finished.
    rerun: Cell<bool>,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

impl<H: Worker + Observer + 'static> Atc<H> {
    pub(super) async fn run_build(self: Rc<Self>, b: usize) {
        let ji = self.builds.borrow().list[b].job;
        let job = &self.p.jobs[ji];
        let at = self.host.state().await;
        self.log(Some(b), "started".into(), at);
        let ctx = BuildCtx {
            build: b,
            job: ji,
            artifacts: RefCell::default(),
            aborted: Cell::new(false),
            rerun: Cell::new(false),
        };
        let status = self.exec(&ctx, &job.plan, None).await;
        if ctx.rerun.get() {
            self.builds.borrow_mut().to_rerun.push(b);
            return;
        }
        tokio::time::sleep(FINISH_TIME).await;
        let after = self.host.state().await;
        {
            let finished = self.elapsed().as_secs();
            let mut builds = self.builds.borrow_mut();
            let rec = &mut builds.list[b].rec;
            rec.status = Some(status);
            rec.finished = Some(finished);
            builds.finished(b, &job.serial_groups);
        }
        self.log(Some(b), status.as_str().to_string(), after);
    }

    fn exec<'s>(
        &'s self,
        ctx: &'s BuildCtx,
        step: &'s PlanStep,
        env: Option<BuildStatus>,
    ) -> Boxed<'s, BuildStatus> {
        Box::pin(async move {
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                let r = self.exec_timed(ctx, step, env).await;
                if ctx.aborted.get() || ctx.rerun.get() {
                    break r;
                }
                if matches!(r, BuildStatus::Failed | BuildStatus::Errored)
                    && attempt < step.attempts
                {
                    self.log(
                        Some(ctx.build),
                        format!(
                            "{}: attempt {attempt} of {} {}; again",
                            describe(step),
                            step.attempts,
                            r.as_str()
                        ),
                        None,
                    );
                    continue;
                }
                break r;
            };
            if step.hooks.is_empty() {
                return result;
            }
            self.hooks(ctx, step, result, env).await
        })
    }

    /// One attempt of `step`, within its `timeout`.
    async fn exec_timed(
        &self,
        ctx: &BuildCtx,
        step: &PlanStep,
        env: Option<BuildStatus>,
    ) -> BuildStatus {
        let Some(d) = step.timeout else {
            return self.exec_kind(ctx, step, env).await;
        };
        match tokio::time::timeout(d, self.exec_kind(ctx, step, env)).await {
            Ok(r) => r,
            Err(_) => {
                self.log(
                    Some(ctx.build),
                    format!(
                        "{}: timed out after {}: failed",
                        describe(step),
                        crate::model::time::format(d)
                    ),
                    None,
                );
                BuildStatus::Failed
            }
        }
    }

    /// The hooks of `step` around `result`, nested as Concourse builds
    /// them; `env` is the status the enclosing hook gives (for `ensure`).
    async fn hooks(
        &self,
        ctx: &BuildCtx,
        step: &PlanStep,
        result: BuildStatus,
        env: Option<BuildStatus>,
    ) -> BuildStatus {
        // An aborted build still runs its hooks (on_abort, ensure); the
        // plan after them stays skipped.
        let aborted = ctx.aborted.replace(false);
        let h = &step.hooks;
        let mut r = result;
        if let Some(s) = &h.on_success
            && r == BuildStatus::Succeeded
        {
            r = self.exec(ctx, s, Some(BuildStatus::Succeeded)).await;
        }
        if let Some(s) = &h.on_failure
            && r == BuildStatus::Failed
        {
            let hr = self.exec(ctx, s, Some(BuildStatus::Failed)).await;
            if matches!(hr, BuildStatus::Errored | BuildStatus::Aborted) {
                r = hr;
            }
        }
        if let Some(s) = &h.on_abort
            && r == BuildStatus::Aborted
        {
            self.exec(ctx, s, Some(BuildStatus::Aborted)).await;
        }
        // A `Retriable` error (a worker gone, rerun on) skips on_error.
        if let Some(s) = &h.on_error
            && r == BuildStatus::Errored
            && !ctx.rerun.get()
        {
            self.exec(ctx, s, Some(BuildStatus::Errored)).await;
        }
        if let Some(s) = &h.ensure {
            // `ensure` runs whatever happened, a `Retriable` error too.
            let rerun = ctx.rerun.replace(false);
            let hr = self.exec(ctx, s, env).await;
            ctx.rerun.set(rerun || ctx.rerun.get());
            if r == BuildStatus::Succeeded {
                r = hr;
            }
        }
        ctx.aborted.set(aborted || ctx.aborted.get());
        r
    }

    async fn exec_kind(
        &self,
        ctx: &BuildCtx,
        step: &PlanStep,
        env: Option<BuildStatus>,
    ) -> BuildStatus {
        if ctx.aborted.get() || ctx.rerun.get() {
            return BuildStatus::Aborted;
        }
        match &step.kind {
            StepKind::Do(steps) => {
                for s in steps {
                    let r = self.exec(ctx, s, env).await;
                    if r != BuildStatus::Succeeded {
                        return r;
                    }
                }
                BuildStatus::Succeeded
            }
            // `limit` and `fail_fast` are not modelled (README): all run.
            StepKind::InParallel { steps, .. } => {
                let results =
                    futures_util::future::join_all(steps.iter().map(|s| self.exec(ctx, s, env)))
                        .await;
                [
                    BuildStatus::Aborted,
                    BuildStatus::Errored,
                    BuildStatus::Failed,
                ]
                .into_iter()
                .find(|bad| results.contains(bad))
                .unwrap_or(BuildStatus::Succeeded)
            }
            StepKind::Try(inner) => match self.exec(ctx, inner, env).await {
                BuildStatus::Aborted => BuildStatus::Aborted,
                _ => BuildStatus::Succeeded,
            },
            StepKind::Get(g) => self.get(ctx, g).await,
            StepKind::Put(p) => self.put(ctx, p, env).await,
            StepKind::Task(t) => self.task(ctx, t).await,
            StepKind::Other(_) => BuildStatus::Succeeded,
        }
    }

    /// A get: from the cache when (source, params, version) was fetched
    /// before, else by `in` (ours) or a stand-in (git, time).
    async fn fetch(
        &self,
        r: &Resource,
        version: &Value,
        params: &Value,
    ) -> Result<Artifacts, String> {
        let key = json!([r.source, params, version]).to_string();
        let cached = self.cache.borrow().files.get(&key).cloned();
        if let Some(files) = cached {
            self.cache.borrow_mut().hits += 1;
            return Ok(files);
        }
        tokio::time::sleep(STEP_TIME).await;
        let files = if r.build_state {
            self.host
                .get(r, version, params, self.now())
                .await
                .map_err(|e| e.to_string())?
        } else {
            Artifacts::new()
        };
        let mut cache = self.cache.borrow_mut();
        cache.runs += 1;
        cache.files.insert(key, files.clone());
        Ok(files)
    }

    async fn get(&self, ctx: &BuildCtx, g: &GetStep) -> BuildStatus {
        let input = self.builds.borrow().list[ctx.build]
            .rec
            .inputs
            .get(&g.name)
            .cloned();
        let Some((resource, version)) = input else {
            self.log(
                Some(ctx.build),
                format!("get {}: no version: errored", g.name),
                None,
            );
            return BuildStatus::Errored;
        };
        let r = self.p.resource(&resource).expect("a validated resource");
        match self.fetch(r, &version, &g.params).await {
            Ok(files) => {
                ctx.artifacts.borrow_mut().insert(g.name.clone(), files);
                BuildStatus::Succeeded
            }
            Err(e) => {
                let line = format!("get {}: failed: {e}", g.name);
                self.log(Some(ctx.build), line, None);
                BuildStatus::Failed
            }
        }
    }

    /// The environment of a put of `ctx`'s build to `r`.
    fn env(&self, ctx: &BuildCtx, r: &Resource, status: Option<BuildStatus>) -> BuildEnv {
        let builds = self.builds.borrow();
        let rec = &builds.list[ctx.build].rec;
        let job = &self.p.jobs[ctx.job].name;
        let release = self.settings.release;
        let external = "https://ci.example.com";
        let by_hand = rec.manual || rec.rerun_of.is_some();
        BuildEnv {
            team: Some("main".into()),
            pipeline: Some(self.settings.pipeline.clone()),
            job: Some(job.clone()),
            build_name: Some(rec.name.clone()),
            build_id: Some(rec.id.to_string()),
            external_url: Some(external.into()),
            status: status
                .filter(|_| release.has_build_status())
                .map(|s| s.as_str().to_string()),
            url: release.has_build_url().then(|| {
                format!(
                    "{external}/teams/main/pipelines/{}/jobs/{job}/builds/{}",
                    self.settings.pipeline, rec.name
                )
            }),
            created_by: (by_hand && r.expose_build_created_by).then(|| "admin".to_string()),
            instance_vars: None,
        }
    }

    /// The artifacts a put sees: all (before 8.0), the ones its params name
    /// (`detect`, since 8.0), or those listed.
    fn put_inputs(&self, ctx: &BuildCtx, p: &PutStep) -> BTreeMap<String, Artifacts> {
        let all = ctx.artifacts.borrow().clone();
        let detect = match &p.inputs {
            Some(Value::String(s)) if s == "all" => false,
            Some(Value::String(s)) if s == "detect" => true,
            Some(Value::Array(names)) => {
                let names: BTreeSet<&str> = names.iter().filter_map(Value::as_str).collect();
                return all
                    .into_iter()
                    .filter(|(k, _)| names.contains(k.as_str()))
                    .collect();
            }
            _ => self.settings.release.detects_put_inputs(),
        };
        if !detect {
            return all;
        }
        let mut named = BTreeSet::new();
        strings(&p.params, &mut |s| {
            if let Some(first) = s.split('/').next() {
                named.insert(first.to_string());
            }
        });
        all.into_iter().filter(|(k, _)| named.contains(k)).collect()
    }

    async fn put(&self, ctx: &BuildCtx, p: &PutStep, env: Option<BuildStatus>) -> BuildStatus {
        let r = self.p.resource(&p.resource).expect("a validated resource");
        let shown = match env.filter(|_| self.settings.release.has_build_status()) {
            Some(s) => format!(
                "put {} {} [BUILD_STATUS={}]",
                p.name,
                compact(&p.params),
                s.as_str()
            ),
            None => format!("put {} {}", p.name, compact(&p.params)),
        };
        tokio::time::sleep(PUT_WRITES_AFTER).await;
        let version = if r.build_state {
            match self.put_build_state(ctx, r, p, env, shown).await {
                Some(v) => v,
                None => return BuildStatus::Failed,
            }
        } else {
            self.log(Some(ctx.build), shown, None);
            json!({"put": self.elapsed().as_secs()})
        };
        tokio::time::sleep(PUT_ENDS_AFTER).await;
        self.save_versions(&r.name, vec![version.clone()]);
        self.builds.borrow_mut().list[ctx.build]
            .rec
            .outputs
            .push((r.name.clone(), version.clone()));
        if r.build_state {
            let rec = self.builds.borrow().list[ctx.build].rec.clone();
            self.host.put_landed(&rec, r).await;
        }
        if p.no_get {
            return BuildStatus::Succeeded;
        }
        match self.fetch(r, &version, &p.get_params).await {
            Ok(files) => {
                ctx.artifacts.borrow_mut().insert(p.name.clone(), files);
                BuildStatus::Succeeded
            }
            Err(e) => {
                let line = format!("put {}: its implicit get failed: {e}", p.name);
                self.log(Some(ctx.build), line, None);
                BuildStatus::Failed
            }
        }
    }

    /// `out` of a build-state resource: its version, or `None` (failed).
    async fn put_build_state(
        &self,
        ctx: &BuildCtx,
        r: &Resource,
        p: &PutStep,
        status: Option<BuildStatus>,
        shown: String,
    ) -> Option<Value> {
        let inputs = self.put_inputs(ctx, p);
        let env = self.env(ctx, r, status);
        let result = self.host.put(r, &p.params, &env, &inputs, self.now()).await;
        let after = self.host.state().await;
        match result {
            Ok(done) => {
                let said: Vec<&str> = done
                    .said
                    .iter()
                    .map(String::as_str)
                    .filter(|l| l.starts_with("no change") || l.starts_with("warning"))
                    .collect();
                let shown = match said.as_slice() {
                    [] => shown,
                    lines => format!("{shown}: {}", lines.join("; ")),
                };
                self.log(Some(ctx.build), shown, after);
                // Best effort, after the write: the webhooks' check builds
                // run while the put step ends.
                for h in &done.handoffs {
                    self.webhook(ctx.build, h);
                }
                Some(done.version)
            }
            Err(f) => {
                self.log(
                    Some(ctx.build),
                    format!("{shown}: failed: {}", f.error),
                    after,
                );
                // A write that landed before the refusal hands off.
                for h in &f.handoffs {
                    self.webhook(ctx.build, h);
                }
                None
            }
        }
    }

    async fn task(&self, ctx: &BuildCtx, t: &TaskStep) -> BuildStatus {
        let missing = {
            let arts = ctx.artifacts.borrow();
            t.inputs
                .iter()
                .find(|(name, optional)| !optional && !arts.contains_key(name))
                .map(|(name, _)| name.clone())
        };
        if let Some(name) = missing {
            let line = format!("task {}: missing input {name}: errored", t.name);
            self.log(Some(ctx.build), line, None);
            return BuildStatus::Errored;
        }
        let rec = self.builds.borrow().list[ctx.build].rec.clone();
        let artifacts = ctx.artifacts.borrow().clone();
        let call = TaskCall {
            job: &self.p.jobs[ctx.job],
            build: &rec,
            task: t,
            artifacts: &artifacts,
        };
        let end = self.host.task(call).await;
        let (status, what) = match end {
            TaskEnd::Exited {
                status,
                outputs,
                said,
            } => {
                ctx.artifacts.borrow_mut().extend(outputs);
                (status, format!("{}: {said}", status.as_str()))
            }
            TaskEnd::Errored(why) => (BuildStatus::Errored, format!("errored: {why}")),
            TaskEnd::Aborted => {
                ctx.aborted.set(true);
                (BuildStatus::Aborted, "aborted by a human".into())
            }
            TaskEnd::WorkerLost { rerun } => return self.worker_lost(ctx, t, rerun).await,
            TaskEnd::Stuck => {
                self.builds.borrow_mut().stuck.insert(ctx.build);
                let line = format!(
                    "task {}: its worker vanished and the ATC never notices: the build stays running",
                    t.name
                );
                self.log(Some(ctx.build), line, None);
                // No timeout, no hook, no end: nothing reaches the worker.
                return std::future::pending().await;
            }
        };
        self.log(Some(ctx.build), format!("task {}: {what}", t.name), None);
        status
    }

    /// The task's worker vanished: the ATC notices, and errors the step (or
    /// marks the build for a rerun).
    async fn worker_lost(&self, ctx: &BuildCtx, t: &TaskStep, rerun: bool) -> BuildStatus {
        let line = format!("task {}: its worker vanished", t.name);
        self.log(Some(ctx.build), line, None);
        tokio::time::sleep(WORKER_GONE).await;
        let line = if rerun || self.settings.rerun_when_worker_disappears {
            ctx.rerun.set(true);
            format!(
                "task {}: errored: worker disappeared, will retry (the build runs again)",
                t.name
            )
        } else {
            format!("task {}: errored: worker disappeared", t.name)
        };
        self.log(Some(ctx.build), line, None);
        BuildStatus::Errored
    }
}

/// Calls `f` on every string inside `v`.
pub(crate) fn strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, f)),
        Value::Object(m) => m.values().for_each(|x| strings(x, f)),
        _ => {}
    }
}

/// `{start: 5}` for a timeline.
pub(crate) fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}: {s}"),
                    Value::Array(a) if a.iter().all(Value::is_string) => format!(
                        "{k}: [{}]",
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Null => "{}".into(),
        other => other.to_string(),
    }
}

fn describe(step: &PlanStep) -> String {
    match &step.kind {
        StepKind::Get(g) => format!("get {}", g.name),
        StepKind::Put(p) => format!("put {}", p.name),
        StepKind::Task(t) => format!("task {}", t.name),
        StepKind::InParallel { .. } => "in_parallel".into(),
        StepKind::Do(_) => "do".into(),
        StepKind::Try(_) => "try".into(),
        StepKind::Other(k) => k.clone(),
    }
}
