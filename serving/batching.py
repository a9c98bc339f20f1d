"""Dynamic batching: a bounded queue of requests, one future per request, batches by rows.

A batch is dispatched when it holds ``max_batch_size`` rows, or when its oldest request has
waited ``max_delay``, and only while fewer than ``max_inflight`` batches are running: while the
model is busy, requests gather into the next batch, so batches grow with load. The queue is
bounded in rows; past the bound a request is refused at once with :class:`Overloaded` (503 and a
Retry-After estimated from recent throughput). An exception in a batch reaches every request in it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .protocol.errors import ModelUnavailable, Overloaded, RequestTimeout


@dataclass(frozen=True)
class BatchPolicy:
    """How one (model, version) batches."""

    max_batch_size: int = 32
    max_delay_s: float = 0.002
    max_queue_rows: int = 2048
    max_inflight: int = 2
    timeout_s: float | None = 30.0


class Observer:
    """Metric hooks; the default does nothing."""

    def dispatched(self, rows: int, waits_s: list[float]) -> None: ...
    def queue_changed(self, rows: int) -> None: ...


@dataclass
class _Item:
    payload: Any
    rows: int
    future: asyncio.Future
    enqueued: float
    abandoned: bool = False


class AdaptiveBatcher:
    """Batches payloads for ``run_batch(payloads) -> results`` (one result per payload)."""

    def __init__(self, run_batch: Callable[[list[Any]], Awaitable[list[Any]]],
                 policy: BatchPolicy, label: str = "model", observer: Observer | None = None):
        self._run_batch = run_batch
        self.policy = policy
        self.label = label
        self._observer = observer or Observer()
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._inflight = 0
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._closed = False
        self._rate = 0.0  # rows/s, smoothed, for Retry-After
        self._tasks: set[asyncio.Task] = set()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight(self) -> int:
        return self._inflight

    def update(self, policy: BatchPolicy) -> None:
        """Change the policy in place; queued requests keep their place."""
        self.policy = policy
        if self._wakeup is not None:
            self._wakeup.set()

    async def submit(self, payload: Any, rows: int) -> Any:
        """Queue ``payload`` (``rows`` rows) and wait for its result."""
        if self._closed:
            raise ModelUnavailable(f"{self.label} is shutting down")
        p = self.policy
        if self._queued_rows and self._queued_rows + rows > p.max_queue_rows:
            wait = self._queued_rows / self._rate if self._rate > 0 else 1.0
            raise Overloaded(
                f"{self.label} is overloaded: {self._queued_rows} rows queued, the limit is "
                f"{p.max_queue_rows}; retry later", retry_after_s=wait)
        if self._loop_task is None:
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        item = _Item(payload, rows, fut, time.perf_counter())
        self._queue.append(item)
        self._queued_rows += rows
        self._observer.queue_changed(self._queued_rows)
        self._wakeup.set()
        if p.timeout_s is None:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), p.timeout_s)
        except asyncio.TimeoutError:
            item.abandoned = True
            raise RequestTimeout(
                f"{self.label} did not answer within {p.timeout_s:g} s "
                f"({self._queued_rows} rows queued, {self._inflight} batches running)") from None

    async def close(self) -> None:
        """Refuse new requests, fail queued ones, wait for running batches."""
        self._closed = True
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(ModelUnavailable(f"{self.label} was unloaded"))
        self._queued_rows = 0
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self) -> None:
        wakeup = self._wakeup
        while not self._closed:
            if not self._queue or self._inflight >= self.policy.max_inflight:
                wakeup.clear()
                await wakeup.wait()
                continue
            while self._queue and self._queue[0].abandoned:
                self._queued_rows -= self._queue.popleft().rows
            if not self._queue:
                continue
            p = self.policy
            if self._queued_rows < p.max_batch_size:
                remaining = self._queue[0].enqueued + p.max_delay_s - time.perf_counter()
                if remaining > 0:
                    wakeup.clear()
                    try:
                        await asyncio.wait_for(wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                    if self._queued_rows < p.max_batch_size and self._queue and (
                        self._queue[0].enqueued + p.max_delay_s > time.perf_counter()
                    ):
                        continue
            batch, rows = self._take(p.max_batch_size)
            if not batch:
                continue
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._dispatch(batch, rows))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, max_rows: int) -> tuple[list[_Item], int]:
        batch, rows = [], 0
        while self._queue:
            item = self._queue[0]
            if item.abandoned:
                self._queue.popleft()
                self._queued_rows -= item.rows
                continue
            if batch and rows + item.rows > max_rows:
                break
            self._queue.popleft()
            self._queued_rows -= item.rows
            batch.append(item)
            rows += item.rows
        self._observer.queue_changed(self._queued_rows)
        return batch, rows

    async def _dispatch(self, batch: list[_Item], rows: int) -> None:
        now = time.perf_counter()
        self._observer.dispatched(rows, [now - i.enqueued for i in batch])
        try:
            results = await self._run_batch([i.payload for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch returned {len(results)} results for {len(batch)} "
                                   "requests")
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
            elapsed = max(time.perf_counter() - now, 1e-6)
            rate = rows / elapsed * max(1, self._inflight)
            self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        except Exception as e:  # every request of the batch learns what happened
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
        finally:
            self._inflight -= 1
            self._wakeup.set()
