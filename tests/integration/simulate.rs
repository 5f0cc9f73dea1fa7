//! The example pipelines played through the library's Concourse model
//! (`build_state::concourse`), on virtual time: every example scenario on
//! every shipped pipeline and release it applies to (the resource in
//! memory, as `build-state simulate` runs it), the defects the old pipeline
//! texts had (kept in `tests/fixtures/before-simulate/`), and a few
//! end-to-end runs of the packaged programs over a real store through
//! [`Processes`], the model's other implementation of its steps.

use crate::util::{Step, World};
use build_state::concourse::atc::pipeline::{Pipeline, Resource, TaskStep};
use build_state::concourse::atc::{Artifacts, BuildStatus, Handed, StepError};
use build_state::concourse::play::Steps;
use build_state::concourse::play::memory::InMemory;
use build_state::concourse::play::scenario::Scenario;
use build_state::concourse::{Release, Report, replace_storage, simulate};
use build_state::model::{Document, Timestamp};
use build_state::pipeline;
use build_state::protocol::BuildEnv;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The vars the README's simulate command gives (and the old texts'
/// stage timeouts).
const VARS: [(&str, &str); 5] = [
    ("build_id", "rhel8-web"),
    ("retry_backoff", "5m"),
    ("kickstart_backoff", "10m"),
    ("kickstart_timeout", "2h"),
    ("stage_timeout", "1h"),
];

fn vars(extra: &[(&str, &str)]) -> pipeline::Vars {
    VARS.iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

/// A pipeline file, interpolated and typed for `release`, its storage
/// replaced by `storage`.
fn typed(path: &Path, release: Release, vars: &pipeline::Vars, storage: Value) -> Pipeline {
    let (mut value, _) = pipeline::load_partly(path, vars).unwrap();
    replace_storage(&mut value, storage.as_object().unwrap());
    Pipeline::parse(&value, release)
        .unwrap_or_else(|e| panic!("{} on {release}: {e:#?}", path.display()))
}

fn in_memory(path: &Path, release: Release, scenario: &Scenario) -> Report {
    let p = typed(
        path,
        release,
        &vars(&[]),
        json!({"local_dir": "/simulated"}),
    );
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    simulate(&p, &name, release, scenario, Rc::new(InMemory::new())).unwrap()
}

fn scenario(name: &str) -> Scenario {
    let path = root().join("pipelines/scenarios").join(name);
    Scenario::parse(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn timeline(r: &Report) -> String {
    r.played
        .atc
        .timeline
        .iter()
        .map(|l| {
            format!(
                "{:>6}s {:<28} {} {}",
                l.at,
                l.job
                    .as_ref()
                    .map(|j| format!("{j} #{}", l.build.as_deref().unwrap_or("?")))
                    .unwrap_or_default(),
                l.what,
                l.state.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_passed(r: &Report, what: &str) {
    assert!(
        r.passed(),
        "{what}:\nwiring: {:#?}\nfailures: {:#?}\n{}",
        r.wiring,
        r.failures,
        timeline(r)
    );
}

/// The shipped staged pipelines and the releases each claims.
fn shipped() -> Vec<(PathBuf, Vec<Release>)> {
    let tried = Release::TRIED;
    vec![
        (
            root().join("pipelines/staged-image-build.yml"),
            tried
                .iter()
                .copied()
                .filter(|r| r.has_build_status())
                .collect(),
        ),
        (
            root().join("pipelines/staged-image-build-7x.yml"),
            tried.to_vec(),
        ),
    ]
}

/// Every example scenario, on every shipped pipeline and release it
/// applies to, holds its expectations; in virtual time (no sleeping).
#[test]
fn every_scenario_holds_on_every_pipeline_and_release() {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(root().join("pipelines/scenarios")).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        let s = scenario(&file);
        for (path, releases) in shipped() {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            for r in releases {
                if s.applies_to(&stem, r) {
                    runs.push((file.clone(), path.clone(), r, s.clone()));
                }
            }
        }
    }
    assert!(runs.len() >= 8 * 5, "{} runs", runs.len());
    let started = std::time::Instant::now();
    let failed: Vec<String> = std::thread::scope(|scope| {
        let chunks: Vec<_> = runs.chunks(runs.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    for (file, path, release, s) in chunk {
                        let r = in_memory(path, *release, s);
                        if !r.passed() {
                            failed.push(format!(
                                "{file} on {} ({release}): {:#?} {:#?}\n{}",
                                path.display(),
                                r.wiring,
                                r.failures,
                                timeline(&r)
                            ));
                        }
                    }
                    failed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    println!(
        "{} scenario runs in {:.1} s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// C: on the old text a stage has no timeout, so an outcome put lost to a
/// store outage leaves it in progress with nothing to trigger it again;
/// simulate says so (wiring, and the play never delivers). The new text
/// passes (above).
#[test]
fn the_old_text_stalls_when_a_hook_put_is_lost() {
    for file in ["staged-image-build.yml", "staged-image-build-7x.yml"] {
        let old = root().join("tests/fixtures/before-simulate").join(file);
        let r = in_memory(
            &old,
            Release::LATEST,
            &scenario("store-down-during-a-hook.yml"),
        );
        assert!(!r.passed());
        assert!(
            r.wiring.iter().any(|w| w.starts_with(
                "stage 15 (base configuration): job base-configuration starts it, and it has no timeout"
            )),
            "{:#?}",
            r.wiring
        );
        assert!(
            r.failures.iter().any(|f| f.starts_with(
                "expected the build delivered; it was not: rhel8-web is at 15 (base configuration, in_progress)"
            )),
            "{:#?}",
            r.failures
        );
        // The happy path on the old text plays through: only the wiring
        // (no timeouts) is wrong.
        let happy = in_memory(&old, Release::LATEST, &scenario("happy-path.yml"));
        assert!(happy.failures.is_empty(), "{:#?}", happy.failures);
    }
}

/// B: in the old text start-build's own `complete: 0` opens the kickstart
/// gate before start-build has finished, so a check of the gate that ends
/// in that window (a webhook, `fly check-resource`) and a scheduler tick
/// in it schedule kickstart while
/// `passed: [start-build]` still resolves to the previous run's commit:
/// run 2 builds two commits. The new text opens the run from begin-run,
/// which starts only after start-build finished.
#[test]
fn one_run_builds_one_commit() {
    let second_run = |path: &Path| {
        // Run 1 is delivered; a commit starts run 2 (start-build triggers).
        let base = "task_time: 1m\nexpect: {runs: 2}\nevents:\n- {at: 2h, commit: true}\n";
        let dry = in_memory(path, Release::LATEST, &Scenario::parse(base).unwrap());
        // When the put that opens stage 5 of run 2 lands.
        let opened = dry
            .played
            .atc
            .timeline
            .iter()
            .find(|l| l.what.starts_with("put state {complete: 0") && l.at > 7200)
            .unwrap_or_else(|| panic!("no complete 0 in run 2:\n{}", timeline(&dry)))
            .at;
        // A check build reads the store when it ends (CHECK_TIME after it
        // starts): one started 2 s before the put lands reads the gate open
        // and saves its version before start-build has finished, and the
        // scheduler's next tick falls in that window.
        let text = format!("{base}- {{at: {}s, check: at-kickstart}}\n", opened - 2);
        in_memory(path, Release::LATEST, &Scenario::parse(&text).unwrap())
    };
    let old = second_run(&root().join("tests/fixtures/before-simulate/staged-image-build.yml"));
    assert!(
        old.failures
            .iter()
            .any(|f| f.starts_with("run 2 built more than one commit: commit-1, commit-2")),
        "{:#?}\n{}",
        old.failures,
        timeline(&old)
    );
    let new = second_run(&root().join("pipelines/staged-image-build.yml"));
    assert_passed(&new, "the new text, the same check at the same time");
}

/// A: each file says which releases it needs, and the model refuses it on
/// the release before (Concourse's own validation: `no_get` before 7.9;
/// `finish` needs 8.2's BUILD_STATUS).
#[test]
fn each_file_claims_the_releases_it_needs() {
    for (file, claim, before) in [
        (
            "staged-image-build.yml",
            "# Concourse: 8.2 or later.",
            "8.1",
        ),
        (
            "staged-image-build-7x.yml",
            "# Concourse: 7.9 or later",
            "7.8",
        ),
        (
            "resumable-single-job.yml",
            "# Concourse: 7.9 or later",
            "7.8",
        ),
    ] {
        let path = root().join("pipelines").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(claim), "{file} says {claim:?}");
        let before: Release = before.parse().unwrap();
        let (value, _) = pipeline::load_partly(&path, &vars(&[])).unwrap();
        let refused = match Pipeline::parse(&value, before) {
            Err(errors) => errors
                .iter()
                .any(|e| e.contains("unknown field \"no_get\"")),
            Ok(p) => build_state::concourse::play::wiring::problems(&p, before)
                .iter()
                .any(|w| w.contains("finish needs BUILD_STATUS")),
        };
        assert!(refused, "{file} on {before}");
    }
    // The README says the same.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("Concourse 8.2+") && readme.contains("7.9 to 8.1"));
    assert!(!readme.contains("every release"));
}

/// A wiring mistake is found before anything runs: a stage job deleted
/// from the pipeline leaves its stage unrecorded (exit 1, the stage named);
/// the README's exact command ends in delivery (exit 0).
#[test]
fn the_readme_command_and_a_missing_stage_job() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .skip_while(|l| !l.starts_with("build-state simulate pipelines/staged-image-build.yml"))
        .take_while(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\\', " ");
    assert!(!line.is_empty(), "the README shows the simulate command");
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    let run = |args: &[&str]| {
        std::process::Command::new(crate::util::cli_path())
            .args(args)
            .current_dir(root())
            .output()
            .unwrap()
    };
    let out = run(&words);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("image-sealing #1") && stdout.contains("→ 100 completed"),
        "{stdout}"
    );
    assert!(stdout.contains("delivered: yes, after"), "{stdout}");
    // The same pipeline without its monitoring-setup job.
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("pipelines/staged-image-build.yml")).unwrap();
    let start = text.find("- name: monitoring-setup\n").unwrap();
    let end = text[start + 1..].find("\n- name: ").unwrap() + start + 2;
    let cut = format!("{}{}", &text[..start], &text[end..]).replace("monitoring-setup, ", "");
    let copy = tmp.path().join("staged-image-build.yml");
    std::fs::write(&copy, cut).unwrap();
    let mut args: Vec<&str> = words.clone();
    let copy_s = copy.to_str().unwrap().to_string();
    args[1] = &copy_s;
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("stage 30 (monitoring setup): no job records it"),
        "{stdout}"
    );
    // An unreadable scenario: exit 2, the field named.
    let bad = tmp.path().join("bad.yml");
    std::fs::write(&bad, "tasks: {t: [{outcome: fail, eror: x}]}\n").unwrap();
    let mut args = words.clone();
    let bad_s = bad.to_str().unwrap().to_string();
    args.extend(["--scenario", &bad_s]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tasks.t[0]: unknown field `eror`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pipeline whose task records with the CLI on a document copy plays
    // too: the task does what its script does (a human inits the build).
    let out = run(&[
        "simulate",
        "pipelines/resumable-single-job.yml",
        "-v",
        "build_id=b",
        "-v",
        "retry_backoff=1m",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("a human puts {\"init\":true} to state")
            && stdout.contains("task run-due-stage: succeeded: stage 5: b is at 10")
            && stdout.contains("delivered: yes"),
        "{stdout}"
    );
    // --json for machines.
    let mut args = words.clone();
    args.push("--json");
    let out = run(&args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["delivered"], true);
    assert!(v["played"]["timeline"].as_array().unwrap().len() > 40);
}

/// The outcomes the README's examples of wiring mistakes produce: a job
/// that triggers on the resource it puts to, a put to a gate, a gated get
/// in a job without `serial`.
#[test]
fn wiring_mistakes_are_named() {
    let p = json!({
        "resource_types": [{"name": "build-state", "type": "registry-image", "source": {"repository": "x/build-state"}}],
        "resources": [
            {"name": "state", "type": "build-state", "source": {"local_dir": "/s", "build_id": "b", "retry": {"timeout": "1h"}}},
            {"name": "at-kickstart", "type": "build-state", "source": {"local_dir": "/s", "build_id": "b", "gate": {"state": 5}}},
        ],
        "jobs": [
            {"name": "loop", "plan": [{"get": "state", "trigger": true}, {"put": "state", "no_get": true, "params": {"complete": 0}}]},
            {"name": "kickstart", "plan": [
                {"get": "at-kickstart", "trigger": true},
                {"put": "at-kickstart", "no_get": true, "params": {"start": 5}},
                {"task": "packer", "config": {"platform": "linux", "run": {"path": "sh", "args": ["-c", "build-state created b 5 --run 1 --attempt 1 packer_builder=$id"]}}},
                {"put": "state", "no_get": true, "params": {"complete": 10}},
            ]},
        ],
    });
    let p = Pipeline::parse(&p, Release::LATEST).unwrap();
    let problems = build_state::concourse::play::wiring::problems(&p, Release::LATEST);
    for want in [
        "job loop: triggers itself: it gets state with trigger: true and puts to it",
        "job kickstart: puts to at-kickstart, a gated resource: the put is refused",
        "job kickstart: starts 5 but records the outcome of 10",
        "job kickstart: gets the gate at-kickstart without serial: true",
        "stage 5 (kickstart initiated): no job records it",
        "task packer records the cloud resources it creates, and no job triggers on a `gate: {leaked: true}` resource",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want:?} not in {problems:#?}"
        );
    }
    // Handoffs the ATC would refuse: a resource the pipeline lacks, a put
    // without a token, a gate with another token.
    let p = json!({
        "resource_types": [{"name": "build-state", "type": "registry-image", "source": {"repository": "x/build-state"}}],
        "resources": [
            {"name": "state", "type": "build-state", "source": {"local_dir": "/s", "build_id": "b", "webhook_token": "t", "retry": {"timeout": "1h"}}},
            {"name": "plain", "type": "build-state", "source": {"local_dir": "/s", "build_id": "b", "retry": {"timeout": "1h"}}},
            {"name": "at-kickstart", "type": "build-state", "webhook_token": "other", "source": {"local_dir": "/s", "build_id": "b", "gate": {"state": 5}}},
        ],
        "jobs": [
            {"name": "begin", "plan": [{"put": "state", "no_get": true, "params": {"complete": 0, "check": ["at-kickstart", "at-nowhere"]}}]},
            {"name": "again", "plan": [{"put": "plain", "no_get": true, "params": {"retry": 5, "check": ["at-kickstart"]}}]},
        ],
    });
    let p = Pipeline::parse(&p, Release::LATEST).unwrap();
    let problems = build_state::concourse::play::wiring::problems(&p, Release::LATEST);
    for want in [
        "job begin: checks at-kickstart, whose webhook_token is not state's: the webhook is answered 401",
        "job begin: checks at-nowhere, which the pipeline lacks: the webhook is answered 404",
        "job again: checks at-kickstart, but plain's source has no webhook_token: the webhook is not posted",
    ] {
        assert!(
            problems.iter().any(|p| p == want),
            "{want:?} not in {problems:#?}"
        );
    }
}

/// An aborted build blocks its stage for a human (finish with
/// BUILD_STATUS=aborted), and an errored one (its image unfetchable) is
/// retried after the backoff: two plays of inline scenarios.
#[test]
fn aborted_blocks_and_errored_retries() {
    let path = root().join("pipelines/staged-image-build.yml");
    let aborted = Scenario::parse(
        "tasks: {ansible-base-configuration: [abort]}\nexpect: {delivered: false, state: 15, status: blocked, builds: {alert-a-human: 1}}\n",
    )
    .unwrap();
    assert_passed(&in_memory(&path, Release::LATEST, &aborted), "aborted");
    let errored = Scenario::parse(
        "tasks: {ansible-base-configuration: [{outcome: error, error: image not found}]}\nexpect: {delivered: true, failures: {\"15\": 1}, builds: {base-configuration: 2}}\n",
    )
    .unwrap();
    for file in ["staged-image-build.yml", "staged-image-build-7x.yml"] {
        let r = in_memory(
            &root().join("pipelines").join(file),
            Release::LATEST,
            &errored,
        );
        assert_passed(&r, file);
    }
}

/// Nobody approves: the build waits at 95 awaiting approval, the sealing
/// job never runs, the approvers are told once. A heartbeat that comes too
/// rarely for the stage's heartbeat_timeout (every 15 minutes, the timeout
/// 10) opens the gate while Packer still runs: the serial job queues a
/// second build, which starts only when the first is over, finds the stage
/// done, runs no task and counts nothing; the late heartbeats of the live
/// attempt are taken (nothing recorded it dead). Seen in the timeline
/// before the interval is set.
#[test]
fn approvals_nobody_gives_and_heartbeats_too_rare() {
    let path = root().join("pipelines/staged-image-build.yml");
    let never = Scenario::parse(
        "task_time: 5m\napprove_after: never\nexpect: {delivered: false, state: 95, status: awaiting_approval, builds: {image-sealing: 0, approve-sealing: 0, ask-for-approval: 1}}\n",
    )
    .unwrap();
    assert_passed(&in_memory(&path, Release::LATEST, &never), "never approved");
    let rare = Scenario::parse(
        "task_time: 5m\nheartbeat_every: 15m\ntasks: {packer-kickstart: [{outcome: succeed, after: 40m}]}\nexpect: {delivered: true, failures: {\"5\": 0}, refused: 1, builds: {kickstart: 2}, task_runs: {packer-kickstart: 1}}\n",
    )
    .unwrap();
    // On gates checked every minute (the pipeline before webhooks: with an
    // hour between checks the gate would not be looked at in time).
    let minutely = root().join("tests/fixtures/before-webhooks/staged-image-build.yml");
    let r = in_memory(&minutely, Release::LATEST, &rare);
    // (Its wiring is the old text's: no step timeouts.)
    assert!(
        r.failures.is_empty(),
        "rare heartbeats: {:#?}\n{}",
        r.failures,
        timeline(&r)
    );
    let text = timeline(&r);
    assert!(
        text.contains("kickstart #2")
            && text.contains("cannot start 5")
            && !text.contains("heartbeat 5 refused"),
        "{text}"
    );
    for (bad, want) in [
        ("approve_after: soon\n", "approve_after: "),
        (
            "heartbeat_every: 0s\n",
            "heartbeat_every: must be longer than 0s",
        ),
        ("heartbeats: 1m\n", "unknown field `heartbeats`"),
    ] {
        let e = Scenario::parse(bad).unwrap_err();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

// ------------------------------------------------- the packaged programs

/// The model's steps run by the packaged programs against a test world's
/// store (a directory or the S3 server), and tasks optionally run for real
/// (their own scripts, with stub scripts standing in for Packer and
/// Ansible). Each program runs to its end while virtual time stands still.
pub(crate) struct Processes {
    pub w: World,
    real_tasks: bool,
    work: PathBuf,
    n: std::cell::Cell<u32>,
    /// The stand-in ATC the programs post their check webhooks to.
    atc: crate::util::StandInAtc,
}

impl Processes {
    pub(crate) fn new(w: World, real_tasks: bool) -> Processes {
        let work = w.tmp.path().join("concourse");
        std::fs::create_dir_all(work.join("outcomes")).unwrap();
        std::fs::create_dir_all(work.join("bin")).unwrap();
        let _ = std::os::unix::fs::symlink(crate::util::cli_path(), work.join("bin/build-state"));
        Processes {
            w,
            real_tasks,
            work,
            n: std::cell::Cell::new(0),
            atc: crate::util::StandInAtc::start(Some(201)),
        }
    }

    /// What the next runs of a stub (`kickstart`, `stage-25`, ...) print:
    /// `ok`, or an error (exit 1).
    pub(crate) fn script(&self, stub: &str, lines: &[&str]) {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(self.work.join("outcomes").join(stub), body).unwrap();
    }

    /// The storage fields of this world's sources.
    pub(crate) fn storage(&self) -> Value {
        let mut s = self.w.source();
        s["prefix"] = json!(self.w.prefix);
        s.as_object_mut().unwrap().remove("build_id");
        s
    }

    fn dir(&self, what: &str) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let d = self.work.join(format!("{what}-{}", self.n.get()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(dir: &Path, artifacts: &BTreeMap<String, Artifacts>) {
        for (name, files) in artifacts {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            for (path, body) in files {
                let p = dir.join(name).join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, body).unwrap();
            }
        }
    }

    fn read(dir: &Path) -> Artifacts {
        let mut out = Artifacts::new();
        for e in walk(dir) {
            let rel = e.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            out.insert(rel, std::fs::read(&e).unwrap());
        }
        out
    }

    /// `build-state COMMAND BUILD_ID N ARGS... --run R --attempt A` on
    /// `resource`'s source, as a task's script runs it for `claim`'s
    /// attempt: what it printed, or why it was refused.
    fn for_attempt(
        &self,
        resource: &Resource,
        command: &str,
        claim: &build_state::model::Claim,
        extra: Vec<String>,
    ) -> Result<String, StepError> {
        let file = self.dir(command).join("source.json");
        std::fs::write(&file, resource.source.to_string()).unwrap();
        let mut args = vec![
            command.to_string(),
            resource.source["build_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            claim.state.to_string(),
        ];
        args.extend(extra);
        if let Some(r) = claim.run {
            args.extend(["--run".into(), r.to_string()]);
        }
        if let Some(a) = claim.attempt {
            args.extend(["--attempt".into(), a.to_string()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.w.bare_cli(&argv).arg("--source").arg(&file).run();
        if out.code != Some(0) {
            return Err(said(&out));
        }
        Ok(out.stdout.trim().to_string())
    }

    fn stubs(dir: &Path) {
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
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// What a program that failed said, judged as the in-memory steps judge
/// it: the store's failure, or the resource's refusal.
fn said(out: &crate::util::Output) -> StepError {
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or(out.stderr.trim())
        .to_string();
    let store = [
        "connection",
        "store is down",
        "timed out",
        "dispatch failure",
        "service error",
    ];
    if store.iter().any(|s| line.contains(s)) {
        StepError::Unavailable(line)
    } else {
        StepError::Refused(line)
    }
}

impl Steps for Processes {
    async fn check(
        &self,
        resource: &Resource,
        from: Option<&Value>,
        _now: Timestamp,
    ) -> Result<Vec<Value>, StepError> {
        let mut req = json!({"source": resource.source});
        if let Some(v) = from {
            req["version"] = v.clone();
        }
        let out = Step::program(&self.w, "check").stdin(req).run();
        if out.code != Some(0) {
            return Err(said(&out));
        }
        Ok(serde_json::from_str(&out.stdout).unwrap())
    }

    async fn get(
        &self,
        resource: &Resource,
        version: &Value,
        params: &Value,
        _now: Timestamp,
    ) -> Result<Artifacts, StepError> {
        let dest = self.dir("get");
        let out = Step::program(&self.w, "in")
            .arg(&dest)
            .stdin(json!({"source": resource.source, "version": version, "params": params}))
            .run();
        if out.code != Some(0) {
            return Err(said(&out));
        }
        Ok(Self::read(&dest))
    }

    async fn put(
        &self,
        resource: &Resource,
        params: &Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Artifacts>,
        _now: Timestamp,
    ) -> Result<(Value, Vec<String>), StepError> {
        let dir = self.dir("put");
        Self::write(&dir, artifacts);
        let mut step = Step::program(&self.w, "out")
            .arg(&dir)
            .stdin(json!({"source": resource.source, "params": params}));
        for (k, v) in [
            ("BUILD_TEAM_NAME", &env.team),
            ("BUILD_PIPELINE_NAME", &env.pipeline),
            ("BUILD_JOB_NAME", &env.job),
            ("BUILD_NAME", &env.build_name),
            ("BUILD_ID", &env.build_id),
            ("ATC_EXTERNAL_URL", &env.external_url),
            ("BUILD_STATUS", &env.status),
            ("BUILD_URL", &env.url),
        ] {
            if let Some(v) = v {
                step = step.env(k, v);
            }
        }
        // The ATC the programs' webhooks reach: the stand-in.
        step = step.env("ATC_EXTERNAL_URL", &self.atc.url);
        let out = step.run();
        if out.code != Some(0) {
            return Err(said(&out));
        }
        let reply: Value = serde_json::from_str(&out.stdout).unwrap();
        let notes = out
            .stderr
            .lines()
            .map(|l| l.trim_start_matches("build-state: ").to_string())
            .collect();
        Ok((reply["version"].clone(), notes))
    }

    async fn document(&self, _resource: &Resource) -> Option<Document> {
        // The world reads S3 on a runtime of its own: not on this thread.
        let w = &self.w;
        let body = std::thread::scope(|s| s.spawn(|| w.raw("state.json")).join().unwrap())?;
        serde_json::from_slice(&body).ok()
    }

    /// The webhooks the stand-in ATC got since the last call, as the
    /// simulation's ATC takes them.
    fn take_handoffs(&self) -> Vec<Handed> {
        self.atc
            .take()
            .iter()
            .filter_map(|l| {
                let path = l.strip_prefix("POST ")?.split(' ').next()?;
                let url = url::Url::parse(&format!("http://atc{path}")).ok()?;
                let segs: Vec<String> = url.path_segments()?.map(percent_decode).collect();
                let resource = segs.get(segs.len().checked_sub(3)?)?.clone();
                let token = url
                    .query_pairs()
                    .find(|(k, _)| k == "webhook_token")
                    .map(|(_, v)| v.into_owned())?;
                Some(Handed { resource, token })
            })
            .collect()
    }

    async fn heartbeat(&self, _resource: &Resource) -> Option<build_state::model::Heartbeat> {
        let w = &self.w;
        let body = std::thread::scope(|s| s.spawn(|| w.raw("heartbeat.json")).join().unwrap())?;
        serde_json::from_slice(&body).ok()
    }

    /// The CLI's `created`, as the task's script runs it.
    async fn created(
        &self,
        resource: &Resource,
        claim: build_state::model::Claim,
        resources: BTreeMap<String, String>,
    ) -> Result<String, StepError> {
        let pairs = resources.iter().map(|(n, i)| format!("{n}={i}")).collect();
        self.for_attempt(resource, "created", &claim, pairs)
    }

    /// The CLI's heartbeat, as the task's script runs it.
    async fn beat(
        &self,
        resource: &Resource,
        claim: build_state::model::Claim,
    ) -> Result<String, StepError> {
        self.for_attempt(resource, "heartbeat", &claim, Vec::new())
    }

    async fn task(
        &self,
        task: &TaskStep,
        artifacts: &BTreeMap<String, Artifacts>,
    ) -> Option<(BuildStatus, BTreeMap<String, Artifacts>, String)> {
        if !self.real_tasks {
            return None;
        }
        let config = task.config.as_ref()?;
        let dir = self.dir("task");
        Self::write(&dir, artifacts);
        if task.inputs.iter().any(|(n, _)| n == "image-repo") {
            Self::stubs(&dir.join("image-repo"));
        }
        for o in &task.outputs {
            std::fs::create_dir_all(dir.join(o)).unwrap();
        }
        let mut cmd = std::process::Command::new(config["run"]["path"].as_str()?);
        cmd.args(
            config["run"]["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        )
        .current_dir(&dir)
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
        let outputs = task
            .outputs
            .iter()
            .map(|o| (o.clone(), Self::read(&dir.join(o))))
            .collect();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = if out.status.success() {
            &stdout
        } else {
            &stderr
        }
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
        let status = if out.status.success() {
            BuildStatus::Succeeded
        } else {
            BuildStatus::Failed
        };
        Some((status, outputs, last))
    }
}

/// Plays `file` through the packaged programs on `w`'s store.
fn through_programs(
    steps: Rc<Processes>,
    file: &str,
    release: Release,
    s: &Scenario,
    extra: &[(&str, &str)],
) -> Report {
    let path = root().join("pipelines").join(file);
    let p = typed(&path, release, &vars(extra), steps.storage());
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    simulate(&p, &name, release, s, steps).unwrap()
}

/// The first `start N` of a document's history (a task's records of what
/// it created come between the events of its stage).
fn first_start(doc: &Value, n: u32) -> Value {
    doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "start" && e["target"] == n)
        .cloned()
        .unwrap_or_else(|| panic!("no start {n} in {doc}"))
}

/// End to end: the staged pipeline delivered by the real `check`, `in` and
/// `out` over the store (a kickstart failure retried on the way), on 8.2
/// and with the 7.x variant on 7.11.
fn staged_pipeline_through_the_programs(w: World) {
    let steps = Rc::new(Processes::new(w, false));
    let s = Scenario::parse(
        "task_time: 20s\ntasks: {packer-kickstart: [{outcome: fail, error: \"ssh timeout\"}]}\nexpect: {delivered: true, failures: {\"5\": 1}, builds: {kickstart: 2}}\n",
    )
    .unwrap();
    let fast = [("retry_backoff", "0s"), ("kickstart_backoff", "0s")];
    let r = through_programs(
        steps.clone(),
        "staged-image-build.yml",
        Release::LATEST,
        &s,
        &fast,
    );
    assert_passed(&r, "8.2");
    let doc = steps.w.doc();
    assert_eq!(doc["vars"]["packer_kickstart"], "kickstart #2");
    assert_eq!(
        first_start(&doc, 5)["by"]["build_url"],
        "https://ci.example.com/teams/main/pipelines/staged-image-build/jobs/kickstart/builds/1"
    );
    // The kickstart's task recorded Packer's builder instance through the
    // CLI; its retry leaked it and the cleanup job released it.
    let rs = doc["resources"].as_array().unwrap();
    assert!(!rs.is_empty(), "{doc}");
    assert!(rs.iter().all(|r| r["holding"] == "released"), "{rs:?}");
    // The 7.x variant on 7.11, on a build of its own (on the local store:
    // the S3 store's behaviour is the same, and every process costs).
    if steps.w.kind == crate::util::Kind::S3 {
        return;
    }
    let Ok(processes) = Rc::try_unwrap(steps) else {
        panic!("the simulation is over")
    };
    let mut w = processes.w;
    w.build_id = "rhel8-db".into();
    let steps = Rc::new(Processes::new(w, false));
    let seven = [("build_id", "rhel8-db"), fast[0], fast[1]];
    let r = through_programs(
        steps.clone(),
        "staged-image-build-7x.yml",
        "7.11".parse().unwrap(),
        &s,
        &seven,
    );
    assert_passed(&r, "7.11");
    // 7.11 gives no BUILD_URL: the resource makes it from ATC_EXTERNAL_URL
    // (here the stand-in ATC's, which took the webhooks).
    assert_eq!(
        first_start(&steps.w.doc(), 5)["by"]["build_url"],
        format!(
            "{}/teams/main/pipelines/staged-image-build-7x/jobs/kickstart/builds/1",
            steps.atc.url
        )
    );
    assert!(
        r.summary.webhooks > 10,
        "handed off by webhook: {}",
        r.summary.webhooks
    );
}

/// The single-job pipeline, its task's own script run with stubs for
/// Packer and Ansible, through a failure and its retry; then a stage that
/// fails three times blocks until a human's retry.
fn single_job_through_the_programs(w: World) {
    w.put(json!({"init": true})).ok();
    let steps = Rc::new(Processes::new(w, true));
    steps.script("kickstart", &["packer: ssh timeout", "ok"]);
    let fast = [("retry_backoff", "0s")];
    let s =
        Scenario::parse("until: 12h\nexpect: {delivered: true, failures: {\"5\": 1}}\n").unwrap();
    let r = through_programs(
        steps.clone(),
        "resumable-single-job.yml",
        Release::LATEST,
        &s,
        &fast,
    );
    assert_passed(&r, "single job");
    let runs = &r.played.atc.timeline;
    assert!(
        runs.iter()
            .any(|l| l.what.contains("nothing to run now (done)")),
        "{}",
        timeline(&r)
    );
    assert!(
        r.played.atc.cache_hits > 0,
        "the get cache served a version again"
    );
}

crate::both_stores!(
    staged_pipeline_through_the_programs,
    single_job_through_the_programs
);
