"""ONNX Runtime: CPU, CUDA and TensorRT execution providers, never a silent CPU fallback."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..protocol.errors import InputRejected
from ..repository import Manifest
from .base import RuntimeLoadError, RuntimeOptions, cast_inputs, short_message


def _provider_options(name: str, manifest: Manifest, options: RuntimeOptions) -> dict:
    if name == "TensorrtExecutionProvider":
        cache = Path(options.cache_dir or os.path.expanduser("~/.cache/optiserve")) / "tensorrt"
        cache = cache / f"{manifest.name}-{manifest.version}"
        cache.mkdir(parents=True, exist_ok=True)
        opts = {
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
        }
        shapes = _trt_profile(manifest)
        if shapes:
            opts.update(shapes)
        return opts
    return {}


def _trt_profile(manifest: Manifest) -> dict[str, str]:
    """Optimization profile for dynamic shapes: batch 1..max, sequence 1..max_length."""
    max_batch = max(64, manifest.batching.max_batch_size)
    seq = manifest.preprocessing.max_length if manifest.preprocessing else 256
    mins, opts, maxs = [], [], []
    for spec in manifest.model_signature.inputs:
        lo, mid, hi = [], [], []
        for i, d in enumerate(spec.shape):
            if d != -1:
                lo.append(d), mid.append(d), hi.append(d)
            elif i == 0:
                lo.append(1), mid.append(min(32, max_batch)), hi.append(max_batch)
            else:
                lo.append(1), mid.append(min(128, seq)), hi.append(seq)
        dims = lambda v: "x".join(map(str, v))  # noqa: E731
        mins.append(f"{spec.name}:{dims(lo)}")
        opts.append(f"{spec.name}:{dims(mid)}")
        maxs.append(f"{spec.name}:{dims(hi)}")
    return {
        "trt_profile_min_shapes": ",".join(mins),
        "trt_profile_opt_shapes": ",".join(opts),
        "trt_profile_max_shapes": ",".join(maxs),
    }


class OnnxRuntime:
    """Loads ``manifest.model_file`` into an ``onnxruntime.InferenceSession``."""

    def __init__(self, manifest: Manifest, version_dir: Path, options: RuntimeOptions):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeLoadError(
                "onnxruntime is not installed: install optiserve[cpu] (or optiserve[gpu])"
            ) from e
        self.manifest = manifest
        wanted = list(manifest.execution_providers)
        have = ort.get_available_providers()
        missing = [p for p in wanted if p not in have]
        if missing:
            raise RuntimeLoadError(
                f"{manifest.name}:{manifest.version} ({manifest.variant}) needs "
                f"{', '.join(missing)}, but this onnxruntime offers {', '.join(have)}. "
                "Serve it where that provider is installed (optiserve[gpu] on a CUDA machine)."
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads()
        so.inter_op_num_threads = options.inter_op_threads or 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if options.spin else "0")
        providers = [(p, _provider_options(p, manifest, options)) for p in wanted]
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(
                str(version_dir / manifest.model_file), so, providers=providers
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RuntimeLoadError(
                f"cannot load {manifest.model_file} of {manifest.name}:{manifest.version}: {e}"
            ) from e
        self.load_time_s = time.perf_counter() - t0
        self.providers = self.session.get_providers()
        if wanted and self.providers[0] != wanted[0]:
            # onnxruntime falls back to CPU when a GPU provider fails to initialise.
            raise RuntimeLoadError(
                f"{manifest.name}:{manifest.version} asked for {wanted[0]} but onnxruntime "
                f"started {self.providers[0]} (no usable device?); refusing a silent fallback"
            )
        self._outputs = [o.name for o in manifest.model_signature.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = cast_inputs(self.manifest, inputs)
        try:
            results = self.session.run(self._outputs, feeds)
        except Exception as e:
            # ONNX Runtime's INVALID_ARGUMENT: the inputs, not the model (an index out of a
            # table's range, a dimension the graph fixes)
            if type(e).__name__ == "InvalidArgument":
                raise InputRejected(f"{self.manifest.name}:{self.manifest.version} rejected the "
                                    f"inputs: {short_message(e)}") from None
            raise
        return dict(zip(self._outputs, results))
