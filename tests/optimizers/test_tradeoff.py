"""The trade-off answer on constructed points: the four-way Pareto front, the fastest variant per
budget, and the one-sentence verdict."""

from __future__ import annotations

from optimizers.tradeoff import BUDGETS, Point, best_per_budget, front, method_of, verdict


def _p(name, speed, fid, size=100, rss=50.0, passed=None):
    return Point(name, method_of(name), speed, fid, size, rss,
                 fid >= 0.98 if passed is None else passed)


PTS = [
    _p("torch-fp32", 100, 1.0, size=90, rss=400),
    _p("onnx-fp32", 150, 1.0, size=90, rss=300),
    _p("onnx-int8-dynamic", 400, 0.986, size=25, rss=200),
    _p("openvino-int8", 700, 0.9935, size=30, rss=250),
    _p("student-l3/onnx-int8-dynamic", 1100, 0.975, size=15, rss=150),
]


def test_front_spans_speed_fidelity_size_and_memory():
    names = [p.name for p in front(PTS)]
    # torch-fp32 is dominated by onnx-fp32 (as faithful, faster, as small, leaner);
    # onnx-int8-dynamic is smaller than openvino-int8, so it stays on the four-way front
    assert names == ["student-l3/onnx-int8-dynamic", "openvino-int8", "onnx-int8-dynamic",
                     "onnx-fp32"]
    same = [_p("a", 10, 0.99), _p("b", 10, 0.99)]
    assert len(front(same)) == 2  # equal points do not dominate each other


def test_fastest_variant_for_each_budget():
    table = dict(best_per_budget(PTS))
    assert list(table) == list(BUDGETS)
    assert table[0.95].name == table[0.97].name == "student-l3/onnx-int8-dynamic"
    assert table[0.98].name == table[0.99].name == "openvino-int8"
    assert table[0.995].name == "onnx-fp32"
    assert best_per_budget(PTS, budgets=(1.01,)) == [(1.01, None)]


def test_verdict_names_the_winner_its_speedup_and_why():
    text = verdict(PTS, "openvino-int8", "torch-fp32", 0.98, "cosine min")
    assert text.startswith("OpenVINO") or "`openvino-int8`" in text
    assert "7.0x `torch-fp32`" in text and "0.9935" in text
    assert "`student-l3/onnx-int8-dynamic`" in text and "over the budget" in text
    assert text.count(".") >= 1 and "\n" not in text

    fastest = verdict(PTS[:4], "openvino-int8", "torch-fp32", 0.98, "cosine min")
    assert "fastest of all, 1.75x the next within budget (`onnx-int8-dynamic`)" in fastest

    none = verdict(PTS, None, "torch-fp32", 0.999, "cosine min")
    assert none.startswith("No method won") and "`torch-fp32`" in none


def test_method_names_the_student_and_the_runtime():
    assert method_of("student-l3/onnx-int8-dynamic").startswith("student-l3: ONNX Runtime")
    assert method_of("onnx-int8-dynamic") == "ONNX Runtime, INT8 dynamic (QInt8 per channel)"
    assert method_of("select-k5") == "select-k5"
