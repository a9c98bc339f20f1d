"""The gateway's gRPC server (serving/grpc_ingress.py) in one process without Ray: a real
grpc.aio server over a real Gateway whose backend is the real ONNX Runtime behind a delay, and
the real tritonclient.grpc client and grpc channels. What the live tests cannot time well is
checked here: the stream window, deadlines leaving the queue, the size limit's two layers,
malformed protobuf, draining."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from serving import metrics as M
from serving.gateway import Gateway
from serving.grpc_ingress import GrpcIngress
from serving.repository import ModelRepository
from serving.runtimes import load_runtime
from serving.settings import reload
from serving.statistics import StatisticsRecorder
from tests.helpers import run_cli
from tests.serving.test_gateway import RecordingRecorder, publish
from optiserve.local import free_port

MAX_BODY = 100_000


class Server:
    def __init__(self, tmp_path, delay_s=0.0):
        repo = ModelRepository(tmp_path / "repo")
        self.v = publish(repo, "ReduceSum")
        rt = load_runtime(repo.get("reducer", self.v).manifest, repo.get("reducer", self.v).path)
        self.delay_s = delay_s
        self.rec = RecordingRecorder()
        self.stats = StatisticsRecorder(self.rec)
        self.max_inflight = 0

        def backend(model, version):
            async def run(feeds):
                await asyncio.sleep(self.delay_s)
                return [rt.run(f) for f in feeds]
            return run

        self.gateway = Gateway(str(tmp_path / "repo"), backend, self.stats)
        self.gateway.reconfigure({"models": {"reducer": {"versions": {self.v: {
            "max_batch_size": 1, "max_delay_ms": 0}}, "stable": self.v}},
            "max_body_bytes": MAX_BODY})
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ingress = GrpcIngress(self.gateway, "127.0.0.1", self.port, MAX_BODY, self.stats)

    def inflight(self) -> int:
        return self.gateway.models["reducer"].versions[self.v].inflight

    def set_body_limit(self, max_body_bytes: int) -> None:
        """What the gateway deployment's reconfigure does (on the server's loop, from the
        client's thread): the gateway takes the new config, gRPC follows its body limit."""
        async def apply():
            self.gateway.reconfigure({"models": {"reducer": {"versions": {self.v: {
                "max_batch_size": 1, "max_delay_ms": 0}}, "stable": self.v}},
                "max_body_bytes": max_body_bytes})
            await self.ingress.follow_body_limit(max_body_bytes)
        asyncio.run_coroutine_threadsafe(apply(), self.loop).result(30)


def serve(tmp_path, client, delay_s=0.0, env=None, monkeypatch=None):
    """Run ``client(server)`` (blocking, in a thread) against a started server."""
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    reload()
    try:
        srv = Server(tmp_path, delay_s)

        async def main():
            srv.loop = asyncio.get_running_loop()
            await srv.ingress.start()
            stop = asyncio.Event()

            async def watch():
                while not stop.is_set():
                    srv.max_inflight = max(srv.max_inflight, srv.inflight())
                    await asyncio.sleep(0.002)

            w = asyncio.ensure_future(watch())
            try:
                return await asyncio.get_running_loop().run_in_executor(None, client, srv)
            finally:
                stop.set()
                await w
                await srv.ingress.drain(0)
                await srv.gateway.close()

        return asyncio.run(main()), srv
    finally:
        if env:
            for k in env:
                monkeypatch.delenv(k)
        reload()


def tensor_request(rows=1, width=4):
    req = pb.ModelInferRequest(model_name="reducer")
    req.inputs.add(name="x", datatype="FP32", shape=[rows, width])
    req.raw_input_contents.append(np.ones((rows, width), np.float32).tobytes())
    return req


def test_malformed_protobuf_is_invalid_argument_not_internal(tmp_path):
    def client(srv):
        with grpc.insecure_channel(srv.address) as ch:
            out = []
            for method in ("ModelInfer", "ModelMetadata", "ServerReady"):
                call = ch.unary_unary(f"/inference.GRPCInferenceService/{method}")
                try:
                    call(b"\xff\xff\xff\x07", timeout=10)
                    out.append((method, grpc.StatusCode.OK, ""))
                except grpc.RpcError as e:
                    out.append((method, e.code(), e.details()))
            return out

    answers, _ = serve(tmp_path, client)
    for method, code, details in answers:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert "the message is not a valid inference." in details


def test_a_message_past_the_limit_is_refused_by_grpc_before_it_is_decoded(tmp_path):
    def client(srv):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.address))
        out = []
        for rows in (MAX_BODY // 16 + 100, 200_000):  # within gRPC's slack; far past it
            try:
                stub.ModelInfer(tensor_request(rows), timeout=30)
            except grpc.RpcError as e:
                out.append((e.code(), e.details()))
        out.append(stub.ModelInfer(tensor_request(1), timeout=30).model_name)
        return out

    (within, past, ok), _ = serve(tmp_path, client)
    assert within[0] == past[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the REST path's message inside the slack; gRPC's own refusal (nothing decoded) past it
    assert "exceeds the limit of 100000 bytes" in within[1]
    assert "larger than max" in past[1], past
    assert ok == "reducer"


def test_the_size_limit_follows_a_later_change_of_max_body_bytes(tmp_path):
    """gRPC fixes its receive limit when its server starts: a lowered max_body_bytes must still
    refuse what is past it, a raised one must admit what the old server could not receive."""
    def client(srv):
        import tritonclient.grpc as tg
        from tritonclient.utils import InferenceServerException

        c = tg.InferenceServerClient(srv.address)

        def send(width):
            x = tg.InferInput("x", [1, width], "FP32")
            x.set_data_from_numpy(np.ones((1, width), np.float32))
            try:
                return float(c.infer("reducer", [x]).as_numpy("y")[0, 0])
            except InferenceServerException as e:
                return e.status(), e.message()

        out = {"before": send(15_000)}        # 60 kB, within 100 kB
        srv.set_body_limit(50_000)
        out["lowered"] = send(15_000)
        out["small"] = send(100)
        srv.set_body_limit(1_000_000)
        out["raised"] = send(100_000)         # 400 kB, past the first server's receive limit
        out["past"] = send(300_000)           # 1.2 MB, past the new limit
        return out

    out, _ = serve(tmp_path, client)
    assert out["before"] == 15_000.0
    assert out["lowered"][0] == "StatusCode.RESOURCE_EXHAUSTED"
    assert "exceeds the limit of 50000 bytes" in out["lowered"][1]
    assert out["small"] == 100.0
    assert out["raised"] == 100_000.0, out["raised"]
    assert out["past"][0] == "StatusCode.RESOURCE_EXHAUSTED"


def test_connections_past_the_cap_are_closed_and_the_others_go_on(tmp_path, monkeypatch):
    def client(srv):
        def live(ch):
            try:
                return pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(
                    pb.ServerLiveRequest(), timeout=5).live
            except grpc.RpcError as e:
                return e.code()

        # one connection per channel (no subchannel shared between channels)
        def channel():
            return grpc.insecure_channel(srv.address,
                                         options=[("grpc.use_local_subchannel_pool", 1)])

        held = [channel() for _ in range(3)]
        first = [live(ch) for ch in held]
        extra = channel()
        refused = live(extra)
        still = [live(ch) for ch in held]
        held[0].close()
        time.sleep(0.5)
        late = channel()
        after = live(late)
        for ch in (*held[1:], extra, late):
            ch.close()
        return first, refused, still, after

    (first, refused, still, after), _ = serve(
        tmp_path, client, env={"OPTISERVE_GRPC_MAX_CONNECTIONS": "3"}, monkeypatch=monkeypatch)
    assert first == still == [True] * 3
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert after is True  # a closed connection frees its place


def test_a_stream_answers_in_order_within_its_window(tmp_path, monkeypatch):
    def client(srv):
        def requests():
            for i in range(30):
                r = tensor_request(1, 1 + i % 3)
                r.id = f"r{i}"
                if i == 7:
                    r.inputs[0].name = "nope"
                yield r
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.address))
        return list(stub.ModelStreamInfer(requests(), timeout=60))

    answers, srv = serve(tmp_path, client, delay_s=0.02,
                         env={"OPTISERVE_GRPC_STREAM_MAX_INFLIGHT": "4"}, monkeypatch=monkeypatch)
    assert len(answers) == 30
    assert "unknown input 'nope'" in answers[7].error_message and answers[7].infer_response.id \
        == "r7"
    assert [a.infer_response.id for a in answers] == [f"r{i}" for i in range(30)]
    assert all(not a.error_message for i, a in enumerate(answers) if i != 7)
    # never more than the window in the gateway at once (unbounded: all 30 queue at once)
    assert 2 <= srv.max_inflight <= 4, srv.max_inflight


def test_a_deadline_takes_the_request_out_of_the_queue(tmp_path):
    def client(srv):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.address))
        try:
            stub.ModelInfer(tensor_request(), timeout=0.3)
        except grpc.RpcError as e:
            code = e.code()
        time.sleep(0.3)
        return code, srv.inflight()

    (code, inflight), srv = serve(tmp_path, client, delay_s=2.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert inflight == 0  # it left the gateway long before the backend would have answered
    outcomes = [c[2]["outcome"] for c in srv.rec.calls if c[0] == "inc" and c[1] is M.REQUESTS
                and c[3] > 0]
    assert outcomes == ["cancelled"]


def test_a_cancelled_stream_cancels_its_requests(tmp_path):
    def client(srv):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.address))
        call = stub.ModelStreamInfer(iter([tensor_request() for _ in range(10)]), timeout=60)
        time.sleep(0.3)
        seen = srv.inflight()
        call.cancel()
        time.sleep(0.3)
        return seen, srv.inflight()

    (seen, after), _ = serve(tmp_path, client, delay_s=5.0)
    assert seen > 0 and after == 0


def test_draining_fails_readiness_then_finishes_what_is_in_flight(tmp_path):
    def client(srv):
        import tritonclient.grpc as tg

        c = tg.InferenceServerClient(srv.address)
        assert c.is_server_ready()
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.address))
        slow = stub.ModelInfer.future(tensor_request(), timeout=30)
        time.sleep(0.2)
        srv.gateway_loop.call_soon_threadsafe(srv.ingress.drain, 0.5)
        time.sleep(0.2)
        ready = c.is_server_ready()
        answered = slow.result().model_name
        time.sleep(0.6)
        try:
            c.is_server_live()
            late = "answered"
        except Exception as e:
            late = str(e)
        return ready, answered, late

    def run(srv):
        return client(srv)

    import serving.grpc_ingress as gi

    original = gi.GrpcIngress.start

    async def start(self):
        self._srv_loop = asyncio.get_running_loop()
        await original(self)

    gi.GrpcIngress.start = start
    try:
        def wrapped(srv):
            srv.gateway_loop = srv.ingress._srv_loop
            return run(srv)
        (ready, answered, late), _ = serve(tmp_path, wrapped, delay_s=0.6)
    finally:
        gi.GrpcIngress.start = original
    assert ready is False and answered == "reducer"
    assert "UNAVAILABLE" in late


def test_statistics_follow_what_the_gateway_records(tmp_path):
    def client(srv):
        import tritonclient.grpc as tg

        c = tg.InferenceServerClient(srv.address)
        x = tg.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        for _ in range(3):
            c.infer("reducer", [x])
        bad = tg.InferInput("x", [1, 4], "INT64")
        bad.set_data_from_numpy(np.ones((1, 4), np.int64))
        with pytest.raises(Exception):
            c.infer("reducer", [bad])
        return c.get_inference_statistics("reducer", as_json=True)["model_stats"][0]

    stats, srv = serve(tmp_path, client)
    # the Prometheus series say how the requests came: gRPC
    assert [c[2]["protocol"] for c in srv.rec.of(M.REQUESTS) if c[3] > 0] == ["grpc"] * 4
    s = stats["inference_stats"]
    assert int(stats["inference_count"]) == 3 and int(stats["execution_count"]) == 3
    assert int(s["success"]["count"]) == 3 and int(s["fail"]["count"]) == 1
    assert int(s["success"]["ns"]) > 0 and int(s["queue"]["count"]) == 3


def test_bench_sends_grpc_and_shapes_rows_from_the_metadata(tmp_path):
    from optiserve.bench import BenchOptions, fetch_metadata, load_inputs, run_bench

    def client(srv):
        meta = fetch_metadata(srv.address, "reducer", protocol="grpc")
        inputs = load_inputs(None, meta)
        opts = BenchOptions(url=srv.address, model="reducer", concurrency=4, duration_s=1.0,
                            warmup_s=0.2, max_requests=20_000, protocol="grpc")
        return meta, asyncio.run(run_bench(opts, inputs))

    (meta, result), srv = serve(tmp_path, client)
    assert meta["inputs"][0]["shape"] == [-1, -1]
    assert result.ok > 10 and result.errors == {}, result
    # Triton's text models declare [-1, 1]: rows are sent [1, 1], not [1]
    rows = load_inputs(None, {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]})
    assert rows[0]["text"].shape == (1, 1)
    rows = load_inputs(None, {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}]})
    assert rows[0]["text"].shape == (1,)


def test_bench_streams_over_model_stream_infer(tmp_path):
    """optiserve bench --streaming: every request goes over ModelStreamInfer (its errors come
    as stream messages, which ModelInfer would answer as NOT_FOUND), each answered once, and the
    gateway counts exactly the requests sent, as gRPC."""
    from optiserve.bench import BenchOptions, fetch_metadata, load_inputs, run_bench

    n = 120

    def client(srv):
        inputs = load_inputs(None, fetch_metadata(srv.address, "reducer", protocol="grpc"))
        out = []
        for version in (None, "99"):  # 99: no such version, every answer is an error
            opts = BenchOptions(url=srv.address, model="reducer", version=version,
                                concurrency=4, duration_s=30.0, warmup_s=0.0, max_requests=n,
                                protocol="grpc", streaming=True, timeout_s=10)
            out.append(asyncio.run(run_bench(opts, inputs)))
        return out

    (good, bad), srv = serve(tmp_path, client)
    assert good.requests == good.ok == n and good.errors == {}, good
    assert bad.ok == 0 and bad.errors == {"stream_error": n}, bad
    counted = [c for c in srv.rec.of(M.REQUESTS) if c[3] > 0]
    assert {c[2]["protocol"] for c in counted} == {"grpc"}
    assert sum(c[3] for c in counted if c[2]["code"] == "200") == n, counted
    with pytest.raises(ValueError, match="protocol grpc"):
        asyncio.run(run_bench(BenchOptions(url="http://127.0.0.1:1", model="m",
                                           streaming=True), [{"x": np.zeros((1, 4))}]))
    r = run_cli("bench", "http://127.0.0.1:1", "--model", "m", "--streaming", timeout=60)
    assert r.returncode != 0 and "use it with --protocol grpc" in r.stdout + r.stderr, r


def test_bench_streaming_drops_a_stream_past_its_timeout(tmp_path):
    """A streamed request past --timeout counts as a timeout and its stream is cancelled, so the
    gateway takes the request out of its queue (counted cancelled); the next request opens a new
    stream rather than waiting behind the late answer."""
    from optiserve.bench import BenchOptions, fetch_metadata, load_inputs, run_bench

    def client(srv):
        inputs = load_inputs(None, fetch_metadata(srv.address, "reducer", protocol="grpc"))
        opts = BenchOptions(url=srv.address, model="reducer", concurrency=2, duration_s=30.0,
                            warmup_s=0.0, max_requests=4, protocol="grpc", streaming=True,
                            timeout_s=0.2)
        t0 = time.monotonic()
        result = asyncio.run(run_bench(opts, inputs))
        return result, time.monotonic() - t0

    (result, took), srv = serve(tmp_path, client, delay_s=1.0)
    assert result.ok == 0 and result.errors == {"timeout": 4}, result
    assert took < 2.0, took  # two rounds of 0.2 s timeouts, not 1 s answers
    codes = [c[2]["code"] for c in srv.rec.of(M.REQUESTS) if c[3] > 0]
    assert codes == ["499"] * 4, codes


def test_bench_streaming_opens_channels_past_the_streams_per_connection(tmp_path, monkeypatch):
    """More streaming clients than a connection may hold streams (the server's cap, here 4):
    the bench opens more channels instead of leaving the extra clients waiting for a stream
    that never closes; every request is answered."""
    from optiserve import bench
    from optiserve.bench import BenchOptions, fetch_metadata, load_inputs, run_bench

    monkeypatch.setattr(bench._GrpcStreamSender, "STREAMS_PER_CHANNEL", 4)

    def client(srv):
        inputs = load_inputs(None, fetch_metadata(srv.address, "reducer", protocol="grpc"))
        opts = BenchOptions(url=srv.address, model="reducer", concurrency=10, duration_s=30.0,
                            warmup_s=0.0, max_requests=100, protocol="grpc", streaming=True,
                            timeout_s=3.0)
        return asyncio.run(run_bench(opts, inputs))

    result, _ = serve(tmp_path, client, env={"OPTISERVE_GRPC_MAX_CONCURRENT_STREAMS": "4"},
                      monkeypatch=monkeypatch)
    assert result.requests == result.ok == 100 and result.errors == {}, result
