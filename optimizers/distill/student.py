"""A smaller student built from a transformer-encoder teacher: fewer layers, fewer attention heads,
narrower feed-forward blocks, every kept weight copied from the teacher.

The teacher is any torch module that holds a Hugging Face BERT-like encoder (``.encoder.layer``
of blocks with ``attention.self.query/key/value``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense``), such as the built-in ``minilm``: the wrapper
(pooling, normalisation) is copied unchanged, only the encoder inside it shrinks.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from ..errors import OptimizeError


class CannotPrune(OptimizeError):
    """The model is not a transformer encoder this module knows how to shrink."""


@dataclass(frozen=True)
class StudentSpec:
    """What to keep: ``layers`` encoder blocks, and per block a fraction of heads and FFN
    channels pruned (0 keeps them all)."""

    layers: int
    prune_heads: float = 0.0
    prune_ffn: float = 0.0

    @property
    def name(self) -> str:
        """``l3``, ``l4-h25``, ``l3-h25-f50``: the spec as it is written on the command line."""
        text = f"l{self.layers}"
        if self.prune_heads:
            text += f"-h{round(self.prune_heads * 100)}"
        if self.prune_ffn:
            text += f"-f{round(self.prune_ffn * 100)}"
        return text

    @classmethod
    def parse(cls, text: str) -> StudentSpec:
        m = re.fullmatch(r"l(\d+)(?:-h(\d+))?(?:-f(\d+))?", text.strip().lower())
        if not m:
            raise OptimizeError(
                f"bad student {text!r}: expected lN[-hP][-fQ], e.g. l3 (3 layers), l4-h25 "
                "(4 layers, 25% of the heads pruned), l4-h25-f50 (and half the FFN channels)")
        layers, heads, ffn = int(m[1]), int(m[2] or 0), int(m[3] or 0)
        if layers < 1:
            raise OptimizeError(f"bad student {text!r}: keep at least 1 layer")
        if heads >= 100 or ffn >= 100:
            raise OptimizeError(f"bad student {text!r}: prune less than 100% of heads/FFN")
        return cls(layers, heads / 100.0, ffn / 100.0)


def find_encoder(module):
    """The BERT-like encoder inside ``module`` (itself or a submodule), or CannotPrune."""
    import torch

    if module is None:
        raise CannotPrune("the source is not a torch model (distillation needs the teacher's "
                          "torch module: the built-in minilm or a torch factory returning a "
                          "transformer encoder)")
    candidates = [module] + [m for _, m in module.named_modules()] if isinstance(
        module, torch.nn.Module) else []
    for m in candidates:
        layers = getattr(getattr(m, "encoder", None), "layer", None)
        config = getattr(m, "config", None)
        if (isinstance(layers, torch.nn.ModuleList) and len(layers) > 0 and config is not None
                and all(_is_block(b) for b in layers)):
            return m
    raise CannotPrune(
        f"{type(module).__name__} cannot be pruned: it is not a transformer encoder "
        "(expected a BERT-like model with encoder.layer blocks of self-attention and "
        "feed-forward layers)")


def _is_block(block) -> bool:
    try:
        sa = block.attention.self
        return all(hasattr(sa, a) for a in ("query", "key", "value", "num_attention_heads")) and \
            hasattr(block.attention.output, "dense") and hasattr(block.intermediate, "dense") \
            and hasattr(block.output, "dense")
    except AttributeError:
        return False


def layer_map(teacher_layers: int, keep: int) -> list[int]:
    """Evenly spaced teacher layers ending with the last one: 6 -> 3 gives [1, 3, 5]."""
    if keep > teacher_layers:
        raise OptimizeError(f"a student cannot have more layers ({keep}) than the teacher "
                            f"({teacher_layers})")
    return [round((i + 1) * teacher_layers / keep) - 1 for i in range(keep)]


def build_student(teacher, spec: StudentSpec, head_scores=None):
    """A deep copy of ``teacher`` with its encoder shrunk to ``spec``.

    ``head_scores[layer][head]`` (student layer order) ranks heads for pruning; without it heads
    are ranked by the norm of their query, key, value and output weights. FFN channels are ranked
    by the norm of their input and output weights. Every block prunes the same number of heads,
    so the graph keeps one head count (ONNX Runtime's attention fusion needs that).
    Returns ``(student, info)``: info has the teacher layers kept, heads and FFN width per layer.
    """
    import torch

    encoder = find_encoder(teacher)
    n = len(encoder.encoder.layer)
    keep = layer_map(n, spec.layers)
    student = copy.deepcopy(teacher)
    s_enc = find_encoder(student)
    s_enc.encoder.layer = torch.nn.ModuleList([s_enc.encoder.layer[i] for i in keep])
    for i, block in enumerate(s_enc.encoder.layer):
        for attr in ("layer_idx",):
            if hasattr(block.attention.self, attr):
                setattr(block.attention.self, attr, i)
    s_enc.config.num_hidden_layers = spec.layers
    heads = s_enc.encoder.layer[0].attention.self.num_attention_heads
    n_prune = int(round(spec.prune_heads * heads))
    if n_prune >= heads:
        n_prune = heads - 1
    ffn = s_enc.encoder.layer[0].intermediate.dense.out_features
    ffn_keep = max(1, int(round((1.0 - spec.prune_ffn) * ffn)))
    with torch.no_grad():
        for i, block in enumerate(s_enc.encoder.layer):
            if n_prune:
                scores = (torch.as_tensor(head_scores[i], dtype=torch.float32)
                          if head_scores is not None else head_norms(block))
                _prune_heads(block, sorted(torch.argsort(scores)[:n_prune].tolist()))
            if ffn_keep < ffn:
                _prune_ffn(block, ffn_keep)
    info = {"teacher_layers": n, "kept_layers": keep, "heads": heads - n_prune,
            "teacher_heads": heads, "ffn": min(ffn, ffn_keep), "teacher_ffn": ffn}
    return student.eval(), info


def head_norms(block):
    """Per-head importance: L2 norm of the head's slices of Q, K, V and the output projection."""
    import torch

    sa = block.attention.self
    h, d = sa.num_attention_heads, sa.attention_head_size
    parts = [sa.query.weight, sa.key.weight, sa.value.weight]
    score = sum(p.view(h, d, -1).pow(2).sum((1, 2)) for p in parts)
    out = block.attention.output.dense.weight  # [hidden, h*d]
    score = score + out.view(out.shape[0], h, d).pow(2).sum((0, 2))
    return torch.sqrt(score)


def _prune_heads(block, heads: list[int]) -> None:
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    sa = block.attention.self
    d = sa.attention_head_size
    keep = [h for h in range(sa.num_attention_heads) if h not in set(heads)]
    index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep]).long()
    sa.query = prune_linear_layer(sa.query, index)
    sa.key = prune_linear_layer(sa.key, index)
    sa.value = prune_linear_layer(sa.value, index)
    block.attention.output.dense = prune_linear_layer(block.attention.output.dense, index, dim=1)
    sa.num_attention_heads = len(keep)
    sa.all_head_size = len(keep) * d


def _prune_ffn(block, keep: int) -> None:
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    w_in, w_out = block.intermediate.dense.weight, block.output.dense.weight
    score = w_in.pow(2).sum(1) + w_out.pow(2).sum(0)
    index = torch.sort(torch.argsort(score, descending=True)[:keep]).values
    block.intermediate.dense = prune_linear_layer(block.intermediate.dense, index)
    block.output.dense = prune_linear_layer(block.output.dense, index, dim=1)
