"""The Helm chart, checked with real tools: helm lint/template, kubernetes-validate (two Kubernetes
versions), the Prometheus Operator's published models, a schema of the RayService fields we use,
and the serving code's own serve config validation."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from serving.config import build_serve_config, validate_serve_config

from .conftest import (
    CHART,
    CI_VALUES,
    ROOT,
    helm_template,
    only,
    pod_templates,
    rayservice,
    run,
    serve_config,
)

KUBE_VERSIONS = ("1.29.0", "1.33.0")
#: kinds kubernetes-validate has schemas for; everything else is a custom resource
CORE_KINDS = {"ConfigMap", "Deployment", "NetworkPolicy", "Pod", "PodDisruptionBudget", "Role",
              "RoleBinding", "Service", "ServiceAccount", "PodTemplate", "Ingress"}
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
RAYSERVICE_SCHEMA = json.loads((Path(__file__).parent / "rayservice.schema.json").read_text())


def kubernetes_validate(paths: list[Path], version: str) -> None:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    assert exe.exists(), "kubernetes-validate is not installed in this environment (pip install " \
                         "kubernetes-validate)"
    r = run([str(exe), "--strict", "--quiet", "-k", version, *map(str, paths)])
    assert r.returncode == 0, f"kubernetes-validate {version}:\n{r.stdout}\n{r.stderr}"


def as_pod_template(name: str, template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
            "template": template}


# ---- helm itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_helm_lint_strict(helm, values):
    r = run([helm, "lint", "--strict", str(CHART), "-f", str(CI_VALUES[values])])
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_kind_is_checked_by_something(rendered):
    kinds = {o["kind"] for objs in rendered.values() for o in objs}
    assert kinds <= CORE_KINDS | MONITORING_KINDS | {"RayService"}, kinds
    assert {"RayService", "Deployment", "PodMonitor", "ServiceMonitor", "PrometheusRule",
            "NetworkPolicy", "PodDisruptionBudget", "Role", "RoleBinding", "ConfigMap",
            "ServiceAccount", "Service", "Pod", "Ingress"} <= kinds


@pytest.mark.parametrize("bad, message", [
    ({"serve.models.minilm.canaryWeight": "150"}, "canaryWeight"),
    ({"serve.models.minilm.versions.1.batching.max_batch_sizes": "8"}, "max_batch_sizes"),
    ({"serve.models.minilm.versions.1.runtime.intra_op_threads": "0"}, "intra_op_threads"),
    ({"modelRepository.source": "s3"}, "source"),
    ({"workers.gpu.gpus": "0"}, "gpus"),
    ({"unknownTopLevel": "1"}, "unknownTopLevel"),
])
def test_values_schema_rejects_bad_values(helm, bad, message):
    args = [a for k, v in bad.items() for a in ("--set", f"{k}={v}")]
    r = run([helm, "template", "osv", str(CHART), *args])
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_values_schema_is_generated_from_the_serve_config_models():
    r = run([sys.executable, str(ROOT / "scripts/gen_values_schema.py"), "--check"])
    assert r.returncode == 0, r.stderr


def test_chart_refuses_gpu_versions_without_gpu_workers(helm):
    r = run([helm, "template", "osv", str(CHART),
             "--set", "serve.models.minilm.versions.1.numGpus=1"])
    assert r.returncode != 0 and "enable workers.gpu" in r.stderr


# ---- core kinds: kubernetes-validate --strict on two Kubernetes versions ----------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_core_kinds_validate_strictly(rendered, tmp_path, version):
    paths = []
    for values, objs in rendered.items():
        docs = [o for o in objs if o["kind"] in CORE_KINDS]
        # the RayService's pod templates are core PodTemplateSpecs
        docs += [as_pod_template(f"{values}-{group}", t)
                 for group, t in pod_templates(rayservice(objs)).items()]
        assert docs
        for i, d in enumerate(docs):
            p = tmp_path / f"{values}-{i:02d}-{d['kind'].lower()}.yaml"
            p.write_text(yaml.safe_dump(d))
            paths.append(p)
    kubernetes_validate(paths, version)


def test_kubernetes_validate_catches_a_broken_pod_template(rendered, tmp_path):
    """The check above can fail: a misspelt field in a Ray pod template is rejected."""
    t = copy.deepcopy(pod_templates(rayservice(rendered["default"]))["cpu"])
    t["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump(as_pod_template("broken", t)))
    with pytest.raises(AssertionError, match="readOnlyRootFileSystem"):
        kubernetes_validate([p], KUBE_VERSIONS[-1])


# ---- Prometheus Operator resources against the published models -----------------------------


def _strict_model(doc: dict):
    """Validate with cloudcoil's Prometheus Operator models; fields the model does not know are
    dropped by it, so a round trip that loses anything is an unknown field."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"])
    obj = model.model_validate(doc)
    back = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def diff(a, b, path="") -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in a for d in (diff(a[k], b.get(k), f"{path}.{k}") if k in b
                                           else [f"{path}.{k} (unknown field)"])]
        if isinstance(a, list) and isinstance(b, list):
            return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
        return [] if a == b or str(a) == str(b) else [f"{path}: {a!r} became {b!r}"]

    problems = diff(doc, back)
    assert not problems, f"{doc['kind']} {doc['metadata']['name']}: {problems}"


def test_monitoring_resources_match_the_prometheus_operator_models(rendered):
    seen = set()
    for objs in rendered.values():
        for o in objs:
            if o["kind"] in MONITORING_KINDS:
                _strict_model(o)
                seen.add(o["kind"])
    assert seen == MONITORING_KINDS


def test_prometheus_operator_model_check_can_fail(rendered):
    (pm,) = only(rendered["default"], "PodMonitor")
    bad = copy.deepcopy(pm)
    bad["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
    with pytest.raises(AssertionError, match="unknown field"):
        _strict_model(bad)
    bad = copy.deepcopy(pm)
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(Exception, match="interval"):
        _strict_model(bad)


def test_monitors_point_at_real_ports(rendered):
    objs = rendered["default"]
    (pm,) = only(objs, "PodMonitor")
    ports = {p["name"]: p["containerPort"] for t in pod_templates(rayservice(objs)).values()
             for c in t["spec"]["containers"] for p in c["ports"]}
    assert ports[pm["spec"]["podMetricsEndpoints"][0]["port"]] == 8080
    (sm,) = only(objs, "ServiceMonitor")
    (dep,) = only(objs, "Deployment")
    svc = [s for s in only(objs, "Service") if s["metadata"]["name"] == dep["metadata"]["name"]]
    assert svc and sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc[0]["spec"]["ports"]}
    # the ServiceMonitor's selector selects the controller Service
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc[0]["metadata"]["labels"].items()
    # the PodMonitor's selector selects the Ray pods
    for t in pod_templates(rayservice(objs)).values():
        assert pm["spec"]["selector"]["matchLabels"].items() <= t["metadata"]["labels"].items()


# ---- the RayService ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_rayservice_matches_the_schema_of_the_fields_we_use(rendered, values):
    jsonschema.validate(rayservice(rendered[values]), RAYSERVICE_SCHEMA)


def test_rayservice_schema_can_fail(rendered):
    rs = copy.deepcopy(rayservice(rendered["default"]))
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rs, RAYSERVICE_SCHEMA)
    rs = copy.deepcopy(rayservice(rendered["default"]))
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rs, RAYSERVICE_SCHEMA)


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_serve_config_is_valid_for_the_serving_app(rendered, values):
    doc = serve_config(rendered[values])
    validate_serve_config(doc, repository_check=False)


def _worker_cpus(values: dict) -> float:
    """CPUs Ray sees on one pod of the default CPU worker group (its CPU request)."""
    cpu = str(values["workers"]["cpu"]["resources"]["requests"]["cpu"])
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def _sized(values: dict) -> tuple:
    """(gateway replicas, gateway CPUs, model replicas, model CPUs, threads) of values."""
    gw = values["serve"]["gateway"]
    (model,) = values["serve"]["models"].values()
    (v,) = model["versions"].values()
    return (gw["replicas"], gw["numCpus"], v["replicas"], v["numCpus"],
            v["runtime"]["intra_op_threads"])


@pytest.mark.parametrize("values_file", [None, "production"])
def test_chart_defaults_follow_the_serving_sizing_rule(values_file):
    """The default layout is what `optiserve serve` chooses for a machine of one worker pod's
    CPUs (serving.sizing.plan), once per worker pod: the gateway's replicas and CPUs, the model's
    replicas, reserved CPUs and intra-op threads."""
    from serving.sizing import plan

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file:
        over = yaml.safe_load(CI_VALUES[values_file].read_text())
        for key in ("workers", "serve"):
            values[key] = _deep_merge(values[key], over.get(key, {}))
    pods = values["workers"]["cpu"]["replicas"]
    layout = plan(_worker_cpus(values))
    assert _sized(values) == (layout.gateway_replicas * pods, layout.gateway_cpus,
                              layout.version_replicas * pods, layout.cpus_per_replica,
                              layout.threads), layout.describe()
    # and it fits: per pod, the gateway's and the model's reservations within the pod's CPUs
    assert layout.gateway_replicas * layout.gateway_cpus + \
        layout.version_replicas * layout.cpus_per_replica <= _worker_cpus(values)


def test_sizing_check_can_fail():
    from serving.sizing import plan

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values["workers"]["cpu"]["resources"]["requests"]["cpu"] = "8"
    layout = plan(_worker_cpus(values))
    assert _sized(values) != (layout.gateway_replicas, layout.gateway_cpus,
                              layout.version_replicas, layout.cpus_per_replica, layout.threads)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                               dict) else v
    return out


def test_serve_config_equals_what_the_serving_code_builds(rendered):
    """The defaults map to exactly build_serve_config's layout (gateway + one app per version),
    sized by serving.sizing.plan for the default worker pod."""
    from serving.sizing import plan

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    layout = plan(_worker_cpus(values))
    got = serve_config(rendered["default"])
    want = build_serve_config("/models", [("minilm", 1)], host="0.0.0.0", port=8000,
                              version_cpus=layout.cpus_per_replica,
                              gateway_cpus=layout.gateway_cpus,
                              gateway_replicas=layout.gateway_replicas,
                              version_replicas=layout.version_replicas, threads=layout.threads)
    # version keys are strings in the chart's YAML, as in JSON (what Ray's REST API receives)
    assert got == json.loads(json.dumps(want))


def test_serve_config_carries_the_traffic_split_and_batching(rendered):
    doc = serve_config(rendered["canary"])
    gw = doc["applications"][0]["deployments"][0]
    route = gw["user_config"]["models"]["minilm"]
    assert (route["stable"], route["canary"], route["canary_weight"], route["shadow"]) == \
        (1, 2, 10, 0.2)
    assert route["sticky_header"] == "X-Session-Id"
    assert route["versions"]["1"]["max_batch_size"] == 32
    # two batches in flight per replica unless set
    assert route["versions"]["1"]["max_inflight_batches"] == 4
    assert route["versions"]["2"]["max_inflight_batches"] == 8
    apps = {a["name"]: a for a in doc["applications"]}
    v2 = apps["minilm-v2"]["deployments"][0]
    assert v2["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in v2
    assert apps["minilm-v1"]["deployments"][0]["user_config"] == {"intra_op_threads": 2}
    assert gw["num_replicas"] == 2 and gw["user_config"]["max_body_bytes"] == 16777216


def test_serve_config_check_can_fail(rendered):
    from serving.config import ConfigError

    doc = serve_config(rendered["default"])
    del doc["applications"][1]  # the version app the gateway routes to
    with pytest.raises(ConfigError, match="minilm-v1"):
        validate_serve_config(doc, repository_check=False)


def test_gpu_worker_group(rendered):
    rs = rayservice(rendered["gpu"])
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    spec = gpu["template"]["spec"]
    res = spec["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1 and res["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["containers"][0]["image"].endswith("-gpu")
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert "nvidia.com/gpu" not in str(groups["cpu"])
    apps = {a["name"]: a for a in serve_config(rendered["gpu"])["applications"]}
    assert apps["minilm-v2"]["deployments"][0]["ray_actor_options"]["num_gpus"] == 0.5
    assert "num_gpus" not in apps["minilm-v1"]["deployments"][0]["ray_actor_options"]
    assert "gpu" not in str(rayservice(rendered["default"])["spec"]["rayClusterConfig"]
                            ["workerGroupSpecs"])


# ---- pods: hardening, storage, probes ---------------------------------------------------------


def _all_pod_specs(objs: list[dict]) -> dict[str, dict]:
    out = {f"ray-{g}": t["spec"] for g, t in pod_templates(rayservice(objs)).items()}
    for d in only(objs, "Deployment"):
        out[d["metadata"]["name"]] = d["spec"]["template"]["spec"]
    for p in only(objs, "Pod"):
        out[p["metadata"]["name"]] = p["spec"]
    return out


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_every_pod_and_container_is_hardened(rendered, values):
    for name, spec in _all_pod_specs(rendered[values]).items():
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, where
            assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], where
            # a read-only root needs a writable /tmp
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), where


def test_ray_pods_storage_and_probes(rendered):
    for values in ("default", "canary"):
        for t in pod_templates(rayservice(rendered[values])).values():
            spec = t["spec"]
            vols = {v["name"]: v for v in spec["volumes"]}
            assert vols["shm"]["emptyDir"]["medium"] == "Memory"
            assert vols["shm"]["emptyDir"]["sizeLimit"]
            c = spec["containers"][0]
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert "/dev/shm" in mounts and mounts["/models"]["readOnly"] is True
            assert c["readinessProbe"] and c["livenessProbe"]["httpGet"]
            assert spec["automountServiceAccountToken"] is False
            init = {i["name"]: i for i in spec["initContainers"]}
            # every artifact's sha256 checked before Ray starts
            assert init["verify-models"]["command"][:3] == ["optiserve", "repo", "verify"]
            assert "/models" in init["verify-models"]["command"]
            if values == "default":
                assert vols["models"]["persistentVolumeClaim"]["readOnly"] is True
                assert "fetch-models" not in init
            else:
                assert "emptyDir" in vols["models"]
                names = [i["name"] for i in spec["initContainers"]]
                assert names == ["fetch-models", "verify-models"], names
                assert init["fetch-models"]["args"][:2] == [
                    "copy", ":s3,provider=AWS,env_auth=true:models-bucket/model-repository"]
                assert init["fetch-models"]["envFrom"][0]["secretRef"]["name"] == \
                    "optiserve-models-s3"


def test_ray_serving_environment(rendered):
    rs = rayservice(rendered["default"])
    for t in pod_templates(rs).values():
        env = {e["name"]: e.get("value") for e in t["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert head["metrics-export-port"] == "8080" and head["num-cpus"] == "0"
    for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert g["rayStartParams"]["metrics-export-port"] == "8080"


# ---- the rollout controller and its RBAC ------------------------------------------------------


def test_rollout_controller_least_privilege(rendered):
    objs = rendered["default"]
    (role,) = only(objs, "Role")
    allowed = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert allowed == {
        ("ray.io", "rayservices", v) for v in ("get", "list", "watch", "patch")} | {
        ("", "configmaps", v) for v in ("get", "create", "update", "patch")}
    assert not only(objs, "ClusterRole") and not only(objs, "ClusterRoleBinding")
    rs_name = rayservice(objs)["metadata"]["name"]
    named = {r["resources"][0]: r["resourceNames"] for r in role["rules"] if "resourceNames" in r}
    assert named["rayservices"] == [rs_name]
    (dep,) = only(objs, "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    # metrics bind the pod's own address, not 0.0.0.0
    assert container["args"] == ["--metrics-port=9464", "--metrics-host=$(POD_IP)"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["OPTISERVE_ROLLOUT_TARGET"] == "rayservice"
    assert env["OPTISERVE_RAYSERVICE"] == rs_name
    # one state ConfigMap per model, named by the prefix the controller gets
    from serving.rollout.store import configmap_name

    assert env["OPTISERVE_ROLLOUT_CONFIGMAP"] == "osv-optiserve-rollout-state"
    assert named["configmaps"] == [configmap_name(env["OPTISERVE_ROLLOUT_CONFIGMAP"], "minilm")]
    (cm_rule,) = [r for r in role["rules"] if "resourceNames" in r and r["resources"] == [
        "configmaps"]]
    assert cm_rule["verbs"] == ["get", "update", "patch"]
    assert env["OPTISERVE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # the analysis reads this release's series only, and the PodMonitor provides the label
    # the namespace is the pod's (Kubernetes expands $(VAR) of an earlier variable), so the
    # selector survives a namespace change of the kustomize output
    assert env["OPTISERVE_PROMETHEUS_SELECTOR"] == \
        'namespace="$(OPTISERVE_NAMESPACE)",release="osv"'
    names = [e["name"] for e in container["env"]]
    assert names.index("OPTISERVE_NAMESPACE") < names.index("OPTISERVE_PROMETHEUS_SELECTOR")
    assert env["OPTISERVE_SCRAPE_INTERVAL"] == "15s"
    (pm,) = only(objs, "PodMonitor")
    relabels = pm["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "release"} in relabels
    from serving.rollout import RolloutSpec

    RolloutSpec(model="m", stable=1, canary=2,
                prometheus_selector=env["OPTISERVE_PROMETHEUS_SELECTOR"].replace(
                    "$(OPTISERVE_NAMESPACE)", "serving"))  # it parses
    (rb,) = only(objs, "RoleBinding")
    assert rb["roleRef"]["name"] == role["metadata"]["name"]
    assert rb["subjects"][0]["name"] == dep["spec"]["template"]["spec"]["serviceAccountName"]


@pytest.mark.parametrize("models", [
    ["minilm", "bert-base.en", "0x"],
    ["my_model", "bert.", "a-", "x_y_z", "0---", "a..b-"],
])
def test_state_configmap_names_are_the_controllers(helm, tmp_path, models):
    """The Role names exactly the ConfigMaps serving.rollout.store.configmap_name gives, for
    names that are Kubernetes names as they are and names that are hashed."""
    from serving.rollout.store import configmap_name

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"serve": {"models": {
        "minilm": None, **{m: {"versions": {"1": {}}} for m in models}}},
        "rolloutController": {"stateConfigMap": "state"}}))
    objs = helm_template(helm, "-f", str(values))
    (role,) = only(objs, "Role")
    (names,) = [r["resourceNames"] for r in role["rules"]
                if r["resources"] == ["configmaps"] and "resourceNames" in r]
    assert names == [configmap_name("state", m) for m in sorted(models)]
    assert len(set(names)) == len(names)


def test_dashboards_configmaps_carry_the_sidecar_label(rendered):
    cms = [c for c in only(rendered["default"], "ConfigMap")
           if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert {c["metadata"]["name"].rsplit("-", 1)[1] for c in cms} == {"overview", "canary", "gpu"}
    for c in cms:
        (text,) = c["data"].values()
        assert json.loads(text)["uid"].startswith("optiserve-")


def test_network_policies_and_disruption_budgets(rendered):
    objs = rendered["gpu"]
    pols = {p["metadata"]["name"]: p for p in only(objs, "NetworkPolicy")}
    ray = next(p for n, p in pols.items() if n.endswith("-ray"))
    ports = {p["port"] for rule in ray["spec"]["ingress"] for p in rule.get("ports", [])}
    # inference, Ray's metrics (and the head's dashboard metrics), the dashboard
    assert ports == {8000, 8080, 44227, 8265}
    pdbs = {p["spec"]["selector"]["matchLabels"]["optiserve.dev/ray-group"]
            for p in only(objs, "PodDisruptionBudget")}
    assert pdbs == {"cpu", "gpu"}


def test_helm_test_pod_sends_an_inference_request(rendered):
    (pod,) = only(rendered["default"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/v2/models/minilm" in script and '+ "/infer"' in script
    assert f"http://{rayservice(rendered['default'])['metadata']['name']}-serve-svc:8000" in script
    compile(script, "helm-test", "exec")


def test_release_names_stay_short(helm):
    objs = helm_template(helm, release="a-very-long-release-name-for-a-serving-stack")
    assert len(rayservice(objs)["metadata"]["name"]) <= 40
