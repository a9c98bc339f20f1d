"""The torch runtime (serving/runtimes/torch.py, torch_compile.py): device from the manifest,
half-precision modules, and a torch-compile version compiled at load by the real inductor (on
CPU here: the same compilation without CUDA graphs), run in bucket shapes only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from optimizers.fidelity import FidelityBudget
from optimizers.sources import minilm
from optimizers.validation import load_validation
from optimizers.variants import BuildContext
from optimizers.variants.torch_gpu import build_compiled, build_half
from serving.protocol.errors import InputRejected
from serving.runtimes import RuntimeLoadError, RuntimeOptions, load_runtime
from serving.settings import reload
from tests.helpers import version_dir
from tests.support.tiny_bert import write_tiny_bert


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny sentence encoder as an fp16 TorchScript version and as a compile version with
    small buckets (batch 2 and 4; sequences 64, 128, 256)."""
    root = tmp_path_factory.mktemp("torch-rt")
    src = minilm.load("tiny-text", model_dir=write_tiny_bert(root / "model"))
    vset = load_validation(src, None, None)
    ctx = BuildContext(source=src, validation=vset, reference={}, budget=FidelityBudget(),
                       workdir=root / "build", threads=2)
    mp = pytest.MonkeyPatch()
    mp.setenv("OPTISERVE_COMPILE_BATCH_BUCKETS", "2,4")
    mp.setenv("OPTISERVE_COMPILE_MIN_SEQ_BUCKET", "64")
    reload()
    try:
        compiled = version_dir(build_compiled(ctx, "t-compile", "fp16", "cpu"), src,
                               root / "compile")
    finally:
        mp.undo()
        reload()
    eager = version_dir(build_half(ctx, "t-fp16", "fp16", "cpu"), src, root / "fp16")
    return src, vset, eager, compiled


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_version_on_a_machine_without_one_is_refused(built):
    _src, _vset, (manifest, where), _ = built
    gpu = manifest.model_copy(update={"device": "cuda", "variant": "torch-fp16-cuda"})
    with pytest.raises(RuntimeLoadError, match=r"tiny-text:1 \(torch-fp16-cuda\) needs a CUDA "
                                               r"device; torch .* sees none"):
        load_runtime(gpu, where)


def test_inputs_of_the_wrong_rank_are_the_clients_fault(built):
    _src, _vset, (manifest, where), _ = built
    rt = load_runtime(manifest, where, RuntimeOptions(intra_op_threads=2))
    with pytest.raises(InputRejected, match=r"'input_ids' has shape \[4\], expected \[-1, -1\]"):
        rt.run({"input_ids": np.zeros(4, np.int64), "attention_mask": np.ones(4, np.int64)})


def test_a_compile_version_is_compiled_at_load_and_runs_bucket_shapes_only(built):
    _src, vset, (em, ew), (cm, cw) = built
    eager = load_runtime(em, ew, RuntimeOptions(intra_op_threads=2))
    rt = load_runtime(cm, cw, RuntimeOptions(intra_op_threads=2))
    assert rt.providers == ["torch-cpu", "inductor (default)"]
    assert rt.dtype == torch.float16 and rt.load_time_s > 0
    seen = []
    compiled = rt._fn

    def spy(*args):
        seen.append(tuple(a.shape for a in args))
        return compiled(*args)

    rt._fn = spy
    shapes = {(b, s) for b in (2, 4) for s in (64, 128, 256)}
    batches = [vset.bench_batch(n, i) for i, n in enumerate((1, 3, 4, 5, 9))]
    for batch in [*batches, *vset.batches[:3]]:
        want = eager.run(batch)["embedding"]
        got = rt.run(batch)["embedding"]
        assert got.shape == want.shape and got.dtype == np.float32
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= 0.999, cos.min()
    assert seen and all(ids == mask and ids in shapes for ids, mask in seen), seen


@pytest.mark.parametrize("change, message", [
    ({"batch_buckets": [4, 2]}, r"batch_buckets: Value error, must be increasing"),
    ({"backend": "cudagraphs"}, r"backend: Input should be 'inductor'"),
    ({"surprise": 1}, r"surprise: Extra inputs are not permitted"),
    ({"seq_inputs": ["token_ids"]}, r"seq_inputs: \['token_ids'\] are not inputs of the model"),
])
def test_a_recipe_that_cannot_be_honoured_is_a_load_error_naming_the_field(built, tmp_path,
                                                                          change, message):
    import shutil

    _src, _vset, _, (manifest, where) = built
    bad = tmp_path / "v"
    shutil.copytree(where, bad)
    recipe = {**json.loads((where / "compile.json").read_text()), **change}
    (bad / "compile.json").write_text(json.dumps(recipe))
    with pytest.raises(RuntimeLoadError, match=r"compile.json of tiny-text:1: " + message):
        load_runtime(manifest, bad)
