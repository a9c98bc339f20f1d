"""A torch module factory ``package.module:function`` with a declared input signature."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

from serving.repository import DATATYPES, Signature, Source, TensorSpec

from ..errors import OptimizeError, SourceError
from .base import SourceModel


def parse_input_spec(spec: str) -> TensorSpec:
    """``NAME:DATATYPE:SHAPE``, e.g. ``features:FP32:-1,16`` (first dimension is the batch)."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise OptimizeError(
            f"--input {spec!r} must look like NAME:DATATYPE:SHAPE, e.g. features:FP32:-1,16"
        )
    name, dtype, shape = parts
    dtype = dtype.upper()
    if dtype not in DATATYPES or dtype == "BYTES":
        raise OptimizeError(
            f"--input {spec!r}: datatype {dtype!r} is not a tensor datatype; expected one of "
            f"{', '.join(d for d in DATATYPES if d != 'BYTES')}"
        )
    try:
        dims = [int(d) for d in shape.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise OptimizeError(f"--input {spec!r}: shape {shape!r} must be integers like -1,16")
    if not dims:
        raise OptimizeError(f"--input {spec!r}: shape is empty; expected e.g. -1,16")
    dims[0] = -1
    try:
        return TensorSpec(name=name, datatype=dtype, shape=dims)
    except ValueError as e:
        raise OptimizeError(f"--input {spec!r}: {e}") from e


def _import_factory(ref: str):
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise SourceError(f"torch factory {ref!r} must look like package.module:function")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # factories next to the user's working directory
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise SourceError(
            f"cannot import {module_name!r} for torch factory {ref!r}: {type(e).__name__}: {e}"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise SourceError(f"{module_name!r} has no callable {attr!r} (torch factory {ref!r})")
    return fn



def _build_module(ref: str):
    """The module the factory ``ref`` returns (its failures and non-modules refused by name)."""
    import torch

    fn = _import_factory(ref)
    try:
        module = fn()
    except Exception as e:
        raise SourceError(f"torch factory {ref!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(module, torch.nn.Module):
        raise SourceError(
            f"torch factory {ref!r} returned {type(module).__name__}; expected a torch.nn.Module")
    return module

def load(ref: str, inputs: list[str], outputs: list[str] | None = None,
         name: str | None = None, task: str = "generic") -> SourceModel:
    import torch

    if not inputs:
        raise OptimizeError(
            f"torch factory {ref!r} needs its input signature: pass --input NAME:DATATYPE:SHAPE "
            "for each forward() argument, e.g. --input features:FP32:-1,16"
        )
    specs = [parse_input_spec(s) for s in inputs]
    module = _build_module(ref)
    module.eval()
    # One forward pass on the declared shapes tells the outputs' count, dtypes and shapes.
    example = example_inputs(specs, rows=2)
    try:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(example[s.name]) for s in specs])
    except Exception as e:
        raise SourceError(
            f"torch factory {ref!r}: forward() failed on the declared inputs "
            f"({', '.join(f'{s.name}:{s.datatype}:{s.shape}' for s in specs)}): "
            f"{type(e).__name__}: {e}"
        ) from e
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    names = outputs or (["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))])
    if len(names) != len(outs):
        raise OptimizeError(
            f"--output names {names} do not match the {len(outs)} tensors forward() returns"
        )
    out_specs = []
    for n, t in zip(names, outs):
        if not isinstance(t, torch.Tensor):
            raise SourceError(f"torch factory {ref!r}: forward() returned {type(t).__name__}, "
                              "expected tensors")
        dtype = "FP32" if t.dtype.is_floating_point else "INT64"
        out_specs.append(TensorSpec(name=n, datatype=dtype, shape=[-1, *t.shape[1:]]))
    sig = Signature(inputs=specs, outputs=out_specs)
    return SourceModel(
        name=name or ref.partition(":")[2].replace("_", "-"),
        source=Source(kind="torch-factory", ref=ref),
        task=task,
        model_signature=sig,
        signature=sig,
        torch_module=module,
    )


def example_inputs(specs: list[TensorSpec], rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the declared shapes; dynamic non-batch dimensions must be declared."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if any(d == -1 for d in s.shape[1:]):
            raise OptimizeError(
                f"input {s.name!r} has a dynamic dimension {s.shape}; declare its size "
                "(e.g. -1,16) or give --validation-data"
            )
        shape = (rows, *s.shape[1:])
        dtype = np.dtype(DATATYPES[s.datatype])
        if dtype.kind == "f":
            out[s.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[s.name] = rng.random(shape) > 0.5
        else:
            out[s.name] = rng.integers(0, 100, shape).astype(dtype)
    return out


def load_image(ref: str, spec, inputs: list[str], outputs: list[str] | None = None,
               name: str | None = None, task: str | None = None,
               class_names: list[str] | None = None) -> SourceModel:
    """A torch factory whose module takes one pixel tensor (``--preprocess image``: ``spec``
    says its size, layout and normalisation) and returns class scores [N, classes]: served as
    an image classifier, encoded images in. Scores that are not probabilities already get a
    softmax (in the graph)."""
    import torch

    from .image_classifier import ImageClassifier, image_source

    if task not in (None, "classification"):
        raise OptimizeError(f"--preprocess image makes an image classifier; drop --task {task}")
    if inputs:
        raise OptimizeError("--preprocess image: the pixel tensor's shape comes from the image "
                            "options (--image-size, --layout); drop --input")
    if outputs and len(outputs) != 1:
        raise OptimizeError("--preprocess image: the module returns one tensor of class scores")
    module = _build_module(ref)
    module.eval()
    shape = (2, *spec.pixel_shape[1:])
    example = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    try:
        with torch.inference_mode():
            out = module(example)
    except Exception as e:
        raise SourceError(f"torch factory {ref!r}: forward() failed on pixels of shape "
                          f"{list(shape)} (--image-size, --layout): {type(e).__name__}: {e}"
                          ) from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.dtype.is_floating_point:
        raise SourceError(f"torch factory {ref!r}: --preprocess image needs forward() to return "
                          "one float tensor of class scores [N, classes] (got "
                          f"{type(out).__name__}{list(out.shape) if hasattr(out, 'shape') else ''})")
    classes = out.shape[1]
    labels = class_names or [str(i) for i in range(classes)]
    if len(labels) != classes:
        raise OptimizeError(f"--class-names lists {len(labels)} names; the module returns "
                            f"{classes} class scores")
    sums = out.float().sum(1)
    already = bool((out >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
    notes = [f"torch factory {ref}, {classes} classes"
             + ("; its outputs are probabilities already (rows sum to 1), no softmax added"
                if already else "; a softmax added to its scores")]
    return image_source(
        name=name or ref.partition(":")[2].replace("_", "-"),
        source=Source(kind="torch-factory", ref=ref), module=ImageClassifier(
            module, softmax=not already), spec=spec, labels=labels, notes=notes)
