#!/usr/bin/env bash
# Azurite, Microsoft's Azure Storage emulator (the npm package), serving the Blob API on
# 127.0.0.1 for the tests of coffer's Azure Blob source. Data is kept in memory only.
#
#   eval "$(scripts/azurite.sh start)"   # prints only `export …` lines on stdout
#   scripts/azurite.sh stop
#
# Installs the npm package into $COFFER_AZURITE_DIR the first time (needs node and npm:
# Debian's `nodejs npm`). It serves Azurite's well-known development account
# `devstoreaccount1`, whose key is public (Microsoft documents it); COFFER_TEST_AZURITE
# is the account's Blob endpoint.
# --skipApiVersionCheck: the Python SDK the tests fill containers with speaks a newer API
# version than Azurite announces; the calls used are older than both.
# Env: COFFER_AZURITE_DIR (default /tmp/coffer-azurite), COFFER_AZURITE_PORT (10000).
set -euo pipefail
DIR="${COFFER_AZURITE_DIR:-/tmp/coffer-azurite}"
PORT="${COFFER_AZURITE_PORT:-10000}"
VERSION=3.37.0
log() { echo "[azurite $(date +%T)] $*" >&2; }

start() {
  command -v npm >/dev/null || { log "needs node and npm (apt-get install nodejs npm)"; exit 1; }
  if [ ! -x "$DIR/node_modules/.bin/azurite-blob" ]; then
    log "installing azurite $VERSION from npm into $DIR"
    mkdir -p "$DIR"
    npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2
  fi
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
    log "already running"
  else
    (cd "$DIR" && exec setsid node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$PORT" \
      --inMemoryPersistence --skipApiVersionCheck --silent >"$DIR/log" 2>&1 </dev/null) &
    echo $! >"$DIR/pid"
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
      kill -0 "$(cat "$DIR/pid")" 2>/dev/null || { log "azurite did not start:"; cat "$DIR/log" >&2; exit 1; }
      sleep 0.2
    done
    log "serving Blob on 127.0.0.1:$PORT"
  fi
  echo "export COFFER_TEST_AZURITE=http://127.0.0.1:$PORT/devstoreaccount1"
}

stop() {
  if [ -f "$DIR/pid" ]; then
    kill "$(cat "$DIR/pid")" 2>/dev/null || true
    rm -f "$DIR/pid"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
