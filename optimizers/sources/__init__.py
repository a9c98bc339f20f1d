"""Sources the optimizer takes: the built-ins ``minilm``, ``efficientnet-lite0`` and
``breast-cancer``, a Hugging Face model directory (``DIR`` or ``hf:DIR``), an ONNX file, a torch factory, a scikit-learn model
``sklearn:FILE``."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from .base import SourceModel

BUILTINS = ("minilm", "efficientnet-lite0", "breast-cancer")
IMAGE_BUILTINS = ("efficientnet-lite0",)
TABULAR_BUILTINS = ("breast-cancer",)


def resolve_source(spec: str, *, name: str | None = None, task: str | None = None,
                   inputs: list[str] | None = None, outputs: list[str] | None = None,
                   trust: bool = False, trusted_types: list[str] | None = None,
                   pooling: str | None = None, image=None,
                   class_names: list[str] | None = None) -> SourceModel:
    """Load a source from its spec: ``minilm``, ``breast-cancer``, ``sklearn:FILE``, a Hugging
    Face directory (``DIR`` or ``hf:DIR``), ``path/to/model.onnx`` or ``pkg.mod:factory``.
    ``image``: a torch factory's image preprocessing (``--preprocess image``), an
    :class:`~serving.repository.ImagePreprocessing`."""
    if image is not None and (spec in BUILTINS or spec.startswith(("hf:", "sklearn:"))
                              or Path(spec).exists()):
        raise SourceError("--preprocess image applies to torch factories; built-ins and Hugging "
                          "Face directories bring their own preprocessing")
    if class_names is not None and image is None:
        raise SourceError("--class-names names a torch factory's classes with --preprocess image")
    if spec in IMAGE_BUILTINS:
        if task not in (None, "classification"):
            raise SourceError(f"the built-in {spec!r} is an image classifier; drop --task {task}")
        from . import efficientnet_lite0

        return efficientnet_lite0.load(name or spec)
    if pooling is not None and not (spec.startswith("hf:") or Path(spec).is_dir()):
        raise SourceError("--pooling applies to Hugging Face directories (feature extraction)")
    if spec in TABULAR_BUILTINS or spec.startswith("sklearn:"):
        if task not in (None, "classification"):
            raise SourceError(f"{spec!r} is a classifier; drop --task {task}")
        if spec in TABULAR_BUILTINS:
            from . import breast_cancer

            return breast_cancer.load(name or spec)
        from . import sklearn_file

        return sklearn_file.load(spec.partition(":")[2], name=name, trust=trust,
                                 trusted_types=trusted_types)
    if spec in BUILTINS:
        from . import minilm

        if task not in (None, "embedding"):
            raise SourceError(f"the built-in {spec!r} is an embedding model; drop --task {task}")
        return minilm.load(name or spec)
    if spec.startswith("hf:") or Path(spec).is_dir():
        from . import huggingface

        path = spec[3:] if spec.startswith("hf:") else spec
        if not Path(path).is_dir():
            raise SourceError(f"{spec}: {path} is not a directory; expected a Hugging Face "
                              "model directory (written by save_pretrained)")
        return huggingface.load(path, name=name, task=task, pooling=pooling)
    if task == "token-classification":
        raise SourceError("--task token-classification takes a Hugging Face directory (a "
                          "*ForTokenClassification model with its tokenizer)")
    if spec.endswith(".onnx") or Path(spec).is_file():
        from . import onnx_file

        return onnx_file.load(spec, name=name, task=task or "generic")
    if ":" in spec:
        from . import torch_factory

        if image is not None:
            return torch_factory.load_image(spec, image, inputs or [], outputs, name=name,
                                            task=task, class_names=class_names)
        return torch_factory.load(spec, inputs or [], outputs, name=name, task=task or "generic")
    raise SourceError(
        f"unknown source {spec!r}: expected a built-in model ({', '.join(BUILTINS)}), "
        "a Hugging Face model directory (DIR or hf:DIR), a path to an .onnx file, a torch "
        "factory 'package.module:function', or a scikit-learn model 'sklearn:FILE' (.skops "
        "or joblib)" + (f"; {spec} does not exist" if "/" in spec or spec.startswith(".")
                        else "")
    )


__all__ = ["SourceModel", "resolve_source", "BUILTINS", "IMAGE_BUILTINS", "TABULAR_BUILTINS"]
