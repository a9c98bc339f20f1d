import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def repo_dir(tmp_path):
    return tmp_path / "model-repository"


#: onnx-int8-static (its calibration and fp32-node search take minutes on minilm, and it misses
#: the budget on held-out rows) is tested on the tiny models of tests/optimizers/test_optimize.py
MINILM_VARIANTS = ("torch-fp32", "torch-int8-dynamic", "onnx-fp32", "onnx-int8-dynamic",
                   "onnx-fp16-cuda", "tensorrt-fp16")


@pytest.fixture(scope="session")
def minilm_build(tmp_path_factory):
    """The built-in model optimized once per test session by the real CLI (the ONNX Runtime and
    torch variants the serving and rollout tests serve, everything within budget published,
    with a report): (repository dir, report dir, result). OpenVINO and distilled students are
    tested on tiny models (tests/optimizers/test_openvino.py, test_distill*.py) and measured
    on this model by benchmarks/optimizer_minilm.py."""
    from tests.helpers import run_cli

    root = tmp_path_factory.mktemp("minilm")
    repo, report, cwd = root / "repo", root / "report", root / "cwd"
    cwd.mkdir()
    result = run_cli("optimize", "minilm", "--variants", ",".join(MINILM_VARIANTS),
                     "--publish", "all", "--report", str(report),
                     "--repository", str(repo), "-q", timeout=1800, cwd=cwd)
    assert result.returncode == 0, result.stderr + result.stdout
    # temporary files of the quantizers stay out of the user's working directory
    assert list(cwd.iterdir()) == []
    return repo, report, result


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """Tiny Hugging Face directories built offline (tests/support/hf_models.py): BERT,
    DistilBERT and RoBERTa sequence classifiers and a BERT token classifier."""
    from tests.support import hf_models

    root = tmp_path_factory.mktemp("hf")
    return {"bert": hf_models.bert_classifier(root / "bert"),
            "distilbert": hf_models.distilbert_classifier(root / "distilbert"),
            "roberta": hf_models.roberta_classifier(root / "roberta"),
            "ner": hf_models.bert_token_classifier(root / "ner")}


#: what the tiny Hugging Face models are optimized into once per session (OpenVINO INT8 under
#: NNCF included); budgets loose enough for tiny random models' INT8 to pass
HF_VARIANTS = ("torch-fp32", "onnx-fp32", "onnx-int8-dynamic", "openvino-int8")


@pytest.fixture(scope="session")
def hf_build(hf_dirs, tmp_path_factory):
    """Each tiny Hugging Face model optimized and published by the real CLI (every variant
    within budget, a report each): (repository dir, report dir, {model: CompletedProcess})."""
    from tests.helpers import run_cli

    root = tmp_path_factory.mktemp("hf-build")
    runs = {}
    for name, directory in hf_dirs.items():
        r = run_cli("optimize", str(directory), "--name", name, "--variants",
                    ",".join(HF_VARIANTS), "--publish", "all", "--report",
                    str(root / "report" / name), "--repository", str(root / "repo"),
                    "--min-agreement", "0.9", "--min-entity-f1", "0.8", "--min-time", "0.05",
                    "--batch-sizes", "1,32", "-q")
        assert r.returncode == 0, r.stdout + r.stderr
        runs[name] = r
    return root / "repo", root / "report", runs
