"""Hugging Face models end to end: tiny BERT, DistilBERT and RoBERTa classifiers and a token
classifier built offline, optimized and published by the real CLI, served by real Ray Serve,
queried with the real tritonclient, and compared with transformers' own pipeline on the same
directories (the reference variant: identical labels and entity spans; INT8: its artifact's
own answers, labels agreeing as its manifest measured)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from optimizers.sources.minilm import DATA
from optimizers.validation import read_texts
from serving.config import build_serve_config
from serving.repository import ModelRepository
from tests.helpers import ServeProcess, run_cli
from tests.serving.conftest import version_of

pytestmark = pytest.mark.slow

TEXTS = read_texts(DATA / "minilm_validation.txt")[:24] + [
    "Marie Curie met Albert Einstein in Brussels in 1911.", "ok"]
CLASSIFIERS = ("bert", "distilbert", "roberta")


@pytest.fixture(scope="module")
def server(hf_build, tmp_path_factory):
    repo_dir = hf_build[0]
    refs = [(m, version_of(repo_dir, m, "torch-fp32")) for m in (*CLASSIFIERS, "ner")]
    refs += [(m, version_of(repo_dir, m, "onnx-int8-dynamic")) for m in ("bert", "ner")]
    doc = build_serve_config(str(repo_dir), refs, version_cpus=0.25)
    proc = ServeProcess(doc, tmp_path_factory.mktemp("hf-serve")).start()
    proc.doc = doc
    proc.repo = ModelRepository(repo_dir)
    proc.v = {(m, proc.repo.manifest(m, v).variant): v for m, v in refs}
    yield proc
    assert proc.stop() == 0


def client(server):
    import tritonclient.http as th

    return th.InferenceServerClient(f"127.0.0.1:{server.port}")


def text_input(texts):
    import tritonclient.http as th

    x = th.InferInput("text", [len(texts)], "BYTES")
    x.set_data_from_numpy(np.array(texts, dtype=object))
    return x


def pipeline_probabilities(directory, labels, texts) -> np.ndarray:
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(directory), top_k=None)
    return np.array([[next(x["score"] for x in row if x["label"] == name) for name in labels]
                     for row in pipe(texts)])


def test_classifiers_answer_as_transformers_pipeline_does(server, hf_dirs):
    import tritonclient.http as th

    c = client(server)
    for model in CLASSIFIERS:
        version = server.v[(model, "torch-fp32")]
        meta = c.get_model_metadata(model, str(version))
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
        labels = server.repo.manifest(model, version).postprocessing.labels
        res = c.infer(model, [text_input(TEXTS)], model_version=str(version),
                      outputs=[th.InferRequestedOutput("probabilities"),
                               th.InferRequestedOutput("label")])
        want = pipeline_probabilities(hf_dirs[model], labels, TEXTS)
        np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-4)
        assert [x.decode() for x in res.as_numpy("label")] == [labels[i] for i in
                                                                want.argmax(1)]
        assert len(set(want.argmax(1))) > 1, model  # the labels compared say something


def in_process_answer(server, model: str, version: int, texts: list[str]
                      ) -> dict[str, np.ndarray]:
    """The version's own artifact answering ``texts`` through the gateway's code in this
    process, under the served gateway config (so the same tokenization, length groups and model
    runs) and without Ray: what the served answer must equal."""
    import asyncio

    from serving.config import gateway_user_config
    from serving.gateway import Gateway
    from serving.protocol import decode_response, encode_infer_request
    from serving.runtimes import load_runtime

    ref = server.repo.get(model, version)
    runtime = load_runtime(ref.manifest, ref.path)

    def backend(name, v):
        async def run(feeds):
            return [runtime.run(f) for f in feeds]
        return run

    async def main():
        gateway = Gateway(str(server.repo.root), backend)
        gateway.reconfigure(gateway_user_config(server.doc))
        body, headers = encode_infer_request({"text": np.array(texts, dtype=object)})

        async def read_body(limit):
            return body

        try:
            status, out, out_headers = await gateway.handle_infer(model, str(version), read_body,
                                                                  headers)
        finally:
            await gateway.close()
        assert status == 200, out
        return decode_response(out, out_headers)[1]

    return asyncio.run(main())


def test_an_int8_classifier_answers_as_its_artifact_and_agrees_as_measured(server, hf_dirs):
    """Served INT8 answers are the artifact's own for the same batches (dynamic INT8 scales
    activations per batch, so that is what the optimizer measured); against transformers'
    pipeline, its labels disagree no more than its measured top-1 agreement allows. Its
    probabilities' distance to the pipeline on rows the optimizer never saw is the artifact's,
    not serving's: a tiny random model's INT8 spans 0.08-0.37 there between builds."""
    import tritonclient.http as th

    c = client(server)
    version = server.v[("bert", "onnx-int8-dynamic")]
    fidelity = server.repo.manifest("bert", version).measurements.fidelity
    labels = server.repo.manifest("bert", version).postprocessing.labels
    res = c.infer("bert", [text_input(TEXTS)], model_version=str(version),
                  outputs=[th.InferRequestedOutput("probabilities"),
                           th.InferRequestedOutput("label")])
    got = res.as_numpy("probabilities")
    local = in_process_answer(server, "bert", version, TEXTS)
    np.testing.assert_allclose(got, local["probabilities"], atol=1e-5)
    assert list(res.as_numpy("label")) == list(local["label"])
    want = pipeline_probabilities(hf_dirs["bert"], labels, TEXTS)
    # the label is the served probabilities' top class, and the pipeline's on most rows: a label
    # map out of order or shifted disagrees on about two thirds of them (3 classes); INT8 on
    # these unseen rows disagreed on 0-4 of 26 between builds (held-out agreement 0.96-0.97)
    assert [x.decode() for x in res.as_numpy("label")] == [labels[i] for i in got.argmax(1)]
    disagree = int((got.argmax(1) != want.argmax(1)).sum())
    assert disagree <= len(TEXTS) // 4, (disagree, fidelity.top1_agreement)


def test_class_count_over_tritonclient(server):
    import tritonclient.http as th

    c = client(server)
    version = server.v[("roberta", "torch-fp32")]
    labels = server.repo.manifest("roberta", version).postprocessing.labels
    res = c.infer("roberta", [text_input(TEXTS[:4])], model_version=str(version), outputs=[
        th.InferRequestedOutput("probabilities", class_count=2),
        th.InferRequestedOutput("label")])
    top = res.as_numpy("probabilities")
    assert top.shape == (4, 2)
    plain = c.infer("roberta", [text_input(TEXTS[:4])], model_version=str(version)
                    ).as_numpy("probabilities")
    for r in range(4):
        parts = [x.decode().split(":") for x in top[r]]
        order = np.argsort(-plain[r], kind="stable")[:2]
        assert [(int(i), name) for _, i, name in parts] == [(i, labels[i]) for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parts], plain[r, order], atol=1e-6)
        assert res.as_numpy("label")[r].decode() == parts[0][2]


def test_token_classifier_finds_the_pipelines_entities(server, hf_dirs):
    from transformers import pipeline

    c = client(server)
    pipe = pipeline("token-classification", model=str(hf_dirs["ner"]),
                    aggregation_strategy="simple")
    want = pipe(TEXTS)
    spans = {}
    for variant in ("torch-fp32", "onnx-int8-dynamic"):
        version = server.v[("ner", variant)]
        res = c.infer("ner", [text_input(TEXTS)], model_version=str(version))
        got = [json.loads(x) for x in res.as_numpy("entities")]
        labels, offsets = res.as_numpy("token_labels"), res.as_numpy("token_offsets")
        assert labels.shape[0] == len(TEXTS) and offsets.shape == (*labels.shape, 2)
        spans[variant] = {(i, e["entity_group"], e["start"], e["end"])
                          for i, row in enumerate(got) for e in row}
        for text, row in zip(TEXTS, got):
            assert all(e["word"] == text[e["start"]:e["end"]] for e in row)
    reference = {(i, e["entity_group"], e["start"], e["end"])
                 for i, row in enumerate(want) for e in row}
    assert spans["torch-fp32"] == reference and reference
    fidelity = server.repo.manifest("ner", server.v[("ner", "onnx-int8-dynamic")]
                                    ).measurements.fidelity
    both = len(spans["onnx-int8-dynamic"]) + len(reference)
    f1 = 2 * len(spans["onnx-int8-dynamic"] & reference) / both
    # the served texts are a small sample beside the held-out rows the F1 was measured on (and
    # the time-bounded INT8 search builds a different model under load): the allowance is
    # three standard errors of an F1 on this many entities, at least 0.1
    f = fidelity.entity_f1
    allowed = max(0.1, 3 * math.sqrt(f * (1 - f) / len(reference)))
    assert f1 >= min(0.8, f - allowed), (f1, f, allowed, len(reference))


def test_a_text_longer_than_the_model_is_cut_and_the_response_says_so(server):
    c = client(server)
    for model in ("bert", "ner"):
        version = server.v[(model, "torch-fp32")]
        res = c.infer(model, [text_input(["short", "word " * 400, "ok"])],
                      model_version=str(version))
        assert res.get_response()["parameters"] == {"truncated": [1]}
        assert "parameters" not in c.infer(model, [text_input(["short"])],
                                           model_version=str(version)).get_response()


def test_bench_sends_text_to_any_text_model(server):
    for model in ("roberta", "ner"):
        r = run_cli("bench", server.url, "--model", model, "--concurrency", "2",
                    "--requests", "20", "--warmup", "0", "--duration", "20", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] == doc["requests"] >= 20 and not doc["errors"], doc


def test_metadata_and_openapi_say_what_the_outputs_mean(server):
    from tests.helpers import http

    c = client(server)
    meta = c.get_model_metadata("ner")
    assert [o["name"] for o in meta["outputs"]] == ["token_labels", "token_offsets", "entities"]
    assert meta["parameters"]["task"] == "token-classification"
    assert meta["parameters"]["labels"][0] == "O"
    status, _, raw = http("GET", server.url + "/v2/openapi.json")
    doc = json.loads(raw)
    examples = doc["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]["200"][
        "content"]["application/json"]["examples"]
    assert status == 200 and {"ner-entities", "bert-class-count"} <= set(examples)
