"""The OIP over gRPC and OpenAI-compatible embeddings against a live ``optiserve serve`` (real Ray
Serve, the gateway's own servers): the real ``tritonclient.grpc`` clients (sync, asyncio,
streaming) and the real ``openai`` client, each answer compared with the REST answer, every bad
input with its gRPC code and REST's message, and hostile clients (oversized and malformed
messages, cancelled streams) next to steady ones."""

from __future__ import annotations

import asyncio
import base64
import queue
import random
import threading
import time

import grpc
import numpy as np
import orjson
import pytest

from serving.config import build_serve_config, gateway_user_config
from tests.helpers import ServeProcess, http, run_cli

pytestmark = pytest.mark.slow

SENTENCES = ["The weather in Lyon is mild today.", "ok", "How do I reset my password?"]
MAX_BODY = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """minilm (ONNX fp32 and INT8) and a tiny tensor classifier, served with a small body limit
    and queue so that the size and overload answers are cheap to reach."""
    root = tmp_path_factory.mktemp("grpc")
    repo = root / "repo"
    r = run_cli("optimize", "minilm", "--variants", "onnx-fp32,onnx-int8-dynamic", "--publish",
                "all", "--min-time", "0.2", "--batch-sizes", "1,8", "--repository", str(repo),
                "-q", timeout=1800)
    assert r.returncode == 0, r.stderr + r.stdout
    r = run_cli("optimize", "tests.fixtures.tiny_models:classifier", "--input", "x:FP32:-1,16",
                "--task", "classification", "--name", "tiny", "--variants", "onnx-fp32",
                "--min-time", "0.1", "--batch-sizes", "1,8", "--repository", str(repo), "-q")
    assert r.returncode == 0, r.stderr
    from serving.repository import ModelRepository

    versions = {ModelRepository(repo).manifest("minilm", v).variant: v
                for v in ModelRepository(repo).versions("minilm")}
    doc = build_serve_config(str(repo), [("minilm", versions["onnx-int8-dynamic"]),
                                         ("minilm", versions["onnx-fp32"]), ("tiny", 1)],
                             version_cpus=0.5)
    # the optimizer's recommendation depends on how busy the machine was; these tests send up
    # to 8 rows per request and count on more than 8 being refused
    for route in gateway_user_config(doc)["models"].values():
        for v in route["versions"].values():
            v["max_batch_size"] = 8
    proc = ServeProcess(doc, root, env={"OPTISERVE_MAX_BODY_BYTES": str(MAX_BODY),
                                        "OPTISERVE_MAX_QUEUE_ROWS": "64"}).start()
    proc.versions = versions
    yield proc
    assert proc.stop() == 0


def rest_infer(server, model: str, doc: dict, version: str | None = None):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    status, _, body = http("POST", server.url + path, orjson.dumps(doc),
                           {"content-type": "application/json"})
    return status, orjson.loads(body)


def text_input(texts, tg=None):
    import tritonclient.grpc as tg

    inp = tg.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object))
    return inp


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_ray_serve_and_the_grpc_stubs_import_in_one_process():
    """The tritonclient[grpc] extra pins protobuf<7, with which Ray Serve 2.60 no longer
    imports; both must work in the installed environment, in one process."""
    import subprocess
    import sys

    code = ("import ray.serve, grpc_reflection; "
            "from tritonclient.grpc import service_pb2_grpc, service_pb2; "
            "import serving.grpc_ingress; "
            "print(service_pb2.ModelInferRequest(model_name='m').SerializeToString())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\\n\\x01m" in r.stdout


def test_health_metadata_config_and_index_match_rest(server):
    import tritonclient.grpc as tg

    c = tg.InferenceServerClient(server.grpc_url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata().name == "optiserve"
    rest = orjson.loads(http("GET", server.url + "/v2/models/minilm")[2])
    meta = c.get_model_metadata("minilm", as_json=True)
    assert meta["name"] == "minilm" and meta["platform"] == rest["platform"]
    assert sorted(meta["versions"]) == sorted(rest["versions"])
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] \
        == [(t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]]
    rest_cfg = orjson.loads(http("GET", server.url + "/v2/models/minilm/config")[2])
    cfg = c.get_model_config("minilm", as_json=True)["config"]
    assert int(cfg["max_batch_size"]) == rest_cfg["max_batch_size"]
    assert cfg["input"][0]["data_type"] == "TYPE_STRING"
    assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) \
        == rest_cfg["dynamic_batching"]["max_queue_delay_microseconds"]
    for v in server.versions.values():
        assert c.is_model_ready("minilm", str(v))
    assert not c.is_model_ready("no-such-model")
    index = c.get_model_repository_index(as_json=True)["models"]
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == sorted(
        [("minilm", str(v), "READY") for v in server.versions.values()] + [("tiny", "1", "READY")])


def test_infer_raw_and_typed_equals_rest_and_pins_versions(server):
    import tritonclient.grpc as tg
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    fp32 = str(server.versions["onnx-fp32"])
    c = tg.InferenceServerClient(server.grpc_url)
    result = c.infer("minilm", [text_input(SENTENCES)], model_version=fp32, request_id="g-1")
    emb = result.as_numpy("embedding")
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert result.get_response().id == "g-1" and result.get_response().model_version == fp32
    status, doc = rest_infer(server, "minilm", {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [3], "data": SENTENCES}]}, fp32)
    assert status == 200
    rest = np.array(doc["outputs"][0]["data"], np.float32).reshape(3, 384)
    assert cosine(emb, rest).min() >= 0.9999
    # typed contents (no raw_input_contents), straight through the generated stub
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="minilm", model_version=fp32)
        t = req.inputs.add(name="text", datatype="BYTES", shape=[3])
        t.contents.bytes_contents.extend(s.encode() for s in SENTENCES)
        resp = stub.ModelInfer(req, timeout=30)
        typed = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(3, 384)
        assert cosine(typed, rest).min() >= 0.9999
        x = np.random.default_rng(0).random((4, 16), dtype=np.float32)
        req = pb.ModelInferRequest(model_name="tiny")
        t = req.inputs.add(name="x", datatype="FP32", shape=[4, 16])
        t.contents.fp32_contents.extend(x.ravel().tolist())
        resp = stub.ModelInfer(req, timeout=30)
    status, doc = rest_infer(server, "tiny", {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [4, 16], "data": x.ravel().tolist()}]})
    out = {o.name: i for i, o in enumerate(resp.outputs)}
    for o in doc["outputs"]:
        got = np.frombuffer(resp.raw_output_contents[out[o["name"]]], o["datatype"].lower()
                            .replace("fp", "float"))
        np.testing.assert_allclose(got, np.array(o["data"], got.dtype), rtol=1e-5, atol=1e-6)


BAD = [
    # (model, version, inputs as (name, datatype, shape, values), REST status)
    ("no-such-model", None, [("text", "BYTES", [1], ["a"])], 404),
    ("minilm", "999", [("text", "BYTES", [1], ["a"])], 404),
    ("minilm", "abc", [("text", "BYTES", [1], ["a"])], 400),
    ("minilm", None, [("x", "FP32", [1], [1.0])], 400),
    ("minilm", None, [("text", "FP32", [1], [1.0])], 400),
    ("tiny", None, [("x", "FP32", [2, 15], [0.0] * 30)], 400),
    ("tiny", None, [("x", "INT64", [1, 16], [1] * 16)], 400),
    ("minilm", None, [("text", "BYTES", [1000], ["a"] * 1000)], 400),
]


@pytest.mark.parametrize("model, version, inputs, status", BAD)
def test_bad_requests_get_the_rest_message_under_its_grpc_code(server, model, version, inputs,
                                                              status):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    from serving.grpc_codec import status_code

    rest_status, rest = rest_infer(server, model, {"inputs": [
        {"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in inputs]}, version)
    assert rest_status == status, rest
    c = tg.InferenceServerClient(server.grpc_url)
    grpc_inputs = []
    for n, d, s, v in inputs:
        i = tg.InferInput(n, s, d)
        i.set_data_from_numpy(np.array(v, dtype=object if d == "BYTES" else
                                       {"FP32": np.float32, "INT64": np.int64}[d]).reshape(s))
        grpc_inputs.append(i)
    with pytest.raises(InferenceServerException) as e:
        c.infer(model, grpc_inputs, model_version=version or "")
    assert e.value.status() == str(status_code(status))
    # the same words: the REST codec read the same tensors (JSON there, raw here)
    assert e.value.message() == rest["error"], (e.value.message(), rest["error"])


def test_an_oversized_message_is_resource_exhausted_and_others_go_on(server):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    c = tg.InferenceServerClient(server.grpc_url)
    # 320 kB: past max_body_bytes, within gRPC's 64 KiB slack; 6.4 MB: past gRPC's own limit
    for rows in (5_000, 100_000):
        x = tg.InferInput("x", [rows, 16], "FP32")
        x.set_data_from_numpy(np.zeros((rows, 16), np.float32))
        with pytest.raises(InferenceServerException) as e:
            c.infer("tiny", [x])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED", e.value
    assert "exceeds the limit of 300000 bytes" in _message_of(c, 5_000)
    result = c.infer("minilm", [text_input(SENTENCES[:1])])
    assert result.as_numpy("embedding").shape == (1, 384)


def _message_of(c, rows):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    x = tg.InferInput("x", [rows, 16], "FP32")
    x.set_data_from_numpy(np.zeros((rows, 16), np.float32))
    try:
        c.infer("tiny", [x])
    except InferenceServerException as e:
        return e.message()
    return ""


def test_stream_answers_in_order_with_errors_in_the_stream(server):
    import tritonclient.grpc as tg

    answers: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(server.grpc_url)
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    try:
        for i in range(24):
            if i % 5 == 3:  # a bad one: wrong input name
                bad = tg.InferInput("nope", [1], "BYTES")
                bad.set_data_from_numpy(np.array(["x"], dtype=object))
                c.async_stream_infer("minilm", [bad], request_id=f"s-{i}")
            else:
                c.async_stream_infer("minilm", [text_input([SENTENCES[i % 3]] * (1 + i % 4))],
                                     request_id=f"s-{i}")
            sent.append(i)
        got = [answers.get(timeout=60) for _ in sent]
    finally:
        c.stop_stream()
    for i, (result, error) in zip(sent, got):
        if i % 5 == 3:
            assert result is None and "unknown input 'nope'" in error.message()
        else:
            assert error is None, error
            assert result.get_response().id == f"s-{i}"
            assert result.as_numpy("embedding").shape == (1 + i % 4, 384)


def test_asyncio_client_and_overload_is_unavailable_with_retry_advice(server):
    import tritonclient.grpc.aio as tga
    from tritonclient.utils import InferenceServerException

    async def run():
        c = tga.InferenceServerClient(server.grpc_url)
        try:
            ok = await asyncio.gather(*(c.infer("minilm", [text_input([s])])
                                        for s in SENTENCES * 4))
            assert all(r.as_numpy("embedding").shape == (1, 384) for r in ok)
            # 40 requests of 8 rows against a queue of 64 rows: some must be refused
            many = await asyncio.gather(*(c.infer("minilm", [text_input(SENTENCES[:2] * 4)])
                                          for _ in range(40)), return_exceptions=True)
        finally:
            await c.close()
        return many

    many = asyncio.run(run())
    refused = [e for e in many if isinstance(e, InferenceServerException)]
    assert refused and len(refused) < len(many), many
    assert {e.status() for e in refused} == {"StatusCode.UNAVAILABLE"}
    assert "queue" in refused[0].message()
    # the retry advice travels in the trailing metadata, as Retry-After does over REST
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    async def raw():
        async with grpc.aio.insecure_channel(server.grpc_url) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)

            async def one():
                req = pb.ModelInferRequest(model_name="minilm")
                t = req.inputs.add(name="text", datatype="BYTES", shape=[8])
                t.contents.bytes_contents.extend([b"some words to embed here"] * 8)
                call = stub.ModelInfer(req, timeout=60)
                try:
                    await call
                    return None
                except grpc.aio.AioRpcError as e:
                    return e
            return await asyncio.gather(*(one() for _ in range(40)))

    errors = [e for e in asyncio.run(raw()) if e is not None]
    assert errors and all(e.code() == grpc.StatusCode.UNAVAILABLE for e in errors)
    assert dict(errors[0].trailing_metadata()).get("retry-after") == "1"


def test_malformed_messages_and_cancelled_streams_get_no_internal_answer(server):
    """A fuzz over raw bytes and absurd fields, and streams cancelled mid-way, while a steady
    client keeps being answered."""
    from tritonclient.grpc import service_pb2 as pb

    rng = random.Random(7)
    codes = []
    stop = threading.Event()
    steady: list[float] = []

    def steady_client():
        import tritonclient.grpc as tg

        c = tg.InferenceServerClient(server.grpc_url)
        while not stop.is_set() and len(steady) < 500:
            t0 = time.perf_counter()
            c.infer("minilm", [text_input(SENTENCES[:1])], client_timeout=30)
            steady.append(time.perf_counter() - t0)

    th = threading.Thread(target=steady_client)
    th.start()
    try:
        with grpc.insecure_channel(server.grpc_url) as ch:
            infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            meta = ch.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
            good = pb.ModelInferRequest(model_name="tiny")
            good.inputs.add(name="x", datatype="FP32", shape=[1, 16])
            good.raw_input_contents.append(np.zeros(16, np.float32).tobytes())
            seed = good.SerializeToString()
            for i in range(300):
                kind = i % 4
                if kind == 0:
                    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
                elif kind == 1:  # the good message with bytes flipped
                    b = bytearray(seed)
                    for _ in range(rng.randrange(1, 6)):
                        b[rng.randrange(len(b))] = rng.randrange(256)
                    data = bytes(b)
                elif kind == 2:  # absurd shapes and types
                    m = pb.ModelInferRequest(model_name=rng.choice(["tiny", "minilm", ""]))
                    t = m.inputs.add(name=rng.choice(["x", "text", ""]),
                                     datatype=rng.choice(["FP32", "BYTES", "INT8", "nope", ""]),
                                     shape=[rng.choice([-1, 0, 1, 16, 2**40, 2**62])
                                            for _ in range(rng.randrange(0, 20))])
                    if rng.random() < 0.5:
                        m.raw_input_contents.append(rng.randbytes(rng.randrange(0, 100)))
                    else:
                        t.contents.int_contents.extend([rng.randrange(-2**31, 2**31)
                                                        for _ in range(4)])
                    data = m.SerializeToString()
                else:
                    data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 50)))
                    try:
                        meta(data, timeout=10)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as e:
                        codes.append(e.code())
                    continue
                try:
                    infer(data, timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
            # streams cancelled with requests in flight
            stream = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            for _ in range(20):
                call = stream(iter([seed] * 50 + [b"\xff\xff"]), timeout=30)
                next(call)
                call.cancel()
    finally:
        stop.set()
        th.join(60)
    assert grpc.StatusCode.INTERNAL not in codes, codes.count(grpc.StatusCode.INTERNAL)
    assert grpc.StatusCode.UNKNOWN not in codes
    assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) > 100
    assert steady and sorted(steady)[int(0.99 * (len(steady) - 1))] < 2.0
    import tritonclient.grpc as tg

    assert tg.InferenceServerClient(server.grpc_url).is_server_ready()


def test_statistics_count_what_the_gateway_answered(server):
    import tritonclient.grpc as tg

    c = tg.InferenceServerClient(server.grpc_url)
    fp32 = str(server.versions["onnx-fp32"])
    before = c.get_inference_statistics("minilm", fp32, as_json=True)["model_stats"][0]
    for _ in range(3):
        c.infer("minilm", [text_input(SENTENCES)], model_version=fp32)
    rest_infer(server, "minilm", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                              "data": ["rest counts too"]}]}, fp32)
    after = c.get_inference_statistics("minilm", fp32, as_json=True)["model_stats"][0]

    def n(doc, *path):
        for p in path:
            doc = doc.get(p, {})
        return int(doc or 0)

    assert n(after, "inference_count") - n(before, "inference_count") == 10
    assert n(after, "inference_stats", "success", "count") \
        - n(before, "inference_stats", "success", "count") == 4
    assert n(after, "inference_stats", "success", "ns") > n(before, "inference_stats",
                                                             "success", "ns")
    assert n(after, "execution_count") > n(before, "execution_count")
    every = c.get_inference_statistics(as_json=True)["model_stats"]
    assert {(m["name"], m["version"]) for m in every} >= {("tiny", "1"), ("minilm", fp32)}


def test_unimplemented_methods_say_so(server):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    c = tg.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        c.load_model("minilm")
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"


# ---- OpenAI-compatible embeddings ------------------------------------------------------------

def test_openai_client_embeddings_equal_rest(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    fp32 = server.versions["onnx-fp32"]
    status, doc = rest_infer(server, "minilm", {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [3], "data": SENTENCES}]}, str(fp32))
    rest = np.array(doc["outputs"][0]["data"], np.float32).reshape(3, 384)
    # no encoding_format: the client asks for base64 and decodes it itself; given, it is the
    # caller's to decode
    for fmt in (None, "float", "base64"):
        e = client.embeddings.create(model=f"minilm:{fp32}", input=SENTENCES,
                                     **({"encoding_format": fmt} if fmt else {}))
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64"
                        else d.embedding for d in sorted(e.data, key=lambda d: d.index)])
        assert got.shape == (3, 384)
        assert cosine(got, rest).min() >= 0.9999
        assert e.model == f"minilm:{fp32}"
        assert e.usage.prompt_tokens == e.usage.total_tokens > len(SENTENCES)
    one = client.embeddings.create(model="minilm", input="ok")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    ids = [m.id for m in client.models.list()]
    assert "minilm" in ids and f"minilm:{fp32}" in ids and "tiny" not in ids
    # more inputs than max_batch_size: split, sent at once, answered in order
    many = [f"sentence number {i}" for i in range(50)]
    e = client.embeddings.create(model=f"minilm:{fp32}", input=many)
    assert [d.index for d in e.data] == list(range(50))
    single = client.embeddings.create(model=f"minilm:{fp32}", input=many[37])
    assert cosine(e.data[37].embedding, single.data[0].embedding) >= 0.9999


@pytest.mark.parametrize("body, status, param", [
    ({"model": "nope", "input": "a"}, 404, "model"),
    ({"model": "tiny", "input": "a"}, 400, "model"),
    ({"model": "minilm", "input": []}, 400, "input"),
    ({"model": "minilm", "input": [1, 2, 3]}, 400, "input"),
    ({"model": "minilm", "input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "minilm", "input": "a", "dimensions": 128}, 400, "dimensions"),
    ({"model": "minilm:abc", "input": "a"}, 400, "model"),
])
def test_openai_errors_have_openais_shape(server, body, status, param):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(**body)
    assert e.value.status_code == status
    err = e.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_openai_body_limit_and_base64_bytes(server):
    status, _, body = http("POST", server.url + "/v1/embeddings",
                           orjson.dumps({"model": "minilm", "input": "x" * (MAX_BODY + 10)}),
                           {"content-type": "application/json"})
    assert status == 413 and "exceeds the limit" in orjson.loads(body)["error"]["message"]
    status, _, body = http("POST", server.url + "/v1/embeddings",
                           orjson.dumps({"model": "minilm", "input": "ok",
                                         "encoding_format": "base64"}),
                           {"content-type": "application/json"})
    vec = np.frombuffer(base64.b64decode(orjson.loads(body)["data"][0]["embedding"]), "<f4")
    assert status == 200 and vec.shape == (384,)


def test_bench_sends_openai_embeddings_requests(server):
    """optiserve bench --protocol openai: POST /v1/embeddings with --rows strings per request,
    the version pinned as name:version; an unknown model is counted under its status."""
    import json

    fp32 = server.versions["onnx-fp32"]
    args = ["--protocol", "openai", "--rows", "3", "--concurrency", "2", "--warmup", "0",
            "--json"]
    r = run_cli("bench", server.url, "--model", "minilm", "--version", str(fp32),
                "--duration", "3", *args, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] > 0 and res["errors"] == {}, res
    r = run_cli("bench", server.url, "--model", "nope", "--duration", "1", *args, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] == 0 and set(res["errors"]) == {"404"}, res


def test_zz_draining_the_pod_drains_grpc_too(server):
    """Last in this module: POST /-/drain (the chart's preStop) fails gRPC readiness at once while
    both servers still answer, as load balancers deregister the pod."""
    import tritonclient.grpc as tg

    assert http("POST", server.url + "/-/drain")[0] == 202
    c = tg.InferenceServerClient(server.grpc_url)
    assert not c.is_server_ready()
    assert c.infer("minilm", [text_input(SENTENCES[:1])]).as_numpy("embedding").shape == (1, 384)
