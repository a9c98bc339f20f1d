"""The rollout controller's decisions on a clock it does not own: waits that accumulate
evidence, the window floor, inconclusive pauses, resume, and errors that do not end the loop.

Stand-ins, named as such: ``StandInPrometheus`` answers the analysis queries from a traffic
model (requests per second for the canary and the comparisons), ``RecordingTarget`` records
the weights it is told to apply. The state store is the real file store. The same decisions are
exercised end to end against real Serve and Prometheus in test_rollout_e2e."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from serving.rollout import FileStateStore
from serving.rollout import controller as controller_module
from serving.rollout.controller import Controller, RolloutError
from serving.rollout.targets import Traffic


class Clock:
    def __init__(self):
        self.t = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class StandInPrometheus:
    """Stand-in for Prometheus: ``rate`` canary requests/s (and as many comparisons), all
    successful and agreeing; records each query's window."""

    def __init__(self, rate: float):
        self.rate = rate
        self.windows: list[float] = []
        self.fail_with: Exception | None = None

    def query(self, expr: str) -> float | None:
        if self.fail_with is not None:
            raise self.fail_with
        window = float(re.search(r"\[(\d+)s\]", expr).group(1))
        if "optiserve_requests_total" in expr and "outcome" not in expr:
            self.windows.append(window)
            return self.rate * window
        if "outcome=~" in expr and "requests_total" in expr:
            return 0.0
        if "shadow_agreement_count" in expr and "/" not in expr:
            return self.rate * window
        if "shadow_agreement_sum" in expr:
            return 0.995
        if "histogram_quantile" in expr:
            return 20.0
        raise AssertionError(f"unexpected query {expr}")


class RecordingTarget:
    """Stand-in for the Serve / RayService target: records the weights it is given."""

    def __init__(self):
        self.applied: list[tuple] = []

    def read(self, model: str) -> Traffic:
        return Traffic(stable=1, canary=None, canary_weight=0.0, shadow=0.0, versions=(1, 2))

    def apply(self, model, stable, canary, weight, shadow) -> None:
        self.applied.append((stable, canary, weight))


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(controller_module, "now", c)
    return c


def make(tmp_path, rate: float, **options):
    prom, target = StandInPrometheus(rate), RecordingTarget()
    ctl = Controller(FileStateStore(tmp_path / "state"), target, prom)
    spec = {"steps": [50, 100], "interval_s": 10, "min_requests": 20, "max_wait_intervals": 6,
            "scrape_interval_s": 1, "shadow": 0.5, "max_p99_ratio": None, **options}
    ctl.start("m", 2, **spec)
    return ctl, prom, target


def run_for(ctl, clock, seconds: float, step: float = 1.0) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)
        ctl.tick()


def test_a_waiting_step_accumulates_evidence_until_it_can_be_judged(tmp_path, clock):
    # 0.5 requests/s: 20 requests need 40 s of data, four intervals of 10 s
    ctl, prom, target = make(tmp_path, rate=0.5)
    run_for(ctl, clock, 45)
    st = ctl.store.load("m")
    assert prom.windows[:4] == [10, 20, 30, 40]  # the window grows from the step's start
    assert st.step == 1 and st.phase == "progressing"
    assert [a.outcome for a in st.analyses] == ["wait", "wait", "wait", "pass"]
    run_for(ctl, clock, 45)
    st = ctl.store.load("m")
    assert st.phase == "promoted", st.reason
    assert target.applied == [(1, 2, 50.0), (1, 2, 100.0), (2, None, 0.0)]


def test_the_window_is_never_shorter_than_four_scrape_intervals(tmp_path, clock):
    ctl, prom, _ = make(tmp_path, rate=10, interval_s=2, scrape_interval_s=15)
    run_for(ctl, clock, 3)
    assert prom.windows and prom.windows[0] == 60


def test_too_little_data_pauses_as_inconclusive_and_resume_waits_again(tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=0.0, max_wait_intervals=3)
    run_for(ctl, clock, 45)
    st = ctl.store.load("m")
    assert st.phase == "inconclusive" and "after 3 intervals" in st.reason
    assert target.applied == [(1, 2, 50.0)]  # weights held: nothing rolled back
    judged = len(st.analyses)
    run_for(ctl, clock, 60)  # paused: no more analyses, no changes
    assert len(ctl.store.load("m").analyses) == judged and target.applied == [(1, 2, 50.0)]
    with pytest.raises(RolloutError, match="not inconclusive"):
        make(tmp_path / "other", rate=1)[0].resume("m")
    prom.rate = 1.0  # traffic came back
    ctl.resume("m")
    run_for(ctl, clock, 60)
    st = ctl.store.load("m")
    assert st.phase == "promoted", st.reason
    assert [t.to_phase for t in st.history] == ["progressing", "inconclusive", "progressing",
                                                "promoted"]


def test_on_inconclusive_rollback_rolls_back(tmp_path, clock):
    ctl, _, target = make(tmp_path, rate=0.0, max_wait_intervals=2, on_inconclusive="rollback")
    run_for(ctl, clock, 40)
    st = ctl.store.load("m")
    assert st.phase == "rolled_back" and st.reason.startswith("inconclusive")
    assert target.applied[-1] == (1, None, 0.0)


def test_an_unexpected_error_is_retried_with_backoff_and_does_not_end_the_loop(
        tmp_path, clock, monkeypatch, caplog):
    mono = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: mono[0])
    ctl, prom, _ = make(tmp_path, rate=5)
    ctl.tick()  # the first step starts
    prom.fail_with = ValueError("odd Prometheus output")
    clock.advance(11)
    with caplog.at_level("ERROR", logger="optiserve.rollout"):
        ctl.tick()  # does not raise
    assert "unexpected error" in caplog.text and "odd Prometheus output" in caplog.text
    calls = len(prom.windows)
    prom.fail_with = None
    mono[0] += 0.5
    ctl.tick()  # inside the backoff: not retried yet
    assert len(prom.windows) == calls
    mono[0] += 1.0
    ctl.tick()  # retried, and it goes on
    assert ctl.store.load("m").step == 1


def test_every_analysis_query_carries_the_release_selector(tmp_path, clock):
    ctl, prom, _ = make(tmp_path, rate=5, prometheus_selector='namespace="ml",release="a"')
    seen = []
    answer = prom.query
    prom.query = lambda expr: (seen.append(expr), answer(expr))[1]
    run_for(ctl, clock, 11)
    assert seen and all('namespace="ml",release="a"' in q for q in seen), seen
    for bad in ('namespace=ml', 'namespace="ml";drop', '"x"="y"'):
        with pytest.raises(RolloutError, match="must be label matchers"):
            make(tmp_path / "bad", rate=1, prometheus_selector=bad)
