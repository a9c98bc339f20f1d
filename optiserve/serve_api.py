"""Client of Ray Serve's declarative REST API (``/api/serve/applications/`` on the dashboard).

This is the path KubeRay uses for a RayService's ``serveConfigV2``; a config whose only change is
a deployment's ``user_config`` is applied in place (``reconfigure``), without restarting replicas.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class ServeAPIError(RuntimeError):
    """The Serve REST API could not be reached or refused the request."""


def _token() -> str | None:
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class ServeAPI:
    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float = 10.0,
                 refused_wait_s: float = 10.0):
        self.address = address.rstrip("/")
        self.timeout_s = timeout_s
        #: how long a refused connection is tried again: ``optiserve serve`` answers inference
        #: (and /v2/health/ready) ~2 s before its dashboard, which serves this API, is up, and
        #: a restarting head refuses for a moment too. A refused connection never reached the
        #: server, so retrying it is safe for every method.
        self.refused_wait_s = refused_wait_s

    def _send(self, method: str, path: str, doc: dict | None = None) -> dict | None:
        data = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(self.address + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        token = _token()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        deadline = time.monotonic() + self.refused_wait_s
        while True:
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    body = resp.read()
                break
            except urllib.error.URLError as e:
                if not (isinstance(getattr(e, "reason", None), ConnectionRefusedError)
                        and time.monotonic() < deadline):
                    raise
            time.sleep(0.25)
        return json.loads(body) if body.strip() else None

    def _request(self, method: str, path: str, doc: dict | None = None) -> dict | None:
        try:
            return self._send(method, path, doc)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:2000]
            raise ServeAPIError(f"Serve API {method} {path} answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServeAPIError(f"Serve API at {self.address} is unreachable ({reason}); is the "
                                "Ray dashboard running?") from None

    def details(self) -> dict:
        """Ray's ServeInstanceDetails: applications, their status and deployed configs."""
        return self._request("GET", "/api/serve/applications/") or {}

    def deployed_config(self) -> dict:
        """The declarative config currently deployed (what a PUT would re-apply)."""
        d = self.details()
        # an application being deleted is no longer part of the config (a PUT dropped it)
        apps = [a["deployed_app_config"] for a in (d.get("applications") or {}).values()
                if a.get("deployed_app_config") and a.get("status") != "DELETING"]
        if not apps:
            raise ServeAPIError("no application was deployed through the declarative API")
        doc = {"applications": apps}
        if d.get("proxy_location"):
            doc["proxy_location"] = d["proxy_location"]
        http = d.get("http_options") or {}
        if http:
            doc["http_options"] = {k: http[k] for k in ("host", "port") if k in http}
        return doc

    def apply(self, doc: dict) -> None:
        """PUT a whole declarative config."""
        self._request("PUT", "/api/serve/applications/", doc)

    def wait_running(self, names: list[str], timeout_s: float = 300.0,
                     on_status=lambda _s: None) -> dict:
        """Wait until the named applications are RUNNING; raise with Ray's message on failure."""
        return wait_running(self.details, names, timeout_s, on_status)


def wait_running(details, names: list[str], timeout_s: float = 300.0,
                 on_status=lambda _s: None) -> dict:
    """Wait until the named applications are RUNNING in ``details()`` (a ServeInstanceDetails
    dict: the REST API's GET, or the controller's own); raise with Ray's message on failure."""
    deadline = time.monotonic() + timeout_s
    last = {}
    while time.monotonic() < deadline:
        try:
            apps = details().get("applications") or {}
        except ServeAPIError:
            apps = {}
        # the controller's dict holds ApplicationStatus members, the REST API's JSON strings
        last = {n: getattr(status, "value", status) for n, status in (
            (n, (apps.get(n) or {}).get("status", "NOT_STARTED")) for n in names)}
        on_status(last)
        failed = {n: apps[n].get("message") or "" for n, s in last.items()
                  if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise ServeAPIError("deployment failed: " + "; ".join(
                f"{n}: {m.strip()[-1500:]}" for n, m in failed.items()))
        if all(s == "RUNNING" for s in last.values()):
            return apps
        time.sleep(0.1)
    raise ServeAPIError(f"applications not running after {timeout_s:.0f} s: {last}")
