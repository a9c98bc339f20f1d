"""The GPU variants that need torch alone (optimizers/variants/torch_gpu.py): without CUDA they
are skipped with the reason; what does not need CUDA -- the fp16/bf16 conversion and tracing,
the compile recipe -- runs here on CPU, on a tiny sentence encoder (the built-in model's
architecture, 2 layers, seeded random weights) and the tiny classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from optimizers.fidelity import FidelityBudget
from optimizers.sources import minilm, resolve_source
from optimizers.validation import load_validation
from optimizers.variants import VARIANTS, BuildContext, VariantSkipped, default_variants
from optimizers.variants.torch_gpu import (
    bf16_skip_reason,
    build_compiled,
    build_half,
    compile_recipe,
    cuda_skip_reason,
)
from serving.runtimes import RuntimeOptions, load_runtime
from serving.settings import reload
from tests.helpers import version_dir
from tests.support.tiny_bert import write_tiny_bert

GPU_VARIANTS = ("torch-fp16-cuda", "torch-bf16-cuda", "torch-compile-cuda")


def context(src, root, name: str) -> BuildContext:
    vset = load_validation(src, None, None)
    reference = vset.gather([src.reference(b) for b in vset.batches])
    return BuildContext(source=src, validation=vset, reference=reference,
                        budget=FidelityBudget(), workdir=root / name, threads=2)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch-gpu")
    src = minilm.load("tiny-text", model_dir=write_tiny_bert(root / "model"))
    return context(src, root, "text")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    src = resolve_source("tests.fixtures.tiny_models:classifier", inputs=["x:FP32:-1,16"],
                         task="classification", name="tiny")
    return context(src, tmp_path_factory.mktemp("torch-gpu-cls"), "cls")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_each_gpu_variant_is_skipped_with_the_reason(text):
    reason = cuda_skip_reason()
    assert reason and ("CPU build" in reason or "sees no CUDA device" in reason)
    for name in GPU_VARIANTS:
        assert VARIANTS[name].device == "cuda"
        with pytest.raises(VariantSkipped) as e:
            VARIANTS[name].build(text)
        assert str(e.value) == reason, name
    # offered by default to torch sources: skipped here, built on a GPU machine
    assert set(GPU_VARIANTS) <= set(default_variants(text.source))


def test_bf16_needs_compute_capability_8(monkeypatch):
    """Stand-in for a pre-Ampere GPU (none here): the reason names the GPU and what it lacks."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    assert bf16_skip_reason() == ("Tesla T4 (compute capability 7.5) has no native bf16; it "
                                  "needs 8.0 or later")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert bf16_skip_reason() is None


@pytest.mark.parametrize("precision, dtype, min_cosine", [
    ("fp16", torch.float16, 0.999), ("bf16", torch.bfloat16, 0.99)])
def test_half_precision_traced_on_cpu_runs_in_the_torch_runtime(text, tmp_path, precision,
                                                                 dtype, min_cosine):
    build = build_half(text, f"t-{precision}", precision, "cpu")
    assert build.runtime == "torch" and build.device == "cpu" and build.model_file.name == \
        "model.pt"
    assert f"{precision} weights and compute" in build.notes[0]
    manifest, where = version_dir(build, text.source, tmp_path / precision)
    rt = load_runtime(manifest, where, RuntimeOptions(intra_op_threads=2))
    assert rt.dtype == dtype
    assert all(p.dtype == dtype for p in rt.module.parameters() if p.is_floating_point())
    outs = [rt.run(b) for b in text.validation.batches]
    assert all(o["embedding"].dtype == np.float32 for o in outs)
    got = text.validation.gather(outs)["embedding"]
    cos = cosines(got, text.reference["embedding"])
    assert cos.min() >= min_cosine, cos.min()


def test_fp32_inputs_are_cast_to_the_modules_precision(classifier, tmp_path):
    build = build_half(classifier, "c-fp16", "fp16", "cpu")
    manifest, where = version_dir(build, classifier.source, tmp_path / "c")
    rt = load_runtime(manifest, where, RuntimeOptions(intra_op_threads=2))
    x = classifier.validation.batches[0]["x"]
    assert x.dtype == np.float32
    got = rt.run({"x": x})["output"]
    ref = classifier.reference["output"][classifier.validation.rows_of[0]]
    assert got.dtype == np.float32
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.97
    np.testing.assert_allclose(got, ref, atol=0.05)


def test_the_compile_recipe_pads_text_sequences_and_follows_the_settings(text, classifier,
                                                                         monkeypatch):
    r = compile_recipe(text)
    assert r.backend == "inductor" and r.mode == "reduce-overhead"
    assert r.batch_buckets == [2, 4, 8, 16, 32, 64, 128, 256]
    assert r.seq_buckets == [16, 32, 64, 128, 256]  # up to the model's max_length
    assert r.seq_inputs == ["input_ids", "attention_mask"]
    c = compile_recipe(classifier)
    assert c.seq_buckets == [] and c.seq_inputs == []
    monkeypatch.setenv("OPTISERVE_COMPILE_BATCH_BUCKETS", "1,64,8")
    monkeypatch.setenv("OPTISERVE_COMPILE_MIN_SEQ_BUCKET", "64")
    reload()
    try:
        r = compile_recipe(text)
        assert r.batch_buckets == [1, 8, 64] and r.seq_buckets == [64, 128, 256]
    finally:
        monkeypatch.undo()
        reload()


def test_a_model_with_another_free_dimension_cannot_be_compiled_in_buckets(classifier):
    import dataclasses

    from serving.repository import Signature, TensorSpec

    sig = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, -1])],
                    outputs=classifier.source.model_signature.outputs)
    ctx = dataclasses.replace(classifier, source=dataclasses.replace(
        classifier.source, model_signature=sig))
    with pytest.raises(VariantSkipped, match="x has another free dimension"):
        build_compiled(ctx, "free-compile", "fp16", "cpu")


def test_the_compile_variant_ships_the_fp16_graph_and_its_recipe(text):
    build = build_compiled(text, "t-compile", "fp16", "cpu")
    assert set(build.extra_files) == {"compile.json"}
    recipe = json.loads(build.extra_files["compile.json"].read_text())
    assert recipe["seq_inputs"] == ["input_ids", "attention_mask"] and recipe["format"] == 1
    module = torch.jit.load(str(build.model_file))
    assert {p.dtype for p in module.parameters()} == {torch.float16}
    assert "torch.compile at load (inductor, reduce-overhead)" in build.notes[-1]
    assert "2..256 rows, sequences to 16..256 tokens" in build.notes[-1]


def test_a_published_compile_version_lists_its_recipe_with_its_sha256(text, tmp_path):
    """As the optimizer publishes it: model.pt, compile.json and the tokenizer, each hashed; a
    changed recipe is refused when a replica opens the version."""
    from optimizers.pipeline import candidate_version
    from serving.repository import IntegrityError, ModelRepository, sha256_file

    build = build_compiled(text, "torch-compile-cuda", "fp16", "cpu")
    draft, cdir = candidate_version(text.source, build, tmp_path / "work")
    repo = ModelRepository(tmp_path / "repo")

    def fill(staging):
        for f in cdir.iterdir():
            (staging / f.name).write_bytes(f.read_bytes())
        return draft

    ref = repo.publish("tiny-text", fill)
    m = repo.open("tiny-text", ref.version).manifest
    assert (m.variant, m.runtime, m.model_file) == ("torch-compile-cuda", "torch", "model.pt")
    hashes = {a.path: a.sha256 for a in m.artifacts}
    assert set(hashes) == {"model.pt", "compile.json", "tokenizer.json"}
    assert hashes["compile.json"] == sha256_file(cdir / "compile.json")
    assert any("torch.compile at load" in n for n in m.notes)
    recipe = ref.path / "compile.json"
    recipe.chmod(0o644)
    recipe.write_text(recipe.read_text().replace('"warmup": true', '"warmup": false'))
    with pytest.raises(IntegrityError, match="compile.json"):
        repo.open("tiny-text", ref.version)
