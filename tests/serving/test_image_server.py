"""An image classification version served live as the chart deploys it (real Ray Serve, the
gateway's own HTTP and gRPC servers, the chart's serve config and settings): JPEG bytes from
the real tritonclient (HTTP and gRPC) answered with the labels the model gives in-process on
the same preprocessing, raw pixels, the classification extension, ``optiserve bench
--input-file DIR``, the OpenAPI image example, and hostile images (bombs, truncated and
corrupt files, formats the version does not take, requests of many huge images) refused with
4xx while steady clients keep their p99. The model is a tiny random CNN (a few KB): the path
under test is serving's, not the model's."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import orjson
import pytest

from serving.images import preprocess
from serving.protocol import encode_infer_request
from serving.repository import ModelRepository
from serving.runtimes import load_runtime
from tests.helpers import ServeProcess, http, run_cli
from tests.support import steady
from tests.support.chart import chart_serving, serving_values
from tests.support.image_models import LABELS, encode, photos, png_bomb, publish_tiny_classifier

pytestmark = pytest.mark.slow

MAX_BODY = 4_000_000
MAX_REQUEST_PIXELS = 20_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("images")
    repo = ModelRepository(work / "repo")
    v = publish_tiny_classifier(repo, "pets", size=224, resize_to=256)
    doc, env = chart_serving(serving_values(
        work / "repo", {"pets": {"versions": {v: {"numCpus": 0.5, "replicas": 1}}}},
        gateway={"maxBodyBytes": MAX_BODY},
        settings={"max_request_pixels": MAX_REQUEST_PIXELS}))
    assert env.get("OPTISERVE_MAX_REQUEST_PIXELS") == str(MAX_REQUEST_PIXELS), env
    proc = ServeProcess(doc, work, env=env).start()
    ref = repo.get("pets", v)
    proc.version, proc.spec = v, ref.manifest.image_preprocessing
    proc.runtime = load_runtime(ref.manifest, ref.path)
    proc.work = work
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def jpegs():
    return [encode(p, "JPEG", size=(320 - 16 * i, 240 + 8 * i)) for i, p in enumerate(photos())]


def expected(server, images):
    return server.runtime.run({"pixel_values": preprocess(images, server.spec)})["probabilities"]


def url(server):
    return f"{server.url}/v2/models/pets/infer"


def test_tritonclient_jpegs_over_http_and_grpc_get_the_in_process_labels(server, jpegs):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    want = expected(server, jpegs)
    top = [LABELS[i] for i in want.argmax(1)]
    images = np.array(jpegs, dtype=object)
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("image", [len(jpegs)], "BYTES")
    inp.set_data_from_numpy(images, binary_data=True)
    res = hc.infer("pets", [inp], outputs=[th.InferRequestedOutput("probabilities"),
                                           th.InferRequestedOutput("label")])
    np.testing.assert_allclose(res.as_numpy("probabilities"), want, rtol=1e-4, atol=1e-6)
    assert [x.decode() for x in res.as_numpy("label")] == top
    # the classification extension: the best 3, best first, with their labels
    res = hc.infer("pets", [inp], outputs=[th.InferRequestedOutput("probabilities",
                                                                   class_count=3)])
    best = res.as_numpy("probabilities")
    assert best.shape == (len(jpegs), 3)
    for r in range(len(jpegs)):
        assert [x.decode().split(":", 1)[1] for x in best[r]] == [
            f"{i}:{LABELS[i]}" for i in np.argsort(-want[r])[:3]]
    # raw pixels under the model's input name: the same answer
    pix = th.InferInput("pixel_values", [len(jpegs), 3, 224, 224], "FP32")
    pix.set_data_from_numpy(preprocess(jpegs, server.spec))
    res = hc.infer("pets", [pix])
    assert [x.decode() for x in res.as_numpy("label")] == top
    meta = hc.get_model_metadata("pets")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["parameters"]["pixel_input"]["shape"] == [-1, 3, 224, 224]
    # a full batch: 32 decoded 224x224 images are 19 MiB between gateway and model replica
    # (Ray Serve's handle calls stop at 4 MiB unless told otherwise)
    many = (jpegs * 6)[:32]
    inp = th.InferInput("image", [32], "BYTES")
    inp.set_data_from_numpy(np.array(many, dtype=object), binary_data=True)
    res = hc.infer("pets", [inp], outputs=[th.InferRequestedOutput("label")])
    assert [x.decode() for x in res.as_numpy("label")] == (top * 6)[:32]
    hc.close()

    gc = tg.InferenceServerClient(server.grpc_url)
    ginp = tg.InferInput("image", [len(jpegs)], "BYTES")
    ginp.set_data_from_numpy(images)
    res = gc.infer("pets", [ginp], outputs=[tg.InferRequestedOutput("probabilities"),
                                            tg.InferRequestedOutput("label")])
    np.testing.assert_allclose(res.as_numpy("probabilities"), want, rtol=1e-4, atol=1e-6)
    assert [x.decode() for x in res.as_numpy("label")] == top
    cfg = gc.get_model_config("pets", as_json=True)["config"]
    assert cfg["input"][0]["name"] == "image"
    assert "pixel_values" in cfg["parameters"]["pixel_input"]["string_value"]
    # a truncated image over gRPC: INVALID_ARGUMENT naming the element
    bad = tg.InferInput("image", [2], "BYTES")
    bad.set_data_from_numpy(np.array([jpegs[0], jpegs[1][:len(jpegs[1]) // 2]], dtype=object))
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        gc.infer("pets", [bad])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'image' element 1: the JPEG file is truncated or corrupt" in e.value.message()
    gc.close()


def test_the_openapi_image_example_is_answered(server):
    _, _, body = http("GET", f"{server.url}/v2/openapi.json")
    examples = json.loads(body)["paths"]["/v2/models/{model_name}/infer"]["post"][
        "requestBody"]["content"]["application/json"]["examples"]
    for key in ("pets", "pets-class-count"):
        status, _, out = http("POST", url(server), orjson.dumps(examples[key]["value"]))
        assert status == 200, out
        assert json.loads(out)["outputs"][-1]["data"][0] in LABELS


def test_bench_sends_a_directory_of_images(server, jpegs):
    folder = server.work / "photos"
    folder.mkdir(exist_ok=True)
    for i, data in enumerate(jpegs):
        (folder / f"{i}.jpg").write_bytes(data)
    (folder / "notes.txt").write_text("not an image: skipped")
    for extra in ([], ["--json-body"], ["--protocol", "grpc"]):
        target = server.grpc_url if extra[-1:] == ["grpc"] else server.url
        r = run_cli("bench", target, "--model", "pets", "--input-file", str(folder), "--rows",
                    "4", "--requests", "20", "--concurrency", "2", "--duration", "5",
                    "--warmup", "0", "--json", *extra, timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout
        result = json.loads(r.stdout)
        assert result["ok"] >= 10 and not result["errors"], (extra, result)
        assert result["rows_per_s"] > 0
    r = run_cli("bench", server.url, "--model", "pets", "--input-file", str(server.work),
                "--duration", "1", timeout=60)  # a folder with no image
    assert r.returncode != 0 and "holds no images" in r.stderr + r.stdout


def _hostile_bodies(jpegs) -> list[tuple[str, bytes, dict, int, str]]:
    """(case, body, headers, status, message) of each hostile request."""
    big = encode(photos()[0], "JPEG", size=(2000, 2000), quality=70)  # 4 MP each
    huge = [big] * 6  # 24 MP in all: over the request's pixel budget, under the body limit
    assert sum(map(len, huge)) < MAX_BODY
    corrupt = bytearray(encode(photos()[1], "PNG"))
    corrupt[120:200] = b"\xff" * 80

    def req(images):
        return encode_infer_request({"image": np.array(images, dtype=object)},
                                    binary_output=False)

    cases = [
        ("bomb", *req([jpegs[0], png_bomb(30000, 30000)]), 413,
         "input 'image' element 1: "),
        ("truncated", *req([jpegs[0], jpegs[1], jpegs[2][:len(jpegs[2]) // 2]]), 400,
         "input 'image' element 2: the JPEG file is truncated or corrupt"),
        ("corrupt", *req([bytes(corrupt)]), 400,
         "input 'image' element 0: the PNG file is truncated or corrupt"),
        ("gif", *req([encode(photos()[0], "GIF")]), 400,
         "input 'image' element 0: not an image this version takes"),
        ("pixels", *req(huge), 413,
         f"more than the limit of {MAX_REQUEST_PIXELS} pixels per request"),
        ("bytes", *req([big] * 12), 413, f"exceeds the limit of {MAX_BODY} bytes"),
    ]
    return cases


async def steady_clients(server, body: bytes, headers: dict, seconds: float, clients: int = 3):
    return await steady.steady_clients(url(server), body, seconds, clients, headers)


def test_hostile_images_are_refused_while_steady_clients_keep_their_p99(server, jpegs):
    cases = _hostile_bodies(jpegs)
    seen: list[tuple[str, int, str]] = []

    def attack(stop: threading.Event):
        for i in range(60):
            if stop.is_set():
                break
            case, body, headers, _, _ = cases[i % len(cases)]
            status, _, out = http("POST", url(server), body, headers)
            seen.append((case, status, json.loads(out).get("error", "")))
            time.sleep(0.05)

    body, headers = encode_infer_request({"image": np.array(jpegs[:4], dtype=object)})
    asyncio.run(steady_clients(server, body, headers, 1.0))  # warm
    stop = threading.Event()
    t = threading.Thread(target=attack, args=(stop,))
    t.start()
    try:
        latencies, statuses = asyncio.run(steady_clients(server, body, headers, 8.0))
    finally:
        stop.set()
        t.join(60)
    want = {c[0]: (c[3], c[4]) for c in cases}
    assert {case for case, _, _ in seen} == set(want), seen
    for case, status, message in seen:
        assert status == want[case][0] and want[case][1] in message, (case, status, message)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    p99 = float(np.percentile(latencies, 99))
    print(f"steady clients: {len(latencies)} requests of 4 images, p99 {p99 * 1000:.0f} ms; "
          f"{len(seen)} hostile requests refused")
    assert len(latencies) > 50 and p99 < 1.0, (len(latencies), p99)
