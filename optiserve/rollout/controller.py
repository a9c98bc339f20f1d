"""The rollout controller: deploys a canary, walks it through its steps judged on Prometheus
data, and retires what is no longer served.

One writer: only a runner (the foreground ``rollout start`` or ``rollout controller``) changes
the target; ``rollout promote/abort/pause/resume`` record a request in the state for it. Every
change is write-ahead: the split is recorded (compare-and-swap) before it is applied, then
marked applied, so a runner that loses a race to another writer gets ``StaleState`` *before*
touching the target, and one killed at any point resumes where it was. A step's clock starts
only when the gateway reports the step's weights (its traffic-weight metric), and every pass
reconciles the target with the recorded split (a ``helm upgrade`` or GitOps sync that reset it
is undone).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from serving import metrics as M
from serving.settings import settings
from .analysis import analyze, confirmation_queries
from .prometheus import Prometheus, PrometheusUnavailable
from .state import (
    Analysis, Request, RolloutSpec, RolloutState, Split, UnreadableState, now,
)
from .store import StaleState, StateStore
from .targets import Target, TargetError, owned_split, with_split

log = logging.getLogger("optiserve.rollout")
PHASES = ("pending", "progressing", "inconclusive", "paused", "promoted", "rolled_back",
          "aborted")
#: Requests by phase: what each is allowed from.
#: Kinds of errors the controller counts (every model's series start at 0, so the first one
#: shows in increase()).
ERROR_KINDS = ("target", "unexpected", "store", "drift", "unconfirmed")
REQUESTABLE = {
    "promote": {"progressing", "inconclusive", "paused"},
    "abort": {"pending", "progressing", "inconclusive", "paused"},
    "pause": {"progressing", "inconclusive"},
    "resume": {"inconclusive", "paused"},
}


class RolloutError(Exception):
    """A rollout request that cannot be carried out; the message says why."""


class ControllerMetrics:
    """The controller's own metrics (prometheus-client), names from ``serving.metrics``.

    Series of a rollout that ended are replaced, not kept: a model's weight series carries its
    current stable/canary pair only, and checks the last analysis did not run are removed."""

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
        def counter(spec):
            return Counter(spec.name, spec.description, spec.tag_keys, registry=self.registry)

        self.transitions = counter(M.ROLLOUT_TRANSITIONS)
        self.errors = counter(M.ROLLOUT_ERRORS)
        self._pairs: dict[str, tuple[str, str]] = {}
        self._checks: dict[str, set[str]] = {}

    def error(self, model: str, kind: str) -> None:
        self.errors.labels(model=model, kind=kind).inc()

    def observe(self, st: RolloutState) -> None:
        m = st.model
        for kind in ERROR_KINDS:
            self.errors.labels(model=m, kind=kind)
        for p in PHASES:
            self.phase.labels(model=m, phase=p).set(1 if st.phase == p else 0)
        pair = (str(st.spec.stable), str(st.spec.canary))
        old = self._pairs.get(m)
        if old is not None and old != pair:
            try:
                self.weight.remove(m, *old)
            except KeyError:
                pass
        self._pairs[m] = pair
        self.weight.labels(model=m, stable=pair[0], canary=pair[1]).set(st.weight)
        self.step.labels(model=m).set(st.step)
        self.failures.labels(model=m).set(st.failures)
        checks = {c.name: c for c in st.last_analysis.checks} if st.last_analysis else {}
        for gone in self._checks.get(m, set()) - set(checks):
            for g in (self.value, self.passed):
                try:
                    g.remove(m, gone)
                except KeyError:
                    pass
        self._checks[m] = set(checks)
        for c in checks.values():
            if c.value is not None:
                self.value.labels(model=m, check=c.name).set(c.value)
            self.passed.labels(model=m, check=c.name).set(
                {"pass": 1, "fail": 0, "warn": 0}.get(c.verdict, -1))


class Controller:
    def __init__(self, store: StateStore, target: Target, prometheus: Prometheus,
                 metrics: ControllerMetrics | None = None,
                 on_event: Callable[[RolloutState, str], None] | None = None,
                 repository=None, runner_id: str | None = None):
        self.store, self.target, self.prom = store, target, prometheus
        self.metrics = metrics or ControllerMetrics()
        self.on_event = on_event or (lambda st, msg: None)
        #: the model repository, where this process can read it (checks the canary exists)
        self.repository = repository
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}"
        #: model -> (monotonic time before which it is not retried, current delay)
        self._backoff: dict[str, tuple[float, float]] = {}
        #: models whose state cannot be read, with the reason last logged
        self._unreadable_seen: dict[str, str] = {}

    # ---- commands (any process) ----------------------------------------------------------------
    def start(self, model: str, canary: int, **options) -> RolloutState:
        """Record a new rollout (pending) after checking it can run. The runner deploys the
        canary if it is not served yet."""
        current = self.store.load(model)
        if current is not None and not current.settled:
            raise RolloutError(
                f"a rollout of {model} is already {current.phase} (canary {current.spec.canary}, "
                f"step {current.step + 1}/{len(current.spec.steps)})"
                + ("; promote or abort it first" if not current.done else
                   "; it is still retiring a version, try again shortly"))
        try:
            traffic = self.target.read(model)
        except TargetError as e:
            raise RolloutError(str(e)) from None
        if canary not in traffic.deployed and self.repository is not None:
            try:
                self.repository.get(model, canary)
            except Exception as e:
                raise RolloutError(f"{model}:{canary} cannot be deployed: {e}") from None
        try:
            spec = RolloutSpec(model=model, stable=traffic.stable, canary=canary, **options)
        except ValueError as e:
            raise RolloutError(str(e).split("\n", 1)[-1].strip()) from None
        if canary not in traffic.deployed:
            try:  # refuse now what the target would refuse later
                with_split(self.target.config(), model, self._deploy_split(traffic.split(),
                                                                           canary))
            except TargetError as e:
                raise RolloutError(str(e)) from None
        state = RolloutState(spec=spec, revision=current.revision if current else 0)
        state = self.store.save(state)
        how = "served already" if canary in traffic.deployed else "to be deployed"
        self._event(state, f"rollout of {model}:{canary} ({how}) over {model}:{spec.stable} "
                           f"recorded, steps {spec.steps}")
        return state

    def request(self, model: str, action: str, by: str = "") -> RolloutState:
        """Record ``action`` for the runner to carry out (compare-and-swap, retried on a
        concurrent save); refused when the rollout's phase does not allow it."""
        for _ in range(10):
            st = self.store.load(model)
            if st is None or st.done:
                raise RolloutError(f"no rollout of {model} is in progress")
            if st.phase not in REQUESTABLE[action]:
                raise RolloutError(f"the rollout of {model} is {st.phase}: cannot {action} it"
                                   + (" (nothing to resume)" if action == "resume" else ""))
            if st.request is not None and st.request.action != action:
                raise RolloutError(f"a {st.request.action} of {model} is already requested "
                                   "and not carried out yet")
            st.request = Request(action=action, by=by or self.runner_id)
            try:
                return self.store.save(st)
            except StaleState:
                continue
        raise RolloutError(f"the rollout of {model} kept changing; try again")

    def release(self, model: str) -> None:
        """A runner that stops looking after ``model`` says so, so that the next CLI request
        does not wait for it."""
        for _ in range(5):
            st = self.store.load(model)
            if st is None or st.heartbeat_at is None:
                return
            st.heartbeat_at = None
            try:
                self.store.save(st)
                return
            except StaleState:
                continue

    def runner_alive(self, st: RolloutState) -> bool:
        return (st.heartbeat_at is not None
                and now() - st.heartbeat_at < timedelta(seconds=3 * settings().rollout_heartbeat_s))

    # Direct forms, kept for callers that are themselves the runner (tests, the foreground
    # loop): record the request, then carry it out here.
    def promote(self, model: str) -> RolloutState:
        return self._request_and_run(model, "promote")

    def abort(self, model: str) -> RolloutState:
        return self._request_and_run(model, "abort")

    def pause(self, model: str) -> RolloutState:
        return self._request_and_run(model, "pause")

    def resume(self, model: str) -> RolloutState:
        return self._request_and_run(model, "resume")

    def _request_and_run(self, model: str, action: str) -> RolloutState:
        self.request(model, action)
        self.tick(only=model)
        return self.store.load(model)

    # ---- the loop (runners only) ---------------------------------------------------------------
    def tick(self, only: str | None = None) -> None:
        """Advance every rollout that is not settled by at most one decision. Nothing one
        rollout raises ends the loop: an unexpected error is logged and counted, and that
        rollout alone is retried with a growing delay."""
        try:
            models = [only] if only else self.store.models()
        except Exception:
            log.exception("cannot list the rollout states; retrying")
            self.metrics.error(only or "", "store")
            return
        for model in models:
            # each rollout is read and advanced on its own: one state that cannot be read (a
            # newer format, a hand edit, an API error) is reported and skipped, never the rest
            try:
                st = self.store.load(model)
            except UnreadableState as e:
                self._unreadable(model, str(e))
                continue
            except Exception as e:
                log.warning("cannot read the rollout state of %s: %s; retrying", model, e)
                self.metrics.error(model, "store")
                continue
            self._unreadable_seen.pop(model, None)
            if st is None:
                continue
            if not st.settled:
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
                    self.metrics.error(st.model, "target")
                    self.on_event(st, f"target unavailable: {e}")
                except Exception as e:
                    delay = min(settings().rollout_backoff_max_s,
                                max(settings().rollout_backoff_min_s, 2 * delay))
                    self._backoff[st.model] = (time.monotonic() + delay, delay)
                    self.metrics.error(st.model, "unexpected")
                    log.exception("rollout of %s: unexpected error; retrying in %.0f s",
                                  st.model, delay)
                    self.on_event(st, f"unexpected error ({type(e).__name__}: {e}); retrying "
                                      f"in {delay:.0f} s")
            try:
                self.metrics.observe(self.store.load(st.model) or st)
            except Exception:
                log.exception("rollout of %s: cannot export its metrics", st.model)

    def _unreadable(self, model: str, reason: str) -> None:
        """Count it every pass; log it when the reason changes (not every second)."""
        self.metrics.error(model, "store")
        if self._unreadable_seen.get(model) != reason:
            self._unreadable_seen[model] = reason
            log.error("%s; skipped (the other rollouts go on)", reason)

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(poll_s)

    def _save(self, st: RolloutState) -> RolloutState:
        st.heartbeat_at = now()
        return self.store.save(st)

    def _advance(self, st: RolloutState) -> None:
        if st.request is not None:
            self._carry_out(st)
            return
        if st.desired is not None and not st.applied:  # recorded, not (known) applied yet
            self._apply(st)
            return
        if st.desired is not None and not self._reconciled(st):
            return
        if st.desired is not None and not st.confirmed:
            self._confirm(st)
            return
        if st.done:
            self._retire(st)
            return
        if st.phase == "pending":
            self._deploy(st)
            return
        if st.phase != "progressing":  # inconclusive, paused: held
            self._beat(st)
            return
        if st.applied_step != st.step:  # a step recorded before its split was decided
            self._step(st)
            return
        self._judge(st)

    def _beat(self, st: RolloutState) -> None:
        if st.heartbeat_at is None or now() - st.heartbeat_at >= timedelta(
                seconds=settings().rollout_heartbeat_s):
            self._save(st)

    # ---- changing the target: record, apply, confirm -----------------------------------------
    def _decide(self, st: RolloutState, split: Split, why: str) -> RolloutState:
        """Record a split (write-ahead), then apply it."""
        try:
            owned = owned_split(with_split(self.target.config(), st.model, split), st.model)
        except (TargetError, KeyError) as e:
            raise TargetError(f"cannot plan {why}: {e}") from None
        st.desired, st.owned_split = split, owned
        st.applied = st.confirmed = False
        st.applied_at = None
        st = self._save(st)
        return self._apply(st)

    def _apply(self, st: RolloutState) -> RolloutState:
        self.target.apply(st.model, st.desired)
        st.applied, st.applied_at = True, now()
        return self._save(st)

    def _reconciled(self, st: RolloutState) -> bool:
        """The target still serves the recorded split; if not (a ``helm upgrade``, a GitOps
        sync or a hand edit reset it), record that and re-apply it on the next pass."""
        actual = self.target.read(st.model).split()
        if actual == st.desired:
            return True
        self.metrics.error(st.model, "drift")
        self._event(st, f"the target's split of {st.model} ({_describe(actual)}) is not the "
                        f"recorded one ({_describe(st.desired)}); re-applying it")
        st.applied = st.confirmed = False
        self._save(st)
        return False

    def _confirm(self, st: RolloutState) -> None:
        """Wait until every gateway replica reports the recorded weights; only then does a
        step's clock start. A step that stays unconfirmed past the timeout counts as a failed
        analysis (no decision without data) and its split is applied again; a finished
        rollout goes on to retire what it retires."""
        spec, d = st.spec, st.desired
        expected = {v: (d.weight if v == d.canary else 100.0 - d.weight if v == d.stable
                        else 0.0) for v in d.routed}
        problem = "the gateway reports other weights"
        try:
            ok = True
            for stale, matching in confirmation_queries(spec, expected):
                if self.prom.query(stale) is not None or not self.prom.query(matching):
                    ok = False
                    break
        except PrometheusUnavailable as e:
            ok, problem = False, str(e)
        t = now()
        if ok:
            st.confirmed = True
            if st.phase == "progressing" and st.applied_step == st.step:
                st.step_started_at, st.judged_at, st.waited_intervals = t, None, 0
                st.reset_at = None
            self._event(st, f"the gateway reports {_describe(d)}")
            self._save(st)
            return
        timeout = confirm_timeout_s(spec)
        if st.applied_at is None or (t - st.applied_at).total_seconds() <= timeout:
            self._beat(st)
            return
        self.metrics.error(st.model, "unconfirmed")
        reason = (f"no analysis: {_describe(d)} not confirmed within {timeout:.0f} s "
                  f"({problem}; is Prometheus scraping the gateway with this selector?)")
        if st.done:
            st.confirmed = True
            self._event(st, reason + "; going on without it")
            self._save(st)
            return
        st.failures += 1
        st.record(Analysis(step=st.step, weight=st.weight, window_s=timeout, checks=[],
                           outcome="fail", reason=reason))
        if st.failures > spec.failure_budget:
            self._finish(st, "rolled_back", f"{reason} (failed analyses: {st.failures}, "
                                            f"budget {spec.failure_budget})")
            return
        self._event(st, f"{reason}; {st.failures}/{spec.failure_budget} of the failure budget "
                        "used, applying it again")
        st.applied = False
        self._save(st)

    # ---- phases ----------------------------------------------------------------------------
    def _deploy_split(self, current: Split, canary: int) -> Split:
        return current.model_copy(update={"deployed": tuple(sorted({*current.deployed,
                                                                     canary}))})

    def _deploy(self, st: RolloutState) -> None:
        """Pending: deploy the canary if it is not served, wait for it, then the first step."""
        spec = st.spec
        current = st.desired or self.target.read(st.model).split()
        if spec.canary not in current.deployed:
            st.deployed_canary = True
            self._decide(st, self._deploy_split(current, spec.canary),
                         f"deploying {spec.model}:{spec.canary}")
            self._event(st, f"deploying {spec.model}:{spec.canary} (a copy of "
                            f"{spec.model}:{spec.stable}'s application)")
            return
        status, message = self.target.app_status(spec.model, spec.canary)
        if status == "RUNNING":
            st.step, st.weight = 0, spec.steps[0]
            self._transition(st, "progressing", f"{spec.model}:{spec.canary} is ready; step "
                                                f"1/{len(spec.steps)}: {spec.steps[0]:g}%")
            self._step(st)
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            self._finish(st, "rolled_back", f"{spec.model}:{spec.canary} failed to deploy: "
                                            f"{message[-500:] or status}")
            return
        if (now() - st.created_at).total_seconds() > spec.deploy_timeout_s:
            self._finish(st, "rolled_back", f"{spec.model}:{spec.canary} was not ready after "
                                            f"{spec.deploy_timeout_s:.0f} s ({status})")
            return
        if message and message != st.deploy_message:
            # Serve's reason (e.g. "... taken more than 10s to be scheduled ... Resources
            # required ..."), shown as soon as Serve reports it instead of after the timeout
            st.deploy_message = message
            log.warning("rollout of %s: %s:%s is not ready (%s): %s", spec.model, spec.model,
                        spec.canary, status, message)
            self._event(st, f"{spec.model}:{spec.canary} is not ready yet ({status}): "
                            f"{message[-500:]}")
            self._save(st)
            return
        self._beat(st)

    def _step(self, st: RolloutState) -> None:
        spec = st.spec
        current = st.desired or self.target.read(st.model).split()
        split = Split(stable=spec.stable, canary=spec.canary, weight=st.weight,
                      shadow=spec.shadow, routed=tuple(sorted({*current.routed, spec.canary})),
                      deployed=current.deployed)
        st.applied_step = st.step
        st.step_started_at, st.judged_at, st.waited_intervals = None, None, 0
        st.reset_at = None
        self._decide(st, split, f"step {st.step + 1}")

    def _judge(self, st: RolloutState) -> None:
        spec = st.spec
        t = now()
        # evidence starts at the step's start, or at the last reset of a held step (a failed
        # analysis): no window ever reaches back before it, so one burst is counted once and a
        # step is never judged on the previous step's split
        start = max(st.step_started_at, st.reset_at or st.step_started_at)
        since_judged = t - (st.judged_at or start)
        if since_judged < timedelta(seconds=spec.interval_s):
            self._beat(st)
            return
        # the window grows while the step waits for data, so evidence accumulates at low
        # traffic; shorter than a few scrape intervals it holds too few samples to judge: wait
        # for more instead of widening it into the past
        window_s = (t - start).total_seconds()
        if window_s < settings().rollout_min_window_scrapes * spec.scrape_interval_s:
            self._beat(st)
            return
        a = analyze(self.prom, spec, st.step, st.weight, window_s)
        st.record(a)
        st.judged_at = t
        for c in a.checks:
            if c.verdict == "warn":
                self._event(st, f"warning: {c.name} {c.value:.3g} ({c.detail})")
        if a.outcome == "pass":
            st.waited_intervals = 0
            if st.step == len(spec.steps) - 1:
                self._finish(st, "promoted", f"every step passed ({a.reason})")
                return
            st.step += 1
            st.weight = spec.steps[st.step]
            self._event(st, f"step {st.step}/{len(spec.steps)} passed; "
                            f"next: {st.weight:g}% to canary")
            self._step(st)
            return
        if a.outcome == "wait":
            st.waited_intervals += 1
            if st.waited_intervals <= spec.max_wait_intervals:
                self._event(st, f"waiting for data ({a.reason}) over {window_s:.0f} s, "
                                f"{st.waited_intervals}/{spec.max_wait_intervals}")
                self._save(st)
                return
            reason = (f"inconclusive: {a.reason} after {spec.max_wait_intervals} intervals "
                      f"({window_s:.0f} s of data)")
            if spec.on_inconclusive == "rollback":
                self._finish(st, "rolled_back", reason)
            else:  # a healthy canary at low traffic is held, not rolled back
                self._transition(st, "inconclusive", reason + "; weights held: `rollout "
                                 "resume` waits again, or promote / abort")
                self._save(st)
            return
        st.failures += 1
        st.waited_intervals = 0
        if st.failures > spec.failure_budget:
            self._finish(st, "rolled_back", f"{a.reason} (failed analyses: {st.failures}, "
                                            f"budget {spec.failure_budget})")
            return
        # judge the held step on fresh data only (from now on; see _judge)
        st.reset_at, st.judged_at = t, None
        self._event(st, f"analysis failed ({a.reason}); {st.failures}/{spec.failure_budget} "
                        "of the failure budget used, holding the step")
        self._save(st)

    def _carry_out(self, st: RolloutState) -> None:
        """A request recorded by hand: carried out here, by the runner, or dropped with a
        message when the rollout moved on since it was asked."""
        req, st.request = st.request, None
        who = f" (asked by {req.by})" if req.by else ""
        if st.phase not in REQUESTABLE[req.action]:
            self._event(st, f"{req.action}{who} dropped: the rollout is {st.phase} now")
            self._save(st)
            return
        if req.action == "promote":
            self._finish(st, "promoted", f"promoted by hand{who}")
        elif req.action == "abort":
            self._finish(st, "aborted", f"aborted by hand{who}")
        elif req.action == "pause":
            self._transition(st, "paused", f"paused by hand{who}; weights held")
            self._save(st)
        else:  # resume: the step's evidence so far still counts (its window keeps growing)
            st.waited_intervals = 0
            st.judged_at = now()
            self._transition(st, "progressing", f"resumed by hand{who}")
            self._save(st)

    def _finish(self, st: RolloutState, phase: str, reason: str) -> None:
        spec = st.spec
        current = st.desired or self.target.read(st.model).split()
        t = now()
        if phase == "promoted":
            split = Split(stable=spec.canary, routed=current.routed, deployed=current.deployed)
            st.weight = 100.0
            gone = [spec.stable]
            after = spec.retire_after_s if spec.retire_after_s is not None else spec.interval_s
        else:  # rolled back or aborted: every request to stable
            split = Split(stable=spec.stable, routed=current.routed, deployed=current.deployed)
            st.weight = 0.0
            gone = [spec.canary] if spec.canary in current.deployed else []
            after = settings().rollout_drain_s
        st.retire = [] if spec.keep else gone
        st.retire_at = t + timedelta(seconds=after) if st.retire else None
        self._transition(st, phase, reason)
        self._decide(st, split, phase)
        if st.retire:
            self._event(st, f"{', '.join(f'{spec.model}:{v}' for v in st.retire)} stays "
                            f"served at 0 % for {after:.0f} s, then is removed")

    def _retire(self, st: RolloutState) -> None:
        if not st.retire:
            return
        if now() < st.retire_at:
            self._beat(st)
            return
        d = st.desired
        split = d.model_copy(update={
            "routed": tuple(v for v in d.routed if v not in st.retire),
            "deployed": tuple(v for v in d.deployed if v not in st.retire)})
        gone, st.retire, st.retire_at = st.retire, [], None
        self._decide(st, split, "retiring")
        self._event(st, f"removed {', '.join(f'{st.model}:{v}' for v in gone)}")

    def _transition(self, st: RolloutState, to: str, reason: str) -> None:
        t = st.transition(to, reason)
        self.metrics.transitions.labels(model=st.model, from_phase=t.from_phase,
                                        to_phase=t.to_phase).inc()
        log.info("rollout of %s: %s -> %s: %s", st.model, t.from_phase, t.to_phase, reason)
        self._event(st, f"{t.from_phase} -> {t.to_phase}: {reason}")

    def _event(self, st: RolloutState, message: str) -> None:
        self.on_event(st, message)


def confirm_timeout_s(spec: RolloutSpec) -> float:
    """How long the gateway may take to report a new split: a few report and scrape
    intervals, at least 30 s."""
    return max(30.0, 2 * spec.interval_s, 10 * spec.scrape_interval_s)


def _describe(s: Split) -> str:
    if s.canary:
        text = f"{s.weight:g}% to v{s.canary}, the rest to v{s.stable}"
    else:
        text = f"all traffic to v{s.stable}"
    extra = [v for v in s.deployed if v not in s.routed]
    return text + (f"; deployed unrouted: {extra}" if extra else "")


def serve_metrics(metrics: ControllerMetrics, port: int, host: str = "127.0.0.1"):
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
