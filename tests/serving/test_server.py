"""optiserve serve end to end: real Ray Serve, the real tritonclient, a real Prometheus."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import numpy as np
import orjson
import psutil
import pytest

from serving.config import gateway_user_config
from serving.repository import ModelRepository
from serving.runtimes import RuntimeOptions, TextEncoder, load_runtime
from tests.helpers import PrometheusProcess, ServeProcess, http, serve_api
from tests.support.chart import chart_serving, serving_values
from tests.serving.conftest import version_of

pytestmark = pytest.mark.slow

SENTENCES = ["The weather in Lyon is mild today.", "ok", "Quarterly revenue grew by twelve "
             "percent.", "How do I reset my password?"]


@pytest.fixture(scope="module")
def server(serving_repo, tmp_path_factory):
    """What the Helm chart deploys (its serveConfigV2 and its Ray containers' settings, see
    tests/support/chart.py) for these versions, served locally by `optiserve serve --config`."""
    repo = ModelRepository(serving_repo)
    int8 = version_of(serving_repo, "minilm", "onnx-int8-dynamic")
    fp32 = version_of(serving_repo, "minilm", "onnx-fp32")
    torch_v = version_of(serving_repo, "minilm", "torch-fp32")
    tiny = repo.latest("tiny")
    # the optimizer's recommendation depends on how busy the machine was while it measured;
    # these tests send up to 8 rows per request
    small = {"numCpus": 0.5, "replicas": 1, "batching": {"max_batch_size": 8}}
    doc, env = chart_serving(serving_values(serving_repo, {
        "minilm": {"stable": int8, "versions": {int8: small, fp32: small, torch_v: small}},
        "tiny": {"versions": {tiny: {"numCpus": 0.5, "replicas": 1}}},
    }, gateway={"maxBodyBytes": 1_000_000}))
    work = tmp_path_factory.mktemp("server")
    proc = ServeProcess(doc, work, env=env).start()
    children = psutil.Process(proc.proc.pid).children(recursive=True)
    prom = PrometheusProcess(work, {"optiserve": f"127.0.0.1:{proc.metrics_port}"}).start()
    proc.versions = {"int8": int8, "fp32": fp32, "torch": torch_v, "tiny": tiny}
    proc.doc = doc
    proc.prometheus = prom
    yield proc
    prom.stop()
    assert proc.stop() == 0
    time.sleep(1)
    left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left after shutdown: {[p.cmdline()[:2] for p in left]}"


def apply_gateway(server, edit) -> dict:
    """Change the gateway's user_config through Serve's declarative API (in place)."""
    doc = copy.deepcopy(server.doc)
    edit(gateway_user_config(doc))
    doc["http_options"] = {"host": "127.0.0.1", "port": server.port}
    serve_api(server.serve_api, "PUT", doc)
    return doc


def reference_embeddings(repo_dir, version: int, texts: list[str]) -> np.ndarray:
    ref = ModelRepository(repo_dir).open("minilm", version)
    enc = TextEncoder(ref.file("tokenizer.json"), ref.manifest.preprocessing)
    rt = load_runtime(ref.manifest, ref.path, RuntimeOptions(intra_op_threads=1))
    return np.concatenate([rt.run(enc.pad([r]))["embedding"] for r in enc.encode(texts)])


def replica_ids(server) -> dict[str, list[str]]:
    apps = serve_api(server.serve_api)["applications"]
    return {name: sorted(r["replica_id"] for d in app["deployments"].values()
                         for r in d["replicas"]) for name, app in apps.items()}


def test_a_versions_error_series_start_at_zero_so_its_first_errors_count(server):
    """First in this module, before anything errs on fp32. A rollout judges a canary on
    increase() of its error series; a series first scraped at N loses those N events (the
    first errors of a canary at its first step). So every outcome series of a loaded version
    is exported at 0 before any request, and the first errors show in increase()."""
    prom, fp32 = server.prometheus, str(server.versions["fp32"])
    sel = f'model="minilm",version="{fp32}",outcome="client_error",code="400"'
    for s in (sel, f'model="minilm",version="{fp32}",outcome="timeout",code="504"'):
        got = prom.wait_for(f"sum(ray_optiserve_requests_total{{{s}}})", timeout=30)
        assert float(got[0]["value"][1]) == 0.0, (s, got)
    url = f"{server.url}/v2/models/minilm/versions/{fp32}/infer"
    assert [http("POST", url, b"{nope")[0] for _ in range(3)] == [400] * 3
    got = prom.wait_for(f"sum(increase(ray_optiserve_requests_total{{{sel}}}[5m]))",
                        timeout=30, predicate=lambda r: r and float(r[0]["value"][1]) >= 3)
    assert float(got[0]["value"][1]) >= 3, got


def test_tritonclient_binary_and_json_text(server, serving_repo):
    import tritonclient.http as th

    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    expected = reference_embeddings(serving_repo, server.versions["int8"], SENTENCES)
    for binary in (True, False):
        inp = th.InferInput("text", [len(SENTENCES)], "BYTES")
        inp.set_data_from_numpy(np.array(SENTENCES, dtype=object), binary_data=binary)
        out = th.InferRequestedOutput("embedding", binary_data=binary)
        result = client.infer("minilm", [inp], outputs=[out], request_id="req-7")
        emb = result.as_numpy("embedding")
        assert emb.shape == (4, 384) and emb.dtype == np.float32
        assert result.get_response()["id"] == "req-7"
        assert result.get_response()["model_version"] == str(server.versions["int8"])
        # dynamic INT8: a row's batch-mates change its activation scales a little
        cos = (emb * expected).sum(1) / np.linalg.norm(emb, axis=1)
        assert cos.min() > 0.97, cos


def test_version_pinning_and_every_runtime(server, serving_repo):
    import tritonclient.http as th

    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    for key in ("fp32", "torch"):
        v = server.versions[key]
        inp = th.InferInput("text", [1], "BYTES")
        inp.set_data_from_numpy(np.array([SENTENCES[0]], dtype=object))
        result = client.infer("minilm", [inp], model_version=str(v))
        assert result.get_response()["model_version"] == str(v)
        expected = reference_embeddings(serving_repo, v, SENTENCES[:1])
        np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=1e-4)
        assert client.is_model_ready("minilm", str(v))
    meta = client.get_model_metadata("minilm", str(server.versions["torch"]))
    assert meta["platform"] == "pytorch_libtorch"


def test_tensor_model_with_asyncio_client(server, serving_repo):
    import tritonclient.http.aio as tha

    ref = ModelRepository(serving_repo).open("tiny")
    rt = load_runtime(ref.manifest, ref.path)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 3, 5, 2) * 10]

    async def main():
        client = tha.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            assert await client.is_model_ready("tiny")
            meta = await client.get_model_metadata("tiny")
            assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]

            async def one(x):
                inp = tha.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                return (await client.infer("tiny", [inp])).as_numpy("output")

            return await asyncio.gather(*[one(x) for x in xs])
        finally:
            await client.close()

    outs = asyncio.run(main())
    for x, out in zip(xs, outs):  # rows batched with other requests come back to their sender
        np.testing.assert_allclose(out, rt.run({"x": x})["output"], rtol=1e-4, atol=1e-5)


def test_metadata_readiness_config_and_index(server):
    status, _, body = http("GET", server.url + "/v2")
    assert status == 200 and json.loads(body)["name"] == "optiserve"
    assert "binary_tensor_data" in json.loads(body)["extensions"]
    assert http("GET", server.url + "/v2/health/live")[0] == 200
    assert http("GET", server.url + "/v2/health/ready")[0] == 200
    status, _, body = http("GET", server.url + "/v2/models/minilm")
    meta = json.loads(body)
    assert sorted(meta["versions"], key=int) == sorted(
        str(server.versions[k]) for k in ("int8", "fp32", "torch"))
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert http("GET", server.url + "/v2/models/minilm/ready")[0] == 200
    status, _, body = http("GET", server.url + "/v2/models/minilm/config")
    assert status == 200 and json.loads(body)["max_batch_size"] >= 1
    status, _, body = http("POST", server.url + "/v2/repository/index")
    index = json.loads(body)
    assert {"name": "tiny", "version": str(server.versions["tiny"]), "state": "READY"} in index
    status, _, body = http("GET", server.url + "/v2/models/nope/ready")
    assert status == 404 and "model 'nope' is not served" in json.loads(body)["error"]


def _infer_json(inputs) -> bytes:
    return orjson.dumps({"inputs": inputs})


GOOD = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]
# a binary BYTES element claiming 9 bytes where none follow
BINARY_HEAD = _infer_json([{"name": "text", "datatype": "BYTES", "shape": [1],
                            "parameters": {"binary_data_size": 4}}])


@pytest.mark.parametrize("path, body, headers, status, message", [
    ("minilm", b"{broken", {}, 400, "request body is not valid JSON"),
    ("minilm", _infer_json([{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]),
     {}, 400, "input 'text' has datatype FP32, expected BYTES"),
    ("minilm", _infer_json([{"name": "text", "datatype": "BYTES", "shape": [1, 2],
                             "data": ["a", "b"]}]), {}, 400,
     "input 'text' has shape [1, 2], expected [-1]"),
    ("minilm", _infer_json([{"name": "txt", "datatype": "BYTES", "shape": [1],
                             "data": ["a"]}]), {}, 400, "unknown input 'txt' for model 'minilm'"),
    ("nope", _infer_json(GOOD), {}, 404, "model 'nope' is not served; served models: minilm, tiny"),
    ("minilm/versions/999", _infer_json(GOOD), {}, 404, "version 999 of model 'minilm' is not "
                                                       "served; served versions:"),
    ("minilm", b"x" * 1_000_001, {}, 413, "exceeds the limit of 1000000 bytes"),
    ("minilm", _infer_json(GOOD), {"Inference-Header-Content-Length": "9999"}, 400,
     "Inference-Header-Content-Length 9999 is outside the"),
    ("minilm", BINARY_HEAD + b"\x09\x00\x00\x00",
     {"Inference-Header-Content-Length": str(len(BINARY_HEAD))}, 400, "runs past the data"),
    ("tiny", _infer_json([{"name": "x", "datatype": "FP32", "shape": [1, 15],
                           "data": [0.0] * 15}]), {}, 400,
     "input 'x' has shape [1, 15], expected [-1, 16]"),
])
def test_bad_requests_get_4xx_with_a_precise_message(server, path, body, headers, status,
                                                     message):
    got, resp_headers, resp = http("POST", f"{server.url}/v2/models/{path}/infer", body, headers)
    assert got == status, resp
    assert resp_headers["content-type"] == "application/json"
    assert message in json.loads(resp)["error"]
    ok, _, _ = http("POST", f"{server.url}/v2/models/minilm/infer", _infer_json(GOOD))
    assert ok == 200  # and the server keeps serving


def test_wrong_method_and_unknown_endpoint(server):
    status, _, body = http("GET", server.url + "/v2/models/minilm/infer")
    assert status == 405 and "infer takes POST" in json.loads(body)["error"]
    status, _, body = http("GET", server.url + "/v3/anything")
    assert status == 404 and "the API is under /v2" in json.loads(body)["error"]


async def _load(url: str, seconds: float, concurrency: int, headers=None, body=None):
    """Closed-loop load for a bounded time; returns (statuses, versions, retry_after values)."""
    import aiohttp

    body = body or _infer_json(GOOD)
    statuses, versions, retry = [], [], []
    deadline = time.monotonic() + seconds

    async def worker(session):
        while time.monotonic() < deadline:
            async with session.post(url, data=body, headers=headers or {}) as r:
                data = await r.read()
                statuses.append(r.status)
                if r.status == 200:
                    versions.append(json.loads(data)["model_version"])
                elif r.status == 503:
                    retry.append(r.headers.get("Retry-After"))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
    return statuses, versions, retry


def test_weight_changes_under_load_fail_no_request_and_restart_nothing(server):
    int8, fp32 = server.versions["int8"], server.versions["fp32"]
    before = replica_ids(server)
    url = f"{server.url}/v2/models/minilm/infer"

    async def main():
        load = asyncio.create_task(_load(url, 14.0, 6))
        timings = []
        for weight in (50, 100, 0, 30):
            await asyncio.sleep(2.5)
            t0 = time.monotonic()
            await asyncio.to_thread(apply_gateway, server, lambda g, w=weight: g["models"][
                "minilm"].update(canary=fp32, canary_weight=w))
            timings.append(time.monotonic() - t0)
        return await load, timings

    (statuses, versions, _), timings = asyncio.run(main())
    assert len(statuses) > 200
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert {str(int8), str(fp32)} <= set(versions)
    assert replica_ids(server) == before  # weights applied in place: no replica restarted
    apply_gateway(server, lambda g: None)


def test_sticky_header_pins_clients(server):
    fp32 = server.versions["fp32"]
    apply_gateway(server, lambda g: g["models"]["minilm"].update(
        canary=fp32, canary_weight=50, sticky_header="x-user"))
    time.sleep(2)
    try:
        seen = {}
        for user in [f"u{i}" for i in range(12)] * 3:
            status, _, body = http("POST", f"{server.url}/v2/models/minilm/infer",
                                   _infer_json(GOOD), {"x-user": user})
            assert status == 200
            seen.setdefault(user, set()).add(json.loads(body)["model_version"])
        assert all(len(v) == 1 for v in seen.values()), seen
        assert {str(fp32)} in seen.values() and len({next(iter(v)) for v in seen.values()}) == 2
    finally:
        apply_gateway(server, lambda g: None)


def test_backpressure_gives_503_with_retry_after_and_recovers(server):
    int8 = server.versions["int8"]
    apply_gateway(server, lambda g: g["models"]["minilm"]["versions"][int8].update(
        max_queue_rows=4, max_inflight_batches=1, max_batch_size=1))
    time.sleep(2)
    try:
        statuses, _, retry = asyncio.run(_load(f"{server.url}/v2/models/minilm/infer", 4.0, 64))
        assert 503 in statuses and 200 in statuses
        assert set(statuses) <= {200, 503}
        assert all(r is not None and int(r) >= 1 for r in retry)
        status, _, body = http("POST", f"{server.url}/v2/models/minilm/infer",
                               _infer_json([{"name": "text", "datatype": "BYTES", "shape": [1],
                                             "data": ["x"]}] ))
        assert status in (200, 503)
    finally:
        apply_gateway(server, lambda g: None)
    time.sleep(2)
    assert http("POST", f"{server.url}/v2/models/minilm/infer", _infer_json(GOOD))[0] == 200


def test_request_timeout_gives_504(server):
    int8 = server.versions["int8"]
    apply_gateway(server, lambda g: g["models"]["minilm"]["versions"][int8].update(
        timeout_s=0.0001))
    time.sleep(2)
    try:
        status, _, body = http("POST", f"{server.url}/v2/models/minilm/infer", _infer_json(GOOD))
        assert status == 504 and "did not answer within 0.0001 s" in json.loads(body)["error"]
    finally:
        apply_gateway(server, lambda g: None)
    time.sleep(2)
    assert http("POST", f"{server.url}/v2/models/minilm/infer", _infer_json(GOOD))[0] == 200


def test_metrics_reach_prometheus(server):
    prom = server.prometheus
    statuses, _, _ = asyncio.run(_load(f"{server.url}/v2/models/minilm/infer", 3.0, 16))
    assert set(statuses) == {200}
    int8 = str(server.versions["int8"])
    sel = f'model="minilm",version="{int8}"'
    prom.wait_for(f'sum(ray_optiserve_requests_total{{{sel},outcome="success",code="200"}})',
                  predicate=lambda r: r and float(r[0]["value"][1]) >= len(statuses))
    # batches formed: more rows than batches
    avg = prom.wait_for(f"sum(ray_optiserve_batch_rows_total{{{sel}}}) / "
                        f"sum(ray_optiserve_batch_size_count{{{sel}}})")
    assert float(avg[0]["value"][1]) > 1.0
    for family in ("ray_optiserve_request_duration_seconds_bucket",
                   "ray_optiserve_queue_wait_seconds_bucket",
                   "ray_optiserve_compute_seconds_bucket", "ray_optiserve_model_load_seconds",
                   "ray_optiserve_inflight_requests", "ray_optiserve_traffic_weight"):
        result = prom.wait_for(f'{family}{{model="minilm"}}')
        assert {r["metric"]["application"] for r in result} & {"optiserve", f"minilm-v{int8}"}
    p99 = prom.wait_for(f"histogram_quantile(0.99, sum by (le) (rate("
                        f"ray_optiserve_request_duration_seconds_bucket{{{sel}}}[30s])))")
    assert 0 < float(p99[0]["value"][1]) < 30
    errors = prom.wait_for('sum by (code) (ray_optiserve_requests_total{outcome="client_error"})')
    assert {"400", "404"} <= {r["metric"]["code"] for r in errors}


def test_shadow_traffic_is_compared_and_exported(server):
    prom = server.prometheus
    int8, fp32 = server.versions["int8"], server.versions["fp32"]
    apply_gateway(server, lambda g: g["models"]["minilm"].update(canary=fp32, canary_weight=0,
                                                                 shadow=1.0))
    time.sleep(2)
    try:
        statuses, versions, _ = asyncio.run(_load(f"{server.url}/v2/models/minilm/infer", 3, 4))
        assert set(statuses) == {200} and set(versions) == {str(int8)}  # clients see stable only
        sel = f'model="minilm",stable="{int8}",canary="{fp32}"'
        prom.wait_for(f'sum(ray_optiserve_shadow_requests_total{{{sel},outcome="compared"}})')
        mean = prom.wait_for(f"sum(ray_optiserve_shadow_agreement_score_total{{{sel}}}) / "
                             f"sum(ray_optiserve_shadow_agreement_count{{{sel}}})")
        assert 0.97 < float(mean[0]["value"][1]) <= 1.0001  # INT8 vs fp32: cosine ~0.99
    finally:
        apply_gateway(server, lambda g: None)


def test_metric_counts_are_exact_for_a_known_load(server):
    """Counters are summed in the replica and pushed once a second, histograms observed per
    request/batch: what Prometheus shows for a known load must still be exactly that load."""
    import aiohttp

    prom, tiny = server.prometheus, str(server.versions["tiny"])
    sel = f'model="tiny",version="{tiny}"'
    queries = {
        "ok": f'sum(ray_optiserve_requests_total{{{sel},outcome="success",code="200"}})',
        "bad": f'sum(ray_optiserve_requests_total{{{sel},outcome="client_error",code="400"}})',
        "rows": f"sum(ray_optiserve_rows_total{{{sel}}})",
        "timed": f'sum(ray_optiserve_request_duration_seconds_count{{{sel},outcome="success"}})',
        "waits": f"sum(ray_optiserve_queue_wait_seconds_count{{{sel}}})",
        "batched_rows": f"sum(ray_optiserve_batch_rows_total{{{sel}}})",
        "batches": f"sum(ray_optiserve_batch_size_count{{{sel}}})",
    }

    def read() -> dict[str, float]:
        out = {}
        for k, q in queries.items():
            r = prom.query(q)
            out[k] = float(r[0]["value"][1]) if r else 0.0
        return out

    time.sleep(3)  # earlier tests' counts have been pushed and scraped
    before = read()
    rows = [1 + i % 3 for i in range(37)]
    url = f"{server.url}/v2/models/tiny/versions/{tiny}/infer"

    async def main():
        async with aiohttp.ClientSession() as s:
            async def one(n):
                body = _infer_json([{"name": "x", "datatype": "FP32", "shape": [n, 16],
                                     "data": [0.5] * (16 * n)}])
                async with s.post(url, data=body) as r:
                    return r.status
            good = await asyncio.gather(*(one(n) for n in rows))
            bad = [(await s.post(url, data=b"{nope")).status for _ in range(5)]
            return good, bad

    good, bad = asyncio.run(main())
    assert set(good) == {200} and set(bad) == {400}
    want = {"ok": 37, "bad": 5, "rows": sum(rows), "timed": 37, "waits": 37,
            "batched_rows": sum(rows)}
    deadline = time.monotonic() + 30
    while True:
        after = read()
        delta = {k: after[k] - before[k] for k in queries}
        if all(delta[k] >= v for k, v in want.items()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(3)  # nothing more arrives later: no double push
    delta = {k: v - before[k] for k, v in read().items()}
    assert {k: delta[k] for k in want} == want
    assert 1 <= delta["batches"] <= 37
