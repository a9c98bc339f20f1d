"""A fitted scikit-learn classifier as a source: checked, converted with skl2onnx, described."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from serving.repository import Source

from ..tabular.convert import check_classifier, describe, final_step, signature, to_onnx
from .base import SourceModel, TabularInfo


def tabular_source(estimator, *, name: str, source: Source, where: str,
                   trusted_types: list[str] | None = None,
                   feature_names: list[str] | None = None,
                   default_validation: tuple[np.ndarray, np.ndarray] | None = None,
                   default_train: tuple[np.ndarray, np.ndarray] | None = None) -> SourceModel:
    """The SourceModel of a fitted classifier; its ONNX conversion lives in a temporary
    directory removed with the SourceModel."""
    n = check_classifier(estimator, where)
    classes = list(np.asarray(final_step(estimator).classes_).tolist())
    tmp = Path(tempfile.mkdtemp(prefix="optiserve-sklearn-"))
    try:
        onnx_path = to_onnx(estimator, n, tmp / "model.onnx", what=where)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    names = getattr(estimator, "feature_names_in_", None)
    names = feature_names if names is None else names
    sig = signature(n, classes)
    notes = [f"{describe(estimator)}: {n} features, classes {classes} (the columns of "
             "'probabilities', in this order)"]
    model = SourceModel(
        name=name, source=source, task="classification", model_signature=sig, signature=sig,
        onnx_path=onnx_path, notes=notes,
        tabular=TabularInfo(
            estimator=estimator, n_features=n, classes=classes,
            feature_names=[str(x) for x in names] if names is not None else None,
            trusted_types=list(trusted_types or []), default_validation=default_validation,
            default_train=default_train,
        ),
    )
    weakref.finalize(model, shutil.rmtree, tmp, True)
    return model
