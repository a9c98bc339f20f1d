"""Runtimes chosen by a version's manifest (ONNX Runtime, OpenVINO, TorchScript, scikit-learn),
plus text preprocessing."""

from __future__ import annotations

from pathlib import Path

from ..repository import Manifest
from .base import ModelRuntime, RuntimeLoadError, RuntimeOptions, available_cpus
from .text import Encoded, TextEncoder, length_groups


def load_runtime(manifest: Manifest, version_dir: Path, options: RuntimeOptions | None = None
                 ) -> ModelRuntime:
    """Load the runtime the manifest names; raise :class:`RuntimeLoadError` with the reason."""
    options = options or RuntimeOptions()
    if manifest.runtime == "onnxruntime":
        from .onnx import OnnxRuntime

        return OnnxRuntime(manifest, Path(version_dir), options)
    if manifest.runtime == "openvino":
        from .openvino import OpenVinoRuntime

        return OpenVinoRuntime(manifest, Path(version_dir), options)
    if manifest.runtime == "torch":
        from .torch import TorchRuntime

        return TorchRuntime(manifest, Path(version_dir), options)
    if manifest.runtime == "sklearn":
        from .sklearn import SklearnRuntime

        return SklearnRuntime(manifest, Path(version_dir), options)
    raise RuntimeLoadError(f"unknown runtime {manifest.runtime!r}")  # pragma: no cover


__all__ = [
    "Encoded", "ModelRuntime", "RuntimeLoadError", "RuntimeOptions", "TextEncoder", "available_cpus",
    "length_groups", "load_runtime",
]
