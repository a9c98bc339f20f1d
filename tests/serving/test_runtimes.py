"""Runtimes refuse what they cannot honour instead of silently running elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from serving.repository import ModelRepository
from serving.runtimes import RuntimeLoadError, load_runtime
from tests.serving.test_gateway import publish


def test_a_gpu_manifest_on_a_machine_without_the_provider_is_refused(tmp_path):
    import onnxruntime as ort

    repo = ModelRepository(tmp_path / "repo")
    ref = repo.get("reducer", publish(repo, "ReduceSum"))
    gpu = ref.manifest.model_copy(update={"execution_providers": ["CUDAExecutionProvider"],
                                          "device": "cuda", "variant": "onnx-fp16-cuda"})
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")  # CI machines have no GPU
    with pytest.raises(RuntimeLoadError, match="needs CUDAExecutionProvider, but this "
                                               "onnxruntime offers"):
        load_runtime(gpu, ref.path)
    assert load_runtime(ref.manifest, ref.path).providers == ["CPUExecutionProvider"]


def test_an_unreadable_model_file_is_a_load_error_naming_the_version(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    ref = repo.get("reducer", publish(repo, "ReduceSum"))
    (ref.path / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeLoadError, match="cannot load model.onnx of reducer:1"):
        load_runtime(ref.manifest, ref.path)


def test_length_groups_cut_long_groups_to_max_rows_keeping_similar_lengths_together():
    from serving.runtimes import length_groups

    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(4, 30, 40)] + [12] * 20
    groups = length_groups(lengths, overhead=32)
    assert max(map(len, groups)) > 8  # uncapped, the twenty 12s (at least) share a group
    capped = length_groups(lengths, overhead=32, max_rows=8)
    assert sorted(i for g in capped for i in g) == list(range(len(lengths)))
    assert max(map(len, capped)) <= 8
    # runs of the sorted lengths: no group's rows interleave with another's
    spans = sorted((min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in capped)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
