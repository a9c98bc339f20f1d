"""Traffic split between versions of a model: weights, sticky keys, shadow mirroring."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TrafficPolicy:
    stable: int
    canary: int | None = None
    canary_weight: float = 0.0  # percent of traffic to the canary
    shadow: float = 0.0  # share of stable's requests mirrored to the canary
    sticky_header: str | None = None

    def weights(self) -> dict[int, float]:
        if self.canary is None:
            return {self.stable: 100.0}
        return {self.stable: 100.0 - self.canary_weight, self.canary: self.canary_weight}


def sticky_bucket(key: str) -> float:
    """A key's place in [0, 100): the same on every gateway replica and restart."""
    return (zlib.crc32(key.encode("utf-8")) % 10_000) / 100.0


def choose_version(policy: TrafficPolicy, sticky_key: str | None = None,
                   rng: random.Random | None = None) -> int:
    """The version that serves a request."""
    if policy.canary is None or policy.canary_weight <= 0:
        return policy.stable
    if policy.canary_weight >= 100:
        return policy.canary
    point = sticky_bucket(sticky_key) if sticky_key else (rng or random).random() * 100.0
    return policy.canary if point < policy.canary_weight else policy.stable


def shadow_target(policy: TrafficPolicy, served: int, rng: random.Random | None = None,
                  room: bool = False) -> int | None:
    """The other version of the stable/canary pair, when this request is to be mirrored to it.

    Mirroring goes both ways, so agreement keeps being measured when the canary takes all the
    traffic (at a 100% step stable would otherwise see none). ``policy.shadow`` is the share
    mirrored at least; with ``room`` (the other version has nothing queued or running, and
    the served one nothing waiting) the request is mirrored whatever the draw: at low traffic
    evidence then accrues at the rate of traffic (a tenth of 1.5 requests/s gave 20
    comparisons only after ~130 s, and a healthy canary was held), while under load the
    share falls back to ``policy.shadow``."""
    if policy.canary is None or policy.shadow <= 0 or served not in (policy.stable, policy.canary):
        return None
    other = policy.canary if served == policy.stable else policy.stable
    if room:
        return other
    if (rng or random).random() >= policy.shadow:
        return None
    return other
