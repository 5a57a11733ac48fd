#!/usr/bin/env python3
"""A hostile S3 endpoint for coffer's tests: a target that lies, stalls or lists forever.

    python3 tests/hostile_s3.py MODE PORT_FILE

Listens on 127.0.0.1 (a free port, written to PORT_FILE) and answers every request in
one of these ways:

- `huge`: a create-only PUT is refused as "already exists" (412); a HEAD of that key
  announces the length the PUT had, so that the object looks like it could be the one
  coffer tried to write; the GET then announces 10**15 bytes and sends a few.
- `silent`: reads each request and never answers.
- `endless`: every listing (ListObjectsV2 or ListObjectVersions) is truncated, with a
  new page of 1000 keys and a new continuation token, for ever.
- `garbage`: every listing answers 200 with bytes that are not XML, terminal escapes
  and invalid UTF-8 among them.
"""

import itertools
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

MODE = sys.argv[1]
PUT_LENGTHS = {}
PAGES = itertools.count()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def silent(self):
        self.body()
        time.sleep(3600)

    def do_PUT(self):
        if MODE == "silent":
            return self.silent()
        data = self.body()
        PUT_LENGTHS[self.path.split("?")[0]] = len(data)
        self.answer(412, b"<Error><Code>PreconditionFailed</Code></Error>")

    def do_HEAD(self):
        if MODE == "silent":
            return self.silent()
        n = PUT_LENGTHS.get(self.path.split("?")[0])
        if n is None:
            return self.answer(404, headers=[("Content-Length", "0")])
        self.answer(200, headers=[("Content-Length", str(n)), ("ETag", '"x"'),
                                  ("Last-Modified", "Mon, 07 Dec 2026 00:00:00 GMT")])

    def do_GET(self):
        if MODE == "silent":
            return self.silent()
        if "list-type=2" in self.path or "versions" in self.path:
            return self.listing()
        if MODE == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**15))
            self.send_header("Last-Modified", "Mon, 07 Dec 2026 00:00:00 GMT")
            self.end_headers()
            # Several pieces, so that a client collecting the body sizes its buffer
            # from the announcement once the second piece comes.
            for _ in range(16):
                self.wfile.write(b"x" * 4096)
                self.wfile.flush()
                time.sleep(0.01)
            self.close_connection = True
            return
        self.answer(404, b"<Error><Code>NoSuchKey</Code></Error>")

    def listing(self):
        page = next(PAGES)
        if MODE == "garbage":
            return self.answer(200, b"\x1b[2J\x1b]0;owned\x07<ListBucketResult><IsTruncated>\xff\x00maybe" * 64)
        if MODE != "endless":
            xml = '<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>'
            return self.answer(200, xml.encode())
        versions = "versions" in self.path
        entries = []
        for i in range(1000):
            key = f"coffer/junk/{page:07d}-{i:04d}"
            if versions:
                entries.append(f"<Version><Key>{key}</Key><VersionId>v{page}-{i}</VersionId><IsLatest>true</IsLatest>"
                               f"<LastModified>2026-12-07T00:00:00.000Z</LastModified><Size>1</Size></Version>")
            else:
                entries.append(f"<Contents><Key>{key}</Key><LastModified>2026-12-07T00:00:00.000Z</LastModified>"
                               f"<Size>1</Size></Contents>")
        if versions:
            xml = (f'<?xml version="1.0"?><ListVersionsResult><IsTruncated>true</IsTruncated>'
                   f"<NextKeyMarker>k{page}</NextKeyMarker><NextVersionIdMarker>v{page}</NextVersionIdMarker>"
                   f'{"".join(entries)}</ListVersionsResult>')
        else:
            xml = (f'<?xml version="1.0"?><ListBucketResult><IsTruncated>true</IsTruncated>'
                   f"<NextContinuationToken>t{page}</NextContinuationToken>{''.join(entries)}</ListBucketResult>")
        self.answer(200, xml.encode())

    do_POST = do_PUT
    do_DELETE = do_GET


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server(("127.0.0.1", 0), Handler)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
threading.Thread(target=server.serve_forever, daemon=True).start()
while True:
    time.sleep(3600)
