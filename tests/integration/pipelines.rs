//! The example pipelines: every file in `pipelines/` is validated with the
//! resource's own types, and `staged-image-build.yml` is executed with
//! Concourse's semantics (checks on an interval with the real `check`, jobs
//! triggered by new versions, gets with the real `in`, puts with the real
//! `out` and their implicit gets, hooks with `BUILD_STATUS`), tasks replaced
//! by a script of outcomes.

use crate::util::{Kind, World};
use build_state::config::Config;
use build_state::pipeline;
use build_state::protocol::{InParams, OutParams, Source, parse};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

/// Values for every ((var)) a file uses: short backoffs so scenarios run in
/// seconds, placeholders for the rest.
fn vars_for(text: &str) -> pipeline::Vars {
    let mut probe = pipeline::parse_yaml(text).unwrap();
    let mut names = BTreeSet::new();
    pipeline::interpolate(&mut probe, &pipeline::Vars::new(), &mut names);
    names
        .into_iter()
        .map(|n| {
            let v = match n.as_str() {
                "build_id" => "rhel8-web",
                "retry_backoff" | "kickstart_backoff" => "1s",
                "states_prefix" => "rhel8/",
                "state" => "25",
                "status" => "completed",
                "aws_region" => "eu-west-1",
                _ => "placeholder",
            };
            (n, Value::String(v.to_string()))
        })
        .collect()
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    pipeline::load(path, &vars_for(&text)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// Every step in a plan, hooks included.
fn steps(step: &Value, out: &mut Vec<Value>) {
    match step {
        Value::Array(items) => items.iter().for_each(|s| steps(s, out)),
        Value::Object(m) => {
            if m.contains_key("get") || m.contains_key("put") || m.contains_key("task") {
                out.push(step.clone());
            }
            for key in [
                "in_parallel",
                "do",
                "try",
                "on_success",
                "on_failure",
                "on_error",
                "on_abort",
                "ensure",
                "steps",
                "plan",
            ] {
                if let Some(v) = m.get(key) {
                    steps(v, out);
                }
            }
        }
        _ => {}
    }
}

fn all_steps(job: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    steps(job, &mut out);
    out
}

const CODE_PARAMS: [&str; 6] = ["start", "complete", "fail", "finish", "retry", "set"];

#[test]
fn every_pipeline_parses_with_the_resources_own_types() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(pipelines_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the example pipelines are missing");
    for path in files {
        let p = load(&path);
        let name = path.file_name().unwrap().to_string_lossy();
        let resources = pipeline::build_state_resources(&p);
        assert!(!resources.is_empty(), "{name}: no build-state resource");
        let mut configs = BTreeMap::new();
        for (r, source) in &resources {
            let source: Source = parse(&serde_json::to_vec(source).unwrap())
                .unwrap_or_else(|e| panic!("{name}: resource {r}: {e}"));
            let config = Config::from_source(&source)
                .unwrap_or_else(|e| panic!("{name}: resource {r}: {e}"));
            configs.insert(r.clone(), config);
        }
        let all_resources: BTreeSet<String> = p["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        let jobs: BTreeSet<String> = p["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect();
        let mut checked = 0;
        for job in p["jobs"].as_array().unwrap() {
            let jname = job["name"].as_str().unwrap();
            for step in all_steps(job) {
                let (kind, res) = if let Some(g) = step.get("get") {
                    (
                        "get",
                        step.get("resource")
                            .unwrap_or(g)
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                } else if let Some(g) = step.get("put") {
                    (
                        "put",
                        step.get("resource")
                            .unwrap_or(g)
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                } else {
                    continue;
                };
                assert!(
                    all_resources.contains(&res),
                    "{name}: job {jname}: no resource {res}"
                );
                for passed in step["passed"].as_array().into_iter().flatten() {
                    assert!(
                        jobs.contains(passed.as_str().unwrap()),
                        "{name}: job {jname}: passed names no job: {passed}"
                    );
                }
                let Some(config) = configs.get(&res) else {
                    continue;
                };
                let params = step.get("params").cloned().unwrap_or(json!({}));
                if kind == "get" {
                    parse::<InParams>(&serde_json::to_vec(&params).unwrap())
                        .unwrap_or_else(|e| panic!("{name}: job {jname}: get {res}: {e}"));
                } else {
                    let p: OutParams = parse(&serde_json::to_vec(&params).unwrap())
                        .unwrap_or_else(|e| panic!("{name}: job {jname}: put {res}: {e}"));
                    let _ = p;
                    for key in CODE_PARAMS {
                        if let Some(code) = params.get(key) {
                            let n = code.as_u64().expect("codes are numbers") as u32;
                            config
                                .ladder
                                .check(n)
                                .unwrap_or_else(|e| panic!("{name}: job {jname}: put {key}: {e}"));
                        }
                    }
                    if let Some(gp) = step.get("get_params") {
                        parse::<InParams>(&serde_json::to_vec(gp).unwrap()).unwrap_or_else(|e| {
                            panic!("{name}: job {jname}: put {res} get_params: {e}")
                        });
                    }
                }
                checked += 1;
            }
        }
        assert!(
            checked > 0,
            "{name}: no get or put of a build-state resource"
        );
    }
}

/// Every pipeline and task file passes Concourse's own rules.
#[test]
fn every_file_follows_concourses_rules() {
    let mut n = 0;
    for dir in [pipelines_dir(), pipelines_dir().join("tasks")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yml") {
                continue;
            }
            let value = load(&path);
            let errors = if dir.ends_with("tasks") {
                crate::concourse::task_errors(&value)
            } else {
                crate::concourse::pipeline_errors(&value)
            };
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            n += 1;
        }
    }
    assert_eq!(n, 6, "three pipelines and three task files");
}

/// The variant for Concourse before 8.2 is the same pipeline, but for its
/// hooks: each names its outcome where 8.2's one `finish` anchor reads
/// BUILD_STATUS.
#[test]
fn the_7x_variant_is_the_same_pipeline_with_explicit_hooks() {
    let new = load(&pipelines_dir().join("staged-image-build.yml"));
    let old = load(&pipelines_dir().join("staged-image-build-7x.yml"));
    for key in ["resource_types", "resources", "groups"] {
        assert_eq!(new[key], old[key], "{key}");
    }
    let (new_jobs, old_jobs) = (
        new["jobs"].as_array().unwrap(),
        old["jobs"].as_array().unwrap(),
    );
    assert_eq!(new_jobs.len(), old_jobs.len());
    let hooks = ["on_success", "on_failure", "on_error", "on_abort"];
    let mut converted = 0;
    for (n, o) in new_jobs.iter().zip(old_jobs) {
        let strip = |j: &Value| {
            let mut j = j.clone();
            for h in hooks {
                j.as_object_mut().unwrap().remove(h);
            }
            j
        };
        assert_eq!(strip(n), strip(o), "job {}", n["name"]);
        assert!(
            !o.to_string().contains("\"finish\""),
            "{}: finish needs 8.2",
            o["name"]
        );
        let Some(code) = n["on_success"]["params"]["finish"].as_u64() else {
            for h in hooks {
                assert_eq!(n[h], o[h], "{} {h}", n["name"]);
            }
            continue;
        };
        let fin = &n["on_success"]["params"];
        let put = |h: &str| {
            assert_eq!(o[h]["put"], "state", "{} {h}", o["name"]);
            assert_eq!(o[h]["no_get"], true, "{} {h}", o["name"]);
            o[h]["params"].clone()
        };
        let success = put("on_success");
        assert_eq!(success["complete"], code);
        assert_eq!(success["vars_file"], fin["vars_file"]);
        let failure = put("on_failure");
        assert_eq!(failure["fail"], code);
        assert_eq!(failure["error_file"], fin["error_file"]);
        assert_eq!(failure["vars_file"], fin["vars_file"]);
        assert!(
            failure["error"].is_string(),
            "a fallback when the task wrote no error file"
        );
        let error = put("on_error");
        assert_eq!(error["fail"], code);
        let abort = put("on_abort");
        assert_eq!(
            (abort["fail"].as_u64(), abort["kind"].as_str()),
            (Some(code), Some("persistent"))
        );
        converted += 1;
    }
    assert_eq!(converted, 19);
}

#[test]
fn staged_pipeline_has_a_gated_job_per_stage() {
    let p = load(&pipelines_dir().join("staged-image-build.yml"));
    let mut gated = BTreeMap::new();
    for (name, source) in pipeline::build_state_resources(&p) {
        if let Some(n) = source["gate"]["state"].as_u64() {
            gated.insert(n, name);
        }
    }
    let expected: Vec<u64> = (5..=95).step_by(5).collect();
    assert_eq!(
        gated.keys().copied().collect::<Vec<_>>(),
        expected,
        "one gate per stage 5..95"
    );
    for (code, resource) in &gated {
        let job = p["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| {
                all_steps(j)
                    .iter()
                    .any(|s| s["get"] == json!(resource) && s["trigger"] == json!(true))
            })
            .unwrap_or_else(|| panic!("no job triggers on {resource}"));
        let hooks: Vec<&Value> = ["on_success", "on_failure", "on_error", "on_abort"]
            .iter()
            .map(|h| &job[*h])
            .collect();
        for h in &hooks {
            assert_eq!(
                h["params"]["finish"],
                json!(code),
                "{}: hooks finish {code}",
                job["name"]
            );
        }
        assert!(
            hooks.windows(2).all(|w| w[0] == w[1]),
            "{}: one anchor for every hook",
            job["name"]
        );
        assert!(
            all_steps(job)
                .iter()
                .any(|s| s["put"] == "state" && s["params"]["start"] == json!(code)),
            "{}: puts start {code}",
            job["name"]
        );
    }
}

/// The README's commands that start with `prefix`, as words.
fn readme_commands(prefix: &str) -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    readme
        .lines()
        .map(|l| l.trim().trim_start_matches("$ "))
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The README's `fly execute` commands, as written: each task file passes
/// Concourse's rules, the command's `-i` and `-v` fit the file, and the
/// task's command, run as the image would run it (the CLI on PATH, the
/// params in the environment, the inputs in its directory), works.
fn readme_fly_execute_commands_work_as_written(w: World) {
    w.cli(&["init", "rhel8-web"]).text();
    w.cli(&[
        "set",
        "rhel8-web",
        "25",
        "--reason",
        "the README's update-state example",
    ])
    .text();
    let commands = readme_commands("fly -t ci execute");
    assert_eq!(commands.len(), 3, "{commands:?}");
    let bin = w.tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(crate::util::cli_path(), bin.join("build-state")).unwrap();
    let path_var = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for words in commands {
        let mut file = None;
        let mut given_inputs = BTreeSet::new();
        let mut vars = pipeline::Vars::new();
        let mut rest = words[4..].iter();
        while let Some(flag) = rest.next() {
            let value = rest
                .next()
                .unwrap_or_else(|| panic!("{flag} without a value: {words:?}"));
            match flag.as_str() {
                "-c" => file = Some(value.clone()),
                "-i" => {
                    given_inputs.insert(value.split_once('=').unwrap().0.to_string());
                }
                "-v" => pipeline::parse_var(&mut vars, value, false).unwrap(),
                other => panic!("a flag this test does not know: {other}"),
            }
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file.unwrap());
        let mut task = pipeline::parse_yaml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut missing = BTreeSet::new();
        pipeline::interpolate(&mut task, &vars, &mut missing);
        assert!(
            missing.is_empty(),
            "{}: no -v for {missing:?}",
            path.display()
        );
        let errors = crate::concourse::task_errors(&task);
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        let declared: BTreeMap<String, bool> = task["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    i["optional"] == true,
                )
            })
            .collect();
        for name in &given_inputs {
            assert!(
                declared.contains_key(name),
                "{}: -i {name}: no such input",
                path.display()
            );
        }
        for (name, optional) in &declared {
            assert!(
                *optional || given_inputs.contains(name),
                "{}: input {name} not given",
                path.display()
            );
        }
        // The task's directory: its inputs, with our store's source.
        let dir = tempfile::tempdir().unwrap();
        for name in declared.keys() {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join("config/source.yml"), w.source().to_string()).unwrap();
        let mut cmd = std::process::Command::new(task["run"]["path"].as_str().unwrap());
        cmd.args(
            task["run"]["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().unwrap()),
        )
        .current_dir(dir.path())
        .env("PATH", &path_var)
        .env("NO_PROXY", "127.0.0.1");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BUILD_STATE_")) {
            cmd.env_remove(k);
        }
        for (k, v) in task["params"].as_object().unwrap() {
            cmd.env(
                k,
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        (w.doc()["state"].as_u64(), w.doc()["status"].as_str()),
        (Some(30), Some("pending")),
        "update-state completed stage 25"
    );
}

/// The README's `--pipeline` commands, as written, from the repository's
/// root: `states` reads no store; `show` is aimed at the local S3 server
/// (endpoint and region) by the environment, since BUILD_STATE_* override
/// the pipeline's source.
#[test]
fn readme_pipeline_commands_work_as_written() {
    let commands = readme_commands("build-state --pipeline");
    assert_eq!(commands.len(), 2, "{commands:?}");
    let run = |words: &[String], env: &[(&str, String)]| {
        let mut cmd = std::process::Command::new(crate::util::cli_path());
        cmd.args(&words[1..])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BUILD_STATE_")) {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("NO_PROXY", "127.0.0.1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{words:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let states = run(&commands[0], &[]);
    assert!(
        states.contains("5     kickstart initiated       3             10m ×2 ≤ 1h"),
        "{states}"
    );
    let s3 = crate::util::s3();
    if s3.checks_signatures() {
        eprintln!(
            "the show example skipped on {}: its example keys are refused",
            s3.server
        );
        return;
    }
    let w = World::new(Kind::S3, "readme_pipeline");
    s3.block_on(async {
        let _ = s3
            .client()
            .create_bucket()
            .bucket("image-states")
            .send()
            .await;
    });
    let endpoint = [
        ("BUILD_STATE_ENDPOINT", s3.endpoint.clone()),
        ("BUILD_STATE_USE_PATH_STYLE", "true".to_string()),
        ("BUILD_STATE_REGION", "us-east-1".to_string()),
    ];
    let mut init = commands[1].clone();
    let at = init.len() - 2;
    init[at] = "init".into();
    run(&init, &endpoint);
    let shown = run(&commands[1], &endpoint);
    assert!(shown.contains("rhel8-web"), "{shown}");
    drop(w);
}

// ------------------------------------------------------------------ runner

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Succeed,
    /// Succeeds after this many milliseconds (to make builds overlap).
    SucceedAfter(u64),
    Fail(&'static str),
}

#[derive(Clone, Debug)]
struct BuildRecord {
    job: String,
    status: String,
}

/// Runs a pipeline the way Concourse would, against one world's store.
struct Runner<'a> {
    w: &'a World,
    p: Value,
    types: BTreeSet<String>,
    versions: Mutex<BTreeMap<String, Vec<Value>>>,
    used: Mutex<BTreeMap<(String, String), Value>>,
    builds: Mutex<Vec<BuildRecord>>,
    trace: Mutex<Vec<String>>,
    script: Mutex<BTreeMap<String, VecDeque<Outcome>>>,
    next_build: AtomicU32,
    numbers: Mutex<BTreeMap<String, u32>>,
    start: Instant,
}

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

impl<'a> Runner<'a> {
    fn new(w: &'a World, file: &str) -> Runner<'a> {
        let mut p = load(&pipelines_dir().join(file));
        let types = pipeline::build_state_types(&p);
        // The pipeline's storage, replaced by this world's store.
        let storage = w.source();
        for r in p["resources"].as_array_mut().unwrap() {
            if r["type"].as_str().is_some_and(|t| types.contains(t)) {
                let src = r["source"].as_object_mut().unwrap();
                for f in STORAGE_FIELDS {
                    src.remove(f);
                }
                for f in STORAGE_FIELDS {
                    if let Some(v) = storage.get(f) {
                        src.insert(f.into(), v.clone());
                    }
                }
                src.insert("prefix".into(), json!(w.prefix));
            }
        }
        Runner {
            w,
            p,
            types,
            versions: Mutex::default(),
            used: Mutex::default(),
            builds: Mutex::default(),
            trace: Mutex::default(),
            script: Mutex::default(),
            next_build: AtomicU32::new(100),
            numbers: Mutex::default(),
            start: Instant::now(),
        }
    }

    fn script(&self, task: &str, outcomes: &[Outcome]) {
        self.script
            .lock()
            .unwrap()
            .insert(task.to_string(), outcomes.iter().cloned().collect());
    }

    fn log(&self, line: String) {
        let line = format!("[{:6.2}s] {line}", self.start.elapsed().as_secs_f64());
        println!("{line}");
        self.trace.lock().unwrap().push(line);
    }

    fn resource(&self, name: &str) -> &Value {
        self.p["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
    }

    fn is_ours(&self, name: &str) -> bool {
        self.resource(name)["type"]
            .as_str()
            .is_some_and(|t| self.types.contains(t))
    }

    fn where_now(&self) -> String {
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

    /// One round of checks of every resource a job triggers on.
    fn check_all(&self) {
        let mut names = BTreeSet::new();
        for job in self.p["jobs"].as_array().unwrap() {
            for s in all_steps(job) {
                if s["trigger"] == json!(true) {
                    names.insert(s["get"].as_str().unwrap().to_string());
                }
            }
        }
        for name in names {
            let latest = self
                .versions
                .lock()
                .unwrap()
                .get(&name)
                .and_then(|v| v.last().cloned());
            let found: Vec<Value> = if self.is_ours(&name) {
                let mut req = json!({"source": self.resource(&name)["source"]});
                if let Some(v) = &latest {
                    req["version"] = v.clone();
                }
                let out = crate::util::Step::program(self.w, "check").stdin(req).ok();
                out.as_array().unwrap().clone()
            } else {
                vec![json!({"ref": "commit-1"})]
            };
            let mut all = self.versions.lock().unwrap();
            let list = all.entry(name.clone()).or_default();
            for v in found {
                if !list.contains(&v) {
                    list.push(v);
                }
            }
        }
    }

    /// Triggers every job that has a new version of a trigger input; runs
    /// its builds one after another. Returns how many ran.
    fn trigger(&self) -> usize {
        let mut ran = 0;
        for job in self.p["jobs"].as_array().unwrap().clone() {
            let jname = job["name"].as_str().unwrap().to_string();
            let gets: Vec<Value> = all_steps(&job)
                .into_iter()
                .filter(|s| s.get("get").is_some())
                .collect();
            let mut inputs = BTreeMap::new();
            let mut new = false;
            let mut ready = !gets.is_empty();
            for g in &gets {
                let name = g["get"].as_str().unwrap().to_string();
                let latest = self
                    .versions
                    .lock()
                    .unwrap()
                    .get(&name)
                    .and_then(|v| v.last().cloned());
                match latest {
                    None => ready = false,
                    Some(v) => {
                        if g["trigger"] == json!(true)
                            && self
                                .used
                                .lock()
                                .unwrap()
                                .get(&(jname.clone(), name.clone()))
                                != Some(&v)
                        {
                            new = true;
                        }
                        inputs.insert(name, v);
                    }
                }
            }
            if ready && new {
                for (name, v) in &inputs {
                    self.used
                        .lock()
                        .unwrap()
                        .insert((jname.clone(), name.clone()), v.clone());
                }
                self.run_build(&job, &inputs);
                ran += 1;
            }
        }
        ran
    }

    fn env_for(
        &self,
        job: &str,
        id: u32,
        number: u32,
        status: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("BUILD_ID".to_string(), id.to_string()),
            ("BUILD_NAME".to_string(), number.to_string()),
            ("BUILD_JOB_NAME".to_string(), job.to_string()),
            (
                "BUILD_PIPELINE_NAME".to_string(),
                "staged-image-build".to_string(),
            ),
            ("BUILD_TEAM_NAME".to_string(), "main".to_string()),
            (
                "ATC_EXTERNAL_URL".to_string(),
                "https://ci.example.com".to_string(),
            ),
        ];
        if let Some(s) = status {
            env.push(("BUILD_STATUS".to_string(), s.to_string()));
        }
        env
    }

    /// Runs one build of `job`: its plan, then its hooks. Returns the status.
    fn run_build(&self, job: &Value, inputs: &BTreeMap<String, Value>) -> String {
        let jname = job["name"].as_str().unwrap();
        let id = self.next_build.fetch_add(1, Ordering::SeqCst);
        let number = {
            let mut n = self.numbers.lock().unwrap();
            let e = n.entry(jname.to_string()).or_insert(0);
            *e += 1;
            *e
        };
        let dir = self
            .w
            .tmp
            .path()
            .join(format!("builds/{jname}-{number}-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        self.log(format!("{jname} #{number} started ({})", self.where_now()));
        let ctx = Ctx {
            job: jname,
            id,
            number,
            dir: &dir,
            inputs,
        };
        let mut status = match self.exec(&ctx, &job["plan"], None) {
            Ok(()) => "succeeded",
            Err(s) => s,
        }
        .to_string();
        let hook = match status.as_str() {
            "succeeded" => "on_success",
            "failed" => "on_failure",
            _ => "on_error",
        };
        for h in [hook, "ensure"] {
            if job.get(h).is_some()
                && let Err(e) = self.exec(&ctx, &job[h], Some(&status))
            {
                status = if e == "failed" {
                    "failed".into()
                } else {
                    "errored".into()
                };
            }
        }
        self.log(format!("{jname} #{number} {status} ({})", self.where_now()));
        self.builds.lock().unwrap().push(BuildRecord {
            job: jname.to_string(),
            status: status.clone(),
        });
        status
    }

    fn exec(&self, ctx: &Ctx, step: &Value, hook_status: Option<&str>) -> Result<(), &'static str> {
        if let Some(items) = step.as_array() {
            for s in items {
                self.exec(ctx, s, hook_status)?;
            }
            return Ok(());
        }
        let result = if let Some(inner) = step.get("in_parallel") {
            let items = inner.get("steps").unwrap_or(inner);
            self.exec(ctx, items, hook_status)
        } else if let Some(inner) = step.get("do") {
            self.exec(ctx, inner, hook_status)
        } else if let Some(name) = step.get("get").and_then(Value::as_str) {
            let res = step.get("resource").and_then(Value::as_str).unwrap_or(name);
            let dest = ctx.dir.join(name);
            if self.is_ours(res) {
                let version = ctx.inputs.get(res).expect("a get has its input version");
                let req = json!({"source": self.resource(res)["source"], "version": version, "params": step.get("params")});
                let out = crate::util::Step::program(self.w, "in")
                    .arg(&dest)
                    .stdin(req)
                    .run();
                if out.code != Some(0) {
                    self.log(format!(
                        "{} #{} get {name}: errored: {}",
                        ctx.job,
                        ctx.number,
                        out.stderr.trim()
                    ));
                    return Err("errored");
                }
            } else {
                std::fs::create_dir_all(&dest).unwrap();
            }
            Ok(())
        } else if let Some(name) = step.get("put").and_then(Value::as_str) {
            let res = step.get("resource").and_then(Value::as_str).unwrap_or(name);
            let before = self.where_now();
            let req = json!({"source": self.resource(res)["source"], "params": step.get("params").cloned().unwrap_or(json!({}))});
            let mut run = crate::util::Step::program(self.w, "out")
                .arg(ctx.dir)
                .stdin(req);
            for (k, v) in self.env_for(ctx.job, ctx.id, ctx.number, hook_status) {
                run = run.env(&k, &v);
            }
            let out = run.run();
            let params = step
                .get("params")
                .map(|p| p.to_string())
                .unwrap_or_default();
            if out.code != Some(0) {
                let why = out
                    .stderr
                    .lines()
                    .find(|l| l.contains("build-state: error:"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                self.log(format!(
                    "{} #{} put {params}: errored: {why}",
                    ctx.job, ctx.number
                ));
                return Err("errored");
            }
            self.log(format!(
                "{} #{} put {params}: {before} → {}",
                ctx.job,
                ctx.number,
                self.where_now()
            ));
            // The implicit get of the version the put produced.
            let reply: Value = serde_json::from_str(&out.stdout).unwrap();
            let req = json!({"source": self.resource(res)["source"], "version": reply["version"]});
            let get = crate::util::Step::program(self.w, "in")
                .arg(ctx.dir.join(name))
                .stdin(req)
                .run();
            if get.code != Some(0) {
                return Err("errored");
            }
            Ok(())
        } else if let Some(task) = step.get("task").and_then(Value::as_str) {
            let outcome = self
                .script
                .lock()
                .unwrap()
                .get_mut(task)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Outcome::Succeed);
            let out = ctx.dir.join("out");
            std::fs::create_dir_all(&out).unwrap();
            if let Outcome::SucceedAfter(ms) = outcome {
                std::thread::sleep(Duration::from_millis(ms));
            }
            match outcome {
                Outcome::Succeed | Outcome::SucceedAfter(_) => {
                    std::fs::write(
                        out.join("vars.json"),
                        json!({task: format!("{}#{}", ctx.job, ctx.number)}).to_string(),
                    )
                    .unwrap();
                    self.log(format!(
                        "{} #{} task {task}: succeeded",
                        ctx.job, ctx.number
                    ));
                    Ok(())
                }
                Outcome::Fail(message) => {
                    std::fs::write(out.join("error.txt"), message).unwrap();
                    self.log(format!(
                        "{} #{} task {task}: failed: {message}",
                        ctx.job, ctx.number
                    ));
                    Err("failed")
                }
            }
        } else {
            Ok(())
        };
        // Step hooks.
        let hook = match result {
            Ok(()) => "on_success",
            Err("failed") => "on_failure",
            Err(_) => "on_error",
        };
        for h in [hook, "ensure"] {
            if let Some(hs) = step.get(h) {
                self.exec(
                    ctx,
                    hs,
                    Some(if result.is_ok() {
                        "succeeded"
                    } else {
                        result.err().unwrap()
                    }),
                )?;
            }
        }
        result
    }

    /// Checks and triggers until `done` holds or the time runs out.
    fn run_until(&self, limit: Duration, done: impl Fn(&Runner) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "scenario timed out; trace:\n{}",
                self.trace.lock().unwrap().join("\n")
            );
            self.check_all();
            if self.trigger() == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn jobs_run(&self) -> Vec<String> {
        self.builds
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.job.clone())
            .collect()
    }

    fn doc(&self) -> Value {
        self.w.doc()
    }

    fn at_least(&self, state: u64) -> bool {
        self.w.raw("state.json").is_some() && self.doc()["state"].as_u64().unwrap() >= state
    }
}

struct Ctx<'c> {
    job: &'c str,
    id: u32,
    number: u32,
    dir: &'c Path,
    inputs: &'c BTreeMap<String, Value>,
}

const STAGE_JOBS: [&str; 19] = [
    "kickstart",
    "green-image",
    "base-configuration",
    "cloud-provider-setup",
    "security-baseline",
    "monitoring-setup",
    "runtime-prerequisites",
    "network-configuration",
    "storage-configuration",
    "user-management",
    "service-installation",
    "application-deployment",
    "config-management",
    "integration-testing",
    "performance-optimization",
    "backup-setup",
    "documentation",
    "final-validation",
    "image-sealing",
];

fn happy_path_to_delivered(w: World) {
    let r = Runner::new(&w, "staged-image-build.yml");
    r.run_until(Duration::from_secs(120), |r| {
        r.w.raw("state.json").is_some() && r.doc()["status"] == "completed"
    });
    let mut expected = vec!["start-build".to_string()];
    expected.extend(STAGE_JOBS.iter().map(|s| s.to_string()));
    assert_eq!(
        r.jobs_run(),
        expected,
        "every stage job once, in ladder order"
    );
    assert!(
        r.builds
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.status == "succeeded")
    );
    let doc = r.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(100), Some("completed"))
    );
    // vars recorded by stages for later ones
    assert_eq!(doc["vars"]["packer-kickstart"], "kickstart#1");
    assert_eq!(doc["vars"]["image-sealing"], "image-sealing#1");
    assert_eq!(doc["history"].as_array().unwrap().len(), 2 + 2 * 19);
    // Nothing triggers on a delivered build.
    r.check_all();
    assert_eq!(r.trigger(), 0);
}

/// For every failure with a retry_at, the stage's next start came after it.
fn assert_retries_waited(doc: &Value) {
    let h = doc["history"].as_array().unwrap();
    for (i, e) in h.iter().enumerate() {
        if let Some(due) = e["retry_at"].as_str() {
            let next = h[i + 1..]
                .iter()
                .find(|n| n["action"] == "start" && n["target"] == e["target"]);
            if let Some(n) = next {
                assert!(
                    n["at"].as_str().unwrap() >= due,
                    "started {} before its retry_at {due}",
                    n["at"]
                );
            }
        }
    }
}

fn kickstart_fails_twice_then_succeeds(w: World) {
    let r = Runner::new(&w, "staged-image-build.yml");
    r.script(
        "packer-kickstart",
        &[
            Outcome::Fail("packer: ssh timeout waiting for kickstart"),
            Outcome::Fail("packer: ssh timeout"),
            Outcome::Succeed,
        ],
    );
    r.run_until(Duration::from_secs(60), |r| r.at_least(15));
    let jobs = r.jobs_run();
    assert_eq!(
        &jobs[..5],
        [
            "start-build",
            "kickstart",
            "kickstart",
            "kickstart",
            "green-image"
        ],
        "{jobs:?}"
    );
    let doc = r.doc();
    let fails: Vec<&Value> = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "fail")
        .collect();
    assert_eq!(fails.len(), 2);
    assert_eq!(
        (fails[0]["attempt"].as_u64(), fails[1]["attempt"].as_u64()),
        (Some(1), Some(2))
    );
    assert_retries_waited(&doc);
    // The second wait is twice the first (backoff 1s, factor 2).
    let wait = |e: &Value| {
        let at = chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap();
        let due = chrono::DateTime::parse_from_rfc3339(e["retry_at"].as_str().unwrap()).unwrap();
        (due - at).num_milliseconds()
    };
    assert_eq!((wait(fails[0]), wait(fails[1])), (1000, 2000));
}

fn blocked_until_a_human_retries(w: World) {
    let r = Runner::new(&w, "staged-image-build.yml");
    r.script(
        "ansible-security-baseline",
        &[Outcome::Fail("fatal: [green]: FAILED! => sshd_config"); 3],
    );
    r.run_until(Duration::from_secs(60), |r| {
        r.w.raw("state.json").is_some() && r.doc()["status"] == "blocked"
    });
    assert_eq!(r.doc()["state"], 25);
    let count = |jobs: &[String], j: &str| jobs.iter().filter(|x| *x == j).count();
    assert_eq!(count(&r.jobs_run(), "security-baseline"), 3);
    // Blocked: nothing triggers, however long we wait (past every backoff).
    let before = r.jobs_run().len();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        r.check_all();
        r.trigger();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        r.jobs_run().len(),
        before,
        "a job triggered on a blocked build"
    );
    // A human retry (a put outside any build) resumes at that stage.
    let out = crate::util::Step::program(&w, "out")
        .arg(w.sources())
        .stdin(json!({"source": r.resource("state")["source"], "params": {"retry": 25}}))
        .ok();
    r.log(format!("human put retry 25 → {}", out["version"]));
    r.run_until(Duration::from_secs(60), |r| r.at_least(30));
    let after: Vec<String> = r.jobs_run()[before..].to_vec();
    assert_eq!(
        after.first().map(String::as_str),
        Some("security-baseline"),
        "{after:?}"
    );
    for early in &STAGE_JOBS[..4] {
        assert!(
            !after.iter().any(|j| j == early),
            "{early} re-ran after the block: {after:?}"
        );
    }
    assert_eq!(r.doc()["attempts"], 0);
}

fn persistent_failure_blocks_at_once(w: World) {
    let r = Runner::new(&w, "staged-image-build.yml");
    r.script(
        "launch-green-instance",
        &[Outcome::Fail("RHEL subscription expired for this account")],
    );
    r.run_until(Duration::from_secs(60), |r| {
        r.w.raw("state.json").is_some() && r.doc()["status"] == "blocked"
    });
    let doc = r.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["attempts"].as_u64()),
        (Some(10), Some(1))
    );
    assert_eq!(doc["last_error"]["kind"], "persistent");
    std::thread::sleep(Duration::from_millis(1200));
    r.check_all();
    assert_eq!(r.trigger(), 0, "a persistent failure is not retried");
}

fn racing_builds_lose_no_update(w: World) {
    let r = Runner::new(&w, "staged-image-build.yml");
    r.run_until(Duration::from_secs(60), |r| r.at_least(5));
    r.check_all(); // the kickstart gate's version, without triggering
    let job = |name: &str| {
        r.p["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap()
            .clone()
    };
    let inputs = |gate: &str| {
        let v = r.versions.lock().unwrap();
        BTreeMap::from([
            (gate.to_string(), v[gate].last().unwrap().clone()),
            (
                "image-repo".to_string(),
                v["image-repo"].last().unwrap().clone(),
            ),
        ])
    };
    let landed = || {
        r.trace
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" put ") && !l.contains("errored"))
            .count() as u64
    };

    // Two builds of kickstart at once (a manual trigger while the triggered
    // one runs): both starts land, one completes the stage, and the other's
    // complete is refused, because the stage is no longer 5.
    let (rev0, landed0) = (r.doc()["revision"].as_u64().unwrap(), landed());
    let kick = inputs("at-kickstart");
    // Long tasks, so both builds have started before either finishes.
    r.script(
        "packer-kickstart",
        &[Outcome::SucceedAfter(700), Outcome::SucceedAfter(700)],
    );
    let statuses: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| r.run_build(&job("kickstart"), &kick));
        let b = s.spawn(|| r.run_build(&job("kickstart"), &kick));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let doc = r.doc();
    let h = doc["history"].as_array().unwrap();
    let count = |action: &str, target: u64| {
        h.iter()
            .filter(|e| e["action"] == action && e["target"] == target)
            .count()
    };
    assert_eq!(
        (count("start", 5), count("complete", 5)),
        (2, 1),
        "{statuses:?}"
    );
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(10), Some("pending"))
    );
    assert_eq!(doc["revision"].as_u64().unwrap(), rev0 + 3);
    assert_eq!(
        landed() - landed0,
        3,
        "every put that exited 0 is one revision"
    );
    assert!(statuses.contains(&"succeeded".to_string()));

    // The abandon job against the green-image build: whichever order the
    // writes land in, none is lost and the document stays consistent.
    r.check_all();
    let (rev1, landed1) = (r.doc()["revision"].as_u64().unwrap(), landed());
    let green = inputs("at-green-image");
    std::thread::scope(|s| {
        let a = s.spawn(|| r.run_build(&job("green-image"), &green));
        let b = s.spawn(|| r.run_build(&job("abandon"), &BTreeMap::new()));
        (a.join().unwrap(), b.join().unwrap())
    });
    let doc = r.doc();
    let added = doc["revision"].as_u64().unwrap() - rev1;
    assert_eq!(
        added,
        landed() - landed1,
        "every put that landed is one revision and one history entry"
    );
    assert_eq!(
        doc["history"].as_array().unwrap().len() as u64,
        rev0 + 3 + added
    );
    assert_eq!(
        doc["status"], "cancelled",
        "the cancel always lands (nothing refuses it before the build is delivered)"
    );
    // No put was lost to a conflict: every failed put was a real refusal.
    for line in r
        .trace
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("errored:"))
    {
        assert!(
            line.contains("cannot ") && line.contains("allowed now"),
            "not a refusal: {line}"
        );
    }
}

crate::both_stores!(
    readme_fly_execute_commands_work_as_written,
    happy_path_to_delivered,
    kickstart_fails_twice_then_succeeds,
    blocked_until_a_human_retries,
    persistent_failure_blocks_at_once,
    racing_builds_lose_no_update,
);

#[test]
fn the_dockerfile_ships_binary_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let bins: BTreeSet<String> = cargo
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            section.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("name = ")
                    .map(|n| n.trim_matches('"').to_string())
            })
        })
        .collect();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let copied: Vec<String> = dockerfile
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("COPY --from=builder /src/target/release/")
        })
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .collect();
    assert!(!copied.is_empty(), "the Dockerfile copies no program");
    for c in &copied {
        assert!(
            bins.contains(c),
            "the Dockerfile copies {c}, which is not a [[bin]] in Cargo.toml ({bins:?})"
        );
    }
    for p in ["check", "in", "out"] {
        assert!(
            dockerfile.contains(&format!("/usr/local/bin/build-state /opt/resource/{p}")),
            "/opt/resource/{p}"
        );
    }
    let package = std::fs::read_to_string(root.join("scripts/package")).unwrap();
    assert!(
        package.contains("for p in check in out") && package.contains("usr/local/bin/build-state")
    );
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("ARG ") && l.contains("IMAGE="))
    {
        assert!(
            !line.contains(":latest") && line.contains(':'),
            "base images are pinned by tag: {line}"
        );
    }
}
