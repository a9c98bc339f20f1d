"""Hugging Face directories as sources: the task each architecture means, what is refused and
why (through the real CLI, nothing published), and the toolbox on tiny models built offline."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from optimizers.errors import SourceError
from optimizers.sources import resolve_source
from serving.repository import ModelRepository
from tests.helpers import run_cli
from tests.support import hf_models

FAST = ["--min-time", "0.05", "--batch-sizes", "1,8", "-q"]


def test_each_architecture_is_its_task(hf_dirs):
    for key, task in (("bert", "classification"), ("distilbert", "classification"),
                      ("roberta", "classification"), ("ner", "token-classification")):
        src = resolve_source(str(hf_dirs[key]))
        assert src.task == task, key
        assert src.signature.inputs[0].name == "text" and src.is_text
        assert src.postprocessing.labels == (hf_models.NER_LABELS if key == "ner"
                                             else hf_models.SENTIMENT)
        assert src.source.kind == "huggingface" and len(src.source.sha256) == 64
    cls = resolve_source(f"hf:{hf_dirs['bert']}")  # the explicit form
    assert [o.name for o in cls.signature.outputs] == ["probabilities", "label"]
    ner = resolve_source(str(hf_dirs["ner"]))
    assert [o.name for o in ner.signature.outputs] == ["token_labels", "token_offsets",
                                                       "entities"]
    # RoBERTa pads with its own pad token and positions start after it
    roberta = resolve_source(str(hf_dirs["roberta"]))
    assert roberta.preprocessing.pad_id == 1
    assert roberta.preprocessing.max_length == hf_models.MAX_POSITIONS


def test_minilm_is_its_package_directory_through_the_same_source():
    from optimizers.sources.minilm import package_dir as model_dir

    builtin, direct = resolve_source("minilm"), resolve_source(str(model_dir()), name="minilm")
    assert builtin.source.kind == "builtin" and direct.source.kind == "huggingface"
    for a, b in ((builtin, direct),):
        assert a.signature == b.signature and a.preprocessing == b.preprocessing
        assert a.task == b.task == "embedding"
    # the served contract the serving and rollout suites rely on
    assert [(t.name, t.datatype, t.shape) for t in builtin.signature.inputs] == [
        ("text", "BYTES", [-1])]
    assert [(t.name, t.datatype, t.shape) for t in builtin.signature.outputs] == [
        ("embedding", "FP32", [-1, 384])]
    assert builtin.preprocessing.max_length == 256  # sentence_bert_config.json, not 512
    assert "mean pooling, L2-normalised" in " ".join(builtin.notes)


def test_feature_extraction_pools_as_asked(hf_dirs, tmp_path):
    import torch
    from transformers import AutoModel

    from serving.runtimes import TextEncoder

    # an encoder without a head: feature extraction, mean pooling unless --pooling says cls
    enc_dir = tmp_path / "encoder"
    AutoModel.from_pretrained(str(hf_dirs["bert"])).save_pretrained(str(enc_dir))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (enc_dir / f).write_bytes((hf_dirs["bert"] / f).read_bytes())
    model = AutoModel.from_pretrained(str(enc_dir)).eval()
    for pooling in (None, "mean", "cls"):
        src = resolve_source(str(enc_dir), pooling=pooling)
        assert src.task == "embedding" and src.signature.outputs[0].shape == [-1, 64]
        encoder = TextEncoder(src.extra_files["tokenizer.json"], src.preprocessing)
        batch = encoder.pad(encoder.encode(["a first sentence", "and a longer second one"]))
        got = src.reference(batch)["embedding"]
        with torch.inference_mode():
            hidden = model(input_ids=torch.from_numpy(batch["input_ids"]),
                           attention_mask=torch.from_numpy(batch["attention_mask"])
                           ).last_hidden_state.numpy()
        mask = batch["attention_mask"][..., None]
        want = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
        np.testing.assert_allclose(got, want, atol=1e-5)
    # --task embedding drops a classifier's head
    assert resolve_source(str(hf_dirs["bert"]), task="embedding").task == "embedding"
    with pytest.raises(SourceError, match="sentence-transformers model; its modules.json"):
        from optimizers.sources.minilm import package_dir as model_dir

        resolve_source(str(model_dir()), pooling="cls")


def _sentence_transformers_dir(hf_dirs, out: Path) -> Path:
    """A sentence-transformers directory saved by the library itself: the tiny BERT's encoder,
    cls and max pooling concatenated, no Normalize (not minilm's mean + Normalize)."""
    from sentence_transformers import SentenceTransformer, models

    encoder = models.Transformer(str(hf_dirs["bert"]))
    pooling = models.Pooling(encoder.get_word_embedding_dimension(),
                             pooling_mode_cls_token=True, pooling_mode_max_tokens=True,
                             pooling_mode_mean_tokens=False)
    SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(out))
    return out


def test_each_text_task_is_optimized_published_and_answers_as_its_library(hf_dirs, tmp_path):
    """Sentence embeddings (a modules.json other than minilm's) and feature extraction
    (--pooling cls) through the real CLI, offline: published, judged on cosine, and the
    published version answers as sentence-transformers / transformers do."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from serving.runtimes import TextEncoder, load_runtime

    st_dir = _sentence_transformers_dir(hf_dirs, tmp_path / "st")
    texts = ["a first sentence", "and a longer second one, with more words in it", "ok"]
    repo_dir = tmp_path / "repo"
    for name, directory, args in (("st", st_dir, []),
                                  ("features", hf_dirs["bert"], ["--task", "embedding",
                                                                 "--pooling", "cls"])):
        r = run_cli("optimize", str(directory), "--name", name, "--variants",
                    "torch-fp32,onnx-fp32", "--publish", "all", "--repository", str(repo_dir),
                    *args, *FAST)
        assert r.returncode == 0, r.stdout + r.stderr
    st = SentenceTransformer(str(st_dir), device="cpu")
    bert = AutoModel.from_pretrained(str(hf_dirs["bert"])).eval()
    repo = ModelRepository(repo_dir)
    for name in ("st", "features"):
        assert len(repo.versions(name)) == 2, name
        for v in repo.versions(name):
            ref = repo.open(name, v)
            m = ref.manifest
            assert m.task == "embedding" and m.measurements.fidelity.cosine_min >= 0.999
            enc = TextEncoder(ref.file(m.preprocessing.tokenizer_file), m.preprocessing)
            batch = enc.pad(enc.encode(texts))
            got = load_runtime(m, ref.path).run(batch)["embedding"]
            if name == "st":
                want = st.encode(texts)  # cls and max concatenated, not normalised
                assert got.shape == (3, 128)
            else:
                with torch.inference_mode():
                    want = bert(input_ids=torch.from_numpy(batch["input_ids"]),
                                     attention_mask=torch.from_numpy(batch["attention_mask"])
                                     ).last_hidden_state[:, 0].numpy()
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_bin_weights_load_with_weights_only(hf_dirs, tmp_path):
    import torch
    from safetensors.torch import load_file

    # the older format: a torch pickle of the state dict
    d = hf_models.copy(hf_dirs["bert"], tmp_path / "bin")
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    src = resolve_source(str(d))
    assert "pytorch_model.bin" in src.notes[0]
    want = resolve_source(str(hf_dirs["bert"]))
    batch = {"input_ids": np.array([[2, 100, 200, 3]]), "attention_mask": np.ones((1, 4), int)}
    np.testing.assert_allclose(src.reference(batch)["probabilities"],
                               want.reference(batch)["probabilities"], atol=1e-6)

    # a pickle that would run code: weights_only refuses to unpickle it
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(SourceError, match="pytorch_model.bin"):
        resolve_source(str(d))
    assert not (tmp_path / "pwned").exists()


# ---- bad directories through the real CLI: a clear message, nothing published -----------------

def _broken(kind: str, hf_dirs, root: Path) -> tuple[Path, str]:
    d = hf_models.copy(hf_dirs["bert"], root / kind)
    if kind == "no-config":
        (d / "config.json").unlink()
        return d, "has no config.json"
    if kind == "no-task":
        hf_models.edit_config(d, architectures=["BertForQuestionAnswering"])
        return d, "architecture BertForQuestionAnswering is no task optiserve serves"
    if kind == "no-tokenizer":
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (d / f).unlink()
        return d, "has no usable tokenizer"
    if kind == "wrong-weights":
        hf_models.edit_config(d, hidden_size=96, intermediate_size=192)
        return d, "the weights do not fit"
    if kind == "wrong-labels":
        names = ["A", "B", "C", "D", "E"]
        hf_models.edit_config(d, id2label=dict(enumerate(names)),
                              label2id={n: i for i, n in enumerate(names)})
        return d, "the weights do not fit"
    if kind == "empty-labels":
        hf_models.edit_config(d, id2label={}, label2id={})
        return d, "id2label is empty"
    if kind == "remote-code":
        hf_models.edit_config(d, auto_map={"AutoModelForSequenceClassification":
                                           "modeling_mine.MyModel"})
        return d, "trust_remote_code is never implied"
    if kind == "unknown-type":
        hf_models.edit_config(d, model_type="my-own-bert")
        return d, "model_type 'my-own-bert' is not one transformers knows"
    if kind == "no-weights":
        (d / "model.safetensors").unlink()
        return d, "holds no weights"
    if kind == "regression":
        hf_models.edit_config(d, problem_type="regression")
        return d, "problem_type regression is a regression head"
    if kind == "foreign-tokenizer":
        hf_models.edit_config(d, vocab_size=500)
        return d, "not this model's tokenizer"
    raise AssertionError(kind)


BROKEN = ["no-config", "no-task", "no-tokenizer", "wrong-weights", "wrong-labels",
          "empty-labels", "remote-code", "unknown-type", "no-weights", "regression"]


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_directory_is_refused_with_the_reason(kind, hf_dirs, tmp_path):
    d, message = _broken(kind, hf_dirs, tmp_path)
    repo = tmp_path / "repo"
    r = run_cli("optimize", str(d), "--name", "broken", "--repository", str(repo),
                "--variants", "onnx-fp32", *FAST)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr
    assert not (repo / "broken").exists()  # nothing published


def test_a_foreign_tokenizer_is_refused(hf_dirs, tmp_path):
    d, message = _broken("foreign-tokenizer", hf_dirs, tmp_path)
    with pytest.raises(SourceError, match=message):
        resolve_source(str(d))


def test_options_that_do_not_fit_the_directory_are_refused(hf_dirs, tmp_path):
    repo = tmp_path / "repo"
    for args, message in (
            (["--task", "token-classification"], "needs a *ForTokenClassification model"),
            (["--pooling", "cls"], "--pooling applies to feature extraction"),
            (["--pooling", "max"], "--pooling must be mean or cls"),
            (["--labels", str(tmp_path / "labels.txt"), "--task", "embedding"],
             "--labels needs a classifier")):
        (tmp_path / "labels.txt").write_text("0\n1\n")
        r = run_cli("optimize", str(hf_dirs["bert"]), "--repository", str(repo),
                    "--variants", "onnx-fp32", *args, *FAST)
        assert r.returncode == 1 and message in " ".join(r.stderr.split()), r.stderr
    r = run_cli("optimize", str(tmp_path / "no-such-dir"), "--repository", str(repo), *FAST)
    assert r.returncode == 1 and "does not exist" in r.stderr, r.stderr
    assert not repo.exists() or not any(repo.iterdir())


def test_text_longer_than_the_model_is_truncated_as_the_manifest_says(hf_dirs, tmp_path):
    from serving.runtimes import TextEncoder

    src = resolve_source(str(hf_dirs["bert"]))
    enc = TextEncoder(src.extra_files["tokenizer.json"], src.preprocessing)
    out = enc.encode_batch(["word " * 300, "short", " ".join(["w"] * 62)])
    assert [len(r) for r in out.rows][0] == src.preprocessing.max_length == 64
    assert out.truncated == [True, False, False]  # 62 words + [CLS] [SEP] fit exactly

    # a tokenizer saved with truncation_side "left" keeps a long text's end, as transformers
    # would; the manifest carries the side to the gateway
    d = hf_models.copy(hf_dirs["bert"], tmp_path / "left")
    tok_config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**tok_config,
                                                         "truncation_side": "left"}))
    left = resolve_source(str(d))
    assert left.preprocessing.truncation_side == "left"
    long_text = "the first words " + "word " * 300 + "a final sentence"
    ids = {}
    for name, s in (("right", src), ("left", left)):
        e = TextEncoder(s.extra_files["tokenizer.json"], s.preprocessing).encode_batch(
            [long_text], keep=True)
        assert e.truncated == [True] and len(e.rows[0]) == 64
        ids[name] = e.rows[0]
    cls, *end = enc.tokenizer.encode("a final sentence").ids  # [CLS] a final sentence [SEP]
    assert ids["left"][0] == ids["right"][0] == cls  # special tokens stay where they are
    assert list(ids["left"][-len(end):]) == end
    assert list(ids["right"][-len(end):]) != end


# ---- the toolbox on tiny models: fidelity in each task's own terms ------------------------------

def test_classifiers_are_judged_on_top1_agreement_and_published_with_labels(hf_build):
    repo_dir, report_dir, runs = hf_build
    repo = ModelRepository(repo_dir)
    for name in ("bert", "distilbert", "roberta"):
        versions = [repo.manifest(name, v) for v in repo.versions(name)]
        assert {"torch-fp32", "onnx-fp32"} <= {m.variant for m in versions}, name
        for m in versions:
            assert m.schema_version == 2 and m.task == "classification"
            assert m.postprocessing.labels == hf_models.SENTIMENT
            f = m.measurements.fidelity
            assert f.top1_agreement >= 0.9 and f.max_prob_diff is not None
            assert f.rows == "held-out" and f.token_agreement is None and f.cosine_min is None
        report = (report_dir / name / "report.md").read_text()
        assert "## Time" in report and "| torch-fp32 |" in report
        assert "took " in runs[name].stdout  # where the time went, on the command line


def test_token_classifier_is_judged_on_token_agreement_and_entity_f1(hf_build, hf_dirs):
    from optimizers.fidelity import FidelityBudget, judge
    from optimizers.validation import load_validation, split_validation
    from serving.runtimes import load_runtime

    repo = ModelRepository(hf_build[0])
    src = resolve_source(str(hf_dirs["ner"]))
    vset = load_validation(src, None, None)
    held = split_validation(vset, 0.5, 0).held_out
    reference = held.gather([src.reference(b) for b in held.batches])
    for v in repo.versions("ner"):
        ref = repo.get("ner", v)
        m = ref.manifest
        f = m.measurements.fidelity
        assert m.task == "token-classification" and m.postprocessing.aggregation == "simple"
        assert 0.9 <= f.token_agreement <= 1 and 0.8 <= f.entity_f1 <= 1
        assert f.top1_agreement is None and f.budget.startswith("token-label agreement")
        if m.variant.endswith("fp32"):
            assert f.token_agreement == 1.0 and f.entity_f1 == 1.0
        # the claim reproduces from the published version on the same held-out rows
        runtime = load_runtime(m, ref.path)
        got = held.gather([runtime.run(b) for b in held.batches])
        again = judge(src, reference, got, FidelityBudget(min_top1=0.9, min_entity_f1=0.8),
                      held)
        assert again.token_agreement == pytest.approx(f.token_agreement, abs=0.01)
        assert again.entity_f1 == pytest.approx(f.entity_f1, abs=0.03)


def test_entity_f1_sees_a_changed_entity():
    """The entity F1 gate fails a candidate whose entities differ even where most tokens
    agree."""
    from optimizers.fidelity import FidelityBudget, TokenRows, compare

    labels = ["O", "B-PER", "I-PER"]
    text = "anna and bob met"
    offsets = [np.array([[0, 4], [5, 8], [9, 12], [13, 16]])]
    ref = np.zeros((1, 6, 3), np.float32)
    cand = np.zeros((1, 6, 3), np.float32)
    for i, (a, b) in enumerate(zip([1, 0, 1, 0], [1, 0, 1, 2])):  # "met" becomes I-PER
        ref[0, i + 1, a] = cand[0, i + 1, b] = 1.0
    tokens = TokenRows([text], [np.arange(1, 5)], offsets, labels)
    f = compare("token-classification", {"p": ref}, {"p": cand}, FidelityBudget(), tokens=tokens)
    assert f.token_agreement == 0.75 and f.entity_f1 == pytest.approx(0.5)
    assert not f.passed


def test_students_of_a_classifier_are_trained_on_its_probabilities(hf_dirs, tmp_path):
    r = run_cli("optimize", str(hf_dirs["bert"]), "--name", "bert", "--variants", "onnx-fp32",
                "--students", "l1", "--distill-steps", "30", "--publish", "none",
                "--repository", str(tmp_path / "repo"), "--min-agreement", "0.5", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    row = next(line for line in r.stdout.splitlines() if "student-l1/onnx-fp32" in line)
    assert "top-1" in row and "failed" not in row and "skipped" not in row
    r = run_cli("optimize", str(hf_dirs["distilbert"]), "--variants", "onnx-fp32",
                "--students", "l1", "--distill-steps", "5", "--publish", "none",
                "--repository", str(tmp_path / "repo"), *FAST)
    assert r.returncode == 0 and "student-l1" in r.stdout and "skipped" in r.stdout
    assert "cannot be pruned" in " ".join(r.stdout.split())


def test_labels_may_be_the_models_class_names_and_must_be_its_classes(hf_dirs, tmp_path):
    """--labels with id2label's names (or indices) adds F1 and ROC AUC; a name the model does
    not have or a class index past its classes is refused with the row, nothing published."""
    from optimizers.errors import ValidationDataError
    from optimizers.sources.minilm import DATA
    from optimizers.validation import read_labels, read_texts

    rows = len(read_texts(DATA / "minilm_validation.txt"))
    truth = np.random.default_rng(0).integers(0, 3, rows)
    names, indices = tmp_path / "names.txt", tmp_path / "indices.txt"
    names.write_text("".join(f"{hf_models.SENTIMENT[c]}\n" for c in truth))
    indices.write_text("".join(f"{c}\n" for c in truth))
    np.testing.assert_array_equal(read_labels(names, rows, hf_models.SENTIMENT, 3), truth)
    np.testing.assert_array_equal(read_labels(indices, rows, hf_models.SENTIMENT, 3), truth)
    # names mean nothing without the model's label map
    with pytest.raises(ValidationDataError, match="line 1: 'POSITIVE' is not a class index; "):
        read_labels(names, rows)
    bad_name, bad_index = tmp_path / "bad-name.txt", tmp_path / "bad-index.txt"
    bad_name.write_text(names.read_text().replace("NEUTRAL", "NEUTRL", 1))
    bad_index.write_text("".join(f"{c}\n" for c in truth[:-1]) + "3\n")
    with pytest.raises(ValidationDataError, match=f"row {rows} has class 3"):
        read_labels(bad_index, rows, hf_models.SENTIMENT, 3)

    repo = tmp_path / "repo"
    r = run_cli("optimize", str(hf_dirs["bert"]), "--name", "bert", "--labels", str(names),
                "--variants", "onnx-fp32", "--publish", "all", "--repository", str(repo),
                "--min-agreement", "0.9", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    m = ModelRepository(repo).manifest("bert", 1)
    f = m.measurements.fidelity
    assert 0 <= f.f1 <= 1 and 0 <= f.roc_auc <= 1 and f.reference_f1 is not None

    for path, message in ((bad_name, "'NEUTRL' is not a class index nor one of the model's "
                                     "labels (NEGATIVE, NEUTRAL, POSITIVE)"),
                          (bad_index, f"row {rows} has class 3, but the model has 3 classes")):
        r = run_cli("optimize", str(hf_dirs["bert"]), "--name", "refused", "--labels",
                    str(path), "--variants", "onnx-fp32", "--repository", str(repo), *FAST)
        assert r.returncode == 1 and message in " ".join(r.stderr.split()), r.stderr
        assert "Traceback" not in r.stderr and not (repo / "refused").exists()


def test_a_multi_label_classifier_refuses_single_class_labels(tmp_path, hf_dirs):
    d = hf_models.bert_classifier(tmp_path / "multi", multi_label=True)
    (tmp_path / "labels.txt").write_text("0\n" * 284)
    r = run_cli("optimize", str(d), "--labels", str(tmp_path / "labels.txt"), "--variants",
                "onnx-fp32", "--repository", str(tmp_path / "repo"), *FAST)
    assert r.returncode == 1 and "multi-label" in r.stderr, r.stderr
    assert json.loads((d / "config.json").read_text())["problem_type"] == \
        "multi_label_classification"


# ---- where the time goes: searches ranked by their best case, within a budget -----------------

def test_a_search_that_cannot_win_or_has_no_time_left_is_skipped_with_the_reason(hf_dirs,
                                                                                  tmp_path):
    from optimizers import OptimizeOptions, optimize
    from optimizers.fidelity import FidelityBudget
    from optimizers.pipeline import _Ranking, VariantOutcome
    from serving.repository import Fidelity, LatencyPoint, Measurements

    # a budget full quantization misses: INT8 needs its search, which has no time
    result = optimize(OptimizeOptions(
        source=str(hf_dirs["bert"]), variants=["onnx-int8-dynamic", "onnx-fp32"],
        budget=FidelityBudget(min_top1=0.9999), publish="none", min_time_s=0.05,
        batch_sizes=[1, 8], search_seconds=0, repository=str(tmp_path / "repo")))
    assert [o.name for o in result.outcomes] == ["onnx-fp32", "onnx-int8-dynamic"]
    skipped = result.outcome("onnx-int8-dynamic")
    assert skipped.status == "skipped" and "--search-seconds 0" in skipped.reason
    assert skipped.seconds > 0 and dict(result.timings)["onnx-int8-dynamic"] == skipped.seconds

    # the leader's rows/s at the largest batch decides
    ranking = _Ranking(None, {1: [], 8: []}, 1, tmp_path)
    lead = VariantOutcome("onnx-fp32", "ok", measurements=Measurements(
        fidelity=Fidelity(samples=1, passed=True, budget="-"), size_bytes=1, latency=[
            LatencyPoint(batch_size=8, p50_ms=1, p95_ms=1, p99_ms=1, throughput=1000.0,
                         iterations=3)]))
    ranking.best_cases = {"slow": 850.0, "close": 950.0}
    assert ranking.verdict("slow") is None  # nothing within budget yet: search
    ranking.record(lead)
    assert "below onnx-fp32 (1000.0 rows/s)" in ranking.verdict("slow")
    assert ranking.verdict("close") is None  # within a short measurement's noise
