"""What the Helm chart deploys, for the live suites to run exactly that on a local Ray.

``chart_serving(values)`` renders helm/optiserve with ``helm template`` and returns the
RayService's ``serveConfigV2`` (the serve config the cluster runs) and the environment of a
CPU worker's Ray container (the settings the gateway and model replicas read). A live test
starts ``optiserve serve --config`` with both: the same ingress (the gateway's own HTTP server),
the same serve config, the same settings as on Kubernetes. What differs locally is only where:
the listening address (the test's free port) and the repository path (given in ``values``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/optiserve"
#: variables that say where, not how: the test's own address and repository replace them
LOCAL_ONLY = frozenset({"OPTISERVE_LISTEN", "OPTISERVE_GRPC_LISTEN", "OPTISERVE_REPOSITORY"})


def helm_binary() -> str:
    local = ROOT / ".tools/bin/helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if not found:
        raise RuntimeError("helm is not installed (.tools/bin or PATH): run "
                           "scripts/install-tools.sh")
    return found


def render(values: dict) -> list[dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
        path = f.name
    try:
        r = subprocess.run([helm_binary(), "template", "osv", str(CHART), "--namespace",
                            "serving", "-f", path], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        raise RuntimeError(f"helm template failed: {r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def chart_serving(values: dict) -> tuple[dict, dict[str, str]]:
    """(serve config, environment) of what the chart deploys with these values: the RayService's
    serveConfigV2 and the OPTISERVE_*/RAY_* variables of the first worker group's container."""
    objs = render(values)
    (rs,) = [o for o in objs if o["kind"] == "RayService"]
    doc = yaml.safe_load(rs["spec"]["serveConfigV2"])
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    container = group["template"]["spec"]["containers"][0]
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e
           and e["name"].startswith(("OPTISERVE_", "RAY_")) and e["name"] not in LOCAL_ONLY}
    doc = json.loads(json.dumps(doc))
    # version numbers as numbers, as serving.config.build_serve_config writes them (YAML and
    # JSON have string keys; the gateway's config model reads either)
    for route in doc["applications"][0]["deployments"][0]["user_config"]["models"].values():
        route["versions"] = {int(k): v for k, v in route["versions"].items()}
    return doc, env


def serving_values(repository: str | Path, models: dict[str, dict], **serve) -> dict:
    """Chart values for a local repository: ``models`` as serve.models (versions by number),
    any other serve.* key (gateway, settings...) merged in; no init step (no image here).
    Helm merges values into the chart's defaults, so the default model versions the test does
    not serve are removed (null), not served alongside."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["models"]
    merged: dict = {}
    for name, m in defaults.items():
        if name not in models:
            merged[name] = None
        else:
            gone = {v: None for v in m.get("versions", {}) if str(v) not in
                    {str(k) for k in models[name].get("versions", {})}}
            merged[name] = {**models[name], "versions": {
                **gone, **{str(k): v for k, v in models[name].get("versions", {}).items()}}}
    for name, m in models.items():
        if name not in merged:
            merged[name] = {**m, "versions": {str(k): v for k, v in m["versions"].items()}}
    return {"modelRepository": {"path": str(repository), "verify": False},
            "serve": {"models": merged, **serve}}
