"""The held-out split: builders tune and calibrate on some rows, every variant is judged on
the others (disjoint, seeded, stratified by class)."""

from __future__ import annotations

import numpy as np
import pytest

from optimizers import OptimizeOptions, optimize
from optimizers.errors import ValidationDataError
from optimizers.validation import _tensor_set, split_validation
from optimizers.variants import VARIANTS, Variant

FACTORY = "tests.fixtures.tiny_models:classifier"


def _vset(n: int, labels: np.ndarray | None = None):
    vset = _tensor_set({"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2)})
    vset.labels = labels
    return vset


def test_split_is_disjoint_complete_and_seeded():
    vset = _vset(101)
    a, b = split_validation(vset, 0.5, seed=3), split_validation(vset, 0.5, seed=3)
    assert np.array_equal(a.held_out_rows, b.held_out_rows)
    assert not set(a.held_out_rows) & set(a.tuning_rows)
    assert sorted([*a.held_out_rows, *a.tuning_rows]) == list(range(101))
    assert len(a.held_out_rows) == 50 and a.held_out.rows == 50 and a.tuning.rows == 51
    # the parts hold exactly their rows' inputs
    assert np.array_equal(a.held_out.tensors["x"], vset.tensors["x"][a.held_out_rows])
    other = split_validation(vset, 0.5, seed=4)
    assert not np.array_equal(a.held_out_rows, other.held_out_rows)
    assert "seed 3" in a.note and "50 of 101" in a.note
    assert len(split_validation(vset, 0.2).held_out_rows) == 20


def test_split_holds_out_every_class_in_proportion():
    labels = np.array([0] * 90 + [1] * 10)
    s = split_validation(_vset(100, labels), 0.5, seed=0)
    assert np.bincount(s.held_out.labels).tolist() == [45, 5]
    assert np.bincount(s.tuning.labels).tolist() == [45, 5]
    assert np.array_equal(s.held_out.labels, labels[s.held_out_rows])


def test_reference_outputs_are_cut_in_each_parts_row_order():
    s = split_validation(_vset(10), 0.5, seed=1)
    full = {"y": np.arange(10) * 10}
    tune, held = s.reference(full)
    assert held["y"].tolist() == [r * 10 for r in s.held_out_rows]
    assert tune["y"].tolist() == [r * 10 for r in s.tuning_rows]


@pytest.mark.parametrize("n, fraction, message", [
    (3, 0.5, "at least 4"),
    (20, 1.0, "between 0 and 1"),
    (20, 0.0, "between 0 and 1"),
])
def test_split_refuses_what_cannot_hold_rows_out(n, fraction, message):
    with pytest.raises(ValidationDataError, match=message):
        split_validation(_vset(n), fraction)


def test_builders_see_only_tuning_rows_and_variants_are_judged_on_held_out(tmp_path, monkeypatch):
    """A builder that records what it is given: calibration data is never a judged row."""
    x = np.random.default_rng(0).standard_normal((120, 16)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    seen = {}

    def spy(ctx):
        seen["x"] = np.concatenate([b["x"] for b in ctx.validation.batches])
        seen["reference"] = next(iter(ctx.reference.values()))
        return VARIANTS["onnx-fp32"].build(ctx)

    monkeypatch.setitem(VARIANTS, "spy", Variant("spy", "records its context", spy))
    result = optimize(OptimizeOptions(
        source=FACTORY, name="tiny", task="classification", inputs=["x:FP32:-1,16"],
        variants=["spy"], validation_data=str(tmp_path / "val.npz"), publish="none",
        batch_sizes=[1], min_time_s=0.05, split_seed=5))
    o = result.outcome("spy")
    assert o.status == "ok", o.reason
    split = split_validation(_tensor_set({"x": x}), 0.5, seed=5)
    given = {r.tobytes() for r in seen["x"]}
    assert given == {r.tobytes() for r in x[split.tuning_rows]}
    assert not given & {r.tobytes() for r in x[split.held_out_rows]}
    assert len(seen["reference"]) == len(split.tuning_rows)
    m = o.measurements
    assert m.fidelity.rows == "held-out" and m.fidelity.samples == len(split.held_out_rows)
    assert m.tuning_fidelity.rows == "tuning" and m.tuning_fidelity.samples == len(
        split.tuning_rows)
    assert any("held out to judge" in n for n in result.validation_notes)
