"""scikit-learn estimators saved with skops: the reference runtime of tabular models.

A version holds ``model.skops`` and ``sklearn.json``, which lists the types the user trusted
when the model was optimized (skops refuses any other type in the file) and the class order of
the ``probabilities`` output. Both files are hash-verified with the rest of the version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..protocol.errors import InputRejected
from ..repository import Manifest
from .base import RuntimeLoadError, RuntimeOptions, cast_inputs, short_message

#: The artifact next to the model file: trusted types and classes.
SIDECAR = "sklearn.json"


class SklearnRuntime:
    """``predict_proba`` of the estimator in ``manifest.model_file``; BLAS threads limited."""

    def __init__(self, manifest: Manifest, version_dir: Path, options: RuntimeOptions):
        try:
            import skops.io as sio
            from threadpoolctl import threadpool_limits
        except ImportError as e:
            raise RuntimeLoadError("the sklearn runtime needs skops: install optiserve[cpu]"
                                   ) from e
        self.manifest = manifest
        try:
            meta = json.loads((version_dir / SIDECAR).read_text())
            trusted = list(meta.get("trusted_types", []))
        except (OSError, ValueError) as e:
            raise RuntimeLoadError(f"{manifest.name}:{manifest.version}: cannot read "
                                   f"{SIDECAR}: {e}") from e
        # native thread pools (OpenMP, BLAS) get the replica's threads, as ONNX Runtime does
        self._limits = threadpool_limits(limits=options.threads())
        t0 = time.perf_counter()
        try:
            self.estimator = sio.load(version_dir / manifest.model_file, trusted=trusted)
        except Exception as e:
            raise RuntimeLoadError(f"cannot load {manifest.model_file} of {manifest.name}:"
                                   f"{manifest.version}: {short_message(e)}") from e
        self.load_time_s = time.perf_counter() - t0
        self.providers = ["sklearn"]
        self._input = manifest.model_signature.inputs[0].name
        self._outputs = [o.name for o in manifest.model_signature.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = cast_inputs(self.manifest, inputs)[self._input]
        try:
            probs = self.estimator.predict_proba(x)
        except ValueError as e:  # scikit-learn's input validation (NaN, infinity, shape)
            raise InputRejected(f"{self.manifest.name}:{self.manifest.version} rejected the "
                                f"inputs: {short_message(e)}") from None
        probs = np.asarray(probs, dtype=np.float32)
        out = {"probabilities": probs}
        if "label" in self._outputs:
            classes = np.asarray(self.estimator.classes_)
            out["label"] = classes[probs.argmax(1)].astype(np.int64)
        return {n: out[n] for n in self._outputs}
