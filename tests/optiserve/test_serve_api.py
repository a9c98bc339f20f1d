"""The Serve REST API client against real local HTTP servers: a dashboard that comes up a
moment after the client's first try (``optiserve serve`` answers inference ~2 s before its
dashboard) is waited for; one that never comes up, and an HTTP error, are reported as such."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from optiserve.serve_api import ServeAPI, ServeAPIError
from tests.support.harness import free_port


class _Apps(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"applications": {"a": {"status": "RUNNING"}}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve_later(port: int, delay_s: float, handler=_Apps) -> list[HTTPServer]:
    started: list[HTTPServer] = []

    def run():
        time.sleep(delay_s)
        srv = HTTPServer(("127.0.0.1", port), handler)
        started.append(srv)
        srv.serve_forever(poll_interval=0.05)

    threading.Thread(target=run, daemon=True).start()
    return started


def test_a_dashboard_that_comes_up_a_moment_later_is_waited_for():
    port = free_port()
    started = _serve_later(port, 1.0)
    try:
        details = ServeAPI(f"http://127.0.0.1:{port}", timeout_s=2, refused_wait_s=10).details()
        assert details["applications"]["a"]["status"] == "RUNNING"
    finally:
        for srv in started:
            srv.shutdown()


def test_a_dashboard_that_never_comes_up_is_reported_after_the_wait():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ServeAPIError, match="unreachable"):
        ServeAPI(f"http://127.0.0.1:{port}", timeout_s=2, refused_wait_s=1.0).details()
    assert 1.0 <= time.monotonic() - t0 < 5


def test_an_http_error_is_not_retried():
    class Refusing(_Apps):
        status = 503

    port = free_port()
    started = _serve_later(port, 0.0, Refusing)
    while not started:
        time.sleep(0.01)
    try:
        t0 = time.monotonic()
        with pytest.raises(ServeAPIError, match="answered 503"):
            ServeAPI(f"http://127.0.0.1:{port}", refused_wait_s=10).details()
        assert time.monotonic() - t0 < 3
    finally:
        started[0].shutdown()
