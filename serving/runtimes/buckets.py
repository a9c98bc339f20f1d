"""Fixed shapes for a compiled model: every batch is padded up to a batch bucket and, for text
models, every sequence up to a sequence bucket, so the model only ever sees a few shapes, each
compiled and recorded as a CUDA graph once, before traffic.

Batches larger than the largest bucket are run in pieces of the largest bucket. Extra rows are
copies of the batch's last row (not zeros: a row of nothing but padding is a fully masked row,
which some models turn into NaN or a division by zero); extra tokens are zeros with a zero mask,
as the tokenizer pads. Outputs are cut back to the rows asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n``; ``n`` itself when none does."""
    return next((b for b in buckets if b >= n), n)


def seq_buckets(smallest: int, max_length: int) -> list[int]:
    """Sequence buckets doubling from ``smallest`` up to ``max_length`` (always the last)."""
    out, b = [], max(1, smallest)
    while b < max_length:
        out.append(b)
        b *= 2
    return [*out, max_length]


@dataclass(frozen=True)
class Buckets:
    """The shapes a compiled model runs: batch buckets, sequence buckets (text models) and the
    inputs whose second dimension is the sequence."""

    batch: tuple[int, ...]
    seq: tuple[int, ...] = ()
    seq_inputs: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.batch or list(self.batch) != sorted(set(self.batch)) or self.batch[0] < 1:
            raise ValueError(f"batch buckets must be increasing positive sizes, got "
                             f"{list(self.batch)}")
        if list(self.seq) != sorted(set(self.seq)) or (self.seq and self.seq[0] < 1):
            raise ValueError(f"sequence buckets must be increasing positive lengths, got "
                             f"{list(self.seq)}")
        if bool(self.seq) != bool(self.seq_inputs):
            raise ValueError("sequence buckets and the inputs they pad go together "
                             f"(seq {list(self.seq)}, inputs {list(self.seq_inputs)})")

    def pieces(self, rows: int) -> list[tuple[int, int]]:
        """(start, stop) of each piece a batch of ``rows`` runs in."""
        step = self.batch[-1]
        return [(i, min(i + step, rows)) for i in range(0, rows, step)]

    def shapes(self) -> list[tuple[int, int | None]]:
        """Every (batch, sequence) shape the model can see; sequence None when not padded."""
        return [(b, s) for b in self.batch for s in (self.seq or (None,))]

    def pad(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The feeds padded to their buckets, and how many rows are real."""
        rows = len(next(iter(feeds.values())))
        to_rows = bucket_for(rows, self.batch)
        seq = max((feeds[n].shape[1] for n in self.seq_inputs if n in feeds), default=None)
        to_seq = bucket_for(seq, self.seq) if seq is not None else None
        out = {}
        for name, x in feeds.items():
            if name in self.seq_inputs and x.shape[1] < to_seq:
                x = np.pad(x, [(0, 0), (0, to_seq - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
            if to_rows > rows:
                x = np.concatenate([x, np.repeat(x[-1:], to_rows - rows, axis=0)])
            out[name] = x
        return out, rows

    def run(self, fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
            feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``fn`` on the feeds in bucket shapes, its outputs cut back to the real rows."""
        rows = len(next(iter(feeds.values())))
        parts: list[dict[str, np.ndarray]] = []
        for start, stop in self.pieces(rows):
            padded, real = self.pad({k: v[start:stop] for k, v in feeds.items()})
            parts.append({k: v[:real] for k, v in fn(padded).items()})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
