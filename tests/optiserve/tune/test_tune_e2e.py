"""optiserve tune end to end: a real optiserve serve (real Ray Serve) on the tiny classifier, the
real CLI attached to it, real load from the bench load generator. Trials are short (1 s steps)
and few, so the whole module stays around a minute on a 2-core machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from serving.config import build_serve_config, validate_serve_config
from serving.repository import ModelRepository
from tests.helpers import ROOT, ServeProcess, run_cli

pytestmark = pytest.mark.slow

SPACE = "max_batch_size: [1, 8]\nmax_delay_ms: [0]\nreplicas: [1, 2]\nthreads: [1]\n" \
        "gateway_replicas: [1]\n"
SHORT = ["--step-duration", "1", "--warmup", "0.2", "--max-steps", "2"]


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory):
    doc = build_serve_config(str(tiny_repo), [("tiny", 1)], version_cpus=1.0, gateway_cpus=0.25)
    proc = ServeProcess(doc, tmp_path_factory.mktemp("tune-server")).start()
    yield proc
    assert proc.stop() == 0


def _env() -> dict:
    env = {**os.environ, "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _trials(path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if d.get("kind") == "trial":
            out.append(d)
    return out


def test_tune_interrupted_resumed_applied_end_to_end(server, tiny_repo, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    study, report, cfg = tmp_path / "study.jsonl", tmp_path / "report", tmp_path / "tuned.yaml"
    v1_manifest = (tiny_repo / "tiny" / "1" / "manifest.json").read_bytes()
    gateway_before = gateway_user_config(server)
    assert gateway_before["models"]["tiny"]["versions"]
    args = ["tune", "tiny:1", "-r", str(tiny_repo), "--url", server.url, "--serve-api",
            server.serve_api, "--strategy", "grid", "--trials", "4", "--space", str(space),
            "--slo-p99-ms", "1000", "--study", str(study), *SHORT]

    # interrupted (Ctrl-C) once two trials are recorded
    first = subprocess.Popen([sys.executable, "-m", "optiserve", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 60
    while len(_trials(study)) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert "run the same command to continue" in err
    before = _trials(study)
    assert len(before) == 2

    # the same command continues: only the two configurations left are measured
    result = run_cli(*args, "--report", str(report), "--print-config", "--apply",
                     "--write-config", str(cfg), timeout=120)
    assert result.returncode == 0, result.stderr
    trials = _trials(study)
    assert trials[:2] == before
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert [(t["config"]["replicas"], t["config"]["max_batch_size"]) for t in trials] == \
        [(1, 1), (1, 8), (2, 1), (2, 8)]
    assert all(t["state"] == "complete" and t["value"] > 0 for t in trials), trials
    for t in trials:
        best = t["steps"][t["best_step"]]
        assert best["errors"] == 0 and best["p99_ms"] <= 1000
        # the machine's CPU use over each step (psutil, all cores: 0-100): the server and the
        # load generator were busy, so no step can read 0, and none more than every core
        cpu = [s["cpu_percent"] for s in t["steps"]]
        assert all(c is not None and 0 < c <= 100 for c in cpu), (t["number"], cpu)
    # batching-only trials changed nothing but the gateway's user_config: the same model and
    # gateway replicas (ids and pids) served them; the layout change started a second replica
    assert trials[1]["applied"] == "in place" and trials[3]["applied"] == "in place"
    assert trials[2]["applied"] == "redeployed"
    assert trials[1]["replicas"] == trials[0]["replicas"]
    assert trials[3]["replicas"] == trials[2]["replicas"]
    assert len(trials[0]["replicas"]["model"]) == 1 and len(trials[2]["replicas"]["model"]) == 2

    # the best configuration: a fragment on stdout, a new version, a serve config file
    best = max(trials, key=lambda t: t["value"])
    frag = yaml.safe_load(result.stdout)
    apps = {a["name"]: a["deployments"][0] for a in frag["applications"]}
    assert apps["tiny-v1"]["num_replicas"] == best["config"]["replicas"]
    assert apps["optiserve"]["user_config"]["models"]["tiny"]["versions"][1][
        "max_batch_size"] == best["config"]["max_batch_size"]
    repo = ModelRepository(tiny_repo)
    assert repo.versions("tiny") == [1, 2]
    assert (tiny_repo / "tiny" / "1" / "manifest.json").read_bytes() == v1_manifest
    assert repo.verify("tiny", 1) == [] and repo.verify("tiny", 2) == []
    tuned = repo.manifest("tiny", 2)
    assert tuned.batching.max_batch_size == best["config"]["max_batch_size"]
    assert tuned.batching.p99_target_ms == 1000 and "optiserve tune" in tuned.batching.reason
    assert tuned.artifacts == repo.manifest("tiny", 1).artifacts
    doc = validate_serve_config(yaml.safe_load(cfg.read_text()))
    served = {a["name"]: a for a in doc["applications"]}
    assert served["tiny-v1"]["deployments"][0]["num_replicas"] == best["config"]["replicas"]
    md = (report / "tune.md").read_text()
    assert "Best: trial" in md and (report / "tune.png").stat().st_size > 10_000
    # the attached server got its own configuration back: its replicas and, exactly, the
    # gateway's batching (user_config)
    assert len(server_replicas(server)) == 1
    assert gateway_user_config(server, want=gateway_before) == gateway_before


def server_replicas(server) -> list[str]:
    from optiserve.serve_api import ServeAPI

    deadline = time.monotonic() + 60
    while True:
        app = ServeAPI(server.serve_api).details()["applications"]["tiny-v1"]
        reps = [r["replica_id"] for d in app["deployments"].values() for r in d["replicas"]
                if r["state"] == "RUNNING"]
        if len(reps) == 1 or time.monotonic() > deadline:
            return reps
        time.sleep(0.5)


def gateway_user_config(server, want: dict | None = None) -> dict:
    """The gateway's user_config as Serve runs it; with ``want``, waited for (a minute at
    most) to become that."""
    from serving.config import GATEWAY_APP, GATEWAY_DEPLOYMENT
    from optiserve.serve_api import ServeAPI

    deadline = time.monotonic() + 60
    while True:
        app = ServeAPI(server.serve_api).details()["applications"][GATEWAY_APP]
        dep = app["deployments"][GATEWAY_DEPLOYMENT]
        got = (dep.get("deployment_config") or {}).get("user_config")
        if want is None or got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_an_slo_nothing_meets_exits_nonzero_with_the_closest_trial(server, tiny_repo,
                                                                     tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("max_batch_size: [8]\n")
    versions = ModelRepository(tiny_repo).versions("tiny")
    result = run_cli("tune", "tiny:1", "-r", str(tiny_repo), "--url", server.url, "--serve-api",
                     server.serve_api, "--strategy", "bayes", "--trials", "1", "--space",
                     str(space), "--slo-p99-ms", "0.01", "--study", str(tmp_path / "s.jsonl"),
                     "--apply", *SHORT, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "no configuration met p99 <= 0.01 ms in 1 trials; closest: trial 0" in \
        " ".join(result.stderr.split())
    assert ModelRepository(tiny_repo).versions("tiny") == versions  # nothing published


def test_an_invalid_space_file_names_the_field(tiny_repo, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("max_batch_size: [8, 0]\n")
    result = run_cli("tune", "tiny", "-r", str(tiny_repo), "--space", str(space), timeout=60)
    assert result.returncode == 1
    err = " ".join(result.stderr.split())
    assert f"invalid space file {space}" in err and \
        "max_batch_size[1]: 0 is not a positive integer" in err, err
