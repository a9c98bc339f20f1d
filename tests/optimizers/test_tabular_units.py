"""Tabular pieces on small fitted models: conversion, trust, data checks, selection, INT8."""

from __future__ import annotations

import joblib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skops.io as sio

from optimizers.errors import SourceError, ValidationDataError
from optimizers.fidelity import FidelityBudget, compare
from optimizers.sources import resolve_source
from optimizers.tabular.data import read_class_labels, read_features, split
from optimizers.tabular.feature_selection import parse_ks, reduced_pipeline
from optimizers.tabular.convert import to_onnx
from optimizers.validation import tabular_set
from optimizers.variants import VARIANTS, BuildContext, VariantSkipped
from tests.fixtures.tabular import data, logistic, mlp, trees


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_pipeline_with_selector_converts_whole_and_takes_every_feature(tmp_path):
    x, y = data()
    p = reduced_pipeline(logistic(x, y), 3, "f_classif").fit(x, y)
    path = to_onnx(p, 8, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "ZipMap" not in ops and ops & {"ArrayFeatureExtractor", "Gather"}
    assert [o.name for o in model.graph.output] == ["probabilities", "label"]
    probs, label = _session(path).run(["probabilities", "label"],
                                      {"features": x.astype(np.float32)})
    assert probs.shape == (len(x), 2)
    np.testing.assert_allclose(probs, p.predict_proba(x.astype(np.float32)), atol=1e-5)
    assert np.array_equal(label, p.predict(x.astype(np.float32)))


def test_string_classes_serve_probabilities_only(tmp_path):
    x, y = data()
    est = logistic(x, np.array(["no", "yes"])[y])
    src_path = tmp_path / "m.skops"
    sio.dump(est, src_path)
    src = resolve_source(f"sklearn:{src_path}")
    assert [o.name for o in src.signature.outputs] == ["probabilities"]
    assert src.tabular.classes == ["no", "yes"]


def test_estimator_skl2onnx_cannot_convert_is_named(tmp_path):
    from sklearn.semi_supervised import LabelPropagation

    x, y = data(60)
    path = tmp_path / "lp.joblib"
    joblib.dump(LabelPropagation().fit(x, y), path)
    with pytest.raises(SourceError, match="skl2onnx cannot convert .*LabelPropagation"):
        resolve_source(f"sklearn:{path}", trust=True)


def test_skops_refuses_untrusted_types_until_named(tmp_path):
    x, y = data()
    path = tmp_path / "trees.skops"
    sio.dump(trees(x, y), path)
    with pytest.raises(SourceError, match=r"sklearn\.tree\._tree\.Tree.*--trust-types"):
        resolve_source(f"sklearn:{path}")
    src = resolve_source(f"sklearn:{path}", trusted_types=["sklearn.tree._tree.Tree"])
    assert src.source.kind == "sklearn" and src.tabular.n_features == 8


def test_joblib_pickle_loads_only_with_trust(tmp_path):
    x, y = data()
    path = tmp_path / "m.joblib"
    joblib.dump(logistic(x, y), path)
    with pytest.raises(SourceError, match="pickle.*--trust"):
        resolve_source(f"sklearn:{path}")
    assert resolve_source(f"sklearn:{path}", trust=True).tabular.n_features == 8


def test_unfitted_and_regressor_models_are_refused(tmp_path):
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x, y = data()
    for est, message in ((LogisticRegression(), "not fitted"),
                         (LinearRegression().fit(x, y), "no predict_proba")):
        path = tmp_path / "m.skops"
        sio.dump(est, path)
        with pytest.raises(SourceError, match=message):
            resolve_source(f"sklearn:{path}")


def test_csv_rows_checked_against_the_model(tmp_path):
    good = tmp_path / "ok.csv"
    good.write_text("a,b,c\n1,2,3\n4,5,6\n")
    assert read_features(good, 3, None).shape == (2, 3)
    short = tmp_path / "short.csv"
    short.write_text("1,2,3\n4,5\n")
    with pytest.raises(ValidationDataError, match=r"short.csv:2: 2 columns, expected 3"):
        read_features(short, 3, None)
    wide = tmp_path / "wide.csv"
    wide.write_text("1,2,3,4\n")
    with pytest.raises(ValidationDataError, match="4 columns, expected 3"):
        read_features(wide, 3, None)
    with pytest.raises(ValidationDataError, match="column 2 is 'b', the model's feature 2 is 'x'"):
        read_features(good, 3, ["a", "x", "c"])
    nan = tmp_path / "nan.csv"
    nan.write_text("1,2,3\n1,nan,3\n")
    with pytest.raises(ValidationDataError, match="row 2 holds NaN"):
        read_features(nan, 3, None)
    np.save(tmp_path / "rows.npy", np.ones((4, 2)))
    with pytest.raises(ValidationDataError, match="2 columns, expected 3"):
        read_features(tmp_path / "rows.npy", 3, None)


def test_labels_of_the_wrong_length_or_class_are_refused(tmp_path):
    labels = tmp_path / "y.csv"
    labels.write_text("target\n1\n0\n1\n")
    assert list(read_class_labels(labels, 3, [0, 1], "x")) == [1, 0, 1]
    with pytest.raises(ValidationDataError, match="has 3 labels for the 4 rows of x"):
        read_class_labels(labels, 4, [0, 1], "x")
    with pytest.raises(ValidationDataError, match="label '1' .* not one of .*'a', 'b'"):
        read_class_labels(labels, 3, ["a", "b"], "x")


def test_binary_f1_is_the_positive_class_and_macro_for_more():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], 100)
    labels = rng.integers(0, 2, 100)
    f = compare("classification", {"p": probs}, {"p": probs}, FidelityBudget(), labels)
    assert f.f1 == pytest.approx(f1_score(labels, probs.argmax(1)))
    probs3 = rng.dirichlet([1, 1, 1], 100)
    labels3 = rng.integers(0, 3, 100)
    f = compare("classification", {"p": probs3}, {"p": probs3}, FidelityBudget(), labels3)
    assert f.f1 == pytest.approx(f1_score(labels3, probs3.argmax(1), average="macro"))


def test_k_values_are_checked_against_the_feature_count():
    assert parse_ks("5, 2,5", 8) == [2, 5]
    for bad in ("0", "8", "a,b", ""):
        with pytest.raises(Exception, match="--select-features"):
            parse_ks(bad, 8)


def test_split_is_stratified_and_fixed():
    _, y = data()
    tr, ho = split(y)
    assert len(ho) == 60 and not set(tr) & set(ho)
    assert abs(y[ho].mean() - y[tr].mean()) < 0.05
    assert np.array_equal(split(y)[1], ho)


def _ctx(tmp_path, est):
    x, y = data()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "src.joblib"
    joblib.dump(est, path)
    src = resolve_source(f"sklearn:{path}", trust=True)
    vset = tabular_set(src, x, y, "test rows")
    ref = vset.gather([src.reference(b) for b in vset.batches])
    return BuildContext(source=src, validation=vset, reference=ref, budget=FidelityBudget(),
                        workdir=tmp_path / "work", threads=1)


def test_int8_only_where_the_graph_has_quantizable_nodes(tmp_path):
    x, y = data()
    with pytest.raises(VariantSkipped, match="no MatMul"):
        VARIANTS["onnx-int8-dynamic"].build(_ctx(tmp_path / "t", trees(x, y)))
    ctx = _ctx(tmp_path / "m", mlp(x, y))
    build = VARIANTS["onnx-int8-dynamic"].build(ctx)
    ops = {n.op_type for n in onnx.load(str(build.model_file)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
    fid, _ = ctx.evaluate_onnx(build.model_file)
    assert fid.top1_agreement >= 0.99


def test_sklearn_variant_records_the_trusted_types_it_is_served_with(tmp_path):
    import json

    x, y = data()
    build = VARIANTS["sklearn"].build(_ctx(tmp_path, trees(x, y)))
    meta = json.loads(build.extra_files["sklearn.json"].read_text())
    assert meta["trusted_types"] == ["sklearn.tree._tree.Tree"]
    with pytest.raises(Exception, match="Untrusted"):
        sio.load(build.model_file)  # nothing else would load it
