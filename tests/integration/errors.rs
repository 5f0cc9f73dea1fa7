//! Every bad input the README's Errors section names: exit 1, one clear line on stderr that
//! says what to do, nothing on stdout, nothing written.

use crate::util::{Kind, World};
use serde_json::{Value, json};

/// Runs a failing put and checks that the store is exactly as before.
#[track_caller]
fn refused_put(w: &World, params: Value) -> String {
    let before = w.keys();
    let doc = w.raw("state.json");
    let err = w.put(params).fails();
    assert_eq!(w.keys(), before, "no object was added or removed");
    assert_eq!(w.raw("state.json"), doc, "the document is unchanged");
    err
}

fn bad_requests(w: World) {
    w.put(json!({"init": true})).ok();
    for program in ["check", "in", "out"] {
        let step = match program {
            "check" => w.check(),
            "in" => w.get(&json!({"revision": "1"})),
            _ => w.put(json!({})),
        };
        let err = step.raw_stdin("<html>not json</html>").fails();
        assert!(
            err.contains("invalid payload: expected value at line 1 column 1"),
            "{program}: {err}"
        );
        let err = match program {
            "check" => w.check().raw_stdin("{}"),
            "in" => w.get(&json!({})).raw_stdin("{}"),
            _ => w.put(json!({})).raw_stdin("{}"),
        }
        .fails();
        assert!(
            err.contains("invalid payload: missing field `source`"),
            "{program}: {err}"
        );
    }
    let mut source = w.source();
    source["bukket"] = json!("x");
    let err = w.check().stdin(json!({"source": source})).fails();
    assert!(
        err.contains("invalid payload: source.bukket: unknown field `bukket`, expected one of"),
        "{err}"
    );
    // A version is the one place unknown fields are tolerated: Concourse
    // sends back what another image emitted.
    let versions = w
        .check()
        .stdin(json!({"source": w.source(), "version": {"revision": "1", "serial": "2"}}))
        .ok();
    assert_eq!(versions[0]["revision"], "1");
    let err = w
        .check()
        .stdin(json!({"source": w.source(), "version": {"serial": "2"}}))
        .fails();
    assert!(err.contains("version: missing field `revision`"), "{err}");
    let err = w
        .get_with(&json!({"revision": "1"}), json!({"skip_download": true}))
        .fails();
    assert!(
        err.contains("params.skip_download: unknown field `skip_download`"),
        "{err}"
    );
}

fn bad_put_params(w: World) {
    w.put(json!({"init": true})).ok();
    let err = refused_put(&w, json!({"complete": 0, "stat": 1}));
    assert!(err.contains("params.stat: unknown field `stat`"), "{err}");
    // The field's path says where; no line and column of stdin.
    assert!(!err.contains(" at line "), "{err}");
    let err = refused_put(&w, json!({}));
    assert!(
        err.contains("rhel8-web: params: no action given; a put takes exactly one of init, start"),
        "{err}"
    );
    let err = refused_put(&w, json!({"start": 0, "complete": 0}));
    assert!(
        err.contains("params: start and complete given; a put takes exactly one action"),
        "{err}"
    );
    let err = refused_put(&w, json!({"complete": 33}));
    assert!(
        err.contains(
            "params.complete: state 33 is not on the ladder (0, 5, ..., 100 (steps of 5))"
        ),
        "{err}"
    );
    let err = refused_put(&w, json!({"complete": -5}));
    assert!(err.contains("state code -5 is negative"), "{err}");
    let err = refused_put(&w, json!({"complete": 25}));
    assert!(
        err.contains("rhel8-web is at 0 (initial, pending); cannot complete 25; allowed now: start 0, complete 0, fail 0, set (with a reason), cancel, restart"),
        "{err}"
    );
    let err = refused_put(&w, json!({"fail": 0}));
    assert!(
        err.contains("params.fail needs `error` or `error_file`"),
        "{err}"
    );
    let err = refused_put(&w, json!({"fail": 0, "error_file": "out/missing.txt"}));
    assert!(
        err.contains("params.error_file: cannot read") && err.contains("make the task write it"),
        "{err}"
    );
    let err = refused_put(&w, json!({"fail": 0, "error": "x", "kind": "fatal"}));
    assert!(
        err.contains("params.kind: \"fatal\" must be transient or persistent"),
        "{err}"
    );
    let err = refused_put(&w, json!({"start": 0, "error": "x"}));
    assert!(
        err.contains("params.error goes with fail or finish, not with start"),
        "{err}"
    );
    let err = refused_put(&w, json!({"fail": 0, "error": "x", "status": "failed"}));
    assert!(
        err.contains("params.status goes with set, not with fail"),
        "{err}"
    );
    let err = refused_put(&w, json!({"start": 0, "reason": "x"}));
    assert!(
        err.contains("params.reason goes with set or approve, not with start"),
        "{err}"
    );
    let err = refused_put(&w, json!({"start": 0, "vars_file": "nope.json"}));
    assert!(err.contains("params.vars_file: cannot read"), "{err}");
    let err = refused_put(&w, json!({"file": "nope.json"}));
    assert!(err.contains("params.file: cannot read"), "{err}");
    // With a fallback `error`, a missing error_file still records the failure.
    let out = w
        .put(json!({"fail": 0, "error_file": "missing.txt", "error": "stage failed"}))
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: params.error_file: cannot read"),
        "{}",
        out.stderr
    );
    assert_eq!(w.doc()["last_error"]["message"], "stage failed");
}

fn bad_sources(w: World) {
    let before = w.keys();
    for (id, shown) in [
        ("../x", "\"../x\""),
        ("a/b", "\"a/b\""),
        ("..", "\"..\""),
        ("", ""),
    ] {
        let mut s = w.source();
        s["build_id"] = json!(id);
        let err = w
            .put(json!({"init": true}))
            .stdin(json!({"source": s, "params": {"init": true}}))
            .fails();
        assert!(err.contains("source.build_id:"), "{err}");
        assert!(err.contains(shown), "{err}");
    }
    let mut s = w.source();
    s["retry"] = json!({"backoff": "soon"});
    let err = w.check().stdin(json!({"source": s})).fails();
    assert!(
        err.contains("rhel8-web: source.retry.backoff: \"soon\" is not a duration"),
        "{err}"
    );
    // "5M" is months to the parser and minutes to most readers: refused.
    let mut s = w.source();
    s["retry"] = json!({"backoff": "5M"});
    let err = w
        .put(json!({}))
        .stdin(json!({"source": s, "params": {"init": true}}))
        .fails();
    assert!(
        err.contains("rhel8-web: source.retry.backoff: \"5M\" is ambiguous: write m or min for minutes, months for months; write e.g. 30s, 5m or 1h"),
        "{err}"
    );
    let err = w.cli(&["prune", "--older-than", "5M"]).fails();
    assert!(
        err.contains(
            "--older-than: \"5M\" is ambiguous: write m or min for minutes, months for months"
        ),
        "{err}"
    );
    let mut s = w.source();
    s["gate"] = json!({"state": 7});
    let err = w.check().stdin(json!({"source": s})).fails();
    assert!(
        err.contains("source.gate: state 7 is not on the ladder"),
        "{err}"
    );
    let mut s = w.source();
    s["states"] = json!([{"code": 0, "name": "queued"}, {"code": 0, "name": "done"}]);
    let err = w.check().stdin(json!({"source": s})).fails();
    assert!(
        err.contains("source.states: states must be strictly increasing"),
        "{err}"
    );
    // Neither bucket nor local_dir.
    let err = w
        .check()
        .stdin(json!({"source": {"build_id": "rhel8-web"}}))
        .fails();
    assert!(err.contains("rhel8-web: source.bucket: is required: the S3 bucket that holds the states (or set local_dir"), "{err}");
    assert_eq!(w.keys(), before, "nothing written");
}

fn custom_ladder(w: World) {
    let w = w.with(json!({"states": [
        {"code": 0, "name": "queued"}, {"code": 10, "name": "built"}, {"code": 20, "name": "shipped"}
    ]}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    assert_eq!(w.doc()["state_name"], "built");
    let err = refused_put(&w, json!({"complete": 5}));
    assert!(
        err.contains("state 5 is not on the ladder (0, 10, 20)"),
        "{err}"
    );
    w.put(json!({"complete": 10})).ok();
    assert_eq!(
        (w.doc()["state"].as_u64(), w.doc()["status"].as_str()),
        (Some(20), Some("completed"))
    );
}

fn corrupt_documents_are_refused(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let good = w.raw("state.json").unwrap();

    w.write_raw("state.json", b"{\"schema_version\": 1, \"build_id\": ");
    for step in [w.check(), w.get(&json!({"revision": "1"}))] {
        let err = step.fails();
        assert!(
            err.contains("the document is not valid JSON")
                && err.contains("the way out: `build-state restore BUILD_ID`"),
            "{err}"
        );
    }
    let err = refused_put(&w, json!({"start": 5}));
    assert!(err.contains("`build-state restore BUILD_ID`"), "{err}");
    assert!(
        err.contains("rhel8-web") && err.contains("state.json") && err.contains("not valid JSON"),
        "{err}"
    );

    // A summary that disagrees with the history (a hand edit gone wrong).
    let mut doc: Value = serde_json::from_slice(&good).unwrap();
    doc["state"] = json!(25);
    w.write_raw(
        "state.json",
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    );
    let err = w.check().fails();
    assert!(
        err.contains("the document is corrupt: its summary disagrees with its history: state is 25 but its history says 5"),
        "{err}"
    );
    let err = refused_put(&w, json!({"start": 25}));
    assert!(err.contains("is corrupt"), "{err}");

    // A document of another build.
    let mut doc: Value = serde_json::from_slice(&good).unwrap();
    doc["build_id"] = json!("other");
    w.write_raw("state.json", doc.to_string().as_bytes());
    let err = w.check().fails();
    assert!(
        err.contains("the document is corrupt: it belongs to build \"other\""),
        "{err}"
    );
}

fn secrets_never_appear(w: World) {
    let secret = "SECRET-wJalrXUtnFEMI-K7MDENG";
    let token = "TOKEN-FwoGZXIvYXdzEJr";
    let w = w.with(json!({}));
    let mut source = w.source();
    if w.kind == Kind::Local {
        // A local source cannot carry keys into a store, but a mistaken
        // one must still not leak them.
        source["bukket"] = json!("typo");
    }
    source["secret_access_key"] = json!(secret);
    source["session_token"] = json!(token);
    if w.kind == Kind::S3 {
        source["access_key_id"] = json!("AKIDEXAMPLE");
    }
    let runs = [
        w.check().stdin(json!({"source": source})).run(),
        w.put(json!({}))
            .stdin(json!({"source": source, "params": {"init": true}}))
            .run(),
        w.put(json!({}))
            .stdin(json!({"source": source, "params": {"complete": 40}}))
            .run(),
        w.get(&json!({}))
            .stdin(json!({"source": source, "version": {"revision": "1"}}))
            .run(),
        w.get(&json!({}))
            .stdin(json!({"source": source, "version": {"revision": "77"}}))
            .run(),
    ];
    for out in &runs {
        for s in [secret, token] {
            assert!(
                !out.stdout.contains(s) && !out.stderr.contains(s),
                "leaked: {out:?}"
            );
        }
    }
    if w.kind == Kind::S3 && crate::util::s3().checks_signatures() {
        // A real server refuses the made-up keys, still without echoing them.
        assert_eq!(runs[1].code, Some(1), "{}", runs[1].stderr);
        assert!(
            runs[1].stderr.contains("credentials rejected"),
            "{}",
            runs[1].stderr
        );
    } else if w.kind == Kind::S3 {
        assert_eq!(runs[1].code, Some(0), "{}", runs[1].stderr);
        let dest = runs[3].dest.as_ref().unwrap();
        for entry in std::fs::read_dir(dest).unwrap() {
            let body = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!body.contains(secret) && !body.contains(token));
        }
        assert!(
            !String::from_utf8(w.raw("state.json").unwrap())
                .unwrap()
                .contains(secret)
        );
    }
}

/// Files a put reads must be small regular files inside the sources
/// directory: a FIFO must not hang the step, a device must not be read
/// without end, and nothing outside may reach the document. A fallback
/// `error` does not excuse them (it covers only a file never written).
fn put_files_are_small_regular_files_inside(w: World) {
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    let src = w.sources();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(src.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink("/dev/zero", src.join("zero")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", src.join("host")).unwrap();
    std::fs::create_dir_all(src.join("dir")).unwrap();
    w.write_file(
        "big.json",
        &format!("{{\"x\": \"{}\"}}", "y".repeat(1 << 20)),
    );
    let cases = [
        ("fifo", "is a FIFO (named pipe); name a regular file"),
        ("zero", "is outside the sources directory"),
        ("host", "is outside the sources directory"),
        (
            "../../../../../../../etc/passwd",
            "is outside the sources directory",
        ),
        ("/etc/passwd", "is outside the sources directory"),
        ("dir", "is a directory; name a regular file"),
        ("big.json", "is larger than 1024 KiB"),
    ];
    for (file, want) in cases {
        for (param, params) in [
            (
                "error_file",
                json!({"fail": 5, "error_file": file, "error": "fallback"}),
            ),
            (
                "vars_file",
                json!({"fail": 5, "error": "boom", "vars_file": file}),
            ),
            ("vars_file", json!({"start": 5, "vars_file": file})),
            ("file", json!({"file": file})),
        ] {
            let err = refused_put(&w, params.clone());
            assert!(
                err.contains(&format!("params.{param}: ")) && err.contains(want),
                "{params}: {err}"
            );
        }
    }
    // The CLI reads any path a person names, but only small regular files.
    let doc = w.raw("state.json");
    let fifo = src.join("fifo");
    let fifo = fifo.to_str().unwrap();
    for (args, want) in [
        (
            vec!["start", "rhel8-web", "5", "--vars-file", "/dev/zero"],
            "--vars-file: /dev/zero is a device",
        ),
        (
            vec!["start", "rhel8-web", "5", "--vars-file", fifo],
            "is a FIFO (named pipe)",
        ),
        (
            vec![
                "fail",
                "rhel8-web",
                "5",
                "--error-file",
                fifo,
                "--error",
                "x",
            ],
            "--error-file: ",
        ),
    ] {
        let out = w.cli(&args).run();
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    assert_eq!(w.raw("state.json"), doc, "nothing written");
}

/// An object bigger than the 4 MiB cap (a hand edit, another tool's
/// object) is refused by its size, before its body is read, by every
/// program and command, with the way out; a put writes nothing over it.
fn a_huge_object_is_refused_by_its_size(w: World) {
    w.put(json!({"init": true})).ok();
    let huge = format!("{{\"junk\": \"{}\"}}", "x".repeat(6 << 20));
    w.write_raw("state.json", huge.as_bytes());
    let size = huge.len();
    let says = format!("is {size} bytes, more than the 4 MiB a build-state document may be");
    for err in [
        w.check().fails(),
        w.put(json!({"complete": 0})).fails(),
        w.cli(&["show", "rhel8-web"]).fails_with(1),
    ] {
        assert!(
            err.contains(&says) && err.contains("move it aside"),
            "{err}"
        );
    }
    assert_eq!(
        w.raw("state.json").map(|b| b.len()),
        Some(size),
        "nothing written over it"
    );
    // list names it among the rest.
    let list = w.cli(&["list"]).text();
    assert!(list.contains("unreadable"), "{list}");
}

crate::both_stores!(
    a_huge_object_is_refused_by_its_size,
    put_files_are_small_regular_files_inside,
    bad_requests,
    bad_put_params,
    bad_sources,
    custom_ladder,
    corrupt_documents_are_refused,
    secrets_never_appear,
);

/// A server that cannot be reached: the error names the host tried and the
/// field that set it (no S3 server needed: nothing listens on port 9).
#[test]
fn a_connection_failure_names_the_host_and_the_field() {
    let w = World::new(Kind::Local, "connect");
    let source = json!({
        "bucket": "image-states", "prefix": "rhel8/", "build_id": "rhel8-web",
        "endpoint": "http://127.0.0.1:9", "use_path_style": true,
        "access_key_id": "AKIAEXAMPLE", "secret_access_key": "not-a-secret",
    });
    for step in [
        w.check().stdin(json!({"source": source})),
        w.put(json!({}))
            .stdin(json!({"source": source, "params": {"init": true}})),
    ] {
        let err = step.fails();
        assert!(
            err.contains("rhel8-web (s3://image-states/rhel8/rhel8-web/state.json): could not connect to http://127.0.0.1:9/image-states (set by source.endpoint; use_path_style: true): ")
                && err.contains("Connection refused"),
            "{err}"
        );
    }
    std::fs::write(w.tmp.path().join("source.json"), source.to_string()).unwrap();
    let err = w
        .bare_cli(&["show", "rhel8-web", "--source", "source.json"])
        .fails();
    assert!(
        err.contains("(set by endpoint in source.json; use_path_style: true)"),
        "{err}"
    );
}

/// Tests that need the S3 server only (in a module named `s3`, like every
/// S3 test, so `.ci/run` runs them again on Ceph RGW).
mod server {
    mod s3 {
        use super::super::*;

        fn world(name: &str) -> World {
            World::new(Kind::S3, name)
        }

        /// A bucket in another region than region_name: said plainly (on a
        /// server that has regions; Ceph RGW's test cluster has one).
        #[test]
        fn bucket_in_another_region_not_on_ceph() {
            crate::util::not_on_ceph("its test cluster has one region and serves any region_name");
            let w = world("wrong_region").with(json!({"region_name": "eu-west-1"}));
            let err = w.put(json!({"init": true})).fails();
            assert!(
                err.contains("PermanentRedirect: ")
                    && err
                        .contains("(the bucket is in another region than source.region_name says)")
                    && !err.contains("Error {"),
                "{err}"
            );
            assert_eq!(w.keys(), Vec::<String>::new(), "nothing written");
        }

        #[test]
        fn missing_bucket() {
            let w = world("missing_bucket");
            let mut s = w.source();
            s["bucket"] = json!("no-such-bucket-here");
            let err = w.check().stdin(json!({"source": s.clone()})).fails();
            assert!(
            err.contains("rhel8-web (s3://no-such-bucket-here/missing_bucket-")
                && err.contains("bucket \"no-such-bucket-here\" does not exist (check source.bucket, source.region_name and source.endpoint)"),
            "{err}"
        );
            let err = w
                .put(json!({}))
                .stdin(json!({"source": s, "params": {"init": true}}))
                .fails();
            assert!(err.contains("does not exist"), "{err}");
        }

        #[test]
        fn missing_credentials() {
            let w = world("missing_credentials");
            let mut s = w.source();
            s.as_object_mut().unwrap().remove("access_key_id");
            s.as_object_mut().unwrap().remove("secret_access_key");
            let err = w.check().stdin(json!({"source": s.clone()})).fails();
            assert!(
            err.contains("rhel8-web: source.access_key_id: no credentials: set access_key_id and secret_access_key, or set enable_aws_creds_provider: true"),
            "{err}"
        );
            s["access_key_id"] = json!("AKID");
            let err = w.check().stdin(json!({"source": s})).fails();
            assert!(
                err.contains("source.secret_access_key: is required with access_key_id"),
                "{err}"
            );
        }

        #[test]
        fn credential_chain_from_the_environment() {
            // enable_aws_creds_provider: the standard chain (here: environment).
            let w = world("credential_chain");
            let mut s = w.source();
            s.as_object_mut().unwrap().remove("access_key_id");
            s.as_object_mut().unwrap().remove("secret_access_key");
            s["enable_aws_creds_provider"] = json!(true);
            let out = w
                .put(json!({}))
                .stdin(json!({"source": s.clone(), "params": {"init": true}}))
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .ok();
            assert_eq!(out["version"]["revision"], "1");
            // Nothing in the chain: a clear error, quickly (no metadata stall).
            let started = std::time::Instant::now();
            let err = w
                .check()
                .stdin(json!({"source": s}))
                .env("AWS_ACCESS_KEY_ID", "")
                .env("AWS_SECRET_ACCESS_KEY", "")
                .env("AWS_PROFILE", "none")
                .env("AWS_CONFIG_FILE", "/nonexistent")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .fails();
            assert!(err.contains("credentials"), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(20));
        }

        /// The CLI honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, as the AWS
        /// tools do, when nothing names an endpoint; a flag beats them.
        #[test]
        fn the_cli_honours_aws_endpoint_url() {
            let w = world("aws_endpoint_url");
            let cli = |args: &[&str], var: &str, url: &str| {
                w.bare_cli(args)
                    .arg("--bucket")
                    .arg(crate::util::BUCKET)
                    .arg("--prefix")
                    .arg(&w.prefix)
                    .env("AWS_ENDPOINT_URL", "")
                    .env("AWS_ENDPOINT_URL_S3", "")
                    .env(var, url)
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_EC2_METADATA_DISABLED", "true")
            };
            let endpoint = crate::util::s3().endpoint.clone();
            cli(&["init", "rhel8-web"], "AWS_ENDPOINT_URL", &endpoint).text();
            assert!(
                w.raw("state.json").is_some(),
                "init landed through AWS_ENDPOINT_URL"
            );
            let shown = cli(&["show", "rhel8-web"], "AWS_ENDPOINT_URL_S3", &endpoint).text();
            assert!(shown.contains("rhel8-web"), "{shown}");
            // The variable names what failed when it points nowhere.
            let err = cli(
                &["show", "rhel8-web"],
                "AWS_ENDPOINT_URL",
                "http://127.0.0.1:9",
            )
            .fails();
            assert!(
                err.contains("could not connect to http://127.0.0.1:9/")
                    && err.contains("(set by AWS_ENDPOINT_URL; use_path_style: false)"),
                "{err}"
            );
            // A flag beats the variable.
            let shown = cli(
                &["show", "rhel8-web"],
                "AWS_ENDPOINT_URL",
                "http://127.0.0.1:9",
            )
            .arg("--endpoint")
            .arg(&endpoint)
            .text();
            assert!(shown.contains("rhel8-web"), "{shown}");
        }

        #[test]
        fn unreachable_endpoint() {
            let w = world("unreachable");
            let mut s = w.source();
            s["endpoint"] = json!("http://127.0.0.1:9");
            let err = w.check().stdin(json!({"source": s})).fails();
            assert!(
                err.contains("rhel8-web (s3://build-state-tests/unreachable-"),
                "{err}"
            );
        }

        #[test]
        fn server_side_encryption_is_requested_not_on_ceph() {
            crate::util::not_on_ceph(
                "its test cluster serves plain HTTP and has no key management, and RGW refuses server-side encryption without them (InvalidRequest)",
            );
            let w = World::new(Kind::S3, "sse").with(json!({"server_side_encryption": "AES256"}));
            w.put(json!({"init": true})).ok();
            let s = crate::util::s3();
            let head = s.block_on(async {
                s.client()
                    .head_object()
                    .bucket(crate::util::BUCKET)
                    .key(w.key("state.json"))
                    .send()
                    .await
                    .unwrap()
            });
            assert_eq!(
                head.server_side_encryption(),
                Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
            );
            let w = w.with(json!({"server_side_encryption": "none"}));
            let err = w.check().fails();
            assert!(
                err.contains("source.server_side_encryption: \"none\" must be AES256 or aws:kms"),
                "{err}"
            );
        }

        /// HTTPS to a private endpoint: trusted only with `ca_bundle`.
        #[test]
        fn ca_bundle_trusts_a_private_endpoint() {
            let w = World::new(Kind::S3, "ca_bundle");
            let dir = w.tmp.path();
            let port = crate::util::s3().port();
            let front = crate::util::TlsFront::start(dir, port);
            let tls = front.url.clone();

            let mut s = w.source();
            s["endpoint"] = json!(tls);
            let err = w
                .put(json!({}))
                .stdin(json!({"source": s.clone(), "params": {"init": true}}))
                .fails();
            assert!(
                err.contains("rhel8-web (s3://build-state-tests/ca_bundle-"),
                "{err}"
            );
            assert!(
                err.contains("invalid peer certificate") && err.contains("source.ca_bundle"),
                "{err}"
            );
            assert!(
                w.raw("state.json").is_none(),
                "nothing written through an untrusted endpoint"
            );
            s["ca_bundle"] = json!(std::fs::read_to_string(&front.ca).unwrap());
            let out = w
                .put(json!({}))
                .stdin(json!({"source": s.clone(), "params": {"init": true}}))
                .ok();
            assert_eq!(out["version"]["revision"], "1");
            let versions = w.check().stdin(json!({"source": s})).ok();
            assert_eq!(versions[0]["revision"], "1");
        }

        /// A `ca_bundle` that holds no certificate is refused, by the resource and
        /// by the CLI, before any request.
        #[test]
        fn a_ca_bundle_without_a_certificate_is_refused() {
            let mut w = World::new(Kind::S3, "ca_bundle_empty");
            for bundle in [
                "",
                "not a certificate",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ] {
                w.extra = json!({"ca_bundle": bundle});
                let err = w.check().fails();
                assert!(
                    err.contains("rhel8-web: source.ca_bundle: holds no certificate"),
                    "{bundle:?}: {err}"
                );
                let err = w.put(json!({"init": true})).fails();
                assert!(
                    err.contains("source.ca_bundle: holds no certificate"),
                    "{err}"
                );
                let out = w.cli(&["show", "rhel8-web"]).run();
                assert_eq!(out.code, Some(1), "{}", out.stderr);
                assert!(
                    out.stderr.contains("ca_bundle: holds no certificate"),
                    "{}",
                    out.stderr
                );
            }
            assert_eq!(w.keys(), Vec::<String>::new(), "nothing written");
        }
    }
}
