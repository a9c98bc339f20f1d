"""What a text version's answers mean, without Ray: label names, entities as transformers'
pipeline groups them, Triton's classification extension, truncated rows; and the gateway's
request path with a real runtime on tiny Hugging Face models optimized by the real pipeline."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import orjson
import pytest

from serving.protocol import InvalidInput, decode_request
from serving.repository import ModelRepository, Signature, TensorSpec
from serving.tasks import check_class_counts, class_strings, entities, token_label_agreement

TEXTS = ["Marie Curie met Albert Einstein in Brussels in 1911.", "ok",
         "The train to Lyon was delayed by forty minutes because of a signal failure near Dijon."]


# ---- entities: transformers' aggregation_strategy="simple" ------------------------------------

def _pipeline_groups(labels, scores, offsets, text):
    """transformers' own grouping (TokenClassificationPipeline.aggregate + group_entities +
    the "O" filter), fed the same tokens."""
    from transformers import TokenClassificationPipeline
    from transformers.pipelines.token_classification import AggregationStrategy

    class _Tok:
        def convert_tokens_to_string(self, tokens):
            return " ".join(tokens)

    class _Model:
        class config:
            id2label = dict(enumerate(sorted(set(labels))))

    p = object.__new__(TokenClassificationPipeline)
    p.tokenizer, p.model = _Tok(), _Model()
    index = {v: k for k, v in _Model.config.id2label.items()}
    pre = []
    for i, (label, score, (s, e)) in enumerate(zip(labels, scores, offsets)):
        vec = np.zeros(len(index))
        vec[index[label]] = score
        pre.append({"word": text[s:e], "scores": vec, "start": s, "end": e, "index": i,
                    "is_subword": False})
    grouped = p.aggregate(pre, AggregationStrategy.SIMPLE)
    return [(g["entity_group"], g["start"], g["end"], round(float(g["score"]), 6))
            for g in grouped if g["entity_group"] != "O"]


@pytest.mark.parametrize("labels", [
    ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC", "O", "O"],
    ["I-PER", "I-PER", "B-PER", "B-PER", "I-LOC", "I-LOC", "O", "B-ORG", "I-PER"],
    ["O", "O", "O", "O", "O", "O", "O", "O", "O"],
    ["PER", "PER", "O", "LOC", "B-LOC", "MISC", "MISC", "O", "I-MISC"],  # outside B-/I-
])
def test_entities_are_grouped_as_transformers_pipeline_groups_them(labels):
    text = TEXTS[0]
    words = [(0, 5), (6, 11), (12, 15), (16, 22), (23, 31), (32, 34), (35, 43), (44, 46),
             (47, 51)]
    scores = np.linspace(0.4, 0.9, len(labels))
    ours = [(e["entity_group"], e["start"], e["end"], round(e["score"], 6))
            for e in entities(text, labels, scores, words)]
    assert ours == _pipeline_groups(labels, scores, words, text)
    for e in entities(text, labels, scores, words):
        assert e["word"] == text[e["start"]:e["end"]]


def test_token_label_agreement_counts_real_tokens_only():
    a = np.array([[b"O", b"B-PER", b""], [b"O", b"O", b"O"]], dtype=object)
    b = np.array([[b"O", b"I-PER", b"", b""], [b"O", b"O", b"B-LOC", b""]], dtype=object)
    assert token_label_agreement(a, b).tolist() == [0.5, pytest.approx(2 / 3)]


# ---- Triton's classification extension --------------------------------------------------------

def test_class_strings_are_score_index_label_best_first_as_triton_prints_them():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    out = class_strings(scores, 2, ["NEG", "NEU", "POS"])
    assert out.shape == (2, 2)
    assert out[0].tolist() == [b"0.700000:1:NEU", b"0.200000:2:POS"]
    assert out[1].tolist() == [b"0.500000:0:NEG", b"0.250000:1:NEU"]  # ties: lower index first
    assert class_strings(scores, 10, None).shape == (2, 3)  # at most every class, no labels
    assert class_strings(scores, 1, None)[0, 0] == b"0.700000:1"


def test_class_count_is_parsed_and_checked_against_the_signature():
    body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "data": ["hi"]}],
                         "outputs": [{"name": "probabilities",
                                      "parameters": {"classification": 3}}]})
    req = decode_request(body, {})
    assert req.classification == {"probabilities": 3}
    for bad in (0, -1, "3", True, 1.5):
        doc = json.loads(body)
        doc["outputs"][0]["parameters"]["classification"] = bad
        with pytest.raises(InvalidInput, match=r"outputs\[0\]\.parameters\.classification"):
            decode_request(orjson.dumps(doc), {})
    sig = Signature(inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
                    outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 3]),
                             TensorSpec(name="label", datatype="BYTES", shape=[-1])])
    check_class_counts({"probabilities": 2}, sig)
    with pytest.raises(InvalidInput, match="outputs.label.parameters.classification"):
        check_class_counts({"label": 2}, sig)


# ---- the gateway's request path on tiny Hugging Face models -----------------------------------

@pytest.fixture(scope="module")
def hf_gateway(hf_dirs, tmp_path_factory):
    """torch-fp32 (reference) and onnx-fp32 versions of the tiny classifier, token classifier
    and a multi-label classifier, published by the real pipeline; a Gateway on them with the
    real runtimes as its backend (only the Ray hop is left out)."""
    from optimizers import OptimizeOptions, optimize
    from serving.gateway import Gateway
    from serving.runtimes import load_runtime
    from tests.support import hf_models

    root = tmp_path_factory.mktemp("hf-gateway")
    multi = hf_models.bert_classifier(root / "multi", labels=["sports", "politics", "tech"],
                                      multi_label=True)
    repo_dir = root / "repo"
    for name, d in (("cls", hf_dirs["bert"]), ("ner", hf_dirs["ner"]), ("multi", multi)):
        optimize(OptimizeOptions(source=str(d), name=name, variants=["torch-fp32", "onnx-fp32"],
                                 repository=str(repo_dir), publish="all", min_time_s=0.05,
                                 batch_sizes=[1, 8]))
    repo = ModelRepository(repo_dir)
    runtimes, calls = {}, []

    def backend(model, version):
        ref = repo.get(model, version)
        rt = runtimes.setdefault((model, version), load_runtime(ref.manifest, ref.path))

        async def run(feeds):
            calls.append((model, version, [f["input_ids"].shape for f in feeds]))
            return [rt.run(f) for f in feeds]
        return run

    gw = Gateway(str(repo_dir), backend)
    gw.loop = asyncio.new_event_loop()  # one loop for the module: the batchers live on it
    gw.reconfigure({"models": {m: {"versions": {v: {} for v in repo.versions(m)},
                                   "stable": max(repo.versions(m))}
                               for m in ("cls", "ner", "multi")}})
    gw.repo_, gw.calls, gw.dirs = repo, calls, {"cls": hf_dirs["bert"], "ner": hf_dirs["ner"],
                                                "multi": multi}
    yield gw
    gw.loop.run_until_complete(gw.close())
    gw.loop.close()


def infer(gw, model, texts, outputs=None, version=None):
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                       "data": texts}]}
    if outputs:
        doc["outputs"] = outputs
    body = orjson.dumps(doc)

    async def read(limit):
        return body

    async def go():
        return await gw.handle_infer(model, version, read, {})

    status, out, _ = gw.loop.run_until_complete(go())
    return status, orjson.loads(out)


def outputs_of(doc) -> dict:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}


def test_classifier_answers_probabilities_and_label_names(hf_gateway):
    from transformers import pipeline

    status, doc = infer(hf_gateway, "cls", TEXTS)
    assert status == 200, doc
    out = outputs_of(doc)
    labels = hf_gateway.model_metadata("cls")["parameters"]["labels"]
    assert out["probabilities"].shape == (3, 3) and out["label"].shape == (3,)
    pipe = pipeline("text-classification", model=str(hf_gateway.dirs["cls"]), top_k=None)
    for row, probs, label in zip(pipe(TEXTS), out["probabilities"], out["label"]):
        want = [next(x["score"] for x in row if x["label"] == name) for name in labels]
        np.testing.assert_allclose(probs, want, atol=1e-4)
        assert label == labels[int(np.argmax(want))]
    assert "parameters" not in doc  # nothing truncated


def test_class_count_returns_the_top_classes_as_strings(hf_gateway):
    status, doc = infer(hf_gateway, "cls", TEXTS[:2], outputs=[
        {"name": "probabilities", "parameters": {"classification": 2}}, {"name": "label"}])
    assert status == 200, doc
    out = outputs_of(doc)
    assert out["probabilities"].shape == (2, 2)
    _, plain = infer(hf_gateway, "cls", TEXTS[:2])
    probs = outputs_of(plain)["probabilities"]
    labels = hf_gateway.model_metadata("cls")["parameters"]["labels"]
    for r in range(2):
        top = np.argsort(-probs[r], kind="stable")[:2]
        parts = [s.split(":") for s in out["probabilities"][r]]
        assert [(int(i), label) for _, i, label in parts] == [(i, labels[i]) for i in top]
        # "%f" of the float32 score (the JSON numbers above are its shortest repr)
        assert all(len(score.split(".")[1]) == 6 for score, _, _ in parts)
        np.testing.assert_allclose([float(p[0]) for p in parts], probs[r, top], atol=1e-6)
        assert out["label"][r] == labels[top[0]]
    status, doc = infer(hf_gateway, "cls", TEXTS[:1], outputs=[
        {"name": "label", "parameters": {"classification": 1}}])
    assert status == 400 and "outputs.label.parameters.classification" in doc["error"]


def test_multi_label_classifier_gives_independent_probabilities(hf_gateway):
    from transformers import pipeline

    status, doc = infer(hf_gateway, "multi", TEXTS)
    assert status == 200, doc
    out = outputs_of(doc)
    labels = hf_gateway.model_metadata("multi")["parameters"]["labels"]
    pipe = pipeline("text-classification", model=str(hf_gateway.dirs["multi"]), top_k=None)
    for row, probs, predicted in zip(pipe(TEXTS), out["probabilities"], out["predicted"]):
        want = [next(x["score"] for x in row if x["label"] == name) for name in labels]
        np.testing.assert_allclose(probs, want, atol=1e-4)  # sigmoids, not a softmax
        assert predicted.tolist() == [p >= 0.5 for p in want]
    assert not np.allclose(out["probabilities"].sum(1), 1.0)


def test_token_classifier_answers_labels_offsets_and_the_pipelines_entities(hf_gateway):
    from transformers import pipeline

    status, doc = infer(hf_gateway, "ner", TEXTS)
    assert status == 200, doc
    out = outputs_of(doc)
    width = out["token_labels"].shape[1]
    assert out["token_offsets"].shape == (3, width, 2) and out["entities"].shape == (3,)
    pipe = pipeline("token-classification", model=str(hf_gateway.dirs["ner"]),
                    aggregation_strategy="simple")
    tokens = pipeline("token-classification", model=str(hf_gateway.dirs["ner"]),
                      aggregation_strategy="none", ignore_labels=[])
    found = 0
    for text, ents, labels, offsets, want, per_token in zip(
            TEXTS, out["entities"], out["token_labels"], out["token_offsets"], pipe(TEXTS),
            tokens(TEXTS)):
        got = json.loads(ents)
        assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [
            (e["entity_group"], e["start"], e["end"]) for e in want]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want],
                                   atol=1e-4)
        assert all(e["word"] == text[e["start"]:e["end"]] for e in got)
        real = [x for x in labels.tolist() if x]
        assert real == [t["entity"] for t in per_token]
        assert offsets[:len(real)].tolist() == [[t["start"], t["end"]] for t in per_token]
        assert (offsets[len(real):] == -1).all()
        found += len(got)
    assert found  # the tiny model finds entities: the comparison above compared something


def test_truncated_rows_are_named_in_the_response(hf_gateway):
    long_text = "word " * 500
    for model in ("cls", "ner"):
        status, doc = infer(hf_gateway, model, ["short one", long_text, "ok"])
        assert status == 200, doc
        assert doc["parameters"] == {"truncated": [1]}
    pre = hf_gateway.repo_.manifest("cls", 1).preprocessing
    assert pre.truncation_side == "right" and pre.max_length == 64


def test_requests_batched_together_get_their_own_rows(hf_gateway):
    """Token outputs of requests sharing a batch are cut per request, each padded to its own
    longest row."""
    texts = [[TEXTS[0]], [TEXTS[1], TEXTS[2]], ["word " * 200]]

    async def go():
        async def one(t):
            body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES",
                                             "shape": [len(t)], "data": t}]})

            async def read(limit):
                return body
            return await hf_gateway.handle_infer("ner", None, read, {})
        return await asyncio.gather(*[one(t) for t in texts])

    hf_gateway.calls.clear()
    together = [orjson.loads(r[1]) for r in hf_gateway.loop.run_until_complete(go())]
    assert len(hf_gateway.calls) < len(texts)  # they did share a batch
    for t, doc in zip(texts, together):
        _, alone = infer(hf_gateway, "ner", t)
        assert outputs_of(doc)["entities"].tolist() == outputs_of(alone)["entities"].tolist()
        assert outputs_of(doc)["token_labels"].shape == outputs_of(alone)["token_labels"].shape
        assert doc.get("parameters") == alone.get("parameters")


def test_shadow_agreement_of_token_classifiers_compares_token_labels(hf_gateway):
    from serving.gateway import agreement

    _, a = infer(hf_gateway, "ner", TEXTS, version="1")
    _, b = infer(hf_gateway, "ner", TEXTS, version="2")
    la, lb = outputs_of(a)["token_labels"], outputs_of(b)["token_labels"]
    la, lb = np.array([x.encode() for x in la.ravel()], dtype=object).reshape(la.shape), \
        np.array([x.encode() for x in lb.ravel()], dtype=object).reshape(lb.shape)
    assert agreement("token-classification", la, lb).tolist() == [1.0, 1.0, 1.0]
    flipped = la.copy()
    flipped[0, 0] = b"B-ZZZ"
    assert agreement("token-classification", la, flipped)[0] < 1.0


def test_openapi_has_examples_in_each_tasks_terms_and_they_fit_the_schema(hf_gateway):
    import jsonschema
    from openapi_spec_validator import validate

    doc = hf_gateway.openapi()
    validate(doc)
    post = doc["paths"]["/v2/models/{model_name}/infer"]["post"]
    requests = post["requestBody"]["content"]["application/json"]["examples"]
    responses = post["responses"]["200"]["content"]["application/json"]["examples"]
    assert {"cls", "cls-class-count", "ner", "multi"} <= set(requests)
    assert {"cls-labels", "cls-class-count", "ner-entities", "ner-truncated"} <= set(responses)
    schemas = {"$defs": doc["components"]["schemas"]}
    refs = lambda s: json.loads(json.dumps(s).replace("#/components/schemas/", "#/$defs/"))  # noqa: E731
    for examples, name in ((requests, "InferenceRequest"), (responses, "InferenceResponse")):
        schema = refs({**schemas, "$ref": f"#/$defs/{name}"})
        for key, example in examples.items():
            jsonschema.validate(example["value"], schema)
    # the request examples are answered as documented
    for key in ("cls-class-count", "ner"):
        value = requests[key]["value"]
        status, answer = infer(hf_gateway, key.split("-")[0], value["inputs"][0]["data"],
                               value.get("outputs"))
        assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == [
        o["name"] for o in responses["ner-entities"]["value"]["outputs"]]
