"""OpenVINO on CPU: an IR model (``.xml`` plus its ``.bin``) compiled for latency.

The inference precision is part of the version: the optimizer writes it into the IR's runtime
info (``optiserve/inference_precision``, ``f32`` or ``bf16``) and this runtime compiles with
exactly that hint. OpenVINO's own default is bf16 on CPUs with AMX, so an fp32 version must ask
for f32 or it would not be the model its fidelity was measured on.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from ..protocol.errors import InputRejected
from ..repository import Manifest
from .base import RuntimeLoadError, RuntimeOptions, cast_inputs

#: Where the optimizer records the precision a version was built and measured with.
PRECISION_KEY = ["optiserve", "inference_precision"]
PRECISIONS = ("f32", "bf16")


def import_openvino():
    """``openvino``, or a RuntimeLoadError that says how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise RuntimeLoadError(
            "openvino is not installed: install optiserve[openvino] to serve OpenVINO versions"
        ) from e
    return openvino


def compile_config(options: RuntimeOptions, precision: str) -> dict:
    """CPU plugin settings: one stream of ``threads`` threads, latency first, no pinning.

    One stream and an explicit thread count match ONNX Runtime's intra-op threads (a replica
    reserves its CPUs from Ray); pinning and CPU reservation stay off because the gateway, HTTP
    and other replicas share the cores and pinned threads would fight them for fixed CPUs.
    ``options.spin`` has no OpenVINO counterpart (its CPU plugin offers no spin setting).
    """
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    return {
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        props.num_streams: 1,
        props.inference_num_threads: options.threads(),
        hints.enable_cpu_pinning: False,
        hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
    }


def model_precision(model) -> str:
    """The precision recorded in an IR (``f32`` when it records none)."""
    if model.has_rt_info(PRECISION_KEY):
        value = model.get_rt_info(PRECISION_KEY).astype(str)
        if value not in PRECISIONS:
            raise RuntimeLoadError(f"the IR asks for inference precision {value!r}; expected "
                                   f"one of {', '.join(PRECISIONS)}")
        return value
    return "f32"


class OpenVinoRuntime:
    """Loads ``manifest.model_file`` (OpenVINO IR) and compiles it for the CPU."""

    def __init__(self, manifest: Manifest, version_dir: Path, options: RuntimeOptions):
        ov = import_openvino()
        self.manifest = manifest
        if manifest.device != "cpu":
            raise RuntimeLoadError(f"{manifest.name}:{manifest.version} ({manifest.variant}) "
                                   f"asks for {manifest.device}; the OpenVINO runtime runs on CPU")
        path = Path(version_dir) / manifest.model_file
        t0 = time.perf_counter()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise RuntimeLoadError(
                f"cannot load {manifest.model_file} of {manifest.name}:{manifest.version}: {e}"
            ) from e
        self.precision = model_precision(model)
        if self.precision == "bf16" and "BF16" not in core.get_property(
                "CPU", "OPTIMIZATION_CAPABILITIES"):
            raise RuntimeLoadError(
                f"{manifest.name}:{manifest.version} ({manifest.variant}) runs in bf16, which "
                "this CPU does not offer; serve an fp32 or INT8 version here")
        shapes = {}
        for spec in manifest.model_signature.inputs:
            shapes[spec.name] = ov.PartialShape([ov.Dimension() if d == -1 else ov.Dimension(d)
                                                 for d in spec.shape])
        try:
            model.reshape(shapes)  # dynamic batch (and sequence) as the signature says
            self.compiled = core.compile_model(model, "CPU", compile_config(options,
                                                                            self.precision))
        except Exception as e:
            raise RuntimeLoadError(
                f"cannot compile {manifest.model_file} of {manifest.name}:{manifest.version} "
                f"for the CPU: {e}") from e
        self.load_time_s = time.perf_counter() - t0
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.providers = [f"OpenVINO CPU ({self.precision}, {self.threads} threads)"]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self._outputs = [(o.name, self.compiled.output(o.name))
                         for o in manifest.model_signature.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = cast_inputs(self.manifest, inputs)
        for spec in self.manifest.model_signature.inputs:
            got = feeds[spec.name].shape
            if len(got) != len(spec.shape) or any(d not in (-1, n) for d, n in zip(spec.shape,
                                                                                  got)):
                raise InputRejected(f"{self.manifest.name}:{self.manifest.version} rejected the "
                                    f"inputs: {spec.name!r} has shape {list(got)}, expected "
                                    f"{spec.shape} (-1 = any size)")
        with self._lock:  # one infer request, reused: calls from several threads take turns
            results = self._request.infer(feeds, share_inputs=True, share_outputs=False)
            return {name: np.asarray(results[port]) for name, port in self._outputs}
