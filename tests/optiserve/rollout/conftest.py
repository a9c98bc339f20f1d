"""Canaries for rollout tests, published into a copy of the optimized minilm repository:
a faithful one (INT8 vs fp32), one that fails every request, one that answers differently."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.repository import Manifest, ModelRepository
from tests.serving.conftest import version_of


def publish_modified(repo: ModelRepository, base_version: int, variant: str, edit) -> int:
    """A new minilm version: the base version's files with its model graph edited."""
    import onnx

    base = repo.open("minilm", base_version)

    def fill(staging: Path) -> Manifest:
        for a in base.manifest.artifacts:
            shutil.copyfile(base.path / a.path, staging / a.path)
        model = onnx.load(str(staging / base.manifest.model_file))
        edit(model)
        onnx.save(model, str(staging / base.manifest.model_file))
        return base.manifest.model_copy(update={"variant": variant})

    return repo.publish("minilm", fill).version


def make_broken(model) -> None:
    """Reshape the output to [-1, 383]: every run fails inside ONNX Runtime."""
    from onnx import helper, numpy_helper

    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_inner" if o == out else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(
        np.array([-1, 383], dtype=np.int64), name="broken_shape"))
    model.graph.node.append(helper.make_node("Reshape", [f"{out}_inner", "broken_shape"], [out]))


def make_degraded(model) -> None:
    """Noise on every matrix weight: valid outputs, different answers."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    for i, init in enumerate(model.graph.initializer):
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and w.dtype == np.float32 and min(w.shape) >= 64:
            noisy = w + rng.normal(0, 0.6 * w.std(), w.shape).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy, init.name))


@pytest.fixture(scope="session")
def rollout_repo(minilm_build, tmp_path_factory):
    src, _, _ = minilm_build
    dst = tmp_path_factory.mktemp("rollout") / "repo"
    shutil.copytree(src, dst)
    repo = ModelRepository(dst)
    fp32 = version_of(dst, "minilm", "onnx-fp32")
    versions = {"fp32": fp32, "int8": version_of(dst, "minilm", "onnx-int8-dynamic"),
                "broken": publish_modified(repo, fp32, "onnx-fp32-broken", make_broken),
                "degraded": publish_modified(repo, fp32, "onnx-fp32-degraded", make_degraded)}
    return dst, versions
