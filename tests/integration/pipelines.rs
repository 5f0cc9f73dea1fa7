//! The example pipelines: every file in `pipelines/` is validated with the
//! resource's own types, and `staged-image-build.yml` is executed with
//! Concourse's semantics (checks on an interval with the real `check`, jobs
//! triggered by new versions, gets with the real `in`, puts with the real
//! `out` and their implicit gets, hooks with `BUILD_STATUS`), tasks replaced
//! by a script of outcomes.

use crate::util::World;
use build_state::config::Config;
use build_state::pipeline;
use build_state::protocol::{InParams, OutParams, Source, parse};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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
                "kickstart_timeout" => "2s",
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

/// Every get, put and task of a job, hooks included.
fn all_steps(job: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    crate::concourse::visit(job, &mut |s| out.push(s.clone()));
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
    crate::util::documents()
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
    let run = readme_run;
    let states = run(&commands[0], &[]);
    assert!(
        states.contains(
            "5     kickstart initiated       5        3             10m ×2 ≤ 1h  retry       2h"
        ) && states.contains(
            "25    security baseline         25       3             5m ×2 ≤ 1h   back to 10  -"
        ),
        "{states}"
    );
}

/// Runs a README command (its words after `build-state`) from the
/// repository's root with `env` set and no `BUILD_STATE_*` of the machine's.
fn readme_run(words: &[String], env: &[(&str, String)]) -> String {
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
}

/// The README's `--pipeline ... show` command against the S3 server.
mod readme {
    mod s3 {
        use super::super::{readme_commands, readme_run};
        use crate::util::{Kind, World};

        #[test]
        fn pipeline_show_command_works_as_written_not_on_ceph() {
            let commands = readme_commands("build-state --pipeline");
            let run = readme_run;
            crate::util::not_on_ceph(
                "the pipeline's example keys are refused by a server that checks signatures",
            );
            let s3 = crate::util::s3();
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
    }
}

// ---------------------------------------------------------------- scenarios

use crate::runner::{Outcome, Release, Runner, Status};

/// The staged pipeline for `release`: the 8.2 file, or the variant with
/// explicit hooks before it.
fn staged(w: &World, release: Release) -> Runner<'_> {
    let file = if release >= Release::V8_2 {
        "staged-image-build.yml"
    } else {
        "staged-image-build-7x.yml"
    };
    let path = pipelines_dir().join(file);
    let vars = vars_for(&std::fs::read_to_string(&path).unwrap());
    Runner::new(w, &path, &vars, release)
}

fn single_job(w: &World) -> Runner<'_> {
    let path = pipelines_dir().join("resumable-single-job.yml");
    let vars = vars_for(&std::fs::read_to_string(&path).unwrap());
    Runner::new(w, &path, &vars, Release::V8_2).with_real_tasks()
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

fn delivered(r: &Runner) -> bool {
    r.status_is("completed")
}

fn count(jobs: &[String], j: &str) -> usize {
    jobs.iter().filter(|x| *x == j).count()
}

fn happy_path(w: &World, release: Release) {
    let r = staged(w, release);
    r.run_until(Duration::from_secs(120), delivered);
    let mut expected = vec!["start-build".to_string()];
    expected.extend(STAGE_JOBS.iter().map(|s| s.to_string()));
    assert_eq!(
        r.jobs_run(),
        expected,
        "every stage job once, in ladder order"
    );
    assert!(r.builds().iter().all(|b| b.status == Status::Succeeded));
    let doc = r.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(100), Some("completed"))
    );
    assert_eq!(doc["vars"]["packer-kickstart"], "kickstart#1");
    assert_eq!(doc["vars"]["image-sealing"], "image-sealing#1");
    assert_eq!(doc["history"].as_array().unwrap().len(), 2 + 2 * 19);
    // Every stage built the commit that started the run, and got the same
    // commit from the get cache.
    for b in r.builds().iter().filter(|b| b.job != "start-build") {
        assert_eq!(
            b.inputs["image-repo"].1,
            json!({"ref": "commit-1"}),
            "{}",
            b.job
        );
    }
    assert!(r.cache_hits.load(Ordering::SeqCst) >= 19);
    // Puts have no implicit get: only the 20 builds' explicit gets ran `in`
    // or a stub (each gated version once, the commit once).
    assert_eq!(r.gets_run.load(Ordering::SeqCst), 1 + 19);
    // Nothing triggers on a delivered build.
    r.check_all();
    assert_eq!(r.schedule(), 0);
    let trace = r.trace.lock().unwrap().join("\n");
    if release < Release::V8_2 {
        assert!(
            !trace.contains("[succeeded]"),
            "no BUILD_STATUS before 8.2:\n{trace}"
        );
    }
}

fn happy_path_to_delivered(w: World) {
    happy_path(&w, Release::V8_2);
}

/// Concourse 7: no BUILD_STATUS, no BUILD_URL; the 7.x variant's hooks.
fn happy_path_on_concourse_7(w: World) {
    happy_path(&w, Release::V7);
    let by = &w.doc()["history"][3]["by"];
    assert_eq!(
        by["build_url"],
        "https://ci.example.com/teams/main/pipelines/staged-image-build-7x/jobs/kickstart/builds/1",
        "made from ATC_EXTERNAL_URL"
    );
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
    kickstart_fails_twice(&w, Release::V8_2);
}

/// The same on Concourse 7 with the 7.x variant: its `on_failure` hook
/// records the failure without any BUILD_STATUS.
fn kickstart_fails_twice_on_concourse_7(w: World) {
    kickstart_fails_twice(&w, Release::V7);
    let fail = w.doc()["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "fail")
        .cloned()
        .unwrap();
    assert_eq!(
        fail["error"]["message"],
        "packer: ssh timeout waiting for kickstart"
    );
}

fn kickstart_fails_twice(w: &World, release: Release) {
    let r = staged(w, release);
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

/// Polls (checks and schedules) for a while; asserts nothing ran.
fn nothing_triggers_for(r: &Runner, how_long: Duration) {
    let before = r.jobs_run().len();
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        r.check_all();
        assert_eq!(r.schedule(), 0, "a job triggered:\n{:?}", r.jobs_run());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.jobs_run().len(), before);
}

/// Runs until the build is blocked and the alert job has told a human.
fn until_a_human_is_told(r: &Runner) {
    r.run_until(Duration::from_secs(90), |r| {
        r.status_is("blocked") && r.jobs_run().iter().any(|j| j == "alert-a-human")
    });
    let alert = r
        .builds()
        .into_iter()
        .find(|b| b.job == "alert-a-human")
        .unwrap();
    assert_eq!(alert.status, Status::Succeeded);
    assert_eq!(
        alert.inputs["needs-a-human"].1["status"], "blocked",
        "the alert job got the blocked revision"
    );
}

/// The security baseline is a start-over stage (`resume_from: 10`): each
/// failure sends the build back to a fresh green instance, the stages from
/// there run again, and its third failure blocks it there; the alert job
/// tells a human, nothing else triggers, and a human retry resumes at it.
fn a_start_over_stage_loops_then_blocks_and_alerts(w: World) {
    let r = staged(&w, Release::V8_2);
    r.script(
        "ansible-security-baseline",
        &[Outcome::Fail("fatal: [green]: FAILED! => sshd_config"); 3],
    );
    until_a_human_is_told(&r);
    let doc = r.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["attempts"].as_u64()),
        (Some(25), Some(3))
    );
    let jobs = r.jobs_run();
    assert_eq!(count(&jobs, "security-baseline"), 3);
    for again in ["green-image", "base-configuration", "cloud-provider-setup"] {
        assert_eq!(
            count(&jobs, again),
            3,
            "{again} re-ran after each start-over: {jobs:?}"
        );
    }
    assert_eq!(count(&jobs, "kickstart"), 1);
    let h = doc["history"].as_array().unwrap();
    let backs: Vec<&Value> = h
        .iter()
        .filter(|e| e["action"] == "fail" && e["target"] == 25)
        .collect();
    assert_eq!(
        backs
            .iter()
            .map(|e| e["state"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [10, 10, 25],
        "back to 10 twice, then blocked at 25"
    );
    assert_retries_waited(&doc);
    assert_eq!(count(&jobs, "alert-a-human"), 1);
    nothing_triggers_for(&r, Duration::from_millis(2500));
    let before = r.jobs_run().len();
    r.human_put(json!({"retry": 25}));
    r.run_until(Duration::from_secs(60), |r| r.at_least(30));
    let after: Vec<String> = r.jobs_run()[before..].to_vec();
    assert_eq!(
        after.first().map(String::as_str),
        Some("security-baseline"),
        "{after:?}"
    );
    assert_eq!(r.doc()["attempts"], 0);
    assert_eq!(count(&r.jobs_run(), "alert-a-human"), 1, "told once");
}

/// A kickstart whose worker vanished (no hook ever reports): after the
/// stage's timeout the gate opens, the next start records the dead attempt
/// as a transient failure, and the stage runs again.
fn a_dead_worker_is_retried_after_the_timeout(w: World) {
    let r = staged(&w, Release::V8_2);
    r.script("packer-kickstart", &[Outcome::Vanish, Outcome::Succeed]);
    r.run_until(Duration::from_secs(60), |r| r.at_least(10));
    let kicks: Vec<crate::runner::BuildRecord> = r
        .builds()
        .into_iter()
        .filter(|b| b.job == "kickstart")
        .collect();
    assert_eq!(kicks.len(), 2);
    assert_eq!(
        (kicks[0].status, kicks[1].status),
        (Status::Errored, Status::Succeeded)
    );
    let doc = r.doc();
    let h = doc["history"].as_array().unwrap();
    let actions: Vec<(&str, u64)> = h
        .iter()
        .filter(|e| e["target"] == 5)
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("start", 1), ("fail", 1), ("start", 2), ("complete", 2)]
    );
    let dead = h.iter().find(|e| e["action"] == "fail").unwrap();
    assert!(
        dead["error"]["message"]
            .as_str()
            .unwrap()
            .contains("attempt 1 timed out"),
        "{dead}"
    );
    // The dead attempt waited for the timeout (2s) before the new start.
    let at = |e: &Value| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap();
    let first_start = h.iter().find(|e| e["action"] == "start").unwrap();
    assert!((at(dead) - at(first_start)).num_milliseconds() >= 2000);
}

fn persistent_failure_blocks_at_once(w: World) {
    let r = staged(&w, Release::V8_2);
    r.script(
        "launch-green-instance",
        &[Outcome::Fail("RHEL subscription expired for this account")],
    );
    until_a_human_is_told(&r);
    let doc = r.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["attempts"].as_u64()),
        (Some(10), Some(1))
    );
    assert_eq!(doc["last_error"]["kind"], "persistent");
    nothing_triggers_for(&r, Duration::from_millis(1200));
}

/// An aborted build blocks its stage for a human (on both releases: 8.2's
/// `finish` reads `aborted`, 7.x's `on_abort` hook says so), and its later
/// steps do not run.
fn an_aborted_build_blocks_its_stage(w: World) {
    for release in [Release::V8_2, Release::V7] {
        let w = World::new(w.kind, &format!("aborted_{release:?}"));
        let r = staged(&w, release);
        r.script("packer-kickstart", &[Outcome::Abort, Outcome::Succeed]);
        until_a_human_is_told(&r);
        let b = r.builds();
        let kick = b.iter().find(|b| b.job == "kickstart").unwrap();
        assert_eq!(kick.status, Status::Aborted);
        let doc = r.doc();
        assert_eq!(
            (doc["state"].as_u64(), doc["last_error"]["kind"].as_str()),
            (Some(5), Some("persistent"))
        );
        assert!(
            doc["last_error"]["message"]
                .as_str()
                .unwrap()
                .contains("aborted"),
            "{doc}"
        );
        nothing_triggers_for(&r, Duration::from_millis(300));
        r.human_put(json!({"retry": 5}));
        r.run_until(Duration::from_secs(60), |r| r.at_least(10));
        assert_eq!(count(&r.jobs_run(), "kickstart"), 2, "{release:?}");
    }
}

/// A build that errors (its task's image could not be fetched) records a
/// transient failure naming the build, and the stage is retried.
fn an_errored_build_is_retried(w: World) {
    let r = staged(&w, Release::V8_2);
    r.script("launch-green-instance", &[Outcome::Error, Outcome::Succeed]);
    r.run_until(Duration::from_secs(60), |r| r.at_least(15));
    let b = r.builds();
    let green: Vec<&crate::runner::BuildRecord> =
        b.iter().filter(|b| b.job == "green-image").collect();
    assert_eq!(green.len(), 2);
    assert_eq!(
        (green[0].status, green[1].status),
        (Status::Errored, Status::Succeeded)
    );
    let doc = r.doc();
    let fail = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "fail")
        .unwrap();
    assert_eq!(fail["error"]["kind"], "transient");
    assert!(
        fail["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("green-image #1 errored"),
        "{fail}"
    );
    assert_retries_waited(&doc);
}

/// A failing `on_success` put makes the step failed, so `on_failure` runs
/// next with BUILD_STATUS=failed, as in Concourse. Here a human moved the
/// build on while the stage ran: both puts are refused, nothing is written
/// over the human's decision, and the build is failed.
fn a_refused_on_success_put_runs_on_failure(w: World) {
    let r = staged(&w, Release::V8_2);
    r.script("ansible-base-configuration", &[Outcome::SucceedAfter(1500)]);
    r.run_until(Duration::from_secs(60), |r| r.at_least(15));
    std::thread::scope(|s| {
        let runner = s.spawn(|| {
            r.check_all();
            r.schedule()
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(r.doc()["state"] == 15 && r.status_is("in_progress")) {
            assert!(
                Instant::now() < deadline,
                "base-configuration never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r.human_put(json!({"set": 25, "reason": "cloud provider setup done by hand"}));
        runner.join().unwrap();
    });
    let base = r
        .builds()
        .into_iter()
        .find(|b| b.job == "base-configuration")
        .unwrap();
    assert_eq!(base.status, Status::Failed);
    let trace = r.trace.lock().unwrap().join("\n");
    let success = trace.find("base-configuration #1 put {\"finish\":15,\"error_file\":\"out/error.txt\"} [succeeded]: failed").unwrap_or_else(|| panic!("{trace}"));
    let failure = trace.find("base-configuration #1 put {\"finish\":15,\"error_file\":\"out/error.txt\"} [failed]: failed").unwrap_or_else(|| panic!("{trace}"));
    assert!(success < failure, "{trace}");
    let doc = r.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(25), Some("pending"))
    );
    assert_eq!(
        doc["history"].as_array().unwrap().last().unwrap()["action"],
        "set"
    );
    r.run_until(Duration::from_secs(60), |r| r.at_least(30));
    assert_eq!(count(&r.jobs_run(), "cloud-provider-setup"), 0);
}

/// A serial job's builds queue: a second build started by hand while one
/// runs waits for it, then finds its stage done; its puts are refused, and
/// no update is lost.
fn a_serial_jobs_builds_queue(w: World) {
    let r = staged(&w, Release::V8_2);
    r.run_until(Duration::from_secs(60), |r| r.at_least(5));
    r.check_all(); // the kickstart gate's version, without scheduling
    r.script(
        "packer-kickstart",
        &[Outcome::SucceedAfter(500), Outcome::Succeed],
    );
    let rev = r.doc()["revision"].as_u64().unwrap();
    let statuses: Vec<Status> = std::thread::scope(|s| {
        let a = s.spawn(|| r.trigger_job("kickstart"));
        // The second build is triggered once the first holds the serial
        // lock (its build has started): no sleep decides the order.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !r
            .trace
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("kickstart #1 started"))
        {
            assert!(Instant::now() < deadline, "kickstart #1 never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let b = s.spawn(|| r.trigger_job("kickstart"));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(statuses, [Status::Succeeded, Status::Failed]);
    let trace = r.trace.lock().unwrap().join("\n");
    let first_done = trace.find("kickstart #1 succeeded").unwrap();
    let second_started = trace.find("kickstart #2 started").unwrap();
    assert!(
        first_done < second_started,
        "serial builds overlapped:\n{trace}"
    );
    let doc = r.doc();
    let h = doc["history"].as_array().unwrap();
    let n = |action: &str| {
        h.iter()
            .filter(|e| e["action"] == action && e["target"] == 5)
            .count()
    };
    assert_eq!((n("start"), n("complete"), n("fail")), (1, 1, 0));
    assert_eq!(doc["revision"].as_u64().unwrap(), rev + 2);
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(10), Some("pending"))
    );
}

/// Builds of different jobs writing at once (a stage and the abandon job):
/// whichever order the writes land in, none is lost.
fn racing_jobs_lose_no_update(w: World) {
    let r = staged(&w, Release::V8_2);
    r.script("launch-green-instance", &[Outcome::SucceedAfter(300)]);
    r.run_until(Duration::from_secs(60), |r| r.at_least(10));
    r.check_all();
    let landed = || {
        r.trace
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" put ") && l.contains(" → "))
            .count() as u64
    };
    let (rev, before) = (r.doc()["revision"].as_u64().unwrap(), landed());
    std::thread::scope(|s| {
        let a = s.spawn(|| r.trigger_job("green-image"));
        let b = s.spawn(|| r.trigger_job("abandon"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let doc = r.doc();
    let added = doc["revision"].as_u64().unwrap() - rev;
    assert_eq!(
        added,
        landed() - before,
        "every put that landed is one revision"
    );
    assert_eq!(doc["history"].as_array().unwrap().len() as u64, rev + added);
    assert_eq!(doc["status"], "cancelled", "the cancel always lands");
    // Every failed put was a real refusal, never a lost race.
    for line in r
        .trace
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("]: failed:") || l.contains("}: failed:"))
    {
        assert!(
            line.contains("cannot ") && line.contains("allowed now"),
            "not a refusal: {line}"
        );
    }
}

/// A commit that arrives mid-run does not disturb it: its start-build
/// fails saying why, every stage keeps the run's commit (`passed:
/// [start-build]`), and a start-build run by hand after delivery starts a
/// new run with the new commit.
fn a_commit_mid_run_waits_for_the_next_run(w: World) {
    let r = staged(&w, Release::V8_2);
    r.run_until(Duration::from_secs(60), |r| r.at_least(10));
    r.push_commit();
    r.run_until(Duration::from_secs(120), delivered);
    let builds = r.builds();
    let starts: Vec<&crate::runner::BuildRecord> =
        builds.iter().filter(|b| b.job == "start-build").collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1].status, Status::Failed);
    let trace = r.trace.lock().unwrap().join("\n");
    assert!(
        trace.contains("run 1 is under way, so init with restart starts no new run"),
        "{trace}"
    );
    for b in builds.iter().filter(|b| b.job != "start-build") {
        assert_eq!(
            b.inputs["image-repo"].1,
            json!({"ref": "commit-1"}),
            "{}",
            b.job
        );
    }
    assert_eq!(r.trigger_job("start-build"), Status::Succeeded);
    r.run_until(Duration::from_secs(60), |r| {
        r.doc()["run"] == 2 && r.at_least(10)
    });
    let kick = r
        .builds()
        .into_iter()
        .rev()
        .find(|b| b.job == "kickstart")
        .unwrap();
    assert_eq!(kick.inputs["image-repo"].1, json!({"ref": "commit-2"}));
}

/// The single-job pipeline, its task's own script run with stubs for
/// Packer and Ansible, through a failure and its retry. Between them the
/// get cache serves the failed revision's files unchanged and the task
/// asks `build-state next` whether the retry is due.
fn single_job_resumes_through_a_retry(w: World) {
    let r = single_job(&w);
    w.put(json!({"init": true})).ok();
    r.script(
        "kickstart",
        &[Outcome::Fail("packer: ssh timeout"), Outcome::Succeed],
    );
    r.run_until(Duration::from_secs(120), delivered);
    let doc = r.doc();
    let h = doc["history"].as_array().unwrap();
    assert_eq!(h.iter().filter(|e| e["action"] == "fail").count(), 1);
    assert_retries_waited(&doc);
    let trace = r.trace.lock().unwrap().join("\n");
    assert!(trace.contains("nothing to run now (wait)"), "{trace}");
    assert!(
        r.cache_hits.load(Ordering::SeqCst) > 0,
        "the get cache served a version again"
    );
    // Every build ran one stage at most, and every one succeeded.
    assert!(r.builds().iter().all(|b| b.status == Status::Succeeded));
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(100), Some("completed"))
    );
}

fn single_job_blocks_until_a_human_retries(w: World) {
    let r = single_job(&w);
    w.put(json!({"init": true})).ok();
    r.script(
        "stage-25",
        &[Outcome::Fail("fatal: [green]: FAILED! => sshd_config"); 3],
    );
    r.run_until(Duration::from_secs(120), |r| r.status_is("blocked"));
    assert_eq!(r.doc()["state"], 25);
    r.check_all();
    r.schedule();
    let trace = r.trace.lock().unwrap().join("\n");
    assert!(trace.contains("nothing to run now (blocked)"), "{trace}");
    r.human_put(json!({"retry": 25}));
    r.run_until(Duration::from_secs(60), |r| r.at_least(30));
    assert_eq!(r.doc()["attempts"], 0);
}

crate::both_stores!(
    readme_fly_execute_commands_work_as_written,
    happy_path_to_delivered,
    happy_path_on_concourse_7,
    kickstart_fails_twice_then_succeeds,
    kickstart_fails_twice_on_concourse_7,
    a_start_over_stage_loops_then_blocks_and_alerts,
    a_dead_worker_is_retried_after_the_timeout,
    persistent_failure_blocks_at_once,
    an_aborted_build_blocks_its_stage,
    an_errored_build_is_retried,
    a_refused_on_success_put_runs_on_failure,
    a_serial_jobs_builds_queue,
    racing_jobs_lose_no_update,
    a_commit_mid_run_waits_for_the_next_run,
    single_job_resumes_through_a_retry,
    single_job_blocks_until_a_human_retries,
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
