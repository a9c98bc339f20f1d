"""What the optimizer needs to know about a source model, whatever it was loaded from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.repository import (
    ImagePreprocessing, Postprocessing, Signature, Source, TextPreprocessing,
)


@dataclass
class TabularInfo:
    """A scikit-learn classifier and what serving and feature selection need to know of it."""

    estimator: Any
    n_features: int
    #: Class values, in the order of the ``probabilities`` columns.
    classes: list
    feature_names: list[str] | None
    #: skops types outside its default trust that the user trusted (written into the version).
    trusted_types: list[str]
    #: Built-in examples: (rows, labels) of the held-out split and of the whole data set.
    default_validation: tuple[np.ndarray, np.ndarray] | None = None
    default_train: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class SourceModel:
    """A model to optimize.

    ``reference`` runs the original model on model-level inputs and is the ground truth every
    variant is compared with. ``torch_module`` is set for torch sources (torch variants and ONNX
    export need it); ``onnx_path`` for ONNX sources; ``tabular`` for scikit-learn sources (their
    ``onnx_path`` is skl2onnx's conversion, the estimator itself is the reference).
    """

    name: str
    source: Source
    task: str
    model_signature: Signature
    signature: Signature
    preprocessing: TextPreprocessing | None = None
    #: Image classifiers: how serving turns encoded images into the model's pixel tensor (the
    #: validation images go through the same code, :mod:`serving.images`).
    image_preprocessing: ImagePreprocessing | None = None
    #: Labels (and entity aggregation) of text and token classifiers, applied by serving.
    postprocessing: Postprocessing | None = None
    #: Files copied into every version (artifact path -> file), e.g. the tokenizer.
    extra_files: dict[str, Path] = field(default_factory=dict)
    torch_module: Any = None
    onnx_path: Path | None = None
    #: For transformer encoders: ONNX Runtime's fusion settings (model_type, num_heads, hidden).
    transformer: dict[str, Any] | None = None
    #: Default validation data when the user gives none (text models).
    default_validation: Path | None = None
    notes: list[str] = field(default_factory=list)
    tabular: TabularInfo | None = None
    _ref_session: Any = field(default=None, repr=False)

    @property
    def is_text(self) -> bool:
        return self.preprocessing is not None

    @property
    def is_image(self) -> bool:
        return self.image_preprocessing is not None

    @property
    def multi_label(self) -> bool:
        return self.postprocessing is not None and self.postprocessing.multi_label

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the original model (scikit-learn, torch eager, or ONNX Runtime without graph
        optimisation)."""
        if self.tabular is not None:
            from ..tabular.convert import sklearn_outputs

            x = inputs[self.model_signature.inputs[0].name]
            return sklearn_outputs(self.tabular.estimator, x,
                                   [o.name for o in self.model_signature.outputs])
        if self.torch_module is not None:
            import torch

            names = [i.name for i in self.model_signature.inputs]
            with torch.inference_mode():
                out = self.torch_module(*[torch.from_numpy(np.ascontiguousarray(inputs[n]))
                                          for n in names])
            if not isinstance(out, (tuple, list)):
                out = [out]
            return {o.name: t.detach().float().numpy()
                    for o, t in zip(self.model_signature.outputs, out)}
        return self._onnx_reference_session().run(inputs)

    def _onnx_reference_session(self):
        if self._ref_session is None:
            self._ref_session = _PlainOnnx(self.onnx_path, self.model_signature)
        return self._ref_session


class _PlainOnnx:
    """The source ONNX file with every graph optimisation disabled: the reference."""

    def __init__(self, path: Path, signature: Signature):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in signature.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, inputs)))
