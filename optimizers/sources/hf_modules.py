"""The torch modules a Hugging Face source is served as: the encoder with its task's head, and
what turns its output into what clients get (probabilities, pooled embeddings), in one graph.

Each takes ``input_ids`` and ``attention_mask`` (token type ids are zeros: one text per row);
everything after the encoder is part of the exported graph, so every variant (ONNX, OpenVINO,
INT8, students) returns exactly what serving answers with.
"""

from __future__ import annotations

import inspect

import torch

#: Sentence-transformers pooling modes optiserve computes (``1_Pooling/config.json``).
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def _takes_token_types(model) -> bool:
    return "token_type_ids" in inspect.signature(model.forward).parameters


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self._types = _takes_token_types(model)

    def run(self, input_ids, attention_mask):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._types:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        return self.model(**kwargs)


class SequenceClassifier(_Encoder):
    """``*ForSequenceClassification`` -> probabilities [rows, classes]: a softmax, or one
    sigmoid per class for multi-label classifiers (as transformers' pipeline applies them)."""

    def __init__(self, model, multi_label: bool):
        super().__init__(model)
        self.multi_label = multi_label

    def forward(self, input_ids, attention_mask):
        logits = self.run(input_ids, attention_mask).logits
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)


class TokenClassifier(_Encoder):
    """``*ForTokenClassification`` -> per-token probabilities [rows, tokens, labels]."""

    def forward(self, input_ids, attention_mask):
        return torch.softmax(self.run(input_ids, attention_mask).logits, dim=-1)


def pool(hidden, attention_mask, mode: str):
    """One sentence-transformers pooling mode over the token states of real tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return (hidden + (1.0 - mask) * -1e9).max(1).values
    if mode == "lasttoken":  # rows are padded on the right
        last = attention_mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    if mode == "weightedmean":
        weights = torch.cumsum(attention_mask, 1).unsqueeze(-1).to(hidden.dtype) * mask
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    total = (hidden * mask).sum(1)
    count = mask.sum(1).clamp(min=1e-9)
    if mode == "mean_sqrt_len_tokens":
        return total / torch.sqrt(count)
    return total / count


class SentenceEncoder(_Encoder):
    """Encoder + pooling (modes concatenated in order) + optional L2 normalisation: a
    sentence-transformers model's embedding, or a plain encoder's features pooled."""

    def __init__(self, model, modes: tuple[str, ...], normalize: bool):
        super().__init__(model)
        self.modes, self.normalize = tuple(modes), normalize

    def forward(self, input_ids, attention_mask):
        out = self.run(input_ids, attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        parts = [pool(hidden, attention_mask, m) for m in self.modes]
        pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled
