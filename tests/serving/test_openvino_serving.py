"""An OpenVINO version optimized and published by the real CLI, served by real Ray Serve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.config import build_serve_config
from serving.repository import ModelRepository
from serving.runtimes import RuntimeOptions, load_runtime
from tests.helpers import ServeProcess, http, run_cli
from tests.support.installed import require

# installed by scripts/test.sh (the openvino extra): missing, the module fails, never skips
require("openvino", "openvino")
require("nncf", "openvino")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino-serve")
    result = run_cli("optimize", "tests.fixtures.tiny_models:classifier", "--input",
                     "x:FP32:-1,16", "--task", "classification", "--name", "tiny", "--variants",
                     "openvino-fp32,openvino-int8", "--publish", "all", "--min-time", "0.05",
                     "--batch-sizes", "1,8", "--repository", str(root / "repo"), "-q")
    assert result.returncode == 0, result.stderr + result.stdout
    repo = ModelRepository(root / "repo")
    versions = {repo.manifest("tiny", v).variant: v for v in repo.versions("tiny")}
    assert set(versions) == {"openvino-fp32", "openvino-int8"}, result.stdout
    return root, versions


def test_published_openvino_versions_answer_infer(published):
    root, versions = published
    repo = ModelRepository(root / "repo")
    for variant, v in versions.items():
        m = repo.manifest("tiny", v)
        assert m.runtime == "openvino" and m.model_file == "model.xml"
        assert {a.path for a in m.artifacts} == {"model.xml", "model.bin"}
        assert m.measurements.fidelity.passed and m.measurements.latency
    doc = build_serve_config(str(root / "repo"), [("tiny", v) for v in versions.values()],
                             version_cpus=0.5, threads=2)
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    proc = ServeProcess(doc, root).start()
    try:
        for variant, v in versions.items():
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [5, 16],
                                "data": x.ravel().tolist()}]}
            status, _, raw = http("POST", f"{proc.url}/v2/models/tiny/versions/{v}/infer",
                                  json.dumps(body).encode(),
                                  {"content-type": "application/json"})
            assert status == 200, raw
            out = json.loads(raw)["outputs"][0]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            ref = repo.open("tiny", v)
            want = load_runtime(ref.manifest, ref.path, RuntimeOptions(intra_op_threads=2)
                                ).run({"x": x})["output"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    finally:
        assert proc.stop() == 0
