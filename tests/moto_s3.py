#!/usr/bin/env python3
"""moto's S3 server on 127.0.0.1 (a free port), with one bucket that has Object Lock
enabled, for the test that coffer's locked puts satisfy AWS's documented rule. Prints
the port, then serves until stdin closes.

  moto_s3.py BUCKET
"""
import sys

import boto3
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
_, port = server.get_host_and_port()
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket=sys.argv[1], ObjectLockEnabledForBucket=True)
print(port, flush=True)
sys.stdin.read()
server.stop()
