"""The rollout controller's decisions on a clock it does not own: waits that accumulate
evidence, the window floor, inconclusive pauses, resume, errors that do not end the loop,
deploy and retire, confirmed steps, one writer, reconciliation.

Stand-ins, named as such: ``StandInPrometheus`` answers the analysis queries from a traffic
model (requests per second for the canary and the comparisons) and the confirmation queries
from what the stand-in gateway reports; ``RecordingTarget`` holds a real serve config, applies
splits to it with the real ``with_split`` and records them. The state store is the real file
store. The same decisions are exercised end to end against real Serve and Prometheus in
test_rollout_e2e."""

from __future__ import annotations

import copy

import re
from datetime import datetime, timedelta, timezone

import pytest

from serving.config import build_serve_config
from optiserve.rollout import FileStateStore
from optiserve.rollout import controller as controller_module
from optiserve.rollout.controller import Controller, RolloutError
from optiserve.rollout.targets import traffic_of, with_split


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
        #: what the gateway reports: version -> weight (None: it reports nothing yet)
        self.reported: dict[int, float] | None = None
        #: observed compute per row / predicted (the canary's prediction check)
        self.compute_ratio = 1.0

    def query_vector(self, expr: str) -> list[tuple[dict, float]]:
        assert "optiserve_predicted_compute_seconds" in expr, expr
        return [({"batch_size": "1"}, 0.002), ({"batch_size": "8"}, 0.008)]

    def query(self, expr: str) -> float | None:
        if self.fail_with is not None:
            raise self.fail_with
        m = re.fullmatch(r'count\(abs\(ray_optiserve_traffic_weight\{model="[^"]+",version="(\d+)"'
                         r'[^}]*\} - ([\d.]+)\) (>|<=) 0.01\)', expr)
        if m:
            if self.reported is None:
                return None
            v, w, op = int(m.group(1)), float(m.group(2)), m.group(3)
            same = abs(self.reported.get(v, -1) - w) <= 0.01
            return (1.0 if same else None) if op == "<=" else (None if same else 1.0)
        window = float(re.search(r"\[(\d+)s\]", expr).group(1))
        if "optiserve_requests_total" in expr and "outcome" not in expr:
            self.windows.append(window)
            return self.rate * window
        if "outcome=~" in expr and "requests_total" in expr:
            return 0.0
        if "shadow_agreement_count" in expr and "/" not in expr:
            return self.rate * window
        if "shadow_agreement_score_total" in expr:
            return 0.995
        if "optiserve_compute_time_seconds_total" in expr:  # per-row compute, batches of 4
            return self.compute_ratio * (0.002 + (0.008 - 0.002) * 3 / 7) / 4
        if "optiserve_batch_rows_total" in expr and "batch_size_count" in expr:
            return 4.0
        if "histogram_quantile" in expr:
            return 20.0
        raise AssertionError(f"unexpected query {expr}")


class RecordingTarget:
    """Stand-in for the Serve / RayService target: a real serve config that splits are
    applied to with the real ``with_split``; records each split's weights; the stand-in
    gateway reports them to the stand-in Prometheus unless ``report`` is off. Versions in
    ``deploying`` are not ready yet."""

    def __init__(self, prom: StandInPrometheus, versions=(1, 2)):
        self.doc = build_serve_config("/models", [("m", v) for v in versions])
        self.doc["applications"][0]["deployments"][0]["user_config"]["models"]["m"]["stable"] = 1
        self.prom, self.report = prom, True
        self.applied: list[tuple] = []
        self.deploying: set[int] = set()
        self.deploying_message = ""
        self.status = "RUNNING"
        self._report()

    def _report(self) -> None:
        t = traffic_of(self.doc, "m")
        if self.report:
            self.prom.reported = {v: (t.canary_weight if v == t.canary else 100 - t.canary_weight
                                      if v == t.stable else 0.0) for v in t.versions}

    def config(self) -> dict:
        return self.doc

    def read(self, model: str):
        return traffic_of(self.doc, model)

    def apply(self, model, split) -> None:
        self.doc = with_split(self.doc, model, split)
        self.applied.append((split.stable, split.canary, split.weight))
        self._report()

    def app_status(self, model, version):
        if version in self.deploying:
            return "DEPLOYING", self.deploying_message
        return self.status, "boom"

    def served(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        t = traffic_of(self.doc, "m")
        return t.versions, t.deployed


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(controller_module, "now", c)
    return c


def make(tmp_path, rate: float, canary: int = 2, versions=(1, 2), **options):
    prom = StandInPrometheus(rate)
    target = RecordingTarget(prom, versions)
    ctl = Controller(FileStateStore(tmp_path / "state"), target, prom)
    spec = {"steps": [50, 100], "interval_s": 10, "min_requests": 20, "max_wait_intervals": 6,
            "scrape_interval_s": 1, "shadow": 0.5, "max_p99_ratio": None, "keep": True,
            **options}
    ctl.start("m", canary, **spec)
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


def test_a_window_shorter_than_four_scrapes_waits_instead_of_widening(tmp_path, clock):
    """Interval 2 s, scrapes every 15 s: the first analysis waits until the step has 60 s of
    its own data; it never reaches back before the step's start."""
    ctl, prom, _ = make(tmp_path, rate=10, interval_s=2, scrape_interval_s=15)
    run_for(ctl, clock, 30)
    assert prom.windows == []  # too few scrapes of this step yet: no analysis
    run_for(ctl, clock, 40)
    assert prom.windows and prom.windows[0] == 60


class BurstPrometheus(StandInPrometheus):
    """The stand-in's traffic plus one burst of canary errors at ``burst_at``: the error
    query over a window counts the burst when the window reaches back to it."""

    def __init__(self, rate, clock, burst_at, burst=50):
        super().__init__(rate)
        self.clock, self.burst_at, self.burst = clock, burst_at, burst

    def query(self, expr: str):
        if "outcome=~" in expr and "requests_total" in expr:
            window = float(re.search(r"\[(\d+)s\]", expr).group(1))
            since = (self.clock() - self.burst_at).total_seconds()
            return float(self.burst) if 0 <= since <= window else 0.0
        return super().query(expr)


def test_a_burst_of_errors_spends_one_unit_of_the_failure_budget(tmp_path, clock):
    """A burst fails one analysis; the held step is then judged on data after the failure
    only, so the burst is not counted again (it used to be: the window was widened to four
    scrape intervals, reaching back before the reset, and one burst rolled the canary back
    with a budget of 1)."""
    # the burst falls in the first analysis's window, whenever that is judged
    prom = BurstPrometheus(10, clock, burst_at=clock() + timedelta(seconds=10))
    target = RecordingTarget(prom)
    ctl = Controller(FileStateStore(tmp_path / "state"), target, prom)
    ctl.start("m", 2, steps=[50, 100], interval_s=10, min_requests=20, max_wait_intervals=6,
              scrape_interval_s=4, shadow=0.5, max_p99_ratio=None, keep=True, failure_budget=1)
    run_for(ctl, clock, 120)
    st = ctl.store.load("m")
    assert st.phase == "promoted", (st.reason, [a.reason for a in st.analyses])
    assert st.failures == 1
    failed = [a for a in st.analyses if a.outcome == "fail"]
    assert len(failed) == 1 and "error_rate" in failed[0].reason


def test_too_little_data_pauses_as_inconclusive_and_resume_waits_again(tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=0.0, max_wait_intervals=3)
    run_for(ctl, clock, 45)
    st = ctl.store.load("m")
    assert st.phase == "inconclusive" and "after 3 intervals" in st.reason
    assert target.applied == [(1, 2, 50.0)]  # weights held: nothing rolled back
    judged = len(st.analyses)
    run_for(ctl, clock, 60)  # paused: no more analyses, no changes
    assert len(ctl.store.load("m").analyses) == judged and target.applied == [(1, 2, 50.0)]
    with pytest.raises(RolloutError, match="cannot resume"):
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
    ctl.tick()  # the first step is applied
    ctl.tick()  # and confirmed: its clock starts
    assert ctl.store.load("m").confirmed
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


def run_until(ctl, clock, done, seconds: float = 300, step: float = 1.0) -> None:
    for _ in range(int(seconds / step)):
        if done(ctl.store.load("m")):
            return
        clock.advance(step)
        ctl.tick()
    raise AssertionError(f"not reached in {seconds} s: {ctl.store.load('m')}")


def test_a_canary_that_is_not_served_is_deployed_then_rolled_out_and_the_old_stable_retired(
        tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=5, versions=(1,), keep=False, retire_after_s=20)
    target.deploying.add(2)
    seen = []
    ctl.on_event = lambda st, msg: seen.append((target.served(), msg))
    run_for(ctl, clock, 5)
    st = ctl.store.load("m")
    assert st.phase == "pending" and st.deployed_canary
    assert target.served() == ((1,), (1, 2))  # deployed, not routed while it loads
    target.deploying.clear()
    run_until(ctl, clock, lambda st: st.phase == "promoted")
    assert target.served() == ((1, 2), (1, 2))  # the old stable stays, at 0 %, a while
    assert traffic_of(target.doc, "m").stable == 2
    run_until(ctl, clock, lambda st: st.settled, seconds=30)
    assert target.served() == ((2,), (2,))
    assert [a[:2] for a in target.applied] == [(1, None), (1, 2), (1, 2), (2, None), (2, None)]
    # the application of the canary is a copy of stable's, version changed
    app = next(a for a in target.doc["applications"] if a["name"] == "m-v2")
    assert app["args"]["version"] == 2 and app["deployments"][0]["name"] == "m-v2"


def test_a_canary_shares_its_stables_cpus_and_gets_the_full_share_when_it_outlives_it(
        tmp_path, clock):
    """The sizing rule fills the machine, so a canary asking for the stable's CPUs again could
    not be scheduled (fault 9). While both run, the canary reserves no CPU, keeps the stable's
    threads and asks for the model-node resource; once the stable is retired, the same apply
    gives the canary the stable's reservation back, started with a surge (no gap)."""
    from serving.config import MODEL_RESOURCE, validate_serve_config

    ctl, prom, target = make(tmp_path, rate=5, versions=(1,), keep=False, retire_after_s=20)
    stable = copy.deepcopy(target.doc["applications"][1]["deployments"][0])
    stable["ray_actor_options"]["num_cpus"] = 1.75  # what the sizing rule gives on 2 CPUs
    target.doc["applications"][1]["deployments"][0] = copy.deepcopy(stable)
    target.deploying.add(2)
    run_for(ctl, clock, 5)
    dep = next(a for a in target.doc["applications"] if a["name"] == "m-v2")["deployments"][0]
    assert dep["ray_actor_options"] == {"num_cpus": 0, "resources": {MODEL_RESOURCE: 1}}
    assert dep["user_config"] == {"cpus": 2}  # the stable's threads and lanes (ceil 1.75)
    validate_serve_config(target.doc, repository_check=False)
    target.deploying.clear()
    run_until(ctl, clock, lambda st: st.phase == "promoted")
    dep = next(a for a in target.doc["applications"] if a["name"] == "m-v2")["deployments"][0]
    assert dep["ray_actor_options"]["num_cpus"] == 0  # the old stable is still there, at 0 %
    run_until(ctl, clock, lambda st: st.settled, seconds=30)
    assert target.served() == ((2,), (2,))
    dep = target.doc["applications"][1]["deployments"][0]
    assert dep["name"] == "m-v2"
    assert dep["ray_actor_options"] == stable["ray_actor_options"]  # the full share back
    assert dep["user_config"] == stable["user_config"] and dep["max_surge_percent"] == 100
    validate_serve_config(target.doc, repository_check=False)


def test_a_rolled_back_canary_leaves_the_stable_as_it_was(tmp_path, clock):
    ctl, _, target = make(tmp_path, rate=5, versions=(1,), keep=False)
    before = copy.deepcopy(target.doc["applications"][1])
    target.status = "DEPLOY_FAILED"
    run_until(ctl, clock, lambda st: st.settled, seconds=60)
    assert target.doc["applications"][1:] == [before]


def test_why_a_canary_cannot_be_scheduled_is_reported_as_soon_as_serve_says_it(tmp_path, clock):
    ctl, _, target = make(tmp_path, rate=5, versions=(1,))
    target.deploying.add(2)
    seen = []
    ctl.on_event = lambda st, msg: seen.append(msg)
    run_for(ctl, clock, 3)
    reason = ("Deployment 'm-v2' in application 'm-v2' has 1 replicas that have taken more than "
              "10s to be scheduled. ... Resources required for each replica: {\"CPU\": 1.75}")
    target.deploying_message = reason
    clock.advance(1)
    ctl.tick()
    assert seen[-1] == f"m:2 is not ready yet (DEPLOYING): {reason}"
    st = ctl.store.load("m")
    assert st.phase == "pending" and st.deploy_message == reason
    run_for(ctl, clock, 3)
    assert sum(reason in m for m in seen) == 1  # said once, not at every tick


@pytest.mark.parametrize("keep", [False, True])
def test_a_canary_that_fails_to_deploy_is_rolled_back_and_removed_unless_kept(
        tmp_path, clock, keep):
    ctl, _, target = make(tmp_path, rate=5, versions=(1,), keep=keep)
    target.status = "DEPLOY_FAILED"
    run_until(ctl, clock, lambda st: st.settled, seconds=60)
    st = ctl.store.load("m")
    assert st.phase == "rolled_back" and "failed to deploy: boom" in st.reason
    assert target.served() == ((1,), (1, 2) if keep else (1,))


def test_a_step_is_judged_only_once_the_gateway_reports_its_weights(tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=5, failure_budget=3)
    target.report = False  # the gateway keeps reporting the old split
    run_for(ctl, clock, 25)
    st = ctl.store.load("m")
    assert st.applied and not st.confirmed and st.step_started_at is None
    assert prom.windows == [] and not st.analyses  # nothing judged on the old split
    assert target.applied == [(1, 2, 50.0)]
    run_for(ctl, clock, 30)  # past the confirmation timeout: a failed analysis, applied again
    assert target.applied == [(1, 2, 50.0), (1, 2, 50.0)]
    st = ctl.store.load("m")
    assert st.failures == 1 and "not confirmed within 30 s" in st.analyses[-1].reason
    target.report = True
    target._report()
    clock.advance(1)
    ctl.tick()
    st = ctl.store.load("m")
    assert st.confirmed and st.step_started_at == clock()
    run_for(ctl, clock, 11)
    assert prom.windows[0] == 10  # the window starts when the weights were confirmed


def test_a_request_racing_a_running_step_never_applies_two_splits(tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=5)
    run_for(ctl, clock, 3)
    assert ctl.store.load("m").confirmed
    clock.advance(11)
    stale = ctl.store.load("m")  # the runner read the state; the step is due
    other = Controller(ctl.store, target, prom)  # `rollout abort` in another process
    other.request("m", "abort", by="ops")
    assert target.applied == [(1, 2, 50.0)]  # the CLI recorded, it applied nothing
    from optiserve.rollout import StaleState

    with pytest.raises(StaleState):
        ctl._advance(stale)  # the runner's write-ahead save is refused before it applies
    assert target.applied == [(1, 2, 50.0)]
    ctl.tick()  # reading again, the runner carries out the request
    st = ctl.store.load("m")
    assert st.phase == "aborted" and "asked by ops" in st.reason and st.request is None
    assert target.applied == [(1, 2, 50.0), (1, None, 0.0)]
    with pytest.raises(RolloutError, match="no rollout"):
        other.request("m", "promote")


def test_requests_are_refused_when_the_phase_does_not_allow_them_and_pause_holds(
        tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=5)
    with pytest.raises(RolloutError, match="pending: cannot promote"):
        ctl.request("m", "promote")
    run_for(ctl, clock, 3)
    ctl.request("m", "pause", by="ops")
    with pytest.raises(RolloutError, match="pause of m is already requested"):
        ctl.request("m", "promote")
    ctl.tick()
    assert ctl.store.load("m").phase == "paused"
    run_for(ctl, clock, 60)
    assert target.applied == [(1, 2, 50.0)] and not ctl.store.load("m").analyses
    ctl.resume("m")
    run_until(ctl, clock, lambda st: st.phase == "promoted")


def test_a_split_reset_behind_the_controllers_back_is_reconciled(tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=5, versions=(1,))
    run_until(ctl, clock, lambda st: st.phase == "progressing" and st.confirmed)
    # a helm upgrade renders the chart's values: v1 only, no canary
    from optiserve.rollout.state import Split

    target.doc = with_split(target.doc, "m", Split(stable=1, routed=(1,), deployed=(1,)))
    target._report()
    events = []
    ctl.on_event = lambda st, msg: events.append(msg)
    ctl.tick()
    assert any("is not the recorded one" in e for e in events)
    ctl.tick()
    assert target.served() == ((1, 2), (1, 2))
    assert traffic_of(target.doc, "m").canary_weight == 50
    st = ctl.store.load("m")
    assert st.applied and not st.confirmed  # the step's clock waits for the gateway again


def test_a_canary_far_off_its_prediction_is_flagged_but_not_failed(tmp_path, clock):
    ctl, prom, _ = make(tmp_path, rate=5)
    prom.compute_ratio = 3.0
    run_until(ctl, clock, lambda st: st.analyses)
    a = ctl.store.load("m").analyses[0]
    check = next(c for c in a.checks if c.name == "compute_vs_predicted")
    assert check.verdict == "warn" and check.value == pytest.approx(3.0)
    assert "vs predicted" in check.detail and a.outcome == "pass"
    prom.compute_ratio = 1.1
    run_until(ctl, clock, lambda st: len(st.analyses) > 1)
    check = next(c for c in ctl.store.load("m").analyses[1].checks
                 if c.name == "compute_vs_predicted")
    assert check.verdict == "pass"


def test_controller_metrics_drop_series_of_past_rollouts(tmp_path, clock):
    from prometheus_client import generate_latest

    ctl, _, target = make(tmp_path, rate=5, versions=(1,), keep=False, retire_after_s=0)
    run_until(ctl, clock, lambda st: st.settled)
    ctl.start("m", 3, steps=[100], interval_s=10, min_requests=20, scrape_interval_s=1,
              shadow=0.5, max_p99_ratio=None)
    ctl.tick()
    text = generate_latest(ctl.metrics.registry).decode()
    weights = [line for line in text.splitlines()
               if line.startswith("optiserve_rollout_canary_weight{")]
    assert len(weights) == 1 and 'canary="3",model="m",stable="2"' in weights[0], weights


def test_a_runner_that_stops_is_no_longer_waited_for(tmp_path, clock):
    ctl, prom, target = make(tmp_path, rate=5)
    run_for(ctl, clock, 3)
    st = ctl.store.load("m")
    assert ctl.runner_alive(st)
    ctl.release("m")  # the foreground `rollout start` exits (paused, inconclusive, Ctrl-C)
    assert not ctl.runner_alive(ctl.store.load("m"))
    # a request now finds no runner: the CLI carries it out itself
    st = ctl.request("m", "pause")
    assert not ctl.runner_alive(st)
