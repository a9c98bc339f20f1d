"""Steady clients for the hostile-client tests: closed-loop HTTP clients that keep sending one
request while an attack runs, and record what they saw."""

from __future__ import annotations

import asyncio
import time


async def steady_clients(url: str, body: bytes, seconds: float, clients: int,
                         headers: dict | None = None) -> tuple[list[float], list[int]]:
    """``clients`` closed-loop clients POSTing ``body`` to ``url`` for ``seconds``:
    (latencies in seconds, statuses)."""
    import aiohttp

    latencies, statuses = [], []
    deadline = time.monotonic() + seconds

    async def one(session):
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                statuses.append(r.status)
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*[one(session) for _ in range(clients)])
    return latencies, statuses
