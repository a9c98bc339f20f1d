"""A rollout on a server started as a user starts it: the sizing rule's defaults, which fill the
machine (on 2 CPUs: gateway 0.25 + model 1.75), and the rollout's default flags, at low traffic.

Real Ray Serve, a real Prometheus, the real CLI. Before, the canary's copy asked for the
stable's 1.75 CPUs again and was never scheduled (the rollout waited out its deploy timeout),
and at ~1.5 requests/s the default 10 % shadow gave too few comparisons to decide."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from optiserve.serve_api import ServeAPI
from serving.config import gateway_user_config, version_app_name
from tests.helpers import PrometheusProcess, ServeProcess, run_cli

from .test_rollout_e2e import finish_load, start_load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(rollout_repo, tmp_path_factory):
    repo_dir, v = rollout_repo
    # exactly what `optiserve serve --repository R minilm:N` runs, no sizing flag
    printed = run_cli("serve", "--repository", str(repo_dir), f"minilm:{v['fp32']}",
                      "--print-config", timeout=120)
    assert printed.returncode == 0, printed.stderr
    doc = yaml.safe_load(printed.stdout)
    work = tmp_path_factory.mktemp("rollout-defaults")
    server = ServeProcess(doc, work, env={"RAY_metrics_report_interval_ms": "1000"}).start()
    prom = PrometheusProcess(work, {"optiserve": f"127.0.0.1:{server.metrics_port}"}).start()
    server.prometheus, server.versions, server.repo, server.doc = prom, v, repo_dir, doc
    yield server
    prom.stop()
    server.stop()


def version_deployment(cfg: dict, version: int) -> dict:
    name = version_app_name("minilm", version)
    app = next(a for a in cfg["applications"] if a["name"] == name)
    return app["deployments"][0]


def test_a_canary_rolls_out_at_default_sizing_and_low_traffic_with_default_flags(env):
    v = env.versions
    stable = version_deployment(env.doc, v["fp32"])
    # the sizing rule filled the machine: the stable's CPUs were not free for a copy
    assert stable["ray_actor_options"]["num_cpus"] >= 1.5
    load = start_load(env, 150, rate=1.5)
    try:
        result = run_cli(
            "rollout", "start", "minilm", "--canary", str(v["int8"]),
            # the measured case of the issue, default --shadow
            "--steps", "50,100", "--interval", "10s", "--max-wait-intervals", "6",
            "--min-requests", "20", "--scrape-interval", "1s", "--retire-after", "3s",
            "--deploy-timeout", "90s", "--serve-api", env.serve_api,
            "--prometheus", env.prometheus.url, "--repository", str(env.repo), timeout=400)
    finally:
        bench = finish_load(load)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"removed minilm:{v['fp32']}" in out, out
    st = json.loads(run_cli("rollout", "status", "minilm", "--json", "--prometheus",
                            env.prometheus.url, "--repository", str(env.repo)).stdout)
    assert st["phase"] == "promoted", st["reason"]
    checks = {c["name"]: c for c in st["last_analysis"]["checks"]}
    assert checks["agreement"]["verdict"] == "pass", checks
    assert bench["errors"] == {}, bench  # no request failed
    # the promoted version runs with the share the stable had, its threads kept
    cfg = ServeAPI(env.serve_api).deployed_config()
    dep = version_deployment(cfg, v["int8"])
    assert dep["ray_actor_options"] == stable["ray_actor_options"], dep
    assert dep["user_config"] == stable["user_config"]
    models = gateway_user_config(cfg)["models"]["minilm"]
    assert models["stable"] == v["int8"] and not models.get("canary")
    api = ServeAPI(env.serve_api)
    api.wait_running(["optiserve", version_app_name("minilm", v["int8"])], timeout_s=120)


def test_a_replica_that_cannot_be_scheduled_is_reported_within_seconds(env):
    """What the rollout shows while a canary waits for resources comes from Serve's status
    messages (on the deployment); optiserve serve has Serve write it after 10 s, not 30. Read
    through the target the controller uses."""
    from optiserve.rollout.targets import LocalServeTarget

    api = ServeAPI(env.serve_api)
    cfg = api.deployed_config()
    template = next(a for a in cfg["applications"] if a["name"].startswith("minilm-v"))
    big = json.loads(json.dumps(template))  # another version's application, asking too much
    name = version_app_name("minilm", env.versions["degraded"])
    big["name"] = big["deployments"][0]["name"] = name
    big["args"]["version"] = env.versions["degraded"]
    big["deployments"][0]["ray_actor_options"] = {"num_cpus": 64}
    cfg["applications"].append(big)
    t0 = time.monotonic()
    api.apply(cfg)
    try:
        message = ""
        while time.monotonic() - t0 < 40:
            _, message = LocalServeTarget(api).app_status("minilm", env.versions["degraded"])
            if "to be scheduled" in message:
                break
            time.sleep(1)
        assert "to be scheduled" in message and "64" in message, message
        assert time.monotonic() - t0 < 25
    finally:
        cfg["applications"] = [a for a in cfg["applications"] if a["name"] != name]
        api.apply(cfg)
