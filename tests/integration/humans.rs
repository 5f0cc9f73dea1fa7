//! Humans and live workers through the real programs: approval stages and
//! heartbeats, on both stores.

use crate::policies::{poll, walk_to};
use crate::util::World;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn state(out: &Value) -> (String, String) {
    (
        out["version"]["state"].as_str().unwrap().to_string(),
        out["version"]["status"].as_str().unwrap().to_string(),
    )
}

/// The newest event of the stored history.
fn last_event(w: &World) -> Value {
    w.doc()["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

/// A build reaches an approval stage and waits: the stage's gate emits
/// nothing, the approval gate emits; `approve` anywhere else is refused
/// with what is allowed, writing nothing.
fn an_approval_stage_waits_for_a_human(w: World) {
    let (w, out) = awaiting_approval_at_15(w);
    let gate15 = || w.check_with(json!({"gate": {"state": 15}}));
    let asks = || w.check_with(json!({"gate": {"status": "awaiting_approval"}}));
    assert_eq!(gate15().ok(), json!([]), "the stage's gate is shut");
    assert_eq!(
        asks().ok(),
        json!([out["version"]]),
        "the approval gate emits"
    );
    let got = w.get(&out["version"]).ok();
    assert_eq!(got["version"], out["version"]);
    let show = w.cli(&["show", "rhel8-web"]).text();
    assert!(show.contains("awaiting_approval"), "{show}");
    assert!(
        show.contains("to unblock")
            && show.contains("build-state approve rhel8-web 15 --reason TEXT"),
        "{show}"
    );
    // Refused, with what is allowed, and nothing written.
    let before = w.raw("state.json");
    let err = w.put(json!({"start": 15})).fails();
    assert!(
        err.contains("rhel8-web is at 15 (base configuration, awaiting_approval); cannot start 15; allowed now: approve 15, set (with a reason), cancel, restart"),
        "{err}"
    );
    let err = w.put(json!({"approve": 20})).fails();
    assert!(
        err.contains("cannot approve 20; allowed now: approve 15"),
        "{err}"
    );
    let err = w.cli(&["approve", "rhel8-web", "10"]).fails();
    assert!(
        err.contains("cannot approve 10; allowed now: approve 15"),
        "{err}"
    );
    let err = w.put(json!({"approve": 15, "error": "x"})).fails();
    assert!(
        err.contains("params.error goes with fail or finish, not with approve"),
        "{err}"
    );
    assert_eq!(w.raw("state.json"), before, "nothing written");
}

/// A build whose stage 15 (an approval stage) waits for a human; the put
/// that took it there.
fn awaiting_approval_at_15(w: World) -> (World, Value) {
    let w = w.with(json!({"retry": {"backoff": "1s", "factor": 1,
        "states": {"15": {"approval": true, "max_attempts": 3}}}}));
    walk_to(&w, 10);
    let out = w.put(json!({"complete": 10})).build("green-image", 7).ok();
    assert_eq!(state(&out), ("15".into(), "awaiting_approval".into()));
    (w, out)
}

/// And then the approval: the CLI's is recorded with who and why and opens
/// the stage's gate; a failure after it retries without a new one; a
/// human's retry asks again, and a put approves with the Concourse build
/// recorded.
fn an_approval_opens_its_stage(w: World) {
    let (w, _) = awaiting_approval_at_15(w);
    let gate15 = || w.check_with(json!({"gate": {"state": 15}}));
    let asks = || w.check_with(json!({"gate": {"status": "awaiting_approval"}}));
    // The CLI's approval: recorded with who and why; the stage's gate opens.
    let said = w
        .cli(&[
            "approve",
            "rhel8-web",
            "15",
            "--reason",
            "checked the base image",
        ])
        .env("USER", "alice")
        .text();
    assert!(
        said.contains("approve 15 → 15 base configuration (pending)"),
        "{said}"
    );
    let e = last_event(&w);
    assert_eq!(
        (e["action"].as_str(), e["reason"].as_str()),
        (Some("approve"), Some("checked the base image"))
    );
    assert!(
        e["by"]["user"].as_str().unwrap().starts_with("alice"),
        "{e}"
    );
    let open = gate15().ok();
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(asks().ok(), json!([]));
    // A failure after the approval: retried without a new one.
    w.put(json!({"start": 15}))
        .build("base-configuration", 8)
        .ok();
    let failed = w
        .put(json!({"fail": 15, "error": "ansible: unreachable"}))
        .build("base-configuration", 8)
        .ok();
    assert_eq!(state(&failed), ("15".into(), "failed".into()));
    poll(Duration::from_secs(5), Duration::from_millis(100), || {
        gate15().ok() == json!([failed["version"]])
    });
    let again = w
        .put(json!({"start": 15}))
        .build("base-configuration", 9)
        .ok();
    assert_eq!(state(&again), ("15".into(), "in_progress".into()));
    // A human's retry resets the approval; a put approves, recording the
    // Concourse build and who started it.
    let reset = w.cli(&["retry", "rhel8-web", "15"]).text();
    assert!(reset.contains("awaiting_approval"), "{reset}");
    let approved = w
        .put(json!({"approve": 15, "reason": "second look"}))
        .build("approve-base-configuration", 10)
        .env("BUILD_CREATED_BY", "bob")
        .ok();
    assert_eq!(state(&approved), ("15".into(), "pending".into()));
    let e = last_event(&w);
    assert_eq!(
        (
            e["by"]["job"].as_str(),
            e["by"]["created_by"].as_str(),
            e["reason"].as_str()
        ),
        (
            Some("approve-base-configuration"),
            Some("bob"),
            Some("second look")
        )
    );
    // A re-run of the same put is a no-op.
    let replay = w
        .put(json!({"approve": 15, "reason": "second look"}))
        .build("approve-base-configuration", 10)
        .ok();
    assert_eq!(replay["version"], approved["version"]);
}

/// Heartbeats (every half second here: each takes a process or two more)
/// keep a stage with `heartbeat_timeout: 2s` alive for 5 s, past it;
/// heartbeats add no version and no revision; `show` says whose.
fn heartbeats_keep_a_stage_alive(w: World) {
    let w =
        w.with(json!({"retry": {"states": {"5": {"heartbeat_timeout": "2s", "max_attempts": 3}}}}));
    let gate5 = || w.check_with(json!({"gate": {"state": 5}}));
    walk_to(&w, 5);
    let started = w.put(json!({"start": 5})).build("kickstart", 21).ok();
    let revision = started["version"]["revision"].clone();
    let beats_from = Instant::now();
    while beats_from.elapsed() < Duration::from_secs(5) {
        let said = w
            .cli(&[
                "heartbeat",
                "rhel8-web",
                "5",
                "--run",
                "1",
                "--attempt",
                "1",
            ])
            .text();
        assert!(said.contains("heartbeat 5: attempt 1 alive at"), "{said}");
        assert_eq!(
            gate5().ok(),
            json!([]),
            "alive after {:?}",
            beats_from.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A put heartbeat from the build that started the attempt: taken.
    let out = w.put(json!({"heartbeat": 5})).build("kickstart", 21).ok();
    assert_eq!(out["version"], started["version"], "no new version");
    // Heartbeats add no version to an ungated check, nor a revision.
    assert_eq!(
        w.check_from(&started["version"]).ok(),
        json!([started["version"]])
    );
    assert_eq!(
        w.doc()["revision"].to_string(),
        format!("{}", revision.as_str().unwrap())
    );
    let beat: Value = serde_json::from_slice(&w.raw("heartbeat.json").unwrap()).unwrap();
    assert_eq!(
        (
            beat["run"].as_u64(),
            beat["state"].as_u64(),
            beat["attempt"].as_u64()
        ),
        (Some(1), Some(5), Some(1))
    );
    let show = w.cli(&["show", "rhel8-web"]).text();
    assert!(
        show.contains("s ago) by main/staged-image-build/kickstart #21"),
        "{show}"
    );
}

/// Stage 5 in progress, started by Concourse build 21, whose heartbeat
/// was taken; the start's reply.
fn beating_at_5(w: World) -> (World, Value) {
    let w =
        w.with(json!({"retry": {"states": {"5": {"heartbeat_timeout": "2s", "max_attempts": 3}}}}));
    walk_to(&w, 5);
    let started = w.put(json!({"start": 5})).build("kickstart", 21).ok();
    w.put(json!({"heartbeat": 5})).build("kickstart", 21).ok();
    (w, started)
}

/// And then the zombies: another attempt's, another run's, another
/// Concourse build's heartbeats are refused, changing nothing; once the
/// heartbeats stop, the gate passes, and the next start records the dead
/// attempt naming its last heartbeat, after which its worker is a zombie.
fn zombie_heartbeats_are_refused_and_a_silent_stage_dies(w: World) {
    let (w, started) = beating_at_5(w);
    let gate5 = || w.check_with(json!({"gate": {"state": 5}}));
    // Zombies: another attempt, another run, another Concourse build.
    let kept = w.raw("heartbeat.json");
    let err = w
        .cli(&["heartbeat", "rhel8-web", "5", "--attempt", "2"])
        .fails();
    assert!(
        err.contains("heartbeat 5 refused: it is for attempt 2, and attempt 1 is in progress (if this worker is alive, the likely cause is a stale state.env: a gate's version fetched by a rerun or a manual build names an older attempt; take BUILD_STATE_ATTEMPT from the state.env of the stage's own start put, its implicit get); this worker's attempt is over (a zombie): stop it, nothing was changed"),
        "{err}"
    );
    let err = w
        .cli(&["heartbeat", "rhel8-web", "5", "--run", "2"])
        .fails();
    assert!(
        err.contains("it is for run 2, and the build is on run 1"),
        "{err}"
    );
    let err = w
        .put(json!({"heartbeat": 5}))
        .build("kickstart", 20)
        .fails();
    assert!(
        err.contains("main/staged-image-build/kickstart #20 did not start attempt 1"),
        "{err}"
    );
    let err = w.cli(&["heartbeat", "rhel8-web", "10"]).fails();
    assert!(err.contains("cannot heartbeat 10"), "{err}");
    let err = w
        .put(json!({"heartbeat": 5, "note": "alive"}))
        .build("kickstart", 21)
        .fails();
    assert!(
        err.contains("params.vars_file and params.note do not go with heartbeat (a heartbeat changes nothing in the document)"),
        "{err}"
    );
    let err = w
        .put(json!({"heartbeat": 5, "check": ["at-kickstart"]}))
        .build("kickstart", 21)
        .fails();
    assert!(
        err.contains("params.check does not go with heartbeat"),
        "{err}"
    );
    assert_eq!(w.raw("heartbeat.json"), kept, "nothing written");
    // They stop: the gate passes within 3 s.
    let stopped = Instant::now();
    poll(Duration::from_secs(3), Duration::from_millis(100), || {
        gate5().ok() == json!([started["version"]])
    });
    assert!(stopped.elapsed() < Duration::from_secs(3));
    let list: Value = serde_json::from_str(&w.cli(&["list", "--json"]).text()).unwrap();
    assert_eq!(list[0]["stale"], true, "{list}");
    assert_eq!(list[0]["needs_human"]["kind"], "stale", "{list}");
    // The next start records the dead attempt, naming its last heartbeat.
    let restarted = w.put(json!({"start": 5})).build("kickstart", 22).ok();
    assert_eq!(state(&restarted), ("5".into(), "in_progress".into()));
    let dead = crate::util::dead_attempt(&w);
    let message = dead["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("attempt 1 lost its heartbeat: its last heartbeat at"),
        "{message}"
    );
    // The old worker is a zombie now.
    let err = w
        .cli(&["heartbeat", "rhel8-web", "5", "--attempt", "1"])
        .fails();
    assert!(err.contains("attempt 2 is in progress"), "{err}");
    let err = w
        .put(json!({"heartbeat": 5}))
        .build("kickstart", 21)
        .fails();
    assert!(err.contains("did not start attempt 2"), "{err}");
}

crate::both_stores!(
    an_approval_stage_waits_for_a_human,
    an_approval_opens_its_stage,
    heartbeats_keep_a_stage_alive,
    zombie_heartbeats_are_refused_and_a_silent_stage_dies,
);

/// An imported build that sat at 15 for 11 days: its document, written
/// through the library's model with old times (11 days pending at 15, 20
/// minutes of work at each earlier stage).
fn imported_eleven_days_ago(w: &World) {
    use build_state::model::{Action, Actor, Ladder, Outcome, RetryPolicy, Rules, Update, apply};
    let (ladder, retry, labels) = (
        Ladder::default(),
        RetryPolicy::default(),
        Default::default(),
    );
    let rules = Rules {
        build_id: "imported",
        ladder: &ladder,
        retry: &retry,
        labels: &labels,
    };
    let mut t = chrono::Utc::now() - chrono::Duration::days(11);
    let mut doc = None;
    let mut step = |doc: &mut Option<build_state::model::Document>, action: Action, after: i64| {
        t += chrono::Duration::minutes(after);
        match apply(
            doc.as_ref(),
            &Update::new(action, Actor::default(), t),
            &rules,
        )
        .unwrap()
        {
            Outcome::Write(d) => *doc = Some(d),
            o => panic!("{o:?}"),
        }
    };
    step(&mut doc, Action::Init { restart: false }, 0);
    for n in [0, 5, 10] {
        step(&mut doc, Action::Start(n), 1);
        step(&mut doc, Action::Complete(n), 20);
    }
    w.write_raw_key(
        &format!("{}imported/state.json", w.prefix),
        &doc.unwrap().to_bytes(),
    );
}

/// The dashboard at 1100 px, in a screenshot (its path in the test
/// output): the panel's colours are there (the purple of an approval, the
/// red of a blocked build), and no text reaches the window's right edge
/// (the long error wraps).
fn screenshot_shows_the_panel(profile: &std::path::Path, addr: &str) {
    let shot =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-needs-a-human.png");
    let _ = std::fs::remove_file(&shot);
    let took = crate::util::chromium(profile)
        .unwrap()
        .args(["--virtual-time-budget=4000", "--window-size=1100,1000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://{addr}/"))
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&took.stderr)
    );
    println!("screenshot of the dashboard: {}", shot.display());
    let pixels = crate::cli::rgb_pixels(&shot);
    let purple = pixels
        .iter()
        .filter(|p| p[0] > 120 && p[0] < 160 && p[1] < 90 && p[2] > 150)
        .count();
    let red = pixels
        .iter()
        .filter(|p| p[0] > 190 && p[1] < 90 && p[2] < 90)
        .count();
    assert!(
        purple > 100 && red > 300,
        "the panel did not render (purple {purple}, red {red})"
    );
    // Nothing runs off the right edge: the long error wraps.
    let width = 1100;
    let rows = pixels.len() / width;
    let right_edge_ink = (0..rows)
        .filter(|y| pixels[y * width + width - 3][..3].iter().any(|&c| c < 180))
        .count();
    assert_eq!(right_edge_ink, 0, "text reaches the window's right edge");
}

/// A fleet where four builds need a human, each for another reason: one
/// blocked by a persistent error (a long one), one awaiting approval, one
/// stale (its heartbeat lost), one imported eleven days ago and overdue.
fn fleet_that_needs_humans(w: World) -> World {
    let w = w.with(json!({
        "persistent_errors": ["(?i)license"],
        "retry": {"states": {"15": {"approval": true}, "5": {"heartbeat_timeout": "1s"}}}
    }));
    let long = format!(
        "license expired: {}",
        "the subscription manager said no; ".repeat(12)
    );
    for (id, steps) in [
        ("rhel8-web", &["init", "complete 0", "start 5"][..]),
        (
            "rhel9-db",
            &["init", "complete 0", "complete 5", "complete 10"][..],
        ),
        ("centos-ci", &["init", "complete 0", "start 5"][..]),
    ] {
        for s in steps {
            let mut args: Vec<&str> = s.split(' ').collect();
            args.insert(1, id);
            w.cli(&args).text();
        }
    }
    w.cli(&["fail", "rhel8-web", "5", "--error", &long]).text();
    w.cli(&[
        "heartbeat",
        "centos-ci",
        "5",
        "--run",
        "1",
        "--attempt",
        "1",
    ])
    .text();
    imported_eleven_days_ago(&w);
    std::thread::sleep(Duration::from_millis(1300));
    w
}

/// Who needs a human, in `list` and `metrics` (promtool accepts it, and
/// the alert rules' series are there).
fn the_fleet_lists_who_needs_a_human(w: World) {
    let w = fleet_that_needs_humans(w);
    let list = crate::util::squeeze(&w.cli(&["list"]).text());
    // The imported build has been due at 15 for days and nothing started
    // it: overdue.
    assert!(list.contains("Needs a human (4):"), "{list}");
    for want in [
        "imported 15 base configuration overdue",
        "make the stage's job run (fly unpause-job, fix its inputs, fly trigger-job)",
        "rhel8-web 5 kickstart initiated blocked",
        "a persistent error (matched persistent_errors: (?i)license): license expired",
        "fix the cause, then: build-state retry rhel8-web 5",
        "rhel9-db 15 base configuration awaiting_approval",
        "build-state approve rhel9-db 15 --reason TEXT",
        "centos-ci 5 kickstart initiated stale",
    ] {
        assert!(list.contains(want), "{want:?} in:\n{list}");
    }
    let metrics = w.cli(&["metrics"]).text();
    for want in [
        "build_state_awaiting_approval{build_id=\"rhel9-db\",state=\"15\",state_name=\"base configuration\"} 1",
        "build_state_awaiting_approval_seconds{build_id=\"rhel9-db\",state=\"15\",state_name=\"base configuration\"} ",
        "build_state_heartbeat_timeout_seconds{build_id=\"centos-ci\",state=\"5\",state_name=\"kickstart initiated\"} 1.0",
        "build_state_heartbeat_age_seconds{build_id=\"centos-ci\",state=\"5\",state_name=\"kickstart initiated\"} ",
        "build_state_needs_human{build_id=\"centos-ci\",state=\"5\",state_name=\"kickstart initiated\",reason=\"stale\"} 1",
        "build_state_needs_human{build_id=\"rhel8-web\",state=\"5\",state_name=\"kickstart initiated\",reason=\"blocked\"} 1",
        "build_state_needs_human{build_id=\"imported\",state=\"15\",state_name=\"base configuration\",reason=\"overdue\"} 1",
        "build_state_stale_stages 1",
    ] {
        assert!(metrics.contains(want), "{want:?} in:\n{metrics}");
    }
    crate::cli::promtool_accepts(&metrics);
}

/// And then the dashboard, whose panel at the top says why, since when and
/// what to type, checked in headless Chromium (the screenshot is in the
/// test output). Time per stage counts work, stages with nothing in them
/// fold away, long text wraps.
fn the_dashboard_shows_who_needs_a_human(w: World) {
    let w = fleet_that_needs_humans(w);
    let (mut server, _stderr, addr) = crate::cli::serve(&w, &["--listen", "127.0.0.1:0"]);
    let (status, body) = crate::cli::http(&addr, "GET", "/api/stages");
    assert_eq!(status, 200);
    let stages: Value = serde_json::from_str(&body).unwrap();
    let fifteen = stages
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == 15)
        .unwrap()
        .clone();
    assert!(
        fifteen["seconds"].as_f64().unwrap() < 60.0,
        "15 was waited at for 11 days, never worked on: {fifteen}"
    );
    let ten = stages
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == 10)
        .unwrap()
        .clone();
    assert!(
        (ten["seconds"].as_f64().unwrap() - 1200.0).abs() < 1.0,
        "{ten}"
    );

    let profile = w.tmp.path().join("chromium-profile");
    if let Some(page) = crate::util::rendered(&profile, &format!("http://{addr}/")) {
        let at = |s: &str| page.find(s).unwrap_or_else(|| panic!("{s:?} in:\n{page}"));
        assert!(
            at("Needs a human (4)") < at("<h2>Builds</h2>"),
            "the panel is at the top"
        );
        for want in [
            "data-need=\"rhel8-web\"",
            "a persistent error (matched persistent_errors: (?i)license): license expired",
            "<code>build-state approve rhel9-db 15 --reason TEXT (or run the pipeline's approval job)</code>",
            "no sign of life: last heartbeat at",
            "stages with nothing in them: ",
        ] {
            at(want);
        }
        assert!(
            at("data-need=\"rhel9-db\"") < at("data-need=\"rhel8-web\""),
            "the longest waiting first"
        );
        assert!(
            !page.contains("data-state=\"95\""),
            "an empty stage folds away"
        );
        screenshot_shows_the_panel(&profile, &addr);
    }
    let _ = server.kill();
}

#[test]
fn the_fleet_lists_who_needs_a_human_locally() {
    the_fleet_lists_who_needs_a_human(World::new(crate::util::Kind::Local, "needs_a_human"));
}

#[test]
fn the_dashboard_shows_who_needs_a_human_locally() {
    the_dashboard_shows_who_needs_a_human(World::new(
        crate::util::Kind::Local,
        "needs_a_human_page",
    ));
}
