"""checkov on the Helm chart, on the kustomize output, and on the Ray pod templates (checkov has no
checks for custom resources, so they are scanned as Pods next to the chart's NetworkPolicies).
Zero failures; every skip is justified in .checkov.yaml."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from .conftest import CHART, ROOT, find_tool, only, pod_templates, rayservice, run

CONFIG = ROOT / ".checkov.yaml"


def scan(checkov_bin: str, *args: str, config: bool = True) -> dict:
    env = {**os.environ, "PATH": f"{Path(find_tool('helm')).parent}{os.pathsep}"
                                 f"{Path(find_tool('kubectl')).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}",
           "LOG_LEVEL": "WARNING"}
    cmd = [checkov_bin, *args, "-o", "json", "--skip-download"]
    if config:
        cmd += ["--config-file", str(CONFIG)]
    # without --config-file checkov would still pick .checkov.yaml up from the repository root
    r = run(cmd, env=env, timeout=600, cwd=ROOT if config else "/")
    assert r.stdout.strip(), r.stderr
    doc = json.loads(r.stdout)
    reports = doc if isinstance(doc, list) else [doc]
    summary = {"passed": 0, "failed": 0}
    failed = []
    for rep in reports:
        for k in summary:
            summary[k] += rep["summary"][k]
        for c in rep.get("results", {}).get("failed_checks", []):
            failed.append(f"{c['check_id']} {c['check_name']} ({c['resource']})")
    return {"summary": summary, "failed": failed}


def assert_clean(result: dict) -> None:
    assert result["summary"]["passed"] > 0, "checkov checked nothing"
    assert result["summary"]["failed"] == 0, "\n".join(result["failed"])


def test_every_skip_is_justified():
    text = CONFIG.read_text()
    skips = yaml.safe_load(text)["skip-check"]
    assert skips
    for check in skips:
        # a comment naming the check precedes its entry
        assert re.search(rf"#[^\n]*{check}[^\n]*\"[^\"]+\"", text), f"{check} has no justification"


def test_checkov_chart(checkov):
    assert_clean(scan(checkov, "-d", str(CHART), "--framework", "helm"))


def test_checkov_kustomize(checkov):
    assert_clean(scan(checkov, "-d", str(ROOT / "k8s"), "--framework", "kustomize"))


def test_checkov_ray_pod_templates(checkov, rendered, tmp_path):
    """The Ray pods as KubeRay makes them (its init container and autoscaler sidecar added,
    tests/deploy/kuberay_pods.py): checkov's Kubernetes checks, a second opinion beside the
    Pod Security tests."""
    from .kuberay_pods import kuberay_pods

    for values, objs in rendered.items():
        specs = kuberay_pods(rayservice(objs))
        for group, t in pod_templates(rayservice(objs)).items():
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {**t["metadata"], "name": f"{values}-ray-{group}",
                                "namespace": "optiserve"},
                   "spec": specs[group]}
            (tmp_path / f"{values}-{group}.yaml").write_text(yaml.safe_dump(pod))
        for np in only(objs, "NetworkPolicy"):
            np = {**np, "metadata": {**np["metadata"], "namespace": "optiserve"}}
            (tmp_path / f"{values}-{np['metadata']['name']}.yaml").write_text(yaml.safe_dump(np))
    result = scan(checkov, "-d", str(tmp_path), "--framework", "kubernetes")
    assert_clean(result)


def test_checkov_finds_problems_without_the_skips(checkov):
    """The scan is live: without .checkov.yaml the justified findings come back."""
    result = scan(checkov, "-d", str(CHART), "--framework", "helm", config=False)
    assert result["summary"]["failed"] > 0
    assert any(f.startswith("CKV_K8S_43") for f in result["failed"])
