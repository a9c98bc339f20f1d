"""Canary rollouts end to end: real Ray Serve, a real Prometheus, the real CLI.

The server starts with fp32 (stable) and two bad canaries served; the INT8 version is not
served: each rollout of it deploys it first (a new Serve application through the REST API)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from serving.config import gateway_user_config, version_app_name
from optiserve.serve_api import ServeAPI
from tests.helpers import ROOT, PrometheusProcess, ServeProcess, free_port, run_cli
from tests.support.chart import chart_serving, serving_values

pytestmark = pytest.mark.slow

INITIAL = ("fp32", "broken", "degraded")
FAST = ["--steps", "50,100", "--interval", "4s", "--min-requests", "10",
        "--failure-budget", "1", "--shadow", "0.5", "--max-p99-ratio", "3",
        "--max-wait-intervals", "6", "--scrape-interval", "1s"]


@pytest.fixture(scope="module")
def env(rollout_repo, tmp_path_factory):
    repo_dir, v = rollout_repo
    # what the chart deploys for these versions (its serve config and settings)
    doc, settings = chart_serving(serving_values(repo_dir, {"minilm": {
        "stable": v["fp32"], "versions": {v[k]: {"numCpus": 0.5, "replicas": 1}
                                          for k in INITIAL}}}))
    work = tmp_path_factory.mktemp("rollout-e2e")
    server = ServeProcess(doc, work, env={**settings,
                                          "RAY_metrics_report_interval_ms": "1000"}).start()
    controller_port = free_port()
    prom = PrometheusProcess(work, {"optiserve": f"127.0.0.1:{server.metrics_port}",
                                    "controller": f"127.0.0.1:{controller_port}"}).start()
    server.prometheus, server.versions, server.repo = prom, v, repo_dir
    server.controller_port, server.work = controller_port, work
    yield server
    prom.stop()
    server.stop()


def common(env) -> list[str]:
    return ["--serve-api", env.serve_api, "--prometheus", env.prometheus.url,
            "--repository", str(env.repo)]


def traffic(env) -> dict:
    cfg = ServeAPI(env.serve_api).deployed_config()
    return gateway_user_config(cfg)["models"]["minilm"]


def start_load(env, seconds: float, rate: float = 40) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "optiserve", "bench", env.url, "--model", "minilm",
         "--rate", str(rate), "--duration", str(seconds), "--warmup", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def finish_load(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=180)
    return json.loads(out)


def served_apps(env) -> set[str]:
    return set(ServeAPI(env.serve_api).details().get("applications") or {})


def reset(env) -> None:
    """Back to the initial versions with fp32 stable and no canary, for the next test."""
    from optiserve.rollout.state import Split
    from optiserve.rollout.targets import LocalServeTarget

    api = ServeAPI(env.serve_api)
    initial = tuple(sorted(env.versions[k] for k in INITIAL))
    LocalServeTarget(api, confirm_timeout_s=60).apply(
        "minilm", Split(stable=env.versions["fp32"], routed=initial, deployed=initial))
    apps = ["optiserve", *(version_app_name("minilm", x) for x in initial)]
    api.wait_running(apps, timeout_s=180)
    # an application the split no longer deploys is listed (DELETING) until Serve has torn it
    # down: the next test starts from the initial applications only
    deadline = time.monotonic() + 120
    while (served := served_apps(env)) != set(apps):
        assert time.monotonic() < deadline, f"still served after the reset: {served}"
        time.sleep(0.5)
    (env.repo / ".rollouts" / "minilm.json").unlink(missing_ok=True)


def status(env) -> dict:
    result = run_cli("rollout", "status", "minilm", "--json", *common(env)[2:])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_new_version_is_deployed_rolled_out_and_the_old_one_retired_with_no_failed_request(
        env):
    v = env.versions
    assert version_app_name("minilm", v["int8"]) not in served_apps(env)
    load = start_load(env, 100)
    try:
        result = run_cli("rollout", "start", "minilm", "--canary", str(v["int8"]),
                         "--min-agreement", "0.98", "--retire-after", "3s", *FAST, *common(env),
                         timeout=300)
    finally:
        bench = finish_load(load)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"deploying minilm:{v['int8']}" in out
    # each step's clock started only once the gateway reported its weights (Prometheus)
    assert f"the gateway reports 50% to v{v['int8']}" in out, out
    assert f"removed minilm:{v['fp32']}" in out
    st = status(env)
    assert st["phase"] == "promoted", st["reason"]
    assert [t["to_phase"] for t in st["history"]] == ["progressing", "promoted"]
    weights = [a["weight"] for a in st["analyses"] if a["outcome"] == "pass"]
    assert weights == [50, 100]  # every step judged, in order, once each
    checks = {c["name"]: c for c in st["last_analysis"]["checks"]}
    assert checks["agreement"]["verdict"] == "pass" and checks["agreement"]["value"] > 0.98
    assert checks["error_rate"]["value"] == 0
    assert checks["compute_vs_predicted"]["value"] > 0  # observed next to the manifest's
    t = traffic(env)
    assert t["stable"] == v["int8"] and t.get("canary") is None
    assert str(v["fp32"]) not in {str(k) for k in t["versions"]}
    apps = served_apps(env)
    assert version_app_name("minilm", v["fp32"]) not in apps  # retired
    assert version_app_name("minilm", v["int8"]) in apps
    assert bench["ok"] > 500 and bench["errors"] == {}, bench  # no request failed
    # the retired version's series and the old roles are gone from Prometheus
    tw = 'ray_optiserve_traffic_weight{model="minilm"'
    env.prometheus.wait_for(f'{tw},version="{v["fp32"]}"}}', timeout=30,
                            predicate=lambda r: not r)
    assert env.prometheus.query(f"count by (version) ({tw}}}) > 1") == []
    reset(env)
    assert version_app_name("minilm", v["int8"]) not in served_apps(env)


def test_faithful_canary_is_promoted_at_low_traffic(env):
    """~1.5 requests/s: each step needs several intervals to gather min_requests; the window
    grows while it waits (it used to restart each interval, and the canary was rolled back)."""
    v = env.versions
    load = start_load(env, 140, rate=1.5)
    try:
        result = run_cli("rollout", "start", "minilm", "--canary", str(v["int8"]), "--keep",
                         "--steps", "50,100", "--interval", "10s", "--min-requests", "20",
                         "--max-wait-intervals", "6", "--shadow", "0.5", "--min-agreement",
                         "0.98", "--max-p99-ratio", "3", "--failure-budget", "0",
                         "--scrape-interval", "1s", *common(env), timeout=300)
    finally:
        bench = finish_load(load)
    assert result.returncode == 0, result.stdout + result.stderr
    st = status(env)
    assert st["phase"] == "promoted", st["reason"]
    outcomes = [(a["weight"], a["outcome"]) for a in st["analyses"]]
    assert [o for o in outcomes if o[1] == "wait"], outcomes  # it had to wait for data
    assert [w for w, o in outcomes if o == "pass"] == [50, 100]
    assert not [o for o in outcomes if o[1] == "fail"]
    grown = [a["window_s"] for a in st["analyses"] if a["weight"] == 50]
    assert grown == sorted(grown) and grown[-1] >= 2 * grown[0]  # evidence accumulated
    assert bench["errors"] == {}
    reset(env)


def test_failing_canary_is_rolled_back(env):
    v = env.versions
    load = start_load(env, 45)
    result = run_cli("rollout", "start", "minilm", "--canary", str(v["broken"]),
                     "--min-agreement", "0", *FAST, *common(env), timeout=300)
    finish_load(load)
    assert result.returncode == 3, result.stdout + result.stderr
    st = status(env)
    assert st["phase"] == "rolled_back"
    assert "error_rate" in st["reason"]
    failed = [a for a in st["analyses"] if a["outcome"] == "fail"]
    assert len(failed) == 2 and all(a["weight"] == 50 for a in failed)  # never reached 100 %
    assert {c["name"]: c["verdict"] for c in failed[-1]["checks"]}["error_rate"] == "fail"
    t = traffic(env)
    assert t["stable"] == v["fp32"] and t.get("canary") is None
    assert version_app_name("minilm", v["broken"]) not in served_apps(env)  # removed
    reset(env)


def test_disagreeing_canary_is_rolled_back_on_agreement(env):
    v = env.versions
    load = start_load(env, 45)
    result = run_cli("rollout", "start", "minilm", "--canary", str(v["degraded"]), "--keep",
                     "--min-agreement", "0.98", *FAST, *common(env), timeout=300)
    bench = finish_load(load)
    assert result.returncode == 3, result.stdout + result.stderr
    st = status(env)
    assert st["phase"] == "rolled_back"
    last = {c["name"]: c for c in st["last_analysis"]["checks"]}
    assert last["agreement"]["verdict"] == "fail" and last["agreement"]["value"] < 0.98
    assert last["error_rate"]["verdict"] == "pass"  # it raised no errors at all
    assert bench["errors"] == {}
    assert traffic(env)["stable"] == v["fp32"]
    assert version_app_name("minilm", v["degraded"]) in served_apps(env)  # --keep
    reset(env)


def test_rollout_errors_are_clear_and_apply_nothing(env):
    v = env.versions
    before = traffic(env)
    cases = [
        (["--canary", str(v["fp32"])], "canary"),
        (["--canary", "999"], "minilm:999 cannot be deployed"),
        (["--canary", "soon"], "--canary must be a version number or 'latest'"),
    ]
    for args, message in cases:
        result = run_cli("rollout", "start", "minilm", *args, *FAST, *common(env))
        assert result.returncode != 0 and message in result.stderr, result.stderr
    result = run_cli("rollout", "start", "nope", "--canary", "1", *FAST, *common(env))
    assert result.returncode != 0 and "model 'nope' is not served" in result.stderr
    # Serve API unreachable
    result = run_cli("rollout", "start", "minilm", "--canary", str(v["int8"]), *FAST,
                     "--serve-api", f"http://127.0.0.1:{free_port()}", "--prometheus",
                     env.prometheus.url, "--repository", str(env.repo))
    assert result.returncode != 0 and "unreachable" in result.stderr
    assert traffic(env) == before


def test_unreachable_prometheus_never_promotes(env):
    v = env.versions
    load = start_load(env, 40)
    result = run_cli("rollout", "start", "minilm", "--canary", str(v["int8"]), *FAST, "--keep",
                     "--serve-api", env.serve_api, "--repository", str(env.repo),
                     "--prometheus", f"http://127.0.0.1:{free_port()}", timeout=300)
    finish_load(load)
    assert result.returncode == 3, result.stdout + result.stderr
    st = status(env)
    assert st["phase"] == "rolled_back" and "Prometheus" in st["reason"]
    assert all(a["outcome"] == "fail" for a in st["analyses"])
    assert traffic(env)["stable"] == v["fp32"]
    reset(env)


def _controller(env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "optiserve", "rollout", "controller", "--poll", "0.5",
         "--metrics-port", str(env.controller_port), "--metrics-host", "127.0.0.1",
         *common(env)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=open(env.work / "controller.log", "a"), stderr=subprocess.STDOUT)


def test_killed_controller_resumes_where_it_was(env):
    v = env.versions
    load = start_load(env, 70)
    result = run_cli("rollout", "start", "minilm", "--canary", str(v["int8"]), "--detach",
                     "--min-agreement", "0.98", *FAST, "--steps", "25,50,100", *common(env))
    assert result.returncode == 0, result.stderr
    ctl = _controller(env)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and status(env)["step"] < 1:
            time.sleep(0.5)
        before = status(env)
        assert before["phase"] == "progressing" and before["step"] == 1
        # its metrics reach Prometheus while it runs
        env.prometheus.wait_for('optiserve_rollout_phase{model="minilm",phase="progressing"} == 1')
        ctl.send_signal(signal.SIGKILL)
        ctl.wait(timeout=10)
        time.sleep(2)
        ctl = _controller(env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status(env)["phase"] == "progressing":
            time.sleep(0.5)
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=20)
        bench = finish_load(load)
    st = status(env)
    assert st["phase"] == "promoted", st["reason"]
    passed = [a["weight"] for a in st["analyses"] if a["outcome"] == "pass"]
    assert passed == [25, 50, 100]  # resumed at its step: none skipped, none repeated
    assert bench["errors"] == {}
    reset(env)


def test_promote_from_another_process_is_carried_out_by_the_running_controller(env):
    """One writer: `rollout promote` records a request; the controller applies it."""
    v = env.versions
    load = start_load(env, 90)
    result = run_cli("rollout", "start", "minilm", "--canary", str(v["int8"]), "--detach",
                     *FAST, "--steps", "25,50,100", "--interval", "60s", *common(env))
    assert result.returncode == 0, result.stderr
    ctl = _controller(env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
                status(env)["phase"] == "progressing" and status(env)["confirmed"]):
            time.sleep(0.5)
        assert status(env)["confirmed"], status(env)
        promoted = run_cli("rollout", "promote", "minilm", *common(env), timeout=120)
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=20)
        bench = finish_load(load)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "the running controller carries it out" in promoted.stdout
    st = status(env)
    assert st["phase"] == "promoted" and "promoted by hand (asked by" in st["reason"]
    assert st["request"] is None and traffic(env)["stable"] == v["int8"]
    assert bench["errors"] == {}
    reset(env)
