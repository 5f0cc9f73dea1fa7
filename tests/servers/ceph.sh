#!/usr/bin/env bash
# tests/servers/ceph.sh: start a single-node Ceph cluster with the RADOS Gateway (RGW), a
# real production S3 implementation, on a free 127.0.0.1 port. Called by
# start.sh for S3_SERVER=ceph; prints the same `export` lines.
#
# One monitor, one OSD on the memstore backend (objects live in memory, no
# disk needed), no cephx (auth none), RGW with the beast frontend, and an
# RGW user whose keys are test/test. Installs the Debian packages radosgw,
# ceph-mon, ceph-osd and ceph-common when missing (apt-get; sudo if not root).
# Everything lives in $S3_LOCAL_DIR/run/ceph-XXXXXX (config, data, logs, the
# daemons' pids), which stop.sh removes after stopping the daemons.
set -euo pipefail

BASE=${S3_LOCAL_DIR:-${TMPDIR:-/tmp}/s3-local-$(id -u)}
RUN=$BASE/run
TIMEOUT=${S3_START_TIMEOUT:-30}   # per daemon
PKGS="radosgw ceph-mon ceph-osd ceph-common"
log() { printf 's3-test-server start (ceph): %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- install (once; serialised with flock, and apt waits for dpkg's lock) ----
missing() {
  local b
  for b in radosgw radosgw-admin ceph-mon ceph-osd ceph ceph-authtool monmaptool python3; do
    command -v "$b" >/dev/null || echo "$b"
  done
}
install_ceph() {
  [ -z "$(missing)" ] && return 0
  local sudo=
  if [ "$(id -u)" != 0 ]; then
    if ! { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; then
      die "missing $(missing | xargs): run as root or with passwordless sudo, or install them: apt-get install -y --no-install-recommends $PKGS"
    fi
    sudo="sudo -n"
  fi
  command -v apt-get >/dev/null || die "missing $(missing | xargs) and no apt-get: install Ceph's $PKGS"
  log "installing $PKGS with apt-get (about 70 MB to download, 260 MB installed) ..."
  # shellcheck disable=SC2086  # sudo and PKGS are word lists
  aptget() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@" >&2; }
  # shellcheck disable=SC2086
  aptget install -y --no-install-recommends $PKGS ||
    { aptget update && aptget install -y --no-install-recommends $PKGS; } || die "apt-get install $PKGS failed"
  [ -z "$(missing)" ] || die "installed $PKGS but still missing: $(missing | xargs)"
}
mkdir -p "$RUN"
if [ -z "${CEPH_TRY:-}" ]; then
  [ -n "${S3_PERSIST_DIR:-}" ] && log "warning: the OSD keeps everything in memory; S3_PERSIST_DIR ignored"
  if command -v flock >/dev/null; then
    exec 9>"$BASE/.install-ceph.lock"; flock 9; install_ceph; flock -u 9; exec 9>&-
  else
    install_ceph
  fi
  # A bootstrap can fail now and then (a port taken in between, a daemon
  # that does not come up in time): try a fresh cluster up to three times.
  trap 'exit 1' INT TERM HUP   # (after the try under way has cleaned up)
  for try in 1 2 3; do
    CEPH_TRY=$try "$BASH" "$0" && exit 0
    [ -n "${S3_PORT:-}" ] && break   # a fixed port that is taken stays taken
    log "start failed (try $try of 3)"
  done
  die "could not start Ceph RGW (see the errors above)"
fi

# ---- one attempt: a fresh cluster in its own directory ----
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=${S3_PORT:-$(free_port)}
MONPORT=$(free_port)
D=$(mktemp -d "$RUN/ceph-XXXXXX")
PIDS=()
started=0
why=
# On any failure (or Ctrl-C): stop the daemons started so far, show the logs'
# tails and the reason, remove the directory.
cleanup() {
  local rc=$? p f
  [ $started = 1 ] && return 0
  for p in $(tac "$D/pids" 2>/dev/null); do   # newest first, as stop.sh does
    kill -TERM "$p" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
  done
  grep -qsxF "$D" "$RUN/ceph-$PORT.dir" && rm -f "$RUN/ceph-$PORT".{dir,pid,env}
  for f in "$D"/log/*.log; do
    [ -s "$f" ] && { echo "--- last lines of $(basename "$f"):"; tail -n 8 "$f"; } >&2
  done
  rm -rf "$D"
  log "error: ${why:-a command failed (exit status $rc)}"
}
trap cleanup EXIT
trap 'why=interrupted; exit 1' INT TERM HUP
fail() { why=$*; exit 1; }

mkdir -p "$D/mon" "$D/osd0" "$D/run" "$D/log"
FSID=$(cat /proc/sys/kernel/random/uuid)
CONF=$D/ceph.conf
cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MONPORT
mon initial members = a
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
ms bind ipv6 = false
ms bind msgr2 = false
run dir = $D/run
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
keyring = $D/keyring
[mon]
mon data = $D/mon
# commit each change at once, not once a second (RGW creates six pools at start)
paxos propose interval = 0.01
paxos min wait = 0.01
[osd]
osd data = $D/osd0
osd objectstore = memstore
memstore device bytes = 2147483648
osd max object name len = 460
osd max object namespace len = 64
# placed in the CRUSH map below, not by the OSD at start: its own mon commands
# there can race its first monmap ("wrong fsid") and kill it
osd crush update on start = false
osd class update on start = false
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $D/rgw
rgw dns name = 127.0.0.1
CONF
ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null 2>&1 || fail "ceph-authtool"
monmaptool --create --addv a "[v1:127.0.0.1:$MONPORT]" --fsid "$FSID" "$D/monmap" >/dev/null 2>&1 || fail "monmaptool"
ceph-mon -c "$CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" 2>"$D/log/mkfs.log" || fail "ceph-mon --mkfs"

# Each daemon runs in the foreground (-f) of its own session; its pid goes
# to $D/pids at once, so stop.sh finds every daemon that was started.
spawn() { setsid "$@" </dev/null >>"$D/log/daemons.out" 2>&1 & PIDS+=($!); echo $! >> "$D/pids"; }
up() { # up DEADLINE DAEMON-INDEX WHAT: fail if the daemon exited or time is up
  kill -0 "${PIDS[$2]}" 2>/dev/null || fail "$3 exited"
  [ $SECONDS -lt "$1" ] || fail "$3 did not come up within ${TIMEOUT}s"
  sleep 0.2
}
C() { ceph -c "$CONF" --connect-timeout 5 "$@"; }
spawn ceph-mon -c "$CONF" -i a -f
deadline=$((SECONDS + TIMEOUT))
until C mon stat >/dev/null 2>&1; do up $deadline 0 "the monitor"; done

UUID=$(cat /proc/sys/kernel/random/uuid)
ID=$(C osd new "$UUID" 2>"$D/log/osd-new.log") || fail "ceph osd new"
ceph-osd -c "$CONF" -i "$ID" --mkfs --osd-uuid "$UUID" >/dev/null 2>"$D/log/osd-mkfs.log" || fail "ceph-osd --mkfs"
C osd crush add "osd.$ID" 1 root=default >/dev/null 2>&1 || fail "ceph osd crush add"
spawn ceph-osd -c "$CONF" -i "$ID" -f
deadline=$((SECONDS + TIMEOUT))
until C osd stat 2>/dev/null | grep -q '1 up'; do up $deadline 1 "the OSD"; done

spawn radosgw -c "$CONF" -n client.rgw -f
deadline=$((SECONDS + TIMEOUT))
until python3 - "$PORT" 2>/dev/null <<'EOF'
import sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=2) as r:
    sys.exit(0 if b"ListAllMyBucketsResult" in r.read() else 1)
EOF
do up $deadline 2 "radosgw (port $PORT)"; done
# (as client.admin: client.rgw's admin socket belongs to the running radosgw)
radosgw-admin -c "$CONF" user create --uid=test --display-name=test \
  --access-key=test --secret-key=test >/dev/null 2>"$D/log/user-create.log" || fail "radosgw-admin user create"

# Records for stop.sh: the radosgw pid (S3_LOCAL_PID) and the cluster's dir.
PID=${PIDS[2]}
echo "$D" > "$RUN/ceph-$PORT.dir"
echo "$PID" > "$RUN/ceph-$PORT.pid"
ENVFILE=$RUN/ceph-$PORT.env
cat > "$ENVFILE" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export S3_LOCAL_SERVER=ceph
export S3_LOCAL_PORT=$PORT
export S3_LOCAL_PID=$PID
export S3_LOCAL_LOG=$D/log/client.rgw.log
ENV
cat "$ENVFILE"
started=1
log "Ceph RGW $(radosgw --version | awk '{print $3}') ready at http://127.0.0.1:$PORT (radosgw pid $PID, data and logs in $D)"
