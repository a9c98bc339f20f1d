"""Choosing a variant: the fastest within the fidelity budget, the Pareto front, batching."""

from __future__ import annotations

from serving.repository import BatchingPolicy, Fidelity, LatencyPoint


def best_throughput(latency: list[LatencyPoint]) -> float:
    return max((p.throughput for p in latency), default=0.0)


def fidelity_score(f: Fidelity) -> float:
    """One number per variant for ranking and plotting (higher is more faithful)."""
    if f.cosine_min is not None:
        return f.cosine_min
    if f.token_agreement is not None:
        return f.token_agreement
    if f.top1_agreement is not None:
        return f.top1_agreement
    return 0.0


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated in (throughput, fidelity): nothing is both faster and more faithful."""
    front = []
    for name, (speed, fid) in points.items():
        dominated = any(
            (s >= speed and f >= fid) and (s > speed or f > fid)
            for other, (s, f) in points.items() if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: -points[n][0])


def recommend_batching(latency: list[LatencyPoint], p99_target_ms: float) -> BatchingPolicy:
    """Batching settings from the measured latency-vs-batch curve.

    A row can wait for the batch in flight and then for its own, so the largest batch whose
    p99 fits in half the target is allowed. Waiting for batch-mates longer than one single-row
    call costs more than it saves, so the delay is that call's p50, at most a tenth of the target.
    """
    pts = sorted(latency, key=lambda p: p.batch_size)
    if not pts:
        return BatchingPolicy(max_batch_size=1, max_delay_ms=0.0, p99_target_ms=p99_target_ms,
                              reason="no latency measured")
    fitting = [p for p in pts if p.p99_ms <= p99_target_ms / 2]
    chosen = fitting[-1] if fitting else pts[0]
    single = pts[0]
    delay = round(min(p99_target_ms / 10.0, max(0.5, single.p50_ms)), 2)
    reason = (
        f"batch {chosen.batch_size}: p99 {chosen.p99_ms:.1f} ms <= {p99_target_ms / 2:.0f} ms "
        f"(half the {p99_target_ms:.0f} ms target); delay {delay} ms ~ one batch-{single.batch_size} "
        f"call (p50 {single.p50_ms:.2f} ms)"
    )
    if not fitting:
        reason = (f"no measured batch fits half the {p99_target_ms:.0f} ms target "
                  f"(batch {chosen.batch_size} p99 {chosen.p99_ms:.1f} ms); batching off")
        return BatchingPolicy(max_batch_size=chosen.batch_size, max_delay_ms=0.0,
                              p99_target_ms=p99_target_ms, reason=reason)
    return BatchingPolicy(max_batch_size=chosen.batch_size, max_delay_ms=delay,
                          p99_target_ms=p99_target_ms, reason=reason)
