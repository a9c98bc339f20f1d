"""The trade-off across every method the optimizer tried: the Pareto front (speed, held-out
fidelity, size, memory), the fastest variant for each fidelity budget, and which method won and
why, in one sentence."""

from __future__ import annotations

from dataclasses import dataclass

from .selection import best_throughput, fidelity_score

#: Fidelity budgets the report answers for (cosine min for embeddings, top-1 agreement for
#: classifiers): from loose to strict.
BUDGETS = (0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)


@dataclass(frozen=True)
class Point:
    name: str
    method: str
    throughput: float
    fidelity: float
    size_bytes: int
    peak_rss_mb: float
    #: Within the run's own budget (with labels this includes the F1 drop).
    passed: bool = False

    def dominates(self, other: Point) -> bool:
        """At least as good on every axis (faster, more faithful, smaller, leaner), better on
        one."""
        mine = (self.throughput, self.fidelity, -self.size_bytes, -self.peak_rss_mb)
        theirs = (other.throughput, other.fidelity, -other.size_bytes, -other.peak_rss_mb)
        return all(a >= b for a, b in zip(mine, theirs)) and mine != theirs


def method_of(name: str) -> str:
    """The variant in words: its builder's description, after the student it was built on."""
    from .variants import VARIANTS

    base, _, variant = name.rpartition("/")
    text = VARIANTS[variant].description if variant in VARIANTS else variant
    return f"{base}: {text}" if base else text


def points(outcomes) -> list[Point]:
    """One point per measured variant (held-out fidelity)."""
    return [Point(o.name, method_of(o.name), best_throughput(o.measurements.latency),
                  fidelity_score(o.measurements.fidelity), o.measurements.size_bytes,
                  o.measurements.peak_rss_mb or 0.0, o.passed)
            for o in outcomes if o.status == "ok"]


def front(pts: list[Point]) -> list[Point]:
    """Points no other point dominates on (speed, fidelity, size, memory), fastest first."""
    return sorted((p for p in pts if not any(q.dominates(p) for q in pts)),
                  key=lambda p: -p.throughput)


def best_per_budget(pts: list[Point], budgets=BUDGETS) -> list[tuple[float, Point | None]]:
    """For each budget, the fastest point whose held-out fidelity reaches it."""
    out = []
    for b in budgets:
        within = [p for p in pts if p.fidelity >= b]
        out.append((b, max(within, key=lambda p: p.throughput) if within else None))
    return out


def verdict(pts: list[Point], chosen: str | None, reference: str | None, bound: float,
            metric: str, rule: str | None = None) -> str:
    """Which method won and why, in one sentence."""
    by = {p.name: p for p in pts}
    if chosen is None or chosen not in by:
        if not pts:
            return "No variant could be measured, so no method won."
        top = max(pts, key=lambda p: p.fidelity)
        return (f"No method won: the most faithful variant, `{top.name}`, reaches {metric} "
                f"{top.fidelity:.4f} on the held-out rows, under the budget of {bound}.")
    win = by[chosen]
    ref = by.get(reference)
    speed = (f"{win.throughput / ref.throughput:.1f}x `{reference}`" if ref and ref.throughput
             and reference != chosen else f"{win.throughput:.0f} rows/s")
    faster = [p for p in pts if p.throughput > win.throughput]
    over = sorted((p for p in faster if not p.passed), key=lambda p: -p.throughput)
    if any(p.passed for p in faster):
        why = rule or "its selection rule preferred it to faster variants within budget"
    elif over:
        names = ", ".join(f"`{p.name}`" for p in over[:2]) + (" and others" if len(over) > 2
                                                             else "")
        why = (f"every faster variant ({names}) is over the budget ({metric} "
               f"{max(p.fidelity for p in over):.4f} at best)")
    else:
        rivals = [p for p in pts if p.name != chosen and p.passed]
        runner = max(rivals, key=lambda p: p.throughput) if rivals else None
        why = (f"it is the fastest of all, {win.throughput / runner.throughput:.2f}x the next "
               f"within budget (`{runner.name}`)" if runner and runner.throughput
               else "it is the fastest of all and the only one within budget")
    return (f"{win.method} (`{chosen}`) won: {speed} at {metric} {win.fidelity:.4f} on held-out "
            f"rows (budget {bound}), because {why}.")
