"""The dynamic batcher, without Ray: fill, delay, bounds, timeouts, errors."""

from __future__ import annotations

import asyncio

import pytest

from serving.batching import AdaptiveBatcher, BatchPolicy, Observer
from serving.protocol import (
    InputRejected, InvalidInput, ModelUnavailable, Overloaded, RequestTimeout, ShadowDropped,
)


class Model:
    """Records the batches it is given; each call takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.01, fail: Exception | None = None):
        self.batches: list[list] = []
        self.delay, self.fail = delay, fail

    async def __call__(self, payloads):
        self.batches.append(payloads)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return [f"out:{p}" for p in payloads]


class Recording(Observer):
    def __init__(self):
        self.sizes, self.waits = [], []

    def dispatched(self, rows, waits_s):
        self.sizes.append(rows)
        self.waits.extend(waits_s)


def run(coro):
    return asyncio.run(coro)


def test_batches_fill_up_to_max_rows_while_the_model_is_busy():
    async def main():
        model, obs = Model(delay=0.05), Recording()
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.01,
                                               max_inflight=1), observer=obs)
        results = await asyncio.gather(*[b.submit(i, 1) for i in range(20)])
        assert results == [f"out:{i}" for i in range(20)]
        assert max(len(x) for x in model.batches) == 8
        assert sum(len(x) for x in model.batches) == 20
        assert all(s <= 8 for s in obs.sizes) and sum(obs.sizes) == 20
        assert len(obs.waits) == 20
    run(main())


def test_a_lone_request_waits_at_most_max_delay():
    async def main():
        model = Model(delay=0.0)
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=32, max_delay_s=0.05))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await b.submit("a", 1) == "out:a"
        elapsed = loop.time() - t0
        assert 0.04 <= elapsed < 0.5
    run(main())


def test_rows_not_requests_count_toward_the_batch():
    async def main():
        model = Model(delay=0.02)
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=10, max_delay_s=0.05,
                                               max_inflight=1))
        await asyncio.gather(b.submit("six", 6), b.submit("five", 5), b.submit("four", 4))
        assert [len(x) for x in model.batches] == [1, 2]  # 6 alone, then 5 + 4
    run(main())


def test_an_error_of_the_machinery_reaches_every_request_at_once():
    async def main():
        model = Model(delay=0.01, fail=ModelUnavailable("m:1 is unavailable"))
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=0.02))
        results = await asyncio.gather(*[b.submit(i, 1) for i in range(4)],
                                       return_exceptions=True)
        assert all(isinstance(r, ModelUnavailable) for r in results)
        assert len(model.batches) == 1  # not bisected: retrying alone cannot help
        # the batcher keeps working afterwards
        b2 = AdaptiveBatcher(Model(), BatchPolicy(max_batch_size=2, max_delay_s=0.0))
        assert await b2.submit(1, 1) == "out:1"
    run(main())


class Picky(Model):
    """Fails any batch that holds a payload starting with "bad"."""

    async def __call__(self, payloads):
        self.batches.append(payloads)
        await asyncio.sleep(self.delay)
        bad = [p for p in payloads if str(p).startswith("bad")]
        if bad:
            raise InputRejected(f"the model refused {bad[0]}")
        return [f"out:{p}" for p in payloads]


def test_a_bad_request_fails_alone_and_its_batch_mates_get_their_answers():
    async def main():
        model = Picky(delay=0.01)
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.05))
        payloads = ["a", "b", "bad-1", "c", "d", "e", "f", "g"]
        results = await asyncio.gather(*[b.submit(p, 1) for p in payloads],
                                       return_exceptions=True)
        for p, r in zip(payloads, results):
            if p == "bad-1":
                assert isinstance(r, InputRejected) and "refused bad-1" in str(r)
            else:
                assert r == f"out:{p}"
        assert len(model.batches[0]) == 8  # one batch, then halves down to the culprit
        assert len(model.batches) <= 1 + 2 * 3
    run(main())


def test_a_model_that_fails_everything_fails_every_request():
    async def main():
        model = Model(delay=0.0, fail=ValueError("kaboom"))
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=0.02))
        results = await asyncio.gather(*[b.submit(i, 1) for i in range(4)],
                                       return_exceptions=True)
        assert all(isinstance(r, ValueError) and str(r) == "kaboom" for r in results)
    run(main())


def test_a_request_over_max_batch_size_is_refused_before_it_queues():
    async def main():
        model = Model()
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=8, max_queue_rows=100),
                            label="m:1")
        with pytest.raises(InvalidInput, match="the request has 9 rows; m:1 accepts at most 8 "
                                               "rows per request"):
            await b.submit("big", 9)
        assert model.batches == [] and b.queued_rows == 0
        assert await b.submit("ok", 8) == "out:ok"
    run(main())


class Gauge(Observer):
    def __init__(self):
        self.rows = []

    def queue_changed(self, rows):
        self.rows.append(rows)


def test_a_cancelled_request_leaves_the_queue_and_is_never_computed():
    async def main():
        model, gauge = Model(), Gauge()
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=64, max_delay_s=0.5),
                            observer=gauge)
        task = asyncio.create_task(b.submit("gone", 5))
        await asyncio.sleep(0.05)
        assert b.queued_rows == 5
        task.cancel()  # what Serve does when the HTTP client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        assert b.queued_rows == 0 and gauge.rows[-1] == 0  # released at once
        await asyncio.sleep(0.6)  # past max_delay: nothing is dispatched
        assert model.batches == []
        assert await b.submit("next", 1) == "out:next"
        assert model.batches == [["next"]]
    run(main())


def test_a_timed_out_request_releases_its_rows_at_once():
    async def main():
        model = Model(delay=0.3)
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=1, max_delay_s=0.0,
                                               max_inflight=1, timeout_s=0.1,
                                               max_queue_rows=3))
        busy = asyncio.create_task(b.submit("busy", 1))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(b.submit(f"w{i}", 1)) for i in range(3)]
        await asyncio.sleep(0.15)  # they timed out while the model was busy
        assert b.queued_rows == 0
        for t in waiting:
            with pytest.raises(RequestTimeout):
                await t
        # their room is free for new requests straight away (no 503)
        fresh = [asyncio.create_task(b.submit(f"f{i}", 1)) for i in range(3)]
        await asyncio.sleep(0)
        assert b.queued_rows == 3
        for t in [busy, *fresh]:
            t.cancel()
    run(main())


def test_shadow_copies_have_their_own_share_and_never_push_out_real_requests():
    async def main():
        model = Model(delay=0.05)
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=2, max_delay_s=0.0,
                                               max_inflight=1, max_queue_rows=4,
                                               max_shadow_rows=2))
        shadows = [asyncio.create_task(b.submit(f"s{i}", 1, shadow=True)) for i in range(6)]
        await asyncio.sleep(0)
        real = [asyncio.create_task(b.submit(f"r{i}", 1)) for i in range(4)]
        results = await asyncio.gather(*real, *shadows, return_exceptions=True)
        assert results[:4] == ["out:r0", "out:r1", "out:r2", "out:r3"]  # no 503 for real ones
        dropped = [r for r in results[4:] if isinstance(r, ShadowDropped)]
        assert len(dropped) >= 3  # past their share, copies are dropped, not queued
        # real requests went first: after the first batch, no batch mixed a copy before them
        order = [p for batch in model.batches for p in batch]
        assert all(order.index(f"r{i}") < order.index(s) for i in range(4)
                   for s in order if s.startswith("s") and order.index(s) > 1)
    run(main())


def test_a_full_queue_is_refused_with_retry_after():
    async def main():
        b = AdaptiveBatcher(Model(delay=0.2), BatchPolicy(max_batch_size=2, max_delay_s=0.0,
                                                          max_queue_rows=4, max_inflight=1),
                            label="m:1")
        results = await asyncio.gather(*[b.submit(i, 1) for i in range(6)],
                                       return_exceptions=True)
        assert results[:4] == ["out:0", "out:1", "out:2", "out:3"]
        for err in results[4:]:  # queued before any batch left: the 5th and 6th row are refused
            assert isinstance(err, Overloaded)
            assert "m:1 is overloaded: 4 rows queued, the limit is 4" in str(err)
            assert int(err.headers()["Retry-After"]) >= 1
        assert await b.submit("later", 1) == "out:later"  # and it recovers
    run(main())


def test_timeout_gives_504_and_the_request_is_not_run():
    async def main():
        model = Model(delay=0.5)
        policy = BatchPolicy(max_batch_size=1, max_delay_s=0.0, max_inflight=1, timeout_s=1.0)
        b = AdaptiveBatcher(model, policy, label="m:1")
        first = asyncio.create_task(b.submit("first", 1))  # holds the only slot for 0.5 s
        await asyncio.sleep(0.01)
        b.update(BatchPolicy(max_batch_size=1, max_delay_s=0.0, max_inflight=1, timeout_s=0.1))
        with pytest.raises(RequestTimeout, match="m:1 did not answer within 0.1 s"):
            await b.submit("second", 1)
        assert await first == "out:first"
        await asyncio.sleep(0.1)
        assert ["second"] not in model.batches  # abandoned before dispatch: never run
    run(main())


def test_policy_changes_in_place():
    async def main():
        model = Model(delay=0.02)
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=2, max_delay_s=0.01,
                                               max_inflight=1))
        await asyncio.gather(*[b.submit(i, 1) for i in range(6)])
        b.update(BatchPolicy(max_batch_size=6, max_delay_s=0.05, max_inflight=1))
        model.batches.clear()
        await asyncio.gather(*[b.submit(i, 1) for i in range(6)])
        assert [len(x) for x in model.batches] == [6]
    run(main())


def test_a_stuck_model_call_frees_its_slot_at_the_deadline():
    """A replica stuck on a batch (its call never returns) used to hold the version's in-flight
    slot for good: every later request waited behind it and got 504. The batch's call now ends
    at the request timeout: its requests get 504, the slot is free, and the next batch runs
    (on a replica that answers)."""
    async def main():
        stuck, calls = asyncio.Event(), []

        async def model(payloads):
            calls.append(payloads)
            if len(calls) == 1:
                await stuck.wait()  # never set: the first call hangs
            return [f"out:{p}" for p in payloads]

        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=0.0,
                                               max_inflight=1, timeout_s=0.3))
        first = asyncio.create_task(b.submit("a", 1))
        await asyncio.sleep(0.05)
        assert b.inflight == 1
        with pytest.raises(RequestTimeout, match="did not answer"):
            await first
        await asyncio.sleep(0.05)
        assert b.inflight == 0  # the slot came back with the deadline
        assert await asyncio.wait_for(b.submit("b", 1), 2) == "out:b"
        assert len(calls) == 2
    run(main())


def test_a_replica_stuck_on_a_batch_fails_its_health_check_and_readiness(monkeypatch):
    """The other half of the deadline: the gateway gave up on the batch, but the replica's one
    model thread is still on it, so nothing else can run there. Its health check must fail
    (Serve replaces it) and it must report not ready, once the batch has run past the limit."""
    import time
    from types import SimpleNamespace

    from serving import settings as S
    from serving.app import ModelVersionDeployment

    monkeypatch.setenv("OPTISERVE_MODEL_STUCK_AFTER_S", "5")
    S.settings.cache_clear()
    try:
        replica = object.__new__(ModelVersionDeployment.func_or_class)
        replica.ref = SimpleNamespace(name="m", version=3)
        replica.runtime = object()
        replica._busy = {}
        asyncio.run(replica.check_health())
        assert asyncio.run(replica.ready())
        replica._busy = {1: time.monotonic() - 2}  # busy, within the limit: healthy
        asyncio.run(replica.check_health())
        assert asyncio.run(replica.ready())
        replica._busy = {1: time.monotonic() - 1, 2: time.monotonic() - 6}  # one lane stuck
        with pytest.raises(RuntimeError, match=r"m:3: a batch has been running for 6 s "
                                               r"\(limit 5 s\); the model is stuck"):
            asyncio.run(replica.check_health())
        assert not asyncio.run(replica.ready())
    finally:
        S.settings.cache_clear()


def test_while_the_model_is_busy_waiting_rows_go_together_up_to_merge_batches():
    async def main():
        model, obs = Model(delay=0.05), Recording()
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.01,
                                               max_inflight=1, merge_batches=4), observer=obs)
        first = asyncio.ensure_future(b.submit("first", 1))
        await asyncio.sleep(0.02)  # "first" is running: the rest gather behind it
        rest = await asyncio.gather(*[b.submit(i, 1) for i in range(40)])
        assert await first == "out:first"
        assert rest == [f"out:{i}" for i in range(40)]
        # one row alone, then a dispatch of 4 x 8 rows, then what is left
        assert obs.sizes == [1, 32, 8]
    run(main())


def test_an_idle_model_gets_a_full_batch_at_once_without_waiting_for_more():
    async def main():
        model, obs = Model(delay=0.0), Recording()
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=5.0,
                                               max_inflight=1, merge_batches=4), observer=obs)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*[b.submit(i, 1) for i in range(8)])
        # a full batch of max_batch_size rows does not wait max_delay for merge_batches more
        assert loop.time() - t0 < 1.0
        assert obs.sizes == [8]
    run(main())
