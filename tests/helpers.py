"""Small helpers shared by tests: run the real CLI, build manifests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.harness import PrometheusProcess, ServeProcess, free_port  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: float = 900, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``optiserve`` as a user would, in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "optiserve", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=cwd or ROOT,
    )


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, dict, bytes]:
    """One raw HTTP request: (status, lower-cased headers, body)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body,
                     headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def serve_api(base: str, method: str = "GET", doc: dict | None = None) -> dict | None:
    """Ray Serve's declarative REST API, as the rollout controller and KubeRay use it."""
    from optiserve.serve_api import ServeAPI

    api = ServeAPI(base)
    if method == "GET":
        return api.details()
    api.apply(doc)
    return None


def version_dir(build, src, where: Path, version: int = 1):
    """A variant build's files in a version directory and a manifest naming them (sha256s
    unchecked: the runtime reads files, the repository checks hashes)."""
    import shutil

    from serving.repository import Artifact, BatchingPolicy, Fidelity, Manifest, Measurements

    where.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build.model_file, where / build.model_file.name)
    extras = {**src.extra_files, **build.extra_files}
    for rel, path in extras.items():
        shutil.copyfile(path, where / rel)
    manifest = Manifest(
        name=src.name, version=version, variant=build.variant, task=src.task,
        runtime=build.runtime, model_file=build.model_file.name, device=build.device,
        execution_providers=[], model_signature=src.model_signature, signature=src.signature,
        preprocessing=src.preprocessing,
        artifacts=[Artifact(path=f, sha256="0" * 64, size_bytes=0)
                   for f in [build.model_file.name, *extras]],
        measurements=Measurements(fidelity=Fidelity(samples=0, passed=True, budget="-"),
                                  size_bytes=0),
        batching=BatchingPolicy(max_batch_size=32, max_delay_ms=1.0),
        source=src.source, optiserve_version="test", notes=build.notes)
    return manifest, where
