"""Scoring measured trials: the highest sustained throughput with p99 within the SLO and no
errors.

A trial is measured as a sweep of load steps (rising concurrency or offered rate). A step is
*sustained* when it answered every request (no error of any kind), its p99 is at most the SLO
and, in open loop, the server kept up with the offered rate. A trial's value is the best
throughput among its sustained steps; a trial with none has no value (it broke the SLO).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from serving.settings import settings



@dataclass
class Step:
    """One load level of a trial's sweep, as the load generator measured it."""

    load: float  # concurrency (closed loop) or offered req/s (open loop)
    throughput: float  # requests answered per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int = 0
    requests: int = 0
    cpu_percent: float | None = None
    mode: str = "closed"

    @classmethod
    def from_bench(cls, load: float, result, cpu_percent: float | None = None) -> Step:
        lat = result.latency_ms
        return cls(load=load, throughput=result.throughput_rps, p50_ms=lat.get("p50"),
                   p95_ms=lat.get("p95"), p99_ms=lat.get("p99"),
                   errors=sum(result.errors.values()), requests=result.requests,
                   cpu_percent=cpu_percent, mode=result.mode)


def sustained(step: Step, slo_ms: float) -> bool:
    """Whether a step meets the SLO: some answers, none failed, p99 within the SLO and (open
    loop) the offered rate served."""
    if step.errors or step.p99_ms is None or step.throughput <= 0:
        return False
    if step.p99_ms > slo_ms:
        return False
    if step.mode == "open" and step.throughput < settings().tune_keep_up * step.load:
        return False
    return True


def intermediate(step: Step) -> float:
    """The value reported to the pruner after a step: its p99 (infinite when it had errors)."""
    if step.errors or step.p99_ms is None:
        return math.inf
    return step.p99_ms


@dataclass
class Trial:
    """One configuration measured: what was applied, every step, the outcome."""

    number: int
    config: dict
    state: str  # "complete" (a sustained step), "slo_broken" (none; pruned), "failed"
    steps: list[Step] = field(default_factory=list)
    value: float | None = None  # best sustained throughput (req/s)
    best_step: int | None = None
    error: str | None = None
    applied: str | None = None  # "in place" or "redeployed"
    replicas: dict | None = None  # replica ids and pids of the version's deployment, after apply
    seconds: float | None = None

    @property
    def best(self) -> Step | None:
        return self.steps[self.best_step] if self.best_step is not None else None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Trial:
        d = dict(d)
        d["steps"] = [Step(**s) for s in d.get("steps") or []]
        return cls(**d)


def score(steps: list[Step], slo_ms: float) -> tuple[float | None, int | None]:
    """(best sustained throughput, index of its step), or (None, None) when no step is."""
    best, index = None, None
    for i, s in enumerate(steps):
        if sustained(s, slo_ms) and (best is None or s.throughput > best):
            best, index = s.throughput, i
    return best, index


def finish(trial: Trial, slo_ms: float) -> Trial:
    """Score a trial's steps and set its value and state."""
    if trial.state == "failed":
        return trial
    trial.value, trial.best_step = score(trial.steps, slo_ms)
    trial.state = "complete" if trial.value is not None else "slo_broken"
    return trial


def best_trial(trials: list[Trial]) -> Trial | None:
    """The trial with the highest value; ties go to the earlier trial."""
    scored = [t for t in trials if t.state == "complete" and t.value is not None]
    if not scored:
        return None
    return max(scored, key=lambda t: (t.value, -t.number))


def closest_trial(trials: list[Trial], slo_ms: float) -> tuple[Trial, Step] | None:
    """When no trial meets the SLO: the trial and step whose p99 came closest to it (steps
    without errors first)."""
    candidates = [(t, s) for t in trials for s in t.steps if s.p99_ms is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda ts: (ts[1].errors > 0, ts[1].p99_ms, -ts[1].throughput))


def best_so_far(trials: list[Trial]) -> list[float | None]:
    """The best value after each trial, in order (None until one meets the SLO)."""
    out, best = [], None
    for t in trials:
        if t.state == "complete" and t.value is not None and (best is None or t.value > best):
            best = t.value
        out.append(best)
    return out


def trials_to_reach(trials: list[Trial], target: float) -> int | None:
    """How many trials it took for the best value to reach ``target`` (None if never)."""
    for i, b in enumerate(best_so_far(trials)):
        if b is not None and b >= target:
            return i + 1
    return None
