"""The chart's ValidatingAdmissionPolicy, evaluated as the API server evaluates it: its
matchConditions and validations compiled and run by a real CEL implementation (PyPI
common-expression-language) on the admission request of each change, with `object`,
`oldObject` and `request` as the API server binds them. No API server runs here; the policy
objects themselves are checked against Kubernetes' schemas in test_chart.py."""

from __future__ import annotations

import copy
import json

import cel
import pytest
import yaml

from optiserve.rollout.targets import rayservice_patch
from optiserve.rollout.state import Split

from .conftest import helm_template, only, rayservice

NS = "serving"
CONTROLLER = f"system:serviceaccount:{NS}:osv-optiserve-rollout-controller"


def _policy(objs: list[dict]) -> tuple[dict, dict]:
    (policy,) = only(objs, "ValidatingAdmissionPolicy")
    (binding,) = only(objs, "ValidatingAdmissionPolicyBinding")
    return policy, binding


def _request(operation: str, resource: str, name: str, user: str, sub: str = "") -> dict:
    group = "ray.io" if resource == "rayservices" else ""
    return {"operation": operation, "name": name, "namespace": NS, "subResource": sub,
            "resource": {"group": group, "version": "v1", "resource": resource},
            "kind": {"group": group, "version": "v1",
                     "kind": "RayService" if resource == "rayservices" else "ConfigMap"},
            "userInfo": {"username": user, "groups": ["system:serviceaccounts"]},
            "dryRun": False}


def _matches_rules(policy: dict, request: dict) -> bool:
    """matchConstraints.resourceRules, as the API server matches them."""
    res = request["resource"]
    full = res["resource"] + (f"/{request['subResource']}" if request["subResource"] else "")
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
        if (res["group"] in rule["apiGroups"] and request["operation"] in rule["operations"]
                and full in rule["resources"]
                and ("*" in rule["apiVersions"] or res["version"] in rule["apiVersions"])):
            return True
    return False


def admit(policy: dict, request: dict, obj: dict | None, old: dict | None) -> list[str]:
    """The messages of the validations that deny the request (empty: admitted). A validation
    that errors denies it too (failurePolicy Fail)."""
    assert policy["spec"]["failurePolicy"] == "Fail"
    if not _matches_rules(policy, request):
        return []
    ctx = cel.Context()
    ctx.add_variable("request", request)
    ctx.add_variable("object", obj)
    ctx.add_variable("oldObject", old)
    for cond in policy["spec"].get("matchConditions", []):
        if cel.evaluate(cond["expression"], ctx) is not True:
            return []
    denied = []
    for v in policy["spec"]["validations"]:
        try:
            ok = cel.evaluate(v["expression"], ctx)
        except Exception as e:  # noqa: BLE001 (an evaluation error denies, failurePolicy Fail)
            ok = f"error: {e}"
        if ok is not True:
            denied.append(v["message"])
    return denied


@pytest.fixture(scope="module")
def objs(helm):
    return helm_template(helm)


@pytest.fixture(scope="module")
def live(objs):
    """The RayService as the API server holds it (with the metadata it adds)."""
    rs = copy.deepcopy(rayservice(objs))
    rs["metadata"].update({"namespace": NS, "resourceVersion": "7", "uid": "u-1",
                           "generation": 3})
    return rs


def _merge(obj: dict, patch: dict) -> dict:
    """A JSON merge patch (RFC 7386), as the API server applies one."""
    out = copy.deepcopy(obj)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _update(policy, old, change, user=CONTROLLER, sub=""):
    new = copy.deepcopy(old)
    change(new)
    return admit(policy, _request("UPDATE", "rayservices", old["metadata"]["name"], user, sub),
                 new, old)


def test_the_controllers_own_patch_is_admitted(objs, live):
    """The patch optiserve.rollout.targets sends for a new split: only serveConfigV2 changes."""
    policy, binding = _policy(objs)
    patch = rayservice_patch(live, "minilm", Split(stable=1, canary=2, weight=25, routed=(1, 2), deployed=(1, 2)))
    new = _merge(live, patch)
    assert new["spec"]["serveConfigV2"] != live["spec"]["serveConfigV2"]
    req = _request("UPDATE", "rayservices", "osv-optiserve", CONTROLLER)
    assert admit(policy, req, new, live) == []
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NS}}


def _ray_container(rs: dict) -> dict:
    return rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]


DENIED_CHANGES = {
    "image": lambda rs: _ray_container(rs).update(image="evil.example.com/miner:latest"),
    "volumes": lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    "service account": lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][
        "template"]["spec"].update(serviceAccountName="cluster-admin-sa"),
    "another field": lambda rs: rs["spec"].update(rayClusterDeletionDelaySeconds=1),
    "a new spec field": lambda rs: rs["spec"].update(suspend=True),
    "a removed spec field": lambda rs: rs["spec"].pop("excludeHeadPodFromServeSvc"),
    "labels": lambda rs: rs["metadata"]["labels"].update(team="x"),
    "annotations": lambda rs: rs["metadata"].update(annotations={"ray.io/ft-enabled": "true"}),
    "runtime_env in the serve config": lambda rs: rs["spec"].update(
        serveConfigV2=rs["spec"]["serveConfigV2"] + "\nruntime_env: {pip: [evil]}\n"),
}


@pytest.mark.parametrize("what", sorted(DENIED_CHANGES))
def test_the_controller_cannot_change_anything_else(objs, live, what):
    policy, _ = _policy(objs)
    denied = _update(policy, live, DENIED_CHANGES[what])
    assert denied, what
    # the same change by anyone else (helm, the KubeRay operator) is not this policy's business
    assert _update(policy, live, DENIED_CHANGES[what], user="system:serviceaccount:kuberay:op") \
        == []


def test_other_rayservices_status_and_deletes_are_denied(objs, live):
    policy, _ = _policy(objs)
    other = copy.deepcopy(live)
    other["metadata"]["name"] = "someone-else"
    assert _update(policy, other, lambda rs: rs["spec"].update(serveConfigV2="x: 1"))
    assert _update(policy, live, lambda rs: rs.update(status={"x": 1}), sub="status")
    assert admit(policy, _request("DELETE", "rayservices", "osv-optiserve", CONTROLLER),
                 None, live)
    assert admit(policy, _request("CREATE", "rayservices", "osv-optiserve", CONTROLLER),
                 live, None)


def test_configmaps_by_name_only(objs):
    policy, _ = _policy(objs)

    def cm(name):
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": NS}, "data": {"state.json": "{}"}}

    state = "osv-optiserve-rollout-state-minilm"
    assert admit(policy, _request("CREATE", "configmaps", state, CONTROLLER), cm(state),
                 None) == []
    assert admit(policy, _request("UPDATE", "configmaps", state, CONTROLLER), cm(state),
                 cm(state)) == []
    for name in ("kube-root-ca.crt", "osv-optiserve-rollout-state-other", "anything"):
        assert admit(policy, _request("CREATE", "configmaps", name, CONTROLLER), cm(name),
                     None), name
    assert admit(policy, _request("DELETE", "configmaps", state, CONTROLLER), None, cm(state))


def test_names_follow_the_models(helm, tmp_path):
    """A model whose name is hashed into its ConfigMap name is admitted under that name."""
    from optiserve.rollout.store import configmap_name

    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"serve": {"models": {
        "minilm": None, "my_model.": {"versions": {"1": {}}}}}}))
    policy, _ = _policy(helm_template(helm, "-f", str(values)))
    name = configmap_name("osv-optiserve-rollout-state", "my_model.")
    obj = {"metadata": {"name": name, "namespace": NS}}
    assert admit(policy, _request("CREATE", "configmaps", name, CONTROLLER), obj, None) == []


def test_every_values_file_ships_the_policy(rendered):
    for values, objs in rendered.items():
        policy, binding = _policy(objs)
        assert json.dumps(policy).count("serveConfigV2") >= 1, values


def test_the_evaluation_can_fail_without_the_spec_check(objs, live):
    """The checks above can fail: a policy without its spec comparison admits a new image."""
    policy, _ = _policy(objs)
    weak = copy.deepcopy(policy)
    weak["spec"]["validations"][0]["expression"] = "true"
    assert _update(weak, live, DENIED_CHANGES["image"]) == []
    assert _update(policy, live, DENIED_CHANGES["image"])
