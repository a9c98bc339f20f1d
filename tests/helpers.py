"""Small helpers shared by tests: run the real CLI, build manifests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.harness import PrometheusProcess, ServeProcess, free_port  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: float = 900, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``optiserve`` as a user would, in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "optiserve", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=cwd or ROOT,
    )


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, dict, bytes]:
    """One raw HTTP request: (status, lower-cased headers, body)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body,
                     headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def serve_api(base: str, method: str = "GET", doc: dict | None = None) -> dict | None:
    """Ray Serve's declarative REST API, as the rollout controller and KubeRay use it."""
    from optiserve.serve_api import ServeAPI

    api = ServeAPI(base)
    if method == "GET":
        return api.details()
    api.apply(doc)
    return None
