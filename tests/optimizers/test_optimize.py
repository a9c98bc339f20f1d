"""optiserve optimize on a tiny torch classifier and its ONNX export, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.repository import ModelRepository
from serving.runtimes import load_runtime
from tests.fixtures.tiny_models import classifier
from tests.helpers import run_cli

FACTORY = "tests.fixtures.tiny_models:classifier"
FAST = ["--min-time", "0.1", "--batch-sizes", "1,8"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    np.savez(d / "val.npz", x=x)
    import torch

    with torch.inference_mode():
        logits = classifier()(torch.from_numpy(x)).numpy()
    labels = logits.argmax(1)
    labels[:20] = (labels[:20] + 1) % 4  # a model that is not perfect on its labels
    (d / "labels.txt").write_text("\n".join(map(str, labels)))
    return d


@pytest.fixture(scope="module")
def tiny_optimized(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("tiny-run")
    result = run_cli(
        "optimize", FACTORY, "--input", "x:FP32:-1,16", "--task", "classification",
        "--name", "tiny", "--validation-data", str(tiny_data / "val.npz"),
        "--labels", str(tiny_data / "labels.txt"), "--publish", "all",
        "--report", str(out / "report"), "--repository", str(out / "repo"), *FAST,
    )
    return out, result


def test_tiny_classifier_is_optimized_verified_and_published(tiny_optimized, tiny_data):
    out, result = tiny_optimized
    assert result.returncode == 0, result.stderr + result.stdout
    repo = ModelRepository(out / "repo")
    versions = repo.versions("tiny")
    assert versions, result.stdout
    manifests = [repo.open("tiny", v).manifest for v in versions]
    variants = {m.variant for m in manifests}
    assert {"torch-fp32", "onnx-fp32"} <= variants
    best = manifests[0]  # --publish all publishes fastest first
    assert best.measurements.fidelity.passed
    for m in manifests:
        f = m.measurements.fidelity
        # judged on the 100 held-out rows; the 100 tuning rows are reported beside them
        assert f.samples == 100 and f.top1_agreement >= 0.99 and f.rows == "held-out"
        t = m.measurements.tuning_fidelity
        assert t.samples == 100 and t.rows == "tuning" and "seed 0" in t.split
        assert f.f1 is not None and f.reference_f1 is not None and f.roc_auc is not None
        assert abs(f.reference_f1 - f.f1) <= 0.01
        assert [p.batch_size for p in m.measurements.latency] == [1, 8]
        assert all(p.p50_ms <= p.p95_ms <= p.p99_ms and p.throughput > 0
                   for p in m.measurements.latency)
        assert m.measurements.peak_rss_mb > 10 and m.measurements.load_time_s > 0
        assert m.batching.max_batch_size in (1, 8) and m.batching.reason
        assert m.signature.inputs[0].name == "x" and m.signature.outputs[0].shape == [-1, 4]
    throughputs = [max(p.throughput for p in m.measurements.latency) for m in manifests]
    assert throughputs == sorted(throughputs, reverse=True)


def test_published_variant_answers_like_the_source(tiny_optimized, tiny_data):
    import torch

    from optimizers.validation import _tensor_set, split_validation

    out, _ = tiny_optimized
    repo = ModelRepository(out / "repo")
    x = np.load(tiny_data / "val.npz")["x"]
    labels = np.array([int(v) for v in (tiny_data / "labels.txt").read_text().split()])
    vset = _tensor_set({"x": x})
    vset.labels = labels
    split = split_validation(vset, 0.5, seed=0)  # the optimizer's defaults
    assert not set(split.held_out_rows) & set(split.tuning_rows)
    with torch.inference_mode():
        ref = classifier()(torch.from_numpy(x)).numpy()
    for v in repo.versions("tiny"):
        ref_v = repo.open("tiny", v)
        runtime = load_runtime(ref_v.manifest, ref_v.path)
        m = ref_v.manifest.measurements
        # each part in batches of 32, as the optimizer evaluated it: the claims must reproduce
        for rows, claim in ((split.held_out_rows, m.fidelity), (split.tuning_rows,
                                                                 m.tuning_fidelity)):
            got = np.concatenate([runtime.run({"x": x[rows[i:i + 32]]})["output"]
                                  for i in range(0, len(rows), 32)])
            agreement = (got.argmax(1) == ref[rows].argmax(1)).mean()
            assert agreement >= 0.99, ref_v.manifest.variant
            assert agreement == pytest.approx(claim.top1_agreement)


def test_report_has_markdown_charts_and_gpu_skip_reasons(tiny_optimized):
    out, result = tiny_optimized
    report = out / "report" / "report.md"
    text = report.read_text()
    assert "**Chosen:" in text and "## Recommended batching" in text
    assert "| onnx-fp16-cuda | skipped |" in text and "| tensorrt-fp16 | skipped |" in text
    import torch

    if not torch.cuda.is_available():  # torch's own GPU variants, with why they did not build
        for name in ("torch-fp16-cuda", "torch-bf16-cuda", "torch-compile-cuda"):
            row = next(r for r in text.splitlines() if r.startswith(f"| {name} |"))
            assert "| skipped |" in row and ("CPU build" in row or "no CUDA device" in row), row
    assert "Published" in text
    # the trade-off: one sentence naming the winner, the fastest variant per budget, the front
    trade = text[text.index("## Trade-off"):]
    chosen = text.split("**Chosen: `", 1)[1].split("`", 1)[0]
    assert trade.splitlines()[2].count(f"(`{chosen}`) won:") == 1
    for budget in ("≥ 0.95 |", "≥ 0.98 |", "≥ 0.995 |"):
        assert budget in trade
    assert "Pareto front over every method" in trade and f"`{chosen}` (chosen)" in trade
    assert "fidelity (held-out) | tuning rows" in text
    for png in ("throughput_vs_fidelity.png", "latency_vs_batch.png", "throughput_vs_size.png"):
        data = (out / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_onnx_file_source(tmp_path, tiny_data):
    import torch

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(classifier(), (torch.zeros(2, 16),), str(path), input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}},
                      dynamo=False)
    result = run_cli(
        "optimize", str(path), "--task", "classification", "--variants",
        "onnx-fp32,onnx-int8-dynamic,torch-fp32", "--validation-data",
        str(tiny_data / "val.npz"), "--repository", str(tmp_path / "repo"), *FAST,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    m = ModelRepository(tmp_path / "repo").open("tiny").manifest
    assert m.source.kind == "onnx" and m.source.sha256
    assert m.variant in ("onnx-fp32", "onnx-int8-dynamic")
    assert "torch-fp32" in result.stdout and "not a torch model" in result.stdout


def _assert_nothing_published(repo: Path):
    assert ModelRepository(repo).models() == []


@pytest.mark.parametrize("args, message", [
    (["no-such-model"], "unknown source 'no-such-model'"),
    (["missing.onnx"], "ONNX file missing.onnx does not exist"),
    ([FACTORY], "needs its input signature: pass --input"),
    ([FACTORY, "--input", "x:FP33:-1,16"], "datatype 'FP33' is not a tensor datatype"),
    ([FACTORY, "--input", "x:FP32:-1,15"], "forward() failed on the declared inputs"),
    (["tests.fixtures.tiny_models:raises", "--input", "x:FP32:-1,16"],
     "raised ValueError: weights file is corrupt"),
    (["tests.fixtures.tiny_models:not_a_module", "--input", "x:FP32:-1,16"],
     "returned int; expected a torch.nn.Module"),
    (["tests.fixtures.no_such_module:f", "--input", "x:FP32:-1,16"], "cannot import"),
    ([FACTORY, "--input", "x:FP32:-1,16", "--variants", "onnx-int4"], "unknown variant(s) onnx-int4"),
    ([FACTORY, "--input", "x:FP32:-1,16", "--publish", "some"], "--publish must be best, all or none"),
    ([FACTORY, "--input", "x:FP32:-1,16", "--batch-sizes", "1,x"], "--batch-sizes must be"),
])
def test_bad_input_exits_nonzero_with_a_precise_message(tmp_path, args, message):
    result = run_cli("optimize", *args, "--repository", str(tmp_path / "repo"), "-q")
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split()), result.stderr
    _assert_nothing_published(tmp_path / "repo")


def test_invalid_onnx_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model" * 10)
    result = run_cli("optimize", str(bad), "--repository", str(tmp_path / "repo"), "-q")
    assert result.returncode != 0
    assert "is not a valid ONNX model" in result.stderr
    _assert_nothing_published(tmp_path / "repo")


@pytest.mark.parametrize("content, suffix, message", [
    ({"y": np.zeros((4, 16), np.float32)}, ".npz", "lacks input(s) x; it holds y"),
    ({"x": np.zeros((4, 8), np.float32)}, ".npz", "has shape [4, 8], expected [-1, 16]"),
    ({"x": np.array([["a"] * 16] * 4)}, ".npz", "input 'x' has dtype <U1, expected float32"),
    (b"PK\x03\x04 not really a zip", ".npz", "cannot read"),
    ("one sentence\nanother\n", ".txt", "tensor models take .npz"),
])
def test_validation_data_in_the_wrong_format(tmp_path, content, suffix, message):
    path = tmp_path / f"val{suffix}"
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    result = run_cli("optimize", FACTORY, "--input", "x:FP32:-1,16", "--validation-data",
                     str(path), "--repository", str(tmp_path / "repo"), "-q")
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split()), result.stderr
    _assert_nothing_published(tmp_path / "repo")


def test_labels_that_do_not_match_the_rows(tmp_path, tiny_data):
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n1\n")
    result = run_cli("optimize", FACTORY, "--input", "x:FP32:-1,16", "--task", "classification",
                     "--validation-data", str(tiny_data / "val.npz"), "--labels", str(labels),
                     "--repository", str(tmp_path / "repo"), "-q")
    assert result.returncode != 0
    assert "has 2 labels for 200 validation rows" in result.stderr


def test_unwritable_repository_fails_before_building(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("optimize", FACTORY, "--input", "x:FP32:-1,16",
                     "--repository", str(blocker / "repo"), "-q")
    assert result.returncode != 0
    assert "is not writable" in result.stderr and "expected a writable directory" in result.stderr


def test_manifest_records_what_was_measured(tiny_optimized):
    out, _ = tiny_optimized
    raw = json.loads((out / "repo" / "tiny" / "1" / "manifest.json").read_text())
    assert raw["schema_version"] == 2 and raw["source"]["kind"] == "torch-factory"
    assert {"fidelity", "latency", "peak_rss_mb", "load_time_s", "size_bytes"} <= set(
        raw["measurements"])
