//! The image, as Concourse runs it (`scripts/image test`, which builds it
//! first and names it in `BUILD_STATE_IMAGE`): a container per step, the
//! request on stdin, `/opt/resource/check|in|out` with their directory, the
//! `BUILD_*` variables Concourse sets, a read-only root (nothing written
//! outside the directories given), the S3 test server on the host, a
//! private endpoint over TLS, a non-root user, the CLI on `PATH`.
//!
//! Without `BUILD_STATE_IMAGE` these tests say so and pass: the image is
//! built by `scripts/image`, not by `cargo test` (CI runs both).

use crate::util::{Kind, Step, World};
use serde_json::{Value, json};

/// The image under test, or `None` (said on stderr) when none is named.
fn image() -> Option<String> {
    let image = std::env::var("BUILD_STATE_IMAGE").ok();
    if image.is_none() {
        eprintln!("BUILD_STATE_IMAGE is not set: the image tests run under `scripts/image test`");
    }
    image
}

fn state(v: &Value) -> (String, String) {
    let m = v["metadata"].as_array().unwrap();
    let get = |n: &str| {
        m.iter().find(|e| e["name"] == n).unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    (get("state"), get("status"))
}

/// The walk a staged pipeline makes: the first check (nothing yet: `[]`,
/// and a note saying `init` creates it), init, a stage started and
/// completed from Concourse builds, check, in (the files a task reads),
/// the gate of the next stage.
fn walk(w: &World, image: &str, user: Option<&str>) {
    let run = |s: Step| s.in_image(image, user);
    let first = run(w.check()).run();
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(first.stdout.trim(), "[]");
    assert!(
        first.stderr.contains("a put with `init: true` creates it"),
        "{}",
        first.stderr
    );
    run(w.put(json!({"init": true})).build("init", 1)).ok();
    run(w.put(json!({"complete": 0})).build("init", 1)).ok();
    let started = run(w.put(json!({"start": 5})).build("kickstart", 2)).ok();
    assert_eq!(state(&started), ("5".into(), "in_progress".into()));
    let gate = |s: u32| {
        run(w.check_with(json!({"gate": {"state": s}})))
            .ok()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(gate(10), 0, "10's gate is shut while 5 runs");
    let done = run(w.put(json!({"complete": 5})).build("kickstart", 2)).ok();
    assert_eq!(state(&done), ("10".into(), "pending".into()));
    assert_eq!(gate(10), 1, "10's gate opens");
    let versions = run(w.check()).ok();
    let got = run(w.get(&versions.as_array().unwrap().last().unwrap().clone())).run();
    assert_eq!(got.code, Some(0), "{}", got.stderr);
    let dest = got.dest.unwrap();
    for file in ["state.json", "state.env", "state", "status", "revision"] {
        assert!(dest.join(file).exists(), "in wrote no {file}");
    }
    let env = std::fs::read_to_string(dest.join("state.env")).unwrap();
    assert!(
        env.lines()
            .any(|l| l == "BUILD_STATE=10" || l == "BUILD_STATE='10'"),
        "{env}"
    );
}

/// On a mounted `local_dir`, as root, then as a user with no name (65534,
/// as a worker may run a resource); the CLI on `PATH` reads what the
/// programs wrote.
#[test]
fn the_contract_inside_the_image_on_a_local_directory() {
    let Some(image) = image() else { return };
    let w = World::new(Kind::Local, "image_local");
    walk(&w, &image, None);
    let show = w.cli(&["show", "rhel8-web"]).in_image(&image, None).text();
    assert!(show.contains("10 ") && show.contains("pending"), "{show}");

    let other = World::new(Kind::Local, "image_nobody");
    for dir in [other.tmp.path(), &other.states_dir(), &other.sources()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    walk(&other, &image, Some("65534:65534"));
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(other.states_dir().join(other.key("state.json"))).unwrap(),
    );
    assert_eq!(owner, 65534, "written by the user the step ran as");
}

/// On the S3 test server (in a module named `s3`, as every S3 test is).
mod s3 {
    use super::{image, walk};
    use crate::util::{Kind, World};
    use serde_json::json;

    /// Against the S3 test server on the host.
    #[test]
    fn the_contract_inside_the_image_on_s3() {
        let Some(image) = image() else { return };
        let w = World::new(Kind::S3, "image_s3");
        walk(&w, &image, None);
    }

    /// A private endpoint over TLS: untrusted by the image's CA bundle (the
    /// put fails, naming `ca_bundle`, nothing written), trusted with the
    /// source's `ca_bundle`.
    #[test]
    fn a_private_endpoint_inside_the_image() {
        let Some(image) = image() else { return };
        let w = World::new(Kind::S3, "image_tls");
        let port = crate::util::s3().port();
        let front = crate::util::TlsFront::start(w.tmp.path(), port);
        let mut s = w.source();
        s["endpoint"] = json!(front.url);
        let err = w
            .put(json!({}))
            .stdin(json!({"source": s.clone(), "params": {"init": true}}))
            .in_image(&image, None)
            .fails();
        assert!(
            err.contains("invalid peer certificate") && err.contains("source.ca_bundle"),
            "{err}"
        );
        assert!(w.raw("state.json").is_none(), "nothing written");
        s["ca_bundle"] = json!(std::fs::read_to_string(&front.ca).unwrap());
        let out = w
            .put(json!({}))
            .stdin(json!({"source": s, "params": {"init": true}}))
            .in_image(&image, None)
            .ok();
        assert_eq!(out["version"]["revision"], "1");
    }
}

/// The CLI is on `PATH` and the image holds what it should: the three
/// programs linked to it, the CA bundle, a shell for `fly intercept`.
#[test]
fn the_image_holds_the_programs_and_a_shell() {
    let Some(image) = image() else { return };
    let out = std::process::Command::new(crate::util::container_engine())
        .args(["run", "--rm", "--read-only", &image, "sh", "-c"])
        .arg(
            "build-state --version && readlink /opt/resource/check /opt/resource/in /opt/resource/out \
             && test -s /etc/ssl/certs/ca-certificates.crt && echo bundle",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("build-state "), "{text}");
    assert_eq!(
        text.matches("../../usr/local/bin/build-state").count(),
        3,
        "{text}"
    );
    assert!(text.trim_end().ends_with("bundle"), "{text}");
}
