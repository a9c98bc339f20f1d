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
RAY_SERVE_METRICS = {mon.RAY_REPLICA_HEALTHY, mon.RAY_DEPLOYMENT_STATUS, mon.RAY_TARGET_REPLICAS}
PROMQL_FUNCS = {"sum", "rate", "histogram_quantile", "max", "min", "count", "avg_over_time",
                "increase", "by", "on", "group_left", "and", "or", "le", "vector"}


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
    return name in RAY_SERVE_METRICS


def test_dashboards_use_only_metrics_defined_in_serving_metrics():
    used = set()
    for name, doc in DASHBOARDS.items():
        for title, expr in mon.dashboard_queries(doc):
            names = _metric_names(expr)
            assert names, (name, title, expr)
            unknown = {n for n in names if not _known(n)}
            assert not unknown, f"{name}/{title}: {unknown}"
            used |= names
    # every metric optiserve exports shows up on some dashboard
    for spec in M.ALL:
        assert any(u.startswith(spec.prom) for u in used), spec.prom


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
    assert any("Errors" in t for t in titles["overview"])


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
        assert sorted(bool(t["alert_rule_test"][0]["exp_alerts"]) for t in cases) == \
            [False, True], a.name


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
            "OptiserveReplicasUnhealthy"} <= names


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
