"""Token classification (NER and the like): a label per token and entities with character
offsets into the text, grouped as transformers' pipeline does with
``aggregation_strategy="simple"``.

The gateway keeps each row's tokenizer encoding (offsets, special tokens) while the replica runs
the model; per row, the model's per-token probabilities become:

- ``token_labels`` BYTES [rows, tokens]: each token's label (special tokens left out; rows
  shorter than the request's longest padded with empty strings);
- ``token_offsets`` INT64 [rows, tokens, 2]: each token's [start, end) in characters of the
  text (padding: -1);
- ``entities`` BYTES [rows]: a JSON list per text of ``{"entity_group", "score", "word",
  "start", "end"}``, the pipeline's fields (``word`` is the text between start and end).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from ..repository import Manifest
from ..runtimes.text import Encoded
from .base import Outputs, TextTask, mark_truncated


def _tag(label: str) -> tuple[str, str]:
    """(B or I, entity type) of a label; labels outside the B-/I- scheme continue (I)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def entities(text: str, labels: Sequence[str], scores: Sequence[float],
             offsets: Sequence[tuple[int, int]], ignore: Sequence[str] = ("O",)) -> list[dict]:
    """Entities of one text from its tokens (special tokens already left out): adjacent tokens
    of the same type are one entity unless the next starts with B-; each entity's score is the
    mean of its tokens'; entities of an ignored label are dropped."""
    groups: list[list[int]] = []
    for i, label in enumerate(labels):
        if groups:
            bi, tag = _tag(label)
            if tag == _tag(labels[groups[-1][-1]])[1] and bi != "B":
                groups[-1].append(i)
                continue
        groups.append([i])
    out = []
    for g in groups:
        group = labels[g[0]].split("-", 1)[-1]
        if group in ignore:
            continue
        start, end = int(offsets[g[0]][0]), int(offsets[g[-1]][1])
        out.append({"entity_group": group, "score": float(np.mean([scores[i] for i in g])),
                    "word": text[start:end], "start": start, "end": end})
    return out


def token_label_agreement(stable: np.ndarray, canary: np.ndarray) -> np.ndarray:
    """Per row: the share of tokens two versions label alike (``token_labels`` of each)."""
    a, b = np.asarray(stable, dtype=object), np.asarray(canary, dtype=object)
    width = max(a.shape[1] if a.ndim > 1 else 0, b.shape[1] if b.ndim > 1 else 0)
    out = np.ones(len(a))
    for r in range(len(a)):
        ra = list(a[r]) + [b""] * (width - a.shape[1])
        rb = list(b[r]) + [b""] * (width - b.shape[1])
        used = [x != b"" or y != b"" for x, y in zip(ra, rb)]
        if any(used):
            out[r] = float(np.mean([x == y for x, y, u in zip(ra, rb, used) if u]))
    return out


class TokenClassificationTask(TextTask):
    needs_encodings = True

    def __init__(self, manifest: Manifest):
        super().__init__(manifest)
        post = manifest.postprocessing
        self.labels = list(post.labels)
        self.ignore = list(post.ignore_labels)
        self.prob_name = manifest.model_signature.outputs[0].name

    def row(self, text: str, probs: np.ndarray, encoding) -> tuple[list[str], np.ndarray, str]:
        """(token labels, offsets [tokens, 2], entities JSON) of one row."""
        keep = [i for i, s in enumerate(encoding.special_tokens_mask[:len(probs)]) if not s]
        p = probs[keep]
        idx = p.argmax(1) if len(p) else np.zeros(0, dtype=np.int64)
        labels = [self.labels[i] for i in idx]
        scores = p[np.arange(len(idx)), idx] if len(p) else np.zeros(0)
        offsets = np.array([encoding.offsets[i] for i in keep], dtype=np.int64).reshape(-1, 2)
        ents = entities(text, labels, scores, offsets, self.ignore)
        return labels, offsets, json.dumps(ents, ensure_ascii=False)

    def split(self, sizes: Sequence[int], groups, results, encoded: Encoded) -> list[Outputs]:
        rows: list = [None] * len(encoded.rows)
        for g, res in zip(groups, results):
            probs = res[self.prob_name]
            for j, i in enumerate(g):
                n = len(encoded.rows[i])
                rows[i] = self.row(encoded.texts[i], probs[j, :n], encoded.encodings[i])
        out, start = [], 0
        for size in sizes:
            part = rows[start:start + size]
            width = max((len(r[0]) for r in part), default=0)
            labels = np.full((size, width), b"", dtype=object)
            offsets = np.full((size, width, 2), -1, dtype=np.int64)
            for r, (lab, off, _) in enumerate(part):
                labels[r, :len(lab)] = [x.encode() for x in lab]
                offsets[r, :len(off)] = off
            ents = np.array([r[2].encode() for r in part], dtype=object)
            o = Outputs({"token_labels": labels, "token_offsets": offsets, "entities": ents})
            out.append(mark_truncated(o, encoded, start, size))
            start += size
        return out
