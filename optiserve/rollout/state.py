"""Rollout spec and state: a typed state machine, persisted after every change."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from serving.repository.schema import check_model_name

Phase = Literal["pending", "progressing", "inconclusive", "paused", "promoted", "rolled_back",
                "aborted"]
TERMINAL: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted"})
#: Allowed transitions; anything else is a bug and raises. ``pending``: recorded, the canary
#: being deployed (when it was not served) until it is ready. ``inconclusive``: held at its step
#: because too little data came in to judge it; ``paused``: held by hand. Both keep their
#: weights and are resumed, promoted or aborted by hand.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"progressing", "aborted", "rolled_back"}),
    "progressing": frozenset({"promoted", "rolled_back", "aborted", "inconclusive", "paused"}),
    "inconclusive": frozenset({"progressing", "promoted", "rolled_back", "aborted", "paused"}),
    "paused": frozenset({"progressing", "promoted", "rolled_back", "aborted"}),
    "promoted": frozenset(), "rolled_back": frozenset(), "aborted": frozenset(),
}


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
                                "windows are never shorter than OPTISERVE_ROLLOUT_MIN_WINDOW_SCRAPES "
                                "(default 4) of them.")
    retire_after_s: float | None = Field(
        None, ge=0, description="After promotion, how long the old stable stays served at 0 % "
                                "before it is removed [default: one interval].")
    keep: bool = Field(False, description="Remove nothing at the end: the old stable (after "
                                          "promotion) or the canary (after a rollback) stays "
                                          "served at 0 %.")
    deploy_timeout_s: float = Field(
        900.0, gt=0, description="Longest a canary the controller deploys may take to become "
                                 "ready; past it the rollout is rolled back.")
    max_prediction_ratio: float | None = Field(
        2.0, gt=1, description="Flag a canary whose observed compute per row is more than this "
                               "factor off what the optimizer measured for it (a hardware or "
                               "thread mismatch); advisory, it does not fail the step.")

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        return check_model_name(v)

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
    #: "warn": an advisory check that is off; it is reported and alerted on, never fails a step
    verdict: Literal["pass", "fail", "no_data", "skipped", "warn"]
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


class Split(BaseModel):
    """How a model is served: the versions the gateway routes to with their weights, and the
    versions that have an application (a superset: a canary is deployed before it is routed,
    and stays deployed for a while after it is no longer routed)."""

    model_config = ConfigDict(frozen=True)

    stable: PositiveInt
    canary: PositiveInt | None = None
    weight: float = 0.0
    shadow: float = 0.0
    routed: tuple[int, ...]
    deployed: tuple[int, ...]


Action = Literal["promote", "abort", "pause", "resume"]


class Request(BaseModel):
    """A decision asked for by hand (``rollout promote`` ...): recorded in the state, carried
    out by the runner (the foreground ``rollout start`` or the controller), never by the CLI
    process that asked, so two processes can't apply different splits."""

    action: Action
    at: datetime = Field(default_factory=now)
    by: str = ""


#: The state document's format. 1: the first (no schema_version field); 2: schema_version,
#: reset_at. A state of a newer format is refused by name (a newer optiserve wrote it).
STATE_SCHEMA_VERSION = 2


class UnreadableState(ValueError):
    """A rollout's saved state cannot be used; the message names the model and why."""


def parse_state(raw: str | bytes, model: str = "") -> RolloutState:
    """A saved state, migrated from an older format; a newer or malformed one is refused with
    :class:`UnreadableState` naming the model (the controller skips it, the others go on)."""
    import json

    from pydantic import ValidationError

    where = f"rollout state of {model}" if model else "rollout state"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise UnreadableState(f"{where} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UnreadableState(f"{where} is not a JSON object")
    version = doc.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise UnreadableState(f"{where}: schema_version {version!r} is not a format number")
    if version > STATE_SCHEMA_VERSION:
        raise UnreadableState(
            f"{where} has format {version}, written by a newer optiserve; this one reads up to "
            f"{STATE_SCHEMA_VERSION}: upgrade the rollout controller (the rollout is left "
            "as it is)")
    if version == 1:  # 1 -> 2: the format number; reset_at starts unknown
        doc["schema_version"] = 2
    try:
        return RolloutState.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise UnreadableState(f"{where}: {field}: {err['msg']}") from None


class RolloutState(BaseModel):
    """Where a rollout is; saved after every change so a restarted controller resumes.

    Changes to the target are write-ahead: the split is recorded (``desired``, saved with
    compare-and-swap) before it is applied, and ``applied`` is set once the target took it; the
    step's clock starts when the gateway reports the new weights (``confirmed``)."""

    schema_version: int = STATE_SCHEMA_VERSION
    spec: RolloutSpec
    phase: Phase = "pending"
    step: int = 0
    weight: float = 0.0
    #: step whose weights are known applied (-1: none); a step is never applied twice
    applied_step: int = -1
    #: the split the runner decided last, recorded before it is applied
    desired: Split | None = None
    #: the target took ``desired``
    applied: bool = False
    #: the gateway reported ``desired``'s weights (only then does a step's clock start)
    confirmed: bool = False
    #: when ``desired`` was applied, for the confirmation timeout
    applied_at: datetime | None = None
    #: the canary was not served when the rollout started: the runner deployed it
    deployed_canary: bool = False
    #: versions to remove once ``retire_at`` has passed (after promotion or rollback)
    retire: list[int] = Field(default_factory=list)
    retire_at: datetime | None = None
    #: a decision asked for by hand, not carried out yet
    request: Request | None = None
    #: when a runner last looked at this rollout (the CLI waits for a live runner)
    heartbeat_at: datetime | None = None
    step_started_at: datetime | None = None
    #: when the held step's evidence was last reset (a failed analysis): no analysis window
    #: reaches back before it, nor before step_started_at
    reset_at: datetime | None = None
    #: when the current step was last judged (None: not yet); the next analysis is due one
    #: interval later, over a window that starts at step_started_at
    judged_at: datetime | None = None
    failures: int = 0
    waited_intervals: int = 0
    last_analysis: Analysis | None = None
    history: list[Transition] = Field(default_factory=list)
    analyses: list[Analysis] = Field(default_factory=list)
    reason: str = ""
    #: what Serve last said of a canary being deployed (e.g. why it cannot be scheduled)
    deploy_message: str = ""
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

    @property
    def settled(self) -> bool:
        """Finished, with nothing left to remove or confirm: the runner has no more to do."""
        return self.done and not self.retire and (self.desired is None or self.applied)

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
