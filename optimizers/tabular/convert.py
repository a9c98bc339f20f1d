"""scikit-learn -> ONNX with skl2onnx: probabilities as a tensor (no ZipMap), named outputs.

The served graph takes ``features`` (FP32, rows x features) and returns ``probabilities``
(FP32, rows x classes, in the estimator's ``classes_`` order) and ``label`` (INT64) when the
classes are integers. A Pipeline is converted whole, so a feature selector inside it becomes
part of the graph and clients keep sending the full feature vector.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from serving.repository import Signature, TensorSpec

from ..errors import SourceError

INPUT = "features"
OPSET = 17


def final_step(estimator):
    """The estimator at the end of (nested) Pipelines."""
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    return estimator


def describe(estimator) -> str:
    """``GradientBoostingClassifier`` or ``Pipeline(StandardScaler, SelectKBest, ...)``."""
    if hasattr(estimator, "steps"):
        return f"Pipeline({', '.join(describe(s) for _, s in estimator.steps)})"
    return type(estimator).__name__


def check_classifier(estimator, where: str) -> int:
    """The number of features a fitted classifier takes; SourceError naming what is wrong."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not hasattr(estimator, "fit") or not hasattr(estimator, "predict"):
        raise SourceError(f"{where} holds a {type(estimator).__name__}, not a scikit-learn "
                          "estimator; expected a fitted classifier or Pipeline")
    if not hasattr(estimator, "predict_proba"):
        raise SourceError(f"{where}: {describe(estimator)} has no predict_proba; optiserve "
                          "optimizes scikit-learn classifiers (probabilities and F1/ROC AUC)")
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise SourceError(f"{where}: {describe(estimator)} is not fitted; save it after "
                          "fit()") from None
    n = getattr(estimator, "n_features_in_", None)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise SourceError(f"{where}: {describe(estimator)} does not say how many features it "
                          "takes (n_features_in_); fit it on a 2-D array of numbers")
    return int(n)


def has_integer_classes(classes) -> bool:
    return np.asarray(classes).dtype.kind in "iub"


def signature(n_features: int, classes) -> Signature:
    outputs = [TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(classes)])]
    if has_integer_classes(classes):
        outputs.append(TensorSpec(name="label", datatype="INT64", shape=[-1]))
    return Signature(inputs=[TensorSpec(name=INPUT, datatype="FP32", shape=[-1, n_features])],
                     outputs=outputs)


def sklearn_outputs(estimator, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The estimator's outputs as the converted graph names them (the reference)."""
    probs = np.asarray(estimator.predict_proba(x), dtype=np.float64)
    out = {"probabilities": probs}
    if "label" in names:
        out["label"] = np.asarray(estimator.classes_)[probs.argmax(1)].astype(np.int64)
    return {n: out[n] for n in names}


def to_onnx(estimator, n_features: int, path: Path, what: str = "the model") -> Path:
    """Convert with skl2onnx and write ``path``; SourceError naming the estimator skl2onnx
    cannot convert."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    clf = final_step(estimator)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_sklearn(
                estimator, initial_types=[(INPUT, FloatTensorType([None, n_features]))],
                options={id(clf): {"zipmap": False}}, target_opset=OPSET,
            )
    except Exception as e:
        first = " ".join(str(e).strip().split("\n")[0].split())[:300] or type(e).__name__
        raise SourceError(
            f"skl2onnx cannot convert {what} ({describe(estimator)}): {type(e).__name__}: "
            f"{first}; expected estimators skl2onnx supports (see its list of converters)"
        ) from None
    graph = model.graph
    outs = list(graph.output)
    probs = [o for o in outs if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    labels = [o for o in outs if o is not (probs[0] if probs else None)]
    if len(outs) != 2 or len(probs) != 1:
        raise SourceError(f"skl2onnx converted {what} ({describe(estimator)}) to outputs "
                          f"{[o.name for o in outs]}; expected a label and a probability tensor")
    renames = {probs[0].name: "probabilities", labels[0].name: "label"}
    for node in graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
    for o in outs:
        o.name = renames[o.name]
    # the probabilities first: the primary output fidelity and shadowing compare; the label
    # only where it is an integer (string classes are listed in the version's notes)
    keep = [probs[0]] + ([labels[0]] if has_integer_classes(clf.classes_) else [])
    keep = [type(o).FromString(o.SerializeToString()) for o in keep]
    del graph.output[:]
    graph.output.extend(keep)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
