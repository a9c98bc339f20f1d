"""A repository holding the tiny tensor classifier, optimized by the real CLI (seconds)."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("tune") / "repo"
    result = run_cli("optimize", "tests.fixtures.tiny_models:classifier", "--input",
                     "x:FP32:-1,16", "--task", "classification", "--name", "tiny", "--variants",
                     "onnx-fp32", "--min-time", "0.1", "--batch-sizes", "1,8",
                     "--repository", str(repo), "-q", timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    return repo
