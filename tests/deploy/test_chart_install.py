"""Install and upgrade as Helm 4 does them, against the stand-in API server (no API server can run
here; tests/deploy/kube_standin.py answers what the real helm binary asks): `helm install
--dry-run=server` and `helm upgrade --dry-run=server` render against the cluster, with the
objects the chart's `lookup`s look for present or missing. `--disable-openapi-validation` keeps
Helm from downloading the OpenAPI schema: the objects are validated in test_chart.py."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from .conftest import CHART, CI_VALUES, helm_template, rayservice, run
from .kube_standin import StandInApiServer

NS = "serving"
RELEASE = "osv"
AUTH = f"{RELEASE}-optiserve-ray-auth"


def ready_cluster(api: StandInApiServer) -> StandInApiServer:
    """What the README asks for before `helm install`: the namespace, Ray's token Secret and the
    models PVC."""
    api.add_namespace(NS)
    api.add_secret(NS, AUTH, {"auth_token": "0" * 64})
    api.add_pvc(NS, "optiserve-models")
    return api


@pytest.fixture
def api(tmp_path):
    with StandInApiServer() as server:
        server.kubeconfig_path = server.kubeconfig(tmp_path / "kubeconfig", NS)
        yield server


def helm_against(helm: str, api: StandInApiServer, verb: str, *args: str):
    """`helm install|upgrade RELEASE CHART --dry-run=server` against the stand-in."""
    return run([helm, verb, RELEASE, str(CHART), "--namespace", NS, "--dry-run=server",
                "--disable-openapi-validation", *args],
               env={**os.environ, "KUBECONFIG": str(api.kubeconfig_path)})


def manifests(out: str) -> list[dict]:
    """The objects of `helm install/upgrade --dry-run` output (after the MANIFEST: line)."""
    text = out.split("MANIFEST:", 1)[1].split("\nNOTES:", 1)[0]
    return [d for d in yaml.safe_load_all(text) if d]


def test_install_with_the_prerequisites_present(helm, api):
    ready_cluster(api)
    r = helm_against(helm, api, "install")
    assert r.returncode == 0, r.stderr
    assert ("GET", f"/api/v1/namespaces/{NS}/secrets/{AUTH}") in api.requests
    assert ("GET", f"/api/v1/namespaces/{NS}/persistentvolumeclaims/optiserve-models") in \
        api.requests
    assert rayservice(manifests(r.stdout))["metadata"]["name"] == f"{RELEASE}-optiserve"


def test_install_without_the_token_secret_fails_naming_the_fix(helm, api):
    api.add_namespace(NS)
    api.add_pvc(NS, "optiserve-models")
    r = helm_against(helm, api, "install")
    assert r.returncode != 0
    assert f"Secret {NS}/{AUTH} (Ray's token, key auth_token) does not exist" in r.stderr
    assert f"kubectl -n {NS} create secret generic {AUTH}" in r.stderr
    # with Ray's auth off the Secret is not needed
    r = helm_against(helm, api, "install", "--set", "ray.auth.enabled=false")
    assert r.returncode == 0, r.stderr


def test_a_token_secret_without_its_key_fails(helm, api):
    ready_cluster(api)
    api.add_secret(NS, AUTH, {"token": "x"})
    r = helm_against(helm, api, "install")
    assert r.returncode != 0 and f"Secret {NS}/{AUTH} has no key auth_token" in r.stderr


def test_install_without_the_models_pvc_fails_naming_the_fix(helm, api):
    api.add_namespace(NS)
    api.add_secret(NS, AUTH, {"auth_token": "t"})
    r = helm_against(helm, api, "install")
    assert r.returncode != 0
    assert f"PersistentVolumeClaim {NS}/optiserve-models (the model repository" in r.stderr
    # models from object storage need no PVC, but the credentials Secret the values name
    r = helm_against(helm, api, "install", "-f", str(CI_VALUES["canary"]))
    assert r.returncode != 0 and f"Secret {NS}/optiserve-models-s3" in r.stderr
    api.add_secret(NS, "optiserve-models-s3", {"AWS_ACCESS_KEY_ID": "x"})
    r = helm_against(helm, api, "install", "-f", str(CI_VALUES["canary"]))
    assert r.returncode == 0, r.stderr


def test_production_needs_the_redis_password_secret(helm, api):
    ready_cluster(api)
    r = helm_against(helm, api, "install", "-f", str(CI_VALUES["production"]))
    assert r.returncode != 0 and "ray.gcsFaultTolerance.redisPassword" in r.stderr
    api.add_secret(NS, "optiserve-redis", {"password": "p"})
    r = helm_against(helm, api, "install", "-f", str(CI_VALUES["production"]))
    assert r.returncode == 0, r.stderr


def test_the_check_can_be_turned_off_and_helm_template_skips_it(helm, api):
    r = helm_against(helm, api, "install", "--set", "checkPrerequisites=false")
    assert r.returncode == 0, r.stderr
    assert not [p for m, p in api.requests if "/secrets/" in p or "persistentvolumeclaims" in p]
    helm_template(helm)  # no cluster: nothing to look up, renders


def _previous_release(helm, api, *args: str) -> str:
    """Record a deployed revision 1 of the release (its manifest: the chart's render with
    ``args``), as Helm's Secret storage holds it; returns the manifest."""
    r = run([helm, "template", RELEASE, str(CHART), "--namespace", NS, *args])
    assert r.returncode == 0, r.stderr
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    api.add_helm_release(NS, RELEASE, r.stdout, meta, config={})
    return r.stdout


def _cluster_hash_input(rs: dict) -> str:
    """What KubeRay hashes to decide on a new cluster (GenerateHashWithoutReplicasAndWorkersToDelete
    in ray-operator/controllers/ray/utils/util.go, v1.6.0): rayClusterConfig without the worker
    groups' replicas, min/maxReplicas, workersToDelete, and without every pod template's
    tolerations and scheduling gates."""
    spec = json.loads(json.dumps(rs["spec"]["rayClusterConfig"]))
    for g in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        for k in ("replicas", "minReplicas", "maxReplicas"):
            g.pop(k, None)
        g.get("scaleStrategy", {}).pop("workersToDelete", None)
        g["template"]["spec"].pop("tolerations", None)
        g["template"]["spec"].pop("schedulingGates", None)
    spec.pop("upgradeStrategy", None)
    return json.dumps(spec, sort_keys=True)


def test_upgrade_changes_models_in_place_and_resources_with_a_new_cluster(helm, api):
    """`helm upgrade --dry-run=server` from a deployed revision: Helm reads the release record and
    renders against the cluster. A new model version changes the serve config only (KubeRay
    applies it to the running cluster); a new worker size changes what KubeRay hashes (a new
    cluster); replicas do not."""
    ready_cluster(api)
    previous = rayservice([d for d in yaml.safe_load_all(_previous_release(helm, api)) if d])
    r = helm_against(helm, api, "upgrade", "--set", "serve.models.minilm.versions.2.replicas=1")
    assert r.returncode == 0, r.stderr
    assert ("GET", f"/api/v1/namespaces/{NS}/secrets") in api.requests  # the release record
    assert "REVISION: 2" in r.stdout
    new = rayservice(manifests(r.stdout))
    assert new["spec"]["serveConfigV2"] != previous["spec"]["serveConfigV2"]
    assert _cluster_hash_input(new) == _cluster_hash_input(previous)
    r = helm_against(helm, api, "upgrade", "--set", "workers.cpu.replicas=3",
                     "--set", "workers.cpu.tolerations[0].key=spot",
                     "--set", "workers.cpu.tolerations[0].operator=Exists")
    assert r.returncode == 0, r.stderr
    assert _cluster_hash_input(rayservice(manifests(r.stdout))) == _cluster_hash_input(previous)
    r = helm_against(helm, api, "upgrade", "--set", "workers.cpu.resources.limits.memory=6Gi")
    assert r.returncode == 0, r.stderr
    assert _cluster_hash_input(rayservice(manifests(r.stdout))) != _cluster_hash_input(previous)


def test_upgrade_checks_the_prerequisites_too(helm, api):
    api.add_namespace(NS)
    api.add_pvc(NS, "optiserve-models")
    _previous_release(helm, api)
    r = helm_against(helm, api, "upgrade")
    assert r.returncode != 0 and f"Secret {NS}/{AUTH}" in r.stderr


def test_upgrade_needs_a_deployed_release(helm, api):
    """The upgrade tests above went through Helm's upgrade path: without a release record it
    refuses."""
    ready_cluster(api)
    r = helm_against(helm, api, "upgrade")
    assert r.returncode != 0 and "has no deployed releases" in r.stderr


def _monitoring(objs: list[dict]) -> tuple[set, str, list]:
    """(label sets of the monitors and rule, the controller's Prometheus URL, metrics peers)."""
    labels = [o["metadata"]["labels"] for o in objs
              if o["kind"] in ("PodMonitor", "ServiceMonitor", "PrometheusRule")]
    assert len(labels) == 3
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    (pol,) = [p for p in objs if p["kind"] == "NetworkPolicy"
              and p["metadata"]["name"].endswith("-rollout-controller")]
    return labels, env["OPTISERVE_PROMETHEUS"], pol


def test_monitors_follow_the_prometheus_the_cluster_runs(helm, api):
    """kube-prometheus-stack installed as release "prom" in namespace "observability": its
    Prometheus selects `release: prom`. The chart finds it (lookup) and labels its monitors and
    rule for it, points the controller at it and lets its pods scrape."""
    from tests.support import netpol

    ready_cluster(api)
    api.add({"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
             "metadata": {"name": "prom-kube-prometheus-stack-prometheus",
                          "namespace": "observability"},
             "spec": {"serviceMonitorSelector": {"matchLabels": {"release": "prom"}},
                      "podMonitorSelector": {"matchLabels": {"release": "prom"}},
                      "ruleSelector": {"matchLabels": {"release": "prom"}}}})
    r = helm_against(helm, api, "install")
    assert r.returncode == 0, r.stderr
    labels, url, pol = _monitoring(manifests(r.stdout))
    for lb in labels:
        assert lb["release"] == "prom", lb
    assert url == "http://prometheus-operated.observability.svc:9090"
    notes = r.stdout.split("NOTES:", 1)[1]
    assert "They carry release=prom for the Prometheus in namespace observability" in notes
    pol["metadata"]["namespace"] = NS
    prometheus = netpol.pod("observability", {"app.kubernetes.io/name": "prometheus",
                                              "prometheus": "prom-kube-prometheus-stack"})
    controller = netpol.pod(NS, pol["spec"]["podSelector"]["matchLabels"])
    assert netpol.allowed([pol], prometheus, controller, 9464)
    assert not netpol.allowed([pol], netpol.pod("monitoring", prometheus.labels), controller, 9464)


def test_monitoring_values_win_and_name_the_defaults(helm, api):
    """Without a Prometheus to find (helm template): kube-prometheus-stack's defaults, from
    values; explicit values replace them."""
    labels, url, _ = _monitoring(helm_template(helm))
    assert all(lb["release"] == "kube-prometheus-stack" for lb in labels)
    assert url == "http://prometheus-operated.monitoring.svc:9090"
    labels, url, _ = _monitoring(helm_template(
        helm, "--set", "monitoring.prometheus.namespace=obs",
        "--set", "monitoring.prometheus.release=prom"))
    assert all(lb["release"] == "prom" for lb in labels)
    assert url == "http://prometheus-operated.obs.svc:9090"
    labels, url, _ = _monitoring(helm_template(
        helm, "--set", "monitoring.selectorLabels.team=ml",
        "--set", "rolloutController.prometheusUrl=http://thanos.obs.svc:9090"))
    assert all(lb.get("team") == "ml" and "release" not in lb for lb in labels)
    assert url == "http://thanos.obs.svc:9090"


def test_notes_say_what_an_upgrade_does_with_the_controllers_split(helm, api):
    """NOTES.txt (as `helm install` prints it) names the controller's field manager, says an
    upgrade keeps its split and how Helm 4's conflict on serveConfigV2 is resolved."""
    from optiserve.rollout.targets import FIELD_MANAGER

    ready_cluster(api)
    r = helm_against(helm, api, "install")
    assert r.returncode == 0, r.stderr
    notes = " ".join(r.stdout.split("NOTES:", 1)[1].split())
    assert f"field manager {FIELD_MANAGER}" in notes
    assert "keeps the split and canary versions the controller owns" in notes
    assert "--force-conflicts" in notes
    assert "puts back" not in notes


def test_after_a_rollout_an_upgrade_applies_the_controllers_serve_config_unchanged(helm, api):
    """Helm 4 applies server-side: an upgrade whose serveConfigV2 differs from the value the
    controller's field manager owns is a conflict. The controller has rolled out a canary (its
    own code: with_split on the live config, owned_split in the state ConfigMap); an upgrade
    that changes nothing in the serve config must send exactly the live string (equal values
    never conflict), while one that does change it (a new version) sends the new config."""
    from optiserve.rollout.state import OwnedSplit, RolloutSpec, RolloutState, Split
    from optiserve.rollout.store import configmap_name
    from optiserve.rollout.targets import owned_split, rayservice_patch

    ready_cluster(api)
    live = rayservice([d for d in yaml.safe_load_all(_previous_release(helm, api)) if d])
    live["metadata"].update({"namespace": NS, "resourceVersion": "5", "annotations": {
        "meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NS}})
    split = Split(stable=1, canary=2, weight=25, shadow=0.1, routed=(1, 2), deployed=(1, 2))
    written = rayservice_patch(live, "minilm", split)["spec"]["serveConfigV2"]
    live["spec"]["serveConfigV2"] = written
    api.add(live)
    owned = owned_split(yaml.safe_load(written), "minilm")
    state = RolloutState(spec=RolloutSpec(model="minilm", stable=1, canary=2),
                         phase="progressing", owned_split=OwnedSplit(**owned.model_dump()))
    api.add_configmap(NS, configmap_name(f"{RELEASE}-optiserve-rollout-state", "minilm"),
                      {"state.json": state.model_dump_json()})
    r = helm_against(helm, api, "upgrade")
    assert r.returncode == 0, r.stderr
    assert rayservice(manifests(r.stdout))["spec"]["serveConfigV2"] == written
    r = helm_against(helm, api, "upgrade", "--set", "serve.models.minilm.versions.1.replicas=2")
    assert r.returncode == 0, r.stderr
    changed = rayservice(manifests(r.stdout))["spec"]["serveConfigV2"]
    assert changed != written
    route = yaml.safe_load(changed)["applications"][0]["deployments"][0]["user_config"][
        "models"]["minilm"]
    assert (route["canary"], route["canary_weight"]) == (2, 25)  # the split is kept
