//! Hostile text in every field a pipeline, a task or a caller controls
//! (errors, reasons, notes, labels, the Concourse build's names): no raw
//! control character (C0, C1, DEL, bidi) reaches a terminal from a human
//! output; the JSON outputs stay exact.

use crate::util::{Kind, World};
use serde_json::json;

/// Sets the pane's title, moves the cursor home, erases the line, forges a
/// line break, reverses the text that follows.
const PAYLOAD: &str =
    "x\u{1b}]0;owned\u{7}\u{1b}[H\u{1b}[2K\r\nforged complete 10\u{9b}31m\u{7f}\u{202e}desrever";

fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// A terminal's text without the colours build-state itself writes (SGR:
/// `ESC [ digits m`) and the pty's carriage returns.
fn without_colours(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\u{1b}[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let digits = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        if after[digits..].starts_with('m') {
            rest = &after[digits + 1..];
        } else {
            out.push_str("\u{1b}[");
            rest = after;
        }
    }
    out.push_str(rest);
    out.replace("\r\n", "\n")
}

#[test]
fn no_raw_control_character_reaches_a_terminal() {
    let w = World::new(Kind::Local, "hostile_text").with(json!({"retry": {"backoff": "0s"}}));
    // Labels from the resource's source (JSON: the CLI's --source is YAML,
    // which takes no raw C1 character).
    let labelled = w.source_with(json!({"labels": {"team": PAYLOAD}}));
    w.put(json!({}))
        .stdin(json!({"source": labelled, "params": {"init": true}}))
        .ok();
    w.put(json!({"complete": 0, "note": PAYLOAD})).ok();
    w.put(json!({"start": 5}))
        .build(PAYLOAD, 7)
        .env("BUILD_PIPELINE_NAME", PAYLOAD)
        .ok();
    w.put(json!({"fail": 5, "error": PAYLOAD}))
        .build(PAYLOAD, 7)
        .env("BUILD_PIPELINE_NAME", PAYLOAD)
        .ok();
    w.cli(&[
        "set",
        "rhel8-web",
        "5",
        "--status",
        "blocked",
        "--reason",
        PAYLOAD,
    ])
    .text();
    for args in [
        vec!["show", "rhel8-web"],
        vec!["history", "rhel8-web"],
        vec!["list"],
        vec!["next", "rhel8-web"],
        vec!["watch", "rhel8-web", "--for", "1s", "--interval", "1s"],
        vec!["watch", "--for", "1s", "--interval", "1s"],
        vec!["retry", "rhel8-web", "5", "--note", PAYLOAD],
        vec!["complete", "rhel8-web", "25"],
        vec![
            "start",
            "rhel8-web",
            "5",
            "--check",
            "gate",
            "--atc-url",
            "http://127.0.0.1:9",
            "--team",
            PAYLOAD,
            "--pipeline",
            PAYLOAD,
            "--webhook-token",
            "a-webhook-token-of-length",
        ],
    ] {
        // As a person sees it (a terminal: colours, both streams on one
        // pty), and through pipes.
        let seen = w.cli(&args).env("USER", PAYLOAD).on_tty().run();
        let screen = without_colours(&seen.stdout);
        let raw = raw_controls(&screen);
        assert!(
            raw.is_empty(),
            "{args:?} on a terminal shows raw {raw:?}:\n{screen}"
        );
        let out = w.cli(&args).env("USER", PAYLOAD).run();
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let raw = raw_controls(text);
            assert!(raw.is_empty(), "{args:?} {stream} has raw {raw:?}:\n{text}");
        }
        assert!(
            screen.contains("\\x1b]0;owned")
                || matches!(args[0], "retry" | "complete" | "next" | "start"),
            "{args:?}: the escape is shown, escaped:\n{screen}"
        );
    }
    // JSON stays exact.
    let doc: serde_json::Value =
        serde_json::from_str(&w.cli(&["show", "rhel8-web", "--json"]).text()).unwrap();
    let history = doc["history"].as_array().unwrap();
    assert!(history.iter().any(|e| e["note"] == PAYLOAD));
    assert!(history.iter().any(|e| e["error"]["message"] == PAYLOAD));
    assert_eq!(doc["labels"]["team"], PAYLOAD);
}

/// Runs `step` for at most 20 s: a program that blocks on a FIFO fails
/// the test instead of hanging it.
fn within(step: crate::util::Step) -> (Option<i32>, String, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = step.run();
        let _ = tx.send((out.code, out.stdout, out.stderr));
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("the program blocked (a FIFO?)")
}

/// On a local directory, a heartbeat.json that is a FIFO, a directory or a
/// link counts as no heartbeat (said once): `show` and the gated check
/// neither hang nor fail; a state.json that is a link or a FIFO is an error
/// for that build, at once.
#[test]
fn planted_files_neither_hang_nor_fail_a_reader() {
    let w = World::new(Kind::Local, "planted_files")
        .with(json!({"retry": {"states": {"5": {"heartbeat_timeout": "1h"}}}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).build("kickstart", 3).ok();
    let dir = w
        .states_dir()
        .join(w.key("heartbeat.json"))
        .parent()
        .unwrap()
        .to_path_buf();
    let beat = dir.join("heartbeat.json");
    let gate = json!({"source": w.source_with(json!({"gate": {"state": 5}}))});
    for plant in ["fifo", "dir", "link"] {
        let _ = std::fs::remove_file(&beat);
        let _ = std::fs::remove_dir(&beat);
        match plant {
            "fifo" => mkfifo(&beat),
            "dir" => std::fs::create_dir(&beat).unwrap(),
            _ => std::os::unix::fs::symlink("/dev/zero", &beat).unwrap(),
        }
        let (code, out, err) = within(w.cli(&["show", "rhel8-web"]));
        assert_eq!(code, Some(0), "{plant}: {err}");
        assert!(out.contains("in_progress"), "{plant}: {out}");
        let (code, out, err) = within(w.check().stdin(gate.clone()));
        assert_eq!(code, Some(0), "{plant}: {err}");
        assert_eq!(
            out.trim(),
            "[]",
            "{plant}: the attempt is alive by its start"
        );
    }
    // A state.json planted as a link: refused at once, named.
    let state = dir.join("state.json");
    std::fs::rename(&state, dir.join("real.json")).unwrap();
    std::os::unix::fs::symlink(dir.join("real.json"), &state).unwrap();
    let (code, _, err) = within(w.cli(&["show", "rhel8-web"]));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a symbolic link, which the store does not follow"),
        "{err}"
    );
    std::fs::remove_file(&state).unwrap();
    mkfifo(&state);
    let (code, _, err) = within(w.cli(&["show", "rhel8-web"]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

fn mkfifo(path: &std::path::Path) {
    assert!(
        std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

/// Links planted in a finished build (its heartbeat to a secret, an
/// archived run to /etc/passwd): `prune --archive-to` refuses that build,
/// names the link, and copies no byte of what they point to. A FIFO as
/// another build's state.json: `list` answers at once with that build
/// unreadable, `serve` answers every other page, that build's a 502, and
/// stops within 5 s of SIGTERM.
#[test]
fn planted_links_are_never_archived_and_a_fifo_stalls_no_server() {
    let w = World::new(Kind::Local, "planted_links");
    w.put(json!({"init": true})).ok();
    for args in [
        ["init", "old", ""],
        ["cancel", "old", "superseded"],
        ["init", "stuck", ""],
    ] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        w.cli(&args).text();
    }
    let root = w.states_dir();
    let build = |id: &str| {
        let key = w.key("state.json").replace("rhel8-web", id);
        root.join(key).parent().unwrap().to_path_buf()
    };
    let secret = root.join("..").join("secret.txt");
    std::fs::write(&secret, "SECRET-TOKEN").unwrap();
    std::os::unix::fs::symlink(&secret, build("old").join("heartbeat.json")).unwrap();
    std::fs::create_dir_all(build("old").join("runs")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", build("old").join("runs/7.json")).unwrap();
    let (code, out, err) =
        within(w.cli(&["prune", "--older-than", "0s", "--archive-to", "_archive/"]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("heartbeat.json: a symbolic link, which the store does not follow"),
        "{err}"
    );
    let copied = std::process::Command::new("grep")
        .args(["-rlE", "SECRET-TOKEN|root:"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        copied.stdout.is_empty(),
        "copied: {}",
        String::from_utf8_lossy(&copied.stdout)
    );

    let stuck = build("stuck").join("state.json");
    std::fs::remove_file(&stuck).unwrap();
    mkfifo(&stuck);
    let (code, out, err) = within(w.cli(&["list"]));
    assert_eq!(code, Some(0), "{err}");
    let row = out.lines().find(|l| l.starts_with("stuck")).unwrap();
    assert!(row.contains("unreadable"), "{out}");

    let (mut server, mut stderr, addr) = crate::cli::serve(&w, &["--listen", "127.0.0.1:0"]);
    for (path, want) in [
        ("/", 200),
        ("/metrics", 200),
        ("/api/builds", 200),
        ("/api/builds/rhel8-web", 200),
        ("/api/builds/stuck", 502),
    ] {
        let (status, body) = crate::cli::http(&addr, "GET", path);
        assert_eq!(status, want, "{path}: {body}");
    }
    let asked = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(5),
            "serve still running 5 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
}

/// A build id of the longest kind, approved by someone with a long name
/// (a put from a build run by hand, `BUILD_CREATED_BY`): `history` and the
/// report name who approved; the dashboard names them in the build's
/// timeline and wraps every long name inside the page (headless
/// Chromium: no ink right of the page's column).
#[test]
fn long_names_wrap_and_who_approved_is_shown() {
    let w = World::new(Kind::Local, "long_names");
    let id = format!("rhel8-{}", "x".repeat(122));
    let person = "jane.doe.of.the.platform.team.with.a.long.directory.name".repeat(4);
    let source = w.source_with(json!({
        "build_id": id,
        "retry": {"states": {"5": {"approval": true}}}
    }));
    for params in [json!({"init": true}), json!({"complete": 0})] {
        w.put(params.clone())
            .stdin(json!({"source": source, "params": params}))
            .ok();
    }
    let approve = json!({"approve": 5, "reason": "looked at the kickstart logs"});
    w.put(approve.clone())
        .stdin(json!({"source": source, "params": approve}))
        .build("approve-kickstart", 3)
        .env("BUILD_CREATED_BY", &person)
        .ok();
    let by = format!("approve-kickstart #3 (by {person})");
    let history = w.cli(&["history", &id]).text();
    assert!(history.contains(&by), "{history}");
    let report = w.tmp.path().join("report.html");
    w.cli(&["report", "--out", report.to_str().unwrap()]).text();
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("decided by people (1)") && html.contains(&by),
        "the report names who approved"
    );

    let (mut server, _stderr, addr) = crate::cli::serve(&w, &["--listen", "127.0.0.1:0"]);
    let profile = w.tmp.path().join("chromium-profile");
    if let Some(mut chromium) = crate::util::chromium(&profile) {
        let page = format!("http://{addr}/?build={id}");
        let out = chromium
            .args(["--virtual-time-budget=4000", "--dump-dom", &page])
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(dom.contains(&by), "the timeline names who approved:\n{dom}");
        let shot = w.tmp.path().join("long-names.png");
        crate::util::chromium(&profile)
            .unwrap()
            .args(["--virtual-time-budget=4000", "--window-size=1600,1200"])
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&page)
            .output()
            .unwrap();
        // The page's column: 1100 px wide, 16 px padding each side, in the
        // middle of 1600: everything left of x = 1366.
        let pixels = crate::cli::rgb_pixels(&shot);
        let width = 1600;
        let outside = pixels
            .iter()
            .enumerate()
            .filter(|(i, p)| i % width > 1380 && p.iter().any(|&c| c < 200))
            .count();
        assert_eq!(outside, 0, "ink right of the page's column: a name ran off");
    }
    let _ = server.kill();
}
