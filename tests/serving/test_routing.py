"""Traffic split: weights, sticky keys, shadow sampling."""

from __future__ import annotations

import random
from collections import Counter

from serving.routing import TrafficPolicy, choose_version, shadow_target, sticky_bucket


def test_weights_split_traffic():
    rng = random.Random(0)
    p = TrafficPolicy(stable=1, canary=2, canary_weight=25)
    counts = Counter(choose_version(p, rng=rng) for _ in range(20_000))
    assert abs(counts[2] / 20_000 - 0.25) < 0.015
    assert choose_version(TrafficPolicy(stable=1, canary=2, canary_weight=0), rng=rng) == 1
    assert choose_version(TrafficPolicy(stable=1, canary=2, canary_weight=100), rng=rng) == 2


def test_sticky_key_pins_a_client_and_follows_the_weight():
    p = TrafficPolicy(stable=1, canary=2, canary_weight=30, sticky_header="x-user")
    keys = [f"user-{i}" for i in range(5000)]
    first = [choose_version(p, k) for k in keys]
    assert first == [choose_version(p, k) for k in keys]
    assert abs(first.count(2) / len(keys) - 0.30) < 0.03
    # raising the weight only moves clients from stable to canary, never back
    p60 = TrafficPolicy(stable=1, canary=2, canary_weight=60, sticky_header="x-user")
    assert all(choose_version(p60, k) == 2 for k, v in zip(keys, first) if v == 2)
    assert 0 <= sticky_bucket("anything") < 100


def test_shadow_mirrors_to_the_other_version_at_the_configured_share():
    rng = random.Random(1)
    p = TrafficPolicy(stable=1, canary=2, canary_weight=10, shadow=0.2)
    mirrored = sum(shadow_target(p, 1, rng) == 2 for _ in range(10_000))
    assert abs(mirrored / 10_000 - 0.2) < 0.02
    # at a 100% step stable gets no traffic: canary's requests are mirrored to stable instead
    full = TrafficPolicy(stable=1, canary=2, canary_weight=100, shadow=1.0)
    assert shadow_target(full, 2, rng) == 1
    assert shadow_target(p, 3, rng) is None  # a pinned third version is never mirrored
    assert shadow_target(TrafficPolicy(stable=1), 1, rng) is None


def test_with_room_every_request_is_mirrored_and_without_it_the_share_holds():
    rng = random.Random(7)
    p = TrafficPolicy(stable=1, canary=2, canary_weight=10, shadow=0.1)
    assert all(shadow_target(p, 1, rng, room=True) == 2 for _ in range(1000))
    assert all(shadow_target(p, 2, rng, room=True) == 1 for _ in range(1000))
    share = sum(shadow_target(p, 1, rng) == 2 for _ in range(10_000)) / 10_000
    assert 0.08 < share < 0.12
    # room never mirrors what is not to be mirrored
    assert shadow_target(p, 3, rng, room=True) is None
    assert shadow_target(TrafficPolicy(stable=1, canary=2, shadow=0.0), 1, rng, room=True) is None
