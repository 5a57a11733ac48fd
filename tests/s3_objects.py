#!/usr/bin/env python3
"""Fills, changes and lists a source bucket with boto3 (not coffer's code), for the
bucket-source tests. Credentials and endpoint come from the standard AWS variables.

  s3_objects.py fill BUCKET PREFIX COUNT BIG_MIB    COUNT-1 small objects of varied sizes and
                                                   content types, and one of BIG_MIB MiB (streamed)
  s3_objects.py change BUCKET PREFIX N BIG_MIB     rewrites N objects (the big one among them)
  s3_objects.py dump BUCKET PREFIX                 one JSON line per object: key (relative),
                                                   size, sha256, content type
  s3_objects.py put BUCKET PREFIX                  for each JSON string read from stdin (one per
                                                   line), an object under PREFIX + it, whose body
                                                   is the key's UTF-8 bytes repeated 1000 times
"""
import hashlib
import io
import json
import os
import random
import sys

import boto3

TYPES = ["text/plain", "application/json", "image/png", "application/octet-stream"]


def client():
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


class Generated(io.RawIOBase):
    """size bytes of pseudo-random data, produced as read (never whole in memory)."""

    def __init__(self, size, seed):
        self.left, self.rng = size, random.Random(seed)

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left, 1 << 20)
        b[:n] = self.rng.randbytes(n)
        self.left -= n
        return n


def small(i, seed):
    rng = random.Random(seed * 100_003 + i)
    size = rng.choice([0, 10, 1000, 5000, 20000, 70000, 300000])
    return rng.randbytes(size), TYPES[i % len(TYPES)]


def key(prefix, i):
    return f"{prefix}dir{i % 7}/sub{i % 3}/object-{i:04}.bin"


def main():
    cmd, bucket, prefix = sys.argv[1:4]
    s3 = client()
    if cmd == "fill":
        count, big = int(sys.argv[4]), int(sys.argv[5])
        for i in range(count - 1):
            body, ctype = small(i, 1)
            s3.put_object(Bucket=bucket, Key=key(prefix, i), Body=body, ContentType=ctype)
        s3.upload_fileobj(io.BufferedReader(Generated(big << 20, 1)), bucket, f"{prefix}big/large.bin",
                          ExtraArgs={"ContentType": "application/x-tar"})
    elif cmd == "change":
        n, big = int(sys.argv[4]), int(sys.argv[5])
        changed = 0
        for i in range(n - 1):
            body, ctype = small(i * 37, 2)
            body += b"changed"
            s3.put_object(Bucket=bucket, Key=key(prefix, i * 37), Body=body, ContentType=ctype)
            changed += len(body)
        s3.upload_fileobj(io.BufferedReader(Generated(big << 20, 2)), bucket, f"{prefix}big/large.bin",
                          ExtraArgs={"ContentType": "application/x-tar"})
        print(json.dumps({"changed_bytes": changed + (big << 20)}))
    elif cmd == "put":
        for line in sys.stdin:
            k = json.loads(line)
            s3.put_object(Bucket=bucket, Key=prefix + k, Body=k.encode() * 1000, ContentType="text/plain")
    elif cmd == "dump":
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                r = s3.get_object(Bucket=bucket, Key=o["Key"])
                h = hashlib.sha256()
                for part in iter(lambda: r["Body"].read(1 << 20), b""):
                    h.update(part)
                print(json.dumps({"key": o["Key"][len(prefix):], "size": o["Size"], "sha256": h.hexdigest(),
                                  "content_type": r.get("ContentType")}))


if __name__ == "__main__":
    main()
