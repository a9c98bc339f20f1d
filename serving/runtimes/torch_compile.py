"""torch.compile of a TorchScript version at load: the ``torch-compile-*`` variants.

What a version holds: the TorchScript file every torch version holds (here traced in fp16 on
the GPU) plus ``compile.json``, the recipe (backend, mode, buckets), both listed with their
sha256 in the manifest. What the replica does with them: ``torch.jit.load`` (TorchScript's own
loader: no pickle, no Python code from the repository runs), converts the TorchScript graph to an
FX graph in memory (torch's TorchScript-to-export converter), compiles that with inductor
(``mode="reduce-overhead"``: CUDA graphs on a GPU) and runs every bucket shape before it serves,
so no request waits for a compilation or a graph capture. Compiled kernels are not stored in the
version: they depend on the GPU, the driver and the torch build, and inductor's own on-disk
cache makes a second load on the same machine faster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from ..repository import DATATYPES, Manifest, Signature
from .base import RuntimeLoadError
from .buckets import Buckets

#: The recipe's artifact path in a version directory.
RECIPE_FILE = "compile.json"


class CompileRecipe(BaseModel):
    """How a replica compiles a TorchScript version (``compile.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = Field(1, description="Recipe format version.")
    backend: Literal["inductor"] = Field("inductor", description="torch.compile backend.")
    mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "reduce-overhead", description="torch.compile mode; reduce-overhead records CUDA graphs "
                                       "(on CPU it compiles as default).")
    batch_buckets: list[PositiveInt] = Field(min_length=1, description="Batch sizes, increasing.")
    seq_buckets: list[PositiveInt] = Field(default_factory=list,
                                           description="Sequence lengths, increasing (text).")
    seq_inputs: list[str] = Field(default_factory=list,
                                  description="Inputs whose second dimension is the sequence.")
    warmup: bool = Field(True, description="Run every bucket shape at load.")

    @field_validator("batch_buckets", "seq_buckets")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v != sorted(set(v)):
            raise ValueError(f"must be increasing without repeats, got {v}")
        return v

    def buckets(self) -> Buckets:
        return Buckets(tuple(self.batch_buckets), tuple(self.seq_buckets), tuple(self.seq_inputs))


def read_recipe(manifest: Manifest, version_dir: Path) -> CompileRecipe:
    """The version's recipe, checked against its signature; RuntimeLoadError names the field."""
    where = f"{RECIPE_FILE} of {manifest.name}:{manifest.version}"
    try:
        recipe = CompileRecipe.model_validate_json((version_dir / RECIPE_FILE).read_text())
    except OSError as e:
        raise RuntimeLoadError(f"cannot read {where}: {e.strerror or e}") from e
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(document)"
        raise RuntimeLoadError(f"{where}: {field}: {err['msg']}") from None
    inputs = {i.name for i in manifest.model_signature.inputs}
    unknown = [n for n in recipe.seq_inputs if n not in inputs]
    if unknown:
        raise RuntimeLoadError(f"{where}: seq_inputs: {unknown} are not inputs of the model "
                               f"({sorted(inputs)})")
    if recipe.seq_inputs and any(-1 in o.shape[1:] for o in manifest.model_signature.outputs):
        # padded tokens would show in an output that has a sequence dimension
        raise RuntimeLoadError(f"{where}: seq_inputs: sequence padding needs outputs of fixed "
                               "size beyond the batch")
    return recipe


def sample_feeds(signature: Signature, mask_input: str | None, batch: int, seq: int | None,
                 seq_inputs: list[str]) -> dict[str, np.ndarray] | None:
    """Inputs of one bucket shape (zeros, a mask of ones); None when a dimension other than
    the batch and the padded sequence is free, so no shape can be made up."""
    feeds = {}
    for spec in signature.inputs:
        shape = []
        for i, d in enumerate(spec.shape):
            if i == 0:
                shape.append(batch)
            elif d == -1 and spec.name in seq_inputs and seq is not None:
                shape.append(seq)
            elif d == -1:
                return None
            else:
                shape.append(d)
        make = np.ones if spec.name == mask_input else np.zeros
        feeds[spec.name] = make(shape, dtype=DATATYPES[spec.datatype])
    return feeds


def compile_script_module(module, sample_args: tuple, mode: str, device):
    """The TorchScript module as an FX graph, compiled by inductor with dynamic shapes (one
    compilation serves every bucket; CUDA graphs are recorded per shape)."""
    import warnings

    import torch
    from torch._export.converter import TS2EPConverter

    try:
        with warnings.catch_warnings():
            # "Manually populate ... never used": weights the traced graph does not use
            warnings.simplefilter("ignore", UserWarning)
            graph = TS2EPConverter(module, sample_args).convert().module()
    except Exception as e:
        raise RuntimeLoadError(f"torch cannot convert this TorchScript graph for torch.compile: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    if device.type != "cuda" and mode == "reduce-overhead":
        mode = "default"  # CUDA graphs are for CUDA; on CPU the same compilation without them
    return torch.compile(graph, backend="inductor", mode=mode, dynamic=True)
