"""The search space of ``optiserve tune``: which serving settings vary, and over what values.

A space file (YAML or JSON) names any of the five parameters; each is a list of candidate values
or a range::

    max_batch_size: [1, 4, 8, 16, 32]          # rows per model call (gateway batching)
    max_delay_ms: {low: 0, high: 8, points: 4}  # wait for batch-mates (gateway batching)
    replicas: [1, 2]                            # model replicas of the version (layout)
    threads: [1, 2]                             # CPUs per model replica: its lanes or threads
    gateway_replicas: [1, 2]                    # gateway replicas (layout)

Parameters left out take the value the machine's default layout / the manifest gives (one
value, not searched). Batching parameters are applied in place through the gateway's
``user_config``; layout parameters redeploy only the tuned version's application (and the
gateway application for ``gateway_replicas``).
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BATCHING_PARAMS = ("max_batch_size", "max_delay_ms")
LAYOUT_PARAMS = ("replicas", "threads", "gateway_replicas")
PARAMS = BATCHING_PARAMS + LAYOUT_PARAMS
INT_PARAMS = frozenset({"max_batch_size", "replicas", "threads", "gateway_replicas"})


class SpaceError(ValueError):
    """A space that cannot be searched; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A numeric range: sampled continuously (random, bayes), ``points`` values for grid."""

    low: float = Field(ge=0, description="Smallest value.")
    high: float = Field(ge=0, description="Largest value.")
    log: bool = Field(False, description="Sample and space the grid points logarithmically.")
    points: int = Field(4, ge=2, le=64, description="Values the grid strategy tries.")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high <= self.low:
            raise ValueError(f"high ({self.high:g}) must be greater than low ({self.low:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


Values = Union[list[float], Range]


class SearchSpace(_Strict):
    """Candidate values per parameter (a list) or a range; at least one parameter varies."""

    max_batch_size: Values | None = Field(None, description="Most rows per model call.")
    max_delay_ms: Values | None = Field(None, description="Longest a row waits for batch-mates.")
    replicas: Values | None = Field(None, description="Model replicas of the tuned version.")
    threads: Values | None = Field(None, description="CPUs per model replica: single-thread "
                                   "lanes with ONNX Runtime on CPU, intra-op threads otherwise.")
    gateway_replicas: Values | None = Field(None, description="Gateway replicas.")

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        for name in PARAMS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, list):
                if not v:
                    raise ValueError(f"{name}: give at least one value")
                if len(set(v)) != len(v):
                    raise ValueError(f"{name}: values repeat ({v})")
                for i, x in enumerate(v):
                    if name in INT_PARAMS and (x != int(x) or x < 1):
                        raise ValueError(f"{name}[{i}]: {x:g} is not a positive integer")
                    if x < 0:
                        raise ValueError(f"{name}[{i}]: {x:g} is negative")
            elif name in INT_PARAMS and v.low < 1:
                raise ValueError(f"{name}.low: must be >= 1 (got {v.low:g})")
            if name == "max_delay_ms" and _max(v) > 10_000:
                raise ValueError("max_delay_ms: at most 10000 ms")
        return self

    # ---- views used by the strategies ---------------------------------------------------
    def params(self, defaults: dict) -> dict[str, Values]:
        """Every parameter's candidates, the defaults filling those the space leaves out."""
        out = {}
        for name in PARAMS:
            v = getattr(self, name)
            out[name] = v if v is not None else [defaults[name]]
        return out

    def grid_values(self, name: str, defaults: dict) -> list:
        v = self.params(defaults)[name]
        if isinstance(v, list):
            vals = list(v)
        elif v.log:
            vals = [v.low * (v.high / v.low) ** (i / (v.points - 1)) for i in range(v.points)]
        else:
            vals = [v.low + (v.high - v.low) * i / (v.points - 1) for i in range(v.points)]
        return _dedup([_cast(name, x) for x in vals])


def _max(v: Values) -> float:
    return max(v) if isinstance(v, list) else v.high


def _cast(name: str, x: float):
    return int(round(x)) if name in INT_PARAMS else round(float(x), 3)


def _dedup(vals: list) -> list:
    out = []
    for x in vals:
        if x not in out:
            out.append(x)
    return out


def normalize(config: dict) -> dict:
    """A configuration with every parameter in its canonical type (ints, rounded floats)."""
    return {name: _cast(name, config[name]) for name in PARAMS}


def config_key(config: dict) -> str:
    c = normalize(config)
    return ",".join(f"{k}={c[k]:g}" for k in PARAMS)


def feasible(config: dict, cpus: float) -> bool:
    """Whether a layout fits the machine: the model replicas' threads at most the CPUs."""
    return config["replicas"] * config["threads"] <= max(1, math.ceil(cpus - 1e-9))


def grid(space: SearchSpace, defaults: dict, cpus: float) -> list[dict]:
    """Every feasible combination, layouts outermost so consecutive trials share a layout (a
    batching change is applied in place; only a layout change redeploys)."""
    order = LAYOUT_PARAMS + BATCHING_PARAMS
    axes = [space.grid_values(n, defaults) for n in order]
    configs = [dict(zip(order, combo)) for combo in product(*axes)]
    return [normalize(c) for c in configs if feasible(c, cpus)]


def limits(space: SearchSpace, defaults: dict) -> dict:
    """The largest replicas, threads and gateway replicas the space holds."""
    out = {}
    for name in LAYOUT_PARAMS:
        v = space.params(defaults)[name]
        out[name] = int(max(v) if isinstance(v, list) else math.floor(v.high))
    return out


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; errors name the file and the field."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpaceError(f"cannot read space file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SpaceError(f"space file {path} is not valid YAML/JSON: {e}") from None
    return parse_space(doc, str(path))


def parse_space(doc, where: str = "space") -> SearchSpace:
    if not isinstance(doc, dict):
        raise SpaceError(f"{where}: expected a mapping of parameters ({', '.join(PARAMS)})")
    try:
        return SearchSpace.model_validate(doc)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = list(err["loc"])
            # a list or a range: report only the branch the file's value was written as
            if len(loc) >= 2 and isinstance(loc[1], str) and loc[0] in PARAMS:
                is_range = "Range" in loc[1]
                if loc[1] == "list[float]" or is_range:
                    if is_range != isinstance(doc.get(loc[0]), dict) and \
                            isinstance(doc.get(loc[0]), (dict, list)):
                        continue
                    del loc[1]
            field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{field.lstrip('.')}: {msg}" if field else msg)
        raise SpaceError(f"invalid space file {where}:\n  " + "\n  ".join(_dedup(lines))) from None


def default_space(manifest, cpus: float) -> SearchSpace:
    """A space derived from the manifest's batching recommendation and the machine's CPUs."""
    mbs = manifest.batching.max_batch_size
    batch = sorted({max(1, mbs // 4), max(1, mbs // 2), mbs, mbs * 2, mbs * 4} | {1})
    delay = sorted({0.0, round(float(manifest.batching.max_delay_ms), 3), 2.0, 5.0})
    n = max(1, math.floor(cpus + 1e-9))
    pow2 = [1 << i for i in range(8) if (1 << i) <= n] or [1]
    gateways = [1, 2] if n >= 2 else [1]
    if n >= 16:
        gateways = sorted({1, 2, n // 8, n // 4})
    return SearchSpace(max_batch_size=batch, max_delay_ms=delay, replicas=pow2, threads=pow2,
                       gateway_replicas=gateways)


def defaults_from(manifest, layout) -> dict:
    """The values a parameter takes when the space leaves it out: the manifest's batching and
    the machine's default layout (what ``optiserve serve`` would choose)."""
    return {"max_batch_size": manifest.batching.max_batch_size,
            "max_delay_ms": float(manifest.batching.max_delay_ms),
            "replicas": layout.version_replicas, "threads": layout.threads,
            "gateway_replicas": layout.gateway_replicas}
