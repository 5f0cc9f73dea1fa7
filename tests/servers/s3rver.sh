#!/usr/bin/env bash
# tests/servers/s3rver.sh: s3rver 3.7.1 (npm), a real S3 server that ignores
# every condition on PUT and DELETE (SERVERS.md in the project's notes): the
# server `build-state doctor` must fail on. Installs it once with npm under
# S3_LOCAL_DIR, starts it on a free 127.0.0.1 port with the bucket
# `doctor` configured, and prints `export` lines like start.sh:
#
#   S3ENV=$(tests/servers/s3rver.sh) || exit 1; eval "$S3ENV"
#   ... AWS_ENDPOINT_URL, keys S3RVER/S3RVER, S3_LOCAL_PID ...
#   tests/servers/stop.sh "$S3_LOCAL_PID"
set -euo pipefail
BASE=${S3_LOCAL_DIR:-${TMPDIR:-/tmp}/s3-local-$(id -u)}
DIR=$BASE/s3rver-3.7.1
log() { printf 's3rver: %s\n' "$*" >&2; }
command -v npm >/dev/null || { log "error: npm not found (apt-get install npm)"; exit 1; }
mkdir -p "$DIR"
if [ ! -x "$DIR/node_modules/.bin/s3rver" ]; then
  log "installing s3rver@3.7.1 into $DIR ..."
  (cd "$DIR" && npm install --no-audit --no-fund --silent s3rver@3.7.1 >&2)
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$(mktemp -d "$BASE/s3rver-data-XXXXXX")
mkdir -p "$DATA/doctor"
LOG=$DATA.log
setsid "$DIR/node_modules/.bin/s3rver" -d "$DATA" -a 127.0.0.1 -p "$PORT" --silent \
  --configure-bucket doctor </dev/null >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null || \
     python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || { log "error: s3rver exited: $(tail -5 "$LOG")"; exit 1; }
  sleep 0.1
done
log "s3rver 3.7.1 ready at http://127.0.0.1:$PORT (pid $PID, data in $DATA)"
cat <<EOT
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=S3RVER
export AWS_SECRET_ACCESS_KEY=S3RVER
export AWS_REGION=us-east-1
export S3_LOCAL_SERVER=s3rver
export S3_LOCAL_PORT=$PORT
export S3_LOCAL_PID=$PID
EOT
