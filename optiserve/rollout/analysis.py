"""Judging a canary step on Prometheus data: errors, latency, agreement with stable."""

from __future__ import annotations

import math

from serving import metrics as M
from .prometheus import Prometheus, PrometheusUnavailable
from .state import Analysis, CheckResult, RolloutSpec

#: Outcomes that count against the canary (4xx are the client's fault, not the canary's).
ERROR_OUTCOMES = "server_error|timeout|overloaded"


class Queries:
    """PromQL for one rollout over a window, built from the metric specs in ``serving.metrics``."""

    def __init__(self, spec: RolloutSpec, window_s: float):
        self.spec = spec
        self.w = f"{max(1, math.ceil(window_s))}s"

    def _scope(self) -> str:
        return f",{self.spec.prometheus_selector}" if self.spec.prometheus_selector else ""

    def _sel(self, version: int, extra: str = "") -> str:
        return (f'model="{self.spec.model}",version="{version}"' + (f",{extra}" if extra else "")
                + self._scope())

    def requests(self, version: int) -> str:
        return f"sum(increase({M.REQUESTS.prom}{{{self._sel(version)}}}[{self.w}]))"

    def errors(self, version: int) -> str:
        sel = self._sel(version, f'outcome=~"{ERROR_OUTCOMES}"')
        return f"sum(increase({M.REQUESTS.prom}{{{sel}}}[{self.w}]))"

    def p99_ms(self, version: int) -> str:
        """p99 over the outcomes in ``serving.metrics.LATENCY_OUTCOMES`` (success, server
        errors and timeouts, each at the time it took): a canary that times out has a high
        p99, and a client's fast 400s or instant 503 refusals cannot pull it down."""
        sel = self._sel(version, M.LATENCY_MATCHER)
        return (f"1000 * histogram_quantile(0.99, sum by (le) (increase("
                f"{M.REQUEST_DURATION.prom}_bucket{{{sel}}}[{self.w}])))")

    def _pair(self) -> str:
        s = self.spec
        return f'model="{s.model}",stable="{s.stable}",canary="{s.canary}"' + self._scope()

    def comparisons(self) -> str:
        return f"sum(increase({M.SHADOW_AGREEMENT.prom}_count{{{self._pair()}}}[{self.w}]))"

    def per_row_compute_s(self, version: int) -> str:
        """Mean model compute time per row: compute seconds over the rows those batches held."""
        sel = self._sel(version)
        return (f"sum(increase({M.COMPUTE_TIME.prom}{{{sel}}}[{self.w}])) / "
                f"sum(increase({M.BATCH_ROWS.prom}{{{sel}}}[{self.w}]))")

    def mean_batch(self, version: int) -> str:
        """Exact sums (counters), not the histograms' ``_sum``: Ray rebuilds those from bucket
        midpoints (see ``serving.metrics.BATCH_ROWS``)."""
        sel = self._sel(version)
        return (f"sum(increase({M.BATCH_ROWS.prom}{{{sel}}}[{self.w}])) / "
                f"sum(increase({M.BATCH_SIZE.prom}_count{{{sel}}}[{self.w}]))")

    def compute_p99_s(self, version: int) -> str:
        return (f"histogram_quantile(0.99, sum by (le) (increase("
                f"{M.COMPUTE.prom}_bucket{{{self._sel(version)}}}[{self.w}])))")

    def predicted(self, version: int, quantile: str) -> str:
        """The optimizer's measured compute per batch size (one series per batch size)."""
        sel = self._sel(version, 'quantile="' + quantile + '"')
        return f"max by (batch_size) ({M.PREDICTED_COMPUTE.prom}{{{sel}}})"

    def agreement(self) -> str:
        # a canary that never agrees has no score series at all (Ray records no zero
        # increments): that is a mean of 0, not missing data
        return (f"(sum(increase({M.SHADOW_AGREEMENT_SUM.prom}{{{self._pair()}}}[{self.w}])) "
                f"or vector(0)) / "
                f"sum(increase({M.SHADOW_AGREEMENT.prom}_count{{{self._pair()}}}[{self.w}]))")


def confirmation_queries(spec: RolloutSpec, expected: dict[int, float]) -> list[tuple[str, str]]:
    """Per routed version, two queries on the gateway's traffic-weight gauge: series reporting
    another weight (must return nothing) and series reporting the expected one (at least one).
    Every gateway replica reports its own series, so all of them must have the new split."""
    scope = f",{spec.prometheus_selector}" if spec.prometheus_selector else ""
    out = []
    for v, w in sorted(expected.items()):
        series = f'{M.TRAFFIC_WEIGHT.prom}{{model="{spec.model}",version="{v}"{scope}}}'
        out.append((f"count(abs({series} - {w:g}) > 0.01)",
                    f"count(abs({series} - {w:g}) <= 0.01)"))
    return out


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through (batch size, seconds) points, flat past either end."""
    points = sorted(points)
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def prediction_check(prom: Prometheus, q: Queries, spec: RolloutSpec) -> CheckResult:
    """The canary's observed compute per row against what the optimizer measured for it at the
    same mean batch size (its manifest, exported by the gateway). Advisory: far off (by more
    than ``max_prediction_ratio`` either way) is a warning, e.g. a node slower than the one it
    was optimized on, or a replica with fewer threads."""
    name, bound = "compute_vs_predicted", spec.max_prediction_ratio
    p50 = [(float(labels["batch_size"]), value)
           for labels, value in prom.query_vector(q.predicted(spec.canary, "0.5"))
           if value > 0 and "batch_size" in labels]
    if not p50:
        return CheckResult(name=name, value=None, threshold=bound, verdict="skipped",
                           detail="the canary's manifest holds no latency measurements")
    observed = prom.query(q.per_row_compute_s(spec.canary))
    batch = prom.query(q.mean_batch(spec.canary))
    if observed is None or not batch:
        return CheckResult(name=name, value=None, threshold=bound, verdict="skipped",
                           detail="no canary batches in the window")
    predicted = interpolate(p50, batch) / batch
    ratio = observed / predicted
    p99 = prom.query(q.compute_p99_s(spec.canary))
    p99_pred = {b: v for b, v in ((float(lb["batch_size"]), v) for lb, v in
                                  prom.query_vector(q.predicted(spec.canary, "0.99"))
                                  if "batch_size" in lb)}
    near = min(p99_pred, key=lambda b: abs(b - batch)) if p99_pred else None
    detail = (f"observed {observed * 1000:.3g} ms/row ({1 / observed:.0f} rows/s per busy "
              f"replica) vs predicted {predicted * 1000:.3g} ms/row ({1 / predicted:.0f} rows/s) "
              f"at mean batch {batch:.1f}")
    if p99 is not None and near is not None:
        detail += (f"; compute p99 {p99 * 1000:.3g} ms vs predicted {p99_pred[near] * 1000:.3g}"
                   f" ms at batch {near:g}")
    off = ratio > bound or ratio < 1 / bound
    return CheckResult(name=name, value=ratio, threshold=bound,
                       verdict="warn" if off else "pass", detail=detail)


def analyze(prom: Prometheus, spec: RolloutSpec, step: int, weight: float, window_s: float
            ) -> Analysis:
    """Run every check for the current step; ``outcome`` is fail / wait (too little data) /
    pass. Prometheus being unreachable is a failed analysis: no decision without data."""
    q = Queries(spec, window_s)
    checks: list[CheckResult] = []
    try:
        n_canary = prom.query(q.requests(spec.canary)) or 0.0
        checks.append(_at_least("requests", n_canary, spec.min_requests,
                                f"canary requests in the last {q.w}"))
        if n_canary >= spec.min_requests:
            err = (prom.query(q.errors(spec.canary)) or 0.0) / n_canary
            checks.append(_at_most("error_rate", err, spec.max_error_rate,
                                   "canary 5xx/timeouts/overloaded share"))
        else:
            checks.append(CheckResult(name="error_rate", value=None,
                                      threshold=spec.max_error_rate, verdict="no_data"))
        p99c = prom.query(q.p99_ms(spec.canary)) if n_canary >= spec.min_requests else None
        if spec.max_p99_ms is not None:
            checks.append(_at_most("p99_ms", p99c, spec.max_p99_ms, "canary p99 latency (ms)"))
        if spec.max_p99_ratio is not None:
            if weight >= 100:
                checks.append(CheckResult(name="p99_ratio", value=None,
                                          threshold=spec.max_p99_ratio, verdict="skipped",
                                          detail="stable takes no traffic at 100%"))
            else:
                n_stable = prom.query(q.requests(spec.stable)) or 0.0
                p99s = prom.query(q.p99_ms(spec.stable)) if n_stable >= spec.min_requests \
                    else None
                ratio = p99c / p99s if p99c is not None and p99s else None
                checks.append(_at_most("p99_ratio", ratio, spec.max_p99_ratio,
                                       "canary p99 / stable p99, same window"))
        if spec.min_agreement is not None:
            n_cmp = prom.query(q.comparisons()) or 0.0
            value = prom.query(q.agreement()) if n_cmp >= spec.min_requests else None
            checks.append(_at_least("agreement", value, spec.min_agreement,
                                    f"mean agreement with stable over {n_cmp:.0f} mirrored rows"))
        if spec.max_prediction_ratio is not None and n_canary >= spec.min_requests:
            checks.append(prediction_check(prom, q, spec))
    except PrometheusUnavailable as e:
        return Analysis(step=step, weight=weight, window_s=window_s, checks=checks,
                        outcome="fail", reason=f"no analysis: {e}")
    failed = [c for c in checks if c.verdict == "fail"]
    missing = [c for c in checks if c.verdict == "no_data"]
    if failed:
        reason = "; ".join(f"{c.name} {_fmt(c.value)} vs {_fmt(c.threshold)}" for c in failed)
        return Analysis(step=step, weight=weight, window_s=window_s, checks=checks,
                        outcome="fail", reason=f"failed: {reason}")
    if missing:
        return Analysis(step=step, weight=weight, window_s=window_s, checks=checks,
                        outcome="wait", reason="not enough data: "
                        + ", ".join(c.name for c in missing))
    return Analysis(step=step, weight=weight, window_s=window_s, checks=checks, outcome="pass",
                    reason="all checks passed")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _at_most(name: str, value: float | None, bound: float, detail: str) -> CheckResult:
    if value is None:
        return CheckResult(name=name, value=None, threshold=bound, verdict="no_data",
                           detail=detail)
    return CheckResult(name=name, value=value, threshold=bound,
                       verdict="pass" if value <= bound else "fail", detail=detail)


def _at_least(name: str, value: float | None, bound: float, detail: str) -> CheckResult:
    if value is None:
        return CheckResult(name=name, value=None, threshold=bound, verdict="no_data",
                           detail=detail)
    verdict = "pass" if value >= bound else ("no_data" if name == "requests" else "fail")
    return CheckResult(name=name, value=value, threshold=bound, verdict=verdict, detail=detail)
