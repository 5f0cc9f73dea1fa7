//! A small Concourse: runs the example pipelines the way Concourse's ATC
//! does where it matters to this resource, with the real `check`, `in` and
//! `out` against a test world's store.
//!
//! Modelled on Concourse's source:
//! - versions in check order, saved as `SaveVersions` does
//!   (`atc/db/resource_config_scope.go`): a check that finds anything new
//!   moves every version it returned to the front, in its order; a put's
//!   output is saved as a version of its resource;
//! - a job triggers when a `trigger: true` get's newest candidate version was
//!   never an input of that get in any build of the job; `passed:` keeps the
//!   versions that went through a succeeded build of each job listed;
//! - `serial` jobs run one build at a time (later ones queue);
//! - the get cache (`atc/exec/get_step.go`): a get of (source, params,
//!   version) already fetched is served from the cache, `in` is not run;
//! - a put runs its implicit get (with `get_params`) unless `no_get`;
//! - hooks nest as `atc/job_config.go` and `atc/steps.go` build them
//!   (ensure outside on_error outside on_abort outside on_failure outside
//!   on_success): a failing `on_success` hook makes the step failed, so
//!   `on_failure` runs next; steps inside a hook get `BUILD_STATUS`
//!   (`succeeded`, `failed`, `errored`, `aborted`; Concourse 8.2+), never
//!   those in `ensure` (`atc/engine/builder.go`); `BUILD_URL` from 8.0;
//! - a resource script or task that exits non-zero fails its step; a task
//!   whose inputs are missing, or whose image cannot be fetched, errors it;
//!   an aborted build stops where it is and runs `on_abort` and `ensure`.
//!
//! Deviations that remain: no containers (a task is either a scripted
//! outcome or its `run` executed locally with stub scripts for Packer and
//! Ansible, with the CLI on PATH); `in_parallel` steps run one after
//! another; every resource is checked every round (no `check_every`); the
//! time resource emits a version per round; `passed` constraints are not
//! tied across inputs to one upstream build; no `version: every`, `attempts`,
//! `timeout`, `across`, tags or put `inputs`; the get cache is never evicted;
//! puts made by hand (a human's `fly execute`) are not saved as versions,
//! the next check finds them; a worker that vanishes (`Outcome::Vanish`)
//! takes its build's hooks with it (in Concourse the build would error and
//! run `on_error`, unless the ATC or the store was lost too: that case is
//! the one a stage `timeout` exists for).

use crate::util::{Step, World};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How a step, or a build, ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Succeeded,
    Failed,
    Errored,
    Aborted,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Errored => "errored",
            Status::Aborted => "aborted",
        }
    }
}

/// What a scripted task does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    Succeed,
    /// Succeeds after this many milliseconds (to make builds overlap).
    SucceedAfter(u64),
    /// Exits 1 after writing this to `out/error.txt`.
    Fail(&'static str),
    /// Errors before it runs (its image cannot be fetched, say).
    Error,
    /// The build is aborted while the task runs.
    Abort,
    /// The worker vanishes with the build: it ends errored and none of its
    /// hooks runs (nothing reports the attempt; only a stage timeout can).
    Vanish,
}

/// The Concourse release being modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Release {
    /// 7.x: no `BUILD_URL`, no `BUILD_STATUS`.
    V7,
    /// 8.0 and 8.1: `BUILD_URL`, no `BUILD_STATUS`.
    V8_0,
    /// 8.2 and later: `BUILD_STATUS` in hooks.
    V8_2,
}

#[derive(Clone, Debug)]
pub(crate) struct BuildRecord {
    pub job: String,
    pub status: Status,
    /// get name → (resource, version)
    pub inputs: BTreeMap<String, (String, Value)>,
    /// (resource, version) of each put
    pub outputs: Vec<(String, Value)>,
}

#[derive(Default)]
struct State {
    /// Each resource's versions in check order (the newest last).
    versions: BTreeMap<String, Vec<Value>>,
    builds: Vec<BuildRecord>,
    numbers: BTreeMap<String, u32>,
    /// (source, params, version) → the directory `in` filled.
    cache: BTreeMap<String, PathBuf>,
    script: BTreeMap<String, VecDeque<Outcome>>,
    /// The git resources' head: commit-N.
    commits: u32,
    /// The time resources' ticks.
    ticks: u32,
}

/// Storage fields of a source, replaced by the test world's store.
const STORAGE_FIELDS: [&str; 10] = [
    "bucket",
    "local_dir",
    "endpoint",
    "region_name",
    "use_path_style",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_role_arn",
    "enable_aws_creds_provider",
];

const HOOKS: [&str; 5] = ["on_success", "on_failure", "on_abort", "on_error", "ensure"];

pub(crate) struct Runner<'a> {
    pub w: &'a World,
    pub p: Value,
    pipeline: String,
    release: Release,
    types: BTreeSet<String>,
    st: Mutex<State>,
    serial: BTreeMap<String, Mutex<()>>,
    pub trace: Mutex<Vec<String>>,
    start: Instant,
    next_id: AtomicU32,
    /// Gets answered from the cache, and gets that ran `in`.
    pub cache_hits: AtomicU32,
    pub gets_run: AtomicU32,
    /// Run the tasks' own commands (with stubs) instead of scripted outcomes.
    real_tasks: bool,
    work: PathBuf,
}

/// One build as it runs.
struct Ctx<'c> {
    job: &'c str,
    id: u32,
    number: u32,
    dir: &'c Path,
    inputs: &'c BTreeMap<String, (String, Value)>,
    outputs: Mutex<Vec<(String, Value)>>,
    /// The build was lost with its worker: no hook runs.
    lost: std::sync::atomic::AtomicBool,
}

impl<'a> Runner<'a> {
    /// Loads `file` (with `vars`) for `release`, its storage replaced by the
    /// world's store.
    pub(crate) fn new(
        w: &'a World,
        file: &Path,
        vars: &build_state::pipeline::Vars,
        release: Release,
    ) -> Runner<'a> {
        let mut p = build_state::pipeline::load(file, vars)
            .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        let types = build_state::pipeline::build_state_types(&p);
        let storage = w.source();
        for r in p["resources"].as_array_mut().unwrap() {
            if r["type"].as_str().is_some_and(|t| types.contains(t)) {
                let src = r["source"].as_object_mut().unwrap();
                for f in STORAGE_FIELDS {
                    src.remove(f);
                    if let Some(v) = storage.get(f) {
                        src.insert(f.into(), v.clone());
                    }
                }
                src.insert("prefix".into(), json!(w.prefix));
            }
        }
        let serial = p["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| {
                j["serial"] == true || j["max_in_flight"] == 1 || j.get("serial_groups").is_some()
            })
            .map(|j| (j["name"].as_str().unwrap().to_string(), Mutex::new(())))
            .collect();
        let work = w.tmp.path().join("concourse");
        std::fs::create_dir_all(work.join("outcomes")).unwrap();
        let bin = work.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let _ = std::os::unix::fs::symlink(crate::util::cli_path(), bin.join("build-state"));
        Runner {
            w,
            p,
            pipeline: file.file_stem().unwrap().to_string_lossy().into_owned(),
            release,
            types,
            st: Mutex::new(State {
                commits: 1,
                ..State::default()
            }),
            serial,
            trace: Mutex::default(),
            start: Instant::now(),
            next_id: AtomicU32::new(100),
            cache_hits: AtomicU32::new(0),
            gets_run: AtomicU32::new(0),
            real_tasks: false,
            work,
        }
    }

    /// Runs the tasks' own commands; stub scripts stand in for Packer and
    /// Ansible (see [`Runner::script`]).
    pub(crate) fn with_real_tasks(mut self) -> Self {
        self.real_tasks = true;
        self
    }

    /// What the next runs of a task (or, with real tasks, of a stub:
    /// `kickstart`, `green-image`, `seal`, `stage-N`) do.
    pub(crate) fn script(&self, task: &str, outcomes: &[Outcome]) {
        self.st
            .lock()
            .unwrap()
            .script
            .insert(task.to_string(), outcomes.iter().copied().collect());
        let lines: String = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Fail(m) => format!("{m}\n"),
                _ => "ok\n".to_string(),
            })
            .collect();
        std::fs::write(self.work.join("outcomes").join(task), lines).unwrap();
    }

    pub(crate) fn log(&self, line: String) {
        let line = format!("[{:6.2}s] {line}", self.start.elapsed().as_secs_f64());
        println!("{line}");
        self.trace.lock().unwrap().push(line);
    }

    pub(crate) fn resource(&self, name: &str) -> &Value {
        self.p["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no resource {name}"))
    }

    fn is_ours(&self, name: &str) -> bool {
        self.resource(name)["type"]
            .as_str()
            .is_some_and(|t| self.types.contains(t))
    }

    pub(crate) fn job(&self, name: &str) -> Value {
        self.p["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("no job {name}"))
            .clone()
    }

    pub(crate) fn where_now(&self) -> String {
        match self.w.raw("state.json") {
            None => "(none)".into(),
            Some(b) => {
                let d: Value = serde_json::from_slice(&b).unwrap();
                format!(
                    "{} {} r{}",
                    d["state"],
                    d["status"].as_str().unwrap(),
                    d["revision"]
                )
            }
        }
    }

    pub(crate) fn doc(&self) -> Value {
        self.w.doc()
    }

    pub(crate) fn at_least(&self, state: u64) -> bool {
        self.w.raw("state.json").is_some() && self.doc()["state"].as_u64().unwrap() >= state
    }

    pub(crate) fn status_is(&self, status: &str) -> bool {
        self.w.raw("state.json").is_some() && self.doc()["status"] == status
    }

    pub(crate) fn builds(&self) -> Vec<BuildRecord> {
        self.st.lock().unwrap().builds.clone()
    }

    pub(crate) fn jobs_run(&self) -> Vec<String> {
        self.builds().into_iter().map(|b| b.job).collect()
    }

    pub(crate) fn versions(&self, resource: &str) -> Vec<Value> {
        self.st
            .lock()
            .unwrap()
            .versions
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// A new commit on every git resource.
    pub(crate) fn push_commit(&self) {
        let n = {
            let mut st = self.st.lock().unwrap();
            st.commits += 1;
            st.commits
        };
        self.log(format!("git: commit-{n} pushed"));
    }

    /// `SaveVersions`: when anything is new, every version given moves to
    /// the front, in the order given.
    fn save_versions(&self, resource: &str, found: Vec<Value>) -> bool {
        let mut st = self.st.lock().unwrap();
        let list = st.versions.entry(resource.to_string()).or_default();
        if found.iter().all(|v| list.contains(v)) {
            return false;
        }
        for v in found {
            list.retain(|x| *x != v);
            list.push(v);
        }
        true
    }

    /// Every resource a job gets, in the pipeline's order.
    fn inputs_used(&self) -> Vec<String> {
        let mut out = Vec::new();
        for job in self.p["jobs"].as_array().unwrap() {
            crate::concourse::visit(job, &mut |s| {
                if let Some(n) = s.get("get").and_then(Value::as_str) {
                    let r = s["resource"].as_str().unwrap_or(n).to_string();
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            });
        }
        out
    }

    /// One round of checks of every resource a job gets.
    pub(crate) fn check_all(&self) {
        for name in self.inputs_used() {
            let ty = self.resource(&name)["type"].as_str().unwrap().to_string();
            let found: Vec<Value> = if self.is_ours(&name) {
                let mut req = json!({"source": self.resource(&name)["source"]});
                if let Some(v) = self.versions(&name).last() {
                    req["version"] = v.clone();
                }
                let out = Step::program(self.w, "check").stdin(req).ok();
                out.as_array().unwrap().clone()
            } else if ty == "time" {
                let mut st = self.st.lock().unwrap();
                st.ticks += 1;
                vec![json!({"time": format!("tick-{}", st.ticks)})]
            } else {
                vec![json!({"ref": format!("commit-{}", self.st.lock().unwrap().commits)})]
            };
            self.save_versions(&name, found);
        }
    }

    /// Whether `version` of `resource` went through a succeeded build of `job`.
    fn passed(&self, job: &str, resource: &str, version: &Value) -> bool {
        self.st.lock().unwrap().builds.iter().any(|b| {
            b.job == job
                && b.status == Status::Succeeded
                && (b
                    .inputs
                    .values()
                    .any(|(r, v)| r == resource && v == version)
                    || b.outputs.iter().any(|(r, v)| r == resource && v == version))
        })
    }

    /// The versions the next build of `job` would get, if every get has one.
    pub(crate) fn next_inputs(&self, job: &Value) -> Option<BTreeMap<String, (String, Value)>> {
        let mut gets = Vec::new();
        crate::concourse::visit(job, &mut |s| {
            if s.get("get").is_some() {
                gets.push(s.clone());
            }
        });
        let mut inputs = BTreeMap::new();
        for g in gets {
            let name = g["get"].as_str().unwrap().to_string();
            let resource = g["resource"].as_str().unwrap_or(&name).to_string();
            let passed: Vec<String> = g["passed"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| j.as_str().unwrap().to_string())
                .collect();
            let chosen = self
                .versions(&resource)
                .into_iter()
                .rev()
                .find(|v| passed.iter().all(|j| self.passed(j, &resource, v)))?;
            inputs.insert(name, (resource, chosen));
        }
        Some(inputs)
    }

    /// Starts a build of every job whose trigger gets have a version the job
    /// never used; runs them one after another. Returns how many ran.
    pub(crate) fn schedule(&self) -> usize {
        let mut ran = 0;
        for job in self.p["jobs"].as_array().unwrap().clone() {
            let jname = job["name"].as_str().unwrap().to_string();
            let Some(inputs) = self.next_inputs(&job) else {
                continue;
            };
            let mut triggers = Vec::new();
            crate::concourse::visit(&job, &mut |s| {
                if s["trigger"] == true {
                    triggers.push(s["get"].as_str().unwrap().to_string());
                }
            });
            let new = triggers.iter().any(|g| {
                let (_, v) = &inputs[g];
                !self
                    .st
                    .lock()
                    .unwrap()
                    .builds
                    .iter()
                    .any(|b| b.job == jname && b.inputs.get(g).is_some_and(|(_, u)| u == v))
            });
            if new {
                self.run_build(&job, &inputs);
                ran += 1;
            }
        }
        ran
    }

    /// A build started by hand (`fly trigger-job`), with the newest inputs.
    pub(crate) fn trigger_job(&self, name: &str) -> Status {
        let job = self.job(name);
        let inputs = self
            .next_inputs(&job)
            .unwrap_or_else(|| panic!("{name} has an input with no version"));
        self.log(format!("{name}: triggered by hand"));
        self.run_build(&job, &inputs)
    }

    /// Checks and schedules until `done` holds (or panics with the trace
    /// when the time runs out); a round with nothing to do waits one poll
    /// interval.
    pub(crate) fn run_until(&self, limit: Duration, done: impl Fn(&Runner) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "scenario timed out; trace:\n{}",
                self.trace.lock().unwrap().join("\n")
            );
            self.check_all();
            if self.schedule() == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn env_for(&self, ctx: &Ctx, status: Option<Status>) -> Vec<(String, String)> {
        let base = "https://ci.example.com";
        let mut env = vec![
            ("BUILD_ID".to_string(), ctx.id.to_string()),
            ("BUILD_NAME".to_string(), ctx.number.to_string()),
            ("BUILD_JOB_NAME".to_string(), ctx.job.to_string()),
            ("BUILD_PIPELINE_NAME".to_string(), self.pipeline.clone()),
            ("BUILD_TEAM_NAME".to_string(), "main".to_string()),
            ("ATC_EXTERNAL_URL".to_string(), base.to_string()),
        ];
        if self.release >= Release::V8_0 {
            env.push((
                "BUILD_URL".to_string(),
                format!(
                    "{base}/teams/main/pipelines/{}/jobs/{}/builds/{}",
                    self.pipeline, ctx.job, ctx.number
                ),
            ));
        }
        if let Some(s) = status.filter(|_| self.release >= Release::V8_2) {
            env.push(("BUILD_STATUS".to_string(), s.as_str().to_string()));
        }
        env
    }

    /// Runs one build of `job`; returns its status.
    pub(crate) fn run_build(
        &self,
        job: &Value,
        inputs: &BTreeMap<String, (String, Value)>,
    ) -> Status {
        let jname = job["name"].as_str().unwrap();
        // A serial job's builds queue behind the one running.
        let _serial = self.serial.get(jname).map(|m| m.lock().unwrap());
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let number = {
            let mut st = self.st.lock().unwrap();
            let n = st.numbers.entry(jname.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let dir = self.work.join(format!("builds/{jname}-{number}-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        self.log(format!("{jname} #{number} started ({})", self.where_now()));
        let ctx = Ctx {
            job: jname,
            id,
            number,
            dir: &dir,
            inputs,
            outputs: Mutex::default(),
            lost: Default::default(),
        };
        let plan = self.exec_all(&ctx, job["plan"].as_array().unwrap(), None);
        let status = self.hooks(&ctx, job, plan, None);
        self.log(format!(
            "{jname} #{number} {} ({})",
            status.as_str(),
            self.where_now()
        ));
        self.st.lock().unwrap().builds.push(BuildRecord {
            job: jname.to_string(),
            status,
            inputs: inputs.clone(),
            outputs: ctx.outputs.into_inner().unwrap(),
        });
        status
    }

    /// Steps in sequence: the first that does not succeed ends it.
    fn exec_all(&self, ctx: &Ctx, steps: &[Value], env: Option<Status>) -> Status {
        for s in steps {
            let r = self.exec(ctx, s, env);
            if r != Status::Succeeded {
                return r;
            }
        }
        Status::Succeeded
    }

    /// The hooks of `holder` around `result`, nested as Concourse builds
    /// them. `env` is the status the enclosing hook gives (for `ensure`).
    fn hooks(&self, ctx: &Ctx, holder: &Value, result: Status, env: Option<Status>) -> Status {
        if ctx.lost.load(Ordering::SeqCst) {
            return result;
        }
        let mut r = result;
        let run = |hook: &str, status: Option<Status>| self.exec(ctx, &holder[hook], status);
        if holder.get("on_success").is_some() && r == Status::Succeeded {
            r = run("on_success", Some(Status::Succeeded));
        }
        if holder.get("on_failure").is_some() && r == Status::Failed {
            let h = run("on_failure", Some(Status::Failed));
            if matches!(h, Status::Errored | Status::Aborted) {
                r = h;
            }
        }
        if holder.get("on_abort").is_some() && r == Status::Aborted {
            run("on_abort", Some(Status::Aborted));
        }
        if holder.get("on_error").is_some() && r == Status::Errored {
            run("on_error", Some(Status::Errored));
        }
        if holder.get("ensure").is_some() {
            let h = run("ensure", env);
            if r == Status::Succeeded {
                r = h;
            }
        }
        r
    }

    fn exec(&self, ctx: &Ctx, step: &Value, env: Option<Status>) -> Status {
        let result = if let Some(inner) = step.get("in_parallel") {
            let items = inner.get("steps").unwrap_or(inner).as_array().unwrap();
            // Every step runs; the worst result wins.
            let results: Vec<Status> = items.iter().map(|s| self.exec(ctx, s, env)).collect();
            [Status::Aborted, Status::Errored, Status::Failed]
                .into_iter()
                .find(|bad| results.contains(bad))
                .unwrap_or(Status::Succeeded)
        } else if let Some(inner) = step.get("do") {
            self.exec_all(ctx, inner.as_array().unwrap(), env)
        } else if let Some(inner) = step.get("try") {
            match self.exec(ctx, inner, env) {
                Status::Aborted => Status::Aborted,
                _ => Status::Succeeded,
            }
        } else if let Some(name) = step.get("get").and_then(Value::as_str) {
            let (resource, version) = ctx.inputs.get(name).expect("a get has its input version");
            let params = step.get("params").cloned().unwrap_or(Value::Null);
            match self.fetch(resource, version, &params, &ctx.dir.join(name)) {
                Ok(()) => Status::Succeeded,
                Err(e) => {
                    self.log(format!(
                        "{} #{} get {name}: failed: {e}",
                        ctx.job, ctx.number
                    ));
                    Status::Failed
                }
            }
        } else if let Some(name) = step.get("put").and_then(Value::as_str) {
            self.put(ctx, step, name, env)
        } else if let Some(task) = step.get("task").and_then(Value::as_str) {
            self.task(ctx, step, task)
        } else {
            panic!("a step this runner does not know: {step}")
        };
        if HOOKS.iter().any(|h| step.get(*h).is_some()) {
            self.hooks(ctx, step, result, env)
        } else {
            result
        }
    }

    /// A get: from the cache when (source, params, version) was fetched
    /// before, else by `in` (ours) or a stub (git, time).
    fn fetch(
        &self,
        resource: &str,
        version: &Value,
        params: &Value,
        dest: &Path,
    ) -> Result<(), String> {
        let source = &self.resource(resource)["source"];
        let key = json!([source, params, version]).to_string();
        let cached = self.st.lock().unwrap().cache.get(&key).cloned();
        let from = match cached {
            Some(dir) => {
                self.cache_hits.fetch_add(1, Ordering::SeqCst);
                dir
            }
            None => {
                let n = self.gets_run.fetch_add(1, Ordering::SeqCst);
                let dir = self.work.join(format!("cache/{n}"));
                if self.is_ours(resource) {
                    let out = Step::program(self.w, "in")
                        .arg(&dir)
                        .stdin(json!({"source": source, "version": version, "params": params}))
                        .run();
                    if out.code != Some(0) {
                        return Err(out.stderr.trim().to_string());
                    }
                } else {
                    self.stub_resource(resource, &dir);
                }
                self.st.lock().unwrap().cache.insert(key, dir.clone());
                dir
            }
        };
        copy_dir(&from, dest);
        Ok(())
    }

    /// What a git or time resource's get holds: for git, stub scripts that
    /// stand in for Packer and Ansible (see [`Runner::script`]).
    fn stub_resource(&self, resource: &str, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        if self.resource(resource)["type"] != "git" {
            return;
        }
        for (path, key) in [
            ("packer/kickstart.sh", "kickstart"),
            ("packer/green-image.sh", "green-image"),
            ("packer/seal.sh", "seal"),
            ("ansible/run-stage.sh", "stage-$1"),
        ] {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(
                &file,
                format!(
                    "#!/bin/sh\nf=\"$STUB_OUTCOMES/{key}\"\nif [ -s \"$f\" ]; then\n  line=$(head -n 1 \"$f\"); sed -i 1d \"$f\"\n  if [ \"$line\" != ok ]; then echo \"$line\"; exit 1; fi\nfi\necho \"{key} done\"\n"
                ),
            )
            .unwrap();
            std::process::Command::new("chmod")
                .args(["+x", file.to_str().unwrap()])
                .status()
                .unwrap();
        }
    }

    fn put(&self, ctx: &Ctx, step: &Value, name: &str, env: Option<Status>) -> Status {
        let resource = step["resource"].as_str().unwrap_or(name);
        let before = self.where_now();
        let params = step.get("params").cloned().unwrap_or(json!({}));
        let mut run = Step::program(self.w, "out")
            .arg(ctx.dir)
            .stdin(json!({"source": self.resource(resource)["source"], "params": params}));
        for (k, v) in self.env_for(ctx, env) {
            run = run.env(&k, &v);
        }
        let out = run.run();
        let shown = match env.filter(|_| self.release >= Release::V8_2) {
            Some(s) => format!("{params} [{}]", s.as_str()),
            None => params.to_string(),
        };
        if out.code != Some(0) {
            let why = out
                .stderr
                .lines()
                .find(|l| l.contains("build-state: error:"))
                .unwrap_or("")
                .trim()
                .to_string();
            self.log(format!(
                "{} #{} put {shown}: failed: {why}",
                ctx.job, ctx.number
            ));
            return Status::Failed;
        }
        self.log(format!(
            "{} #{} put {shown}: {before} → {}",
            ctx.job,
            ctx.number,
            self.where_now()
        ));
        let reply: Value = serde_json::from_str(&out.stdout).unwrap();
        let version = reply["version"].clone();
        self.save_versions(resource, vec![version.clone()]);
        ctx.outputs
            .lock()
            .unwrap()
            .push((resource.to_string(), version.clone()));
        if step["no_get"] == true {
            return Status::Succeeded;
        }
        let get_params = step.get("get_params").cloned().unwrap_or(Value::Null);
        match self.fetch(resource, &version, &get_params, &ctx.dir.join(name)) {
            Ok(()) => Status::Succeeded,
            Err(e) => {
                self.log(format!(
                    "{} #{} put {name}: its implicit get failed: {e}",
                    ctx.job, ctx.number
                ));
                Status::Failed
            }
        }
    }

    fn task(&self, ctx: &Ctx, step: &Value, task: &str) -> Status {
        let config = &step["config"];
        for input in config["inputs"].as_array().into_iter().flatten() {
            let name = input["name"].as_str().unwrap();
            if input["optional"] != true && !ctx.dir.join(name).is_dir() {
                self.log(format!(
                    "{} #{} task {task}: errored: missing input {name}",
                    ctx.job, ctx.number
                ));
                return Status::Errored;
            }
        }
        for output in config["outputs"].as_array().into_iter().flatten() {
            std::fs::create_dir_all(ctx.dir.join(output["name"].as_str().unwrap())).unwrap();
        }
        if self.real_tasks {
            return self.real_task(ctx, config, task);
        }
        let outcome = self
            .st
            .lock()
            .unwrap()
            .script
            .get_mut(task)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Outcome::Succeed);
        let out = ctx.dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        if let Outcome::SucceedAfter(ms) = outcome {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let (status, what) = match outcome {
            Outcome::Succeed | Outcome::SucceedAfter(_) => {
                std::fs::write(
                    out.join("vars.json"),
                    json!({task: format!("{}#{}", ctx.job, ctx.number)}).to_string(),
                )
                .unwrap();
                (Status::Succeeded, "succeeded".to_string())
            }
            Outcome::Fail(message) => {
                std::fs::write(out.join("error.txt"), message).unwrap();
                (Status::Failed, format!("failed: {message}"))
            }
            Outcome::Error => (
                Status::Errored,
                "errored: its image could not be fetched".into(),
            ),
            Outcome::Abort => (Status::Aborted, "aborted".into()),
            Outcome::Vanish => {
                ctx.lost.store(true, Ordering::SeqCst);
                (Status::Errored, "lost with its worker: no hook runs".into())
            }
        };
        self.log(format!("{} #{} task {task}: {what}", ctx.job, ctx.number));
        status
    }

    /// The task's own `run`, in the build's directory, with the CLI on PATH
    /// and its params in the environment (objects as JSON, as Concourse
    /// passes them).
    fn real_task(&self, ctx: &Ctx, config: &Value, task: &str) -> Status {
        let mut cmd = std::process::Command::new(config["run"]["path"].as_str().unwrap());
        cmd.args(
            config["run"]["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().unwrap()),
        )
        .current_dir(ctx.dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                self.work.join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("STUB_OUTCOMES", self.work.join("outcomes"))
        .env("NO_PROXY", "127.0.0.1");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BUILD_STATE_")) {
            cmd.env_remove(k);
        }
        for (k, v) in config["params"].as_object().into_iter().flatten() {
            cmd.env(
                k,
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
        let out = cmd.output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        let said = said.lines().last().unwrap_or("").to_string();
        if out.status.success() {
            self.log(format!(
                "{} #{} task {task}: succeeded: {said}",
                ctx.job, ctx.number
            ));
            Status::Succeeded
        } else {
            self.log(format!(
                "{} #{} task {task}: failed: {}",
                ctx.job,
                ctx.number,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            Status::Failed
        }
    }

    /// A put made outside any build (a human with `fly execute` or the CLI).
    pub(crate) fn human_put(&self, params: Value) -> Value {
        let out = Step::program(self.w, "out")
            .arg(self.w.sources())
            .stdin(json!({"source": self.resource("state")["source"], "params": params}))
            .ok();
        self.log(format!("human put {params} → {}", self.where_now()));
        out
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
