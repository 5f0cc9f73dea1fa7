//! Handoffs through the real programs: a local HTTP listener stands in for
//! the ATC and records the check webhooks `out` (and the CLI) post.

use crate::util::World;
use serde_json::json;
use std::net::TcpListener;
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cr3t-webhook-token";

/// How the stand-in ATC answers.
#[derive(Clone, Copy, PartialEq)]
enum Atc {
    Answers(u16),
    NeverAnswers,
}

struct Listener;

impl Listener {
    fn start(how: Atc) -> crate::util::StandInAtc {
        crate::util::StandInAtc::start(match how {
            Atc::Answers(code) => Some(code),
            Atc::NeverAnswers => None,
        })
    }
}

/// An address nothing listens on.
fn down() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn world(w: World) -> World {
    w.with(json!({"webhook_token": TOKEN}))
}

fn put(w: &World, atc: &str, params: serde_json::Value) -> crate::util::Step {
    w.put(params)
        .build("kickstart", 41)
        .env("ATC_EXTERNAL_URL", atc)
        .env("BUILD_PIPELINE_INSTANCE_VARS", r#"{"branch": "feature/x"}"#)
}

fn webhook(resource: &str) -> String {
    format!(
        "POST /api/v1/teams/main/pipelines/staged-image-build/resources/{resource}/check/webhook?webhook_token={TOKEN}&vars.branch=%22feature%2Fx%22 HTTP/1.1"
    )
}

/// A landed write posts one webhook per resource named, with the token and
/// the instance vars; a refused put and a replayed one post none; the token
/// is in no output.
fn a_landed_put_posts_its_webhooks(w: World) {
    let w = world(w);
    let atc = Listener::start(Atc::Answers(201));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let out = put(
        &w,
        &atc.url,
        json!({"start": 5, "check": ["at-kickstart", "needs-a-human"]}),
    )
    .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut seen = atc.seen();
    seen.sort();
    assert_eq!(seen, [webhook("at-kickstart"), webhook("needs-a-human")]);
    assert!(
        out.stderr
            .contains("asked Concourse to check at-kickstart, needs-a-human"),
        "{}",
        out.stderr
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(TOKEN), "the token leaked: {text}");
    }
    // The same put again (a re-run step): a no-op, no webhook.
    let again = put(&w, &atc.url, json!({"start": 5, "check": ["at-kickstart"]})).run();
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("check of at-kickstart skipped: nothing was written"),
        "{}",
        again.stderr
    );
    // Refused: nothing written, no webhook.
    let err = put(
        &w,
        &atc.url,
        json!({"complete": 25, "check": ["at-kickstart"]}),
    )
    .fails();
    assert!(err.contains("cannot complete 25"), "{err}");
    assert!(!err.contains(TOKEN));
    assert_eq!(
        atc.seen().len(),
        2,
        "no webhook after a replay or a refusal"
    );
    // A bad name is refused before anything is written.
    let before = w.raw("state.json");
    let err = put(&w, &atc.url, json!({"complete": 5, "check": ["a/b"]})).fails();
    assert!(
        err.contains("params.check: \"a/b\" is not a resource name"),
        "{err}"
    );
    assert_eq!(w.raw("state.json"), before);
    // The CLI's --check: the same webhook, from its environment.
    let said = w
        .cli(&["complete", "rhel8-web", "5", "--check", "at-green-image"])
        .env("ATC_EXTERNAL_URL", &atc.url)
        .env("BUILD_TEAM_NAME", "main")
        .env("BUILD_PIPELINE_NAME", "staged-image-build")
        .env("BUILD_PIPELINE_INSTANCE_VARS", r#"{"branch": "feature/x"}"#)
        .run();
    assert_eq!(said.code, Some(0), "{}", said.stderr);
    assert!(
        atc.seen().contains(&webhook("at-green-image")),
        "{:?}",
        atc.seen()
    );
    assert!(!said.stderr.contains(TOKEN) && !said.stdout.contains(TOKEN));
    // A bad name on the CLI: refused, nothing written.
    let before = w.raw("state.json");
    let err = w.cli(&["retry", "rhel8-web", "10", "--check", ""]).fails();
    assert!(
        err.contains("--check: \"\" is not a resource name"),
        "{err}"
    );
    assert_eq!(w.raw("state.json"), before);
}

/// The ATC down, answering 500, or never answering: the put succeeds all
/// the same, in bounded time, with one line per failure and no token.
fn a_failed_webhook_never_fails_the_put(w: World) {
    let w = world(w);
    w.put(json!({"init": true})).ok();
    let failing = Listener::start(Atc::Answers(500));
    let silent = Listener::start(Atc::NeverAnswers);
    let refused = Listener::start(Atc::Answers(401));
    for (atc, want) in [
        (
            down(),
            "check webhook of at-kickstart failed: http://127.0.0.1:",
        ),
        (failing.url.clone(), "answered 500 Internal Server Error"),
        (
            refused.url.clone(),
            "answered 401 Unauthorized (the token is not the resource's webhook_token)",
        ),
        (
            silent.url.clone(),
            "gave no answer within 4s (http://127.0.0.1:",
        ),
    ] {
        let started = Instant::now();
        let action = if w.doc()["state"] == 0 {
            json!({"complete": 0})
        } else {
            json!({"retry": 5})
        };
        let mut params = action.clone();
        params["check"] = json!(["at-kickstart"]);
        if action.get("retry").is_some() {
            // Something to retry: start 5 first (no webhook).
            w.put(json!({"start": 5})).ok();
        }
        let out = put(&w, &atc, params).run();
        assert_eq!(out.code, Some(0), "the put succeeds: {}", out.stderr);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "bounded: {:?}",
            started.elapsed()
        );
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("check webhook"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(lines[0].contains(want), "{want:?} in {}", out.stderr);
        assert!(
            lines[0].contains("its periodic check will find the change")
                || lines[0].contains("their periodic checks"),
            "{}",
            lines[0]
        );
        assert!(
            !out.stderr.contains(TOKEN) && !out.stdout.contains(TOKEN),
            "{}",
            out.stderr
        );
    }
    // Without the source's token, or outside a build: skipped, said once.
    let mut no_token = World::new(w.kind, "no_token");
    no_token.build_id = "other".into();
    no_token.put(json!({"init": true})).ok();
    let out = no_token
        .put(json!({"complete": 0, "check": ["at-kickstart"]}))
        .build("begin-run", 1)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("check of at-kickstart skipped: the source has no webhook_token"),
        "{}",
        out.stderr
    );
}

/// A start that finds the stage's last attempt dead records it as blocked
/// and fails: the write landed, so the put hands off all the same (the
/// alert job hears of it now, not at its gate's next periodic check).
fn a_write_that_landed_hands_off_though_the_put_fails(w: World) {
    let w = w.with(json!({
        "webhook_token": TOKEN,
        "retry": {"states": {"5": {"max_attempts": 1, "timeout": "1s"}}}
    }));
    let atc = Listener::start(Atc::Answers(201));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).build("kickstart", 40).ok();
    std::thread::sleep(Duration::from_millis(1200));
    let out = put(
        &w,
        &atc.url,
        json!({"start": 5, "check": ["needs-a-human"]}),
    )
    .run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("recorded as blocked, so start 5 does not go on"),
        "{}",
        out.stderr
    );
    assert_eq!(atc.seen(), [webhook("needs-a-human")]);
    let doc: serde_json::Value = serde_json::from_slice(&w.raw("state.json").unwrap()).unwrap();
    assert_eq!(doc["status"], "blocked");
}

/// A human at a terminal hands off like a put: the ATC from a fly target
/// (`~/.flyrc`'s api and team) or from --atc-url/--team, the pipeline from
/// --pipeline NAME (with --instance-var), the token from the source or
/// --webhook-token. A target fly does not know is an error before
/// anything is written.
fn a_human_hands_off_from_a_terminal(w: World) {
    let atc = Listener::start(Atc::Answers(201));
    let home = w.tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".flyrc"),
        format!(
            "targets:\n  ci:\n    api: {}/\n    team: main\n    token:\n      type: bearer\n      value: not-read\n",
            atc.url
        ),
    )
    .unwrap();
    let mut w = world(w);
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).build("kickstart", 40).ok();
    w.put(json!({"fail": 5, "error": "x"}))
        .build("kickstart", 40)
        .ok();
    let home_s = home.to_str().unwrap();
    let said = w
        .cli(&[
            "retry",
            "rhel8-web",
            "5",
            "--fly-target",
            "ci",
            "--pipeline",
            "staged-image-build",
            "--instance-var",
            "branch=feature/x",
            "--check",
            "at-kickstart",
        ])
        .env("HOME", home_s)
        .run();
    assert_eq!(said.code, Some(0), "{}", said.stderr);
    assert_eq!(atc.take(), [webhook("at-kickstart")]);
    assert!(!said.stderr.contains(TOKEN) && !said.stdout.contains(TOKEN));
    // --atc-url, --team, --pipeline and --webhook-token, a source without one.
    w.extra["webhook_token"] = serde_json::Value::Null;
    let said = w
        .cli(&[
            "set",
            "rhel8-web",
            "5",
            "--status",
            "failed",
            "--reason",
            "again",
            "--atc-url",
            &atc.url,
            "--team",
            "main",
            "--pipeline",
            "staged-image-build",
            "--check",
            "at-kickstart",
        ])
        .env("BUILD_STATE_WEBHOOK_TOKEN", TOKEN)
        .run();
    assert_eq!(said.code, Some(0), "{}", said.stderr);
    let seen = atc.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("POST /api/v1/teams/main/pipelines/staged-image-build/resources/at-kickstart/check/webhook?webhook_token="));
    // An unknown target: said, nothing written.
    let before = w.raw("state.json");
    let err = w
        .cli(&[
            "retry",
            "rhel8-web",
            "5",
            "--fly-target",
            "prod",
            "--check",
            "at-kickstart",
        ])
        .env("HOME", home_s)
        .fails();
    assert!(
        err.contains("--fly-target prod: no such target in") && err.contains("(it has: ci)"),
        "{err}"
    );
    assert_eq!(w.raw("state.json"), before, "nothing written");
}

crate::both_stores!(
    a_human_hands_off_from_a_terminal,
    a_landed_put_posts_its_webhooks,
    a_failed_webhook_never_fails_the_put,
    a_write_that_landed_hands_off_though_the_put_fails
);
