"""Dynamic batching: bounded queues of requests, one future per request, batches by rows.

A batch is dispatched when it holds ``max_batch_size`` rows, or when its oldest request has
waited ``max_delay``, and only while fewer than ``max_inflight`` batches are running: while the
model is busy, requests gather into the next batch, so batches grow with load — up to
``merge_batches`` times ``max_batch_size`` rows, which the caller runs as model calls of at most
``max_batch_size`` rows each (one hop to the model for all of them, and texts regrouped by length
over more rows pad less).

Bounds (Triton's rules, and then some):

- a request of more than ``max_batch_size`` rows is refused (400) before it queues: one client
  cannot buy a batch that stalls everyone else;
- the queue is bounded in rows; past the bound a request is refused at once with
  :class:`Overloaded` (503 and a Retry-After estimated from recent throughput);
- mirrored (shadow) copies queue apart, within their own bounded share, and only fill the room
  real requests leave in a batch: they are dropped first and never make a real request wait or
  get a 503;
- a request that times out or whose client goes away leaves the queue at once; rows that
  nobody waits for are never computed.

Isolation: when a batch fails with an error of the model (not of the serving machinery), it is
bisected and the halves run again, so only the request that caused it fails. Errors of the
machinery (replica gone, unavailable) reach every request of the batch as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .protocol.errors import (
    BatchTimeout, InvalidInput, ModelUnavailable, Overloaded, RequestTimeout, ShadowDropped,
    is_infrastructure,
)


@dataclass(frozen=True)
class BatchPolicy:
    """How one (model, version) batches."""

    max_batch_size: int = 32
    max_delay_s: float = 0.002
    max_queue_rows: int = 2048
    max_inflight: int = 2
    #: a dispatch takes up to this many max_batch_size batches of waiting rows
    merge_batches: int = 1
    timeout_s: float | None = 30.0
    #: rows of mirrored copies allowed to wait (None: a quarter of max_queue_rows, at least a
    #: batch)
    max_shadow_rows: int | None = None

    @property
    def dispatch_rows(self) -> int:
        """Most rows of one dispatch (each model run within it: at most max_batch_size)."""
        return self.max_batch_size * self.merge_batches

    @property
    def shadow_limit(self) -> int:
        if self.max_shadow_rows is not None:
            return self.max_shadow_rows
        return max(self.max_batch_size, self.max_queue_rows // 4)


class Observer:
    """Metric hooks; the default does nothing."""

    def dispatched(self, rows: int, waits_s: list[float]) -> None: ...
    def queue_changed(self, rows: int) -> None: ...
    def bisected(self, requests: int) -> None: ...


@dataclass(eq=False)
class _Item:
    payload: Any
    rows: int
    future: asyncio.Future
    enqueued: float
    shadow: bool = False
    #: left the queue unanswered (timeout, disconnect): skipped, its rows already released
    abandoned: bool = False
    dispatched: bool = False


class _Expired(Exception):
    """Set on a request's future when its timeout passes (turned into RequestTimeout)."""


def _expire(f: asyncio.Future) -> None:
    if not f.done():
        f.set_exception(_Expired())


def _retrieve(f: asyncio.Future) -> None:
    if not f.cancelled():
        f.exception()


class AdaptiveBatcher:
    """Batches payloads for ``run_batch(payloads) -> results`` (one result per payload)."""

    def __init__(self, run_batch: Callable[[list[Any]], Awaitable[list[Any]]],
                 policy: BatchPolicy, label: str = "model", observer: Observer | None = None):
        self._run_batch = run_batch
        self.policy = policy
        self.label = label
        self._observer = observer or Observer()
        self._queue: deque[_Item] = deque()
        self._shadow: deque[_Item] = deque()
        self._queued_rows = 0  # real rows waiting (abandoned ones excluded)
        self._shadow_rows = 0
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
    def shadow_rows(self) -> int:
        return self._shadow_rows

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def idle(self) -> bool:
        """Nothing waiting and no batch running: a mirrored copy would cost no one a wait."""
        return self._waiting_rows == 0 and self._inflight == 0 and not self._closed

    def update(self, policy: BatchPolicy) -> None:
        """Change the policy in place; queued requests keep their place."""
        self.policy = policy
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def _waiting_rows(self) -> int:
        return self._queued_rows + self._shadow_rows

    def _queue_changed(self) -> None:
        self._observer.queue_changed(self._waiting_rows)

    def _admit(self, rows: int, shadow: bool) -> None:
        p = self.policy
        if self._closed:
            raise ModelUnavailable(f"{self.label} is shutting down")
        if rows > p.max_batch_size:
            raise InvalidInput(f"the request has {rows} rows; {self.label} accepts at most "
                               f"{p.max_batch_size} rows per request (max_batch_size): split it")
        if shadow:
            if self._shadow_rows + rows > p.shadow_limit:
                raise ShadowDropped(f"{self.label}: the mirrored share of the queue is full")
            return
        if self._queued_rows and self._queued_rows + rows > p.max_queue_rows:
            wait = self._queued_rows / self._rate if self._rate > 0 else 1.0
            raise Overloaded(
                f"{self.label} is overloaded: {self._queued_rows} rows queued, the limit is "
                f"{p.max_queue_rows}; retry later", retry_after_s=wait)

    async def submit(self, payload: Any, rows: int, shadow: bool = False) -> Any:
        """Queue ``payload`` (``rows`` rows) and wait for its result. ``shadow``: a mirrored
        copy, queued apart and dropped first (:class:`ShadowDropped`)."""
        self._admit(rows, shadow)
        loop = asyncio.get_running_loop()
        if self._loop_task is None:
            self._wakeup = asyncio.Event()
            self._loop_task = loop.create_task(self._loop())
        item = _Item(payload, rows, loop.create_future(), time.perf_counter(), shadow)
        idle = self._waiting_rows == 0
        if shadow:
            self._shadow.append(item)
            self._shadow_rows += rows
        else:
            self._queue.append(item)
            self._queued_rows += rows
        self._queue_changed()
        # the loop only needs waking when its next decision changes: a first row (it starts
        # the delay clock) or a full batch; otherwise the delay timer it armed stands
        if idle or self._waiting_rows >= self.policy.max_batch_size:
            self._wakeup.set()
        timeout = self.policy.timeout_s
        # a plain timer instead of wait_for(shield(...)): no task and no extra future per request
        timer = None if timeout is None else loop.call_later(timeout, _expire, item.future)
        try:
            return await item.future
        except _Expired:
            self._abandon(item)
            if shadow:
                raise ShadowDropped(f"{self.label}: a mirrored copy waited past "
                                    f"{timeout:g} s") from None
            raise RequestTimeout(
                f"{self.label} did not answer within {timeout:g} s "
                f"({self._queued_rows} rows queued, {self._inflight} batches running)") from None
        except asyncio.CancelledError:  # the client went away: nobody waits for these rows
            self._abandon(item)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _abandon(self, item: _Item) -> None:
        # a result nobody waits for any more (timed out, client gone) is still retrieved
        item.future.add_done_callback(_retrieve)
        if not item.dispatched:
            self._release(item)

    def _release(self, item: _Item) -> None:
        """Give back the rows of a request that leaves the queue unanswered (once)."""
        if item.abandoned:
            return
        item.abandoned = True
        if item.shadow:
            self._shadow_rows -= item.rows
        else:
            self._queued_rows -= item.rows
        self._queue_changed()

    async def close(self) -> None:
        """Refuse new requests, fail queued ones, wait for running batches."""
        self._closed = True
        for q in (self._queue, self._shadow):
            while q:
                item = q.popleft()
                if not item.future.done():
                    item.future.set_exception(ModelUnavailable(f"{self.label} was unloaded"))
        self._queued_rows = self._shadow_rows = 0
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _oldest(self) -> float | None:
        for q in (self._queue, self._shadow):
            while q and q[0].abandoned:
                q.popleft()
        heads = [q[0].enqueued for q in (self._queue, self._shadow) if q]
        return min(heads) if heads else None

    async def _loop(self) -> None:
        wakeup = self._wakeup
        while not self._closed:
            oldest = self._oldest()
            if oldest is None or self._inflight >= self.policy.max_inflight:
                wakeup.clear()
                await wakeup.wait()
                continue
            p = self.policy
            if self._waiting_rows < p.max_batch_size:
                remaining = oldest + p.max_delay_s - time.perf_counter()
                if remaining > 0:
                    wakeup.clear()
                    timer = asyncio.get_running_loop().call_later(remaining, wakeup.set)
                    await wakeup.wait()
                    timer.cancel()
                    oldest = self._oldest()
                    if (oldest is not None
                            and self._waiting_rows < p.max_batch_size
                            and oldest + p.max_delay_s > time.perf_counter()):
                        continue
            # a full batch goes at once; what waited while the model was busy goes together
            batch, rows = self._take(p.dispatch_rows)
            if not batch:
                continue
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._dispatch(batch, rows))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, max_rows: int) -> tuple[list[_Item], int]:
        """Real requests first, in arrival order; mirrored copies fill what room is left."""
        batch, rows = [], 0
        for q, shadow in ((self._queue, False), (self._shadow, True)):
            while q:
                item = q[0]
                if item.abandoned or item.future.done():
                    # cancelled or timed out, its submit() not yet resumed to say so
                    q.popleft()
                    self._release(item)
                    continue
                if batch and rows + item.rows > max_rows:
                    break
                q.popleft()
                item.dispatched = True
                if shadow:
                    self._shadow_rows -= item.rows
                else:
                    self._queued_rows -= item.rows
                batch.append(item)
                rows += item.rows
        self._queue_changed()
        return batch, rows

    async def _dispatch(self, batch: list[_Item], rows: int) -> None:
        now = time.perf_counter()
        self._observer.dispatched(rows, [now - i.enqueued for i in batch])
        try:
            await self._run(batch)
            elapsed = max(time.perf_counter() - now, 1e-6)
            rate = rows / elapsed * max(1, self._inflight)
            self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        finally:
            self._inflight -= 1
            self._wakeup.set()

    async def _call(self, payloads: list[Any]) -> list[Any]:
        """One call of the model, bounded by the request timeout: a replica stuck on a batch
        must not hold an in-flight slot for good (every later request would wait behind it,
        then time out). Past the deadline the call is cancelled (Serve cancels the request on
        the replica) and the batch's requests fail with 504."""
        timeout = self.policy.timeout_s
        if timeout is None:
            return await self._run_batch(payloads)
        try:
            return await asyncio.wait_for(self._run_batch(payloads), timeout)
        except asyncio.TimeoutError:
            raise BatchTimeout(f"{self.label} did not answer a batch of {len(payloads)} "
                               f"request(s) within {timeout:g} s; the model replica may be "
                               "stuck") from None

    async def _run(self, batch: list[_Item]) -> None:
        """Run a batch; on an error of the model, bisect so that only the culprit fails."""
        try:
            results = await self._call([i.payload for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch returned {len(results)} results for {len(batch)} "
                                   "requests")
        except Exception as e:
            live = [i for i in batch if not i.future.done()]
            if len(live) > 1 and not is_infrastructure(e):
                self._observer.bisected(len(live))
                half = len(live) // 2
                await self._run(live[:half])
                await self._run(live[half:])
                return
            for item in live:  # one request, or the machinery failed: they all learn it
                item.future.set_exception(e)
            return
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)
