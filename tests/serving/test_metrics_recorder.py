"""The replica's buffered recorder: summed counters and gauges pushed together, none lost."""

from __future__ import annotations

from serving import metrics as M


class RayMetricStandIn:
    """Stands in for a ``ray.serve.metrics`` object (they need a running Ray worker); it keeps
    Ray's rule that a counter only takes increments > 0 (``ValueError`` otherwise)."""

    def __init__(self, kind: str):
        self.kind, self.calls = kind, []

    def inc(self, value, tags):
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        self.calls.append(("inc", value, tags))

    def set(self, value, tags):
        self.calls.append(("set", value, tags))


def test_a_counter_that_did_not_move_costs_no_other_series():
    rec = M.BufferedRecorder(interval_s=3600)
    metrics = {s.name: RayMetricStandIn(s.kind) for s in M.ALL}
    rec.get = lambda spec: metrics[spec.name]
    tags = {"model": "m", "version": "1"}
    rec.inc(M.REQUESTS, {**tags, "outcome": "timeout", "code": "504"}, 0.0)  # zero-initialised
    rec.inc(M.ROWS, tags, 3)
    rec.inc(M.ROWS, tags, 4)
    rec.set(M.INFLIGHT, tags, 2)
    rec.flush()
    assert metrics[M.REQUESTS.name].calls == []
    assert metrics[M.ROWS.name].calls == [("inc", 7, tags)]
    assert metrics[M.INFLIGHT.name].calls == [("set", 2, tags)]
    rec.flush()  # counters are sent as increments once; gauges again every push
    assert metrics[M.ROWS.name].calls == [("inc", 7, tags)]
    assert len(metrics[M.INFLIGHT.name].calls) == 2
