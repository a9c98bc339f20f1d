"""The dynamic batcher, without Ray: fill, delay, bounds, timeouts, errors."""

from __future__ import annotations

import asyncio

import pytest

from serving.batching import AdaptiveBatcher, BatchPolicy, Observer
from serving.protocol import Overloaded, RequestTimeout


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


def test_an_error_in_a_batch_reaches_every_request_in_it():
    async def main():
        b = AdaptiveBatcher(Model(delay=0.01, fail=ValueError("kaboom")),
                            BatchPolicy(max_batch_size=4, max_delay_s=0.02))
        results = await asyncio.gather(*[b.submit(i, 1) for i in range(4)],
                                       return_exceptions=True)
        assert all(isinstance(r, ValueError) and str(r) == "kaboom" for r in results)
        # the batcher keeps working afterwards
        b2 = AdaptiveBatcher(Model(), BatchPolicy(max_batch_size=2, max_delay_s=0.0))
        assert await b2.submit(1, 1) == "out:1"
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
        model = Model(delay=0.3)
        b = AdaptiveBatcher(model, BatchPolicy(max_batch_size=1, max_delay_s=0.0,
                                               max_inflight=1, timeout_s=0.1), label="m:1")
        first = asyncio.create_task(b.submit("first", 1))
        await asyncio.sleep(0.01)
        with pytest.raises(RequestTimeout, match="m:1 did not answer within 0.1 s"):
            await b.submit("second", 1)
        with pytest.raises(RequestTimeout):
            await first
        await asyncio.sleep(0.4)
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
