"""A text version's batch, from the length groups the model ran back to one answer per request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..repository import Manifest
from ..runtimes.text import Encoded


class Outputs(dict):
    """One request's output tensors by name, plus response-level ``parameters`` (the OIP
    response's ``parameters`` object: e.g. ``truncated``, the rows cut to max_length)."""

    def __init__(self, *args, parameters: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.parameters = parameters or {}


def merge_rows(groups: Sequence[Sequence[int]], results: Sequence[dict[str, np.ndarray]],
               rows: int) -> dict[str, np.ndarray]:
    """The groups' outputs back in row order (outputs of one width per row)."""
    names = list(results[0])
    merged = {n: np.empty((rows, *results[0][n].shape[1:]), results[0][n].dtype) for n in names}
    for g, res in zip(groups, results):
        for n in names:
            merged[n][g] = res[n]
    return merged


def mark_truncated(o: Outputs, encoded: Encoded, start: int, size: int) -> Outputs:
    """Note in ``o.parameters`` which of the request's rows (``start``..``start+size`` of the
    batch) the tokenizer cut to max_length."""
    cut = [i for i in range(size) if encoded.truncated[start + i]]
    if cut:
        o.parameters["truncated"] = cut
    return o


class TextTask:
    """Embeddings and other fixed-width outputs: the model's tensors as they are."""

    #: whether post-processing needs each row's tokenizer encoding (offsets, special tokens)
    needs_encodings = False

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    def finish(self, merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs derived from the model's (label names, ...); the model's by default."""
        return merged

    def rows_outputs(self, groups, results, encoded: Encoded) -> dict[str, np.ndarray]:
        return self.finish(merge_rows(groups, results, len(encoded.rows)))

    def split(self, sizes: Sequence[int], groups, results, encoded: Encoded) -> list[Outputs]:
        """One :class:`Outputs` per request of ``sizes`` rows (the batch's requests in order),
        each saying which of its rows were truncated."""
        merged = self.rows_outputs(groups, results, encoded)
        out, start = [], 0
        for size in sizes:
            o = Outputs({k: v[start:start + size] for k, v in merged.items()})
            out.append(mark_truncated(o, encoded, start, size))
            start += size
        return out
