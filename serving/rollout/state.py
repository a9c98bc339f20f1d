"""Rollout spec and state: a typed state machine, persisted after every change."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

Phase = Literal["pending", "progressing", "inconclusive", "promoted", "rolled_back", "aborted"]
TERMINAL: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted"})
#: Allowed transitions; anything else is a bug and raises. ``inconclusive``: paused at its step
#: because too little data came in to judge it (weights held); resumed, promoted or aborted by
#: hand.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"progressing", "aborted", "promoted", "rolled_back"}),
    "progressing": frozenset({"promoted", "rolled_back", "aborted", "inconclusive"}),
    "inconclusive": frozenset({"progressing", "promoted", "rolled_back", "aborted"}),
    "promoted": frozenset(), "rolled_back": frozenset(), "aborted": frozenset(),
}
#: Analyses never look at less than this many scrape intervals: a shorter window holds one
#: sample or none, and increase() over it reads as "no data".
MIN_WINDOW_SCRAPES = 4


def now() -> datetime:
    return datetime.now(timezone.utc)


class RolloutSpec(BaseModel):
    """What a rollout does and how it judges the canary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Model name.")
    stable: PositiveInt = Field(description="Version serving today.")
    canary: PositiveInt = Field(description="Version under test.")
    steps: list[float] = Field([10, 25, 50, 100], description="Canary weights (percent).")
    interval_s: float = Field(30.0, gt=0, description="How long each step is held and judged.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary 5xx/timeouts share.")
    max_p99_ms: float | None = Field(None, gt=0, description="Canary p99 latency bound.")
    max_p99_ratio: float | None = Field(1.2, gt=0, description="Canary p99 / stable p99 bound.")
    min_agreement: float | None = Field(
        0.99, ge=0, le=1, description="Mean agreement with stable on mirrored requests.")
    min_requests: PositiveInt = Field(
        20, description="Requests (and comparisons) a step needs before it is judged.")
    failure_budget: int = Field(2, ge=0, description="Failed analyses tolerated; one more "
                                                     "rolls back.")
    shadow: float = Field(0.1, ge=0, le=1, description="Share of requests mirrored to the other "
                                                      "version to measure agreement.")
    max_wait_intervals: PositiveInt = Field(
        10, description="Intervals a step may wait for enough data (its window grows from the "
                        "step's start meanwhile) before the rollout is inconclusive.")
    on_inconclusive: Literal["pause", "rollback"] = Field(
        "pause", description="What an inconclusive step does: pause (weights held, "
                             "`rollout resume` waits again) or roll back.")
    prometheus_selector: str = Field(
        "", description="Extra PromQL label matchers every analysis query carries, e.g. "
                        "'namespace=\"ml\",release=\"optiserve\"', so that releases sharing "
                        "one Prometheus never mix their data.")
    scrape_interval_s: float = Field(
        15.0, gt=0, description="Prometheus' scrape interval for the serving metrics; analysis "
                                f"windows are never shorter than {MIN_WINDOW_SCRAPES} of them.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("steps must not be empty")
        if any(not 0 < s <= 100 for s in v):
            raise ValueError(f"steps must be percentages in (0, 100], got {v}")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"steps must increase, got {v}")
        if v[-1] != 100:
            raise ValueError(f"the last step must be 100 (full traffic), got {v[-1]:g}")
        return v

    @field_validator("prometheus_selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        import re

        v = v.strip().strip("{}").strip()
        matcher = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
        if v and not re.fullmatch(f"{matcher}(,{matcher})*", v):
            raise ValueError(f"prometheus_selector {v!r} must be label matchers such as "
                             'namespace="ml",release="optiserve"')
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RolloutSpec:
        if self.canary == self.stable:
            raise ValueError(f"canary ({self.canary}) equals stable ({self.stable}): nothing to "
                             "roll out")
        if self.min_agreement is not None and self.shadow <= 0:
            raise ValueError("min_agreement needs shadow > 0 (mirrored requests are what "
                             "agreement is measured on)")
        return self


class CheckResult(BaseModel):
    name: str
    value: float | None
    threshold: float | None
    verdict: Literal["pass", "fail", "no_data", "skipped"]
    detail: str = ""


class Analysis(BaseModel):
    at: datetime = Field(default_factory=now)
    step: int
    weight: float
    window_s: float
    checks: list[CheckResult]
    outcome: Literal["pass", "fail", "wait"]
    reason: str = ""


class Transition(BaseModel):
    at: datetime = Field(default_factory=now)
    from_phase: str
    to_phase: str
    step: int
    weight: float
    reason: str


class OwnedSplit(BaseModel):
    """The part of a model's serve config the rollout controller owns while (and after) it rolls
    the model out; whoever renders the serve config (the Helm chart through ``lookup``, the
    controller's own reconciliation) keeps it instead of resetting it.

    ``route`` is the gateway's route for the model exactly as in the gateway user_config
    (``models.<model>``: versions with their batching, stable, canary, canary_weight, shadow);
    ``applications`` are the serve applications of the versions the controller deployed itself
    (the ``<model>-v<N>`` applications not declared by whoever rendered the config)."""

    route: dict
    applications: list[dict] = Field(default_factory=list)


class RolloutState(BaseModel):
    """Where a rollout is; saved after every change so a restarted controller resumes."""

    spec: RolloutSpec
    phase: Phase = "pending"
    step: int = 0
    weight: float = 0.0
    #: step whose weights are known applied (-1: none); a step is never applied twice
    applied_step: int = -1
    step_started_at: datetime | None = None
    #: when the current step was last judged (None: not yet); the next analysis is due one
    #: interval later, over a window that starts at step_started_at
    judged_at: datetime | None = None
    failures: int = 0
    waited_intervals: int = 0
    last_analysis: Analysis | None = None
    history: list[Transition] = Field(default_factory=list)
    analyses: list[Analysis] = Field(default_factory=list)
    reason: str = ""
    #: the split the controller last decided for the model (recorded before it is applied)
    owned_split: OwnedSplit | None = None
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)
    revision: int = 0

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    def transition(self, to: Phase, reason: str) -> Transition:
        if to not in TRANSITIONS[self.phase]:
            raise ValueError(f"rollout of {self.model}: {self.phase} -> {to} is not allowed")
        t = Transition(from_phase=self.phase, to_phase=to, step=self.step, weight=self.weight,
                       reason=reason)
        self.history.append(t)
        self.phase = to
        self.reason = reason
        return t

    def record(self, analysis: Analysis, keep: int = 50) -> None:
        self.last_analysis = analysis
        self.analyses = [*self.analyses, analysis][-keep:]
