"""Every dashboard panel's query against a real Prometheus scraping a real `optiserve serve` and the
local rollout controller, with traffic from `optiserve bench`: each query must return data.

Real parts only: the optimized built-in model (minilm_build), Ray Serve serving two versions with
a canary weight and a shadow share, Debian's Prometheus on a loopback port, the rollout controller
on its local target. Kubernetes adds the `namespace` label when the Prometheus Operator scrapes;
here the scrape config sets it (namespace="optiserve-test"). No GPU on these machines: the GPU
dashboard's queries are checked to parse and run (the Prometheus API accepts them), not for data.
The alert rules are loaded into the same Prometheus and must evaluate without errors, and the
`helm test` pod's script sends its inference request to this server.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from serving import metrics as M
from tests.support.chart import chart_serving, serving_values
from optiserve.local import free_port

from .conftest import ROOT, find_tool, only

sys.path.insert(0, str(ROOT / "grafana"))
import optiserve_monitoring as mon

pytestmark = pytest.mark.slow
NAMESPACE = "optiserve-test"
WAIT_FOR_DATA_S = 120
#: promotion: the runner carries the request out within a poll or two, the gateway reports the
#: new weights within a metrics export or two
WAIT_FOR_PROMOTION_S = 90


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(what: str, ok, timeout: float, proc: subprocess.Popen | None = None,
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            pytest.fail(f"{what}: the process exited with {proc.returncode}\n{tail}")
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what}: not ready within {timeout:.0f} s\n{tail}")


class Processes:
    """Processes this test started; stopped by PID (their own session), last started first."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], log: Path, env: dict | None = None):
        f = open(log, "w")  # noqa: SIM115 - the child writes to it until stopped
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                             start_new_session=True)
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)


@pytest.fixture(scope="module")
def live(minilm_build, tmp_path_factory):
    repo, _report, _result = minilm_build
    versions = sorted(int(p.name) for p in (Path(repo) / "minilm").iterdir() if p.name.isdigit())
    assert len(versions) >= 2, f"need two published versions of minilm, got {versions}"
    stable, canary = versions[0], versions[1]
    work = tmp_path_factory.mktemp("live")
    http, metrics, dashboard, prom, ctl = (free_port() for _ in range(5))
    # what the chart deploys: two versions, stable takes 70%, the canary 30% and a mirror of
    # half of stable's requests
    small = {"numCpus": 0.5, "replicas": 1}
    doc, settings = chart_serving(serving_values(repo, {"minilm": {
        "stable": stable, "canary": canary, "canaryWeight": 30, "shadow": 0.5,
        "versions": {stable: small, canary: small}}}))
    doc["http_options"] = {"host": "127.0.0.1", "port": http}
    env = {**os.environ, **settings, "RAY_AUTH_MODE": "disabled",
           "RAY_metrics_report_interval_ms": "1000", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    optiserve = [sys.executable, "-m", "optiserve"]
    (work / "serve.yaml").write_text(yaml.safe_dump(doc))
    rules = ROOT / "grafana/alerts/optiserve.rules.yaml"
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "ray", "static_configs": [
                {"targets": [f"127.0.0.1:{metrics}"], "labels": {"namespace": NAMESPACE}}]},
            {"job_name": "rollout-controller", "static_configs": [
                {"targets": [f"127.0.0.1:{ctl}"], "labels": {"namespace": NAMESPACE}}]},
        ]}))
    procs = Processes()
    started = time.time()
    try:
        serve = procs.start("serve", [*optiserve, "serve", "--repository", str(repo),
                                      "--config", str(work / "serve.yaml"),
                                      "--metrics-port", str(metrics),
                                      "--dashboard-port", str(dashboard),
                                      "--grpc-port", str(free_port())],
                            work / "serve.log", env)
        prometheus = procs.start("prometheus", [
            find_tool("prometheus"), f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom}"],
            work / "prometheus.log")
        prom_url = f"http://127.0.0.1:{prom}"
        _wait("prometheus", lambda: _get(prom_url + "/-/ready")[0] == 200, 30, prometheus,
              work / "prometheus.log")
        url = f"http://127.0.0.1:{http}"
        _wait("optiserve serve", lambda: _get(url + "/v2/health/ready")[0] == 200, 300, serve,
              work / "serve.log")

        target = ["--target", "local", "--serve-api", f"http://127.0.0.1:{dashboard}",
                  "--state-dir", str(work / "state"), "--prometheus", prom_url,
                  "--repository", str(repo)]
        controller = procs.start("rollout controller", [
            *optiserve, "rollout", "controller", *target, "--poll", "1",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(ctl)],
            work / "controller.log", env)
        _wait("rollout controller", lambda: _get(f"http://127.0.0.1:{ctl}/healthz")[0] == 200,
              60, controller, work / "controller.log")
        # many small steps: the rollout is still progressing while the panels are read. Loose
        # thresholds and a large failure budget: on these shared 2-core machines the canary's
        # p99 (and a quantized canary's agreement) is noisy, and a rolled-back canary would
        # leave the canary column without data; the checks still run and report
        start = subprocess.run(
            [*optiserve, "rollout", "start", "minilm", "--canary", str(canary), "--detach",
             "--steps", "30,35,40,45,50,60,70,80,90,100", "--interval", "5s",
             "--min-requests", "5", "--shadow", "0.5", "--max-p99-ratio", "10",
             "--min-agreement", "0.9", "--failure-budget", "1000",
             # what this Prometheus does: a step is judged once it has four scrapes of its
             # own (at the default 15 s that is a minute, past the 20 s of traffic here)
             "--scrape-interval", "1s", *target],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
        assert start.returncode == 0, start.stdout + start.stderr

        # traffic, bounded in time; a few malformed requests so the error panels have data
        bench = subprocess.run(
            [*optiserve, "bench", url, "--model", "minilm", "--concurrency", "4",
             "--duration", "20", "--json"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
        assert bench.returncode == 0, bench.stdout + bench.stderr
        for _ in range(5):
            req = urllib.request.Request(url + "/v2/models/minilm/infer", data=b"{not json",
                                         headers={"content-type": "application/json"})
            assert _get_request(req)[0] == 400
        # held where it is (weights kept, its steps so far recorded): ten 5 s steps cannot all
        # pass within the 20 s of traffic, and a paused rollout cannot end on its own, so the
        # `promoted` fixture's `rollout promote` always has a rollout to promote
        pause = _cli(optiserve, env, "rollout", "pause", "minilm", *target)
        assert pause.returncode == 0 and "minilm: paused" in _flat(pause.stdout), \
            pause.stdout + pause.stderr
        yield {"prometheus": prom_url, "url": url, "work": work, "env": env, "target": target,
               "optiserve": optiserve, "stable": stable, "canary": canary,
               "started": started}
    finally:
        procs.stop_all()


def _cli(optiserve: list[str], env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*optiserve, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=180, check=False)


def _flat(text: str) -> str:
    """The CLI's output with its line wrapping undone."""
    return " ".join(text.split())


def _get_request(req) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _query(prom: str, expr: str) -> dict:
    status, body = _get(prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}), 10)
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", f"{expr}\n{doc}"
    return doc["data"]


def _substitute(expr: str) -> str:
    """What Grafana sends with every variable on "All" (its allValue) and a 2-minute rate
    window (many scrapes at the test's 1 s interval; quantiles stay numbers for two minutes
    after the last request)."""
    for var in ("namespace", "model", "version"):
        expr = expr.replace(f"${var}", mon.ALL)
    return expr.replace("$__rate_interval", "2m").replace("$__range", "5m")


def _label_values(prom: str, query: str) -> list[str]:
    """A Grafana ``label_values(metric{selector}, label)`` variable query, run the way Grafana's
    Prometheus data source runs it (the series endpoint with match[])."""
    assert query.startswith("label_values(") and query.endswith(")")
    selector, label = query[len("label_values("):-1].rsplit(",", 1)
    params = urllib.parse.urlencode({"match[]": _substitute(selector.strip())})
    status, body = _get(f"{prom}/api/v1/label/{label.strip()}/values?{params}")
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", doc
    return [v for v in doc["data"] if v]


def _dashboard(name: str) -> dict:
    return json.loads((ROOT / "grafana/dashboards" / f"{name}.json").read_text())


def _has_data(prom: str, expr: str) -> bool:
    """At least one series with a number (NaN, e.g. a quantile of no requests, is no data)."""
    return any(math.isfinite(float(r["value"][1]))
               for r in _query(prom, _substitute(expr))["result"])


def _wait_for_panels(prom: str, queries: list[tuple[str, str]]) -> None:
    """Polls (bounded) until every query has data."""
    assert queries
    empty = queries
    deadline = time.monotonic() + WAIT_FOR_DATA_S
    while empty and time.monotonic() < deadline:
        empty = [(t, e) for t, e in empty if not _has_data(prom, e)]
        if empty:
            time.sleep(2)
    assert not empty, "panels without data:\n" + "\n".join(f"  {t}: {e}" for t, e in empty)


@pytest.mark.parametrize("name", ["overview", "canary"])
def test_every_panel_query_returns_data(live, name):
    _wait_for_panels(live["prometheus"], mon.dashboard_queries(_dashboard(name)))


@pytest.mark.parametrize("name", ["overview", "canary", "gpu"])
def test_dashboard_variables_have_values(live, name):
    for var in _dashboard(name)["templating"]["list"]:
        if var["type"] != "query":
            continue
        values = _label_values(live["prometheus"], var["query"])
        assert values, f"{name}: variable {var['name']} ({var['query']}) has no values"
        if var["name"] == "namespace":
            assert values == [NAMESPACE]


def test_gpu_queries_are_valid_promql(live):
    """No GPU here, so NVML reports nothing and the GPU panels have no data on this machine:
    each query must still be accepted and evaluated by Prometheus."""
    queries = mon.dashboard_queries(_dashboard("gpu"))
    assert len(queries) >= 4
    for title, expr in queries:
        assert _query(live["prometheus"], _substitute(expr))["resultType"] == "vector", title
    # and the check can fail: broken PromQL is refused
    status, _ = _get(live["prometheus"] + "/api/v1/query?" +
                     urllib.parse.urlencode({"query": "max by (gpu ("}))
    assert status == 400


def test_alert_rules_evaluate_against_real_metrics(live):
    _status, body = _get(live["prometheus"] + "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {a.name for a in mon.alerts()}
    deadline = time.monotonic() + 20
    while any(r.get("health") != "ok" for r in rules) and time.monotonic() < deadline:
        time.sleep(1)
        rules = [r for g in json.loads(_get(live["prometheus"] + "/api/v1/rules")[1])["data"][
            "groups"] for r in g["rules"]]
    bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_helm_test_script_sends_a_real_inference_request(live, rendered):
    """The chart's `helm test` pod script, pointed at this server instead of the cluster Service."""
    (pod,) = only(rendered["default"], "Pod")
    script = pod["spec"]["containers"][0]["args"][0]
    marker = "http://osv-optiserve-serve-svc:8000"
    assert marker in script
    r = subprocess.run([sys.executable, "-c", script.replace(marker, live["url"])],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: minilm" in r.stdout, r.stdout


# ---- after promotion: the same dashboards, the canary now stable --------------------------------
# These run after the mid-rollout checks above (pytest keeps the file's order): the `promoted`
# fixture ends the rollout, so it must not be asked for earlier.


def _series(prom: str, expr: str) -> list[dict]:
    return _query(prom, expr)["result"]


def _phase(prom: str) -> str | None:
    rows = _series(prom, f'max by (phase) ({M.ROLLOUT_PHASE.prom}{{model="minilm"}}) == 1')
    return rows[0]["metric"]["phase"] if rows else None


def _weights(prom: str) -> dict[tuple[str, str], float]:
    """(version, role) -> weight of minilm's traffic-weight series, as Prometheus has them now."""
    rows = _series(prom, f'max by (version, role) ({M.TRAFFIC_WEIGHT.prom}{{model="minilm"}})')
    return {(r["metric"]["version"], r["metric"]["role"]): float(r["value"][1]) for r in rows}


def _fresh_traffic(live) -> None:
    """8 s of traffic, so the rate windows hold requests sent after the last change."""
    bench = subprocess.run(
        [*live["optiserve"], "bench", live["url"], "--model", "minilm", "--concurrency", "4",
         "--duration", "8", "--json"],
        capture_output=True, text=True, env=live["env"], cwd=ROOT, timeout=90, check=False)
    assert bench.returncode == 0, bench.stdout + bench.stderr


@pytest.fixture(scope="module")
def promoted(live):
    """Promotes the canary through the CLI and waits (bounded) until Prometheus shows it: the
    controller reports the rollout promoted and the gateway routes everything to the former
    canary, as stable, with no role series left over; then a little fresh traffic."""
    prom, canary = live["prometheus"], str(live["canary"])
    # the `live` fixture paused the rollout, so it is still there to promote (Prometheus shows
    # it within a scrape or two)
    _wait("the paused rollout in Prometheus", lambda: _phase(prom) == "paused", 30,
          log=live["work"] / "controller.log")
    r = _cli(live["optiserve"], live["env"], "rollout", "promote", "minilm", *live["target"])
    # the CLI itself succeeds and reports what the controller did; Prometheus below must then
    # show the same
    assert r.returncode == 0, r.stdout + r.stderr
    assert "minilm: promoted" in _flat(r.stdout), r.stdout + r.stderr
    want = {(canary, "stable"): 100.0}

    def done() -> bool:
        weights = {k: w for k, w in _weights(prom).items() if k[1] in ("stable", "canary")}
        return _phase(prom) == "promoted" and weights == want

    _wait("promotion in Prometheus", done, WAIT_FOR_PROMOTION_S,
          log=live["work"] / "controller.log")
    # fresh traffic, all of it to the new stable: the rate windows hold post-promotion requests
    _fresh_traffic(live)
    return live


def test_no_version_has_two_roles_after_promotion(promoted):
    prom = promoted["prometheus"]
    stable, canary = str(promoted["stable"]), str(promoted["canary"])
    tw = M.TRAFFIC_WEIGHT.prom
    # one role per version (the role join of every canary panel needs it); distinct roles are
    # counted, so several gateway replicas reporting the same series count once
    assert _series(prom, f"count by (namespace, model, version) "
                         f"(max by (namespace, model, version, role) ({tw})) > 1") == []
    assert _series(prom, f"count by (model, version) ({tw}) > 1") == []
    # the old role series are gone: the former canary is no longer canary, the old stable no
    # longer stable (it is idle at 0 % or removed), and nothing is canary
    weights = _weights(prom)
    assert (canary, "canary") not in weights and (stable, "stable") not in weights, weights
    assert not [k for k in weights if k[1] == "canary"], weights
    assert weights.get((canary, "stable")) == 100.0, weights
    assert weights.get((stable, "idle"), 0.0) == 0.0, weights


@pytest.mark.parametrize("name", ["overview", "canary"])
def test_panels_still_have_data_after_promotion(promoted, name):
    """Every panel but the canary-only ones (the canary column, the shadow comparison) still
    has data, and the stable column shows the promoted version."""
    skip = mon.canary_only_panels(mon.DASHBOARDS[name]())
    queries = [(t, e) for t, e in mon.dashboard_queries(_dashboard(name)) if t not in skip]
    _wait_for_panels(promoted["prometheus"], queries)
    if name != "canary":
        return
    prom, canary = promoted["prometheus"], str(promoted["canary"])
    for title, expr in mon.dashboard_queries(_dashboard(name)):
        if title.endswith(" · stable"):
            versions = {r["metric"].get("version") for r in _series(prom, _substitute(expr))}
            assert versions == {canary}, (title, versions)
        elif title.endswith(" · canary"):
            assert _series(prom, _substitute(expr)) == [], title


def test_rollout_annotations_mark_steps_and_the_promotion(promoted):
    """The annotation queries, run as Grafana runs them (a range query at their step over the
    test's time), mark the steps the rollout took and its phase changes, promotion included."""
    prom = promoted["prometheus"]
    marks = {}
    for name, expr, step in mon.annotation_queries(_dashboard("canary")):
        params = urllib.parse.urlencode({"query": _substitute(expr), "step": step,
                                         "start": promoted["started"], "end": time.time()})
        status, body = _get(f"{prom}/api/v1/query_range?{params}", 10)
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (name, doc)
        marks[name] = [(r["metric"], [float(v) for _, v in r["values"]])
                       for r in doc["data"]["result"]]
        # Grafana marks the points whose value is > 0
        assert all(v > 0 for _, values in marks[name] for v in values), (name, marks[name])
    # every step the rollout moved to is marked (several can share one 15 s mark)
    took = _series(prom, f'max_over_time({M.ROLLOUT_STEP.prom}{{model="minilm"}}'
                         f'[{int(time.time() - promoted["started"]) + 1}s])')
    if took and float(took[0]["value"][1]) >= 1:
        assert any(int(m["step"]) >= 2 for m, _ in marks["Rollout steps"]), \
            marks["Rollout steps"]
    assert any(m.get("to_phase") == "promoted" for m, _ in marks["Rollout phase changes"]), \
        marks["Rollout phase changes"]


def _alert_health(prom: str) -> list[tuple]:
    groups = json.loads(_get(prom + "/api/v1/rules")[1])["data"]["groups"]
    return [(r["name"], r.get("health"), r.get("lastError")) for g in groups for r in g["rules"]
            if r.get("health") != "ok"]


@pytest.fixture(scope="module")
def rolled_back(promoted):
    """After the promotion, a second rollout: the retired old stable comes back as a canary
    (deployed by the rollout), fails its p99 bound at its first step and is rolled back (and
    removed); then the checks run again on what the dashboards show right after a rollback."""
    live = promoted
    prom, old = live["prometheus"], str(live["stable"])
    load = subprocess.Popen(
        [*live["optiserve"], "bench", live["url"], "--model", "minilm", "--rate", "20",
         "--duration", "90", "--warmup", "0", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=live["env"], cwd=ROOT)
    try:
        r = subprocess.run(
            [*live["optiserve"], "rollout", "start", "minilm", "--canary", old, "--detach",
             "--steps", "50,100", "--interval", "3s", "--min-requests", "5",
             "--max-p99-ms", "0.001", "--failure-budget", "0", "--retire-after", "0s",
             *live["target"]],
            capture_output=True, text=True, env=live["env"], cwd=ROOT, timeout=60, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        want = {(str(live["canary"]), "stable"): 100.0}

        def done() -> bool:
            return _phase(prom) == "rolled_back" and _weights(prom) == want

        _wait("rollback in Prometheus", done, 150, log=live["work"] / "controller.log")
    finally:
        load.terminate()
        load.wait(timeout=30)
    _fresh_traffic(live)
    return live


def test_after_a_rollback_no_canary_series_remain_and_panels_and_alerts_hold(rolled_back):
    prom = rolled_back["prometheus"]
    tw = M.TRAFFIC_WEIGHT.prom
    assert _series(prom, f"count by (model, version) ({tw}) > 1") == []
    # the rolled-back canary was removed: none of its gateway series is left
    assert _weights(prom) == {(str(rolled_back["canary"]), "stable"): 100.0}
    skip = mon.canary_only_panels(mon.DASHBOARDS["canary"]())
    queries = [(t, e) for t, e in mon.dashboard_queries(_dashboard("canary")) if t not in skip]
    _wait_for_panels(prom, queries)
    for title, expr in mon.dashboard_queries(_dashboard("canary")):
        if title.endswith(" · canary") and "Shadow" not in title:
            assert _series(prom, _substitute(expr)) == [], title
    assert not _alert_health(prom)
    # the rollback alert fires on what the controller exports
    firing = _series(prom, 'ALERTS{alertname="OptiserveCanaryRolledBack"}')
    assert firing, _series(prom, "ALERTS")
