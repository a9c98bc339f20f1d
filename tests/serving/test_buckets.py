"""Bucket padding of a compiled model's inputs (serving/runtimes/buckets.py): every call the
model sees has a bucket shape, padding never changes a real row, outputs come back cut."""

from __future__ import annotations

import numpy as np
import pytest

from serving.runtimes.buckets import Buckets, bucket_for, seq_buckets


def test_a_size_goes_to_the_smallest_bucket_that_holds_it():
    assert [bucket_for(n, (2, 4, 8)) for n in (1, 2, 3, 8, 9)] == [2, 2, 4, 8, 9]
    assert seq_buckets(16, 256) == [16, 32, 64, 128, 256]
    assert seq_buckets(16, 100) == [16, 32, 64, 100]
    assert seq_buckets(16, 8) == [8]


def text_batch(rows: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 1000, (rows, seq))
    mask = np.ones((rows, seq), np.int64)
    mask[0, seq // 2:] = 0  # a shorter sentence inside the batch
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def row_model(calls: list):
    """A stand-in model whose row r is a function of row r only: the sum of masked ids."""
    def fn(feeds):
        calls.append({k: v.shape for k, v in feeds.items()})
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        return {"out": (ids * mask).sum(1, keepdims=True).astype(np.float32),
                "rows": np.arange(len(ids))[:, None]}
    return fn


@pytest.mark.parametrize("rows, seq", [(1, 5), (3, 16), (4, 17), (9, 40), (20, 7)])
def test_the_model_sees_bucket_shapes_only_and_the_rows_asked_for_come_back(rows, seq):
    b = Buckets(batch=(2, 4, 8), seq=(16, 32, 64), seq_inputs=("input_ids", "attention_mask"))
    feeds = text_batch(rows, seq)
    calls = []
    out = b.run(row_model(calls), feeds)
    shapes = set(b.shapes())
    for c in calls:
        assert (c["input_ids"][0], c["input_ids"][1]) in shapes, c
        assert c["input_ids"] == c["attention_mask"]
    # larger than the largest bucket: pieces of 8
    assert len(calls) == -(-rows // 8)
    want = (feeds["input_ids"] * feeds["attention_mask"]).sum(1, keepdims=True)
    np.testing.assert_array_equal(out["out"], want)
    assert out["out"].shape == (rows, 1)


def test_padding_rows_copy_the_last_row_and_padding_tokens_are_masked():
    b = Buckets(batch=(4,), seq=(8,), seq_inputs=("input_ids", "attention_mask"))
    feeds = text_batch(3, 5)
    padded, real = b.pad(feeds)
    assert real == 3 and padded["input_ids"].shape == (4, 8)
    np.testing.assert_array_equal(padded["input_ids"][3], padded["input_ids"][2])
    assert not padded["attention_mask"][:, 5:].any() and not padded["input_ids"][:, 5:].any()
    np.testing.assert_array_equal(padded["input_ids"][:3, :5], feeds["input_ids"])


def test_without_sequence_buckets_only_the_batch_is_padded():
    b = Buckets(batch=(2, 4))
    x = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)
    padded, real = b.pad({"x": x})
    assert padded["x"].shape == (4, 16) and real == 3
    assert b.shapes() == [(2, None), (4, None)]


def test_a_sequence_longer_than_every_bucket_runs_at_its_own_length():
    b = Buckets(batch=(2,), seq=(16,), seq_inputs=("input_ids", "attention_mask"))
    padded, _ = b.pad(text_batch(2, 20))
    assert padded["input_ids"].shape == (2, 20)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": ()}, "batch buckets must be increasing"),
    ({"batch": (4, 2)}, "batch buckets must be increasing"),
    ({"batch": (2,), "seq": (32, 16), "seq_inputs": ("ids",)}, "sequence buckets"),
    ({"batch": (2,), "seq": (16,)}, "go together"),
])
def test_buckets_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Buckets(**kwargs)
