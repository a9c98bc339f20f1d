"""Judging a canary step on Prometheus data: errors, latency, agreement with stable."""

from __future__ import annotations

import math

from .. import metrics as M
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

    def agreement(self) -> str:
        return (f"sum(increase({M.SHADOW_AGREEMENT.prom}_sum{{{self._pair()}}}[{self.w}])) / "
                f"sum(increase({M.SHADOW_AGREEMENT.prom}_count{{{self._pair()}}}[{self.w}]))")


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
