#!/usr/bin/env bash
# coffer's main job on an embedded default, on a fresh machine, with no cloud account:
# builds coffer, makes an age identity and a config under ./demo, backs up a sample
# directory to a local target (./demo/target), lists the snapshots, restores the latest
# one and checks that it is identical to the sample. Run it again to see dedup at work.
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

if [ ! -f "$demo/identity.txt" ]; then
  echo "== coffer keygen (the restorer's key: in real use it lives offline, not on the backup host)"
  "$coffer" keygen --output "$demo/identity.txt" >"$demo/recipient.txt"
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
"$coffer" restore latest --job sample --to "$demo/restored" --identity "$demo/identity.txt"
if diff -r --no-dereference "$demo/sample" "$demo/restored" >/dev/null; then
  echo "== restored tree is identical to the sample ($(find "$demo/sample" | wc -l) entries)"
else
  echo "== restored tree DIFFERS from the sample" >&2
  exit 1
fi
