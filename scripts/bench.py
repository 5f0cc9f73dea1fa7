"""Benchmark driver for scripts/bench (run by it, with the S3 server up).

Every figure is measured here, in this run: wall time per process (median of
RUNS), peak RSS per process (from wait4), S3 requests (lines in the server's
DEBUG log), and ratios against baselines run on the same machine now.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1]
RUNS = int(os.environ.get("RUNS", "20"))
ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
LOG = os.environ["S3_LOCAL_LOG"]
BUCKET = "bench"
WORK = tempfile.mkdtemp(prefix="build-state-bench-")
ENV = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")

# The programs as the image installs them: one binary, three names.
RES = os.path.join(WORK, "opt", "resource")
os.makedirs(RES)
for p in ("check", "in", "out"):
    os.symlink(BIN, os.path.join(RES, p))
SRC = os.path.join(WORK, "src")
os.makedirs(SRC)


def source(build_id, **extra):
    s = {
        "bucket": BUCKET,
        "endpoint": ENDPOINT,
        "use_path_style": True,
        "access_key_id": "test",
        "secret_access_key": "test",
        "build_id": build_id,
        "prefix": "builds/",
    }
    s.update(extra)
    return s


def run(argv, stdin=b"", env=ENV):
    """Runs a process to completion; returns its stdout."""
    p = subprocess.run(argv, input=stdin, capture_output=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode()}")
    return p.stdout


RSS_FILE = os.path.join(WORK, "rss")


def measure(argv, stdin=b"", env=ENV, runs=RUNS):
    """Median wall time and max peak RSS (KiB) over `runs` runs.

    Wall time is taken around the process itself; peak RSS by GNU time,
    whose small process forks the program (a child forked from this Python
    would count Python's pages as its own).
    """
    times, rss = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(argv, input=stdin, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {p.stderr.decode()}")
        out = p.stdout
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", RSS_FILE] + argv, input=stdin,
                       capture_output=True, env=env, check=True)
        with open(RSS_FILE) as f:
            rss.append(int(f.read().split()[-1]))
    return statistics.median(times), max(rss), out


def log_lines():
    with open(LOG, "rb") as f:
        return [l for l in f.read().decode(errors="replace").splitlines()
                if "DEBUG [ministack]" in l and "-> service=s3" in l]


def count_requests(fn):
    before = len(log_lines())
    fn()
    time.sleep(0.2)  # let the server flush its log
    lines = log_lines()[before:]
    return len(lines), [l.split("] ", 1)[1].split(" -> ")[0] for l in lines]


def out(build_id, params, **extra):
    req = json.dumps({"source": source(build_id, **extra), "params": params}).encode()
    return json.loads(run([os.path.join(RES, "out"), SRC], req))


def check_req(build_id, version=None, **extra):
    r = {"source": source(build_id, **extra)}
    if version:
        r["version"] = version
    return json.dumps(r).encode()


# ---------------------------------------------------------------- setup
import boto3  # noqa: E402

s3 = boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=BUCKET)

figures = []


def fig(name, value, goal=""):
    figures.append((name, value, goal))
    print(f"  {name}: {value}" + (f"   (goal {goal})" if goal else ""), file=sys.stderr)


print("measuring ...", file=sys.stderr)
out("bench", {"init": True})
v = out("bench", {"complete": 0})["version"]

# ---------------------------------------------------------------- requests
replies = []
n, reqs = count_requests(lambda: replies.append(subprocess.run(
    [os.path.join(RES, "check")], input=check_req("bench", v), capture_output=True, env=ENV)))
body = "304, no body" if b"unchanged since revision" in replies[0].stderr else "with a body"
fig("S3 requests per unchanged check", f"{n} ({', '.join(reqs)}; {body})", "1, no body")
n, reqs = count_requests(lambda: out("bench", {"start": 5}))
fig("S3 requests per put", f"{n} ({', '.join(reqs)})", "2")
v = json.loads(run([os.path.join(RES, "check")], check_req("bench")))[0]

# ---------------------------------------------------------------- ours
t_check, rss_check, o = measure([os.path.join(RES, "check")], check_req("bench", v))
assert json.loads(o) == [v], o
fig("check (unchanged), median wall", f"{t_check * 1000:.1f} ms")
fig("check peak RSS", f"{rss_check / 1024:.1f} MB", "<= 8 MB")

def put_req():
    return json.dumps({"source": source("bench"), "params": {"start": 5}}).encode()


# Each put comes from another Concourse build (the same build's replay
# would be a no-op), so every run writes a new revision.
times, rss = [], []
for i in range(RUNS):
    # (measure runs the program twice: for the time, then for the RSS)
    t, r, _ = measure([os.path.join(RES, "out"), SRC], put_req(),
                      env=dict(ENV, BUILD_ID=f"b{i}"), runs=1)
    times.append(t)
    rss.append(r)
t_put, rss_put = statistics.median(times), max(rss)
fig("put (one state update), median wall", f"{t_put * 1000:.1f} ms")
fig("put peak RSS", f"{rss_put / 1024:.1f} MB", "<= 8 MB")

get_req = json.dumps({"source": source("bench"), "version": {"revision": "2"}}).encode()
t_in, rss_in, _ = measure([os.path.join(RES, "in"), os.path.join(WORK, "dest")], get_req)
fig("in, median wall", f"{t_in * 1000:.1f} ms")
fig("in peak RSS", f"{rss_in / 1024:.1f} MB", "<= 8 MB")

# ---------------------------------------------------------------- the old way
db = os.path.join(WORK, "state.db")
subprocess.run(["sqlite3", db], check=True, input=b"""
CREATE TABLE builds (build_id TEXT PRIMARY KEY, current_state INTEGER, cloud_provider TEXT,
  image_type TEXT, start_time DATETIME, last_update DATETIME, status TEXT);
CREATE TABLE state_history (id INTEGER PRIMARY KEY AUTOINCREMENT, build_id TEXT, state INTEGER,
  timestamp DATETIME, status TEXT, error_message TEXT);
INSERT INTO builds VALUES ('bench', 5, 'aws', 'rhel8', datetime('now'), datetime('now'), 'running');
""")
old_script = os.path.join(WORK, "update-state.sh")
with open(old_script, "w") as f:
    f.write(f"""#!/usr/bin/env bash
# What teams run today for one update: sqlite3, then upload the whole database.
set -euo pipefail
BUILD_ID=$1 STATE=$2 STATUS=$3 ERROR=${{4:-}}
sqlite3 {db} "UPDATE builds SET current_state=$STATE, last_update=datetime('now'), status='running' WHERE build_id='$BUILD_ID';
INSERT INTO state_history (build_id, state, timestamp, status, error_message) VALUES ('$BUILD_ID', $STATE, datetime('now'), '$STATUS', '$ERROR');"
aws s3 cp --quiet --endpoint-url {ENDPOINT} {db} s3://{BUCKET}/aws/$BUILD_ID/state.db
""")
os.chmod(old_script, 0o755)
old_runs = max(5, RUNS // 4)
t_old, rss_old, _ = measure([old_script, "bench", "5", "completed"], runs=old_runs)
fig("old way (sqlite3 + aws s3 cp), median wall", f"{t_old * 1000:.1f} ms")

boto_check = os.path.join(WORK, "boto3_check.py")
with open(boto_check, "w") as f:
    f.write(f"""import boto3, json
s3 = boto3.client("s3", endpoint_url="{ENDPOINT}", region_name="us-east-1")
doc = json.loads(s3.get_object(Bucket="{BUCKET}", Key="builds/bench/state.json")["Body"].read())
print(json.dumps([{{"revision": str(doc["revision"])}}]))
""")
boto_update = os.path.join(WORK, "boto3_update.py")
with open(boto_update, "w") as f:
    f.write(f"""import boto3, json, datetime
s3 = boto3.client("s3", endpoint_url="{ENDPOINT}", region_name="us-east-1")
o = s3.get_object(Bucket="{BUCKET}", Key="builds/boto/state.json")
doc = json.loads(o["Body"].read())
doc["revision"] += 1
doc["updated_at"] = datetime.datetime.utcnow().isoformat() + "Z"
s3.put_object(Bucket="{BUCKET}", Key="builds/boto/state.json", Body=json.dumps(doc, indent=2),
              IfMatch=o["ETag"])
""")
s3.put_object(Bucket=BUCKET, Key="builds/boto/state.json", Body=json.dumps({"revision": 1}))
t_boto_check, rss_boto, _ = measure([sys.executable, boto_check], runs=old_runs)
t_boto_update, _, _ = measure([sys.executable, boto_update], runs=old_runs)
fig("boto3 one-shot check (get_object), median wall", f"{t_boto_check * 1000:.1f} ms, {rss_boto / 1024:.0f} MB")
fig("boto3 one-shot update (get + put If-Match), median wall", f"{t_boto_update * 1000:.1f} ms")

fig("update: old way / put", f"{t_old / t_put:.0f}x", ">= 30x")
fig("update: boto3 one-shot / put", f"{t_boto_update / t_put:.0f}x")
fig("check: boto3 one-shot / check", f"{t_boto_check / t_check:.0f}x", ">= 20x")

# ---------------------------------------------------------------- concurrency
def race(n):
    build = f"race{n}"
    out(build, {"init": True})
    out(build, {"complete": 0})

    def racer(i, results):
        req = json.dumps({"source": source(build, retry={"max_attempts": 100}),
                          "params": {"fail": 5, "error": f"writer {i}"}}).encode()
        p = subprocess.run([os.path.join(RES, "out"), SRC], input=req, capture_output=True,
                           env=dict(ENV, BUILD_ID=f"r{i}"))
        results[i] = p.returncode
    results = {}
    t0 = time.perf_counter()
    threads = [threading.Thread(target=racer, args=(i, results)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_race = time.perf_counter() - t0
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key=f"builds/{build}/state.json")["Body"].read())
    landed = sum(1 for r in results.values() if r == 0)
    fig(f"{n} concurrent puts", f"{landed}/{n} exited 0; attempts {doc['attempts']}, revision {doc['revision']} "
        f"(expected {n} and {n + 2}), {len(doc['history'])} history entries, {t_race:.2f} s", "all land")


race(16)
race(64)

# ---------------------------------------------------------------- list
# On a server of its own at the default log level: the DEBUG log that counts
# requests above costs the (single-threaded Python) server more than the
# requests themselves.
N = int(os.environ.get("LIST_BUILDS", "10000"))
started = subprocess.run([os.path.join(os.environ["S3_TEST_SERVER_DIR"], "start.sh")], capture_output=True,
                         env=dict(os.environ, S3_LOG_LEVEL="INFO"), check=True)
list_env = dict(l.removeprefix("export ").split("=", 1) for l in started.stdout.decode().splitlines()
                if l.startswith("export "))
ENDPOINT_MAIN = ENDPOINT
ENDPOINT = list_env["AWS_ENDPOINT_URL"]
s3_main = s3
s3 = boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=BUCKET)
template = json.loads(s3_main.get_object(Bucket=BUCKET, Key="builds/race16/state.json")["Body"].read())
template["history"] = template["history"][:1]
first = template["history"][0]
template.update(revision=1, state=0, state_name="initial", status="pending", attempts=0,
                retry_at=None, last_error=None, vars={}, created_at=first["at"], updated_at=first["at"])
print(f"creating {N} builds under fleet/ ...", file=sys.stderr)
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
def create(i):
    doc = dict(template, build_id=f"image-{i:05d}")
    s3.put_object(Bucket=BUCKET, Key=f"fleet/image-{i:05d}/state.json", Body=json.dumps(doc, indent=2))
with ThreadPoolExecutor(16) as pool:
    list(pool.map(create, range(N)))
fleet = os.path.join(WORK, "fleet.json")
with open(fleet, "w") as f:
    json.dump(dict(source("x"), prefix="fleet/"), f)
CACHE_ENV = dict(ENV, BUILD_STATE_CACHE_DIR=os.path.join(WORK, "cache"))


def timed_list(*extra):
    t0 = time.perf_counter()
    p = subprocess.run([BIN, "list", "--json", "--source", fleet, *extra], capture_output=True, env=CACHE_ENV)
    if p.returncode != 0:
        sys.exit(f"build-state list failed: {p.stderr.decode()}")
    return time.perf_counter() - t0, len(json.loads(p.stdout))


t_nocache, listed = timed_list("--no-cache")
t_cold, _ = timed_list()
t_warm, _ = timed_list()
subprocess.run([os.path.join(os.environ["S3_TEST_SERVER_DIR"], "stop.sh"), list_env["S3_LOCAL_PID"]],
               capture_output=True)
fig(f"build-state list over {N} builds, the old way (one GET per build, --no-cache)", f"{t_nocache:.1f} s ({listed} listed)")
fig(f"build-state list over {N} builds, cold (empty cache)", f"{t_cold:.1f} s", "<= 10 s")
fig(f"build-state list over {N} builds, unchanged (warm cache)", f"{t_warm:.2f} s: {t_nocache / t_warm:.0f}x faster")

# Request counts, on the DEBUG server (its log counts them): the same fleet.
ENDPOINT = ENDPOINT_MAIN
s3 = s3_main
print(f"creating {N} builds under fleet/ on the counting server ...", file=sys.stderr)
with ThreadPoolExecutor(16) as pool:
    list(pool.map(create, range(N)))
with open(fleet, "w") as f:
    json.dump(dict(source("x"), prefix="fleet/"), f)
shutil.rmtree(os.path.join(WORK, "cache"), ignore_errors=True)
n_old, _ = count_requests(lambda: timed_list("--no-cache"))
timed_list()
n_warm, names = count_requests(lambda: timed_list())
gets = sum(1 for n in names if n.startswith("GET") and "list-type" not in n and "/fleet/image-" in n)
fig(f"S3 requests of a list of {N} unchanged builds, old way / with the cache", f"{n_old} / {n_warm} ({gets} documents read)", "<= 10, no document read")
# A watch of the idle prefix, sweeps 1 s apart for 12 s. It starts from the
# cache the lists above left (an empty one would cost the first sweep every
# document); every sweep lists the prefix and reads nothing unchanged.
n_watch, watch_names = count_requests(lambda: subprocess.run(
    [BIN, "watch", "--source", fleet, "--interval", "1s", "--for", "12s"],
    capture_output=True, env=CACHE_ENV))
docs = sum(1 for n in watch_names if "/fleet/image-" in n)
listings = n_watch - docs
sweeps = listings // max(n_warm, 1)
fig(f"S3 requests of an idle watch sweep over {N} builds",
    f"{listings / max(sweeps, 1):.0f} ({sweeps} sweeps, {docs} documents read)",
    "<= 10")

# ---------------------------------------------------------------- size
size = os.path.getsize(BIN)
fig("programs in the image (check, in, out, build-state: one binary)", f"{size / 1e6:.2f} MB", "<= 8 MB")

print()
print("| figure | measured | goal |")
print("|---|---|---|")
for name, value, goal in figures:
    print(f"| {name} | {value} | {goal} |")
shutil.rmtree(WORK, ignore_errors=True)
