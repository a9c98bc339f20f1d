"""Bad tabular input through the real CLI: a message naming the problem, nothing published."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import skops.io as sio

from serving.protocol.codec import decode_request, encode_infer_request, validate_inputs
from serving.protocol.errors import InvalidInput
from serving.repository import Signature, TensorSpec
from tests.fixtures.tabular import data, logistic
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tabular-cli")
    x, y = data()
    sio.dump(logistic(x, y), d / "model.skops")
    np.savetxt(d / "x.csv", x, delimiter=",")
    np.savetxt(d / "y.csv", y, fmt="%d")
    np.savetxt(d / "x7.csv", x[:, :7], delimiter=",")
    np.savetxt(d / "y_short.csv", y[:-5], fmt="%d")
    from sklearn.semi_supervised import LabelPropagation

    joblib.dump(LabelPropagation().fit(x[:60], y[:60]), d / "lp.joblib")
    return d


def _refused(files, *args) -> str:
    repo = files / "repo"
    result = run_cli("optimize", *args, "--repository", str(repo), "--min-time", "0.05", "-q")
    assert result.returncode == 1, result.stdout + result.stderr
    assert not (repo / files.name).exists() and not any(
        p.name != ".locks" and not p.name.startswith(".") for p in repo.glob("*")), \
        list(repo.glob("*"))  # nothing half-published
    return " ".join(result.stderr.split())


def test_csv_with_the_wrong_column_count(files):
    err = _refused(files, f"sklearn:{files / 'model.skops'}", "--validation-data",
                   str(files / "x7.csv"))
    assert "7 columns, expected 8" in err and "x7.csv:1" in err


def test_labels_of_the_wrong_length(files):
    err = _refused(files, f"sklearn:{files / 'model.skops'}", "--select-features", "3",
                   "--train-data", str(files / "x.csv"), "--labels", str(files / "y_short.csv"))
    assert "has 235 labels for the 240 rows of --train-data" in err


def test_estimator_skl2onnx_cannot_convert(files):
    err = _refused(files, f"sklearn:{files / 'lp.joblib'}", "--trust", "--validation-data",
                   str(files / "x.csv"))
    assert "skl2onnx cannot convert" in err and "LabelPropagation" in err


def test_pickle_without_trust(files):
    err = _refused(files, f"sklearn:{files / 'lp.joblib'}", "--validation-data",
                   str(files / "x.csv"))
    assert "pickle" in err and "--trust" in err


def test_select_features_options_checked_first(files):
    err = _refused(files, f"sklearn:{files / 'model.skops'}", "--select-features", "3",
                   "--train-data", str(files / "x.csv"), "--labels", str(files / "y.csv"),
                   "--validation-data", str(files / "x.csv"))
    assert "drop --validation-data" in err
    err = _refused(files, f"sklearn:{files / 'model.skops'}", "--select-features", "9",
                   "--train-data", str(files / "x.csv"), "--labels", str(files / "y.csv"))
    assert "k must be between 1 and 7" in err
    # --train-data alone is distillation text for text models; a tabular model is told why not
    err = _refused(files, f"sklearn:{files / 'model.skops'}", "--train-data",
                   str(files / "x.csv"), "--labels", str(files / "y.csv"))
    assert "--train-data is the labelled data --select-features fits on" in err


def test_fp64_rows_accepted_for_an_fp32_input_and_cast():
    sig = Signature(inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, 3])],
                    outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2])])
    rows = np.array([[0.1, 1e40, -2.5]])
    body, headers = encode_infer_request({"features": rows})
    req = decode_request(body, headers)
    validate_inputs(req, sig, "m")
    t = req.inputs["features"]
    assert t.datatype == "FP32" and t.data.dtype == np.float32 and np.isinf(t.data[0, 1])
    body, headers = encode_infer_request({"features": np.ones((1, 3), np.float16)})
    req = decode_request(body, headers)
    with pytest.raises(InvalidInput, match="datatype FP16, expected FP32"):
        validate_inputs(req, sig, "m")
