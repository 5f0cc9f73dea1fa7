//! The `build-state` CLI, against both stores: the same transitions,
//! parser and stores as the resource.

use crate::util::{Kind, World};
use serde_json::{Value, json};
use std::path::Path;

fn actions_show_and_history(w: World) {
    failed_at_5_by_hand(&w);
    let show = w.cli(&["show", "rhel8-web"]).text();
    for want in [
        "rhel8-web (run 1, revision 4)",
        "5 kickstart initiated",
        "failed",
        "packer: build timed out (transient)",
        "owner=platform",
        "cli:",
    ] {
        assert!(show.contains(want), "{want:?} missing from:\n{show}");
    }
    let doc: Value = serde_json::from_str(&w.cli(&["show", "rhel8-web", "--json"]).text()).unwrap();
    assert_eq!(doc, w.doc());
    // The CLI records who ran it: $USER, and the host when it has a name.
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let recorded = doc["history"][0]["by"]["user"].as_str().unwrap();
    assert!(
        recorded == user || recorded.starts_with(&format!("{user}@")),
        "{recorded}"
    );
    let history: Value =
        serde_json::from_str(&w.cli(&["history", "rhel8-web", "--json"]).text()).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 4);
    let table = w.cli(&["history", "rhel8-web"]).text();
    assert!(table.starts_with("REV  AT"), "{table}");
    assert!(
        table.contains("complete 0") && table.contains("by hand"),
        "{table}"
    );
}

/// A build taken to 5, failed, by the CLI (labelled, a note, an error
/// file): what `show` and `history` are checked on.
fn failed_at_5_by_hand(w: &World) {
    let out = w
        .cli(&["init", "rhel8-web", "--label", "owner=platform"])
        .text();
    assert_eq!(out, "rhel8-web: init → 0 initial (pending), revision 1\n");
    w.cli(&["start", "rhel8-web", "0"]).text();
    w.cli(&["complete", "rhel8-web", "0", "--note", "by hand"])
        .text();
    w.write_file("err.txt", "packer: build timed out\n");
    let err_file = w.sources().join("err.txt");
    w.cli(&[
        "fail",
        "rhel8-web",
        "5",
        "--error-file",
        err_file.to_str().unwrap(),
    ])
    .text();
}

/// Refused, unknown, unreadable: exit codes 1, 3, 1 (2 for a usage
/// mistake); nothing written.
fn the_clis_refusals_write_nothing(w: World) {
    failed_at_5_by_hand(&w);
    let before = w.raw("state.json");
    let err = w.cli(&["complete", "rhel8-web", "25"]).fails();
    assert!(err.contains("rhel8-web is at 5 (kickstart initiated, failed); cannot complete 25; allowed now: start 5"), "{err}");
    let err = w.cli(&["complete", "rhel8-web", "7"]).fails();
    assert!(err.contains("state 7 is not on the ladder"), "{err}");
    let err = w.cli(&["show", "no-such-build"]).fails_with(3);
    assert!(err.contains("no-such-build has no state at"), "{err}");
    let err = w.cli(&["start", "no-such-build", "0"]).fails_with(3);
    assert!(
        err.contains("no-such-build has no state yet; cannot start 0 (put `init: true` first)"),
        "{err}"
    );
    w.write_file("bad-vars.json", "{not json");
    let bad = w.sources().join("bad-vars.json");
    let err = w
        .cli(&[
            "retry",
            "rhel8-web",
            "5",
            "--vars-file",
            bad.to_str().unwrap(),
        ])
        .fails();
    assert!(
        err.contains("--vars-file") && err.contains("is not valid JSON"),
        "{err}"
    );
    let err = w.cli(&["fail", "rhel8-web", "5"]).fails();
    assert!(err.contains("fail needs --error or --error-file"), "{err}");
    let err = w
        .cli(&[
            "set",
            "rhel8-web",
            "40",
            "--status",
            "done",
            "--reason",
            "x",
        ])
        .fails();
    assert!(err.contains("--status \"done\" must be one of"), "{err}");
    assert_eq!(w.raw("state.json"), before);
    let usage = w.cli(&["complete", "rhel8-web"]).run();
    assert_eq!(usage.code, Some(2), "usage errors exit 2: {}", usage.stderr);
}

/// A human's retry, set, cancel and restart from the CLI: a new run, the
/// old one archived.
fn a_human_overrides_and_restarts_by_hand(w: World) {
    failed_at_5_by_hand(&w);
    w.cli(&["retry", "rhel8-web", "5"]).text();
    w.cli(&[
        "set",
        "rhel8-web",
        "40",
        "--reason",
        "stages 5-35 done by hand",
    ])
    .text();
    assert_eq!(w.doc()["state"], 40);
    w.cli(&["cancel", "rhel8-web", "superseded"]).text();
    assert_eq!(w.doc()["status"], "cancelled");
    let out = w.cli(&["restart", "rhel8-web", "--json"]).text();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["written"].as_bool(), v["document"]["run"].as_u64()),
        (Some(true), Some(2))
    );
    assert!(w.raw("runs/1.json").is_some());
}

fn update_takes_the_old_scripts_arguments(w: World) {
    w.cli(&["init", "rhel8-web"]).text();
    w.cli(&["update", "rhel8-web", "0", "completed"]).text();
    w.cli(&["update", "rhel8-web", "5"]).text();
    assert_eq!(w.doc()["status"], "in_progress");
    let out = w
        .cli(&[
            "update",
            "rhel8-web",
            "5",
            "failed",
            "kickstart: anaconda error",
        ])
        .text();
    assert!(out.contains("5 kickstart initiated (failed)"), "{out}");
    assert_eq!(
        w.doc()["last_error"]["message"],
        "kickstart: anaconda error"
    );
    let err = w.cli(&["update", "rhel8-web", "5", "done"]).fails();
    assert!(
        err.contains("update: status \"done\" must be completed or failed"),
        "{err}"
    );
    let err = w.cli(&["update", "rhel8-web", "10", "completed"]).fails();
    assert!(err.contains("cannot complete 10"), "{err}");
}

/// The CLI inside an image build (Packer's provisioner, an Ansible task)
/// is given only where the states are; it decides as the pipeline's
/// resource does, by the policy the resource recorded in the document:
/// its ladder, its backoff, its error patterns.
fn the_cli_decides_by_the_pipelines_policy(w: World) {
    let w = w.with(json!({
        "states": [
            {"code": 0, "name": "queued"}, {"code": 5, "name": "kickstart"},
            {"code": 10, "name": "sealed"}, {"code": 15, "name": "delivered"}
        ],
        "retry": {"backoff": "7m", "max_attempts": 4},
        "persistent_errors": ["(?i)license"],
    }));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).ok();
    assert!(
        w.doc()["history"][0]["policy"]["retry"]["backoff"] == "7m",
        "recorded once"
    );
    assert!(
        w.doc()["history"][1].get("policy").is_none(),
        "not again while it is the same"
    );
    // Only the storage, as a provisioner would have it.
    let mut storage = w.source();
    for k in ["states", "retry", "persistent_errors"] {
        storage.as_object_mut().unwrap().remove(k);
    }
    std::fs::write(w.tmp.path().join("storage.json"), storage.to_string()).unwrap();
    let cli = |args: &[&str]| w.bare_cli(args).arg("--source").arg("storage.json");
    let shown = cli(&["show", "rhel8-web"]).text();
    assert!(
        shown.contains("5 kickstart"),
        "the resource's ladder:\n{shown}"
    );
    let out = cli(&["update", "rhel8-web", "5", "failed", "ssh timeout"]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let doc = w.doc();
    let event = &doc["history"][3];
    let at = chrono::DateTime::parse_from_rfc3339(event["at"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(doc["retry_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        (due - at).num_seconds(),
        420,
        "the pipeline's 7m backoff, not 30s"
    );
    assert_eq!(doc["status"], "failed");
    // The pipeline's persistent_errors block at once.
    cli(&["retry", "rhel8-web", "5"]).text();
    cli(&["start", "rhel8-web", "5"]).text();
    cli(&["fail", "rhel8-web", "5", "--error", "RHEL license rejected"]).text();
    let doc = w.doc();
    assert_eq!(doc["status"], "blocked");
    assert_eq!(doc["last_error"]["rule"], "persistent_errors: (?i)license");
    // No CLI event records a policy: only the resource's do.
    assert_eq!(
        doc["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e.get("policy").is_some())
            .count(),
        1
    );
    // Settings of its own are used, with a warning that they differ.
    let mut own = w.source();
    own["retry"] = json!({"backoff": "1m", "max_attempts": 4});
    std::fs::write(w.tmp.path().join("own.json"), own.to_string()).unwrap();
    let out = w
        .bare_cli(&["show", "rhel8-web", "--source", "own.json"])
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("warning: rhel8-web: the states, retry or error patterns given here differ from the ones the pipeline's resource recorded in the document; deciding by the ones given here"),
        "{}",
        out.stderr
    );
    // The same settings as the resource's: no warning.
    let out = w.cli(&["show", "rhel8-web"]).run();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

/// `list` keeps the documents it read in a local cache: a second list of
/// an unchanged fleet answers the same from it, a change is seen, a corrupt
/// cache is rebuilt, and `--no-cache` reads everything.
fn list_caches_what_it_read(w: World) {
    for id in ["alpha", "beta"] {
        w.cli(&["init", id]).text();
    }
    let cache = w.tmp.path().join("cache");
    let list = |extra: &[&str]| {
        let mut args = vec!["list", "--json"];
        args.extend_from_slice(extra);
        let out = w
            .cli(&args)
            .env("BUILD_STATE_CACHE_DIR", cache.to_str().unwrap())
            .run();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        (
            serde_json::from_str::<Value>(&out.stdout).unwrap(),
            out.stderr,
        )
    };
    let (cold, _) = list(&[]);
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file for this store and prefix");
    let (warm, _) = list(&[]);
    assert_eq!(warm, cold);
    w.cli(&["complete", "beta", "0"]).text();
    let (changed, _) = list(&[]);
    assert_eq!(changed[1]["state"], 5, "a change is seen: {changed}");
    let file = files[0].as_ref().unwrap().path();
    let mut old: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    old["tool"] = json!("0.0.1-older");
    std::fs::write(&file, old.to_string()).unwrap();
    let (rebuilt, stderr) = list(&[]);
    assert_eq!(rebuilt, changed);
    assert!(
        stderr.contains("is from another version or store; rebuilding it"),
        "{stderr}"
    );
    std::fs::write(&file, b"garbage").unwrap();
    let (rebuilt, stderr) = list(&[]);
    assert_eq!(rebuilt, changed);
    assert!(stderr.contains("is unreadable"), "{stderr}");
    let (fresh, _) = list(&["--no-cache"]);
    assert_eq!(fresh, changed);
}

/// `promtool` (see `util::missing_tool` for when it is not installed).
#[track_caller]
fn promtool() -> Option<std::path::PathBuf> {
    crate::util::promtool("promtool's check of the metrics or the alert rules")
}

/// Three builds: `rhel8-web` blocked at 5 by `error` (persistent),
/// `rhel9-db` in progress at 5, and `broken`, whose document is not JSON.
fn small_fleet(w: &World, error: &str) {
    w.cli(&["init", "rhel8-web"]).text();
    w.cli(&["complete", "rhel8-web", "0"]).text();
    w.cli(&["start", "rhel8-web", "5"]).text();
    w.cli(&[
        "fail",
        "rhel8-web",
        "5",
        "--error",
        error,
        "--kind",
        "persistent",
    ])
    .text();
    w.cli(&["init", "rhel9-db"]).text();
    w.cli(&["complete", "rhel9-db", "0"]).text();
    w.cli(&["start", "rhel9-db", "5"]).text();
    w.write_raw_key(&format!("{}broken/state.json", w.prefix), b"{not json");
}

/// `metrics`: the fleet in the Prometheus text format, which promtool
/// accepts, with stable names; `--out` writes the same atomically.
fn metrics_for_prometheus(w: World) {
    small_fleet(&w, "license expired");
    let text = w.cli(&["metrics"]).text();
    for want in [
        "# TYPE build_state_builds gauge",
        "build_state_builds{state=\"5\",state_name=\"kickstart initiated\",status=\"blocked\"} 1",
        "build_state_blocked{build_id=\"rhel8-web\",state=\"5\",state_name=\"kickstart initiated\"} 1",
        "build_state_attempts{build_id=\"rhel8-web\",state=\"5\",state_name=\"kickstart initiated\"} 1",
        "# TYPE build_state_stage_failures_total counter",
        "build_state_stage_failures_total{state=\"5\",state_name=\"kickstart initiated\"} 1",
        "# TYPE build_state_stage_seconds_total counter",
        "build_state_unreadable_documents 1",
        "build_state_stale_stages 0",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert!(
        !text.contains("# EOF"),
        "the Prometheus text format, not OpenMetrics"
    );
    let file = w.tmp.path().join("build_state.prom");
    w.cli(&["metrics", "--out", file.to_str().unwrap()]).text();
    let written = std::fs::read_to_string(&file).unwrap();
    // The same text, line for line; only the ages (seconds since a time,
    // read by each run at its own now) may differ.
    let timeless = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| match l.starts_with('#') || !l.contains("_seconds") {
                true => l.to_string(),
                false => l
                    .rsplit_once(' ')
                    .map_or(l, |(series, _)| series)
                    .to_string(),
            })
            .collect()
    };
    assert_eq!(timeless(&written), timeless(&text));
    assert_eq!(written.lines().count(), text.lines().count());
    promtool_accepts(&text);
}

/// `promtool check metrics` accepts `text` (when promtool is installed).
pub(crate) fn promtool_accepts(text: &str) {
    let Some(promtool) = promtool() else { return };
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The RGB pixels of a PNG file.
pub(crate) fn rgb_pixels(png_path: &Path) -> Vec<[u8; 3]> {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// The example alert rules are valid and do what their tests say.
#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    for args in [
        ["check", "rules", "build-state-alerts.yml"],
        ["test", "rules", "build-state-alerts.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn list_filters_and_reports(w: World) {
    let err = w.cli(&["list"]).run();
    assert_eq!(err.code, Some(0));
    assert!(
        err.stderr.contains("no builds under this prefix"),
        "{}",
        err.stderr
    );
    for id in ["alpha", "beta", "gamma"] {
        w.cli(&["init", id]).text();
        w.cli(&["complete", id, "0"]).text();
    }
    w.cli(&[
        "fail",
        "beta",
        "5",
        "--error",
        "packer: quota exceeded",
        "--kind",
        "persistent",
    ])
    .text();
    w.cli(&["fail", "gamma", "5", "--error", "ssh timeout"])
        .text();
    let table = w.cli(&["list"]).text();
    // The fleet's table, then the builds that need a human (beta, blocked).
    let (fleet, needs) = table
        .split_once("\n\n")
        .expect("a list of who needs a human");
    let lines: Vec<&str> = fleet.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let needs = crate::util::squeeze(needs);
    assert!(
        needs.starts_with("Needs a human (1):")
            && needs.contains("beta 5 kickstart initiated blocked")
            && needs.contains("a persistent error: packer: quota exceeded")
            && needs.contains("fix the cause, then: build-state retry beta 5"),
        "{needs}"
    );
    assert!(
        lines[0].starts_with("BUILD") && lines[0].contains("LAST ERROR"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("beta")
            && lines[2].contains("blocked")
            && lines[2].contains("quota exceeded"),
        "{table}"
    );
    let blocked: Value =
        serde_json::from_str(&w.cli(&["list", "--status", "blocked", "--json"]).text()).unwrap();
    assert_eq!(blocked.as_array().unwrap().len(), 1);
    assert_eq!(blocked[0]["build_id"], "beta");
    // A build elsewhere, for the filters to leave out.
    w.cli(&["init", "omega"]).text();
    let at5: Value =
        serde_json::from_str(&w.cli(&["list", "--state", "5", "--json"]).text()).unwrap();
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["build_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&at5), ["alpha", "beta", "gamma"]);
    let at0: Value =
        serde_json::from_str(&w.cli(&["list", "--state", "0", "--json"]).text()).unwrap();
    assert_eq!(ids(&at0), ["omega"]);
    let pending: Value =
        serde_json::from_str(&w.cli(&["list", "--status", "pending", "--json"]).text()).unwrap();
    assert_eq!(ids(&pending), ["alpha", "omega"]);
    // A corrupt document shows as unreadable; the others still list.
    w.write_raw_key(&format!("{}delta/state.json", w.prefix), b"{broken");
    let table = w.cli(&["list"]).text();
    assert!(
        table.contains("delta") && table.contains("unreadable"),
        "{table}"
    );
}

fn watch_prints_each_transition_once(w: World) {
    use std::io::{BufRead, BufReader};
    w.cli(&["init", "rhel8-web"]).text();
    let file = w.tmp.path().join("source.json");
    let mut child = crate::util::Running(
        std::process::Command::new(crate::util::cli_path())
            .args([
                "watch",
                "rhel8-web",
                "--interval",
                "100ms",
                "--for",
                "60s",
                "--source",
            ])
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Each line read is the barrier for the next write: no sleep decides
    // what the watch has seen (`--for 60s` bounds a watch that prints nothing).
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = || lines.next().expect("watch ended early").unwrap();
    // Where the build stands when the watch starts...
    let first = line();
    assert!(first.contains("rhel8-web r1 init → 0 pending"), "{first}");
    // ...then each transition as it happens, once.
    w.put(json!({"complete": 0})).ok();
    let r2 = line();
    assert!(r2.contains("r2 complete 0 → 5 pending"), "{r2}");
    w.put(json!({"start": 5})).ok();
    w.put(json!({"fail": 5, "error": "boom"})).ok();
    let (r3, r4) = (line(), line());
    assert!(r3.contains("r3 start 5 → 5 in_progress"), "{r3}");
    assert!(
        r4.contains("r4 fail 5 → 5 failed (attempt 1)") && r4.ends_with(": boom (transient)"),
        "{r4}"
    );
    // The next line is the next transition, not one of those again.
    w.put(json!({"retry": 5})).ok();
    let r5 = line();
    assert!(r5.contains("r5 retry 5 → 5 pending"), "{r5}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Every build under the prefix, as JSON lines.
    let out = w
        .cli(&["watch", "--interval", "100ms", "--for", "300ms", "--json"])
        .text();
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["build_id"].as_str(), first["revision"].as_u64()),
        (Some("rhel8-web"), Some(5))
    );
}

/// The source from a pipeline file: anchors, merge keys and `((vars))`,
/// only the chosen resource's vars needed, a resource it lacks named.
fn sources_from_pipelines_and_the_environment(w: World) {
    // A pipeline with anchors, a merge key and ((vars)).
    let storage = match w.kind {
        Kind::Local => json!({"local_dir": "((dir))"}),
        Kind::S3 => {
            json!({"bucket": "((bucket))", "endpoint": "((endpoint))", "use_path_style": true,
                           "access_key_id": "((key))", "secret_access_key": "((secret))"})
        }
    };
    let pipeline = format!(
        "storage: &storage {storage}\nresource_types:\n- name: state-type\n  type: registry-image\n  source: {{repository: registry.example.com/platform/build-state}}\nresources:\n- name: rhel8\n  type: state-type\n  source:\n    <<: *storage\n    prefix: ((prefix))\n    build_id: rhel8-web\n    gate: {{state: 5}}\n    labels: {{team: ((team_id))}}\n- name: repo\n  type: git\n  source: {{uri: ((repo_uri))}}\njobs:\n- name: stage\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, 'echo attempt $((BUILD_STATE_ATTEMPTS + 1)) of ((max))']}}\n"
    );
    w.write_file("pipeline.yml", &pipeline);
    let p = w.sources().join("pipeline.yml");
    let dir = w.states_dir();
    let vars = [
        format!("dir={}", dir.display()),
        format!("bucket={}", crate::util::BUCKET),
        format!(
            "endpoint={}",
            if w.kind == Kind::S3 {
                crate::util::s3().endpoint.clone()
            } else {
                String::new()
            }
        ),
        "key=test".to_string(),
        "secret=test".to_string(),
        format!("prefix={}", w.prefix),
        // fly's -v gives strings: a number-like value stays a string.
        "team_id=12345".to_string(),
    ];
    let mut args = vec![
        "init",
        "rhel8-web",
        "--pipeline",
        p.to_str().unwrap(),
        "--resource",
        "rhel8",
    ];
    for v in &vars {
        args.push("-v");
        args.push(v);
    }
    // Only the chosen resource's vars are needed: not ((repo_uri)) nor
    // ((max)), and the shell's $((...)) is no var at all.
    w.bare_cli(&args).text();
    assert_eq!(w.doc()["revision"], 1);
    assert_eq!(w.doc()["labels"]["team"], "12345");
    let err = w
        .bare_cli(&[
            "show",
            "rhel8-web",
            "--pipeline",
            p.to_str().unwrap(),
            "--resource",
            "rhel8",
        ])
        .fails();
    assert!(
        err.contains("uses ((") && err.contains("that no -v gives"),
        "{err}"
    );
    let err = w
        .bare_cli(&[
            "show",
            "rhel8-web",
            "--pipeline",
            p.to_str().unwrap(),
            "--resource",
            "nope",
            "-v",
            "x=y",
        ])
        .fails();
    assert!(
        err.contains("has no build-state resource named \"nope\" (it has: rhel8)"),
        "{err}"
    );
}

/// The source from `BUILD_STATE_*` variables (credentials from the AWS
/// chain), or from a file (YAML, checked by the resource's own types);
/// none, or a bad one, is a clear error.
fn sources_from_the_environment_and_files(w: World) {
    w.cli(&["init", "rhel8-web"]).text();
    let dir = w.states_dir();
    // BUILD_STATE_* variables, with credentials from the AWS chain.
    let mut step = w
        .bare_cli(&["complete", "rhel8-web", "0"])
        .env("BUILD_STATE_PREFIX", &w.prefix);
    step = match w.kind {
        Kind::Local => step.env("BUILD_STATE_LOCAL_DIR", dir.to_str().unwrap()),
        Kind::S3 => step
            .env("BUILD_STATE_BUCKET", crate::util::BUCKET)
            .env("BUILD_STATE_ENDPOINT", &crate::util::s3().endpoint)
            .env("BUILD_STATE_USE_PATH_STYLE", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true"),
    };
    step.text();
    assert_eq!(w.doc()["state"], 5);
    let err = w
        .bare_cli(&["show", "rhel8-web"])
        .env("BUILD_STATE_BUCKET", "")
        .fails();
    assert!(err.contains("no store: give --bucket"), "{err}");
    w.write_file("bad.yml", "bucket: [unclosed");
    let bad = w.sources().join("bad.yml");
    let err = w
        .bare_cli(&["show", "rhel8-web", "--source", bad.to_str().unwrap()])
        .fails();
    assert!(err.contains("--source: parsing"), "{err}");
    // The source file may be YAML, and is checked by the resource's own types.
    w.write_file("typo.yml", "local_dir: /tmp\nbukket: x\n");
    let typo = w.sources().join("typo.yml");
    let err = w
        .bare_cli(&["show", "rhel8-web", "--source", typo.to_str().unwrap()])
        .fails();
    assert!(
        err.contains("invalid source: bukket: unknown field `bukket`"),
        "{err}"
    );
}

fn states_and_completions(w: World) {
    let w = w.with(json!({"retry": {"states": {
        "5": {"max_attempts": 5, "backoff": "5m", "heartbeat_timeout": "10m"},
        "10-65": {"backoff": "1m", "timeout": "2h"},
        "15": {"approval": true},
        "25": {"resume_from": 10},
        "30": {"backoff": "2h"},
        "70-90": {"max_attempts": 1}}}}));
    let v: Value = serde_json::from_str(&w.cli(&["states", "--json"]).text()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 21);
    assert_eq!(
        v[1],
        json!({"code": 5, "name": "kickstart initiated", "policy": "5", "max_attempts": 5,
               "backoff": "5m", "factor": 2.0, "max_backoff": "1h",
               "waits": ["5m", "10m", "20m", "40m"], "resume_from": null, "timeout": null,
               "heartbeat_timeout": "10m", "approval": false, "final": false})
    );
    assert_eq!(v[3]["approval"], true);
    assert_eq!(v[20]["final"], true);
    assert_eq!(
        (v[2]["policy"].as_str(), v[2]["timeout"].as_str()),
        (Some("10-65"), Some("2h"))
    );
    assert_eq!(
        (v[5]["policy"].as_str(), v[5]["resume_from"].as_u64()),
        (Some("25"), Some(10))
    );
    let out = w.cli(&["states"]).run();
    let table = crate::util::squeeze(&out.stdout);
    // The effective policy per code: the waits spelled out, the heartbeat,
    // the approval; the final code runs no job.
    for want in [
        "5 kickstart initiated 5 5 5m, 10m, 20m, 40m retry - 10m -",
        "10 green image created 10-65 3 1m, 2m retry 2h - -",
        "15 base configuration 15 3 30s, 1m retry - - yes",
        "25 security baseline 25 3 30s, 1m back to 10 - - -",
        "80 backup setup 70-90 1 none: a human after the first failure a human - - -",
        "100 complete and delivered final - (delivered: no job runs here) - - - -",
    ] {
        assert!(table.contains(want), "{want:?} in:\n{table}");
    }
    // A backoff above its cap is said, with the wait used.
    assert!(
        out.stderr
            .contains("retry.states.30: backoff 2h is more than max_backoff 1h: every wait is 1h"),
        "{}",
        out.stderr
    );
    let last = table.lines().nth(21).unwrap();
    assert!(
        last.starts_with("100 ") && last.contains("complete and delivered"),
        "{table}"
    );
    // Each shell's script is its own: its shell's marker, and its shell's
    // syntax check passes on it.
    let mut scripts = Vec::new();
    for (shell, marker) in [
        ("bash", "complete -F _build__state"),
        ("zsh", "#compdef build-state"),
        ("fish", "complete -c build-state"),
    ] {
        let script = w.bare_cli(&["completions", shell]).text();
        assert!(
            script.contains(marker) && script.contains("import-sqlite"),
            "{shell}: {marker:?} missing:\n{}",
            &script[..script.len().min(400)]
        );
        let file = w.tmp.path().join(format!("completion.{shell}"));
        std::fs::write(&file, &script).unwrap();
        match std::process::Command::new(shell)
            .arg("-n")
            .arg(&file)
            .output()
        {
            Ok(check) => assert!(
                check.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&check.stderr)
            ),
            Err(_) => crate::util::missing_tool(shell, "the syntax check of its completion script"),
        }
        scripts.push(script);
    }
    assert!(scripts[0] != scripts[1] && scripts[1] != scripts[2] && scripts[0] != scripts[2]);
}

fn doctor_probes_conditional_writes(w: World) {
    let before = w.keys();
    let out = crate::util::squeeze(&w.cli(&["doctor"]).text());
    for want in [
        "If-None-Match: * ok",
        "If-Match ok",
        "compare-and-swap ok",
        "conditional GET ok",
        "race ok",
        "cleanup ok",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    assert!(
        !out.contains("FAILED") && !out.contains("concurrent"),
        "{out}"
    );
    // Ceph RGW matches If-Match only against the bare ETag: worked around,
    // and named.
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let bare =
        line("quirks").starts_with("quirks ok worked around: If-Match matches only the bare ETag");
    let ceph = w.kind == crate::util::Kind::S3 && crate::util::s3().server == "ceph";
    assert_eq!(bare, ceph, "{out}");
    // Ceph RGW 16 ignores If-Match on DELETE: a warning (prune's guard is
    // weaker there); the others refuse a stale one.
    let delete = line("If-Match DELETE");
    if ceph {
        assert!(
            delete.starts_with("If-Match DELETE WARNING the server ignores If-Match on DELETE"),
            "{out}"
        );
    } else {
        assert!(delete.starts_with("If-Match DELETE ok"), "{out}");
    }
    assert_eq!(w.keys(), before, "the scratch object is gone");
    let v: Value = serde_json::from_str(&w.cli(&["doctor", "--json"]).text()).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|c| c["result"] != "failed"),
        "{v}"
    );
}

fn resource_programs_as_subcommands(w: World) {
    let req = json!({"source": w.source(), "params": {"init": true}}).to_string();
    let out: Value =
        serde_json::from_str(&w.bare_cli(&["out"]).arg(w.sources()).raw_stdin(&req).text())
            .unwrap();
    assert_eq!(out["version"]["revision"], "1");
    let req = json!({"source": w.source()}).to_string();
    let versions: Value =
        serde_json::from_str(&w.bare_cli(&["check"]).raw_stdin(&req).text()).unwrap();
    assert_eq!(versions[0]["revision"], "1");
    let dest = w.tmp.path().join("fly-in");
    let req = json!({"source": w.source(), "version": {"revision": "1"}}).to_string();
    w.bare_cli(&["in"]).arg(&dest).raw_stdin(&req).text();
    assert_eq!(std::fs::read_to_string(dest.join("action")).unwrap(), "run");
}

fn create_old_db(
    path: &Path,
    builds: &[(&str, i64, &str)],
    history: &[(&str, i64, &str, &str, Option<&str>)],
) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE builds (build_id TEXT PRIMARY KEY, current_state INTEGER, cloud_provider TEXT,
           image_type TEXT, start_time DATETIME, last_update DATETIME, status TEXT);
         CREATE TABLE state_history (id INTEGER PRIMARY KEY AUTOINCREMENT, build_id TEXT, state INTEGER,
           timestamp DATETIME, status TEXT, error_message TEXT);",
    )
    .unwrap();
    for (id, state, status) in builds {
        conn.execute(
            "INSERT INTO builds VALUES (?1, ?2, 'aws', 'rhel8', '2026-11-01 08:00:00', '2026-11-01 09:00:00', ?3)",
            rusqlite::params![id, state, status],
        )
        .unwrap();
    }
    for (id, state, ts, status, err) in history {
        conn.execute(
            "INSERT INTO state_history (build_id, state, timestamp, status, error_message) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![id, state, ts, status, err],
        )
        .unwrap();
    }
}

/// The old scripts' SQLite database becomes documents: a dry run plans,
/// the import writes each build with its history (bridged with a recorded
/// `set` where it starts late).
fn import_sqlite(w: World) {
    let db = old_database(&w);
    let dbs = db.to_str().unwrap();
    let before = w.keys();
    let plan = w.cli(&["import-sqlite", dbs, "--dry-run"]).text();
    assert!(
        plan.contains("rhel8-web  would create") && plan.contains("15 base configuration"),
        "{plan}"
    );
    assert_eq!(w.keys(), before, "a dry run writes nothing");

    let out = w.cli(&["import-sqlite", dbs]).text();
    assert!(out.contains("rhel8-web  imported (revision 5)"), "{out}");
    let doc = w.doc();
    assert_eq!(
        (doc["state"].as_u64(), doc["status"].as_str()),
        (Some(15), Some("pending"))
    );
    assert_eq!(
        doc["labels"],
        json!({"cloud_provider": "aws", "image_type": "rhel8"})
    );
    let actions: Vec<&str> = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["init", "complete", "fail", "complete", "complete"]
    );
    assert_eq!(doc["history"][2]["at"], "2026-11-01T08:20:00.000Z");
    assert_eq!(doc["history"][2]["error"]["message"], "packer: ssh timeout");
    // The other build's history starts at 5: bridged with a recorded `set`.
    let other: Value =
        serde_json::from_str(&w.cli(&["show", "rhel9-db", "--json"]).text()).unwrap();
    assert_eq!(
        (
            other["state"].as_u64(),
            other["status"].as_str(),
            other["attempts"].as_u64()
        ),
        (Some(10), Some("failed"), Some(1))
    );
    assert_eq!(other["history"][1]["action"], "set");
}

/// The old scripts' database: two builds, rhel8-web at 15 after a retried
/// kickstart, rhel9-db failed at 10 with a history that starts at 5.
fn old_database(w: &World) -> std::path::PathBuf {
    let db = w.tmp.path().join("state.db");
    create_old_db(
        &db,
        &[("rhel8-web", 15, "running"), ("rhel9-db", 10, "failed")],
        &[
            ("rhel8-web", 0, "2026-11-01 08:01:00", "completed", None),
            (
                "rhel8-web",
                5,
                "2026-11-01 08:20:00",
                "failed",
                Some("packer: ssh timeout"),
            ),
            ("rhel8-web", 5, "2026-11-01 08:40:00", "completed", None),
            ("rhel8-web", 10, "2026-11-01 08:50:00", "completed", None),
            ("rhel9-db", 5, "2026-11-01 08:10:00", "completed", None),
            (
                "rhel9-db",
                10,
                "2026-11-01 08:30:00",
                "failed",
                Some("ansible: unreachable"),
            ),
        ],
    );
    db
}

/// And then an import over what it wrote: never without `--force`, which
/// says what really failed (a corrupt document in the way) and archives
/// the old run, revisions going on rising.
fn import_sqlite_again_needs_force(w: World) {
    let db = old_database(&w);
    let dbs = db.to_str().unwrap();
    w.cli(&["import-sqlite", dbs]).text();
    // Never overwritten without --force.
    let stored = w.raw("state.json");
    let again = w.cli(&["import-sqlite", dbs]).run();
    assert_eq!(again.code, Some(1), "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("it is never overwritten without --force"),
        "{}",
        again.stderr
    );
    assert_eq!(w.raw("state.json"), stored);
    assert!(
        again.stdout.contains("not imported: exists (use --force)"),
        "{}",
        again.stdout
    );
    // What really failed is said: here a corrupt document in the way.
    w.write_raw("state.json", b"{not json");
    let broken = w.cli(&["import-sqlite", dbs, "--force"]).run();
    assert_eq!(broken.code, Some(1), "{}", broken.stderr);
    assert!(
        broken
            .stdout
            .contains("not imported: the document is not valid JSON"),
        "{}",
        broken.stdout
    );
    assert!(!broken.stdout.contains("exists"), "{}", broken.stdout);
    w.write_raw("state.json", &stored.clone().unwrap());
    // With --force: the old run is archived and revisions go on rising.
    w.cli(&["import-sqlite", dbs, "--force"]).text();
    let doc = w.doc();
    assert_eq!(
        (doc["run"].as_u64(), doc["revision"].as_u64()),
        (Some(2), Some(10))
    );
    assert!(w.raw("runs/1.json").is_some());
}

/// Inconsistent and unreadable databases of the old scripts are refused,
/// saying what is wrong, and nothing of them is written.
fn import_sqlite_refuses_bad_databases(w: World) {
    let bad = w.tmp.path().join("bad.db");
    create_old_db(
        &bad,
        &[("rhel7-app", 30, "running")],
        &[("rhel7-app", 0, "2026-11-01 08:01:00", "completed", None)],
    );
    let out = w.cli(&["import-sqlite", bad.to_str().unwrap()]).run();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("build \"rhel7-app\" is inconsistent: builds says 30 running but its state_history ends at 5 pending"), "{}", out.stderr);
    let jump = w.tmp.path().join("jump.db");
    create_old_db(
        &jump,
        &[("rhel7-app", 20, "running")],
        &[
            ("rhel7-app", 0, "2026-11-01 08:01:00", "completed", None),
            ("rhel7-app", 15, "2026-11-01 08:02:00", "completed", None),
        ],
    );
    let out = w.cli(&["import-sqlite", jump.to_str().unwrap()]).run();
    assert!(out.stderr.contains("state_history id 2 (completed 15 at 2026-11-01 08:02:00 UTC) does not follow: rhel7-app is at 5"), "{}", out.stderr);
    w.write_file(
        "garbage.db",
        "this is not sqlite at all, just text that goes on for a while........",
    );
    let garbage = w.sources().join("garbage.db");
    let err = w.cli(&["import-sqlite", garbage.to_str().unwrap()]).fails();
    assert!(
        err.contains("is not a readable build-state database of the old scripts"),
        "{err}"
    );
    let empty = w.tmp.path().join("empty.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = w.cli(&["import-sqlite", empty.to_str().unwrap()]).fails();
    assert!(err.contains("no such table: builds"), "{err}");
    assert!(
        w.keys().iter().all(|k| !k.contains("rhel7-app")),
        "nothing of the bad databases written"
    );
}

/// One HTTP/1.1 GET (or another method): the status and the body.
pub(crate) fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Starts `build-state serve ARGS`; answers the process, its stderr past
/// the first line, and the address that line names.
pub(crate) fn serve(
    w: &World,
    args: &[&str],
) -> (
    crate::util::Running,
    std::io::BufReader<std::process::ChildStderr>,
    String,
) {
    use std::io::BufRead;
    let argv: Vec<&str> = std::iter::once("serve")
        .chain(args.iter().copied())
        .collect();
    let mut server = w.cli(&argv).spawn();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (server, stderr, addr)
}

/// `serve`: the fleet's JSON API and /metrics; read only; SIGTERM stops
/// it cleanly.
fn serve_dashboard(w: World) {
    small_fleet(&w, "<img src=x onerror=alert(1)> license expired");
    let keys_before = w.keys();

    let err = w.cli(&["serve", "--listen", "localhost"]).fails_with(1);
    assert!(
        err.contains(r#"--listen "localhost" is not an address like 127.0.0.1:8080"#),
        "{err}"
    );
    let (mut server, mut stderr, addr) = serve(&w, &["--listen", "127.0.0.1:0"]);

    let err = w.cli(&["serve", "--listen", &addr]).fails_with(1);
    assert!(err.contains(&format!("listening on {addr}")), "{err}");

    let (status, body) = http(&addr, "GET", "/api/builds");
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{body}");
    let row = |id: &str| rows.iter().find(|r| r["build_id"] == id).unwrap().clone();
    assert_eq!(row("rhel8-web")["status"], "blocked");
    assert_eq!(row("rhel9-db")["status"], "in_progress");
    assert!(
        row("broken")["error"].as_str().unwrap().contains("JSON"),
        "{body}"
    );

    let (status, body) = http(&addr, "GET", "/api/builds/rhel8-web");
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["history"].as_array().unwrap().len(), 4, "{body}");
    let (status, body) = http(&addr, "GET", "/api/builds/nobody");
    assert_eq!((status, body.as_str()), (404, "nobody has no state\n"));
    let (status, _) = http(&addr, "GET", "/api/builds/..%2Fescape");
    assert_eq!(status, 400, "a build id is checked before any read");

    let (status, body) = http(&addr, "GET", "/api/stages");
    assert_eq!(status, 200, "{body}");
    let stages: Value = serde_json::from_str(&body).unwrap();
    let five = stages
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == 5)
        .unwrap();
    assert_eq!(
        (five["failures"].clone(), five["builds"].clone()),
        (json!(1), json!(2))
    );

    let (status, body) = http(&addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("build_state_blocked{build_id=\"rhel8-web\",state=\"5\",state_name=\"kickstart initiated\"} 1"),
        "{body}"
    );
    promtool_accepts(&body);
    let (status, _) = http(&addr, "POST", "/api/builds");
    assert_eq!(status, 405, "read only");
    let (status, _) = http(&addr, "GET", "/nothing-here");
    assert_eq!(status, 404);

    assert_eq!(
        w.keys().len(),
        keys_before.len(),
        "serving wrote nothing to the store"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let status = server.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "exit {status:?}: {rest}");
    assert!(rest.contains("build-state: stopped"), "{rest}");
}

/// And then the dashboard in a real browser: it renders the API's answer
/// (text from the store as text, never markup) and follows a change in
/// the store on its next refresh.
fn serve_dashboard_in_a_browser(w: World) {
    small_fleet(&w, "<img src=x onerror=alert(1)> license expired");
    let (mut server, _stderr, addr) = serve(&w, &["--listen", "127.0.0.1:0"]);
    let profile = w.tmp.path().join("chromium-profile");
    let dom = |url: &str| crate::util::rendered(&profile, url);
    if let Some(page) = dom(&format!("http://{addr}/?build=rhel8-web")) {
        for want in [
            "3 builds",
            "data-build=\"rhel8-web\"",
            "data-build=\"rhel9-db\"",
            "unreadable: ",
            // The timeline of the chosen build.
            "id=\"detail-title\"",
            "&lt;img src=x onerror=alert(1)&gt; license expired",
        ] {
            assert!(
                page.contains(want),
                "{want:?} in the rendered page:\n{page}"
            );
        }
        assert!(
            !page.contains("<img"),
            "text from the store is text, not markup"
        );
        assert!(
            !page.contains("loading…"),
            "the page rendered the API's answer"
        );

        // A change in the store is on the next refresh.
        w.cli(&["complete", "rhel9-db", "5"]).text();
        let page = dom(&format!("http://{addr}/")).unwrap();
        assert!(page.contains("10 green image created"), "{page}");
    }
    let _ = server.kill();
}

/// Sends raw bytes as one request; the status line's code and the head.
fn raw_http(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let head = answer.split("\r\n\r\n").next().unwrap().to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head)
}

/// `serve` serves connections at once: idle and half-sent connections
/// hold only themselves; `Host` must name the server (DNS rebinding gets
/// 421); every answer carries the browser protections; a 405 says what is
/// allowed; SIGTERM with connections open ends well before Docker's 10 s.
fn serve_is_concurrent_and_strict(w: World) {
    use std::io::{Read, Write};
    small_fleet(&w, "packer: ssh timeout");
    let (mut server, mut stderr, addr) = serve(
        &w,
        &["--listen", "127.0.0.1:0", "--allow-host", "dash.example"],
    );
    // Three connections that send nothing, and one that sends half a request.
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    write!(half, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
    // A request is answered while they are all still open.
    let (status, body) = http(&addr, "GET", "/api/builds");
    assert_eq!(status, 200, "{body}");
    for c in idle.iter().chain([&half]) {
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let still_open =
            matches!((&*c).read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(still_open, "the idle connections were not what delayed it");
    }
    // Host: an IP address, localhost or a name allowed; nothing else.
    for (host, want) in [
        (addr.clone(), 200),
        (
            format!("localhost:{}", addr.rsplit(':').next().unwrap()),
            200,
        ),
        ("dash.example".to_string(), 200),
        ("rebound.attacker.example".to_string(), 421),
    ] {
        let (status, head) = raw_http(
            &addr,
            &format!("GET /api/builds HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, want, "Host: {host}\n{head}");
    }
    let (status, head) = raw_http(
        &addr,
        &format!("DELETE /api/builds HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 405);
    let head = head.to_ascii_lowercase();
    for want in [
        "allow: get, head",
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "content-security-policy: default-src 'none'",
    ] {
        assert!(head.contains(want), "{want:?} in\n{head}");
    }
    // SIGTERM with the half-sent request and the idle ones still open.
    let asked = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let deadline = asked + std::time::Duration::from_secs(8);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve still running 8 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status:?}: {rest}");
    assert!(rest.contains("build-state: stopped"), "{rest}");
    drop((idle, half));
}

crate::both_stores!(
    actions_show_and_history,
    the_clis_refusals_write_nothing,
    a_human_overrides_and_restarts_by_hand,
    the_cli_decides_by_the_pipelines_policy,
    update_takes_the_old_scripts_arguments,
    list_filters_and_reports,
    list_caches_what_it_read,
    metrics_for_prometheus,
    watch_prints_each_transition_once,
    sources_from_pipelines_and_the_environment,
    sources_from_the_environment_and_files,
    states_and_completions,
    doctor_probes_conditional_writes,
    resource_programs_as_subcommands,
    import_sqlite,
    import_sqlite_again_needs_force,
    import_sqlite_refuses_bad_databases,
    report_renders_in_a_browser,
    serve_dashboard,
    serve_dashboard_in_a_browser,
    serve_is_concurrent_and_strict,
    a_key_of_its_own_for_heartbeats,
);

/// A task that runs Packer with one AWS key sends its heartbeats with
/// another (`BUILD_STATE_ACCESS_KEY_ID`, `BUILD_STATE_SECRET_ACCESS_KEY`):
/// it replaces the credential chain; half a pair is an error that writes
/// nothing; the secret is never printed.
fn a_key_of_its_own_for_heartbeats(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).ok();
    let mut store = match w.kind {
        Kind::Local => vec![
            "--local-dir".to_string(),
            w.states_dir().display().to_string(),
        ],
        Kind::S3 => vec![
            "--bucket".to_string(),
            crate::util::BUCKET.to_string(),
            "--endpoint".to_string(),
            crate::util::s3().endpoint.clone(),
            "--use-path-style".to_string(),
            "true".to_string(),
        ],
    };
    store.extend(["--prefix".to_string(), w.prefix.clone()]);
    let mut args = vec![
        "heartbeat",
        "rhel8-web",
        "5",
        "--run",
        "1",
        "--attempt",
        "1",
    ];
    args.extend(store.iter().map(String::as_str));
    let beat = w
        .bare_cli(&args)
        .env("BUILD_STATE_ACCESS_KEY_ID", "test")
        .env("BUILD_STATE_SECRET_ACCESS_KEY", "test")
        .env("AWS_ACCESS_KEY_ID", "")
        .env("AWS_SECRET_ACCESS_KEY", "")
        .run();
    assert_eq!(beat.code, Some(0), "{}", beat.stderr);
    assert!(
        beat.stdout.contains("heartbeat 5: attempt 1 alive"),
        "{}",
        beat.stdout
    );
    let before = w.raw("heartbeat.json");
    let half = w
        .bare_cli(&args)
        .env("BUILD_STATE_ACCESS_KEY_ID", "test")
        .env("BUILD_STATE_SECRET_ACCESS_KEY", "")
        .run();
    assert_eq!(half.code, Some(1), "{}", half.stderr);
    assert!(
        half.stderr.contains(
            "--access-key-id (or BUILD_STATE_ACCESS_KEY_ID) needs BUILD_STATE_SECRET_ACCESS_KEY in the environment"
        ),
        "{}",
        half.stderr
    );
    let other = w
        .bare_cli(&args)
        .env("BUILD_STATE_ACCESS_KEY_ID", "")
        .env("BUILD_STATE_SECRET_ACCESS_KEY", "sekrit-value")
        .run();
    assert_eq!(other.code, Some(1));
    assert!(
        other
            .stderr
            .contains("BUILD_STATE_SECRET_ACCESS_KEY needs --access-key-id")
    );
    assert!(!other.stderr.contains("sekrit-value") && !other.stdout.contains("sekrit-value"));
    assert_eq!(w.raw("heartbeat.json"), before, "nothing written");
    let help = w.bare_cli(&["heartbeat", "--help"]).text();
    assert!(help.contains("--access-key-id") && !help.contains("--secret-access-key"));
}

fn report_renders_in_a_browser(w: World) {
    w.cli(&["init", "delivered"]).text();
    for code in (0..100).step_by(5) {
        w.cli(&["complete", "delivered", &code.to_string()]).text();
    }
    w.cli(&["init", "stuck"]).text();
    w.cli(&["complete", "stuck", "0"]).text();
    for _ in 0..3 {
        w.cli(&[
            "fail",
            "stuck",
            "5",
            "--error",
            "<script>alert(1)</script> packer: timeout",
        ])
        .text();
    }
    w.cli(&["init", "running"]).text();
    w.cli(&["complete", "running", "0"]).text();
    w.cli(&["start", "running", "5"]).text();
    w.write_raw_key(&format!("{}broken/state.json", w.prefix), b"{oops");
    let path = w.tmp.path().join("report.html");
    let out = w.cli(&["report", "--out", path.to_str().unwrap()]).text();
    assert!(out.contains("(4 builds)"), "{out}");
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(
        html.contains("<h2>Needs a human</h2>") && html.contains("href=\"#b-stuck\""),
        "the blocked build is listed"
    );
    assert!(
        html.contains("unreadable: "),
        "the broken document is listed"
    );
    assert!(
        html.contains(">5 kickstart initiated<")
            && html.contains("3 failures in 3 builds (1.0 per build)"),
        "failures per stage"
    );
    assert!(
        html.contains("&lt;script&gt;") && !html.contains("<script>"),
        "text is escaped"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("url(") && !html.contains("<link"),
        "self-contained"
    );
    assert_eq!(html.matches("class=\"timeline\"").count(), 3);

    // Render it in a real browser and look at the picture.
    let png = w.tmp.path().join("report.png");
    let Some(mut chromium) = crate::util::chromium(&w.tmp.path().join("chromium-profile")) else {
        return;
    };
    let shot = chromium
        .arg("--window-size=1100,1400")
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", path.display()))
        .output()
        .unwrap();
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let pixels = rgb_pixels(&png);
    let ink = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|&c| c < 200))
        .count();
    let red = pixels
        .iter()
        .filter(|p| p[0] > 190 && p[1] < 90 && p[2] < 90)
        .count();
    let green = pixels
        .iter()
        .filter(|p| p[1] > 140 && p[0] < 90 && p[2] < 120)
        .count();
    assert!(
        ink * 100 > pixels.len(),
        "the page looks blank: {ink} of {} pixels have ink",
        pixels.len()
    );
    assert!(
        red > 200 && green > 200,
        "the SVG bars did not render (red {red}, green {green})"
    );
}

/// A reader that stops reading (`build-state completions bash | head -1`,
/// `list | head`) is no error: no panic, exit 0, nothing on stderr.
#[test]
fn a_closed_stdout_is_not_an_error() {
    let w = World::new(Kind::Local, "closed_stdout");
    for args in [
        &["completions", "bash"][..],
        &["states", "--local-dir", "/tmp"][..],
    ] {
        let mut child = std::process::Command::new(crate::util::cli_path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .current_dir(w.tmp.path())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// After a start-over stage fails (40, `resume_from: 10`), the build is at
/// 10, failed, attempts 0: `show` and `list` say the error is 40's, which
/// attempt, and that the run went back, so on-call looks at the right stage.
#[test]
fn a_start_over_shows_where_its_error_came_from() {
    let w = World::new(Kind::Local, "start_over_error")
        .with(json!({"retry": {"backoff": "0s", "states": {"40": {"resume_from": 10}}}}));
    w.put(json!({"init": true})).ok();
    for code in [0, 5, 10, 15, 20, 25, 30, 35] {
        w.put(json!({"complete": code})).ok();
    }
    w.put(json!({"start": 40})).ok();
    w.put(json!({"fail": 40, "error": "ansible: network role failed"}))
        .ok();
    let show = w.cli(&["show", "rhel8-web"]).text();
    assert!(
        show.contains(
            "last error  at 40 network configuration, attempt 1 (the run went back to 10): ansible: network role failed (transient)"
        ),
        "{show}"
    );
    let list = crate::util::squeeze(&w.cli(&["list"]).text());
    assert!(
        list.contains("rhel8-web 10 green image created failed 0")
            && list.contains("at 40: ansible: network role failed"),
        "{list}"
    );
    // Once 10 fails on its own, its own error shows as before.
    w.put(json!({"start": 10})).ok();
    w.put(json!({"fail": 10, "error": "packer: timeout"})).ok();
    let show = w.cli(&["show", "rhel8-web"]).text();
    assert!(
        show.contains("last error  packer: timeout (transient)"),
        "{show}"
    );
}
