"""A stand-in for the Kubernetes API server, just enough for Helm's ``lookup`` to be tested.

No API server can run in the test environment, and Helm's ``lookup`` only asks one when it
renders against a cluster (``helm template --dry-run=server``, install, upgrade). This HTTP
server on 127.0.0.1 answers what the real helm binary's client-go requests there (found by
experiment; every request is recorded in ``requests`` so a test can check):

- ``GET /version``: the server version (Helm's reachability check and ``.Capabilities``);
- ``GET /api``, ``GET /apis``: legacy discovery (client-go asks for aggregated discovery first and
  falls back to these plain lists when the answer is not of that content type);
- ``GET /api/v1``, ``GET /apis/<group>/<version>``: the resources of each group version, so Helm
  can map every kind the chart renders to a REST resource (it refuses a manifest whose kinds it
  cannot map, like a cluster without the CRDs);
- ``GET /api/v1/namespaces/<ns>/configmaps/<name>``: a ConfigMap put in ``configmaps``;
- anything else: a 404 ``Status``, as the API server answers for a missing object.

It holds no state beyond ``configmaps`` and accepts no writes (a POST/PUT/PATCH/DELETE is 405).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: group version -> (plural, kind, namespaced) of the resources the chart renders
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [("configmaps", "ConfigMap", True), ("pods", "Pod", True),
           ("serviceaccounts", "ServiceAccount", True), ("services", "Service", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True),
                                     ("rolebindings", "RoleBinding", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True),
                             ("ingresses", "Ingress", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "ray.io/v1": [("rayservices", "RayService", True)],
    "gateway.networking.k8s.io/v1": [("httproutes", "HTTPRoute", True)],
    "monitoring.coreos.com/v1": [("podmonitors", "PodMonitor", True),
                                 ("servicemonitors", "ServiceMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
}
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}
_CONFIGMAP = re.compile(r"/api/v1/namespaces/([^/]+)/configmaps/([^/]+)")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class StandInApiServer:
    """``with StandInApiServer() as api:`` serves on a free port; ``api.kubeconfig(path)``
    writes a kubeconfig pointing at it (pass it as KUBECONFIG)."""

    def __init__(self, without: tuple[str, ...] = ()):
        """``without``: group versions this server does not serve (a cluster without CRDs)."""
        self.resources = {gv: r for gv, r in RESOURCES.items() if gv not in without}
        self.configmaps: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                outer.requests.append(("GET", path))
                self._send(*outer.answer(path))

            def _refuse(self):
                outer.requests.append((self.command, self.path.split("?", 1)[0]))
                self._send(405, _status(405, "MethodNotAllowed", "the stand-in is read-only"))

            do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_configmap(self, namespace: str, name: str, data: dict[str, str],
                      labels: dict[str, str] | None = None) -> None:
        self.configmaps[(namespace, name)] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                         "resourceVersion": "1"},
            "data": data}

    def answer(self, path: str) -> tuple[int, dict]:
        if path == "/version":
            return 200, VERSION
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = {}
            for gv in self.resources:
                if "/" in gv:
                    group, version = gv.split("/")
                    groups.setdefault(group, []).append(
                        {"groupVersion": gv, "version": version})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": vs, "preferredVersion": vs[0]}
                for g, vs in groups.items()]}
        gv = "v1" if path == "/api/v1" else path.removeprefix("/apis/")
        if gv in self.resources:
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                         "resources": [{"name": plural, "singularName": kind.lower(),
                                        "namespaced": namespaced, "kind": kind,
                                        "verbs": ["get", "list"]}
                                       for plural, kind, namespaced in self.resources[gv]]}
        m = _CONFIGMAP.fullmatch(path)
        if m and (m.group(1), m.group(2)) in self.configmaps:
            return 200, self.configmaps[(m.group(1), m.group(2))]
        what = f'configmaps "{m.group(2)}"' if m else path
        return 404, _status(404, "NotFound", f"{what} not found")

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "stand-in", "user": {}}],
            "contexts": [{"name": "stand-in", "context": {
                "cluster": "stand-in", "user": "stand-in", "namespace": namespace}}],
            "current-context": "stand-in"}))
        return path

    def __enter__(self) -> StandInApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
