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
- ``GET`` of an object put in with ``add`` (``add_configmap``, ``add_secret``...): namespaced
  (``/api/v1/namespaces/<ns>/<plural>/<name>``, ``/apis/<g>/<v>/namespaces/<ns>/<plural>/<name>``)
  or cluster-scoped (``/api/v1/namespaces/<name>``, ``/apis/<g>/<v>/<plural>/<name>``);
- ``GET`` of a collection (in a namespace or across all): a list of those objects, filtered by
  a ``labelSelector`` of ``k=v`` pairs (Helm reads its release records so, for ``upgrade``);
- anything else: a 404 ``Status``, as the API server answers for a missing object.

It holds no state beyond what a test adds and accepts no writes (a POST/PUT/PATCH/DELETE is
405): nothing is installed, Helm only renders against it (``--dry-run=server``).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
from urllib.parse import parse_qs
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: group version -> (plural, kind, namespaced) of the resources the chart renders
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [("configmaps", "ConfigMap", True), ("pods", "Pod", True),
           ("serviceaccounts", "ServiceAccount", True), ("services", "Service", True),
           ("secrets", "Secret", True), ("persistentvolumeclaims", "PersistentVolumeClaim", True),
           ("namespaces", "Namespace", False)],
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
                                 ("prometheusrules", "PrometheusRule", True),
                                 ("prometheuses", "Prometheus", True)],
    "admissionregistration.k8s.io/v1": [
        ("validatingadmissionpolicies", "ValidatingAdmissionPolicy", False),
        ("validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding", False)],
}
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}
#: /api/v1/... or /apis/<group>/<version>/..., then [namespaces/<ns>/]<plural>[/<name>]
_PATH = re.compile(r"/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))"
                   r"(?:/namespaces/(?P<ns>[^/]+))?(?:/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?)?")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class StandInApiServer:
    """``with StandInApiServer() as api:`` serves on a free port; ``api.kubeconfig(path)``
    writes a kubeconfig pointing at it (pass it as KUBECONFIG)."""

    def __init__(self, without: tuple[str, ...] = ()):
        """``without``: group versions this server does not serve (a cluster without CRDs)."""
        self.resources = {gv: r for gv, r in RESOURCES.items() if gv not in without}
        #: (group version, plural, namespace or "", name) -> object
        self.objects: dict[tuple[str, str, str, str], dict] = {}
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
                path, _, query = self.path.partition("?")
                outer.requests.append(("GET", path))
                self._send(*outer.answer(path, parse_qs(query)))

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

    def add(self, obj: dict) -> dict:
        """Put an object in (apiVersion, kind, metadata.name, metadata.namespace if namespaced)."""
        gv, kind = obj["apiVersion"], obj["kind"]
        (plural, namespaced), = [(p, n) for p, k, n in RESOURCES[gv] if k == kind]
        meta = obj.setdefault("metadata", {})
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("labels", {})
        ns = meta["namespace"] if namespaced else ""
        self.objects[(gv, plural, ns, meta["name"])] = obj
        return obj

    def add_configmap(self, namespace: str, name: str, data: dict[str, str],
                      labels: dict[str, str] | None = None) -> None:
        self.add({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                  "data": data})

    def add_secret(self, namespace: str, name: str, data: dict[str, str],
                   labels: dict[str, str] | None = None) -> None:
        """``data`` as plain strings (base64-encoded here, as the API server returns them)."""
        self.add({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def add_pvc(self, namespace: str, name: str) -> None:
        self.add({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                  "metadata": {"name": name, "namespace": namespace},
                  "spec": {"accessModes": ["ReadOnlyMany"],
                           "resources": {"requests": {"storage": "10Gi"}}},
                  "status": {"phase": "Bound"}})

    def add_namespace(self, name: str) -> None:
        self.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": name, "labels": {"kubernetes.io/metadata.name": name}}})

    def add_helm_release(self, namespace: str, release: str, manifest: str, chart: dict,
                         config: dict, version: int = 1) -> None:
        """A deployed release as Helm's Secret storage driver records it (sh.helm.release.v1.*:
        the release as JSON, gzipped and base64-encoded into data.release), so ``helm upgrade``
        finds a previous release."""
        record = {"name": release, "namespace": namespace, "version": version,
                  "info": {"status": "deployed", "first_deployed": "2026-01-01T00:00:00Z",
                           "last_deployed": "2026-01-01T00:00:00Z", "description": "stand-in"},
                  "chart": {"metadata": chart, "templates": [], "values": {}},
                  "config": config, "manifest": manifest}
        blob = base64.b64encode(gzip.compress(json.dumps(record).encode())).decode()
        self.add({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                  "metadata": {"name": f"sh.helm.release.v1.{release}.v{version}",
                               "namespace": namespace,
                               "labels": {"owner": "helm", "name": release,
                                          "status": "deployed", "version": str(version)}},
                  "data": {"release": base64.b64encode(blob.encode()).decode()}})

    def answer(self, path: str, query: dict | None = None) -> tuple[int, dict]:
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
        m = _PATH.fullmatch(path)
        if m:
            gv = m.group("core") or m.group("gv")
            ns, plural, name = m.group("ns") or "", m.group("plural"), m.group("name")
            if plural is None and ns:  # /api/v1/namespaces/<name>: cluster-scoped Namespace
                plural, name, ns = "namespaces", ns, ""
            if name is not None:
                obj = self.objects.get((gv, plural, ns, name))
                if obj is not None:
                    return 200, obj
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            if plural is not None:
                wanted = dict(kv.split("=", 1) for sel in (query or {}).get("labelSelector", [])
                              for kv in sel.split(",") if "=" in kv)
                items = [o for (g, p, n, _), o in sorted(self.objects.items())
                         if g == gv and p == plural and (not ns or n == ns)
                         and wanted.items() <= o["metadata"].get("labels", {}).items()]
                kind = {p: k for p, k, _ in RESOURCES.get(gv, [])}.get(plural, "Object")
                return 200, {"kind": f"{kind}List", "apiVersion": gv,
                             "metadata": {"resourceVersion": "1"}, "items": items}
        return 404, _status(404, "NotFound", f"{path} not found")

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
