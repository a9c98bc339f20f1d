"""The RayService target's read-modify-patch logic on constructed RayService objects.

No Kubernetes API server can run on these machines: ``FakeKubernetesApi`` stands in for the
API server's CustomObjectsApi (get/patch with resourceVersion conflicts), and is named as such.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from serving.config import build_serve_config, gateway_user_config
from serving.rollout import RayServiceTarget, TargetError, rayservice_patch


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

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
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


def test_patch_changes_only_the_gateway_traffic_and_carries_resource_version():
    obj = rayservice("42")
    patch = rayservice_patch(obj, "minilm", 1, 2, 25.0, 0.1)
    assert patch["metadata"] == {"resourceVersion": "42"}
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
    target.apply("minilm", 1, 2, 50.0, 0.1)
    assert len(api.patches) == 3 and api.gets == 3
    t = target.read("minilm")
    assert (t.stable, t.canary, t.canary_weight) == (1, 2, 50.0)


def test_endless_conflicts_give_up_with_a_clear_error():
    api = FakeKubernetesApi(rayservice(), interfere=100)
    with pytest.raises(TargetError, match="kept changing; gave up after 5 conflicts"):
        RayServiceTarget(api, "ml", "optiserve").apply("minilm", 1, 2, 50.0, 0.1)
    assert gateway_user_config(yaml.safe_load(api.obj["spec"]["serveConfigV2"]))["models"][
        "minilm"].get("canary") is None  # nothing half-applied


def test_invalid_splits_and_unknown_models_are_refused_before_patching():
    api = FakeKubernetesApi(rayservice())
    target = RayServiceTarget(api, "ml", "optiserve")
    with pytest.raises(TargetError, match="canary .*must be one of the served versions"):
        target.apply("minilm", 1, 9, 10.0, 0.1)
    with pytest.raises(TargetError, match="model 'other' is not served"):
        target.apply("other", 1, 2, 10.0, 0.1)
    assert api.patches == []
