#!/usr/bin/env bash
# tests/servers/start.sh: the S3 servers build-state's tests run against.
# Installs (once, pinned) and starts a real S3-compatible server on a free
# 127.0.0.1 port, in the background, and waits until it answers S3 requests.
# The integration tests (tests/integration/util.rs), scripts/bench and the
# Dockerfile's test stage call it; nothing outside this repository is needed.
#
#   S3ENV=$(tests/servers/start.sh) || exit 1   # export lines: endpoint, keys, S3_LOCAL_PID ...
#   eval "$S3ENV"
#   ...run tests...
#   tests/servers/stop.sh "$S3_LOCAL_PID"
#
# stdout carries only `export NAME=value` lines; progress and errors go to stderr.
#
# Environment (all optional):
#   S3_SERVER         ministack (default, pinned 1.5.33) | moto (pinned 5.2.5) |
#                     ceph (Ceph RGW from Debian's packages; see ceph.sh)
#   S3_LOCAL_DIR      where the venv, logs and pid files live
#                     (default: ${TMPDIR:-/tmp}/s3-local-$UID)
#   S3_PORT           port to listen on (default: a free port picked at random)
#   S3_PERSIST_DIR    ministack only: keep objects, versions and bucket settings in
#                     this directory across restarts (default: in memory only).
#                     Bucket settings such as versioning are written on a clean
#                     stop (SIGTERM, what stop.sh sends), not after a crash.
#   S3_START_TIMEOUT  seconds to wait for the server to answer (default 60)
#   PYTHON            interpreter used to build the venv (default python3, needs >= 3.10)
set -euo pipefail

SERVER=${S3_SERVER:-ministack}
# Ceph RGW is a cluster of Debian-packaged daemons, not a Python package.
[ "$SERVER" = ceph ] && exec "$(dirname "$0")/ceph.sh"
BASE=${S3_LOCAL_DIR:-${TMPDIR:-/tmp}/s3-local-$(id -u)}
TIMEOUT=${S3_START_TIMEOUT:-60}
PY=${PYTHON:-python3}

log() { printf 's3-test-server start: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Exact versions that were tested (top-level package and its whole dependency set).
case "$SERVER" in
  ministack)
    PKG="ministack==1.5.33"
    PINS="botocore==1.43.106 defusedxml==0.7.1 graphql-core==3.2.12 h11==0.16.0 h2==4.4.1
hpack==4.2.0 Hypercorn==0.18.0 hyperframe==6.1.0 jmespath==1.1.0 jsonata-python==0.7.1
ministack==1.5.33 priority==2.0.0 python-dateutil==2.9.0.post0 PyYAML==6.0.3 six==1.17.0
urllib3==2.8.0 wsproto==1.3.2"
    CHECK="import ministack" ;;
  moto)
    PKG="moto[s3]==5.2.5 flask flask-cors"
    PINS="blinker==1.9.0 boto3==1.44.5 botocore==1.44.5 certifi==2026.10.18 cffi==2.1.1
charset-normalizer==3.5.2 click==8.5.1 cryptography==50.0.2 Flask==3.1.3 flask-cors==6.0.5
idna==3.20 itsdangerous==2.2.0 Jinja2==3.1.6 jmespath==1.1.0 MarkupSafe==3.0.4 moto==5.2.5
py-partiql-parser==0.6.3 pycparser==3.12 python-dateutil==2.9.0.post0 PyYAML==6.0.3
requests==2.34.2 responses==0.26.3 s3transfer==0.19.3 six==1.17.0 urllib3==2.8.0
Werkzeug==3.1.9 xmltodict==1.0.4"
    CHECK="import moto, flask, flask_cors" ;;
  *) die "S3_SERVER must be 'ministack', 'moto' or 'ceph', not '$SERVER'" ;;
esac

VENV=$BASE/venv-$SERVER
RUN=$BASE/run
mkdir -p "$BASE" "$RUN"

# ---- install (once; serialised with flock so parallel jobs do not collide) ----
install_server() {
  local stamp=$VENV/.installed
  local want; want=$(printf '%s\n' "$PKG" "$PINS" | cksum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    return 0
  fi
  command -v "$PY" >/dev/null || die "$PY not found (set PYTHON=...)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PY is older than 3.10"
  log "installing $SERVER into $VENV ..."
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" >&2; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "python venv module missing; installing python3-venv with apt-get"
      apt-get install -y python3-venv >&2 || { apt-get update >&2 && apt-get install -y python3-venv >&2; }
      rm -rf "$VENV"; "$PY" -m venv "$VENV" >&2
    else
      die "'$PY -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
  fi
  printf '%s\n' "$PINS" | tr ' ' '\n' | grep . > "$VENV/constraints.txt"
  local i
  for i in 1 2 3; do
    # shellcheck disable=SC2086  # PKG is a list of requirement specifiers
    if "$VENV/bin/pip" install --disable-pip-version-check --no-input -q \
         -c "$VENV/constraints.txt" $PKG >&2; then
      break
    fi
    [ "$i" = 3 ] && die "pip install failed 3 times"
    log "pip install failed, retrying in $((i * 5))s"; sleep $((i * 5))
  done
  "$VENV/bin/python" -c "$CHECK" || die "installed $SERVER but '$CHECK' fails"
  echo "$want" > "$stamp"
}

if command -v flock >/dev/null; then
  exec 9>"$BASE/.install-$SERVER.lock"
  flock 9
  install_server
  flock -u 9
  exec 9>&-
else
  install_server
fi

# ---- start ----
free_port() {
  "$VENV/bin/python" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# Starts the server in its own session (so it outlives this script and a Ctrl-C
# in the calling shell); prints its PID.
spawn() { # spawn LOGFILE -- argv...
  local logf=$1; shift 2
  "$VENV/bin/python" - "$logf" "$@" <<'EOF'
import subprocess, sys
logf, argv = sys.argv[1], sys.argv[2:]
with open(logf, "ab") as out, open("/dev/null", "rb") as null:
    p = subprocess.Popen(argv, stdin=null, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)
print(p.pid)
EOF
}

# 0 = answers S3 ListBuckets, 1 = not yet
ready() {
  "$VENV/bin/python" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=2) as r:
        sys.exit(0 if b"ListAllMyBucketsResult" in r.read() else 1)
except Exception:
    sys.exit(1)
EOF
}

attempt=0
while :; do
  attempt=$((attempt + 1))
  PORT=${S3_PORT:-$(free_port)}
  LOG=$RUN/$SERVER-$PORT.log
  : > "$LOG"
  case "$SERVER" in
    ministack)
      export GATEWAY_PORT=$PORT BIND_HOST=127.0.0.1 SERVICES=s3 LOG_LEVEL=${S3_LOG_LEVEL:-INFO}
      unset EDGE_PORT S3_PERSIST S3_DATA_DIR PERSIST_STATE STATE_DIR
      if [ -n "${S3_PERSIST_DIR:-}" ]; then
        mkdir -p "$S3_PERSIST_DIR/s3" "$S3_PERSIST_DIR/state"
        export S3_PERSIST=1 S3_DATA_DIR=$S3_PERSIST_DIR/s3 PERSIST_STATE=1 STATE_DIR=$S3_PERSIST_DIR/state
      else
        # ministack writes scratch state under STATE_DIR even when not persisting
        export STATE_DIR=$RUN/ministack-state-$PORT
      fi
      PID=$(spawn "$LOG" -- "$VENV/bin/ministack") ;;
    moto)
      [ -n "${S3_PERSIST_DIR:-}" ] && log "warning: moto keeps everything in memory; S3_PERSIST_DIR ignored"
      PID=$(spawn "$LOG" -- "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT") ;;
  esac
  echo "$PID" > "$RUN/$SERVER-$PORT.pid"

  deadline=$((SECONDS + TIMEOUT))
  up=0
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$PID" 2>/dev/null; then break; fi
    if ready "$PORT"; then up=1; break; fi
    sleep 0.1
  done
  [ $up = 1 ] && break

  kill -0 "$PID" 2>/dev/null && { kill "$PID" 2>/dev/null; sleep 1; kill -9 "$PID" 2>/dev/null || true; }
  rm -f "$RUN/$SERVER-$PORT.pid"
  log "server did not come up on port $PORT (attempt $attempt); last log lines:"
  tail -n 15 "$LOG" >&2 || true
  # a port picked at random may have been taken in between: try another one
  if [ -z "${S3_PORT:-}" ] && [ $attempt -lt 3 ] && grep -qiE 'in use|address already' "$LOG"; then
    continue
  fi
  die "could not start $SERVER (log: $LOG)"
done

ENDPOINT=http://127.0.0.1:$PORT
ENVFILE=$RUN/$SERVER-$PORT.env
# 127.0.0.1 (not localhost): aws-sdk-s3 then uses path-style URLs by itself;
# with "localhost" it would try <bucket>.localhost unless force_path_style(true).
cat > "$ENVFILE" <<EOF
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_ENDPOINT_URL_S3=$ENDPOINT
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export S3_LOCAL_SERVER=$SERVER
export S3_LOCAL_PORT=$PORT
export S3_LOCAL_PID=$PID
export S3_LOCAL_LOG=$LOG
EOF
cat "$ENVFILE"
log "$SERVER ready at $ENDPOINT (pid $PID, log $LOG)"
