"""The rollout controller: walks each canary through its steps, judged on Prometheus data.

Every change is saved before the next one is made (write-ahead: the step is recorded, then its
weights are applied, then marked applied), so a controller killed at any point resumes where it
was and never applies a step twice or restarts a step's clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from .. import metrics as M
from .analysis import analyze
from .prometheus import Prometheus
from .state import MIN_WINDOW_SCRAPES, RolloutSpec, RolloutState, now
from .store import StaleState, StateStore
from .targets import Target, TargetError

log = logging.getLogger("optiserve.rollout")
PHASES = ("pending", "progressing", "inconclusive", "promoted", "rolled_back", "aborted")
#: After an unexpected error, a rollout is retried after this many seconds, doubling up to
#: the last (the controller keeps serving the other rollouts meanwhile).
BACKOFF_S = (1.0, 60.0)


class RolloutError(Exception):
    """A rollout request that cannot be carried out; the message says why."""


class ControllerMetrics:
    """The controller's own metrics (prometheus-client), names from ``serving.metrics``."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry or CollectorRegistry()

        def gauge(spec):
            return Gauge(spec.name, spec.description, spec.tag_keys, registry=self.registry)

        self.phase = gauge(M.ROLLOUT_PHASE)
        self.weight = gauge(M.ROLLOUT_WEIGHT)
        self.step = gauge(M.ROLLOUT_STEP)
        self.value = gauge(M.ROLLOUT_CHECK_VALUE)
        self.passed = gauge(M.ROLLOUT_CHECK_PASSED)
        self.failures = gauge(M.ROLLOUT_FAILURES)
        # prometheus-client appends _total to counters itself
        self.transitions = Counter(M.ROLLOUT_TRANSITIONS.name, M.ROLLOUT_TRANSITIONS.description,
                                   M.ROLLOUT_TRANSITIONS.tag_keys, registry=self.registry)

    def observe(self, st: RolloutState) -> None:
        m = st.model
        for p in PHASES:
            self.phase.labels(model=m, phase=p).set(1 if st.phase == p else 0)
        self.weight.labels(model=m, stable=str(st.spec.stable), canary=str(st.spec.canary)).set(
            st.weight)
        self.step.labels(model=m).set(st.step)
        self.failures.labels(model=m).set(st.failures)
        if st.last_analysis:
            for c in st.last_analysis.checks:
                if c.value is not None:
                    self.value.labels(model=m, check=c.name).set(c.value)
                self.passed.labels(model=m, check=c.name).set(
                    {"pass": 1, "fail": 0}.get(c.verdict, -1))


class Controller:
    def __init__(self, store: StateStore, target: Target, prometheus: Prometheus,
                 metrics: ControllerMetrics | None = None,
                 on_event: Callable[[RolloutState, str], None] | None = None):
        self.store, self.target, self.prom = store, target, prometheus
        self.metrics = metrics or ControllerMetrics()
        self.on_event = on_event or (lambda st, msg: None)
        #: model -> (monotonic time before which it is not retried, current delay)
        self._backoff: dict[str, tuple[float, float]] = {}

    # ---- commands ------------------------------------------------------------------------------
    def start(self, model: str, canary: int, **options) -> RolloutState:
        """Record a new rollout (pending) after checking it can run."""
        current = self.store.load(model)
        if current is not None and not current.done:
            raise RolloutError(
                f"a rollout of {model} is already {current.phase} (canary {current.spec.canary}, "
                f"step {current.step + 1}/{len(current.spec.steps)}); promote or abort it first")
        try:
            traffic = self.target.read(model)
        except TargetError as e:
            raise RolloutError(str(e)) from None
        if canary not in traffic.versions:
            raise RolloutError(
                f"{model}:{canary} is not served (served versions: "
                f"{', '.join(map(str, traffic.versions))}); serve it first")
        try:
            spec = RolloutSpec(model=model, stable=traffic.stable, canary=canary, **options)
        except ValueError as e:
            raise RolloutError(str(e).split("\n", 1)[-1].strip()) from None
        state = RolloutState(spec=spec, revision=current.revision if current else 0)
        state = self.store.save(state)
        self._event(state, f"rollout of {model}:{canary} over {model}:{spec.stable} recorded, "
                           f"steps {spec.steps}")
        return state

    def resume(self, model: str) -> RolloutState:
        """Continue an inconclusive rollout at its step, with a fresh wait budget (the step's
        evidence so far still counts: its window keeps growing from the step's start)."""
        st = self._active(model)
        if st.phase != "inconclusive":
            raise RolloutError(f"the rollout of {model} is {st.phase}, not inconclusive: "
                               "nothing to resume")
        st.waited_intervals = 0
        st.judged_at = now()
        self._transition(st, "progressing", "resumed by hand")
        return self.store.save(st)

    def promote(self, model: str) -> RolloutState:
        st = self._active(model)
        self._finish(st, "promoted", "promoted by hand")
        return st

    def abort(self, model: str) -> RolloutState:
        st = self._active(model)
        self._finish(st, "aborted", "aborted by hand")
        return st

    def _active(self, model: str) -> RolloutState:
        st = self.store.load(model)
        if st is None or st.done:
            raise RolloutError(f"no rollout of {model} is in progress")
        return st

    # ---- the loop -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance every unfinished rollout by at most one decision. Nothing one rollout
        raises ends the loop: an unexpected error is logged, and that rollout alone is retried
        with a growing delay."""
        try:
            states = self.store.list()
        except Exception:
            log.exception("cannot list rollouts; retrying")
            return
        for st in states:
            if not st.done and st.phase != "inconclusive":
                until, delay = self._backoff.get(st.model, (0.0, 0.0))
                if time.monotonic() < until:
                    continue
                try:
                    self._advance(st)
                    self._backoff.pop(st.model, None)
                except StaleState as e:
                    log.info("%s; will read it again", e)
                except TargetError as e:
                    log.warning("rollout of %s: %s (nothing changed; retrying)", st.model, e)
                    self.on_event(st, f"target unavailable: {e}")
                except Exception as e:
                    delay = min(BACKOFF_S[1], max(BACKOFF_S[0], 2 * delay))
                    self._backoff[st.model] = (time.monotonic() + delay, delay)
                    log.exception("rollout of %s: unexpected error; retrying in %.0f s",
                                  st.model, delay)
                    self.on_event(st, f"unexpected error ({type(e).__name__}: {e}); retrying "
                                      f"in {delay:.0f} s")
            try:
                self.metrics.observe(self.store.load(st.model) or st)
            except Exception:
                log.exception("rollout of %s: cannot export its metrics", st.model)

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(poll_s)

    def _advance(self, st: RolloutState) -> None:
        spec = st.spec
        if st.phase == "pending":
            st.step, st.weight = 0, spec.steps[0]
            self._transition(st, "progressing", f"step 1/{len(spec.steps)}: "
                                                f"{spec.steps[0]:g}% to {spec.model}:{spec.canary}")
            st = self.store.save(st)
            self._apply_step(st)
            return
        if st.applied_step != st.step:  # killed between recording a step and applying it
            self._apply_step(st)
            return
        t = now()
        since_judged = t - (st.judged_at or st.step_started_at)
        if since_judged < timedelta(seconds=spec.interval_s):
            return
        # the window starts at the step's start and grows while the step waits for data, so
        # evidence accumulates at low traffic; it never shrinks below a few scrape intervals
        window_s = max((t - st.step_started_at).total_seconds(),
                       MIN_WINDOW_SCRAPES * spec.scrape_interval_s)
        a = analyze(self.prom, spec, st.step, st.weight, window_s)
        st.record(a)
        st.judged_at = t
        if a.outcome == "pass":
            st.waited_intervals = 0
            if st.step == len(spec.steps) - 1:
                self._finish(st, "promoted", f"every step passed ({a.reason})")
                return
            st.step += 1
            st.weight = spec.steps[st.step]
            self._event(st, f"step {st.step}/{len(spec.steps)} passed; "
                            f"next: {st.weight:g}% to canary")
            st = self.store.save(st)
            self._apply_step(st)
            return
        if a.outcome == "wait":
            st.waited_intervals += 1
            if st.waited_intervals <= spec.max_wait_intervals:
                self._event(st, f"waiting for data ({a.reason}) over {window_s:.0f} s, "
                                f"{st.waited_intervals}/{spec.max_wait_intervals}")
                self.store.save(st)
                return
            reason = (f"inconclusive: {a.reason} after {spec.max_wait_intervals} intervals "
                      f"({window_s:.0f} s of data)")
            if spec.on_inconclusive == "rollback":
                self._finish(st, "rolled_back", reason)
            else:  # a healthy canary at low traffic is held, not rolled back
                self._transition(st, "inconclusive", reason + "; weights held: `rollout "
                                 "resume` waits again, or promote / abort")
                self.store.save(st)
            return
        st.failures += 1
        st.waited_intervals = 0
        if st.failures > spec.failure_budget:
            self._finish(st, "rolled_back", f"{a.reason} (failed analyses: {st.failures}, "
                                            f"budget {spec.failure_budget})")
            return
        # judge the held step on fresh data only
        st.step_started_at, st.judged_at = t, None
        self._event(st, f"analysis failed ({a.reason}); {st.failures}/{spec.failure_budget} "
                        "of the failure budget used, holding the step")
        self.store.save(st)

    def _apply_step(self, st: RolloutState) -> None:
        spec = st.spec
        self.target.apply(spec.model, spec.stable, spec.canary, st.weight, spec.shadow)
        st.applied_step = st.step
        st.step_started_at, st.judged_at, st.waited_intervals = now(), None, 0
        self.store.save(st)

    def _finish(self, st: RolloutState, phase: str, reason: str) -> None:
        spec = st.spec
        if phase == "promoted":
            self.target.apply(spec.model, spec.canary, None, 0.0, 0.0)
            st.weight = 100.0
        else:  # rolled back or aborted: every request to stable
            self.target.apply(spec.model, spec.stable, None, 0.0, 0.0)
            st.weight = 0.0
        self._transition(st, phase, reason)
        self.store.save(st)

    def _transition(self, st: RolloutState, to: str, reason: str) -> None:
        t = st.transition(to, reason)
        self.metrics.transitions.labels(model=st.model, from_phase=t.from_phase,
                                        to_phase=t.to_phase).inc()
        log.info("rollout of %s: %s -> %s: %s", st.model, t.from_phase, t.to_phase, reason)
        self._event(st, f"{t.from_phase} -> {t.to_phase}: {reason}")

    def _event(self, st: RolloutState, message: str) -> None:
        self.on_event(st, message)


def serve_metrics(metrics: ControllerMetrics, port: int, host: str = "0.0.0.0"):
    """``/metrics`` (Prometheus) and ``/healthz`` on one port, in a daemon thread."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return metrics_app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server(host, port, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
