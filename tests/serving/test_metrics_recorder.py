"""The replica's buffered recorder: summed counters and gauges pushed together, none lost."""

from __future__ import annotations

from serving import metrics as M


class RayMetricStandIn:
    """Stands in for a ``ray.serve.metrics`` object (they need a running Ray worker); it keeps
    Ray's rule that a counter only takes increments > 0 (``ValueError`` otherwise)."""

    def __init__(self, kind: str):
        self.kind, self.calls = kind, []
        self._tag_keys = ()

    def _record(self, value, tags):  # what Counter.inc does after its > 0 check
        self.calls.append(("record", value, tags))

    def inc(self, value, tags):
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        self.calls.append(("inc", value, tags))

    def set(self, value, tags):
        self.calls.append(("set", value, tags))


def test_a_counter_that_did_not_move_is_exported_at_zero_once_and_costs_no_other_series():
    """A zero-initialised series (a version's error outcomes) must exist at 0 before its first
    event, or Prometheus' increase() misses that event (the series would be born at 1)."""
    rec = M.BufferedRecorder(interval_s=3600)
    metrics = {s.name: RayMetricStandIn(s.kind) for s in M.ALL}
    rec.get = lambda spec: metrics[spec.name]
    tags = {"model": "m", "version": "1"}
    rec.inc(M.REQUESTS, {**tags, "outcome": "timeout", "code": "504"}, 0.0)  # zero-initialised
    rec.inc(M.ROWS, tags, 3)
    rec.inc(M.ROWS, tags, 4)
    rec.set(M.INFLIGHT, tags, 2)
    rec.flush()
    assert metrics[M.REQUESTS.name].calls == [
        ("record", 0.0, {**tags, "outcome": "timeout", "code": "504"})]
    assert metrics[M.ROWS.name].calls == [("inc", 7, tags)]
    assert metrics[M.INFLIGHT.name].calls == [("set", 2, tags)]
    rec.inc(M.REQUESTS, {**tags, "outcome": "timeout", "code": "504"}, 0.0)  # re-initialised
    rec.flush()  # counters are sent as increments once; gauges again every push
    assert metrics[M.ROWS.name].calls == [("inc", 7, tags)]
    assert len(metrics[M.REQUESTS.name].calls) == 1  # the zero goes out once
    assert len(metrics[M.INFLIGHT.name].calls) == 2
