//! The example pipelines' files: every file in `pipelines/` is validated
//! with the resource's own types and Concourse's rules, and the README's
//! commands work as written. Playing them is `simulate.rs`'s.

use crate::util::World;
use build_state::config::Config;
use build_state::pipeline;
use build_state::protocol::{InParams, OutParams, Source, parse};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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
                "kickstart_timeout" | "stage_timeout" => "2s",
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
    build_state::concourse::atc::validate::visit(job, &mut |s| out.push(s.clone()));
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
                build_state::concourse::atc::validate::task_errors(&value)
            } else {
                build_state::concourse::atc::validate::pipeline_errors(
                    &value,
                    build_state::concourse::Release::LATEST,
                )
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
        // One anchor for every hook, but for what a hook releases: only a
        // task that ended by itself (on_success, or on_failure when its
        // tool cleaned up) may release; a worker that died (on_error) or
        // an abort may not have removed anything.
        let unreleased: Vec<Value> = hooks
            .iter()
            .map(|h| {
                let mut h = (*h).clone();
                h["params"].as_object_mut().unwrap().remove("release");
                h
            })
            .collect();
        assert!(
            unreleased.windows(2).all(|w| w[0] == w[1]),
            "{}: one anchor for every hook (but `release`)",
            job["name"]
        );
        for h in ["on_error", "on_abort"] {
            assert!(
                job[h]["params"].get("release").is_none(),
                "{}: {h} releases nothing",
                job["name"]
            );
        }
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
        let errors = build_state::concourse::atc::validate::task_errors(&task);
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
    let states = crate::util::squeeze(&run(&commands[0], &[]));
    assert!(
        states.contains("5 kickstart initiated 5 3 10m, 20m retry 2h 10m -")
            && states.contains("25 security baseline 25 3 5m, 10m back to 10 1h - -")
            && states.contains(
                "95 image sealing 95 1 none: a human after the first failure a human 1h - yes"
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

crate::both_stores!(readme_fly_execute_commands_work_as_written);

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
    // The builder leaves the files in scripts/package's layout; the final
    // stage copies them whole, and runs nothing.
    assert!(
        dockerfile.contains("RUN touch src/main.rs src/lib.rs && scripts/package /out")
            && dockerfile.contains("COPY --from=builder /out/ /"),
        "the image's files come from scripts/package"
    );
    let last = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        !last.lines().any(|l| l.starts_with("RUN ")),
        "the final stage runs nothing:\n{last}"
    );
    let package = std::fs::read_to_string(root.join("scripts/package")).unwrap();
    assert!(
        package.contains("for p in check in out") && package.contains("usr/local/bin/build-state")
    );
    for bin in package.lines().filter_map(|l| {
        l.trim()
            .strip_prefix("cargo build --release --locked --bin ")
    }) {
        assert!(
            bins.contains(bin.trim()),
            "scripts/package builds {bin}, not a [[bin]]"
        );
    }
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

/// `states` of a shipped pipeline's resource reads no store: it needs the
/// vars its behaviour uses (the backoffs), not the bucket's or the
/// credentials'; without them it names only those.
#[test]
fn states_of_a_pipeline_needs_only_its_behaviour_vars() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let states = |vars: &[&str]| {
        let mut cmd = std::process::Command::new(crate::util::cli_path());
        cmd.current_dir(root)
            .env_remove("BUILD_STATE_SOURCE")
            .env_remove("BUILD_STATE_BUCKET")
            .env_remove("BUILD_STATE_LOCAL_DIR")
            .args(["states", "--pipeline", "pipelines/staged-image-build.yml"])
            .args(["--resource", "state"]);
        for v in vars {
            cmd.args(["-v", v]);
        }
        cmd.output().unwrap()
    };
    let out = states(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("uses ((kickstart_backoff)), ((retry_backoff)) that no -v gives"),
        "{err}"
    );
    let out = states(&["kickstart_backoff=10m", "retry_backoff=2m"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let five = crate::util::squeeze(table.lines().nth(2).unwrap());
    assert!(
        five.starts_with("5 kickstart initiated 5 3 10m, 20m"),
        "{table}"
    );
}
