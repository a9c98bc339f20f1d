"""Search strategies: which configuration to measure next, and when a trial's sweep stops.

- ``grid``: every feasible combination, layouts outermost (few redeploys), in a fixed order.
- ``random``: a seeded sequence (the grid shuffled when every parameter is a list of values,
  independent draws when a parameter is a range).
- ``bayes``: optuna's TPE sampler, seeded; list parameters are searched as ordinal indices so
  the sampler sees that 16 lies between 8 and 32. After each load step the trial reports its
  p99 to optuna and :class:`SLOPruner` prunes it once the p99 breaks the SLO.

All three continue a study from its recorded trials: grid and random skip what was measured,
bayes is told every recorded trial (values, pruned states, intermediate p99s) before it samples.
"""

from __future__ import annotations

import math
import random as _random
import warnings
from dataclasses import dataclass
from typing import Any

from .scoring import Step, Trial, intermediate, sustained
from .space import PARAMS, INT_PARAMS, Range, SearchSpace, config_key, feasible, grid, normalize

STRATEGIES = ("grid", "random", "bayes")


@dataclass
class Proposal:
    config: dict
    handle: Any = None  # the strategy's own state for this trial (an optuna trial for bayes)


class Strategy:
    name = "base"

    def __init__(self, space: SearchSpace, defaults: dict, cpus: float, slo_ms: float,
                 seed: int = 0, history: list[Trial] | None = None):
        self.space, self.defaults, self.cpus, self.slo_ms = space, defaults, cpus, slo_ms
        self.seed = seed
        self.history = list(history or [])
        self.done = {config_key(t.config) for t in self.history}

    def propose(self) -> Proposal | None:
        """The next configuration to measure, or None when the space is exhausted."""
        raise NotImplementedError

    def after_step(self, proposal: Proposal, index: int, step: Step) -> bool:
        """Called after each load step; True stops the sweep (the step broke the SLO: a
        higher load will not do better)."""
        return not sustained(step, self.slo_ms)

    def tell(self, proposal: Proposal, trial: Trial) -> None:
        self.history.append(trial)
        self.done.add(config_key(trial.config))

    def size(self) -> int | None:
        """How many configurations the space holds (None when a parameter is a range)."""
        params = self.space.params(self.defaults)
        if any(isinstance(v, Range) for v in params.values()):
            return None
        return len(grid(self.space, self.defaults, self.cpus))


class GridStrategy(Strategy):
    name = "grid"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.configs = grid(self.space, self.defaults, self.cpus)

    def propose(self) -> Proposal | None:
        for c in self.configs:
            if config_key(c) not in self.done:
                return Proposal(c)
        return None


class RandomStrategy(Strategy):
    name = "random"
    #: draws in a row that repeat earlier ones after which a space of ranges counts as exhausted
    MAX_REPEATS = 2000

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.rng = _random.Random(self.seed)
        self.discrete = self.size() is not None
        if self.discrete:
            self.order = grid(self.space, self.defaults, self.cpus)
            self.rng.shuffle(self.order)
        # the sequence is a function of the seed alone: a resumed tune replays it, skipping
        # what the study already measured
        self.position = 0
        self.drawn: set[str] = set()  # configurations the sequence has drawn so far

    def _draw(self) -> dict | None:
        params = self.space.params(self.defaults)
        for _ in range(1000):
            c = {}
            for name in PARAMS:
                v = params[name]
                if isinstance(v, Range):
                    if v.log:
                        x = math.exp(self.rng.uniform(math.log(v.low), math.log(v.high)))
                    else:
                        x = self.rng.uniform(v.low, v.high)
                    c[name] = x
                else:
                    c[name] = self.rng.choice(v)
            c = normalize(c)
            if feasible(c, self.cpus):
                return c
        return None

    def propose(self) -> Proposal | None:
        repeats = 0
        while True:
            if self.discrete:
                if self.position >= len(self.order):
                    return None
                c = self.order[self.position]
            else:
                c = self._draw()
                if c is None:
                    return None
                # ranges of integers (or of delays, rounded) hold finitely many configurations:
                # this many draws in a row that the sequence drew before mean none is left.
                # A draw recorded by a resumed study is new to the replayed sequence, so the
                # count (and where the sequence stops) does not depend on resuming.
                key = config_key(c)
                if key in self.drawn:
                    repeats += 1
                    if repeats >= self.MAX_REPEATS:
                        return None
                else:
                    repeats = 0
                    self.drawn.add(key)
            self.position += 1
            if config_key(c) not in self.done:
                return Proposal(c)


class SLOPruner:
    """Prunes a trial whose last reported p99 is above the SLO (errors report infinity)."""

    def __init__(self, slo_ms: float):
        import optuna

        class _Pruner(optuna.pruners.BasePruner):
            def prune(_self, study, trial) -> bool:
                step = trial.last_step
                if step is None:
                    return False
                return trial.intermediate_values[step] > slo_ms

        self.pruner = _Pruner()


class BayesStrategy(Strategy):
    name = "bayes"
    #: random trials before TPE models the space
    STARTUP_TRIALS = 5

    def __init__(self, *a, startup_trials: int | None = None, **kw):
        super().__init__(*a, **kw)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        params = self.space.params(self.defaults)
        self.fixed = {n: v[0] for n, v in params.items() if isinstance(v, list) and len(v) == 1}
        self.choices = {n: v for n, v in params.items() if isinstance(v, list) and len(v) > 1}
        self.distributions = {}
        D = optuna.distributions
        for n, v in params.items():
            if n in self.choices:
                self.distributions[n] = D.IntDistribution(0, len(v) - 1)
            elif isinstance(v, Range):
                if n in INT_PARAMS:
                    self.distributions[n] = D.IntDistribution(int(math.ceil(v.low)),
                                                              int(math.floor(v.high)), log=v.log)
                else:
                    self.distributions[n] = D.FloatDistribution(v.low, v.high, log=v.log)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
            sampler = optuna.samplers.TPESampler(
                seed=self.seed, multivariate=True,
                n_startup_trials=startup_trials if startup_trials is not None
                else self.STARTUP_TRIALS)
        self.study = optuna.create_study(direction="maximize", sampler=sampler,
                                         pruner=SLOPruner(self.slo_ms).pruner)
        self.exhausted_after = self.size()
        for t in self.history:
            self._add_recorded(t)

    # ---- translation between configurations and optuna parameters ------------------------
    def _to_params(self, config: dict) -> dict:
        out = {}
        for n in self.distributions:
            if n in self.choices:
                out[n] = self.choices[n].index(config[n])
            else:
                out[n] = config[n]
        return out

    def _to_config(self, params: dict) -> dict:
        c = dict(self.fixed)
        for n, x in params.items():
            c[n] = self.choices[n][x] if n in self.choices else x
        return normalize(c)

    def _frozen(self, trial: Trial):
        T = self.optuna.trial
        inter = {i: min(intermediate(s), 1e12) for i, s in enumerate(trial.steps)}
        if trial.state == "complete":
            return T.create_trial(params=self._to_params(trial.config),
                                  distributions=self.distributions, value=trial.value,
                                  intermediate_values=inter)
        state = T.TrialState.PRUNED if trial.state == "slo_broken" else T.TrialState.FAIL
        return T.create_trial(params=self._to_params(trial.config),
                              distributions=self.distributions, state=state,
                              intermediate_values=inter)

    def _add_recorded(self, trial: Trial) -> None:
        try:
            self.study.add_trial(self._frozen(trial))
        except ValueError:
            pass  # a recorded config outside this space (the study identity check prevents it)

    # ---- the strategy --------------------------------------------------------------------
    def propose(self) -> Proposal | None:
        if self.exhausted_after is not None and len(self.done) >= self.exhausted_after:
            return None
        by_key = {config_key(t.config): t for t in self.history}
        for _ in range(200):
            ot = self.study.ask(self.distributions)
            c = self._to_config(ot.params)
            if not feasible(c, self.cpus):
                # outside the machine: a trial that cannot run, seen as the worst outcome
                ot.report(1e12, 0)
                self.study.tell(ot, state=self.optuna.trial.TrialState.PRUNED)
                continue
            key = config_key(c)
            if key in by_key:  # measured already: the sampler learns the same result again
                prev = by_key[key]
                for i, s in enumerate(prev.steps):
                    ot.report(min(intermediate(s), 1e12), i)
                if prev.state == "complete":
                    self.study.tell(ot, prev.value)
                else:
                    self.study.tell(ot, state=self.optuna.trial.TrialState.PRUNED
                                    if prev.state == "slo_broken"
                                    else self.optuna.trial.TrialState.FAIL)
                continue
            return Proposal(c, ot)
        # the sampler keeps returning measured points: the first unmeasured one in grid order
        for c in grid(self.space, self.defaults, self.cpus):
            if config_key(c) not in self.done:
                self.study.enqueue_trial(self._to_params(c))
                return Proposal(c, self.study.ask(self.distributions))
        return None

    def after_step(self, proposal: Proposal, index: int, step: Step) -> bool:
        ot = proposal.handle
        ot.report(min(intermediate(step), 1e12), index)
        return ot.should_prune()

    def tell(self, proposal: Proposal, trial: Trial) -> None:
        super().tell(proposal, trial)
        ot = proposal.handle
        TS = self.optuna.trial.TrialState
        if trial.state == "complete":
            self.study.tell(ot, trial.value)
        elif trial.state == "slo_broken":
            self.study.tell(ot, state=TS.PRUNED)
        else:
            self.study.tell(ot, state=TS.FAIL)

    def importances(self) -> dict[str, float]:
        """Parameter importance (fANOVA) over the completed trials; {} when too few."""
        complete = [t for t in self.study.trials
                    if t.state == self.optuna.trial.TrialState.COMPLETE]
        if len(complete) < 3 or not self.distributions:
            return {}
        try:
            evaluator = self.optuna.importance.FanovaImportanceEvaluator(seed=0)
            return dict(self.optuna.importance.get_param_importances(self.study,
                                                                     evaluator=evaluator))
        except Exception:
            return {}


def make_strategy(name: str, *args, **kwargs) -> Strategy:
    cls = {"grid": GridStrategy, "random": RandomStrategy, "bayes": BayesStrategy}.get(name)
    if cls is None:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)} (got {name!r})")
    return cls(*args, **kwargs)
