//! The test harness: runs the real programs with JSON on stdin, exactly as
//! Concourse does, against a local directory or a real S3 server on
//! 127.0.0.1 (started once per test run by the project's own
//! `tests/servers/start.sh`).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The directory holding `check`, `in` and `out`: `BUILD_STATE_RESOURCE_DIR`
/// (for example a layout made by `scripts/package`), else links to the
/// binary cargo built, named as in the image.
pub(crate) fn resource_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BUILD_STATE_RESOURCE_DIR") {
            return PathBuf::from(dir);
        }
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_build-state"));
        let dir = bin
            .parent()
            .unwrap()
            .join(format!("resource-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["check", "in", "out"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&bin, &link).unwrap();
        }
        dir
    })
}

/// The local S3 server, started on first use and stopped when the test
/// process exits (a watcher process waits for it).
pub(crate) struct S3Server {
    pub endpoint: String,
    /// Which server `start.sh` started: `ministack`, `moto` or `ceph`.
    pub server: String,
}

pub(crate) const BUCKET: &str = "build-state-tests";

/// The S3 test server. Every test that uses it lives in a module named
/// `s3` (so `.ci/run`'s Ceph pass, which selects `s3::`, runs every one of
/// them): a test elsewhere that asks for the server fails here.
#[track_caller]
pub(crate) fn s3() -> &'static S3Server {
    if let Some(test) = std::thread::current().name().filter(|n| *n != "main") {
        assert!(
            test.contains("s3::"),
            "{test} uses the S3 server but is not in a module named `s3`: the Ceph pass (`cargo test s3::`) would not select it"
        );
    }
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let scripts = std::env::var_os("S3_TEST_SERVER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers"));
        let start = scripts.join("start.sh");
        assert!(
            start.exists(),
            "the S3 test server scripts are missing at {} (set S3_TEST_SERVER_DIR)",
            scripts.display()
        );
        let out = Command::new("bash")
            .arg(&start)
            .stderr(Stdio::inherit())
            .output()
            .expect("running start.sh");
        assert!(out.status.success(), "start.sh failed: the S3 test server did not start");
        let vars: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        let endpoint = vars["AWS_ENDPOINT_URL"].clone();
        let pid = vars["S3_LOCAL_PID"].clone();
        // Stop the server when this test process is gone. The watcher
        // outlives us by design, so it is never waited for.
        #[allow(clippy::zombie_processes)]
        Command::new("setsid")
            .args([
                "bash",
                "-c",
                r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; bash "$2" "$3" >/dev/null 2>&1"#,
                "watch",
                &std::process::id().to_string(),
                &scripts.join("stop.sh").to_string_lossy(),
                &pid,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the watcher that stops the S3 server");
        let server = S3Server {
            endpoint,
            server: vars.get("S3_LOCAL_SERVER").cloned().unwrap_or_default(),
        };
        server.block_on(async {
            let c = server.client();
            c.create_bucket().bucket(BUCKET).send().await.expect("creating the test bucket");
        });
        server
    })
}

/// For a test that does not apply on Ceph RGW: its name ends in
/// `not_on_ceph`, the Ceph pass skips it by name (and lists it), and run
/// there anyway it fails rather than pass having checked nothing.
#[track_caller]
pub(crate) fn not_on_ceph(why: &str) {
    assert_ne!(
        s3().server,
        "ceph",
        "not applicable on Ceph RGW: {why}; the Ceph pass skips it (--skip not_on_ceph)"
    );
}

impl S3Server {
    /// The port of its endpoint on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Whether the server verifies request signatures (Ceph RGW does; the
    /// emulators take any): a proxy that rewrites headers breaks them.
    pub(crate) fn checks_signatures(&self) -> bool {
        self.server == "ceph"
    }

    pub(crate) fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Local,
    S3,
}

/// One test's world: a store (a fresh directory, or a fresh prefix in the
/// shared bucket) and a scratch directory for sources and destinations.
pub(crate) struct World {
    pub kind: Kind,
    pub tmp: tempfile::TempDir,
    pub prefix: String,
    pub build_id: String,
    /// Extra source fields (retry, gate, labels, ...).
    pub extra: Value,
}

impl World {
    pub(crate) fn new(kind: Kind, test: &str) -> World {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("src")).unwrap();
        std::fs::create_dir_all(tmp.path().join("states")).unwrap();
        if kind == Kind::S3 {
            s3();
        }
        World {
            kind,
            tmp,
            prefix: format!("{test}-{}/", std::process::id()),
            build_id: "rhel8-web".to_string(),
            extra: json!({}),
        }
    }

    /// The bucket this world's source names.
    pub(crate) fn bucket(&self) -> String {
        self.extra
            .get("bucket")
            .and_then(Value::as_str)
            .unwrap_or(BUCKET)
            .to_string()
    }

    pub(crate) fn with(mut self, extra: Value) -> World {
        merge(&mut self.extra, extra);
        self
    }

    /// The source block for this world.
    pub(crate) fn source(&self) -> Value {
        let mut s = match self.kind {
            Kind::Local => json!({"local_dir": self.states_dir()}),
            Kind::S3 => json!({
                "bucket": BUCKET,
                "endpoint": s3().endpoint,
                "use_path_style": true,
                "access_key_id": "test",
                "secret_access_key": "test",
            }),
        };
        merge(
            &mut s,
            json!({"build_id": self.build_id, "prefix": self.prefix}),
        );
        merge(&mut s, self.extra.clone());
        s
    }

    /// This world's source with `extra` merged in (a gate, say).
    pub(crate) fn source_with(&self, extra: Value) -> Value {
        let mut s = self.source();
        merge(&mut s, extra);
        s
    }

    /// `check` of this world's build through a source with `extra` (a gated
    /// resource beside the ungated one).
    pub(crate) fn check_with(&self, extra: Value) -> Step {
        Step::new(self, "check").stdin(json!({"source": self.source_with(extra)}))
    }

    pub(crate) fn states_dir(&self) -> PathBuf {
        self.tmp.path().join("states")
    }

    pub(crate) fn sources(&self) -> PathBuf {
        self.tmp.path().join("src")
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{}/{name}", self.prefix, self.build_id)
    }

    /// The raw bytes stored under `<prefix><build_id>/<name>`.
    pub(crate) fn raw(&self, name: &str) -> Option<Vec<u8>> {
        let key = self.key(name);
        match self.kind {
            Kind::Local => match std::fs::read(self.states_dir().join(&key)) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("reading {key}: {e}"),
            },
            Kind::S3 => {
                let s = s3();
                s.block_on(async {
                    match s
                        .client()
                        .get_object()
                        .bucket(self.bucket())
                        .key(&key)
                        .send()
                        .await
                    {
                        Ok(o) => Some(o.body.collect().await.unwrap().into_bytes().to_vec()),
                        // Only a missing key is "nothing stored"; any other
                        // error fails the test rather than passing for absence.
                        Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => {
                            None
                        }
                        Err(e) => panic!("reading {key} from the test server: {e:?}"),
                    }
                })
            }
        }
    }

    pub(crate) fn write_raw(&self, name: &str, body: &[u8]) {
        self.write_raw_key(&self.key(name), body)
    }

    /// Writes an object under any key, around the programs.
    pub(crate) fn write_raw_key(&self, key: &str, body: &[u8]) {
        let key = key.to_string();
        match self.kind {
            Kind::Local => {
                let path = self.states_dir().join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, body).unwrap();
            }
            Kind::S3 => {
                let s = s3();
                s.block_on(async {
                    s.client()
                        .put_object()
                        .bucket(self.bucket())
                        .key(&key)
                        .body(body.to_vec().into())
                        .send()
                        .await
                        .unwrap();
                });
            }
        }
    }

    /// Every key stored under this world's prefix.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.keys_under(&self.prefix)
    }

    /// Every key stored under `prefix`, in this world's store.
    pub(crate) fn keys_under(&self, prefix: &str) -> Vec<String> {
        match self.kind {
            Kind::Local => {
                let mut out = Vec::new();
                for entry in walk(&self.states_dir()) {
                    let rel = entry
                        .strip_prefix(self.states_dir())
                        .unwrap()
                        .to_string_lossy()
                        .to_string();
                    if !rel.rsplit('/').next().unwrap().starts_with('.') && rel.starts_with(prefix)
                    {
                        out.push(rel);
                    }
                }
                out.sort();
                out
            }
            Kind::S3 => {
                let s = s3();
                s.block_on(async {
                    let out = s
                        .client()
                        .list_objects_v2()
                        .bucket(self.bucket())
                        .prefix(prefix)
                        .send()
                        .await
                        .unwrap();
                    let mut keys: Vec<String> = out
                        .contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string))
                        .collect();
                    keys.sort();
                    keys
                })
            }
        }
    }

    /// The stored document, parsed.
    pub(crate) fn doc(&self) -> Value {
        serde_json::from_slice(&self.raw("state.json").expect("no state.json stored")).unwrap()
    }

    pub(crate) fn write_file(&self, rel: &str, body: &str) {
        let p = self.sources().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    pub(crate) fn check(&self) -> Step {
        Step::new(self, "check").stdin(json!({"source": self.source()}))
    }

    pub(crate) fn check_from(&self, version: &Value) -> Step {
        Step::new(self, "check").stdin(json!({"source": self.source(), "version": version}))
    }

    pub(crate) fn get(&self, version: &Value) -> Step {
        self.get_with(version, json!(null))
    }

    pub(crate) fn get_with(&self, version: &Value, params: Value) -> Step {
        let dest = self.tmp.path().join(format!("get-{}", fastrand::u32(..)));
        Step::new(self, "in")
            .arg(dest)
            .stdin(json!({"source": self.source(), "version": version, "params": params}))
    }

    /// The CLI with this world's source (`--source FILE`).
    pub(crate) fn cli(&self, args: &[&str]) -> Step {
        let file = self.tmp.path().join("source.json");
        std::fs::write(&file, self.source().to_string()).unwrap();
        self.bare_cli(args).arg("--source").arg(file)
    }

    /// The CLI with no source given.
    pub(crate) fn bare_cli(&self, args: &[&str]) -> Step {
        let mut step = Step::new(self, "build-state");
        step.exe = cli_path();
        for a in args {
            step = step.arg(a);
        }
        step
    }

    pub(crate) fn put(&self, params: Value) -> Step {
        Step::new(self, "out")
            .arg(self.sources())
            .stdin(json!({"source": self.source(), "params": params}))
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Merges `b` into `a` (objects key by key; anything else replaces).
pub(crate) fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// The CLI: `BUILD_STATE_CLI`, else the binary cargo built.
pub(crate) fn cli_path() -> PathBuf {
    std::env::var_os("BUILD_STATE_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_build-state")))
}

/// One run of a program, built up like the behaviour it checks.
pub(crate) struct Step {
    program: &'static str,
    exe: PathBuf,
    args: Vec<PathBuf>,
    stdin: Vec<u8>,
    env: Vec<(String, String)>,
    unset: Vec<String>,
    /// Run under `faketime -f OFFSET` (a worker whose clock is off).
    clock_off: Option<String>,
    /// Run on a terminal (a pty, through util-linux's `script`).
    tty: bool,
    /// Run in a container of this image (`podman run`), as this user.
    image: Option<(String, Option<String>)>,
    cwd: PathBuf,
}

/// What a program did.
#[derive(Debug)]
pub(crate) struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// For `in`: the destination directory.
    pub dest: Option<PathBuf>,
}

impl Step {
    /// `check`, `in` or `out`, with no request yet.
    pub(crate) fn program(world: &World, program: &'static str) -> Step {
        Step::new(world, program)
    }

    pub(crate) fn new(world: &World, program: &'static str) -> Step {
        Step {
            program,
            exe: resource_dir().join(program),
            args: Vec::new(),
            stdin: Vec::new(),
            env: Vec::new(),
            unset: Vec::new(),
            clock_off: None,
            tty: false,
            image: None,
            cwd: world.tmp.path().to_path_buf(),
        }
    }

    pub(crate) fn arg(mut self, a: impl Into<PathBuf>) -> Step {
        self.args.push(a.into());
        self
    }

    pub(crate) fn stdin(mut self, v: Value) -> Step {
        self.stdin = serde_json::to_vec(&v).unwrap();
        self
    }

    pub(crate) fn raw_stdin(mut self, s: &str) -> Step {
        self.stdin = s.as_bytes().to_vec();
        self
    }

    pub(crate) fn env(mut self, k: &str, v: &str) -> Step {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Sets the `BUILD_*` variables of a Concourse build.
    pub(crate) fn build(self, job: &str, id: u32) -> Step {
        self.env("BUILD_ID", &id.to_string())
            .env("BUILD_NAME", &(id % 100).to_string())
            .env("BUILD_JOB_NAME", job)
            .env("BUILD_PIPELINE_NAME", "staged-image-build")
            .env("BUILD_TEAM_NAME", "main")
            .env("ATC_EXTERNAL_URL", "https://ci.example.com")
    }

    /// The command, with the test's environment and nothing of the machine's
    /// Concourse variables.
    fn command(&self) -> Command {
        if let Some((image, user)) = &self.image {
            return self.in_container(image, user.as_deref());
        }
        let mut cmd = match &self.clock_off {
            Some(offset) => {
                let mut c = Command::new("faketime");
                c.args(["-f", offset]).arg(&self.exe).args(&self.args);
                c
            }
            None if self.tty => {
                // stdout and stderr both on the pty, as a person sees them.
                let words: Vec<String> = std::iter::once(&self.exe)
                    .chain(&self.args)
                    .map(|w| shlex::try_quote(&w.to_string_lossy()).unwrap().into_owned())
                    .collect();
                let mut c = Command::new("script");
                c.args(["-qec", &words.join(" "), "/dev/null"]);
                c
            }
            None => {
                let mut c = Command::new(&self.exe);
                c.args(&self.args);
                c
            }
        };
        cmd.current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "BUILD_ID",
            "BUILD_NAME",
            "BUILD_JOB_NAME",
            "BUILD_PIPELINE_NAME",
            "BUILD_TEAM_NAME",
            "BUILD_STATUS",
            "ATC_EXTERNAL_URL",
        ] {
            cmd.env_remove(var);
        }
        // The S3 server is on loopback: never through a proxy the machine may set.
        cmd.env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            // The fleet commands' cache stays in the test's directory.
            .env("BUILD_STATE_CACHE_DIR", self.cwd.join(".cache"));
        for k in &self.unset {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the program with its clock `offset` off (`faketime -f -15m`):
    /// a worker whose clock is wrong.
    pub(crate) fn clock_off(mut self, offset: &str) -> Step {
        self.clock_off = Some(offset.to_string());
        self
    }

    /// Runs the program in a container of `image`, as Concourse runs a
    /// resource: one container per step, the request on stdin,
    /// `/opt/resource/{check,in,out}` with their directory (the CLI from
    /// `PATH`); the test's directory mounted at the same path (the
    /// `local_dir`, the sources, `in`'s destination), the host's network
    /// (the S3 test server on 127.0.0.1), a read-only root: nothing
    /// written outside the directories given. `user` as `podman --user`.
    pub(crate) fn in_image(mut self, image: &str, user: Option<&str>) -> Step {
        self.image = Some((image.to_string(), user.map(str::to_string)));
        self
    }

    fn in_container(&self, image: &str, user: Option<&str>) -> Command {
        let mut c = Command::new(container_engine());
        c.args(["run", "-i", "--rm", "--network=host", "--read-only"])
            .arg("-v")
            .arg(format!("{0}:{0}", self.cwd.display()))
            .arg("-w")
            .arg(&self.cwd);
        if let Some(user) = user {
            c.args(["--user", user]);
        }
        let fixed = [
            ("NO_PROXY", "127.0.0.1,localhost".to_string()),
            (
                "BUILD_STATE_CACHE_DIR",
                self.cwd.join(".cache").display().to_string(),
            ),
        ];
        for (k, v) in fixed
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(self.env.iter().cloned())
        {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        c.arg(image);
        if self.program == "build-state" {
            c.arg("build-state");
        } else {
            c.arg(format!("/opt/resource/{}", self.program));
        }
        c.args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs the program on a terminal (a pty): what a person would see
    /// lands in stdout, colours and all.
    pub(crate) fn on_tty(mut self) -> Step {
        self.tty = true;
        self
    }

    /// Removes `k` from the program's environment (the machine's and the
    /// harness's; what `env` gives is kept).
    pub(crate) fn unset(mut self, k: &str) -> Step {
        self.unset.push(k.to_string());
        self
    }

    /// Starts a long-running program (`serve`): stdout and stderr piped;
    /// killed when the test ends, however it ends.
    pub(crate) fn spawn(self) -> Running {
        Running(
            self.command()
                .stdin(Stdio::null())
                .spawn()
                .expect("spawning the program"),
        )
    }

    pub(crate) fn run(self) -> Output {
        let dest = if self.program == "in" {
            self.args.first().cloned()
        } else {
            None
        };
        let mut cmd = self.command();
        let mut child = cmd.spawn().expect("spawning the program");
        let mut stdin = child.stdin.take().unwrap();
        let input = self.stdin;
        // Feed stdin from a thread so a program that writes first cannot deadlock.
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            dest,
        }
    }

    /// Runs and expects success; returns stdout as JSON.
    #[track_caller]
    pub(crate) fn ok(self) -> Value {
        let program = self.program;
        let stdout = self.text();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{program} printed no JSON ({e}):\n{stdout}"))
    }

    /// Runs and expects success; returns stdout as text.
    #[track_caller]
    pub(crate) fn text(self) -> String {
        let program = self.program;
        let out = self.run();
        assert_eq!(
            out.code,
            Some(0),
            "{program} failed:\nstdout: {}\nstderr: {}",
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Runs and expects exit 1 with nothing on stdout; returns stderr.
    #[track_caller]
    pub(crate) fn fails(self) -> String {
        self.fails_with(1)
    }

    /// Runs and expects exit `code` with nothing on stdout; returns stderr.
    #[track_caller]
    pub(crate) fn fails_with(self, code: i32) -> String {
        let program = self.program;
        let out = self.run();
        assert_eq!(
            out.code,
            Some(code),
            "{program} should fail:\nstdout: {}\nstderr: {}",
            out.stdout,
            out.stderr
        );
        assert_eq!(out.stdout, "", "{program} printed on stdout while failing");
        let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "one error line expected:\n{}", out.stderr);
        out.stderr
    }
}

/// The container engine `scripts/image test` names (podman or docker).
pub(crate) fn container_engine() -> String {
    std::env::var("BUILD_STATE_CONTAINER_ENGINE").unwrap_or_else(|_| "podman".into())
}

/// A child process a test started, killed (and reaped) when the guard is
/// dropped: a failing test leaves no `serve` or `watch` running.
pub(crate) struct Running(pub(crate) std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Generates one test per store from a function of a `World`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::util::World::new($crate::util::Kind::Local, stringify!($name)));
                }
            )*
        }
        mod s3 {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::util::World::new($crate::util::Kind::S3, stringify!($name)));
                }
            )*
        }
    };
}

/// Text with every run of spaces on a line made one: tables compared by
/// their words, whatever their columns' widths.
pub(crate) fn squeeze(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A tool that a check needs is missing: the test fails, unless
/// `BUILD_STATE_TESTS_WITHOUT` names the tool (`chromium,promtool`). Then
/// the check is skipped, said on the process's real stderr (not captured
/// by the test harness) and listed by `scripts/test` at the end of the run.
/// CI never sets it.
#[track_caller]
pub(crate) fn missing_tool(tool: &str, check: &str) {
    let without = std::env::var("BUILD_STATE_TESTS_WITHOUT").unwrap_or_default();
    assert!(
        without.split(',').any(|t| t.trim() == tool),
        "{tool} is missing, so {check} cannot run: install it (scripts/test does, as root) or set BUILD_STATE_TESTS_WITHOUT={tool} to skip this check"
    );
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{test}: {check} (no {tool})\n");
    let _ = std::io::stderr().write_all(format!("SKIPPED {line}").as_bytes());
    if let Some(file) = std::env::var_os("BUILD_STATE_SKIPPED_CHECKS") {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// `promtool`, or `None` when it is missing and the opt-out names it.
#[track_caller]
pub(crate) fn promtool(check: &str) -> Option<PathBuf> {
    if runs("promtool") {
        return Some("promtool".into());
    }
    missing_tool("promtool", check);
    None
}

/// The DOM of the page at `url` once headless Chromium rendered it (4 s of
/// virtual time for its scripts), or `None` when Chromium is missing and
/// the opt-out names it.
#[track_caller]
pub(crate) fn rendered(profile: &Path, url: &str) -> Option<String> {
    let out = chromium(profile)?
        .args(["--virtual-time-budget=4000", "--dump-dom"])
        .arg(url)
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A headless Chromium with its profile in `profile` (`scripts/test` and
/// `.ci/run` install Debian's), or `None` when it is missing and the
/// opt-out names it.
#[track_caller]
pub(crate) fn chromium(profile: &Path) -> Option<Command> {
    let Some(exe) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| runs(b))
    else {
        missing_tool("chromium", "the page check in a browser");
        return None;
    };
    let mut cmd = Command::new(exe);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .env("NO_PROXY", "127.0.0.1,localhost")
    .env("no_proxy", "127.0.0.1,localhost");
    Some(cmd)
}

/// The README and every page under `docs/`, one after the other: the
/// commands they show are run by the tests wherever they are written.
pub(crate) fn documents() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A stand-in for the ATC on 127.0.0.1: it keeps the first line of every
/// request (the check webhooks the programs post) and answers each with
/// `answer` (201, 500, ...), or never, when `None`.
pub(crate) struct StandInAtc {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl StandInAtc {
    pub(crate) fn start(answer: Option<u16>) -> StandInAtc {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for mut conn in l.incoming().flatten() {
                conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut buf = vec![0; 8192];
                let n = conn.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or("").to_string());
                match answer {
                    Some(code) => {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                    }
                    None => held.push(conn),
                }
            }
        });
        StandInAtc { url, seen }
    }

    /// The request lines so far.
    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The request lines since the last call.
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The dead attempt a `start` recorded before starting again: the event
/// before the newest.
pub(crate) fn dead_attempt(w: &World) -> Value {
    let doc = w.doc();
    let h = doc["history"].as_array().unwrap();
    let dead = h[h.len() - 2].clone();
    assert_eq!(
        (dead["action"].as_str(), dead["attempt"].as_u64()),
        (Some("fail"), Some(1)),
        "{dead}"
    );
    dead
}

/// A TLS front on 127.0.0.1 for a plain HTTP server on `target` (the S3
/// server, the stand-in ATC), with a certificate for 127.0.0.1 from a
/// private CA made in `dir` (`ca.pem`): `tests/support/tls_proxy.py`.
pub(crate) struct TlsFront {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The private CA's certificate.
    pub ca: PathBuf,
    child: std::process::Child,
}

impl TlsFront {
    pub(crate) fn start(dir: &Path, target: u16) -> TlsFront {
        if !dir.join("leaf.pem").exists() {
            make_certificates(dir);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["leaf.pem", "leaf.key", &target.to_string()])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        TlsFront {
            url: format!("https://127.0.0.1:{}", line.trim()),
            ca: dir.join("ca.pem"),
            child,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A private CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it
/// (`leaf.pem`, `leaf.key`), in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for this test");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=build-state test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "leaf.pem",
    ]);
}

/// A forward proxy on 127.0.0.1, as a site's egress proxy: `CONNECT`
/// tunnels (HTTPS) and absolute-form requests (plain HTTP, sent on with
/// `Connection: close`). It records what each client asked for:
/// `CONNECT host:port`, or `METHOD http://host:port` (the path and query
/// left out of the record).
pub(crate) struct ForwardProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ForwardProxy {
    pub(crate) fn start() -> ForwardProxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || forward(conn, &log));
            }
        });
        ForwardProxy { url, seen }
    }

    /// What the clients asked for so far.
    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn forward(mut client: std::net::TcpStream, log: &std::sync::Mutex<Vec<String>>) {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (authority, rest) = if method == "CONNECT" {
        (target.to_string(), None)
    } else {
        let Some(after) = target.strip_prefix("http://") else {
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            return;
        };
        let (auth, path) = after.split_once('/').unwrap_or((after, ""));
        (auth.to_string(), Some(format!("/{path}")))
    };
    log.lock().unwrap().push(match &rest {
        None => format!("CONNECT {authority}"),
        Some(_) => format!("{method} http://{authority}"),
    });
    let Ok(mut upstream) = std::net::TcpStream::connect(&authority) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    match rest {
        None => {
            let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        }
        Some(path) => {
            let mut out = format!("{method} {path} HTTP/1.1\r\n");
            for h in lines.filter(|h| !h.is_empty()) {
                let name = h.split(':').next().unwrap_or("").to_ascii_lowercase();
                if !matches!(
                    name.as_str(),
                    "connection" | "proxy-connection" | "proxy-authorization"
                ) {
                    out.push_str(h);
                    out.push_str("\r\n");
                }
            }
            out.push_str("connection: close\r\n\r\n");
            if upstream.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    }
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}
