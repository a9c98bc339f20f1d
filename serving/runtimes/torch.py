"""TorchScript models on CPU or CUDA, in the precision they were traced in, optionally compiled.

Device placement comes from the manifest's ``device`` (``cuda`` is the GPU Ray gave the replica:
it sets ``CUDA_VISIBLE_DEVICES``, so it is always ``cuda:0`` inside the replica). Floating
inputs are cast to the module's own floating dtype (fp16/bf16 variants take the signature's FP32
and compute in half precision); floating outputs come back as float32, as the signature says.
A version with a ``compile.json`` is compiled at load (:mod:`.torch_compile`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from ..protocol.errors import InputRejected
from ..repository import Manifest
from .base import RuntimeLoadError, RuntimeOptions, cast_inputs, check_shapes, short_message
from .torch_compile import RECIPE_FILE


def module_dtype(module):
    """The dtype of the module's first floating parameter or buffer (None: none has one, e.g.
    an INT8 module whose weights are packed)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


class TorchRuntime:
    """Loads ``manifest.model_file`` (TorchScript) with ``torch.jit.load``."""

    def __init__(self, manifest: Manifest, version_dir: Path, options: RuntimeOptions):
        import torch

        self.manifest = manifest
        self._torch = torch
        if manifest.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeLoadError(
                f"{manifest.name}:{manifest.version} ({manifest.variant}) needs a CUDA device; "
                f"torch {torch.__version__} sees none"
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
        self.dtype = module_dtype(self.module)
        self.providers = [f"torch-{manifest.device}"]
        self._inputs = [i.name for i in manifest.model_signature.inputs]
        self._outputs = [o.name for o in manifest.model_signature.outputs]
        self._fn = self.module
        self._buckets = None
        if any(a.path == RECIPE_FILE for a in manifest.artifacts):
            self._compile(version_dir)
        self.load_time_s = time.perf_counter() - t0

    def _compile(self, version_dir: Path) -> None:
        from .torch_compile import compile_script_module, read_recipe, sample_feeds

        recipe = read_recipe(self.manifest, version_dir)
        self._buckets = recipe.buckets()
        shapes = self._buckets.shapes()
        mask = self.manifest.preprocessing.mask_input if self.manifest.preprocessing else None

        def feeds(b: int, s: int | None):
            return sample_feeds(self.manifest.model_signature, mask, b, s, recipe.seq_inputs)

        sample = feeds(*shapes[0])
        if sample is None:
            raise RuntimeLoadError(
                f"{self.manifest.name}:{self.manifest.version}: the signature leaves a dimension "
                "besides the batch and the padded sequence free; torch.compile needs fixed shapes")
        # the converter traces the graph again: its sample inputs must not be inference tensors
        args = tuple(self._tensor(n, sample[n]) for n in self._inputs)
        self._fn = compile_script_module(self.module, args, recipe.mode, self.device)
        mode = recipe.mode if self.device.type == "cuda" else "default"
        self.providers.append(f"inductor ({mode})")
        if recipe.warmup:
            # a new shape compiles (or, under CUDA graphs, warms up then records on its second
            # call): every bucket shape runs now, before traffic
            runs = 2 if self.device.type == "cuda" else 1
            for b, s in shapes:
                for _ in range(runs):
                    self._forward(feeds(b, s))

    def _tensor(self, name: str, x: np.ndarray):
        t = self._torch.from_numpy(x).to(self.device)
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        return t

    def _forward(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._torch.inference_mode():
            args = [self._tensor(n, feeds[n]) for n in self._inputs]
            try:
                out = self._fn(*args)
            except IndexError as e:  # e.g. an id past an embedding table: the inputs' fault
                raise InputRejected(f"{self.manifest.name}:{self.manifest.version} rejected "
                                    f"the inputs: {short_message(e)}") from None
            if isinstance(out, dict):
                out = [out[n] for n in self._outputs]
            elif not isinstance(out, (tuple, list)):
                out = [out]
            # copied to the host before the next call: CUDA graph outputs are reused buffers
            return {n: t.detach().float().cpu().numpy() if t.is_floating_point()
                    else t.detach().cpu().numpy() for n, t in zip(self._outputs, out)}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = cast_inputs(self.manifest, inputs)
        # refused here, not deep in torch (and, compiled, not as a new shape that recompiles)
        check_shapes(self.manifest, feeds)
        if self._buckets is None:
            return self._forward(feeds)
        return self._buckets.run(self._forward, feeds)
