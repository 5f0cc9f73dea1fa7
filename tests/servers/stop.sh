#!/usr/bin/env bash
# tests/servers/stop.sh: stop the S3 servers tests/servers/start.sh started.
#
#   ./stop.sh            # stops $S3_LOCAL_PID if set, else every server recorded in $S3_LOCAL_DIR/run
#   ./stop.sh PID...     # stops those PIDs (only if they are a server start.sh started)
#
# Sends SIGTERM (ministack writes its persisted state on a clean stop), waits up
# to 15 s, then SIGKILL. Safe to run twice: nothing to stop is not an error.
set -uo pipefail

BASE=${S3_LOCAL_DIR:-${TMPDIR:-/tmp}/s3-local-$(id -u)}
RUN=$BASE/run
log() { printf 's3-test-server stop: %s\n' "$*" >&2; }

# Is PID a server that start.sh started from $BASE (not a reused PID, and not
# someone else's moto/ministack)?
is_ours() {
  local cmd
  cmd=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
  case "$cmd" in
    *"$BASE/venv-ministack/bin/ministack"*|*"$BASE/venv-moto/bin/moto_server"*) return 0 ;;
    *"$BASE/s3rver-3.7.1/node_modules/"*) return 0 ;;
    *) return 1 ;;
  esac
}

# A Ceph cluster (S3_SERVER=ceph, see ceph.sh) is recorded as
# $RUN/ceph-PORT.{pid,dir}: the pid is its radosgw, the dir holds the pids of
# all its daemons (radosgw, OSD, monitor) and their config, data and logs.
stop_ceph() { # stop_ceph PIDFILE
  local f=$1 d p
  d=$(cat "${f%.pid}.dir" 2>/dev/null) || return 1
  case "$d" in "$RUN"/ceph-*) ;; *) return 1 ;; esac
  # a pid counts only while its command line names this cluster's ceph.conf
  ours() { grep -qs -- "$d/ceph.conf" "/proc/$1/cmdline"; }
  # one at a time, newest first (radosgw, OSD, monitor): an OSD stops at
  # once while its monitor is there to hear it, but waits 5 s for a gone one
  for p in $(tac "$d/pids" 2>/dev/null); do
    ours "$p" || continue
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 100); do ours "$p" || break; sleep 0.05; done
    ours "$p" && { log "ceph pid $p ignored SIGTERM for 5s; sending SIGKILL"; kill -KILL "$p" 2>/dev/null; sleep 0.1; }
  done
  rm -rf "$d" "${f%.pid}.dir"
  log "stopped ceph (radosgw pid $(cat "$f"), its OSD and monitor; removed $d)"
}

stop_pid() {
  local pid=$1 f
  for f in "$RUN"/ceph-*.pid; do
    [ -f "$f" ] && [ "$(cat "$f")" = "$pid" ] && { stop_ceph "$f"; return $?; }
  done
  if ! kill -0 "$pid" 2>/dev/null; then log "pid $pid is not running"; return 0; fi
  if ! is_ours "$pid"; then log "pid $pid is not a server started from $BASE; left alone"; return 1; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { log "stopped pid $pid"; return 0; }
    sleep 0.1
  done
  log "pid $pid ignored SIGTERM for 15s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null
  sleep 0.2
  return 0
}

forget_pid() { # remove pid/env files that record this pid
  local f
  for f in "$RUN"/*.pid; do
    [ -f "$f" ] || continue
    if [ "$(cat "$f" 2>/dev/null)" = "$1" ]; then rm -f "$f" "${f%.pid}.env"; fi
  done
}

pids=("$@")
if [ ${#pids[@]} -eq 0 ]; then
  if [ -n "${S3_LOCAL_PID:-}" ]; then
    pids=("$S3_LOCAL_PID")
  else
    for f in "$RUN"/*.pid; do [ -f "$f" ] && pids+=("$(cat "$f")"); done
  fi
fi
if [ ${#pids[@]} -eq 0 ]; then log "nothing to stop"; exit 0; fi

rc=0
for pid in "${pids[@]}"; do
  case "$pid" in ''|*[!0-9]*) log "not a pid: '$pid'"; rc=1; continue ;; esac
  if stop_pid "$pid"; then forget_pid "$pid"; else rc=1; fi
done
exit $rc
