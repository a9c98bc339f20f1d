"""Shared fixtures of the deployment checks: real tools, rendered chart manifests.

Tools come from the repository's .tools/bin (scripts/install-tools.sh) or PATH. A missing tool
fails the test that needs it, naming the install step: these checks never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/optiserve"
CI_VALUES = {name: CHART / "ci" / f"{name}-values.yaml"
             for name in ("default", "gpu", "canary", "production", "groups")}


def find_tool(name: str) -> str:
    local = ROOT / ".tools/bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (looked in .tools/bin and PATH): run "
                    "scripts/install-tools.sh", pytrace=False)
    return found


def run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          **kw)


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def checkov() -> str:
    return find_tool("checkov")


#: `helm template` has no cluster to ask: tell it the Prometheus Operator's CRDs are served, as
#: on the clusters the chart targets (monitoring.prometheusOperator "auto" renders the monitors)
MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1")


def helm_template(helm: str, *args: str, release: str = "osv",
                  monitoring_crds: bool = True) -> list[dict]:
    api = MONITORING_API if monitoring_crds else ()
    r = run([helm, "template", release, str(CHART), "--namespace", "serving", *api, *args])
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="session")
def rendered(helm) -> dict[str, list[dict]]:
    """`helm template` of the chart for each values file in helm/optiserve/ci."""
    return {name: helm_template(helm, "-f", str(path)) for name, path in CI_VALUES.items()}


def only(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def rayservice(objs: list[dict]) -> dict:
    (rs,) = only(objs, "RayService")
    return rs


def serve_config(objs: list[dict]) -> dict:
    return yaml.safe_load(rayservice(objs)["spec"]["serveConfigV2"])


def pod_templates(rs: dict) -> dict[str, dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    for g in cluster.get("workerGroupSpecs", []):
        out[g["groupName"]] = g["template"]
    return out
