"""S3 requests are retried by the AWS SDK's standard strategy: a server that answers 503 SlowDown sees each
request AWS_MAX_ATTEMPTS times (pyarrow alone: 3) before the caller gets the error."""

from __future__ import annotations

import http.server
import threading

import pytest

from ecg import storage

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


@pytest.fixture()
def throttling_server():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _throttle(self):
            seen.append(self.path)
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOW_DOWN)

        do_GET = do_HEAD = do_PUT = _throttle

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_s3_requests_are_retried_then_fail_naming_the_error(throttling_server, monkeypatch):
    endpoint, seen = throttling_server
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")  # pyarrow alone would try 3 times
    with pytest.raises(OSError, match="SlowDown|503|reduce your request rate"):
        storage.read_bytes("s3://bucket/shard.parquet")
    assert len(seen) == 4 and len(set(seen)) == 1, seen  # one request, attempted four times
