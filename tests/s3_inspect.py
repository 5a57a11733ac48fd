#!/usr/bin/env python3
"""Asks the S3 server directly (boto3, not coffer's code) what it holds under a prefix.

  s3_inspect.py locks BUCKET PREFIX     one JSON line per object version: key, version,
                                        delete marker, lock mode and retain-until (unix seconds)
  s3_inspect.py attack BUCKET PREFIX    tries to delete every version and to shorten its lock to
                                        one hour from now (no bypass); prints how many of each the
                                        server refused and allowed (JSON)
  s3_inspect.py shorten BUCKET PREFIX KEY SECONDS
                                        sets the GOVERNANCE lock of KEY (relative to PREFIX) to
                                        end in SECONDS, bypassing governance (a made protection gap)
  s3_inspect.py mkbucket BUCKET PREFIX   creates BUCKET with Object Lock enabled (and so versioning)
  s3_inspect.py remove BUCKET PREFIX KEY VERSION
                                        deletes one GOVERNANCE-locked version, bypassing governance
                                        (an object lost on the server)
  s3_inspect.py bomb BUCKET PREFIX KEY DAYS
                                        extends the lock of KEY's latest version to DAYS from now
                                        (what stolen daemon credentials allow: a lock bomb)
  s3_inspect.py hold BUCKET PREFIX KEY  puts KEY's latest version under a legal hold
  s3_inspect.py rules BUCKET PREFIX     adds a lifecycle rule over PREFIX and a default retention
                                        of 100 years to the bucket

Credentials and endpoint come from the standard AWS environment variables.
"""
import json
import os
import sys

import boto3
from botocore.exceptions import ClientError


def client():
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


def versions(s3, bucket, prefix):
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            yield v, False
        for v in page.get("DeleteMarkers", []):
            yield v, True


def main():
    cmd, bucket, prefix = sys.argv[1:4]
    s3 = client()
    if cmd == "mkbucket":
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    elif cmd == "locks":
        for v, marker in versions(s3, bucket, prefix):
            row = {"key": v["Key"], "version": v["VersionId"], "delete_marker": marker, "mode": None, "until": None}
            if not marker:
                try:
                    r = s3.get_object_retention(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Retention"]
                    row["mode"] = r["Mode"]
                    row["until"] = int(r["RetainUntilDate"].timestamp())
                except ClientError as e:
                    row["error"] = e.response["Error"]["Code"]
            print(json.dumps(row))
    elif cmd == "attack":
        import datetime
        soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        result = {"delete_refused": 0, "deleted": 0, "shorten_refused": 0, "shortened": 0}
        for v, _ in list(versions(s3, bucket, prefix)):
            try:
                s3.put_object_retention(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"],
                                        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": soon})
                result["shortened"] += 1
            except ClientError:
                result["shorten_refused"] += 1
            try:
                s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
                result["deleted"] += 1
            except ClientError:
                result["delete_refused"] += 1
        print(json.dumps(result))
    elif cmd == "shorten":
        import datetime
        key, seconds = prefix + sys.argv[4], int(sys.argv[5])
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
        s3.put_object_retention(Bucket=bucket, Key=key, BypassGovernanceRetention=True,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})
        print(json.dumps({"key": key, "until": int(until.timestamp())}))
    elif cmd == "bomb":
        import datetime
        key, days = prefix + sys.argv[4], int(sys.argv[5])
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
        mode = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]["Mode"]
        s3.put_object_retention(Bucket=bucket, Key=key, Retention={"Mode": mode, "RetainUntilDate": until})
        print(json.dumps({"key": key, "until": int(until.timestamp())}))
    elif cmd == "hold":
        key = prefix + sys.argv[4]
        s3.put_object_legal_hold(Bucket=bucket, Key=key, LegalHold={"Status": "ON"})
        print(json.dumps({"key": key}))
    elif cmd == "rules":
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
            "ID": "expire-old", "Status": "Enabled", "Filter": {"Prefix": prefix},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}]})
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Years": 100}}})
        print(json.dumps({"bucket": bucket}))
    elif cmd == "remove":
        key, version = prefix + sys.argv[4], sys.argv[5]
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
        print(json.dumps({"key": key, "version": version}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
