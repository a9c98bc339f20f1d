"""Text preprocessing done inside serving: tokenize, group rows by length, pad each group."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..repository import TextPreprocessing
from ..settings import settings


@dataclass
class Encoded:
    """A batch of texts tokenized: token ids per row, which rows were truncated to
    ``max_length``, and (when asked) the texts and the tokenizer's encodings (offsets, special
    tokens) for post-processing."""

    rows: list[np.ndarray]
    truncated: list[bool]
    texts: Sequence[str] | None = None
    encodings: list | None = None


class TextEncoder:
    """A HuggingFace ``tokenizers`` tokenizer configured as the model was built."""

    def __init__(self, tokenizer_file: Path, pre: TextPreprocessing):
        from tokenizers import Tokenizer

        self.pre = pre
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # The shipped tokenizer.json may fix padding to a length; pad per group ourselves.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(pre.max_length, direction=pre.truncation_side)
        if pre.pad_id is not None:
            self.pad_id = pre.pad_id
        else:  # versions built before the manifest recorded it
            pad = self.tokenizer.token_to_id("[PAD]")
            self.pad_id = 0 if pad is None else pad

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids per text (int64), truncated to ``max_length``."""
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(list(texts))]

    def encode_batch(self, texts: Sequence[str], keep: bool = False) -> Encoded:
        """Token ids per text, whether each was truncated, and with ``keep`` the texts and the
        tokenizer's encodings (their offsets and special-token masks)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        rows = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        limit = self.pre.max_length
        # a row shorter than the limit was not cut; only those at it are asked (cheap)
        truncated = [len(r) >= limit and bool(e.overflowing) for r, e in zip(rows, encodings)]
        return Encoded(rows, truncated, texts if keep else None, encodings if keep else None)

    def pad(self, rows: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Model inputs for rows, padded to the longest row among them."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        feeds = {self.pre.ids_input: ids}
        if self.pre.mask_input:
            feeds[self.pre.mask_input] = mask
        if self.pre.type_ids_input:
            feeds[self.pre.type_ids_input] = np.zeros_like(ids)
        return feeds


def length_groups(lengths: Sequence[int], overhead: int | None = None,
                  max_rows: int | None = None) -> list[list[int]]:
    """Split row indices into groups of similar length, minimising padded work; with
    ``max_rows``, a group longer than that is cut into runs of at most ``max_rows`` rows (of
    similar length still: a group is a run of the sorted lengths).

    Rows are sorted by length and cut into contiguous runs; the cost of a run is
    ``rows * longest + overhead`` (padded tokens plus a per-call cost). The optimum is found
    exactly in O(n log n): ``best[j] = j*L_j + overhead + min_i (best[i] - i*L_j)`` is a minimum
    over lines of slope ``-i`` queried at non-decreasing ``L_j`` (the sorted lengths), which a
    monotone convex-hull deque answers in amortised O(1) per row after the sort.
    """
    # What one extra model call costs, in padded-token units, tunes how eagerly groups split.
    # On CPU a MiniLM INT8 call costs ~0.1 ms beyond its tokens (~0.04 ms per token at 128
    # tokens), so splitting is cheap; on a GPU a call costs far more and fewer, fuller groups win.
    if overhead is None:
        overhead = settings().length_group_overhead_tokens
    n = len(lengths)
    if n <= 1:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: lengths[i])
    srt = [int(lengths[i]) for i in order]
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    hull: deque[int] = deque()  # candidate cut points i: lines (-i, best[i]), slopes decreasing

    def useless(i1: int, i2: int, i3: int) -> bool:
        # line i2 is never the lowest once i3 exists (exact integer arithmetic)
        return (best[i3] - best[i1]) * (i2 - i1) <= (best[i2] - best[i1]) * (i3 - i1)

    for j in range(1, n + 1):
        i = j - 1
        while len(hull) >= 2 and useless(hull[-2], hull[-1], i):
            hull.pop()
        hull.append(i)
        x = srt[j - 1]
        while len(hull) >= 2 and best[hull[1]] - hull[1] * x <= best[hull[0]] - hull[0] * x:
            hull.popleft()
        i = hull[0]
        best[j] = best[i] + (j - i) * x + overhead
        cut[j] = i
    groups, j = [], n
    while j > 0:
        i = cut[j]
        # an over-long group is cut from its short end: the runs keep their sorted order
        step = j - i if max_rows is None else max_rows
        groups += [[order[k] for k in range(a, min(a + step, j))]
                   for a in reversed(range(i, j, step))]
        j = i
    return groups[::-1]
