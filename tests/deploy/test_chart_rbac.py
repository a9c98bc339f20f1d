"""Least privilege of what the chart grants, held to an explicit allow-list: every (apiGroup,
resource, verb, resourceName) a Role of the chart grants must be on it, and anything more fails.
The rollout controller reads and patches its own RayService (the traffic split in
spec.serveConfigV2) and reads, creates and updates its per-model state ConfigMaps, by name. It
never lists or watches, and never talks to Ray (the RayService target goes through the API
server), so it gets no Ray token."""

from __future__ import annotations

import json

import pytest

from optiserve.rollout.store import configmap_name

from .conftest import CI_VALUES, helm_template, only, rayservice, serve_config


def allow_list(objs: list[dict]) -> set[tuple]:
    """(apiGroup, resource, verb, resourceName) of every call the controller's code makes
    (optiserve/rollout/targets.py RayServiceTarget: get, patch; optiserve/rollout/store.py
    ConfigMapStore: read, replace), on this release's objects only."""
    rs = rayservice(objs)["metadata"]["name"]
    (dep,) = only(objs, "Deployment")
    env = {e["name"]: e.get("value") for e in
           dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    models = serve_config(objs)["applications"][0]["deployments"][0]["user_config"]["models"]
    cms = {configmap_name(env["OPTISERVE_ROLLOUT_CONFIGMAP"], m) for m in models}
    # create cannot name its object in RBAC: the chart's ValidatingAdmissionPolicy admits the
    # controller's creates of these names only (test_chart_admission.py)
    return ({("ray.io", "rayservices", v, rs) for v in ("get", "patch")}
            | {("", "configmaps", v, cm) for v in ("get", "update") for cm in cms}
            | {("", "configmaps", "create", None)})


def granted(role: dict) -> set[tuple]:
    out = set()
    for rule in role["rules"]:
        names = rule.get("resourceNames") or [None]  # None: every object of the resource
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    for n in names:
                        out.add((g, r, v, n))
    return out


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_the_controllers_role_is_exactly_the_allow_list(rendered, values):
    objs = rendered[values]
    assert not only(objs, "ClusterRole") and not only(objs, "ClusterRoleBinding")
    (role,) = only(objs, "Role")
    assert granted(role) == allow_list(objs), values


def test_the_allow_list_check_can_fail(rendered):
    role = only(rendered["default"], "Role")[0]
    role = json.loads(json.dumps(role))
    role["rules"].append({"apiGroups": ["ray.io"], "resources": ["rayservices"],
                          "verbs": ["list", "watch"]})
    assert granted(role) != allow_list(rendered["default"])


def test_the_controller_gets_no_ray_token(helm):
    """The RayService target never calls Ray: no token volume, mount or variable in its pod,
    with Ray's auth on (the default)."""
    objs = helm_template(helm)
    assert "authOptions" in rayservice(objs)["spec"]["rayClusterConfig"]
    (dep,) = only(objs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert "ray-auth" not in json.dumps(spec)
    c = spec["containers"][0]
    assert not [e for e in c["env"] if e["name"].startswith("RAY_AUTH")]
