"""A hostile client against a live ``optiserve serve`` running what the chart deploys (real Ray
Serve, the gateway's own HTTP server, the chart's serve config and settings, real Prometheus):
huge, compressed, pipelined, malformed and cancelled requests and idle connections while steady
clients measure their latency, a fuzzer driven by the server's own OpenAPI document, and a
config change that cannot be applied."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time

import numpy as np
import orjson
import psutil
import pytest

from tests.support.harness import gateway_replica
from serving.repository import ModelRepository
from tests.helpers import PrometheusProcess, ServeProcess, http
from tests.support import steady
from tests.support.chart import chart_serving, serving_values
from tests.serving.conftest import version_of
from tests.serving.test_hostile_gateway import ids_request, publish_lookup
from tests.serving.test_server import apply_gateway

pytestmark = pytest.mark.slow

SENTENCE = {"name": "text", "datatype": "BYTES", "shape": [1],
            "data": ["The weather in Lyon is mild today."]}


@pytest.fixture(scope="module")
def server(serving_repo, tmp_path_factory):
    import shutil

    work = tmp_path_factory.mktemp("hostile")
    repo_dir = work / "repo"
    shutil.copytree(serving_repo, repo_dir)
    repo = ModelRepository(repo_dir)
    lookup = publish_lookup(repo)
    int8 = version_of(repo_dir, "minilm", "onnx-int8-dynamic")
    fp32 = version_of(repo_dir, "minilm", "onnx-fp32")
    small = {"numCpus": 0.5, "replicas": 1}
    doc, env = chart_serving(serving_values(repo_dir, {
        "minilm": {"stable": int8, "versions": {int8: small, fp32: small}},
        "lookup": {"versions": {lookup: small}}}, gateway={"maxBodyBytes": 1_000_000}))
    proc = ServeProcess(doc, work, env=env).start()
    prom = PrometheusProcess(work, {"optiserve": f"127.0.0.1:{proc.metrics_port}"}).start()
    proc.doc, proc.prometheus = doc, prom
    proc.versions = {"int8": int8, "fp32": fp32, "lookup": lookup}
    yield proc
    prom.stop()
    assert proc.stop() == 0


def restore(server) -> None:
    apply_gateway(server, lambda g: None)
    time.sleep(2)


def prom_value(server, expr: str) -> float:
    result = server.prometheus.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


def infer_url(server, model="minilm") -> str:
    return f"{server.url}/v2/models/{model}/infer"


async def steady_clients(url: str, seconds: float, clients: int = 4):
    """Closed-loop clients sending one sentence each: (latencies, statuses)."""
    return await steady.steady_clients(url, orjson.dumps({"inputs": [SENTENCE]}), seconds,
                                       clients)


# ---- cancellation first: the lookup model has seen no request yet -------------------------------

def test_a_request_whose_client_hangs_up_leaves_the_queue_and_is_never_computed(server):
    v = server.versions["lookup"]
    apply_gateway(server, lambda g: g["models"]["lookup"]["versions"][v].update(
        max_delay_ms=4000, max_batch_size=64))
    time.sleep(2)
    try:
        sel = f'model="lookup",version="{v}"'
        body = ids_request(np.array([[1, 2, 3]]))
        for _ in range(3):  # three clients that send a whole request, then hang up
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"POST /v2/models/lookup/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.5)
            s.close()
        cancelled = server.prometheus.wait_for(
            f'sum(ray_optiserve_requests_total{{{sel},outcome="cancelled",code="499"}})',
            predicate=lambda r: r and float(r[0]["value"][1]) >= 3)
        assert float(cancelled[0]["value"][1]) == 3
        time.sleep(5)  # past max_delay: the rows would have been dispatched by now
        assert prom_value(server, f"sum(ray_optiserve_batch_size_count{{{sel}}})") == 0
        assert prom_value(server, f"sum(ray_optiserve_compute_seconds_count{{{sel}}})") == 0
        queued = server.prometheus.query(f"sum(ray_optiserve_queue_rows{{{sel}}})")
        assert not queued or float(queued[0]["value"][1]) == 0
        # cancelled requests are timed too, under their outcome
        assert prom_value(server, f'sum(ray_optiserve_request_duration_seconds_count{{{sel},'
                                  f'outcome="cancelled"}})') == 3
        # the same request, waited for, is computed: the counts above could have moved
        status, _, _ = http("POST", infer_url(server, "lookup"), body)
        assert status == 200
        server.prometheus.wait_for(f"sum(ray_optiserve_compute_seconds_count{{{sel}}})",
                                   predicate=lambda r: r and float(r[0]["value"][1]) == 1)
    finally:
        restore(server)


def test_a_bad_request_batched_with_good_ones_fails_alone(server):
    v = server.versions["lookup"]
    sel = f'model="lookup",version="{v}"'
    apply_gateway(server, lambda g: g["models"]["lookup"]["versions"][v].update(
        max_delay_ms=500, max_batch_size=64))
    time.sleep(3)
    batches0 = prom_value(server, f"sum(ray_optiserve_batch_size_count{{{sel}}})")
    try:
        import tritonclient.http.aio as tha

        async def main():
            client = tha.InferenceServerClient(f"127.0.0.1:{server.port}")
            try:
                async def one(ids):
                    inp = tha.InferInput("ids", list(ids.shape), "INT64")
                    inp.set_data_from_numpy(ids)
                    try:
                        return (await client.infer("lookup", [inp])).as_numpy("y")
                    except Exception as e:  # tritonclient raises InferenceServerException
                        return e
                reqs = [np.array([[i, (i + 1) % 10]], dtype=np.int64) for i in range(6)]
                reqs.insert(3, np.array([[1, 12345]], dtype=np.int64))
                return reqs, await asyncio.gather(*[one(r) for r in reqs])
            finally:
                await client.close()

        reqs, results = asyncio.run(main())
        table = np.arange(40, dtype=np.float32).reshape(10, 4)
        for i, (ids, res) in enumerate(zip(reqs, results)):
            if i == 3:
                assert isinstance(res, Exception) and "idx=12345" in str(res), res
                assert res.status() == "400"
            else:
                np.testing.assert_allclose(res, table[ids].mean(1))
        server.prometheus.wait_for(
            f'sum(ray_optiserve_requests_total{{{sel},code="400"}})',
            predicate=lambda r: r and float(r[0]["value"][1]) >= 1)
        assert prom_value(server, f'sum(ray_optiserve_requests_total{{{sel},'
                                  f'outcome="server_error"}})') == 0
        # the seven reached the model as one dispatched batch (its halves then ran again)
        server.prometheus.wait_for(
            f"sum(ray_optiserve_batch_size_count{{{sel}}})",
            predicate=lambda r: r and float(r[0]["value"][1]) > batches0)
        time.sleep(3)
        assert prom_value(server, f"sum(ray_optiserve_batch_size_count{{{sel}}})") - batches0 \
            == 1
    finally:
        restore(server)


def test_oversized_requests_are_refused_while_steady_clients_keep_their_p99(server):
    url = infer_url(server)
    cfg = json.loads(http("GET", f"{server.url}/v2/models/minilm/config")[2])
    limit = cfg["max_batch_size"]
    huge = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [50_000],
                                     "data": ["a"] * 50_000}]})
    two_thousand = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES",
                                             "shape": [2000], "data": ["a short sentence"]
                                             * 2000}]})
    hostile: list[tuple[int, str]] = []

    def attack(stop: threading.Event):
        for i in range(40):
            if stop.is_set():
                break
            status, _, body = http("POST", url, huge if i % 2 == 0 else two_thousand)
            hostile.append((status, json.loads(body).get("error", "")))
            time.sleep(0.1)

    async def main():
        return await steady_clients(url, 8.0)

    asyncio.run(steady_clients(url, 1.0))  # warm
    stop = threading.Event()
    t = threading.Thread(target=attack, args=(stop,))
    t.start()
    try:
        latencies, statuses = asyncio.run(main())
    finally:
        stop.set()
        t.join(60)
    assert hostile and all(s == 400 for s, _ in hostile), hostile[:3]
    assert f"has 50000 rows; this model version accepts at most {limit} rows" in hostile[0][1]
    assert f"has 2000 rows; this model version accepts at most {limit} rows" in hostile[1][1]
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    p99 = float(np.percentile(latencies, 99))
    assert len(latencies) > 100 and p99 < 1.0, (len(latencies), p99)


def test_a_gzip_bomb_is_refused_with_413_and_replica_memory_stays_flat(server):
    # ~0.9 MB on the wire (under max_body_bytes), ~0.8 GiB inflated
    member = gzip.compress(b"\0" * (64 << 20), 9)
    bomb = member * max(1, 900_000 // len(member))
    assert len(bomb) < 1_000_000
    replica = gateway_replica(server.proc.pid)
    before = replica.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], replica.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        t0 = time.perf_counter()
        status, _, body = http("POST", infer_url(server), bomb,
                               {"Content-Encoding": "gzip", "Content-Type": "application/json"})
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        t.join()
    assert status == 413 and "inflates past the limit of 1000000 bytes" in json.loads(body)[
        "error"]
    assert elapsed < 2.0
    assert (peak[0] - before) < 100 * 1024 * 1024, (peak[0] - before) / 2 ** 20
    for encoding, data in (("gzip", gzip.compress(orjson.dumps({"inputs": [SENTENCE]}))),):
        status, _, _ = http("POST", infer_url(server), data, {"Content-Encoding": encoding})
        assert status == 200  # a real compressed request still works


class PeakRss:
    """The gateway replica's peak resident memory while a block runs."""

    def __init__(self, server):
        self.replica = gateway_replica(server.proc.pid)
        self.before = self.peak = self.replica.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample)

    def _sample(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.replica.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 2 ** 20


def test_a_client_sending_a_64_mib_body_reads_the_413(server):
    """Clients send their whole body before they read: the refused body is read and dropped,
    so the client reads the 413 (it used to get a broken pipe), and memory stays flat."""
    body = b"x" * (64 << 20)
    with PeakRss(server) as rss:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
            s.sendall(b"POST /v2/models/minilm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(65536)
                assert chunk, f"closed without an answer: {answer!r}"
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert rss.growth_mib < 50, rss.growth_mib


def test_pipelined_large_bodies_keep_the_gateways_memory_flat(server):
    """200 requests of ~0.95 MB each, pipelined on one connection (190 MB in flight from the
    client): the server takes one at a time, so the gateway's memory grows by far less than
    what is sent, every request is answered in order, and steady clients are unharmed."""
    pad = b" " * 950_000
    one = (b'{"inputs": [' + pad + b']}')
    request = (b"POST /v2/models/minilm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
               b"application/json\r\nContent-Length: %d\r\n\r\n" % len(one)) + one
    answers: list[int] = []

    def pipeline():
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
            for _ in range(200):
                s.sendall(request)
            buf = b""
            while len(answers) < 200:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(rest) < length:
                        break
                    answers.append(int(head.split()[1]))
                    buf = rest[length:]

    with PeakRss(server) as rss:
        t = threading.Thread(target=pipeline)
        t.start()
        latencies, statuses = asyncio.run(steady_clients(infer_url(server), 6.0))
        t.join(180)
    assert len(answers) == 200 and set(answers) == {400}, answers[:5]
    assert rss.growth_mib < 100, rss.growth_mib
    assert set(statuses) == {200}
    assert float(np.percentile(latencies, 99)) < 1.0


def test_idle_connections_past_the_limit_are_refused_and_steady_clients_are_served(server):
    """2,000 idle connections while steady clients (already connected) send requests: those
    past the gateway's connection limit are answered 503 and closed at once; the steady clients
    see no error and a p99 under a second."""
    idle: list[socket.socket] = []
    refused = [0]

    def open_idle():
        time.sleep(0.5)  # the steady clients are connected by now
        for _ in range(2000):
            try:
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            except OSError:
                refused[0] += 1
        time.sleep(0.5)
        for s in idle:  # a refused one was answered 503 and closed
            s.settimeout(0.001)
            try:
                data = s.recv(256)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                refused[0] += 1
                continue
            if not data or data.startswith(b"HTTP/1.1 503"):
                refused[0] += 1

    t = threading.Thread(target=open_idle)
    try:
        async def main():
            return await steady_clients(infer_url(server), 8.0)

        t.start()
        latencies, statuses = asyncio.run(main())
        t.join(60)
    finally:
        for s in idle:
            s.close()
    assert 900 <= refused[0] <= 1100, refused[0]  # the limit is 1000 per gateway replica
    assert set(statuses) == {200}, {x: statuses.count(x) for x in set(statuses)}
    assert float(np.percentile(latencies, 99)) < 1.0


def test_a_config_that_cannot_be_applied_leaves_the_running_one_serving(server):
    int8, fp32 = server.versions["int8"], server.versions["fp32"]

    def bad(g):
        # a weight change and a version the repository does not have, in one update
        g["models"]["minilm"].update(canary=fp32, canary_weight=100)
        g["models"]["lookup"]["versions"][999] = {}

    apply_gateway(server, bad)
    try:
        deadline = time.monotonic() + 60
        meta = {}
        while time.monotonic() < deadline:
            meta = json.loads(http("GET", server.url + "/v2")[2])
            if "config_rejected" in meta:
                break
            time.sleep(0.5)
        assert "models.lookup.versions.999: lookup:999 cannot be loaded" in meta[
            "config_rejected"]
        # nothing of it was applied: all traffic still goes to stable, no canary
        for _ in range(10):
            status, _, body = http("POST", infer_url(server), orjson.dumps({"inputs": [SENTENCE]}))
            assert status == 200 and json.loads(body)["model_version"] == str(int8)
        meta = json.loads(http("GET", server.url + "/v2/models/minilm")[2])
        assert meta["parameters"]["canary"] is None
    finally:
        restore(server)
    deadline = time.monotonic() + 30
    while "config_rejected" in json.loads(http("GET", server.url + "/v2")[2]):
        assert time.monotonic() < deadline, "a good config did not clear the refusal"
        time.sleep(0.5)


def fuzz(base_url: str, doc: dict, budget: dict[bool, int]) -> tuple[list, list]:
    """Every operation of ``doc``, positive and negative cases generated by schemathesis, sent
    to ``base_url``: (calls as (operation, status), failures as text)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(doc)
    calls: list[tuple[str, int]] = []
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=budget[op.path.endswith("/infer")], deadline=None,
                      database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case):
                try:
                    response = case.call(base_url=base_url, timeout=30)
                except ValueError as e:  # requests refused a generated header value
                    if "header" in str(e).lower():
                        return
                    raise
                calls.append((op.label, response.status_code))
                if response.status_code >= 500:
                    failures.append(f"{op.label}: {response.status_code} {response.text[:300]} "
                                    f"for {case.body!r:.300} headers={case.headers}")

            try:
                run()
            except Unsatisfiable:  # no way to break an operation without inputs: positive only
                assert mode is GenerationMode.NEGATIVE
    return calls, failures


def test_fuzzing_from_the_servers_own_openapi_document_finds_no_5xx(server):
    meta = json.loads(http("GET", server.url + "/v2")[2])
    assert meta["openapi"] == "/v2/openapi.json"
    status, _, raw = http("GET", server.url + meta["openapi"])
    assert status == 200
    doc = json.loads(raw)
    infer_path = "/v2/models/{model_name}/infer"
    assert set(doc["paths"][infer_path]["parameters"][0]["schema"]["enum"]) == {"lookup",
                                                                                "minilm"}
    # examples per operation and mode: the two infer operations get most
    calls, failures = fuzz(server.url, doc, {True: 260, False: 30})
    codes: dict[int, int] = {}
    for _, c in calls:
        codes[c] = codes.get(c, 0) + 1
    assert len(calls) >= 1000, (len(calls), codes)
    assert not failures, failures[:5]
    assert sum(1 for label, c in calls if "infer" in label and c == 200) > 0, codes
    # and the server still answers a real request
    status, _, body = http("POST", infer_url(server), orjson.dumps({"inputs": [SENTENCE]}))
    assert status == 200 and len(json.loads(body)["outputs"][0]["data"]) == 384
    # every outcome was timed under its outcome
    timed = server.prometheus.wait_for(
        "sum by (outcome) (ray_optiserve_request_duration_seconds_count)",
        predicate=lambda r: {"client_error", "success"} <= {x["metric"].get("outcome")
                                                              for x in r})
    assert {x["metric"]["outcome"] for x in timed} >= {"client_error", "success"}
