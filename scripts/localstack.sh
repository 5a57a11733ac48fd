#!/usr/bin/env bash
# LocalStack's S3 provider (PyPI, host mode, no Docker) on 127.0.0.1: the second S3
# implementation coffer's tests write to, a provider beside Ceph RGW with its own
# credentials. It implements Object Lock (COMPLIANCE refuses deletes and shortening,
# GetObjectRetention answers) and honours `If-None-Match: *` on versioned buckets. Data
# lives in memory: a restart starts empty.
#
#   eval "$(scripts/localstack.sh start)"   # prints only `export …` lines on stdout
#   scripts/localstack.sh stop
#
# Installs localstack-core into a venv in $COFFER_LOCALSTACK_VENV the first time
# (~1-2 min). localstack-core 4.13.1 is the newest release that runs on Python 3.11; it
# needs cbor2<6 and pyopenssl<24.3. It accepts any credentials; COFFER_TEST_LOCALSTACK
# is its endpoint.
# Env: COFFER_LOCALSTACK_DIR (default /tmp/coffer-localstack), COFFER_LOCALSTACK_PORT
#      (4566), COFFER_LOCALSTACK_VENV (default ~/.cache/coffer/localstack-venv).
set -euo pipefail
DIR="${COFFER_LOCALSTACK_DIR:-/tmp/coffer-localstack}"
PORT="${COFFER_LOCALSTACK_PORT:-4566}"
VENV="${COFFER_LOCALSTACK_VENV:-$HOME/.cache/coffer/localstack-venv}"
log() { echo "[localstack $(date +%T)] $*" >&2; }
healthy() { curl -s -m 2 "http://127.0.0.1:$PORT/_localstack/health" 2>/dev/null | grep -q '"s3": "running"'; }

start() {
  if ! "$VENV/bin/python" -c "import localstack.services.s3.provider" 2>/dev/null; then
    log "installing localstack-core 4.13.1 into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
      'localstack-core[runtime]==4.13.1' 'cbor2<6' 'pyopenssl<24.3' >&2
  fi
  mkdir -p "$DIR/fs"
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
    log "already running"
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { log "port $PORT is in use (set COFFER_LOCALSTACK_PORT)"; exit 1; }
    # Files stay under $DIR; S3 only; no DNS server (it would bind :53 on every
    # interface); hypercorn, as the pip extra does not install the default server.
    (cd "$DIR" && OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$DIR/fs" TMPDIR="$DIR" \
      GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="127.0.0.1:$PORT" LOCALSTACK_HOST="127.0.0.1:$PORT" \
      DNS_ADDRESS=0 SERVICES=s3 EAGER_SERVICE_LOADING=1 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
      exec setsid "$VENV/bin/python" -m localstack.runtime.main >"$DIR/log" 2>&1 </dev/null) &
    echo $! >"$DIR/pid"
    for _ in $(seq 1 300); do
      healthy && break
      kill -0 "$(cat "$DIR/pid")" 2>/dev/null || { log "localstack did not start:"; tail -20 "$DIR/log" >&2; exit 1; }
      sleep 0.2
    done
    healthy || { log "no answer on 127.0.0.1:$PORT"; exit 1; }
    log "serving S3 on 127.0.0.1:$PORT"
  fi
  echo "export COFFER_TEST_LOCALSTACK=http://127.0.0.1:$PORT"
}

stop() {
  if [ -f "$DIR/pid" ]; then
    pid=$(cat "$DIR/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  # Its S3 provider keeps one directory per bucket here, whatever TMPDIR says.
  pgrep -f localstack.runtime.main >/dev/null || rm -rf /tmp/localstack-s3-storage
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
