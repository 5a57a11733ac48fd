#!/usr/bin/env bash
# coffer's main job on an embedded default, on a fresh machine, with no cloud account:
# builds coffer, makes an age identity and a config under ./demo, backs up a sample
# directory to a local target (./demo/target), lists the snapshots, restores the latest
# one and checks that it is identical to the sample, then runs the daemon for a few
# seconds (the job on a 5-second schedule, /metrics on 127.0.0.1:9477) and shows its runs,
# verifies every stored chunk, and recovers the catalog into a bare state directory from
# the target and the identity alone.
# Run it again to see dedup at work.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo is needed (https://rustup.rs)" >&2; exit 1; }
cargo build --release --quiet
coffer="$PWD/target/release/coffer"
demo="$PWD/demo"
mkdir -p "$demo"

if [ ! -f "$demo/sample/README.md" ]; then
  echo "== making a sample directory: coffer's own sources plus 32 MiB of generated data"
  mkdir -p "$demo/sample/generated"
  cp -a src migrations config README.md "$demo/sample/"
  head -c $((16 << 20)) /dev/urandom >"$demo/sample/generated/random.bin"
  head -c $((16 << 20)) <(yes "coffer demo: compressible text line") >"$demo/sample/generated/text.log"
  ln -sf ../README.md "$demo/sample/generated/readme-link"
fi

# The restorer's key, in demo/offline/: it stands for the restorer's own machine (the
# daemon refuses to start with an identity beside its config).
identity="$demo/offline/identity.txt"
mkdir -p "$demo/offline"
[ -f "$demo/identity.txt" ] && mv "$demo/identity.txt" "$identity"
if [ ! -f "$identity" ]; then
  echo "== coffer keygen (the restorer's key: in real use it lives offline, not on the backup host)"
  "$coffer" keygen --output "$identity" >"$demo/recipient.txt"
fi
if [ ! -f "$demo/coffer.toml" ]; then
  cat >"$demo/coffer.toml" <<EOT
# Demo configuration made by scripts/demo.sh; see config/coffer.example.toml for every key.
state_dir = "state"
recipients = ["$(cat "$demo/recipient.txt")"]
repo_secret_file = "state/repo.secret"

[target]
url = "file://$demo/target"

[[job]]
name = "sample"
source = { path = "sample" }
exclude = ["*.tmp"]
# For the daemon: every 5 seconds (a real job would say "15 2 * * *").
schedule = "*/5 * * * * *"
EOT
fi
export COFFER_CONFIG="$demo/coffer.toml"

echo "== coffer init"
"$coffer" init
echo "== coffer backup sample"
"$coffer" backup sample
echo "== coffer snapshots"
"$coffer" snapshots
echo "== coffer restore latest"
rm -rf "$demo/restored"
"$coffer" restore latest --job sample --to "$demo/restored" --identity "$identity"
if diff -r --no-dereference "$demo/sample" "$demo/restored" >/dev/null; then
  echo "== restored tree is identical to the sample ($(find "$demo/sample" | wc -l) entries)"
else
  echo "== restored tree DIFFERS from the sample" >&2
  exit 1
fi

echo "== coffer daemon for 12 seconds (the job every 5 seconds), then SIGTERM"
"$coffer" daemon 2>"$demo/daemon.log" &
daemon=$!
sleep 12
if command -v curl >/dev/null; then
  echo "-- GET http://127.0.0.1:9477/metrics (excerpt)"
  curl -s http://127.0.0.1:9477/metrics | grep -E '^coffer_job_(runs_total|last_run_outcome|snapshots)' || true
fi
kill -TERM "$daemon"
wait "$daemon"
echo "== coffer runs (the daemon's log is in demo/daemon.log)"
"$coffer" runs -n 5
echo "== coffer verify --read-data (every recorded object on the target; every chunk decrypted and re-hashed)"
"$coffer" verify --read-data --identity "$identity"
echo "== disaster drill: coffer recover on a bare state directory, from the target and the identity alone"
rm -rf "$demo/recovered"
sed -e 's|^state_dir = "state"|state_dir = "recovered"|' -e 's|^repo_secret_file = "state/|repo_secret_file = "recovered/|' \
  "$demo/coffer.toml" >"$demo/recovered.toml"
"$coffer" --config "$demo/recovered.toml" recover --identity "$identity"
"$coffer" --config "$demo/recovered.toml" snapshots
