"""The RayService target's read-modify-patch logic on constructed RayService objects, and the
per-model ConfigMap state store.

No Kubernetes API server can run on these machines: ``FakeKubernetesApi`` stands in for the
API server's CustomObjectsApi (get/patch with resourceVersion conflicts) and ``FakeCoreApi`` for
its ConfigMap endpoints (read/create/replace with resourceVersion conflicts), named as such.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from serving.config import build_serve_config, gateway_user_config
from optiserve.rollout import (
    ConfigMapStateStore, RayServiceTarget, RolloutSpec, RolloutState, StaleState, TargetError,
    rayservice_patch,
)
from optiserve.rollout.state import Split


def rayservice(resource_version: str = "100") -> dict:
    doc = build_serve_config("/models", [("minilm", 1), ("minilm", 2)])
    gateway_user_config(doc)["models"]["minilm"]["stable"] = 1
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "optiserve", "namespace": "ml", "resourceVersion": resource_version},
            "spec": {"serveConfigV2": yaml.safe_dump(doc)}}


class ApiException(Exception):
    def __init__(self, status: int, reason: str = ""):
        super().__init__(reason)
        self.status, self.reason = status, reason


class FakeKubernetesApi:
    """Stands in for the API server (CustomObjectsApi): stores one RayService, applies merge
    patches, answers 409 when a patch's resourceVersion is stale. ``interfere`` simulates
    another writer changing the object between our read and our patch."""

    def __init__(self, obj: dict, interfere: int = 0):
        self.obj, self.interfere, self.patches, self.gets = obj, interfere, [], 0

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == ("ray.io", "v1", "rayservices")
        self.gets += 1
        return copy.deepcopy(self.obj)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body,
                                       **kw):
        assert kw["_content_type"] == "application/apply-patch+yaml" and kw["force"] is True
        self.patches.append(body)
        if self.interfere > 0:
            self.interfere -= 1
            self.obj["metadata"]["resourceVersion"] = str(
                int(self.obj["metadata"]["resourceVersion"]) + 1)
        if body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise ApiException(409, "Conflict")
        self.obj["spec"].update(body["spec"])
        self.obj["metadata"]["resourceVersion"] = str(
            int(self.obj["metadata"]["resourceVersion"]) + 1)


def split(stable=1, canary=2, weight=50.0, shadow=0.1, routed=(1, 2), deployed=(1, 2)):
    return Split(stable=stable, canary=canary, weight=weight, shadow=shadow, routed=routed,
                 deployed=deployed)


def test_patch_changes_only_the_gateway_traffic_and_carries_resource_version():
    obj = rayservice("42")
    patch = rayservice_patch(obj, "minilm", split(weight=25.0))
    assert patch["metadata"] == {"name": "optiserve", "resourceVersion": "42"}
    before, after = yaml.safe_load(obj["spec"]["serveConfigV2"]), yaml.safe_load(
        patch["spec"]["serveConfigV2"])
    route = gateway_user_config(after)["models"]["minilm"]
    assert (route["stable"], route["canary"], route["canary_weight"], route["shadow"]) == (
        1, 2, 25.0, 0.1)
    gateway_user_config(after)["models"]["minilm"] = gateway_user_config(before)["models"][
        "minilm"]
    assert after == before  # nothing else in the serve config changed


def test_conflicts_are_retried_by_reading_again():
    api = FakeKubernetesApi(rayservice(), interfere=2)
    target = RayServiceTarget(api, "ml", "optiserve")
    target.apply("minilm", split())
    assert len(api.patches) == 3 and api.gets == 3
    t = target.read("minilm")
    assert (t.stable, t.canary, t.canary_weight) == (1, 2, 50.0)


def test_endless_conflicts_give_up_with_a_clear_error():
    api = FakeKubernetesApi(rayservice(), interfere=100)
    with pytest.raises(TargetError, match="kept changing; gave up after 5 conflicts"):
        RayServiceTarget(api, "ml", "optiserve").apply("minilm", split())
    assert gateway_user_config(yaml.safe_load(api.obj["spec"]["serveConfigV2"]))["models"][
        "minilm"].get("canary") is None  # nothing half-applied


def test_invalid_splits_and_unknown_models_are_refused_before_patching():
    api = FakeKubernetesApi(rayservice())
    target = RayServiceTarget(api, "ml", "optiserve")
    with pytest.raises(TargetError, match="must be routed versions"):
        target.apply("minilm", split(canary=9))
    with pytest.raises(TargetError, match="would be routed with no application"):
        target.apply("minilm", split(routed=(1, 2, 3)))
    with pytest.raises(TargetError, match="model 'other' is not served"):
        target.apply("other", split())
    assert api.patches == []


def test_a_canary_is_deployed_as_a_copy_of_stable_and_retired_versions_removed():
    obj = rayservice()
    doc = yaml.safe_load(obj["spec"]["serveConfigV2"])
    for app in doc["applications"]:
        if app["name"] == "minilm-v1":
            app["deployments"][0]["num_replicas"] = 3
            app["deployments"][0]["user_config"] = {"intra_op_threads": 2}
    obj["spec"]["serveConfigV2"] = yaml.safe_dump(doc)
    api = FakeKubernetesApi(obj)
    target = RayServiceTarget(api, "ml", "optiserve")
    target.apply("minilm", split(canary=None, weight=0, shadow=0, routed=(1,),
                                 deployed=(1, 2, 5)))
    after = target.config()
    v5 = next(a for a in after["applications"] if a["name"] == "minilm-v5")
    assert v5["args"] == {"repository": "/models", "model": "minilm", "version": 5}
    assert v5["deployments"][0]["name"] == "minilm-v5"
    assert v5["deployments"][0]["num_replicas"] == 3  # stable's resources and threads
    assert v5["deployments"][0]["user_config"] == {"intra_op_threads": 2, "cpus": 1}
    t = target.read("minilm")
    assert (t.versions, t.deployed) == ((1,), (1, 2, 5))  # deployed, not routed yet
    target.apply("minilm", split(stable=5, canary=None, weight=0, shadow=0, routed=(5,),
                                 deployed=(5,)))
    t = target.read("minilm")
    assert (t.stable, t.versions, t.deployed) == (5, (5,), (5,))
    assert {a["name"] for a in target.config()["applications"]} == {"optiserve", "minilm-v5"}


def test_application_status_comes_from_kuberays_active_service_status():
    obj = rayservice()
    obj["status"] = {"activeServiceStatus": {"applicationStatuses": {
        "minilm-v2": {"status": "DEPLOY_FAILED", "message": "  no such version  "}}}}
    target = RayServiceTarget(FakeKubernetesApi(obj), "ml", "optiserve")
    assert target.app_status("minilm", 2) == ("DEPLOY_FAILED", "no such version")
    assert target.app_status("minilm", 7) == ("NOT_STARTED", "")
    # why a replica is not scheduled is said on the deployment (KubeRay copies Serve's)
    obj["status"]["activeServiceStatus"]["applicationStatuses"]["minilm-v3"] = {
        "status": "DEPLOYING", "serveDeploymentStatuses": {"minilm-v3": {
            "status": "UPDATING", "message": "has 1 replicas that have taken more than 10s to be "
                                             "scheduled. Resources required: {'CPU': 1.75}"}}}
    status, message = target.app_status("minilm", 3)
    assert status == "DEPLOYING" and "to be scheduled" in message and "1.75" in message


class FakeCoreApi:
    """Stands in for the API server's ConfigMap endpoints (CoreV1Api): read, create and
    replace, with 404 for a missing object and 409 for a stale resourceVersion or a create of
    an existing name."""

    def __init__(self):
        self.objects: dict[str, object] = {}
        self.reads: list[str] = []

    def _exc(self, status):
        from kubernetes.client.rest import ApiException

        return ApiException(status=status)

    def read_namespaced_config_map(self, name, namespace):
        self.reads.append(name)
        if name not in self.objects:
            raise self._exc(404)
        return copy.deepcopy(self.objects[name])

    def create_namespaced_config_map(self, namespace, body):
        if body.metadata.name in self.objects:
            raise self._exc(409)
        body.metadata.resource_version = "1"
        self.objects[body.metadata.name] = copy.deepcopy(body)

    def replace_namespaced_config_map(self, name, namespace, body):
        if self.objects[name].metadata.resource_version != body.metadata.resource_version:
            raise self._exc(409)
        body = copy.deepcopy(body)
        body.metadata.resource_version = str(int(body.metadata.resource_version) + 1)
        self.objects[name] = body


def test_each_model_has_its_own_configmap_and_saves_refuse_stale_reads():
    api = FakeCoreApi()
    store = ConfigMapStateStore(api, "ml", "rel-rollout-state",
                                models=lambda: ["minilm", "My_Model", "absent"])

    def state(model):
        return RolloutState(spec=RolloutSpec(model=model, stable=1, canary=2))

    a = store.save(state("minilm"))
    b = store.save(state("My_Model"))
    assert set(api.objects) == {"rel-rollout-state-minilm",
                                "rel-rollout-state-my-model-" + api_hash("My_Model")}
    cm = api.objects["rel-rollout-state-minilm"]
    assert cm.metadata.labels == {"app.kubernetes.io/managed-by": "optiserve-rollout-controller",
                                  "optiserve.io/model": "minilm"}
    states = [store.load(m) for m in store.models()]  # served models; some have no rollout
    assert [st.model for st in states if st is not None] == ["My_Model", "minilm"]
    store.save(b)  # another model's save does not conflict
    a2 = store.save(a)
    with pytest.raises(StaleState):
        store.save(a)  # based on a read older than a2
    assert store.load("minilm").revision == a2.revision
    with pytest.raises(StaleState):  # two first saves of one model: the second is refused
        store.save(state("absent").model_copy(update={"revision": 0}))
        store.save(state("absent").model_copy(update={"revision": 0}))


def api_hash(model: str) -> str:
    import hashlib

    return hashlib.sha256(model.encode()).hexdigest()[:8]


def test_the_split_is_applied_server_side_with_its_own_field_manager_on_one_field():
    """What the real Kubernetes client sends (to a local HTTP server recording the request, the
    API server standing in): a server-side apply (content type application/apply-patch+yaml)
    with the controller's own field manager, forced, of spec.serveConfigV2 alone (and the
    resourceVersion read, as precondition). So after a rollout only that field is the
    controller's, and Helm's own fields stay Helm's."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    from kubernetes import client

    from optiserve.rollout.targets import FIELD_MANAGER

    obj = rayservice("42")
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._reply(obj)

        def do_PATCH(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            url = urlsplit(self.path)
            seen.append((url.path, parse_qs(url.query), self.headers["Content-Type"],
                         json.loads(body)))
            self._reply(obj)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        api = client.CustomObjectsApi(client.ApiClient(cfg))
        RayServiceTarget(api, "ml", "optiserve").apply("minilm", split(weight=25.0))
    finally:
        server.shutdown()
        server.server_close()
    ((path, query, content_type, body),) = seen
    assert path == "/apis/ray.io/v1/namespaces/ml/rayservices/optiserve"
    assert content_type == "application/apply-patch+yaml"
    assert query == {"fieldManager": [FIELD_MANAGER], "force": ["true"]}
    assert FIELD_MANAGER == "optiserve-rollout-controller"
    assert body["apiVersion"] == "ray.io/v1" and body["kind"] == "RayService"
    assert body["metadata"] == {"name": "optiserve", "resourceVersion": "42"}
    assert list(body["spec"]) == ["serveConfigV2"]
    route = gateway_user_config(yaml.safe_load(body["spec"]["serveConfigV2"]))["models"][
        "minilm"]
    assert route["canary_weight"] == 25.0
