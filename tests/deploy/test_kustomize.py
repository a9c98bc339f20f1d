"""k8s/ (plain kustomize) must equal what the Helm chart renders: base = the defaults, each overlay
= the defaults plus its values.yaml."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import ROOT, run

sys.path.insert(0, str(ROOT / "scripts"))
import render_k8s

K8S = ROOT / "k8s"
TARGETS = {"base": (K8S / "base", []),
           **{o: (K8S / "overlays" / o, [K8S / "overlays" / o / "values.yaml"])
              for o in render_k8s.OVERLAYS}}


def kustomize(kubectl: str, path: Path) -> str:
    r = run([kubectl, "kustomize", str(path)])
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_generated_files_are_up_to_date(helm):
    r = run([sys.executable, str(ROOT / "scripts/render_k8s.py"), "--check"])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kustomize_output_equals_helm_template(helm, kubectl, target):
    path, values = TARGETS[target]
    got = render_k8s.as_installed(render_k8s.objects(kustomize(kubectl, path)))
    want = render_k8s.as_installed(render_k8s.objects(render_k8s.helm_template(values)))
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == want[k], f"{target}: {k} differs from helm template"


def test_overlays_differ_where_expected(kubectl):
    def rayservice(path):
        objs = render_k8s.objects(kustomize(kubectl, path))
        return next(o for o in objs if o["kind"] == "RayService")

    base = rayservice(K8S / "base")
    gpu = rayservice(K8S / "overlays/gpu")
    cpu = rayservice(K8S / "overlays/cpu")
    groups = lambda rs: [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert groups(base) == ["cpu"] and groups(cpu) == ["cpu"] and groups(gpu) == ["cpu", "gpu"]
    assert "num_gpus" in gpu["spec"]["serveConfigV2"]
    assert cpu["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_drift_is_detected(helm, tmp_path, monkeypatch):
    """A changed chart default makes the committed base stale."""
    import shutil

    chart = tmp_path / "optiserve"
    shutil.copytree(render_k8s.CHART, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("shmSize: 1Gi", "shmSize: 3Gi", 1))
    monkeypatch.setattr(render_k8s, "CHART", chart)
    stale = [p for p, t in render_k8s.outputs().items() if p.read_text() != t]
    assert K8S / "base/optiserve.yaml" in stale


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kustomize_output_has_no_helm_labels(kubectl, target):
    text = kustomize(kubectl, TARGETS[target][0])
    assert "helm.sh/chart" not in text and "managed-by: Helm" not in text
    # the chart's own labels stay (selectors use them)
    assert "app.kubernetes.io/instance: optiserve" in text


def test_a_namespace_change_keeps_the_controllers_rbac(kubectl, tmp_path):
    """A kustomization on top of k8s/base that sets another namespace: every object, the
    RoleBinding's ServiceAccount subject and the controller's Prometheus selector follow it."""
    import shutil

    shutil.copytree(K8S / "base", tmp_path / "base")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "namespace: elsewhere\nresources:\n  - ../base\n")
    objs = render_k8s.objects(kustomize(kubectl, overlay))
    assert {o["metadata"]["namespace"] for o in objs} == {"elsewhere"}
    (rb,) = [o for o in objs if o["kind"] == "RoleBinding"]
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                               "namespace": "elsewhere"}]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OPTISERVE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.namespace"
    assert "$(OPTISERVE_NAMESPACE)" in env["OPTISERVE_PROMETHEUS_SELECTOR"]["value"]
    assert 'namespace="optiserve"' not in str(env)
