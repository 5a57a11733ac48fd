#!/usr/bin/env bash
# A real S3 server with Object Lock on 127.0.0.1, for coffer's tests and benchmarks:
# a throwaway single-node Ceph cluster (1 monitor, 1 OSD on a sparse file, no manager)
# with the RADOS Gateway, from Debian's packages. Everything lives in $COFFER_S3_DIR.
#
#   eval "$(scripts/s3-server.sh start)"   # prints only `export …` lines on stdout
#   scripts/s3-server.sh stop               # stops the daemons, deletes the state
#   scripts/s3-server.sh mkbucket NAME [--no-lock]   # a bucket with Object Lock enabled (or not)
#   scripts/s3-server.sh mkuser UID ACCESS SECRET     # another S3 user (separate credentials)
#   scripts/s3-server.sh gateway-start NAME PORT     # a second gateway to the same cluster
#   scripts/s3-server.sh gateway-stop NAME           # stops it (an outage, for the tests)
#
# Installs ceph-mon, ceph-osd, radosgw and ceph-common with apt the first time (root).
# Env: COFFER_S3_DIR (default /tmp/coffer-s3), COFFER_S3_PORT (7480), COFFER_MON_PORT (3300),
#      COFFER_MON_PORT_V1 (6789), COFFER_S3_ACCESS_KEY / COFFER_S3_SECRET_KEY (fixed test keys).
# Ceph 16 facts coffer relies on knowing: it checks SigV4 signatures, ignores
# `If-None-Match: *` on versioned buckets, and drops lock headers on multipart uploads.
set -euo pipefail
DIR="${COFFER_S3_DIR:-/tmp/coffer-s3}"
PORT="${COFFER_S3_PORT:-7480}"
MONP2="${COFFER_MON_PORT:-3300}"
MONP1="${COFFER_MON_PORT_V1:-6789}"
AK="${COFFER_S3_ACCESS_KEY:-COFFERTESTACCESSKEY0}"
SK="${COFFER_S3_SECRET_KEY:-cofferTestSecretKey00000000000000000000000}"
log() { echo "[s3-server $(date +%T)] $*" >&2; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install() {
  command -v radosgw >/dev/null && command -v ceph-osd >/dev/null && command -v ceph-mon >/dev/null && return
  log "installing Ceph (mon, osd, radosgw) from Debian"
  export DEBIAN_FRONTEND=noninteractive
  local pkgs="ceph-mon ceph-osd radosgw ceph-common"
  apt-get install -y --no-install-recommends $pkgs >&2 || { apt-get update >&2 && apt-get install -y --no-install-recommends $pkgs >&2; }
}

start() {
  install
  local t0; t0=$(date +%s)
  if [ -f "$DIR/run/client.rgw.a.pid" ] && kill -0 "$(cat "$DIR/run/client.rgw.a.pid")" 2>/dev/null; then
    log "already running in $DIR"
  else
    for p in "$PORT" "$MONP2" "$MONP1"; do
      port_busy "$p" && { log "port $p is in use (set COFFER_S3_PORT / COFFER_MON_PORT / COFFER_MON_PORT_V1)"; exit 1; }
    done
    rm -rf "$DIR"
    mkdir -p "$DIR"/{run,log,crash,mon.a,osd.0}
    local conf="$DIR/ceph.conf" fsid; fsid=$(cat /proc/sys/kernel/random/uuid)
    cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MONP2,v1:127.0.0.1:$MONP1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
# radosgw defaults to a secure mon connection, which auth=none cannot provide
ms mon client mode = crc secure
keyring = $DIR/keyring
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
mon data = $DIR/\$name
osd data = $DIR/\$name
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data avail warn = 2
mon data avail crit = 1
mon osd full ratio = 0.97
mon osd backfillfull ratio = 0.96
mon osd nearfull ratio = 0.95
osd objectstore = bluestore
bluestore block size = 17179869184
bluestore block create = true
osd memory target = 1073741824
ms bind port min = 6800
ms bind port max = 7300

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw zone = default
rgw thread pool size = 128
rgw enable usage log = false
CONF
    : >"$DIR/keyring"
    log "monitor"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MONP2,v1:127.0.0.1:$MONP1]" \
      --enable-all-features --clobber "$DIR/monmap" >&2
    ceph-mon -c "$conf" --mkfs -i a --monmap "$DIR/monmap" >&2
    ceph-mon -c "$conf" -i a >&2
    for _ in $(seq 1 100); do timeout 10 ceph -c "$conf" mon stat >/dev/null 2>&1 && break; sleep 0.3; done
    log "OSD"
    local uuid id; uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(timeout 30 ceph -c "$conf" osd new "$uuid")
    [ "$id" = 0 ] || { log "unexpected OSD id $id"; exit 1; }
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >"$DIR/log/osd-mkfs.log" 2>&1
    ceph-osd -c "$conf" -i 0 >&2
    for _ in $(seq 1 200); do
      timeout 10 ceph -c "$conf" osd stat 2>/dev/null | grep -q '1 up.*1 in' && break; sleep 0.3
    done
    log "gateway on 127.0.0.1:$PORT"
    radosgw -c "$conf" -n client.rgw.a >&2
    for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.3; done
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" || { log "the gateway did not answer; see $DIR/log"; exit 1; }
    radosgw-admin -c "$conf" user create --uid=coffer-test --display-name="coffer test" \
      --access-key="$AK" --secret-key="$SK" >"$DIR/user.json" 2>>"$DIR/log/radosgw-admin.log"
    log "up in $(( $(date +%s) - t0 ))s"
  fi
  cat <<EOT
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=$AK
export AWS_SECRET_ACCESS_KEY=$SK
export AWS_REGION=us-east-1
export COFFER_S3_CONF=$DIR/ceph.conf
EOT
}

stop() {
  [ -d "$DIR/run" ] || { log "nothing running in $DIR"; return 0; }
  for n in client.rgw.a osd.0 mon.a; do
    local f="$DIR/run/$n.pid" pid
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$DIR"
  log "stopped"
}

# A bucket with Object Lock (and so versioning) enabled, created with a SigV4-signed PUT.
mkbucket() {
  local name="$1" lock="true" code
  [ "${2:-}" = "--no-lock" ] && lock="false"
  code=$(curl -s -o "$DIR/mkbucket.out" -w '%{http_code}' -X PUT \
    --aws-sigv4 "aws:amz:${AWS_REGION:-us-east-1}:s3" --user "${AWS_ACCESS_KEY_ID:-$AK}:${AWS_SECRET_ACCESS_KEY:-$SK}" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    -H "x-amz-bucket-object-lock-enabled: $lock" "http://127.0.0.1:$PORT/$name")
  case "$code" in
    200) log "bucket $name created (Object Lock enabled: $lock)";;
    409) log "bucket $name exists";;
    *) log "creating bucket $name failed: HTTP $code: $(cat "$DIR/mkbucket.out")"; exit 1;;
  esac
}

# Another user with its own keys: buckets it creates are not readable with the first's.
mkuser() {
  radosgw-admin -c "$DIR/ceph.conf" user create --uid="$1" --display-name="$1" \
    --access-key="$2" --secret-key="$3" >/dev/null 2>>"$DIR/log/radosgw-admin.log" \
    || radosgw-admin -c "$DIR/ceph.conf" user info --uid="$1" >/dev/null 2>&1 \
    || { log "cannot create user $1"; exit 1; }
  log "user $1 ready"
}

# Another RADOS Gateway on the running cluster (same users and buckets), which a test can
# stop and start again to make an outage without disturbing tests on the main gateway.
gateway_start() {
  local name="$1" port="$2"
  radosgw -c "$DIR/ceph.conf" -n "client.rgw.$name" --rgw-frontends="beast endpoint=127.0.0.1:$port" \
    --rgw-zone=default --rgw-enable-usage-log=false >&2
  for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -s -o /dev/null "http://127.0.0.1:$port/" || { log "gateway $name did not answer on $port"; exit 1; }
  log "gateway $name up on 127.0.0.1:$port"
}

gateway_stop() {
  local f="$DIR/run/client.rgw.$1.pid" pid
  [ -f "$f" ] || { log "no gateway $1"; return 0; }
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
  log "gateway $1 stopped"
}

case "${1:-}" in
  start) start;;
  stop) stop;;
  mkbucket) [ -n "${2:-}" ] || { echo "usage: $0 mkbucket NAME [--no-lock]" >&2; exit 2; }; mkbucket "$2" "${3:-}";;
  mkuser) [ -n "${4:-}" ] || { echo "usage: $0 mkuser UID ACCESS SECRET" >&2; exit 2; }; mkuser "$2" "$3" "$4";;
  gateway-start) [ -n "${3:-}" ] || { echo "usage: $0 gateway-start NAME PORT" >&2; exit 2; }; gateway_start "$2" "$3";;
  gateway-stop) [ -n "${2:-}" ] || { echo "usage: $0 gateway-stop NAME" >&2; exit 2; }; gateway_stop "$2";;
  *) echo "usage: $0 start|stop|mkbucket NAME [--no-lock]|gateway-start NAME PORT|gateway-stop NAME" >&2; exit 2;;
esac
