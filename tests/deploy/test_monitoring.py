"""Dashboards and alert rules: generated from serving.metrics, in sync, and checked by promtool."""

from __future__ import annotations

import json
import re
import sys

import yaml

from serving import metrics as M

from .conftest import CHART, ROOT, only, run

sys.path.insert(0, str(ROOT / "grafana"))
import optiserve_monitoring as mon

ALERTS_DIR = ROOT / "grafana/alerts"
DASHBOARDS = {name: json.loads((ROOT / "grafana/dashboards" / f"{name}.json").read_text())
              for name in mon.DASHBOARDS}
RAY_SERVE_METRICS = {mon.RAY_REPLICA_HEALTHY, mon.RAY_DEPLOYMENT_STATUS, mon.RAY_TARGET_REPLICAS,
                     mon.RAY_COMPONENT_CPU, mon.RAY_COMPONENT_RSS}
PROMQL_FUNCS = {"sum", "rate", "histogram_quantile", "max", "min", "count", "avg_over_time",
                "increase", "by", "on", "group_left", "and", "or", "le", "vector",
                "label_replace", "count_values", "unless", "offset"}


def test_generated_files_are_up_to_date():
    r = run([sys.executable, str(ROOT / "grafana/generate.py"), "--check"])
    assert r.returncode == 0, r.stderr


def test_chart_ships_the_same_dashboards():
    for name, doc in DASHBOARDS.items():
        assert json.loads((CHART / "files/dashboards" / f"{name}.json").read_text()) == doc


def _metric_names(expr: str) -> set[str]:
    """Identifiers directly followed by a selector or range: the series a query reads."""
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr))
    return {n for n in names if n not in PROMQL_FUNCS}


def _known(name: str) -> bool:
    for spec in M.ALL:
        if spec.kind == "histogram":
            if name in {spec.prom + s for s in ("_bucket", "_sum", "_count")}:
                return True
        elif name == spec.prom:
            return True
    # GPUs from dcgm-exporter / Ray's node metrics, joined to the chart's pod targets (up)
    return name in RAY_SERVE_METRICS or name in mon.GPU_SERIES or name == "up"


def _all_queries(doc: dict) -> list[tuple[str, str]]:
    """(title, expr) of the panels' queries and the annotation queries."""
    return mon.dashboard_queries(doc) + [(f"annotation {n}", e)
                                         for n, e, _ in mon.annotation_queries(doc)]


def test_dashboards_use_only_metrics_defined_in_serving_metrics():
    used = set()
    for name, doc in DASHBOARDS.items():
        for title, expr in _all_queries(doc):
            names = _metric_names(expr)
            assert names, (name, title, expr)
            unknown = {n for n in names if not _known(n)}
            assert not unknown, f"{name}/{title}: {unknown}"
            used |= names
    # every metric optiserve exports shows up on some dashboard
    for spec in M.ALL:
        assert any(u.startswith(spec.prom) for u in used), spec.prom


def _grafana_substituted(expr: str) -> str:
    """What Grafana sends with every variable on "All"."""
    for var in ("namespace", "model", "version"):
        expr = expr.replace(f"${var}", mon.ALL)
    return expr.replace("$__rate_interval", "1m").replace("$__range", "1h")


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    """promtool parses each query (panels and annotations) as a recording rule's expression."""
    rules = [{"record": f"q{i}", "expr": _grafana_substituted(expr)}
             for i, (_, expr) in enumerate(q for doc in DASHBOARDS.values()
                                           for q in _all_queries(doc))]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [
        {"name": "dashboards", "rules": rules}]}))
    r = run([promtool, "check", "rules", str(tmp_path / "queries.yaml")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout
    # and the check can fail
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "q", "expr": "max by (model (x)"}]}]}))
    assert run([promtool, "check", "rules", str(tmp_path / "broken.yaml")]).returncode != 0


def test_metric_name_check_can_fail():
    assert not _known("ray_optiserve_request_latency_seconds_bucket")
    assert _metric_names("sum(rate(ray_optiserve_requests_total{a=\"b\"}[1m]))") == {
        "ray_optiserve_requests_total"}


def test_dashboards_have_the_required_panels_and_variables():
    titles = {name: [p["title"] for p in doc["panels"]] for name, doc in DASHBOARDS.items()}
    exprs = {name: " ".join(e for _, e in mon.dashboard_queries(doc))
             for name, doc in DASHBOARDS.items()}
    for name, doc in DASHBOARDS.items():
        variables = {v["name"] for v in doc["templating"]["list"]}
        assert {"namespace", "model", "version", "datasource"} <= variables, name
        for p in doc["panels"]:
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}"
    ov = exprs["overview"]
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (namespace, model, version, le) " \
               f"(rate({M.REQUEST_DURATION.prom}_bucket" in ov
    for spec in (M.REQUESTS, M.BATCH_SIZE, M.QUEUE_ROWS, M.QUEUE_WAIT):
        assert spec.prom in ov
    assert mon.RAY_REPLICA_HEALTHY in ov
    cn = exprs["canary"]
    for spec in (M.TRAFFIC_WEIGHT, M.ROLLOUT_PHASE, M.ROLLOUT_WEIGHT, M.SHADOW_AGREEMENT):
        assert spec.prom in cn
    assert "group_left (role)" in cn
    for spec in (M.GPU_UTILIZATION, M.GPU_MEMORY_USED, M.GPU_MEMORY_TOTAL, M.GPU_POWER):
        assert spec.prom in exprs["gpu"]
    for name in (mon.DCGM_GR_ACTIVE, mon.DCGM_UTIL, mon.DCGM_FB_USED, mon.RAY_GPU_UTIL):
        assert name in exprs["gpu"]
    assert any("Errors" in t for t in titles["overview"])
    # rate, errors and latency by protocol (http, grpc, openai)
    by_protocol = {t: e for t, e in mon.dashboard_queries(DASHBOARDS["overview"])
                   if "by protocol" in t}
    assert set(by_protocol) == {"Requests/s by protocol", "Server error ratio by protocol",
                                "Request latency p50 / p99 by protocol"}
    assert all("sum by (namespace, protocol" in e for e in by_protocol.values())


CANARY_COLUMNS = {  # side-by-side panel -> what its queries must read
    "Requests/s": [M.REQUESTS.prom],
    "Success rate": [M.REQUESTS.prom, mon.SERVER_ERROR_M],
    "Request latency p50 / p95 / p99": [
        f"histogram_quantile({q}, sum by (namespace, model, version, le) "
        f"(rate({M.REQUEST_DURATION.prom}_bucket" for q in (0.5, 0.95, 0.99)] + [
        M.LATENCY_MATCHER],
    "Batch size": [M.BATCH_SIZE.prom + "_bucket", M.BATCH_ROWS.prom, M.BATCH_SIZE.prom + "_count"],
    "Queue wait p50 / p95": [M.QUEUE_WAIT.prom + "_bucket"],
    "Compute time per batch p50 / p99": [M.COMPUTE.prom + "_bucket"],
    "Replica CPU (cores)": [mon.RAY_COMPONENT_CPU, "ray::ServeReplica:"],
    "Replica memory (RSS)": [mon.RAY_COMPONENT_RSS, "ray::ServeReplica:"],
    "Compute p99: observed vs predicted": [
        (f"histogram_quantile(0.99, sum by (namespace, model, version, le) "
         f"(rate({M.COMPUTE.prom}_bucket"), M.PREDICTED_COMPUTE.prom, 'quantile="0.99"'],
    "Capacity: rows per compute-second": [
        M.BATCH_ROWS.prom, M.COMPUTE_TIME.prom, M.PREDICTED_COMPUTE.prom,
        'quantile="0.5"', '8 / max by (namespace, model, version, batch_size)'],
}


def test_canary_dashboard_shows_stable_and_canary_side_by_side():
    doc = DASHBOARDS["canary"]
    panels = {p["title"]: p for p in doc["panels"] if p["type"] != "row"}
    for metric, needles in CANARY_COLUMNS.items():
        stable, canary = panels[f"{metric} · stable"], panels[f"{metric} · canary"]
        # two columns: same row, stable on the left, canary on the right, same size
        assert stable["gridPos"]["y"] == canary["gridPos"]["y"], metric
        assert stable["gridPos"]["x"] == 0 and canary["gridPos"]["x"] == 12, metric
        assert stable["gridPos"]["w"] == canary["gridPos"]["w"] == 12, metric
        assert stable["fieldConfig"]["defaults"].get("unit") == \
            canary["fieldConfig"]["defaults"].get("unit"), metric
        for panel, role in ((stable, "stable"), (canary, "canary")):
            assert panel["targets"], metric
            for t in panel["targets"]:
                # each series carries its role, from the gateway's traffic weights, and only
                # that role's versions are shown in the column
                assert "group_left (role)" in t["expr"], (metric, t["expr"])
                assert f'{M.TRAFFIC_WEIGHT.prom}{{namespace=~"$namespace", model=~"$model", ' \
                       f'role="{role}"}}' in t["expr"], (metric, t["expr"])
            text = " ".join(t["expr"] for t in panel["targets"])
            for needle in needles:
                assert needle in text, (metric, role, needle)
    # the canary-only panels are the canary column and the shadow comparison
    spec = mon.canary()
    only = mon.canary_only_panels(spec)
    assert {f"{m} · canary" for m in CANARY_COLUMNS} <= only
    assert not {f"{m} · stable" for m in CANARY_COLUMNS} & only
    assert {"Shadow agreement", "Traffic weight by version", "Controller errors"} & only == {
        "Shadow agreement"}


def test_canary_dashboard_has_controller_errors_and_rollout_annotations():
    doc = DASHBOARDS["canary"]
    errors = [e for t, e in mon.dashboard_queries(doc) if t == "Controller errors"]
    assert errors and M.ROLLOUT_ERRORS.prom in errors[0]
    annotations = {n: (e, step) for n, e, step in mon.annotation_queries(doc)}
    assert M.ROLLOUT_STEP.prom in annotations["Rollout steps"][0]
    assert M.ROLLOUT_TRANSITIONS.prom in annotations["Rollout phase changes"][0]
    for entry in doc["annotations"]["list"]:
        # what Grafana's Prometheus annotation support reads
        assert entry["datasource"]["uid"] == "${datasource}" and entry["enable"]
        assert entry["titleFormat"] and entry["step"] == mon.ANNOTATION_STEP
        # a change is found by comparing with the value one step before: each marked once
        assert f"offset {entry['step']}" in entry["expr"]


# ---- alert rules ------------------------------------------------------------------------------


def test_promtool_check_rules(promtool):
    r = run([promtool, "check", "rules", str(ALERTS_DIR / "optiserve.rules.yaml")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(mon.alerts())} rules found" in r.stdout


def test_promtool_test_rules(promtool):
    """Each alert has a case where it fires and one where it stays quiet."""
    r = run([promtool, "test", "rules", "optiserve.rules.test.yaml"], cwd=ALERTS_DIR)
    assert r.returncode == 0, r.stdout + r.stderr
    tests = yaml.safe_load((ALERTS_DIR / "optiserve.rules.test.yaml").read_text())["tests"]
    for a in mon.alerts():
        cases = [t for t in tests if t["alert_rule_test"][0]["alertname"] == a.name]
        assert sorted({bool(t["alert_rule_test"][0]["exp_alerts"]) for t in cases}) == \
            [False, True], a.name
    # requests split by protocol are judged together (fires on the sum, quiet on the sum)
    names = {t["name"] for t in tests}
    assert {("OptiserveErrorRateHigh fires: errors over REST and gRPC, each protocol below "
             "the minimum rate"),
            ("OptiserveErrorRateHigh stays quiet: 1% errors overall, all on the little gRPC "
             "traffic")} <= names


def test_promtool_tests_can_fail(promtool, tmp_path):
    """Swap every case's expectation: each must then fail."""
    doc = yaml.safe_load((ALERTS_DIR / "optiserve.rules.test.yaml").read_text())
    firing = {t["alert_rule_test"][0]["alertname"]: t["alert_rule_test"][0]["exp_alerts"]
              for t in doc["tests"] if t["alert_rule_test"][0]["exp_alerts"]}
    for t in doc["tests"]:
        art = t["alert_rule_test"][0]
        art["exp_alerts"] = [] if art["exp_alerts"] else firing[art["alertname"]]
    doc["rule_files"] = [str(ALERTS_DIR / "optiserve.rules.yaml")]
    (tmp_path / "swapped.yaml").write_text(yaml.safe_dump(doc))
    r = run([promtool, "test", "rules", "swapped.yaml"], cwd=tmp_path)
    assert r.returncode != 0
    assert r.stdout.count("alertname:") + r.stderr.count("alertname:") >= len(doc["tests"]), \
        r.stdout + r.stderr


def test_alert_rules_cover_the_issue():
    names = {a.name for a in mon.alerts()}
    assert {"OptiserveP99LatencyHigh", "OptiserveErrorRateHigh", "OptiserveCanaryFailing",
            "OptiserveCanaryRolledBack", "OptiserveGPUSaturated",
            "OptiserveReplicasUnhealthy", "OptiserveRolloutControllerErrors",
            "OptiserveCanaryOffPrediction",
            # the cluster: scraping, KubeRay's RayService conditions, overload, the controller
            "OptiserveTargetDown", "OptiserveMetricsAbsent", "OptiserveKubeRayNotReady",
            "OptiserveKubeRayUpgradeStuck", "OptiserveKubeRayMetricsAbsent", "OptiserveOverloaded",
            "OptiserveRolloutControllerDown"} <= names


def test_cluster_alerts_read_what_the_chart_and_kuberay_export(rendered):
    """The target alerts select the labels the chart's monitors give their targets, the KubeRay
    alerts KubeRay's own RayService condition metrics."""
    by_name = {a.name: a for a in mon.alerts()}
    (pm,) = only(rendered["default"], "PodMonitor")
    for e in pm["spec"]["podMetricsEndpoints"]:
        assert "ray_group" in {r["targetLabel"] for r in e["relabelings"]}
    assert 'up{ray_group!=""}' in by_name["OptiserveTargetDown"].expr
    (svc,) = [s for s in only(rendered["default"], "Service")
              if s["metadata"]["name"].endswith("-rollout-controller")]
    assert re.fullmatch(".+-rollout-controller", svc["metadata"]["name"])
    assert 'job=~".+-rollout-controller"' in by_name["OptiserveRolloutControllerDown"].expr
    assert "kuberay_service_condition_ready" in by_name["OptiserveKubeRayNotReady"].expr
    assert "kuberay_service_condition_upgrade_in_progress" in \
        by_name["OptiserveKubeRayUpgradeStuck"].expr
    assert 'outcome="overloaded"' in by_name["OptiserveOverloaded"].expr


def test_rollout_alerts_read_the_controller_metrics():
    by_name = {a.name: a for a in mon.alerts()}
    errors = by_name["OptiserveRolloutControllerErrors"]
    assert f"increase({M.ROLLOUT_ERRORS.prom}[10m])" in errors.expr
    assert "by (namespace, model, kind)" in errors.expr and errors.for_ != "0m"
    off = by_name["OptiserveCanaryOffPrediction"]
    assert f'{M.ROLLOUT_CHECK_PASSED.prom}{{check="compute_vs_predicted"}}) == 0' in off.expr
    assert f'{M.ROLLOUT_PHASE.prom}{{phase="progressing"}}) == 1' in off.expr


def test_chart_prometheus_rule_equals_the_plain_rules_file(rendered, promtool, tmp_path):
    plain = yaml.safe_load((ALERTS_DIR / "optiserve.rules.yaml").read_text())
    (rule,) = only(rendered["default"], "PrometheusRule")
    assert rule["spec"] == plain
    # with other thresholds the chart's rules still pass promtool, with the new values in
    (rule,) = only(rendered["canary"], "PrometheusRule")
    assert "> 0.25 and" in rule["spec"]["groups"][0]["rules"][0]["expr"]
    (tmp_path / "chart.rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    r = run([promtool, "check", "rules", str(tmp_path / "chart.rules.yaml")])
    assert r.returncode == 0, r.stdout + r.stderr


def test_chart_alert_defaults_are_the_generator_thresholds():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["alerts"] == {t.key: t.default for t in mon.THRESHOLDS}


def _gpu_alert_case(name: str, series: list[dict], expected: list[dict]) -> dict:
    (a,) = [a for a in mon.alerts() if a.name == "OptiserveGPUSaturated"]
    return {"name": name, "interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": "30m", "alertname": a.name, "exp_alerts": [{
            "exp_labels": {**lb, "severity": "warning"},
            "exp_annotations": {"summary": mon._render(a.summary, lb),
                                "description": mon._render(mon.with_defaults(a.description),
                                                           lb)}}
            for lb in expected]}]}


def test_gpu_alerts_read_dcgm_mig_and_fall_back_to_ray(promtool, tmp_path):
    """The GPU alert, run by promtool on dcgm-exporter's series of a MIG instance (labelled by the
    GPU's UUID and the instance), on Ray's node metrics alone (the fallback, labelled by index),
    on both for one GPU (one alert, dcgm's), and on a GPU of a pod that is not the chart's."""
    pod = mon.GPU_POD
    uuid = {"gpu_name": "NVIDIA L4", **pod}
    both = mon._gpu_series(0.99, 0.4) + [s for s in mon._gpu_series(0.99, 0.4, "ray")
                                         if not s["series"].startswith("up{")]
    foreign = [s for s in mon._gpu_series(0.99, 0.4) if not s["series"].startswith("up{")]
    doc = {"rule_files": [str(ALERTS_DIR / "optiserve.rules.yaml")], "evaluation_interval": "1m",
           "tests": [
               _gpu_alert_case("MIG instance", mon._gpu_series(0.99, 0.4, "mig"),
                               [{**uuid, "gpu": f"{mon.GPU_UUID}/3"}]),
               _gpu_alert_case("Ray fallback", mon._gpu_series(0.99, 0.4, "ray"),
                               [{**uuid, "gpu": "0"}]),
               _gpu_alert_case("dcgm and Ray: dcgm's only", both,
                               [{**uuid, "gpu": mon.GPU_UUID}]),
               _gpu_alert_case("not a serving pod", foreign, []),
           ]}
    (tmp_path / "gpu.test.yaml").write_text(yaml.safe_dump(doc))
    r = run([promtool, "test", "rules", "gpu.test.yaml"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # and it can fail: the fallback case expecting dcgm's label
    doc["tests"] = [_gpu_alert_case("wrong", mon._gpu_series(0.99, 0.4, "ray"),
                                    [{**uuid, "gpu": mon.GPU_UUID}])]
    (tmp_path / "gpu.test.yaml").write_text(yaml.safe_dump(doc))
    assert run([promtool, "test", "rules", "gpu.test.yaml"], cwd=tmp_path).returncode != 0


def test_rollout_queries_judge_a_version_over_every_protocol(promtool, tmp_path):
    """The rollout's analysis PromQL (optiserve.rollout.analysis.Queries) on a canary whose
    requests arrive over REST, gRPC and /v1/embeddings: one number per check, summed over the
    protocol label, evaluated by promtool. A query that kept the protocol apart would return
    one sample per protocol (or judge gRPC's slow requests alone) and fail here."""
    from optiserve.rollout.analysis import Queries
    from optiserve.rollout.state import RolloutSpec

    q = Queries(RolloutSpec(model="minilm", stable=1, canary=2), window_s=300)
    lb = {"model": "minilm", "version": "2"}
    per_min = {("http", "success", "200"): 90, ("http", "server_error", "500"): 2,
               ("grpc", "success", "200"): 10, ("grpc", "timeout", "504"): 3,
               ("openai", "success", "200"): 4, ("openai", "client_error", "400"): 5}
    series = [mon._s(M.REQUESTS.prom, {**lb, "outcome": o, "code": c, "protocol": p},
                     f"0+{n}x20") for (p, o, c), n in per_min.items()]
    # successes: REST's all within 50 ms, gRPC's between 0.5 and 1 s
    for le in M.REQUEST_DURATION.boundaries + (float("inf"),):
        le_s = "+Inf" if le == float("inf") else repr(le)
        for p, n, at_least in (("http", 90, 0.05), ("grpc", 10, 1.0)):
            series.append(mon._s(M.REQUEST_DURATION.prom + "_bucket",
                                 {**lb, "outcome": "success", "protocol": p, "le": le_s},
                                 f"0+{n if le >= at_least else 0}x20"))
    minutes = 5  # the window, at one sample a minute (no extrapolation at these boundaries)
    doc = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [
            {"expr": q.requests(2), "eval_time": "10m",
             "exp_samples": [{"labels": "{}", "value": minutes * sum(per_min.values())}]},
            {"expr": q.errors(2), "eval_time": "10m",
             "exp_samples": [{"labels": "{}", "value": minutes * (2 + 3)}]},
            # rank 99 of 100: the 9th of gRPC's 10 requests in (0.5, 1] s -> 950 ms
            {"expr": q.p99_ms(2), "eval_time": "10m",
             "exp_samples": [{"labels": "{}", "value": 950}]},
        ]}]}
    (tmp_path / "rollout.test.yaml").write_text(yaml.safe_dump(doc))
    r = run([promtool, "test", "rules", "rollout.test.yaml"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # and the check can fail: a query grouped by protocol is refused
    doc["tests"][0]["promql_expr_test"][1]["expr"] = q.errors(2).replace("sum(", "sum by "
                                                                         "(protocol) (", 1)
    (tmp_path / "rollout.test.yaml").write_text(yaml.safe_dump(doc))
    assert run([promtool, "test", "rules", "rollout.test.yaml"], cwd=tmp_path).returncode != 0
