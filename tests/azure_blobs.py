#!/usr/bin/env python3
"""Fills, changes and lists an Azure Blob container with Microsoft's azure-storage-blob
(not coffer's code), for the Azure source test. Talks to Azurite's development account:
COFFER_TEST_AZURITE is its Blob endpoint, AZURITE_KEY its (public) key.

  azure_blobs.py fill CONTAINER PREFIX COUNT BIG_MIB   creates the container; COUNT-1 small
                                                      blobs of varied sizes and content types,
                                                      and one of BIG_MIB MiB
  azure_blobs.py change CONTAINER PREFIX N            rewrites N small blobs; prints the bytes
  azure_blobs.py dump CONTAINER PREFIX                one JSON line per blob: key (relative),
                                                      size, sha256, content type
  azure_blobs.py mkcontainer CONTAINER
  azure_blobs.py put CONTAINER                        for each JSON string on stdin (one per line),
                                                      a blob of that exact name holding its bytes
"""
import hashlib
import json
import os
import random
import sys

from azure.storage.blob import BlobServiceClient, ContentSettings

TYPES = ["text/plain", "application/json", "image/png", "application/octet-stream"]


def service():
    endpoint = os.environ["COFFER_TEST_AZURITE"]
    account = endpoint.rstrip("/").rsplit("/", 1)[1]
    conn = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={os.environ['AZURITE_KEY']};"
            f"BlobEndpoint={endpoint};")
    return BlobServiceClient.from_connection_string(conn)


def small(i, seed):
    rng = random.Random(seed * 100_003 + i)
    size = rng.choice([0, 10, 1000, 5000, 20000, 70000, 300000])
    return rng.randbytes(size), TYPES[i % len(TYPES)]


def key(prefix, i):
    return f"{prefix}dir{i % 7}/sub{i % 3}/blob-{i:04}.bin"


def put(container, name, body, ctype):
    container.upload_blob(name, body, overwrite=True, content_settings=ContentSettings(content_type=ctype))


def main():
    cmd, name = sys.argv[1:3]
    container = service().get_container_client(name)
    if cmd == "mkcontainer":
        container.create_container()
    elif cmd == "fill":
        prefix, count, big = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        container.create_container()
        for i in range(count - 1):
            put(container, key(prefix, i), *small(i, 1))
        put(container, f"{prefix}big/large.bin", random.Random(1).randbytes(big << 20), "application/x-tar")
    elif cmd == "change":
        prefix, n = sys.argv[3], int(sys.argv[4])
        changed = 0
        for i in range(n):
            body, ctype = small(i * 5, 2)
            body += b"changed"
            put(container, key(prefix, i * 5), body, ctype)
            changed += len(body)
        print(json.dumps({"changed_bytes": changed}))
    elif cmd == "put":
        for line in sys.stdin:
            name = json.loads(line)
            put(container, name, name.encode(), "text/plain")
    elif cmd == "dump":
        prefix = sys.argv[3]
        for b in container.list_blobs(name_starts_with=prefix):
            data = container.download_blob(b.name).readall()
            print(json.dumps({"key": b.name[len(prefix):], "size": len(data),
                              "sha256": hashlib.sha256(data).hexdigest(),
                              "content_type": b.content_settings.content_type}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
