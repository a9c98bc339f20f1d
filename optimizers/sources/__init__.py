"""Sources the optimizer takes: the built-in ``minilm``, an ONNX file, a torch factory."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from .base import SourceModel

BUILTINS = ("minilm",)


def resolve_source(spec: str, *, name: str | None = None, task: str | None = None,
                   inputs: list[str] | None = None, outputs: list[str] | None = None
                   ) -> SourceModel:
    """Load a source from its spec: ``minilm``, ``path/to/model.onnx`` or ``pkg.mod:factory``."""
    if spec in BUILTINS:
        from . import minilm

        if task not in (None, "embedding"):
            raise SourceError(f"the built-in {spec!r} is an embedding model; drop --task {task}")
        return minilm.load(name or spec)
    if spec.endswith(".onnx") or Path(spec).is_file():
        from . import onnx_file

        return onnx_file.load(spec, name=name, task=task or "generic")
    if ":" in spec:
        from . import torch_factory

        return torch_factory.load(spec, inputs or [], outputs, name=name, task=task or "generic")
    raise SourceError(
        f"unknown source {spec!r}: expected a built-in model ({', '.join(BUILTINS)}), "
        "a path to an .onnx file, or a torch factory 'package.module:function'"
    )


__all__ = ["SourceModel", "resolve_source", "BUILTINS"]
