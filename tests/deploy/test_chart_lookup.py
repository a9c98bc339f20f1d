"""The live traffic split survives `helm upgrade`: the chart reads each model's rollout state
ConfigMap with `lookup` and keeps the split the rollout controller owns.

`lookup` only talks to an API server when Helm renders against a cluster, so these render with
the real helm binary (`helm template --dry-run=server`) against tests/deploy/kube_standin.py, a
stand-in for the Kubernetes API server on 127.0.0.1. `--disable-openapi-validation` keeps Helm
from downloading the OpenAPI schema (kubernetes-validate checks the manifests in test_chart.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from serving.config import validate_serve_config
from optiserve.rollout.state import OwnedSplit, RolloutSpec, RolloutState
from optiserve.rollout.store import configmap_name

from .conftest import (CHART, CI_VALUES, MONITORING_API, helm_template, rayservice, run,
                       serve_config)
from .kube_standin import StandInApiServer

NAMESPACE = "serving"
RELEASE = "osv"
PREFIX = f"{RELEASE}-optiserve-rollout-state"  # the chart's optiserve.stateConfigMap default


@pytest.fixture
def api(tmp_path):
    with StandInApiServer() as server:
        server.kubeconfig_path = server.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
        # the chart's prerequisites (checked by lookup; tests/deploy/test_chart_install.py)
        server.add_secret(NAMESPACE, f"{RELEASE}-optiserve-ray-auth", {"auth_token": "t"})
        server.add_pvc(NAMESPACE, "optiserve-models")
        server.add_secret(NAMESPACE, "optiserve-models-s3", {"AWS_ACCESS_KEY_ID": "x"})
        server.add_secret(NAMESPACE, "optiserve-redis", {"password": "p"})
        server.add_secret(NAMESPACE, "serving-ray-token", {"auth_token": "t"})  # ci/groups
        yield server


def render_against(helm: str, api: StandInApiServer, *args: str) -> tuple[str, list[dict]]:
    r = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
             "--dry-run=server", "--disable-openapi-validation", *args],
            env={**os.environ, "KUBECONFIG": str(api.kubeconfig_path)})
    assert r.returncode == 0, r.stderr
    return r.stdout, [d for d in yaml.safe_load_all(r.stdout) if d]


def put_state(api: StandInApiServer, model: str, route: dict, applications: list[dict]) -> str:
    """A model's state ConfigMap as the controller writes it; returns its name."""
    state = RolloutState(spec=RolloutSpec(model=model, stable=route["stable"],
                                          canary=route.get("canary") or route["stable"] + 1),
                         phase="progressing",
                         owned_split=OwnedSplit(route=route, applications=applications))
    name = configmap_name(PREFIX, model)
    api.add_configmap(NAMESPACE, name, {"state.json": state.model_dump_json()}, labels={
        "app.kubernetes.io/managed-by": "optiserve-rollout-controller",
        "optiserve.io/model": model})
    return name


def gateway_route(doc: dict, model: str) -> dict:
    return doc["applications"][0]["deployments"][0]["user_config"]["models"][model]


def apps_by_name(doc: dict) -> dict[str, dict]:
    return {a["name"]: a for a in doc["applications"]}


def canary_v2_app(helm) -> dict:
    """minilm-v2's application exactly as the chart renders a version app (canary values)."""
    (app,) = [a for a in serve_config(helm_template(helm, "-f", str(CI_VALUES["canary"])))
              ["applications"] if a["name"] == "minilm-v2"]
    return app


def test_upgrade_keeps_the_controllers_split_and_canary(helm, api):
    """Values declare only minilm v1; the controller deployed v2 itself and runs it at 25 %."""
    v2 = canary_v2_app(helm)
    name = put_state(api, "minilm", {
        "versions": {"1": {"max_inflight_batches": 2, "max_batch_size": 99},
                     "2": {"max_inflight_batches": 8}},
        "stable": 1, "canary": 2, "canary_weight": 25, "shadow": 0.1}, [v2])
    _, objs = render_against(helm, api)
    assert ("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}") in api.requests
    doc = serve_config(objs)
    validate_serve_config(doc, repository_check=False)
    assert gateway_route(doc, "minilm") == {
        # values' batching wins for v1 (values declare it); v2's comes from the controller
        "versions": {"1": {"max_inflight_batches": 4}, "2": {"max_inflight_batches": 8}},
        "stable": 1, "canary": 2, "canary_weight": 25, "shadow": 0.1}
    apps = apps_by_name(doc)
    assert list(apps) == ["optiserve", "minilm-v1", "minilm-v2"]
    assert apps["minilm-v2"] == v2
    # everything else renders as from values alone
    plain = helm_template(helm)
    assert apps["minilm-v1"] == apps_by_name(serve_config(plain))["minilm-v1"]
    for got, want in zip(objs, plain, strict=True):
        if got["kind"] == "RayService":
            got, want = ({**o, "spec": {**o["spec"], "serveConfigV2": None}} for o in (got, want))
        assert got == want


def test_promoted_split_is_kept_and_retired_declared_versions_come_back_at_zero(helm, api):
    """The controller promoted v2 and retired v1; values still declare both and a 10 % canary.
    The split stays promoted (no canary); v1 is declared, so its application comes back (at
    0 %); values' sticky header and batching still apply (the route's sticky header is not
    part of the split)."""
    put_state(api, "minilm", {"versions": {"2": {"max_inflight_batches": 8}}, "stable": 2,
                              "sticky_header": "ignored"}, [])
    _, objs = render_against(helm, api, "-f", str(CI_VALUES["canary"]))
    doc = serve_config(objs)
    validate_serve_config(doc, repository_check=False)
    plain = serve_config(helm_template(helm, "-f", str(CI_VALUES["canary"])))
    want = gateway_route(plain, "minilm")
    assert (want["stable"], want["canary"], want["canary_weight"]) == (1, 2, 10)
    assert gateway_route(doc, "minilm") == {"versions": want["versions"], "stable": 2,
                                            "sticky_header": "X-Session-Id"}
    version_apps = {n: a for n, a in apps_by_name(doc).items() if n != "optiserve"}
    assert version_apps == {n: a for n, a in apps_by_name(plain).items() if n != "optiserve"}


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_without_a_state_configmap_the_render_is_helm_templates(helm, api, values):
    """First install (or a model the controller never touched): exactly `helm template`'s."""
    out, _ = render_against(helm, api, "-f", str(CI_VALUES[values]))
    assert ("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{PREFIX}-minilm") in api.requests
    plain = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                 *MONITORING_API, "-f", str(CI_VALUES[values])])
    assert plain.returncode == 0, plain.stderr
    assert out == plain.stdout


def test_state_without_an_owned_split_leaves_values_in_charge(helm, api):
    state = RolloutState(spec=RolloutSpec(model="minilm", stable=1, canary=2))
    api.add_configmap(NAMESPACE, f"{PREFIX}-minilm", {"state.json": state.model_dump_json()})
    _, objs = render_against(helm, api)
    assert serve_config(objs) == serve_config(helm_template(helm))


def test_lookup_finds_a_hashed_name(helm, api, tmp_path):
    """A model name that is not a Kubernetes name: the chart asks for configmap_name's name."""
    values = tmp_path / "values.yaml"
    # null drops the default values' minilm
    values.write_text(yaml.safe_dump({"serve": {"models": {"minilm": None,
                                                           "my_model.": {"versions": {"1": {}}}}}}))
    v3 = canary_v2_app(helm)
    v3 = {**v3, "name": "my_model.-v3", "args": {**v3["args"], "model": "my_model.", "version": 3},
          "deployments": [{**v3["deployments"][0], "name": "my_model.-v3"}]}
    name = put_state(api, "my_model.", {"versions": {"1": {}, "3": {}}, "stable": 1, "canary": 3,
                                        "canary_weight": 50, "shadow": 0}, [v3])
    assert name != f"{PREFIX}-my_model." and name.startswith(f"{PREFIX}-my-model-")
    _, objs = render_against(helm, api, "-f", str(values))
    doc = serve_config(objs)
    validate_serve_config(doc, repository_check=False)
    assert apps_by_name(doc)["my_model.-v3"] == v3
    route = gateway_route(doc, "my_model.")
    assert (route["canary"], route["canary_weight"], sorted(route["versions"])) == \
        (3, 50, ["1", "3"])
    (role,) = [o for o in objs if o["kind"] == "Role"]
    (named,) = [r["resourceNames"] for r in role["rules"]
                if r["resources"] == ["configmaps"] and "resourceNames" in r]
    assert named == [name]
    assert rayservice(objs)["metadata"]["name"] == f"{RELEASE}-optiserve"


def test_corrupt_state_fails_the_render_naming_the_configmap(helm, api):
    api.add_configmap(NAMESPACE, f"{PREFIX}-minilm", {"state.json": "{not json"})
    r = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
             "--dry-run=server", "--disable-openapi-validation"],
            env={**os.environ, "KUBECONFIG": str(api.kubeconfig_path)})
    assert r.returncode != 0
    assert f"ConfigMap {NAMESPACE}/{PREFIX}-minilm: state.json is not JSON" in r.stderr


def test_the_stand_in_is_what_helm_talks_to(helm, api, tmp_path):
    """Without a reachable server `--dry-run=server` fails: the tests above really used it."""
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(Path(api.kubeconfig_path).read_text().replace(api.url, "http://127.0.0.1:9"))
    r = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
             "--dry-run=server", "--disable-openapi-validation"],
            env={**os.environ, "KUBECONFIG": str(dead)})
    assert r.returncode != 0 and "127.0.0.1:9" in r.stderr


@pytest.mark.parametrize("tamper, field", [
    (lambda a: a.update(import_path="evil.module:app"), "import_path"),
    (lambda a: a.update(runtime_env={"pip": ["evil"]}), "runtime_env"),
    (lambda a: a["deployments"][0]["ray_actor_options"].update(
        runtime_env={"env_vars": {"X": "1"}}), "runtime_env"),
    (lambda a: a.update(working_dir="s3://evil"), "working_dir"),
    (lambda a: a["args"].update(repository="/tmp/evil"), "args.repository"),
    (lambda a: a["args"].update(model="other"), "args.model"),
    (lambda a: a["deployments"][0].update(placement_group_bundles=[{"CPU": 64}]),
     "placement_group_bundles"),
    (lambda a: a.update(route_prefix="/evil"), "route_prefix"),
])
def test_owned_applications_are_checked_before_they_enter_the_serve_config(helm, api, tamper,
                                                                          field):
    """Anyone who can write ConfigMaps in the namespace can write the state: an application in
    it that is not optiserve's own version application (its import_path, no runtime_env, known
    fields only, this release's repository and model) fails the render, naming the field,
    instead of running at the next upgrade."""
    import copy

    v2 = copy.deepcopy(canary_v2_app(helm))
    tamper(v2)
    name = put_state(api, "minilm", {"versions": {"1": {}, "2": {}}, "stable": 1, "canary": 2,
                                     "canary_weight": 10, "shadow": 0}, [v2])
    r = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
             "--dry-run=server", "--disable-openapi-validation"],
            env={**os.environ, "KUBECONFIG": str(api.kubeconfig_path)})
    assert r.returncode != 0, f"{field}: rendered"
    assert f"ConfigMap {NAMESPACE}/{name}" in r.stderr and field in r.stderr, r.stderr


def test_a_canary_sharing_its_stables_cpus_as_the_controller_writes_it_is_kept(helm, api):
    """The controller's copy of the stable for a canary (no CPU reserved, the stable's threads,
    the optiserve_model resource, max_surge_percent) passes the owned-application check."""
    from optiserve.rollout.state import Split
    from optiserve.rollout.targets import owned_split, with_split

    doc = serve_config(helm_template(helm))
    stable = int(gateway_route(doc, "minilm")["stable"])
    new = with_split(doc, "minilm", Split(stable=stable, canary=stable + 1, weight=25,
                                          routed=(stable, stable + 1),
                                          deployed=(stable, stable + 1)))
    owned = owned_split(new, "minilm")
    canary = next(a for a in owned.applications if a["args"]["version"] == stable + 1)
    assert canary["deployments"][0]["ray_actor_options"]["num_cpus"] == 0
    put_state(api, "minilm", owned.route, owned.applications)
    _, objs = render_against(helm, api)
    assert apps_by_name(serve_config(objs))[canary["name"]] == canary
