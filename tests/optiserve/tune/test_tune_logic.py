"""optiserve tune without a server: space validation, strategies, scoring, pruning, the study
file and resuming after an interruption. Trials are measured by a deterministic closed-loop
queueing model (Little's law over a capacity that depends on the configuration), so every
strategy's choices and every score can be checked exactly."""

from __future__ import annotations

import json

import pytest

from optiserve.tune.runner import (
    LoadPlan, TuneOptions, Tuner, fragment, reservation, trial_doc,
)
from optiserve.tune.scoring import (
    Step, Trial, best_trial, closest_trial, finish, score, sustained, trials_to_reach,
)
from optiserve.tune.space import SpaceError, SearchSpace, config_key, grid, load_space, parse_space
from optiserve.tune.strategies import BayesStrategy, make_strategy
from optiserve.tune.study import StudyError, StudyFile

SLO = 50.0
DEFAULTS = {"max_batch_size": 8, "max_delay_ms": 1.0, "replicas": 1, "threads": 1,
            "gateway_replicas": 1}
SPACE = SearchSpace(max_batch_size=[1, 2, 4, 8, 16, 32], max_delay_ms=[0, 1, 2, 5],
                    replicas=[1, 2], threads=[1, 2])
HEADER = {"model": "m", "version": 1, "slo_p99_ms": SLO, "strategy": "grid",
          "load": "concurrency", "space": {}, "seed": 0}


def capacity(c: dict) -> float:
    """Requests/s a configuration sustains in the model: batching helps up to 16 rows, a second
    replica helps, waiting for batch-mates costs a little."""
    return (150.0 * min(c["max_batch_size"], 16) ** 0.5 * (1 + 0.6 * (c["replicas"] - 1))
            * (1 + 0.1 * (c["threads"] - 1)) / (1 + 0.03 * c["max_delay_ms"]))


def queue_model(config: dict, level: float) -> Step:
    """A closed-loop step: latency at light load 4 ms + delay, then Little's law."""
    light = 4.0 + config["max_delay_ms"]
    thr = min(level * 1000.0 / light, capacity(config))
    mean = level * 1000.0 / thr
    return Step(load=level, throughput=thr, p50_ms=mean, p95_ms=1.6 * mean, p99_ms=2.0 * mean,
                errors=0, requests=int(thr * 2), mode="closed")


class Sim:
    """apply/measure for the Tuner over the queueing model; counts what it was asked."""

    def __init__(self, interrupt_at: tuple[int, int] | None = None):
        self.applied: list[dict] = []
        self.steps = 0
        self.interrupt_at = interrupt_at  # (trial index in this run, step) -> KeyboardInterrupt

    def apply(self, config):
        same = bool(self.applied) and all(self.applied[-1][k] == config[k]
                                          for k in ("replicas", "threads", "gateway_replicas"))
        self.applied.append(config)
        return "in place" if same else "redeployed"

    def measure(self, level):
        if self.interrupt_at and (len(self.applied) - 1, self.steps) >= self.interrupt_at:
            raise KeyboardInterrupt
        self.steps += 1
        return queue_model(self.applied[-1], level)


def tune(strategy_name, path, trials, sim=None, seed=0, slo=SLO, space=SPACE):
    study = StudyFile(path)
    history = study.open({**HEADER, "strategy": strategy_name, "slo_p99_ms": slo, "seed": seed})
    strat = make_strategy(strategy_name, space, DEFAULTS, 4.0, slo, seed=seed, history=history)
    sim = sim or Sim()
    plan = LoadPlan(mode="concurrency", max_steps=8)
    tuner = Tuner(strat, sim.apply, sim.measure, study, TuneOptions(slo_ms=slo, trials=trials),
                  plan)
    return tuner.run(), strat, sim


# ---- the space file --------------------------------------------------------------------------

@pytest.mark.parametrize("text, field", [
    ("max_batch: [1, 8]", "max_batch: Extra inputs"),
    ("max_batch_size: [0, 8]", "max_batch_size[0]: 0 is not a positive integer"),
    ("replicas: [1, 2.5]", "replicas[1]: 2.5 is not a positive integer"),
    ("max_delay_ms: {low: 5, high: 1}", "max_delay_ms: high (1) must be greater than low (5)"),
    ("max_delay_ms: {low: 0, high: 4, step: 1}", "max_delay_ms.step: Extra inputs"),
    ("threads: []", "threads: give at least one value"),
    ("gateway_replicas: {low: 0, high: 2}", "gateway_replicas.low: must be >= 1"),
    ("max_delay_ms: [1, fast]", "max_delay_ms[1]: Input should be a valid number"),
    ("[1, 2]", "expected a mapping"),
])
def test_space_file_errors_name_the_field(tmp_path, text, field):
    f = tmp_path / "space.yaml"
    f.write_text(text + "\n")
    with pytest.raises(SpaceError) as e:
        load_space(f)
    assert field in str(e.value), str(e.value)
    assert str(f) in str(e.value)


def test_space_ranges_and_grid_order():
    space = parse_space({"max_batch_size": {"low": 1, "high": 64, "log": True, "points": 4},
                         "max_delay_ms": {"low": 0, "high": 6, "points": 3},
                         "replicas": [1, 2, 4], "threads": [1, 2]})
    assert space.grid_values("max_batch_size", DEFAULTS) == [1, 4, 16, 64]
    assert space.grid_values("max_delay_ms", DEFAULTS) == [0.0, 3.0, 6.0]
    configs = grid(space, DEFAULTS, cpus=4)
    # 4 x 3 batching points for each feasible layout (replicas x threads <= 4 CPUs: not 4x2)
    assert len(configs) == 12 * 5
    assert all(c["replicas"] * c["threads"] <= 4 for c in configs)
    # layouts outermost: the layout changes only every 12 trials
    layouts = [(c["replicas"], c["threads"], c["gateway_replicas"]) for c in configs]
    changes = sum(1 for a, b in zip(layouts, layouts[1:]) if a != b)
    assert changes == 4
    # parameters the space leaves out take the defaults
    assert {c["gateway_replicas"] for c in configs} == {1}


# ---- scoring ---------------------------------------------------------------------------------

def test_sustained_needs_no_errors_p99_within_slo_and_keeping_up():
    ok = Step(load=8, throughput=500, p50_ms=10, p95_ms=20, p99_ms=49.9)
    assert sustained(ok, SLO)
    assert not sustained(Step(**{**ok.__dict__, "p99_ms": 50.1}), SLO)
    assert not sustained(Step(**{**ok.__dict__, "errors": 1}), SLO)
    assert not sustained(Step(**{**ok.__dict__, "p99_ms": None, "throughput": 0}), SLO)
    # open loop: 400 req/s offered, 300 served: the server did not keep up
    assert not sustained(Step(load=400, throughput=300, p50_ms=5, p95_ms=9, p99_ms=20,
                              mode="open"), SLO)
    assert sustained(Step(load=400, throughput=395, p50_ms=5, p95_ms=9, p99_ms=20,
                          mode="open"), SLO)


def test_score_takes_the_best_sustained_step_and_closest_trial_when_none():
    steps = [Step(1, 100, 5, 8, 10), Step(2, 300, 6, 9, 30), Step(4, 350, 10, 40, 70),
             Step(8, 320, 9, 20, 40, errors=3)]
    assert score(steps, SLO) == (300, 1)
    t = finish(Trial(0, dict(DEFAULTS), "complete", steps=steps), SLO)
    assert (t.state, t.value, t.best.load) == ("complete", 300, 2)
    broken = [finish(Trial(i, dict(DEFAULTS), "complete", steps=[Step(1, 90, 60, 70, p)]), SLO)
              for i, p in enumerate([80.0, 55.0, 65.0])]
    assert all(b.state == "slo_broken" and b.value is None for b in broken)
    assert best_trial(broken) is None
    trial, step = closest_trial(broken, SLO)
    assert trial.number == 1 and step.p99_ms == 55.0
    assert best_trial(broken + [t]).number == 0


# ---- strategies ------------------------------------------------------------------------------

def test_grid_measures_every_configuration_and_finds_the_optimum(tmp_path):
    trials, strat, sim = tune("grid", tmp_path / "s.jsonl", trials=1000)
    configs = grid(SPACE, DEFAULTS, 4.0)
    assert [config_key(t.config) for t in trials] == [config_key(c) for c in configs]
    best = best_trial(trials)
    # the model's optimum within p99 <= 50 ms: 2 replicas x 2 threads, no delay, batch >= 16
    assert best.config["replicas"] == 2 and best.config["threads"] == 2
    assert best.config["max_delay_ms"] == 0 and best.config["max_batch_size"] >= 16
    # batching-only changes in place, one redeploy per layout
    assert [t.applied for t in trials].count("redeployed") == 4


def test_random_is_seeded_and_without_repeats(tmp_path):
    a, _, _ = tune("random", tmp_path / "a.jsonl", trials=10, seed=3)
    b, _, _ = tune("random", tmp_path / "b.jsonl", trials=10, seed=3)
    c, _, _ = tune("random", tmp_path / "c.jsonl", trials=10, seed=4)
    keys = [config_key(t.config) for t in a]
    assert keys == [config_key(t.config) for t in b]
    assert keys != [config_key(t.config) for t in c]
    assert len(set(keys)) == 10


def test_bayes_is_seeded_and_reaches_the_grid_best_in_fewer_trials(tmp_path):
    grid_trials, _, _ = tune("grid", tmp_path / "g.jsonl", trials=1000)
    target = 0.95 * best_trial(grid_trials).value
    a, strat, _ = tune("bayes", tmp_path / "a.jsonl", trials=24, seed=0)
    b, _, _ = tune("bayes", tmp_path / "b.jsonl", trials=24, seed=0)
    assert [config_key(t.config) for t in a] == [config_key(t.config) for t in b]
    assert len({config_key(t.config) for t in a}) == 24  # never measures a point twice
    need = trials_to_reach(a, target)
    assert need is not None and need < len(grid_trials), (need, len(grid_trials))
    importances = strat.importances()
    assert set(importances) == set(SPACE.model_dump(exclude_none=True))
    assert abs(sum(importances.values()) - 1) < 1e-6


def test_bayes_prunes_a_trial_once_its_p99_breaks_the_slo(tmp_path):
    """With an SLO only light load meets, a trial whose first step breaks it is pruned after
    that one step, and optuna records it as pruned."""
    import optuna

    space = SearchSpace(max_batch_size=[1, 8], max_delay_ms=[0, 30], replicas=[1],
                        threads=[1])
    # light-load p99 = 2 x (4 + delay) ms: 8 ms without delay, 68 ms with 30 ms of delay
    trials, strat, sim = tune("bayes", tmp_path / "p.jsonl", trials=4, slo=20.0, space=space)
    slow = [t for t in trials if t.config["max_delay_ms"] == 30]
    fast = [t for t in trials if t.config["max_delay_ms"] == 0]
    assert slow and fast
    for t in slow:
        assert t.state == "slo_broken" and len(t.steps) == 1
    for t in fast:
        assert t.state == "complete" and len(t.steps) > 1
    states = [ot.state for ot in strat.study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= len(slow)
    assert sim.steps == sum(len(t.steps) for t in trials)


def test_strategies_stop_when_the_space_is_exhausted(tmp_path):
    space = SearchSpace(max_batch_size=[1, 8], max_delay_ms=[0], replicas=[1], threads=[1])
    for name in ("grid", "random", "bayes"):
        trials, _, _ = tune(name, tmp_path / f"{name}.jsonl", trials=10, space=space)
        assert len(trials) == 2, name


# ---- the study file and resuming ------------------------------------------------------------

@pytest.mark.parametrize("name", ["grid", "random", "bayes"])
def test_an_interrupted_tune_continues_where_it_stopped(tmp_path, name):
    path = tmp_path / "study.jsonl"
    full, _, _ = tune(name, tmp_path / "full.jsonl", trials=8)
    # interrupted in the middle of the 4th trial's second load step
    sim = Sim(interrupt_at=(3, 1))
    with pytest.raises(KeyboardInterrupt):
        tune(name, path, trials=8, sim=sim)
    recorded = StudyFile(path)
    assert len(recorded.open({**HEADER, "strategy": name})) == 3
    # a kill while appending leaves a torn last line: dropped, that trial runs again
    with open(path, "a") as f:
        f.write('{"kind": "trial", "number": 3, "conf')
    again = Sim()
    trials, _, _ = tune(name, path, trials=8, sim=again)
    assert len(trials) == 8 and [t.number for t in trials] == list(range(8))
    # the three recorded trials were not measured again
    assert len(again.applied) == 5
    done = {config_key(t.config) for t in trials[:3]}
    assert not done & {config_key(c) for c in again.applied}
    assert len({config_key(t.config) for t in trials}) == 8
    if name != "bayes":  # the same sequence as an uninterrupted tune
        assert [config_key(t.config) for t in trials] == [config_key(t.config) for t in full]
    lines = path.read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line) for line in lines)


def test_bayes_resumed_is_told_the_recorded_trials(tmp_path):
    path = tmp_path / "study.jsonl"
    tune("bayes", path, trials=6)
    study = StudyFile(path)
    history = study.open({**HEADER, "strategy": "bayes"})
    strat = BayesStrategy(SPACE, DEFAULTS, 4.0, SLO, seed=0, history=history)
    assert len(strat.study.trials) == 6
    values = sorted(t.value for t in strat.study.trials if t.value is not None)
    assert values == sorted(t.value for t in history if t.value is not None)


def test_a_study_of_another_tune_is_refused(tmp_path):
    path = tmp_path / "study.jsonl"
    tune("grid", path, trials=1)
    with pytest.raises(StudyError, match="slo_p99_ms"):
        StudyFile(path).open({**HEADER, "slo_p99_ms": 10.0})
    path.write_text("not json\n{}\n")
    with pytest.raises(StudyError, match="not JSON"):
        StudyFile(path).open(HEADER)


# ---- serve config of a trial -----------------------------------------------------------------

def test_trial_doc_changes_batching_and_only_the_tuned_version():
    from serving.config import build_serve_config, gateway_user_config, validate_serve_config

    base = build_serve_config("/repo", [("m", 1), ("m", 2)], version_cpus=0.5,
                              gateway_cpus=0.25)
    config = {"max_batch_size": 16, "max_delay_ms": 2.0, "replicas": 2, "threads": 2,
              "gateway_replicas": 2}
    limits = {"replicas": 2, "threads": 2, "gateway_replicas": 2}
    per_replica = reservation(base, "m", 1, limits, total_cpus=4.0, keep_own=False)
    doc = trial_doc(base, "m", 1, config, per_replica)
    validate_serve_config(doc, repository_check=False)
    v1 = gateway_user_config(doc)["models"]["m"]["versions"][1]
    # two in flight per lane: 2 replicas x 2 CPUs (lanes with ONNX Runtime on CPU)
    assert (v1["max_batch_size"], v1["max_delay_ms"], v1["max_inflight_batches"]) == (16, 2.0, 8)
    apps = {a["name"]: a for a in doc["applications"]}
    dep = apps["m-v1"]["deployments"][0]
    # the replica runs its 2 CPUs as optiserve serve would (lanes or threads for its runtime)
    assert dep["num_replicas"] == 2 and dep["user_config"] == {"cpus": 2}
    # 4 CPUs - 2 gateways x 0.25 - m-v2's 0.5 = 3 CPUs for 2 replicas: 1.5 each, capped at 2
    assert dep["ray_actor_options"]["num_cpus"] == 1.5
    assert apps["m-v2"] == {a["name"]: a for a in base["applications"]}["m-v2"]
    assert apps["optiserve"]["deployments"][0]["num_replicas"] == 2
    frag = fragment(doc, "m", 1)
    assert [a["name"] for a in frag["applications"]] == ["optiserve", "m-v1"]


def test_budget_parsing():
    from optiserve.cli.tune import parse_duration

    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    with pytest.raises(ValueError, match="--budget"):
        parse_duration("ten minutes")


@pytest.mark.parametrize("name", ["random", "bayes"])
def test_ranges_are_sampled_inside_and_typed(tmp_path, name):
    space = parse_space({"max_batch_size": {"low": 1, "high": 64, "log": True},
                         "max_delay_ms": {"low": 0.5, "high": 4}, "replicas": [1, 2],
                         "threads": [1, 2, 4]})
    trials, strat, _ = tune(name, tmp_path / "r.jsonl", trials=12, space=space)
    assert strat.size() is None and len(trials) == 12
    for t in trials:
        c = t.config
        assert isinstance(c["max_batch_size"], int) and 1 <= c["max_batch_size"] <= 64
        assert 0.5 <= c["max_delay_ms"] <= 4
        assert c["replicas"] * c["threads"] <= 4  # feasible on the 4 CPUs of the test


def test_the_time_budget_stops_new_trials(tmp_path):
    import time as _time

    class SlowSim(Sim):
        def measure(self, level):
            _time.sleep(0.05)
            return super().measure(level)

    study = StudyFile(tmp_path / "b.jsonl")
    study.open(HEADER)
    strat = make_strategy("grid", SPACE, DEFAULTS, 4.0, SLO)
    sim = SlowSim()
    trials = Tuner(strat, sim.apply, sim.measure, study,
                   TuneOptions(slo_ms=SLO, trials=1000, budget_s=0.3),
                   LoadPlan(max_steps=8)).run()
    # each trial takes >= 0.1 s (two or more steps); no trial starts once 0.3 s are spent
    assert 1 <= len(trials) <= 4


def test_an_attached_versions_reservation_is_kept_when_every_layout_fits_in_it():
    """Keeping it, no trial (nor the restore) changes what the version's replicas reserve, so
    none deletes and redeploys the version (downtime)."""
    from serving.config import build_serve_config

    base = build_serve_config("/repo", [("m", 1), ("m", 2)], version_cpus=0.5,
                              gateway_cpus=0.25)
    limits = {"replicas": 2, "threads": 2, "gateway_replicas": 2}
    # 2 replicas x 0.5 + 2 gateways x 0.25 + m-v2's 0.5 = 2 CPUs <= 4: kept
    assert reservation(base, "m", 1, limits, total_cpus=4.0) == 0.5
    # the gateways and m-v2 leave 3 CPUs: 4 replicas x 0.5 fit in them, 8 x 0.5 do not (then
    # the share: 3 / 8 = 0.375 each)
    assert reservation(base, "m", 1, {**limits, "replicas": 4}, total_cpus=4.0) == 0.5
    assert reservation(base, "m", 1, {**limits, "replicas": 8}, total_cpus=4.0) == 0.37
    doc = trial_doc(base, "m", 1, {"max_batch_size": 4, "max_delay_ms": 0, "replicas": 2,
                                   "threads": 1, "gateway_replicas": 1},
                    reservation(base, "m", 1, limits, total_cpus=4.0))
    apps = {a["name"]: a for a in doc["applications"]}
    assert apps["m-v1"]["deployments"][0]["ray_actor_options"] == {"num_cpus": 0.5}


# ---- failures, interruptions and missing extras ----------------------------------------------

def test_ctrl_c_while_the_tunes_server_starts_stops_it(monkeypatch, tmp_path):
    """The server runs in a session of its own (Ctrl-C does not reach it): interrupted while
    it starts, the tune stops it by its PID and removes its directory."""
    import subprocess
    import sys
    import types

    from optiserve import server
    from optiserve.cli import tune as cli

    started = []

    class Starting(server.ServeProcess):
        def start(self, timeout=180):
            self._log = open(self.log_path, "w")
            self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                         start_new_session=True)
            started.append(self)
            raise KeyboardInterrupt

    monkeypatch.setattr(server, "ServeProcess", Starting)
    repo = types.SimpleNamespace(root=tmp_path)
    layout = types.SimpleNamespace(gateway_cpus=0.25, threads=1)
    try:
        with pytest.raises(KeyboardInterrupt):
            cli._start_server(repo, "m", 1, layout, {"replicas": 1, "threads": 1,
                                                     "gateway_replicas": 1})
        assert len(started) == 1
        assert started[0].proc.poll() is not None, "the server was left running"
        assert not started[0].config_path.parent.exists()
    finally:
        for s in started:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()


def test_random_gives_up_once_a_range_of_integers_is_exhausted(tmp_path):
    space = parse_space({"max_batch_size": {"low": 1, "high": 2}, "max_delay_ms": [0],
                         "replicas": [1], "threads": [1], "gateway_replicas": [1]})
    strat = make_strategy("random", space, DEFAULTS, 4.0, SLO, seed=0)
    assert strat.size() is None  # a range: not enumerated
    draws = 0
    draw = strat._draw

    def counted():
        nonlocal draws
        draws += 1
        if draws > 10 * strat.MAX_REPEATS:  # a propose() that would never return
            raise AssertionError("random keeps drawing an exhausted space")
        return draw()

    strat._draw = counted
    seen = []
    for _ in range(3):
        p = strat.propose()
        if p is None:
            break
        seen.append(p.config["max_batch_size"])
        strat.tell(p, Trial(len(seen) - 1, p.config, "complete"))
    assert sorted(seen) == [1, 2] and p is None
    # through the tune loop: 2 trials, then "space exhausted"
    trials, _, _ = tune("random", tmp_path / "r.jsonl", trials=10, space=space)
    assert sorted(t.config["max_batch_size"] for t in trials) == [1, 2]


def test_a_serve_api_error_fails_that_trial_and_the_tune_goes_on(tmp_path):
    from optiserve.serve_api import ServeAPIError

    class Flaky(Sim):
        def apply(self, config):
            if config["max_batch_size"] == 2:
                raise ServeAPIError("PUT /api/serve/applications/: HTTP 500")
            return super().apply(config)

    replicas_calls = []

    def replicas():
        replicas_calls.append(1)
        if len(replicas_calls) == 2:  # the trial after the refused one
            raise ServeAPIError("GET /api/serve/applications/: connection refused")
        return {"model": [], "gateway": []}

    study = StudyFile(tmp_path / "f.jsonl")
    study.open(HEADER)
    space = SearchSpace(max_batch_size=[1, 2, 4, 8], max_delay_ms=[0], replicas=[1],
                        threads=[1])
    strat = make_strategy("grid", space, DEFAULTS, 4.0, SLO)
    sim = Flaky()
    trials = Tuner(strat, sim.apply, sim.measure, study, TuneOptions(slo_ms=SLO, trials=10),
                   LoadPlan(max_steps=8), replicas=replicas).run()
    assert [t.config["max_batch_size"] for t in trials] == [1, 2, 4, 8]
    assert [t.state for t in trials] == ["complete", "failed", "failed", "complete"]
    assert trials[1].error == "not applied: ServeAPIError: PUT /api/serve/applications/: HTTP 500"
    assert "connection refused" in trials[2].error
    assert [len(t.steps) for t in trials][1:3] == [0, 0]
    # recorded as failed: a resumed tune does not try them again
    assert [t.state for t in StudyFile(tmp_path / "f.jsonl").open(HEADER)][1:3] == \
        ["failed", "failed"]


class _Cli:
    """``optiserve tune`` in process, attached (--url) to a server that is not there: the
    repository, the Serve API and the trials are stand-ins."""

    def __init__(self, monkeypatch, tmp_path):
        import types

        from optiserve import serve_api
        from serving import repository
        from optiserve.cli import tune as cli
        from optiserve.tune import space as space_mod

        self.deployed = {"applications": [{"name": "before"}]}
        self.bases, self.restored = [], []
        self.run = lambda: []
        cli_ = self

        class Repo:
            def __init__(self, root=None):
                pass

            def get(self, name, version):
                return types.SimpleNamespace(version=1, manifest=types.SimpleNamespace(
                    variant="onnx-fp32"))

        class Target:
            url = "http://127.0.0.1:9"
            original = {}

            def restore(self):
                cli_.restored.append(1)

        def target(url, api, name, version, server, lim, base=None):
            self.bases.append(base)
            return Target()

        monkeypatch.setattr(repository, "ModelRepository", Repo)
        monkeypatch.setattr(space_mod, "defaults_from", lambda manifest, layout: dict(DEFAULTS))
        monkeypatch.setattr(serve_api.ServeAPI, "deployed_config", lambda _self: self.deployed)
        monkeypatch.setattr(cli, "_target", target)
        monkeypatch.setattr(cli, "_run", lambda *a: self.run())
        self.space = tmp_path / "space.yaml"
        self.space.write_text("max_batch_size: [1, 8]\n")
        self.study = tmp_path / "study.jsonl"

    def __call__(self):
        from typer.testing import CliRunner

        from optiserve.cli.main import app

        return CliRunner().invoke(app, [
            "tune", "m:1", "--url", "http://127.0.0.1:9", "--serve-api", "http://127.0.0.1:9",
            "--strategy", "grid", "--space", str(self.space), "--study", str(self.study)])


def test_a_serve_api_error_outside_a_trial_is_a_clear_error_and_restores(monkeypatch,
                                                                         tmp_path):
    from optiserve.serve_api import ServeAPIError

    cli = _Cli(monkeypatch, tmp_path)

    def run():
        raise ServeAPIError("GET http://127.0.0.1:9/api/serve/applications/: refused")

    cli.run = run
    result = cli()
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, ServeAPIError)
    out = " ".join(result.output.split())
    assert "tune stopped: GET http://127.0.0.1:9/api/serve/applications/: refused" in out, out
    assert "run the same command to continue" in out
    assert cli.restored == [1]


def test_a_resumed_attached_tune_restores_the_configuration_before_the_study(monkeypatch,
                                                                           tmp_path):
    """Killed (kill -9: no restore) mid-trial, the server keeps that trial's configuration; the
    tune run again restores the one recorded when the study began."""
    cli = _Cli(monkeypatch, tmp_path)

    def killed():
        raise KeyboardInterrupt

    cli.run = killed
    assert cli().exit_code == 130
    assert cli.bases == [{"applications": [{"name": "before"}]}]
    cli.deployed = {"applications": [{"name": "the killed trial's"}]}
    cli()
    assert cli.bases[1] == {"applications": [{"name": "before"}]}
    header = json.loads(cli.study.read_text().splitlines()[0])
    assert header["attached"]["url"] == "http://127.0.0.1:9"


def test_the_study_header_keeps_the_attached_servers_configuration(tmp_path):
    path = tmp_path / "s.jsonl"
    before = {"applications": [{"name": "optiserve", "deployments": [{"name": "gateway"}]}]}
    trial = {"applications": [{"name": "trial 3"}]}
    study = StudyFile(path)
    study.open({**HEADER, "attached": {"url": "http://a:8000", "deployed_config": before}})
    assert study.original_config("http://a:8000", before) == before
    # run again after a kill: the server now has a trial's configuration; the header is not
    # part of the study's identity, the first one is kept
    again = StudyFile(path)
    again.open({**HEADER, "attached": {"url": "http://a:8000", "deployed_config": trial}})
    assert again.original_config("http://a:8000", trial) == before
    assert again.original_config("http://b:8000", trial) == trial
    plain = StudyFile(tmp_path / "p.jsonl")
    plain.open(HEADER)
    assert plain.original_config("http://a:8000", trial) == trial


def test_bayes_without_optuna_says_what_to_install(tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = ("import sys; sys.modules['optuna'] = None\n"
            "from optiserve.cli.main import app\n"
            "app(['tune', 'm', '-r', sys.argv[1]], prog_name='optiserve')\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "repo")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**__import__("os").environ, "COLUMNS": "200",
                                 "PYTHONPATH": str(ROOT)})
    err = " ".join(result.stderr.split())
    assert result.returncode == 1, result.stderr
    assert "--strategy bayes needs optuna: pip install 'optiserve[tune]' (or --strategy " \
        "grid|random)" in err, err
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.jsonl"))  # no study file begun


def test_a_server_that_is_gone_stops_the_tune_after_three_failed_applies(tmp_path):
    from optiserve.serve_api import ServeAPIError
    from optiserve.tune.runner import TuneError

    class Gone(Sim):
        def apply(self, config):
            if config["max_batch_size"] > 1:
                raise ServeAPIError("PUT /api/serve/applications/: connection refused")
            return super().apply(config)

    study = StudyFile(tmp_path / "f.jsonl")
    study.open(HEADER)
    space = SearchSpace(max_batch_size=[1, 2, 4, 8, 16, 32], max_delay_ms=[0], replicas=[1],
                        threads=[1])
    sim = Gone()
    tuner = Tuner(make_strategy("grid", space, DEFAULTS, 4.0, SLO), sim.apply, sim.measure,
                  study, TuneOptions(slo_ms=SLO, trials=10), LoadPlan(max_steps=8))
    with pytest.raises(TuneError, match="3 configurations in a row could not be applied"):
        tuner.run()
    # the two failures before the stop are recorded; the third is retried by a resumed run
    assert [t.state for t in study.trials] == ["complete", "failed", "failed"]
