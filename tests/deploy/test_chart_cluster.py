"""What the chart gives a cluster, checked without one (no API server, kubelet or KubeRay runs
here): upgrades that stay in place, the locked control plane, the serving lifecycle (readiness,
drain), monitoring wiring and worker-group pass-throughs. Rendered with the real helm binary
(`helm template`, or `--dry-run=server` against tests/deploy/kube_standin.py, a stand-in API
server); what KubeRay does with the result is taken from its source (the field names from its
CRDs, tests/deploy/kuberay/; its new-cluster rule in test_chart_install.py). The preStop drain
runs with the real wget against a real gateway server, `ray` being a logging stand-in."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import CHART, CI_VALUES, helm_template, only, pod_templates, rayservice, run

PINNED = ("--set", "image.tag=1.0.0-cpu", "--set", "gpuImage.tag=1.0.0-gpu",
          "--set", "initImage.tag=1.0.0-init")


def _bumped_chart(tmp_path: Path, version: str) -> Path:
    chart = tmp_path / f"chart-{version}" / "optiserve"
    if chart.exists():
        return chart
    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    doc = yaml.safe_load(meta.read_text())
    doc["version"] = doc["appVersion"] = version
    meta.write_text(yaml.safe_dump(doc))
    return chart


def _cluster_config(helm: str, chart: Path, *args: str) -> str:
    r = run([helm, "template", "osv", str(chart), "--namespace", "serving", *args,
             "--show-only", "templates/rayservice.yaml"])
    assert r.returncode == 0, r.stderr
    rs = yaml.safe_load(r.stdout)
    # what KubeRay hashes to decide on a new cluster: rayClusterConfig, as JSON
    return json.dumps(rs["spec"]["rayClusterConfig"], sort_keys=True)


# ---- in-place upgrades ------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "gpu", "production"])
def test_a_chart_version_bump_leaves_the_ray_cluster_byte_identical(helm, tmp_path, values):
    """Chart 0.1.0 and 9.9.9 (chart and app version), images pinned by tag: the RayService's
    rayClusterConfig, pod templates included, is the same bytes, so KubeRay keeps the cluster."""
    old = _cluster_config(helm, _bumped_chart(tmp_path, "0.1.0"), "-f", str(CI_VALUES[values]),
                          *PINNED)
    new = _cluster_config(helm, _bumped_chart(tmp_path, "9.9.9"), "-f", str(CI_VALUES[values]),
                          *PINNED)
    assert old == new
    assert "helm.sh/chart" not in new and "app.kubernetes.io/version" not in new
    # without pinned images the bump changes the images only (a new cluster: documented)
    unpinned_old = json.loads(_cluster_config(helm, _bumped_chart(tmp_path, "0.1.0")))
    unpinned_new = json.loads(_cluster_config(helm, _bumped_chart(tmp_path, "9.9.9")))
    assert json.dumps(unpinned_old).replace("0.1.0-", "9.9.9-") == json.dumps(unpinned_new)


def test_upgrade_settings_are_exposed(helm):
    spec = rayservice(helm_template(helm))["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert spec["rayClusterDeletionDelaySeconds"] == 60
    spec = rayservice(helm_template(helm, "--set", "rayService.upgradeStrategy.type=None",
                                    "--set", "rayService.rayClusterDeletionDelaySeconds=300"))[
        "spec"]
    assert spec["upgradeStrategy"] == {"type": "None"}
    assert spec["rayClusterDeletionDelaySeconds"] == 300
    r = run([helm, "template", "osv", str(CHART), "--set", "rayService.upgradeStrategy.type=Blue"])
    assert r.returncode != 0 and "upgradeStrategy" in r.stderr


def test_a_version_bump_upgrades_in_place_through_helm_upgrade(helm, tmp_path):
    """`helm upgrade --dry-run=server` (Helm's upgrade path, reading the deployed revision from
    the stand-in API server) from chart 0.1.0 to 9.9.9 with pinned images: what KubeRay hashes
    is unchanged, so it keeps the running cluster (the README's "Upgrades" table)."""
    from .kube_standin import StandInApiServer
    from .test_chart_install import _cluster_hash_input, manifests

    old_chart, new_chart = _bumped_chart(tmp_path, "0.1.0"), _bumped_chart(tmp_path, "9.9.9")
    with StandInApiServer() as api:
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", "serving")
        api.add_secret("serving", "osv-optiserve-ray-auth", {"auth_token": "t"})
        api.add_pvc("serving", "optiserve-models")
        r = run([helm, "template", "osv", str(old_chart), "--namespace", "serving", *PINNED])
        assert r.returncode == 0, r.stderr
        previous = rayservice([d for d in yaml.safe_load_all(r.stdout) if d])
        api.add_helm_release("serving", "osv", r.stdout,
                             yaml.safe_load((old_chart / "Chart.yaml").read_text()), {})

        def upgrade(*args):
            u = run([helm, "upgrade", "osv", str(new_chart), "--namespace", "serving",
                     "--dry-run=server", "--disable-openapi-validation", *args],
                    env={**os.environ, "KUBECONFIG": str(kubeconfig)})
            assert u.returncode == 0, u.stderr
            assert "REVISION: 2" in u.stdout
            return rayservice(manifests(u.stdout))

        assert _cluster_hash_input(upgrade(*PINNED)) == _cluster_hash_input(previous)
        # unpinned, the images follow the chart's appVersion: a new cluster (documented)
        assert _cluster_hash_input(upgrade()) != _cluster_hash_input(previous)
    section = (CHART / "README.md").read_text().split("## Upgrades", 1)[1]
    assert "image" in section and "new cluster" in section


# ---- the locked control plane -----------------------------------------------------------------


def test_ray_token_auth_from_a_secret_reaches_kuberay(helm):
    """KubeRay reads the token from the Secret for its own calls and injects it into the Ray
    containers; the rollout controller never calls Ray (tests/deploy/test_chart_rbac.py checks
    it gets no token)."""
    objs = helm_template(helm)
    cluster = rayservice(objs)["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "osv-optiserve-ray-auth"}
    objs = helm_template(helm, "--set", "ray.auth.enabled=false")
    assert "authOptions" not in rayservice(objs)["spec"]["rayClusterConfig"]
    objs = helm_template(helm, "--set", "ray.auth.secretName=mine")
    assert rayservice(objs)["spec"]["rayClusterConfig"]["authOptions"]["secretName"] == "mine"


def test_dashboard_reachable_only_from_the_operators_namespace(rendered):
    for values, objs in rendered.items():
        (pol,) = [p for p in only(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-ray")]
        rules = [r for r in pol["spec"]["ingress"]
                 if any(p["port"] == 8265 for p in r.get("ports", []))]
        assert len(rules) == 1, values
        peers = rules[0]["from"]
        assert peers[0] == {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}
        # no peer admits every namespace, and the rollout controller (which patches the
        # RayService through the API server) is not among them
        for rule in pol["spec"]["ingress"]:
            for peer in rule.get("from", []):
                assert peer.get("namespaceSelector") != {}, (values, rule)
        assert "rollout-controller" not in json.dumps(rules), values


def test_controller_metrics_bind_is_configurable(rendered):
    def args(objs):
        (dep,) = only(objs, "Deployment")
        return dep["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--metrics-host=$(POD_IP)" in args(rendered["default"])
    assert "--metrics-host=0.0.0.0" in args(rendered["groups"])


def test_ingress_with_tls_and_basic_auth(rendered):
    (ing,) = only(rendered["production"], "Ingress")
    assert ing["spec"]["tls"] == [{"secretName": "optiserve-tls",
                                   "hosts": ["optiserve.example.com"]}]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "osv-optiserve-serve-svc", "port": {"number": 8000}}
    a = ing["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert a["nginx.ingress.kubernetes.io/auth-secret"] == "optiserve-inference-htpasswd"
    assert not only(rendered["default"], "Ingress") and not only(rendered["default"], "HTTPRoute")


def test_serve_service_passthrough(rendered):
    svc = rayservice(rendered["groups"])["spec"]["serveService"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}
    assert svc["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    # KubeRay keeps a user port named "serve" and sets the selector itself
    assert svc["spec"]["ports"][0]["name"] == "serve" and "selector" not in svc["spec"]


# ---- the serving lifecycle --------------------------------------------------------------------

def test_head_out_of_serving_and_gateway_readiness_on_workers(rendered):
    """Workers are ready when their gateway replica serves every model's stable version (its
    /v2/health/ready on the port named "serve", which KubeRay's serve Service targets); the
    head serves no traffic."""
    for values, objs in rendered.items():
        rs = rayservice(objs)
        assert rs["spec"]["excludeHeadPodFromServeSvc"] is True
        for group, t in pod_templates(rs).items():
            c = t["spec"]["containers"][0]
            if group == "head":
                assert c["readinessProbe"]["httpGet"]["path"] == "/api/healthz"
                continue
            probe = c["readinessProbe"]
            assert probe["httpGet"] == {"path": "/v2/health/ready", "port": "serve"}, values
            assert {p["name"]: p["containerPort"] for p in c["ports"]}["serve"] == 8000
            assert probe["failureThreshold"] == 1 and probe["periodSeconds"] == 5
            assert c["livenessProbe"]["httpGet"] == {"path": "/api/healthz", "port": 52365}


def _stand_in_ray(bin_dir: Path) -> Path:
    """A `ray` stand-in that logs its calls (no Ray cluster or GCS runs here); wget is real."""
    bin_dir.mkdir()
    log = bin_dir / "calls.log"
    (bin_dir / "ray").write_text(f'#!/bin/sh\necho "ray $*" >> {log}\n')
    (bin_dir / "ray").chmod(stat.S_IRWXU)
    return log


def _prestop(objs) -> str:
    t = pod_templates(rayservice(objs))["cpu"]
    cmd = t["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[:2] == ["bash", "-c"]
    return cmd[2]


def test_prestop_drains_the_gateway_without_losing_a_request(rendered, tmp_path, monkeypatch):
    """The worker's rendered preStop, run by bash with the real wget against a real gateway
    HTTP server on its own port (serving.ingress, the chart's drain settings scaled down):
    readiness fails at once; the socket closes after the accepting phase, but the script keeps
    waiting while a request is in flight; that request gets its answer; Ray is stopped after.
    (`ray` is a logging stand-in: no GCS here.)"""
    import asyncio
    import threading
    import urllib.error
    import urllib.request

    from optiserve.local import free_port
    from serving import settings as S
    from serving.ingress import Ingress

    port = free_port()
    script = _prestop(rendered["default"])
    assert script.startswith("port=8000\n") and "--deadline-remaining-seconds=60" in script
    script = script.replace("port=8000\n", f"port={port}\n", 1)
    monkeypatch.setenv("OPTISERVE_HTTP_DRAIN_ACCEPT_S", "0.5")
    monkeypatch.setenv("OPTISERVE_HTTP_DRAIN_TIMEOUT_S", "20")
    S.reload()
    release = threading.Event()
    loop = asyncio.new_event_loop()

    async def dispatch(method, path, headers, read_body):
        await read_body(1000)
        if path == "/slow":
            await loop.run_in_executor(None, release.wait, 30)
        return 200, b"{}", {"content-type": "application/json"}

    async def ready():
        return True

    server = Ingress(dispatch, "127.0.0.1", port, ready=ready)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    url = f"http://127.0.0.1:{port}"
    try:
        assert urllib.request.urlopen(url + "/-/healthz", timeout=5).read() == b"success"
        slow = {}
        t = threading.Thread(target=lambda: slow.setdefault(
            "status", urllib.request.urlopen(url + "/slow", timeout=30).status))
        t.start()
        time.sleep(0.3)
        log = _stand_in_ray(tmp_path / "bin")
        env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
        stop = subprocess.Popen(["bash", "-c", script], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.25)
        with pytest.raises(urllib.error.HTTPError) as e:  # not ready any more
            urllib.request.urlopen(url + "/-/healthz", timeout=5)
        assert e.value.code == 503
        time.sleep(2.0)
        with pytest.raises(urllib.error.URLError):  # the socket is closed now...
            urllib.request.urlopen(url + "/-/healthz", timeout=2)
        assert stop.poll() is None, "Ray would be stopped under a request in flight"
        release.set()  # ...and the request in flight gets its answer
        t.join(10)
        assert slow["status"] == 200
        out, err = stop.communicate(timeout=60)
        assert stop.returncode == 0, err
        calls = log.read_text().splitlines()
        assert calls[0].startswith("ray drain-node --reason=DRAIN_NODE_REASON_PREEMPTION")
        assert calls[-1] == "ray stop" and len(calls) == 2
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        monkeypatch.undo()
        S.reload()
    # the pod's grace period leaves the drain its time; the head only stops Ray
    tpl = pod_templates(rayservice(rendered["default"]))["cpu"]
    assert tpl["spec"]["terminationGracePeriodSeconds"] > 60
    head = pod_templates(rayservice(rendered["default"]))["head"]["spec"]["containers"][0]
    assert head["lifecycle"]["preStop"]["exec"]["command"] == ["ray", "stop"]


def test_prestop_gives_up_at_the_drain_timeout(helm, tmp_path):
    """A server that never goes away: the script stops Ray at ray.drain.timeoutSeconds."""
    import http.server
    import threading

    from optiserve.local import free_port

    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                            http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        objs = helm_template(helm, "--set", "ray.drain.timeoutSeconds=3", "--set",
                             "serve.settings.http_drain_accept_s=1", "--set",
                             "serve.settings.http_drain_timeout_s=2")
        log = _stand_in_ray(tmp_path / "bin")
        t0 = time.monotonic()
        script = _prestop(objs).replace("port=8000\n", f"port={port}\n", 1)
        r = subprocess.run(["bash", "-c", script],
                           env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert 2.5 < time.monotonic() - t0 < 20
        assert log.read_text().splitlines()[-1] == "ray stop"
    finally:
        httpd.shutdown()


def test_the_drain_timeout_must_cover_the_gateways_drain(helm):
    r = run([helm, "template", "x", str(CHART), "--set", "ray.drain.timeoutSeconds=10"])
    assert r.returncode != 0 and "must cover serve.settings.http_drain_accept_s" in r.stderr


def test_production_values(rendered):
    objs = rendered["production"]
    rs = rayservice(objs)
    (cpu,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert cpu["replicas"] >= 2 and cpu["minReplicas"] >= 2
    spread = cpu["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname",
                                                  "topology.kubernetes.io/zone"}
    for c in spread:
        # the chart fills in the selector: this group's pods of this release
        assert c["labelSelector"]["matchLabels"].items() <= cpu["template"]["metadata"][
            "labels"].items()
        assert c["labelSelector"]["matchLabels"]["optiserve.dev/ray-group"] == "cpu"
    (pdb,) = only(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == cpu["replicas"] - 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= cpu["template"]["metadata"][
        "labels"].items()
    ft = rs["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft == {"redisAddress": "redis-master.redis.svc:6379", "redisPassword": {
        "valueFrom": {"secretKeyRef": {"name": "optiserve-redis", "key": "password"}}}}


def test_gcs_fault_tolerance_needs_an_address(helm):
    r = run([helm, "template", "osv", str(CHART), "--set", "ray.gcsFaultTolerance.enabled=true"])
    assert r.returncode != 0 and "redisAddress is required" in r.stderr


# ---- monitoring wiring ------------------------------------------------------------------------


def test_monitors_render_only_where_the_prometheus_operator_is_served(helm):
    kinds = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}

    def rendered_kinds(*args, crds):
        return {o["kind"] for o in helm_template(helm, *args, monitoring_crds=crds)} & kinds

    assert rendered_kinds(crds=True) == kinds
    assert rendered_kinds(crds=False) == set()
    assert rendered_kinds("--set", "monitoring.prometheusOperator=true", crds=False) == kinds
    assert rendered_kinds("--set", "monitoring.prometheusOperator=false", crds=True) == set()


@pytest.mark.parametrize("served", [True, False])
def test_install_against_a_cluster_asks_it_for_the_monitoring_api(helm, tmp_path, served):
    """What `helm install` does: render against the API server (--dry-run=server, the stand-in),
    whose discovery says whether monitoring.coreos.com/v1 is served; without it the install
    renders no monitors (instead of failing on kinds the cluster does not know)."""
    from .kube_standin import StandInApiServer

    without = () if served else ("monitoring.coreos.com/v1",)
    with StandInApiServer(without=without) as api:
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", "serving")
        api.add_secret("serving", "osv-optiserve-ray-auth", {"auth_token": "t"})
        api.add_pvc("serving", "optiserve-models")
        r = run([helm, "template", "osv", str(CHART), "--namespace", "serving",
                 "--dry-run=server", "--disable-openapi-validation"],
                env={**os.environ, "KUBECONFIG": str(kubeconfig)})
        assert r.returncode == 0, r.stderr
        assert ("GET", "/apis") in api.requests
    kinds = {o["kind"] for o in yaml.safe_load_all(r.stdout) if o}
    monitors = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    assert (kinds & monitors) == (monitors if served else set())
    assert "RayService" in kinds


def test_monitors_carry_the_selector_labels_and_ray_dashboard_wiring(rendered):
    objs = rendered["default"]
    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        (o,) = only(objs, kind)
        assert o["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    (pm,) = only(objs, "PodMonitor")
    endpoints = {e["port"]: e for e in pm["spec"]["podMetricsEndpoints"]}
    assert set(endpoints) == {"metrics", "dash-metrics"}
    for e in endpoints.values():
        assert {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                "targetLabel": "ray_io_cluster"} in e["relabelings"]
    head = pod_templates(rayservice(objs))["head"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    # Ray's dashboard metrics port (ray.dashboard.consts.DASHBOARD_METRIC_PORT)
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    assert ports["dash-metrics"] == DASHBOARD_METRIC_PORT
    # with Ray's autoscaler, its metrics too
    (pm,) = only(rendered["production"], "PodMonitor")
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} == {"metrics", "dash-metrics"}


def test_autoscaler_metrics_port_when_the_autoscaler_runs(helm):
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT

    objs = helm_template(helm, "--set", "ray.autoscaler.enabled=true")
    (pm,) = only(objs, "PodMonitor")
    assert "as-metrics" in {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    head = pod_templates(rayservice(objs))["head"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["as-metrics"] == \
        AUTOSCALER_METRIC_PORT


# ---- worker groups and pass-throughs ----------------------------------------------------------


def test_worker_group_pass_throughs_and_additional_groups(rendered):
    rs = rayservice(rendered["groups"])
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert list(groups) == ["cpu", "highmem"]
    spec = groups["cpu"]["template"]["spec"]
    c = spec["containers"][0]
    assert {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"} in c["env"]
    assert c["envFrom"] == [{"configMapRef": {"name": "optiserve-extra-env"}}]
    assert {"name": "extra-config", "configMap": {"name": "optiserve-extra-config"}} in \
        spec["volumes"]
    assert {"name": "extra-config", "mountPath": "/etc/optiserve-extra", "readOnly": True} in \
        c["volumeMounts"]
    assert spec["serviceAccountName"] == "optiserve-workers"
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "c7i.xlarge"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    meta = groups["cpu"]["template"]["metadata"]
    assert meta["annotations"] == {"example.com/scrape-logs": "true"}
    assert meta["labels"]["example.com/tier"] == "serving"
    head = pod_templates(rs)["head"]
    assert head["metadata"]["annotations"] == {"example.com/team": "serving"}
    assert head["spec"]["priorityClassName"] == "system-cluster-critical"
    hm = groups["highmem"]
    assert (hm["replicas"], hm["minReplicas"], hm["maxReplicas"]) == (1, 0, 3)
    # the group's own resources, with the gateway slot every worker pod offers
    assert json.loads(hm["rayStartParams"]["resources"].strip("'")) == {
        "highmem": 1, "optiserve_gateway": 1, "optiserve_model": 1000}
    hspec = hm["template"]["spec"]
    assert hspec["nodeSelector"] == {"example.com/pool": "highmem"}
    assert hspec["containers"][0]["resources"]["requests"]["memory"] == "32Gi"
    assert hm["template"]["metadata"]["labels"]["optiserve.dev/ray-group"] == "highmem"
    # each group gets its disruption budget
    pdbs = {p["spec"]["selector"]["matchLabels"]["optiserve.dev/ray-group"]
            for p in only(rendered["groups"], "PodDisruptionBudget")}
    assert pdbs == {"cpu", "highmem"}


def test_every_ray_pod_verifies_models_with_the_init_image(rendered):
    for values, objs in rendered.items():
        for group, t in pod_templates(rayservice(objs)).items():
            init = {i["name"]: i for i in t["spec"]["initContainers"]}
            assert init["verify-models"]["image"].endswith("-init"), (values, group)


def test_worker_group_names_are_checked(helm):
    r = run([helm, "template", "osv", str(CHART), "--set", "workers.additional[0].name=cpu",
             "--set", "workers.additional[0].replicas=1", "--set",
             "workers.additional[0].minReplicas=1", "--set", "workers.additional[0].maxReplicas=1"])
    assert r.returncode != 0 and "additional" in r.stderr
