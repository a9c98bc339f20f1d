"""An image version in the gateway without Ray: encoded images (binary extension and JSON data
URLs) or raw pixels in, probabilities, labels and the classification extension out, broken and
hostile images refused per request, shadow comparison; the real ONNX Runtime as the backend (the
runtime a version replica runs; only the Ray hop is left out)."""

from __future__ import annotations

import asyncio
import base64
import threading

import numpy as np
import orjson
import pytest

from serving import metrics as M
from serving import settings as S
from serving.gateway import Gateway
from serving.images import preprocess
from serving.protocol import encode_infer_request
from serving.repository import ModelRepository
from serving.runtimes import load_runtime
from tests.serving.test_gateway import RecordingRecorder
from tests.support.image_models import LABELS, encode, photos, png_bomb, publish_tiny_classifier


@pytest.fixture(scope="module")
def jpegs():
    return [encode(p, "JPEG", size=(160 + 16 * i, 120 + 8 * i)) for i, p in enumerate(photos())]


@pytest.fixture
def gateway(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    v1 = publish_tiny_classifier(repo)
    v2 = publish_tiny_classifier(repo)
    runtimes = {v: load_runtime(repo.get("pets", v).manifest, repo.get("pets", v).path)
                for v in (v1, v2)}
    calls = []

    def backend(model, version):
        async def run(feeds):
            calls.append((version, [f["pixel_values"].shape for f in feeds]))
            await asyncio.sleep(0.01)
            return [runtimes[version].run(f) for f in feeds]
        return run

    gw = Gateway(str(tmp_path / "repo"), backend, RecordingRecorder())
    gw.reconfigure({"models": {"pets": {"versions": {v1: {}, v2: {}}, "stable": v1}}})
    gw.calls, gw.v, gw.runtime = calls, (v1, v2), runtimes[v1]
    gw.spec = repo.get("pets", v1).manifest.image_preprocessing
    return gw


async def call(gw, body: bytes, headers=None, version=None):
    async def read(limit):
        return body
    status, out, _ = await gw.handle_infer("pets", version, read, headers or {})
    return status, orjson.loads(out)


def image_request(images: list[bytes], outputs=None) -> tuple[bytes, dict]:
    body, headers = encode_infer_request({"image": np.array(images, dtype=object)},
                                         binary_output=False)
    if outputs is not None:
        head_len = int(headers["inference-header-content-length"])
        doc = orjson.loads(body[:head_len])
        doc["outputs"] = outputs
        head = orjson.dumps(doc)
        body, headers = head + body[head_len:], {**headers,
                                                 "inference-header-content-length": str(len(head))}
    return body, headers


def expected(gw, images: list[bytes]) -> np.ndarray:
    """The model run in-process on the same preprocessing: what the gateway must answer."""
    return gw.runtime.run({"pixel_values": preprocess(images, gw.spec)})["probabilities"]


def test_images_are_decoded_off_the_loop_batched_and_labelled(gateway, jpegs, monkeypatch):
    import serving.tasks.image as image_task

    threads = []

    def recording(*a, **k):
        threads.append(threading.current_thread().name)
        return preprocess(*a, **k)

    monkeypatch.setattr(image_task, "preprocess", recording)
    requests = [jpegs[:3], jpegs[3:4], jpegs[4:]]

    async def main():
        return await asyncio.gather(*[call(gateway, *image_request(r)) for r in requests])

    for imgs, (status, doc) in zip(requests, asyncio.run(main())):
        assert status == 200, doc
        out = {o["name"]: o for o in doc["outputs"]}
        want = expected(gateway, imgs)
        np.testing.assert_allclose(np.array(out["probabilities"]["data"]).reshape(want.shape),
                                   want, rtol=1e-5, atol=1e-6)
        assert out["label"]["data"] == [LABELS[i] for i in want.argmax(1)]
    assert threads and all(t.startswith("gateway-work") for t in threads), threads
    # the three requests' pixels went to the model as one batch
    assert gateway.calls == [(gateway.v[0], [(len(jpegs), 3, 32, 32)])]


def test_raw_pixels_and_json_data_urls_get_the_same_answer(gateway, jpegs):
    want = expected(gateway, jpegs[:2])
    pixels = preprocess(jpegs[:2], gateway.spec)
    urls = [f"data:image/jpeg;base64,{base64.b64encode(j).decode()}" for j in jpegs[:2]]

    async def main():  # one event loop: the batcher lives on it
        return (await call(gateway, *encode_infer_request({"pixel_values": pixels},
                                                          binary_output=False)),
                await call(gateway, orjson.dumps({"inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [2], "data": urls}]})),
                await call(gateway, *encode_infer_request(
                    {"pixel_values": np.zeros((1, 3, 64, 64), np.float32)})))

    (s1, d1), (s2, d2), (s3, d3) = asyncio.run(main())
    assert s1 == 200, d1
    np.testing.assert_allclose(np.array(d1["outputs"][0]["data"]).reshape(want.shape), want,
                               rtol=1e-5, atol=1e-6)
    assert s2 == 200, d2
    out = {o["name"]: o for o in d2["outputs"]}
    assert out["label"]["data"] == [LABELS[i] for i in want.argmax(1)]
    # pixels of the wrong size are refused naming the input
    assert s3 == 400 and "input 'pixel_values' has shape [1, 3, 64, 64], expected " \
        "[-1, 3, 32, 32]" in d3["error"]


def test_the_classification_extension_gives_the_top_labels(gateway, jpegs):
    want = expected(gateway, jpegs[:2])
    body, headers = image_request(jpegs[:2], outputs=[
        {"name": "probabilities", "parameters": {"classification": 3}}, {"name": "label"}])
    status, doc = asyncio.run(call(gateway, body, headers))
    assert status == 200, doc
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["probabilities"]["datatype"] == "BYTES" and out["probabilities"]["shape"] == [2, 3]
    for r in range(2):
        order = np.argsort(-want[r])[:3]
        got = out["probabilities"]["data"][3 * r:3 * r + 3]
        assert [g.split(":", 1)[1] for g in got] == [f"{i}:{LABELS[i]}" for i in order]


def test_a_broken_image_fails_only_its_own_request(gateway, jpegs):
    broken = jpegs[1][: len(jpegs[1]) // 2]

    async def main():
        return await asyncio.gather(
            call(gateway, *image_request(jpegs[:2])),
            call(gateway, *image_request([jpegs[0], broken])),
            call(gateway, *image_request(jpegs[2:4])))

    (s1, _), (s2, d2), (s3, _) = asyncio.run(main())
    assert (s1, s2, s3) == (200, 400, 200)
    assert "input 'image' element 1: the JPEG file is truncated or corrupt" in d2["error"]
    assert len(gateway.calls) == 1  # the good ones still shared a batch; no bisection


@pytest.mark.parametrize("case, status, message", [
    ("bomb", 413, "input 'image' element 1: 8000x8000 pixels is more than this version's limit"),
    ("gif", 400, "input 'image' element 0: not an image this version takes"),
    ("text", 400, "input 'image' element 0: not an image this version takes"),
    ("bad-url", 400, "input 'image' element 0: the data URL's base64 is invalid"),
])
def test_hostile_images_are_refused_naming_the_element(gateway, jpegs, case, status, message):
    images = {"bomb": [jpegs[0], png_bomb(8000, 8000)], "gif": [encode(photos()[0], "GIF")],
              "text": [b"The weather in Lyon is mild today."],
              "bad-url": [b"data:image/png;base64,@@@"]}[case]
    s, doc = asyncio.run(call(gateway, *image_request(images)))
    assert s == status and message in doc["error"], doc
    assert not gateway.calls


def test_a_request_over_the_pixel_budget_is_refused(gateway, jpegs, monkeypatch):
    monkeypatch.setenv("OPTISERVE_MAX_REQUEST_PIXELS", "50000")
    S.settings.cache_clear()
    try:
        async def main():
            return (await call(gateway, *image_request(jpegs[:1])),  # 160x120 = 19200
                    await call(gateway, *image_request(jpegs[:3])))

        (s, doc), (s2, d2) = asyncio.run(main())
        assert s == 200, doc
        s, doc = s2, d2
        assert s == 413 and "more than the limit of 50000 pixels per request" in doc["error"]
    finally:
        monkeypatch.delenv("OPTISERVE_MAX_REQUEST_PIXELS")
        S.settings.cache_clear()


def test_an_image_larger_than_max_element_bytes_is_taken(gateway):
    big = encode(photos()[0], "PNG")
    assert len(big) > 64 * 1024  # the text element limit: an image is bounded by the body
    s, doc = asyncio.run(call(gateway, *image_request([big])))
    assert s == 200, doc


def test_metadata_and_config_show_the_image_and_pixel_inputs(gateway):
    meta = gateway.model_metadata("pets")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["parameters"]["labels"] == LABELS
    assert meta["parameters"]["pixel_input"]["name"] == "pixel_values"
    assert meta["parameters"]["pixel_input"]["shape"] == [-1, 3, 32, 32]
    assert meta["parameters"]["image_preprocessing"]["resize_to"] == 36
    cfg = gateway.model_config("pets")
    assert cfg["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": [1]}]
    assert "pixel_values" in cfg["parameters"]["pixel_input"]["string_value"]


def test_shadow_compares_image_versions(gateway, jpegs, monkeypatch):
    import serving.tasks.image as image_task

    decoded = []

    def counting(images, *a, **k):
        decoded.append(len(images))
        return preprocess(images, *a, **k)

    monkeypatch.setattr(image_task, "preprocess", counting)
    v1, v2 = gateway.v
    gateway.reconfigure({"models": {"pets": {"versions": {v1: {}, v2: {}}, "stable": v1,
                                             "canary": v2, "canary_weight": 0.0,
                                             "shadow": 1.0}}})

    async def main():
        out = await call(gateway, *image_request(jpegs[:3]))
        await asyncio.sleep(0.3)
        return out

    status, _ = asyncio.run(main())
    assert status == 200
    rec = gateway.recorder
    scores = [c[3] for c in rec.of(M.SHADOW_AGREEMENT)]
    assert scores == [1.0, 1.0, 1.0]  # the same weights: the same top-1 on every image
    assert {c[0] for c in gateway.calls} == {v1, v2}
    # the same preprocessing: the mirror ran on the served request's pixels, decoded once
    assert decoded == [3]


def test_the_openapi_document_has_an_image_example_that_the_gateway_answers(gateway):
    doc = gateway.openapi()
    infer = doc["paths"]["/v2/models/{model_name}/infer"]["post"]
    examples = infer["requestBody"]["content"]["application/json"]["examples"]
    assert "pixel_values" in examples["pets"]["description"]
    assert "pixel_values" in doc["components"]["schemas"]["RequestInput"]["properties"]["name"][
        "enum"]
    answers = infer["responses"]["200"]["content"]["application/json"]["examples"]
    assert answers["pets-labels"]["value"]["outputs"][1]["data"] == [LABELS[0]]

    async def main():
        return [await call(gateway, orjson.dumps(examples[k]["value"]))
                for k in ("pets", "pets-class-count")]

    (s1, d1), (s2, d2) = asyncio.run(main())
    assert s1 == 200 and d1["outputs"][1]["data"][0] in LABELS, d1
    assert s2 == 200 and d2["outputs"][0]["shape"] == [1, 5], d2
