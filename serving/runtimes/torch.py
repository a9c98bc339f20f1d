"""TorchScript models on CPU or CUDA."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from ..protocol.errors import InputRejected
from ..repository import Manifest
from .base import RuntimeLoadError, RuntimeOptions, cast_inputs, short_message


class TorchRuntime:
    """Loads ``manifest.model_file`` (TorchScript) with ``torch.jit.load``."""

    def __init__(self, manifest: Manifest, version_dir: Path, options: RuntimeOptions):
        import torch

        self.manifest = manifest
        self._torch = torch
        if manifest.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeLoadError(
                f"{manifest.name}:{manifest.version} ({manifest.variant}) needs a CUDA device; "
                "torch sees none"
            )
        self.device = torch.device(manifest.device)
        torch.set_num_threads(options.threads())
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(
                    str(version_dir / manifest.model_file), map_location=self.device
                ).eval()
        except Exception as e:
            raise RuntimeLoadError(
                f"cannot load {manifest.model_file} of {manifest.name}:{manifest.version}: {e}"
            ) from e
        self.load_time_s = time.perf_counter() - t0
        self.providers = [f"torch-{manifest.device}"]
        self._inputs = [i.name for i in manifest.model_signature.inputs]
        self._outputs = [o.name for o in manifest.model_signature.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        feeds = cast_inputs(self.manifest, inputs)
        args = [torch.from_numpy(feeds[n]).to(self.device) for n in self._inputs]
        try:
            with torch.inference_mode():
                out = self.module(*args)
        except IndexError as e:  # e.g. an id past an embedding table: the inputs' fault
            raise InputRejected(f"{self.manifest.name}:{self.manifest.version} rejected the "
                                f"inputs: {short_message(e)}") from None
        if isinstance(out, dict):
            out = [out[n] for n in self._outputs]
        elif not isinstance(out, (tuple, list)):
            out = [out]
        return {n: t.detach().float().cpu().numpy() if t.dtype.is_floating_point
                else t.detach().cpu().numpy() for n, t in zip(self._outputs, out)}
