"""Draining without loss: what the chart deploys with two gateway replicas on one machine
(sharing the port), under steady keep-alive load; the gateway is scaled down, then redeployed,
through Serve's declarative API (as KubeRay applies a serveConfigV2 change). No client request
may fail: a stopping replica keeps answering for the drain's first phase with every answer
closing its connection (clients reconnect to the replicas that stay), then finishes what is in
flight."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import pytest

from optiserve.serve_api import ServeAPI
from serving.repository import ModelRepository
from tests.helpers import ServeProcess
from tests.support.chart import chart_serving, serving_values

pytestmark = pytest.mark.slow

ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}


@pytest.fixture(scope="module")
def server(serving_repo, tmp_path_factory):
    tiny = ModelRepository(serving_repo).latest("tiny")
    doc, env = chart_serving(serving_values(
        serving_repo, {"tiny": {"versions": {tiny: {"numCpus": 0.5, "replicas": 1}}}},
        gateway={"replicas": 2, "numCpus": 0.25}, settings={"http_drain_accept_s": 2}))
    proc = ServeProcess(doc, tmp_path_factory.mktemp("drain"), env=env).start()
    proc.doc = doc
    yield proc
    proc.stop()


async def load(url: str, seconds: float, clients: int = 8) -> tuple[int, list[str]]:
    """Closed-loop keep-alive clients: (answers, failures)."""
    import aiohttp

    body = json.dumps(ROW).encode()
    ok, failures = 0, []
    deadline = time.monotonic() + seconds

    async def one(session):
        nonlocal ok
        while time.monotonic() < deadline:
            try:
                async with session.post(f"{url}/v2/models/tiny/infer", data=body) as r:
                    await r.read()
                    if r.status == 200:
                        ok += 1
                    else:
                        failures.append(f"HTTP {r.status}")
            except aiohttp.ClientError as e:
                failures.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.01)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as s:
        await asyncio.gather(*[one(s) for _ in range(clients)])
    return ok, failures


def gateway_replicas(api: ServeAPI) -> list[str]:
    app = (api.details().get("applications") or {})["optiserve"]
    return sorted(r["replica_id"] for r in app["deployments"]["gateway"]["replicas"]
                  if r["state"] == "RUNNING")


def apply_and_load(server, edit, seconds: float) -> tuple[int, list[str], list[str]]:
    """Apply an edited config while the load runs; (answers, failures, replicas after)."""
    api = ServeAPI(server.serve_api)
    doc = copy.deepcopy(server.doc)
    edit(doc["applications"][0]["deployments"][0])
    doc["http_options"] = {"host": "127.0.0.1", "port": server.port}

    async def main():
        task = asyncio.create_task(load(server.url, seconds))
        await asyncio.sleep(1.5)
        await asyncio.get_running_loop().run_in_executor(None, api.apply, doc)
        return await task

    ok, failures = asyncio.run(main())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = (api.details().get("applications") or {})["optiserve"]["status"]
        if status == "RUNNING":
            break
        time.sleep(0.5)
    server.doc = doc
    return ok, failures, gateway_replicas(api)


def test_scaling_the_gateway_down_loses_no_request(server):
    before = gateway_replicas(ServeAPI(server.serve_api))
    assert len(before) == 2
    ok, failures, after = apply_and_load(server, lambda d: d.update(num_replicas=1), 14.0)
    assert failures == [], failures[:5]
    assert ok > 100 and len(after) == 1 and set(after) < set(before)


def test_redeploying_the_gateway_loses_no_request(server):
    """A change of the gateway's actor options replaces every replica (a rolling update):
    old replicas drain while new ones take the port."""
    before = gateway_replicas(ServeAPI(server.serve_api))
    ok, failures, after = apply_and_load(
        server, lambda d: d["ray_actor_options"].update(num_cpus=0.3), 25.0)
    assert failures == [], failures[:5]
    assert ok > 100 and after and not set(after) & set(before)
