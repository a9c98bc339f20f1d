"""Fixtures for serving integration tests: a repository with several versions, a live server."""

from __future__ import annotations

import shutil

import pytest

from serving.repository import ModelRepository
from tests.helpers import run_cli


@pytest.fixture(scope="session")
def serving_repo(minilm_build, tmp_path_factory):
    """A copy of the optimized minilm repository plus a tiny tensor classifier ('tiny')."""
    src, _, _ = minilm_build
    dst = tmp_path_factory.mktemp("serving") / "repo"
    shutil.copytree(src, dst)
    result = run_cli("optimize", "tests.fixtures.tiny_models:classifier", "--input",
                     "x:FP32:-1,16", "--task", "classification", "--name", "tiny", "--variants",
                     "onnx-fp32", "--min-time", "0.1", "--batch-sizes", "1,8",
                     "--repository", str(dst), "-q")
    assert result.returncode == 0, result.stderr
    return dst


def version_of(repo_dir, model: str, variant: str) -> int:
    repo = ModelRepository(repo_dir)
    for v in repo.versions(model):
        if repo.manifest(model, v).variant == variant:
            return v
    raise LookupError(f"{model} has no {variant} version in {repo_dir}")
