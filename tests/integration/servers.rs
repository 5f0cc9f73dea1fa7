//! S3 servers that do not keep the promise, played by a proxy in front of
//! the real test server: `doctor` tells the truth about each, and `out`
//! neither loses nor repeats an event where the server enforces conditions.
//! Every test here is in the `s3` module: CI runs them on MiniStack and on
//! Ceph RGW (where those whose names end in `not_on_ceph` do not apply).

mod s3 {
    use crate::proxy::{Fault, Proxy};
    use crate::util::{Kind, World, s3};
    use serde_json::{Value, json};
    use std::sync::atomic::Ordering;

    /// A world whose source points at a proxy in front of the test server.
    fn proxied(test: &str, fault: Fault) -> (World, Proxy) {
        let w = World::new(Kind::S3, test);
        let proxy = Proxy::start(&s3().endpoint, fault);
        // No backoff: the walk retries a failed stage at once.
        let w = w.with(json!({"endpoint": proxy.endpoint, "retry": {"backoff": "0s"}}));
        (w, proxy)
    }

    /// A proxy that rewrites request headers breaks their signatures, which
    /// Ceph RGW verifies: those faults are played on the emulators only (the
    /// tests are named `*_not_on_ceph`, and the Ceph pass skips them by name).
    fn rewrites_headers() {
        crate::util::not_on_ceph("it verifies signatures, and this fault rewrites signed headers");
    }

    /// Puts that walk a build through failure and retry; each must land once.
    const WALK: &[&str] = &[
        r#"{"init": true}"#,
        r#"{"complete": 0}"#,
        r#"{"start": 5}"#,
        r#"{"fail": 5, "error": "kickstart timed out"}"#,
        r#"{"start": 5}"#,
        r#"{"complete": 5}"#,
        r#"{"start": 10}"#,
    ];

    fn walk(w: &World) {
        for (i, params) in WALK.iter().enumerate() {
            let params: Value = serde_json::from_str(params).unwrap();
            let out = w.put(params.clone()).ok();
            assert_eq!(
                out["version"]["revision"],
                (i + 1).to_string(),
                "put {params} landed as the wrong revision"
            );
        }
        let doc = w.doc();
        assert_eq!(doc["revision"], WALK.len());
        assert_eq!(doc["state"], 10);
        assert_eq!(doc["status"], "in_progress");
        let actions: Vec<&str> = doc["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "init", "complete", "start", "fail", "start", "complete", "start"
            ],
            "each put exactly once, in order"
        );
    }

    /// `doctor`, its table squeezed (see `util::squeeze`).
    fn doctor(w: &World) -> crate::util::Output {
        let mut out = w.cli(&["doctor"]).run();
        out.stdout = crate::util::squeeze(&out.stdout);
        out
    }

    fn assert_never_guesses_at_writers(text: &str) {
        assert!(
            !text.contains("concurrent"),
            "a server fault described as concurrent writers:\n{text}"
        );
    }

    #[test]
    fn doctor_fails_on_a_server_that_ignores_conditions_not_on_ceph() {
        rewrites_headers();
        let (w, _proxy) = proxied("s3_doctor_ignores", Fault::IgnoreConditions);
        let before = w.keys();
        let out = doctor(&w);
        assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
        for want in [
            "If-None-Match: * FAILED the server ignores If-None-Match: *",
            "If-Match FAILED the server ignores If-Match",
            "updates can be lost on this server",
            "race FAILED",
            "cleanup ok",
        ] {
            assert!(
                out.stdout.contains(want),
                "{want:?} missing:\n{}",
                out.stdout
            );
        }
        assert!(out.stderr.contains("checks failed"), "{}", out.stderr);
        assert_never_guesses_at_writers(&out.stdout);
        assert_eq!(
            w.keys(),
            before,
            "the scratch object is removed after a failure"
        );
    }

    #[test]
    fn doctor_fails_on_a_server_whose_check_is_not_atomic_not_on_ceph() {
        rewrites_headers();
        let (w, _proxy) = proxied("s3_doctor_not_atomic", Fault::NotAtomic);
        let before = w.keys();
        let out = doctor(&w);
        assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
        // One writer at a time, the server looks sound ...
        for want in ["If-None-Match: * ok", "If-Match ok", "compare-and-swap ok"] {
            assert!(
                out.stdout.contains(want),
                "{want:?} missing:\n{}",
                out.stdout
            );
        }
        // ... the race probe is what shows it loses updates.
        let race = out
            .stdout
            .lines()
            .find(|l| l.starts_with("race"))
            .unwrap_or_else(|| panic!("no race check:\n{}", out.stdout));
        assert!(race.contains("FAILED"), "{race}");
        assert!(
            race.contains("simultaneous writes with the same If-Match succeeded"),
            "{race}"
        );
        assert!(
            race.contains("updates can be lost on this server"),
            "{race}"
        );
        assert_never_guesses_at_writers(&out.stdout);
        assert!(out.stdout.contains("cleanup ok"), "{}", out.stdout);
        assert_eq!(
            w.keys(),
            before,
            "the scratch object is removed after a failure"
        );
    }

    #[test]
    fn doctor_json_names_the_failed_checks_not_on_ceph() {
        rewrites_headers();
        let (w, _proxy) = proxied("s3_doctor_json", Fault::NotAtomic);
        let out = w.cli(&["doctor", "--json"]).run();
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let checks: Value = serde_json::from_str(&out.stdout).unwrap();
        let failed: Vec<&str> = checks
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["result"] == "failed")
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        assert_eq!(failed, ["race"]);
    }

    /// A server that wants bare ETags (as Ceph RGW does) without saying so
    /// is learned once per process, from a refused write: doctor passes and
    /// names the quirk, and every put lands.
    #[test]
    fn bare_etags_are_learned_and_named() {
        let (w, proxy) = proxied("s3_bare_etags", Fault::BareEtags);
        let out = doctor(&w);
        assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
        let quirks = out
            .stdout
            .lines()
            .find(|l| l.starts_with("quirks"))
            .unwrap_or_else(|| panic!("no quirk named:\n{}", out.stdout));
        assert!(
            quirks.contains("If-Match matches only the bare ETag"),
            "{quirks}"
        );
        assert!(out.stdout.contains("race ok"), "{}", out.stdout);
        assert_never_guesses_at_writers(&out.stdout);

        let writes_before = proxy.writes.load(Ordering::SeqCst);
        walk(&w);
        // The init is a create (no ETag); each replace costs one refused quoted
        // try and one bare write, in its own process.
        let writes = proxy.writes.load(Ordering::SeqCst) - writes_before;
        assert_eq!(writes, 1 + 2 * (WALK.len() - 1), "writes through the proxy");
        // An unchanged document answers a check from a 304.
        let version = w.check().ok()[0].clone();
        let out = w.check_from(&version).run();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(
            out.stderr.contains("unchanged since revision"),
            "{}",
            out.stderr
        );
        assert_eq!(
            serde_json::from_str::<Value>(&out.stdout).unwrap(),
            json!([version])
        );
    }

    /// A server that names itself as RGW does (`x-rgw-object-type`) is sent
    /// bare ETags from the first write on: a put is a read and one write,
    /// never a refused try (a put costs 2 requests on Ceph, not 4).
    #[test]
    fn a_server_named_rgw_gets_bare_etags_at_once() {
        let (w, proxy) = proxied("s3_bare_named", Fault::BareEtagsNamed);
        let writes_before = proxy.writes.load(Ordering::SeqCst);
        walk(&w);
        let writes = proxy.writes.load(Ordering::SeqCst) - writes_before;
        assert_eq!(writes, WALK.len(), "one write per put, none refused");
    }

    /// A server whose GetBucketVersioning answer the SDK cannot read (moto,
    /// s3rver): doctor and restore judge versioning by ListObjectVersions
    /// and say it in words, never an SDK dump.
    #[test]
    fn an_odd_versioning_answer_is_judged_by_the_listing() {
        let (w, _proxy) = proxied("s3_odd_versioning", Fault::OddVersioningAnswer);
        w.put(json!({"init": true})).ok();
        let out = doctor(&w);
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with("versioning"))
            .unwrap_or_else(|| panic!("no versioning row:\n{}", out.stdout))
            .to_string();
        assert!(
            row.contains("WARNING off: build-state restore cannot"),
            "{row}"
        );
        let err = w.cli(&["restore", "rhel8-web", "--yes"]).fails_with(1);
        assert!(err.contains("versioning is off on"), "{err}");
        for text in [&out.stdout, &out.stderr, &err] {
            assert!(
                !text.contains("StartEl") && !text.contains("likely a bug"),
                "an SDK dump:\n{text}"
            );
        }
    }

    /// A server that does not do a DELETE with `If-Match` (LocalStack 4.14
    /// answers 501): prune says so in words and deletes nothing, never
    /// unconditionally.
    #[test]
    fn prune_deletes_nothing_without_a_conditional_delete() {
        let (w, _proxy) = proxied("s3_no_conditional_delete", Fault::NoConditionalDelete);
        w.put(json!({"init": true})).ok();
        w.put(json!({"cancel": "superseded"})).ok();
        let before = w.keys();
        let out = w.cli(&["prune", "--older-than", "0s"]).run();
        assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("failed")
                && out.stdout.contains("does not do a DELETE with If-Match"),
            "{}",
            out.stdout
        );
        assert_eq!(w.keys(), before, "nothing deleted");
    }

    /// The answer to a write is lost after the server applied it: the put
    /// judges by what is stored, so the event is neither lost nor repeated.
    #[test]
    fn a_lost_answer_neither_loses_nor_repeats_an_event() {
        let (w, proxy) = proxied("s3_lost_answer", Fault::DropAnswerAfterWrite);
        walk(&w);
        assert!(
            proxy.dropped.load(Ordering::SeqCst) >= WALK.len(),
            "every put lost the answer to its write"
        );
    }

    /// The same with simultaneous writers: every one lands exactly once.
    #[test]
    fn lost_answers_under_concurrent_writers() {
        const WRITERS: u32 = 8;
        let (w, proxy) = proxied("s3_lost_answers_concurrent", Fault::DropAnswerAfterWrite);
        let w = w.with(json!({"retry": {"max_attempts": 100}}));
        w.put(json!({"init": true})).ok();
        w.put(json!({"complete": 0})).ok();
        let outs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|i| {
                    let w = &w;
                    s.spawn(move || {
                        w.put(json!({"start": 5, "note": format!("writer {i}")}))
                            .build("stage", 2000 + i)
                            .run()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for out in &outs {
            assert_eq!(out.code, Some(0), "a put failed: {}", out.stderr);
        }
        let doc = w.doc();
        assert_eq!(doc["revision"], 2 + WRITERS);
        let mut errors: Vec<String> = doc["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["note"].as_str().map(str::to_string))
            .collect();
        errors.sort();
        let mut want: Vec<String> = (0..WRITERS).map(|i| format!("writer {i}")).collect();
        want.sort();
        assert_eq!(errors, want, "each writer's event once");
        assert!(proxy.dropped.load(Ordering::SeqCst) > 0);
    }

    /// A history checker, in the spirit of Jepsen's: writers of every kind
    /// at once on three builds (`out` puts failing a stage, CLI retries,
    /// CLI notes through `set`, a `prune` of a finished build), every
    /// write's answer dropped after the server applied it. Each operation's
    /// reported outcome (done, refused, unknown) is recorded, then the
    /// stored histories are checked: every done operation's event exactly
    /// once, no refused one's, unknown ones at most once, revisions
    /// contiguous, every document readable, the pruned build gone whole.
    #[test]
    fn a_history_checker_finds_no_anomaly() {
        history_check("s3_history_checker", Fault::DropAnswerAfterWrite);
    }

    /// The same checker through faults of every kind: 503s, delays, answers
    /// dropped after the write.
    #[test]
    fn a_history_checker_finds_no_anomaly_through_flaky_faults() {
        history_check("s3_history_flaky", Fault::Flaky);
    }

    fn history_check(test: &str, fault: Fault) {
        let (w, proxy) = proxied(test, fault);
        let w = w.with(json!({"retry": {"max_attempts": 1000, "backoff": "1s"}}));
        let builds = ["hc-a", "hc-b", "hc-c"];
        let put = |id: &str, params: Value, job: u32| {
            w.put(params.clone())
                .stdin(json!({"source": w.source_with(json!({"build_id": id})), "params": params}))
                .build("checker", job)
                .run()
        };
        for id in builds {
            assert_eq!(put(id, json!({"init": true}), 1).code, Some(0));
            assert_eq!(put(id, json!({"complete": 0}), 2).code, Some(0));
        }
        assert_eq!(put("hc-done", json!({"init": true}), 3).code, Some(0));
        assert_eq!(
            put("hc-done", json!({"cancel": "superseded"}), 4).code,
            Some(0)
        );
        // (build, the text that identifies the operation's event, how it ran)
        #[derive(Clone, Copy, PartialEq, Debug)]
        enum Said {
            Done,
            Refused,
            Unknown,
        }
        // 18 operations at once, in waves (BUILD_STATE_CHECKER_WAVES, 1 by
        // default; scripts/bench runs a longer one); the prune in the first.
        let waves: u32 = std::env::var("BUILD_STATE_CHECKER_WAVES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let mut ops: Vec<(String, String, Said)> = Vec::new();
        for wave in 0..waves {
            let done: Vec<(String, String, Said)> = std::thread::scope(|s| {
                let mut handles = Vec::new();
                for i in (wave * 18)..(wave * 18 + 18) {
                    let id = builds[i as usize % 3].to_string();
                    let w = &w;
                    handles.push(s.spawn(move || {
                        let tag = format!("op-{i}");
                        let out = match i % 3 {
                            // `out` outside a Concourse build (as `fly
                            // execute` runs it): every failure counts (a
                            // build's counts only for the attempt it started).
                            0 | 1 => {
                                let params = json!({"fail": 5, "error": tag});
                                w.put(params.clone())
                                    .stdin(json!({"source": w.source_with(json!({"build_id": id})), "params": params}))
                                    .run()
                            }
                            _ => w
                                .cli(&["retry", &id, "5", "--note", &tag])
                                .env("BUILD_ID", "")
                                .run(),
                        };
                        let said = match out.code {
                            Some(0) => Said::Done,
                            Some(1)
                                if out.stderr.contains("cannot retry")
                                    || out.stderr.contains("cannot fail") =>
                            {
                                Said::Refused
                            }
                            _ => Said::Unknown,
                        };
                        (id, tag, said)
                    }));
                }
                let prune =
                    (wave == 0).then(|| s.spawn(|| w.cli(&["prune", "--older-than", "0s"]).run()));
                let ops = handles.into_iter().map(|h| h.join().unwrap()).collect();
                // A prune whose delete lost its answer may report a failure.
                if let Some(prune) = prune {
                    let pruned = prune.join().unwrap();
                    assert!(matches!(pruned.code, Some(0 | 1)), "{}", pruned.stderr);
                }
                ops
            });
            ops.extend(done);
        }
        assert!(
            proxy.dropped.load(Ordering::SeqCst) > 0,
            "answers were dropped"
        );
        assert!(ops.iter().any(|o| o.2 == Said::Done));
        for id in builds {
            let show = w.cli(&["show", id, "--json"]).run();
            assert_eq!(show.code, Some(0), "{id} does not read: {}", show.stderr);
            let doc: Value = serde_json::from_str(&show.stdout).unwrap();
            let history = doc["history"].as_array().unwrap();
            let revisions: Vec<u64> = history
                .iter()
                .map(|e| e["revision"].as_u64().unwrap())
                .collect();
            let first = revisions[0];
            assert_eq!(
                revisions,
                (first..first + revisions.len() as u64).collect::<Vec<_>>(),
                "{id}: revisions contiguous"
            );
            assert_eq!(doc["revision"].as_u64(), revisions.last().copied());
            for (b, tag, said) in ops.iter().filter(|o| o.0 == id) {
                let seen = history
                    .iter()
                    .filter(|e| e["error"]["message"] == tag.as_str() || e["note"] == tag.as_str())
                    .count();
                let ok = match said {
                    Said::Done => seen == 1,
                    Said::Refused => seen == 0,
                    Said::Unknown => seen <= 1,
                };
                assert!(
                    ok,
                    "{b}: {tag} reported {said:?}, its event stored {seen} times"
                );
            }
        }
        // The finished build is gone whole, or intact.
        let left: Vec<String> = w
            .keys()
            .into_iter()
            .filter(|k| k.contains("/hc-done/"))
            .collect();
        if !left.is_empty() {
            let show = w.cli(&["show", "hc-done"]).run();
            assert_eq!(
                show.code,
                Some(0),
                "hc-done stranded ({left:?}): {}",
                show.stderr
            );
        }
        let count = |said: Said| ops.iter().filter(|o| o.2 == said).count();
        eprintln!(
            "history checker ({fault:?}): {} operations (done {}, refused {}, unknown {}), {} faults injected, 0 anomalies",
            ops.len(),
            count(Said::Done),
            count(Said::Refused),
            count(Said::Unknown),
            proxy.dropped.load(Ordering::SeqCst)
        );
    }

    /// A server that refuses server-side encryption with a bare 400
    /// InvalidRequest (Ceph RGW without a key manager): the error says what
    /// was refused and the way out; nothing is written.
    #[test]
    fn a_refused_encryption_is_named() {
        let (w, _proxy) = proxied("s3_refuse_sse", Fault::RefuseEncryption);
        let w = w.with(json!({"server_side_encryption": "AES256"}));
        let err = w.put(json!({"init": true})).fails();
        assert!(
            err.contains("refused the write with server-side encryption (400 InvalidRequest)")
                && err.contains("drop server_side_encryption"),
            "{err}"
        );
        assert!(w.keys().is_empty(), "nothing written: {:?}", w.keys());
    }

    /// A body cut short (every other object read) is read again, never
    /// called a corrupt document: checks, gets and puts all work.
    #[test]
    fn a_body_cut_short_is_read_again() {
        let (w, proxy) = proxied("s3_cut_bodies", Fault::CutBodies);
        w.put(json!({"init": true})).ok();
        w.put(json!({"complete": 0})).ok();
        let version = w.check().ok()[0].clone();
        assert_eq!(version["revision"], "2");
        w.get(&version).ok();
        let show = w.cli(&["show", "rhel8-web"]).text();
        assert!(show.contains("kickstart initiated"), "{show}");
        assert!(proxy.dropped.load(Ordering::SeqCst) >= 3, "bodies were cut");
    }

    /// A server that refuses every `If-Match`: no put can land, and the error
    /// says what the server did, never "concurrent writers".
    #[test]
    fn a_server_that_refuses_every_if_match_is_named() {
        let (w, _proxy) = proxied("s3_refuses_if_match", Fault::RefuseIfMatch);
        w.put(json!({"init": true})).ok();
        let before = w.raw("state.json").unwrap();
        let err = w.put(json!({"complete": 0})).fails();
        assert!(
            err.contains(
                "the server answered 412 Precondition Failed to If-Match with the object's current ETag"
            ) && err.contains("quoted and bare")
                && err.contains("cannot do compare-and-swap"),
            "{err}"
        );
        assert_never_guesses_at_writers(&err);
        assert_eq!(w.raw("state.json").unwrap(), before, "nothing written");
        let out = doctor(&w);
        assert_eq!(out.code, Some(1), "{}", out.stdout);
        let cas = out
            .stdout
            .lines()
            .find(|l| l.starts_with("compare-and-swap"))
            .unwrap();
        assert!(
            cas.contains("FAILED") && cas.contains("quoted and bare"),
            "{cas}"
        );
        assert_never_guesses_at_writers(&out.stdout);
        assert!(out.stdout.contains("cleanup ok"), "{}", out.stdout);
    }

    /// A build updated between prune's judging and its delete is kept: the
    /// delete carries If-Match on the ETag judged (Ceph RGW 16 ignores it there;
    /// doctor warns of that).
    #[test]
    fn prune_keeps_a_build_changed_before_its_delete_not_on_ceph() {
        rewrites_headers();
        let (w, _proxy) = proxied("s3_prune_race", Fault::ChangeBeforeDelete);
        w.put(json!({"init": true})).ok();
        w.put(json!({"cancel": "superseded"})).ok();
        let before = w.raw("state.json").unwrap();
        let out = w.cli(&["prune", "--older-than", "0s"]).text();
        let line = out.lines().find(|l| l.starts_with("rhel8-web")).unwrap();
        assert!(
            line.contains("kept")
                && line.contains("changed since it was judged (its delete was refused)"),
            "{out}"
        );
        let after = w.raw("state.json").expect("the build is still there");
        assert_eq!(
            after.len(),
            before.len() + 1,
            "the other writer's change is kept"
        );
    }
}

/// s3rver 3.7.1 (npm), a real server that ignores every condition on PUT
/// and DELETE: doctor fails on it, naming each check it fails, and says in
/// words that it keeps no versions. It starts a server of its own, so it
/// runs in the main pass (outside the `s3` modules).
#[test]
fn doctor_fails_on_s3rver() {
    use crate::util::{Kind, World};
    let npm = std::process::Command::new("npm").arg("--version").output();
    if !npm.is_ok_and(|o| o.status.success()) {
        crate::util::missing_tool("npm", "doctor on s3rver");
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers");
    let start = std::process::Command::new(dir.join("s3rver.sh"))
        .output()
        .expect("running tests/servers/s3rver.sh");
    assert!(
        start.status.success(),
        "s3rver did not start: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    let vars: std::collections::HashMap<String, String> = String::from_utf8_lossy(&start.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pid = vars["S3_LOCAL_PID"].clone();
    let w = World::new(Kind::Local, "s3rver");
    let source = w.tmp.path().join("s3rver.json");
    std::fs::write(
        &source,
        serde_json::json!({
            "bucket": "doctor", "endpoint": vars["AWS_ENDPOINT_URL"], "use_path_style": true,
            "access_key_id": "S3RVER", "secret_access_key": "S3RVER", "prefix": "p/"
        })
        .to_string(),
    )
    .unwrap();
    let out = w
        .bare_cli(&["doctor", "--source", source.to_str().unwrap()])
        .run();
    let _ = std::process::Command::new("kill").arg(&pid).status();
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let table = crate::util::squeeze(&out.stdout);
    for want in [
        "If-None-Match: * FAILED the server ignores If-None-Match: *",
        "If-Match FAILED the server ignores If-Match",
        "race FAILED",
        "versioning WARNING off: build-state restore cannot",
    ] {
        assert!(table.contains(want), "{want:?} in:\n{table}");
    }
    assert!(out.stderr.contains("3 checks failed"), "{}", out.stderr);
}
