"""A model replica's lanes: batches run at once on one ONNX Runtime session, each on its own
thread, and only where the runtime allows it (the replica class without Ray: its Ray side is
exercised by every live suite)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.app import ModelVersionDeployment
from serving.config import VersionConfig, build_serve_config
from serving.repository import ModelRepository
from tests.serving.test_gateway import publish


@pytest.fixture
def replica(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    publish(repo, "ReduceSum")
    r = ModelVersionDeployment.func_or_class(str(repo.root), "reducer", 1)
    yield r
    r.recorder._stop.set()


def slow_runs(replica, seconds: float) -> list[tuple[int, float, float]]:
    """Make every model run take ``seconds``; returns (thread, start, end) per run."""
    runs, real = [], replica.runtime.run

    def run(feeds):
        t0 = time.monotonic()
        time.sleep(seconds)
        out = real(feeds)
        runs.append((threading.get_ident(), t0, time.monotonic()))
        return out
    replica.runtime.run = run
    return runs


def two_batches(replica):
    x = np.ones((2, 3), np.float32)

    async def main():
        return await asyncio.gather(replica.infer([{"x": x}]), replica.infer([{"x": 2 * x}]))
    t0 = time.monotonic()
    outs = asyncio.run(main())
    assert [o[0]["y"].ravel().tolist() for o in outs] == [[3.0, 3.0], [6.0, 6.0]]
    return time.monotonic() - t0


def test_two_lanes_run_two_batches_at_once_on_two_threads(replica):
    replica.reconfigure({"intra_op_threads": 1, "lanes": 2})
    runs = slow_runs(replica, 0.3)
    elapsed = two_batches(replica)
    assert len({thread for thread, _, _ in runs}) == 2
    (_, a0, a1), (_, b0, b1) = runs
    assert max(a0, b0) < min(a1, b1), "the two batches did not overlap"
    assert elapsed < 0.55


def test_one_lane_runs_one_batch_at_a_time(replica):
    replica.reconfigure({"intra_op_threads": 1})
    runs = slow_runs(replica, 0.3)
    elapsed = two_batches(replica)
    (_, a0, a1), (_, b0, b1) = sorted(runs, key=lambda r: r[1])
    assert b0 >= a1 and elapsed >= 0.6


def test_a_stuck_lane_is_seen_while_the_other_serves(replica):
    replica.reconfigure({"intra_op_threads": 1, "lanes": 2})
    release = threading.Event()
    real = replica.runtime.run

    def run(feeds):
        if feeds["x"][0, 0] < 0:
            release.wait(5)
        return real(feeds)
    replica.runtime.run = run
    x = np.ones((1, 3), np.float32)

    async def main():
        stuck = asyncio.ensure_future(replica.infer([{"x": -x}]))
        await asyncio.sleep(0.3)
        out = await replica.infer([{"x": x}])  # the other lane answers meanwhile
        seen = replica.stuck_for()
        release.set()
        await stuck
        return out, seen
    out, seen = asyncio.run(main())
    assert out[0]["y"].ravel().tolist() == [3.0]
    assert seen >= 0.25 and replica.stuck_for() == 0.0


def test_lanes_are_refused_where_the_runtime_keeps_per_call_state(replica):
    import dataclasses

    replica.ref = dataclasses.replace(
        replica.ref, manifest=replica.ref.manifest.model_copy(update={"runtime": "openvino"}))
    runtime = replica.runtime
    with pytest.raises(ValueError, match=r"lanes: 2 batches at once need ONNX Runtime on CPU; "
                                         r"reducer:1 runs openvino on cpu"):
        replica.reconfigure({"lanes": 2})
    assert replica.runtime is runtime and replica._lanes == 1  # the running one stays


def test_onnx_runtime_on_cpu_runs_single_thread_lanes_unless_threads_are_asked_for(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    publish(repo, "ReduceSum")
    m = repo.get("reducer", 1).manifest
    layout = VersionConfig.model_validate
    assert layout({}).layout(m, 2) == (1, 2)  # (threads, lanes)
    assert layout({}).layout(m, 1) == (1, 1)
    assert layout({"intra_op_threads": 2}).layout(m, 2) == (2, 1)  # --threads 2
    assert layout({"lanes": 2}).layout(m, 4) == (2, 2)
    # a canary sharing its stable's CPUs reserves none: it is told the stable's
    assert layout({"cpus": 2}).layout(m, 1) == (1, 2)
    for other in ({"runtime": "openvino"}, {"runtime": "torch"}, {"device": "cuda"}):
        assert layout({}).layout(m.model_copy(update=other), 4) == (4, 1)
    with pytest.raises(ValueError, match="lanes: 3 batches at once need ONNX Runtime on CPU"):
        layout({"lanes": 3}).layout(m.model_copy(update={"device": "cuda"}), 4)


def test_the_serve_config_keeps_two_batches_in_flight_per_lane():
    doc = build_serve_config("/m", [("reducer", 1)], version_replicas=2, version_cpus=1.75)
    gateway, version = (a["deployments"][0] for a in doc["applications"])
    assert version["user_config"] == {}  # the replica picks lanes for its runtime
    # one computing, the next one ready, per lane (2 CPUs reserved: 2 lanes) of each replica
    assert gateway["user_config"]["models"]["reducer"]["versions"][1] == {
        "max_inflight_batches": 8}
    doc = build_serve_config("/m", [("reducer", 1)], version_replicas=2, version_cpus=1.75,
                             threads=2)
    gateway, version = (a["deployments"][0] for a in doc["applications"])
    assert version["user_config"] == {"intra_op_threads": 2}
    assert gateway["user_config"]["models"]["reducer"]["versions"][1] == {
        "max_inflight_batches": 4}


def test_a_replica_with_two_cpus_and_no_runtime_config_starts_with_two_lanes(tmp_path,
                                                                           monkeypatch):
    """The default path (chart and optiserve serve): user_config {} never reconfigures."""
    import serving.app as app

    monkeypatch.setattr(app, "_reserved_cpus", lambda: 2)
    repo = ModelRepository(tmp_path / "repo")
    publish(repo, "ReduceSum")
    r = app.ModelVersionDeployment.func_or_class(str(repo.root), "reducer", 1)
    try:
        r.reconfigure({})
        runs = slow_runs(r, 0.3)
        two_batches(r)
        (_, a0, a1), (_, b0, b1) = runs
        assert max(a0, b0) < min(a1, b1), "the two batches did not overlap"
    finally:
        r.recorder._stop.set()
