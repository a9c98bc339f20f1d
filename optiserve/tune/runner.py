"""Running a tune against a live server: apply each trial's configuration, measure it, record it.

A configuration is applied through Ray Serve's declarative API (the serve config PUT whole):

- batching (``max_batch_size``, ``max_delay_ms``) changes only the gateway deployment's
  ``user_config``; Serve applies it in place (``reconfigure``), no replica restarts;
- layout (``replicas``, ``threads``, ``gateway_replicas``) changes the tuned version's
  application (replicas, the CPUs each reserves, its threads) and, for gateway replicas, the
  gateway's replica count; no other application changes.

Each trial is then measured with :mod:`optiserve.bench` (the load generator of ``optiserve
bench``) as a sweep of load steps, closed loop at doubling concurrency or open loop at a rising
offered rate, and stopped by the strategy once a step breaks the SLO.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import time
from dataclasses import dataclass, field

from serving.settings import settings
from serving.config import (
    GATEWAY_APP, GATEWAY_DEPLOYMENT, gateway_user_config, version_app_name,
)
from .scoring import Step, Trial, finish, sustained
from .space import BATCHING_PARAMS, config_key
from .strategies import Strategy


class TuneError(RuntimeError):
    """The tune cannot go on (the server went away, a configuration cannot be applied)."""


# ---- the serve config of one trial -----------------------------------------------------------

def _app(doc: dict, name: str) -> dict:
    for app in doc.get("applications", []):
        if app.get("name") == name:
            return app
    raise TuneError(f"the serve config has no application {name!r}")


def _deployment(app: dict, name: str) -> dict:
    for dep in app.get("deployments") or []:
        if dep.get("name") == name:
            return dep
    raise TuneError(f"application {app.get('name')!r} has no deployment {name!r}")


def reservation(doc: dict, model: str, version: int, limits: dict, total_cpus: float,
                keep_own: bool = True) -> float:
    """CPUs each model replica reserves from Ray, the same in every trial, so that changing the
    replica count only adds or stops replicas and a replica restarts for nothing (a reservation
    that changed would need old and new replicas side by side during the rollout, which a small
    machine cannot hold).

    With ``keep_own``, the version's own reservation in ``doc`` when the space's largest layout
    (``limits``: most replicas, gateway replicas and threads) fits in Ray with it: no trial nor
    the restore then redeploys the version. Otherwise the share of what the gateway and the
    other served versions leave at that layout, so every layout fits in Ray; an attached
    server's version is then redeployed once at the first trial and once at the restore."""
    gw = _deployment(_app(doc, GATEWAY_APP), GATEWAY_DEPLOYMENT)
    gw_cpus = float((gw.get("ray_actor_options") or {}).get("num_cpus", 1))
    others = 0.0
    target = version_app_name(model, version)
    for app in doc.get("applications", []):
        if app.get("name") in (GATEWAY_APP, target):
            continue
        for dep in app.get("deployments") or []:
            n = dep.get("num_replicas") or 1
            others += (1 if n == "auto" else float(n)) * float(
                (dep.get("ray_actor_options") or {}).get("num_cpus", 1))
    spare = total_cpus - limits["gateway_replicas"] * gw_cpus - others
    # the version's own reservation when the largest layout fits in it: no trial (nor the
    # restore) then changes what its replicas reserve, so none redeploys it (no downtime)
    dep = _deployment(_app(doc, target), target)
    own = (dep.get("ray_actor_options") or {}).get("num_cpus")
    if keep_own and own is not None and 0 < float(own) and \
            limits["replicas"] * float(own) <= spare + 1e-9:
        return float(own)
    share = max(spare, 0.1 * limits["replicas"]) / limits["replicas"]
    return max(0.01, math.floor(min(float(limits["threads"]), share) * 100) / 100)


def trial_doc(base: dict, model: str, version: int, config: dict, cpus_per_replica: float
              ) -> dict:
    """The base serve config with one trial's configuration applied."""
    doc = copy.deepcopy(base)
    route = gateway_user_config(doc)["models"][model]
    batching = dict(route["versions"].get(version) or route["versions"].get(str(version)) or {})
    batching.update(max_batch_size=config["max_batch_size"], max_delay_ms=config["max_delay_ms"],
                    # two batches in flight per lane of each model replica: one computing,
                    # one ready (a replica runs as many lanes as CPUs at most)
                    max_inflight_batches=2 * config["replicas"] * config["threads"])
    route["versions"].pop(str(version), None)
    route["versions"][version] = batching
    name = version_app_name(model, version)
    dep = _deployment(_app(doc, name), name)
    dep["num_replicas"] = config["replicas"]
    dep.pop("autoscaling_config", None)
    actor = dict(dep.get("ray_actor_options") or {})
    actor["num_cpus"] = cpus_per_replica
    dep["ray_actor_options"] = actor
    # the replica runs "threads" CPUs as optiserve serve would: single-thread lanes with ONNX
    # Runtime on CPU, intra-op threads otherwise (serving.config.VersionConfig.layout)
    runtime = {k: v for k, v in (dep.get("user_config") or {}).items()
               if k not in ("intra_op_threads", "lanes")}
    dep["user_config"] = {**runtime, "cpus": config["threads"]}
    _deployment(_app(doc, GATEWAY_APP), GATEWAY_DEPLOYMENT)["num_replicas"] = \
        config["gateway_replicas"]
    return doc


def fragment(doc: dict, model: str, version: int) -> dict:
    """The parts of a serve config a tune decides: the gateway's batching for the version and
    replica count, the version application's deployment."""
    name = version_app_name(model, version)
    gw = _deployment(_app(doc, GATEWAY_APP), GATEWAY_DEPLOYMENT)
    dep = _deployment(_app(doc, name), name)
    return {"applications": [
        {"name": GATEWAY_APP, "deployments": [{
            "name": GATEWAY_DEPLOYMENT, "num_replicas": gw["num_replicas"],
            "user_config": {"models": {model: {"versions": {
                version: gateway_user_config(doc)["models"][model]["versions"][version]}}}}}]},
        {"name": name, "deployments": [{
            "name": name, "num_replicas": dep["num_replicas"],
            "ray_actor_options": dep["ray_actor_options"], "user_config": dep["user_config"]}]},
    ]}


# ---- the live server -------------------------------------------------------------------------

class Target:
    """A running ``optiserve serve`` whose configuration the tune changes through Serve's API."""

    def __init__(self, url: str, serve_api: str, model: str, version: int,
                 limits: dict, base: dict | None = None, total_cpus: float | None = None,
                 alive=lambda: True):
        from ..serve_api import ServeAPI

        self.url, self.model, self.version = url.rstrip("/"), model, version
        self.api = ServeAPI(serve_api, timeout_s=30)
        self.original = base or self.api.deployed_config()
        self.base = copy.deepcopy(self.original)
        self.total_cpus = total_cpus or float(os.cpu_count() or 1)
        self.cpus_per_replica = reservation(self.base, model, version, limits, self.total_cpus)
        self.alive = alive
        self.current: dict | None = None  # the configuration applied last

    def doc_for(self, config: dict) -> dict:
        return trial_doc(self.base, self.model, self.version, config, self.cpus_per_replica)

    def apply(self, config: dict, timeout_s: float = 180.0) -> str:
        """Apply a configuration and wait until it serves; returns "in place" or
        "redeployed"."""
        doc = self.doc_for(config)
        http = self.base.get("http_options")
        if http:
            doc["http_options"] = http
        try:
            same_layout = _layout(self.api.deployed_config(), self.model, self.version) == \
                _layout(doc, self.model, self.version)
        except Exception:
            same_layout = False
        self._put(doc, timeout_s)
        self._wait(doc, timeout_s)
        self.current = dict(config)
        return "in place" if same_layout else "redeployed"

    def _put(self, doc: dict, timeout_s: float = 180.0) -> None:
        """PUT a config. When the tuned version's replicas must reserve other resources, its
        application is removed first, then deployed again: a rolling update would need the old
        and the new replicas side by side, which a small machine may not hold."""
        name = version_app_name(self.model, self.version)
        try:
            deployed = self.api.deployed_config()
            old = _deployment(_app(deployed, name), name).get("ray_actor_options")
        except Exception:
            old = None
        new = _deployment(_app(doc, name), name).get("ray_actor_options")
        if old is not None and _jsonish(old) != _jsonish(new):
            without = copy.deepcopy(doc)
            without["applications"] = [a for a in doc["applications"] if a["name"] != name]
            self.api.apply(without)
            deadline = time.monotonic() + timeout_s
            while name in (self.api.details().get("applications") or {}):
                if time.monotonic() > deadline:
                    raise TuneError(f"{name} not removed after {timeout_s:.0f} s")
                time.sleep(0.25)
        self.api.apply(doc)

    def _wait(self, doc: dict, timeout_s: float) -> None:
        from ..local import wait_listening

        names = [a["name"] for a in doc["applications"]]
        want = {}
        for a in doc["applications"]:
            for d in a.get("deployments") or []:
                want[(a["name"], d["name"])] = d
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        time.sleep(0.2)
        while time.monotonic() < deadline:
            if not self.alive():
                raise TuneError("the server exited")
            try:
                apps = self.api.details().get("applications") or {}
            except Exception as e:
                last = str(e)
                time.sleep(0.3)
                continue
            done, last = True, ""
            for n in names:
                app = apps.get(n) or {}
                status = app.get("status")
                if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise TuneError(f"{n}: {status}: {(app.get('message') or '')[-800:]}")
                if status != "RUNNING":
                    done, last = False, f"{n} {status}"
                    continue
                for dn, dep in (app.get("deployments") or {}).items():
                    spec = want.get((n, dn)) or {}
                    running = [r for r in dep.get("replicas") or [] if r["state"] == "RUNNING"]
                    cfg = dep.get("deployment_config") or {}
                    if (dep.get("status") != "HEALTHY"
                            or len(running) != len(dep.get("replicas") or [])
                            or ("num_replicas" in spec and len(running) != spec["num_replicas"])
                            or ("user_config" in spec
                                and cfg.get("user_config") != _jsonish(spec["user_config"]))):
                        done, last = False, f"{n}/{dn} {dep.get('status')}, {len(running)} running"
            if done:
                break
            time.sleep(0.25)
        else:
            raise TuneError(f"configuration not serving after {timeout_s:.0f} s ({last})")
        host, _, port = self.url.split("//", 1)[-1].rpartition(":")
        wait_listening(host, int(port))
        self._ready(deadline)

    def _ready(self, deadline: float) -> None:
        import urllib.request

        url = f"{self.url}/v2/models/{self.model}/versions/{self.version}/ready"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TuneError(f"{url} not ready")
            time.sleep(0.2)

    def replicas(self) -> dict:
        """Replica ids and pids of the tuned version's and the gateway's deployments."""
        apps = self.api.details().get("applications") or {}
        out = {}
        for key, app_name, dep_name in (
                ("model", version_app_name(self.model, self.version),
                 version_app_name(self.model, self.version)),
                ("gateway", GATEWAY_APP, GATEWAY_DEPLOYMENT)):
            dep = ((apps.get(app_name) or {}).get("deployments") or {}).get(dep_name) or {}
            out[key] = sorted(f"{r['replica_id']}:{r.get('pid')}" for r in dep.get("replicas")
                              or [])
        return out

    def restore(self) -> None:
        """Put back the configuration the server had before the tune."""
        self._put(self.original)


def _layout(doc: dict, model: str, version: int) -> str:
    """What a change of which restarts or adds replicas: the tuned version's deployment and the
    gateway's replica count and resources (its user_config is applied in place)."""
    import json

    name = version_app_name(model, version)
    app = _app(doc, name)
    gw = _deployment(_app(doc, GATEWAY_APP), GATEWAY_DEPLOYMENT)
    return json.dumps(_jsonish([app.get("deployments"), gw.get("num_replicas"),
                                gw.get("ray_actor_options")]), sort_keys=True)


def _jsonish(obj):
    """A user_config as Serve reports it back (JSON: mapping keys are strings)."""
    import json

    return json.loads(json.dumps(obj))


# ---- measuring -------------------------------------------------------------------------------

@dataclass
class LoadPlan:
    """How each trial is measured: the load steps of its sweep."""

    mode: str = "concurrency"  # or "rate"
    step_s: float = 3.0
    warmup_s: float = 0.5
    max_steps: int = 8
    start: float | None = None  # first concurrency / rate [default: adaptive, see levels()]
    growth: float | None = None  # factor between steps [2 in closed loop, 1.5 in open loop]
    max_concurrency: int = 256
    rows_per_request: int = 1
    timeout_s: float = 10.0

    def levels(self, best: Trial | None) -> list[float]:
        """The sweep's load levels. Without ``start``, the sweep begins at a quarter of the
        best trial's concurrency (closed loop) or half its throughput (open loop), so a trial
        spends its steps near the loads that matter; the first trial starts at 1 client /
        20 req/s."""
        growth = self.growth or (2.0 if self.mode == "concurrency" else 1.5)
        if self.mode == "concurrency":
            first = self.start or (max(1, int(best.best.load // 4)) if best and best.best
                                   else 1)
            out, c = [], float(first)
            while len(out) < self.max_steps and c <= self.max_concurrency:
                out.append(float(int(c)))
                c = max(c + 1, c * growth)
            return out
        first = self.start or (max(5.0, 0.5 * best.value) if best and best.value else 20.0)
        return [round(first * growth ** i, 1) for i in range(self.max_steps)]


@dataclass
class Measurer:
    url: str
    model: str
    version: int
    inputs: list
    plan: LoadPlan = field(default_factory=LoadPlan)
    #: requests per step at most, whatever the duration (every load loop is bounded)
    max_requests: int = 200_000

    def step(self, level: float) -> Step:
        import psutil

        from ..bench import BenchOptions, run_bench

        closed = self.plan.mode == "concurrency"
        opts = BenchOptions(url=self.url, model=self.model, version=str(self.version),
                            concurrency=int(level) if closed else None,
                            rate=None if closed else float(level), duration_s=self.plan.step_s,
                            warmup_s=self.plan.warmup_s, max_requests=self.max_requests,
                            rows_per_request=self.plan.rows_per_request,
                            timeout_s=self.plan.timeout_s)
        psutil.cpu_percent(None)
        result = asyncio.run(run_bench(opts, self.inputs))
        return Step.from_bench(level, result, cpu_percent=psutil.cpu_percent(None))


# ---- the tune loop ---------------------------------------------------------------------------

@dataclass
class TuneOptions:
    slo_ms: float = 100.0
    trials: int = 20  # trials in the study in all, those of a resumed study included
    budget_s: float | None = None
    #: in closed loop, a sustained step that gains less than this over the previous one ends
    #: the sweep (the server is saturated; more clients only queue)
    saturation_gain: float = 0.05


#: How a trial whose configuration could not be applied begins its error.
APPLY_FAILED = "not applied: "


class Tuner:
    """Propose, apply, measure, score, record; until the trials, the budget or the space end."""

    def __init__(self, strategy: Strategy, apply, measure, study, opts: TuneOptions,
                 plan: LoadPlan, replicas=lambda: None, events=None):
        self.strategy, self.apply, self.measure = strategy, apply, measure
        self.study, self.opts, self.plan = study, opts, plan
        self.replicas = replicas
        self.events = events or Events()

    @property
    def trials(self) -> list[Trial]:
        return self.study.trials

    def run(self) -> list[Trial]:
        t0 = time.monotonic()
        failed_applies = 0
        while len(self.trials) < self.opts.trials:
            if self.opts.budget_s is not None and time.monotonic() - t0 >= self.opts.budget_s:
                self.events.stopped("time budget spent")
                break
            proposal = self.strategy.propose()
            if proposal is None:
                self.events.stopped("space exhausted")
                break
            trial = self.run_trial(len(self.trials), proposal)
            if trial.error is not None and trial.error.startswith(APPLY_FAILED):
                failed_applies += 1
                if failed_applies >= settings().tune_max_failed_applies:
                    # a server that is gone fails every apply: stop instead of recording every
                    # remaining configuration as failed (a resumed run retries this one)
                    raise TuneError(f"{failed_applies} configurations in a row could not be "
                                    f"applied (last: {trial.error}); is the server up?")
            else:
                failed_applies = 0
            self.study.record(trial)
            self.strategy.tell(proposal, trial)
            self.events.trial_done(trial)
        return self.trials

    def run_trial(self, number: int, proposal) -> Trial:
        from .scoring import best_trial

        config = proposal.config
        trial = Trial(number=number, config=config, state="complete")
        t0 = time.monotonic()
        self.events.trial_start(number, config)
        try:
            trial.applied = self.apply(config)
            trial.replicas = self.replicas()
        except (RuntimeError, OSError) as e:
            # a configuration Serve refused or that did not come up, or a Serve API error
            # (ServeAPIError): this trial failed, the tune goes on
            if isinstance(e, TuneError) and "exited" in str(e):
                raise
            error = str(e) if isinstance(e, TuneError) else f"{type(e).__name__}: {e}"
            trial.state, trial.error = "failed", f"{APPLY_FAILED}{error}"
            trial.seconds = time.monotonic() - t0
            return trial
        best = best_trial(self.trials)
        prev_ok = None
        for i, level in enumerate(self.plan.levels(best)):
            self.events.step_start(number, i, level)
            step = self.measure(level)
            trial.steps.append(step)
            self.events.step_done(number, i, step)
            if self.strategy.after_step(proposal, i, step):
                break
            ok = sustained(step, self.opts.slo_ms)
            if (ok and prev_ok is not None and self.plan.mode == "concurrency"
                    and step.throughput < prev_ok.throughput * (1 + self.opts.saturation_gain)):
                break
            if ok:
                prev_ok = step
        finish(trial, self.opts.slo_ms)
        trial.seconds = time.monotonic() - t0
        return trial


class Events:
    """Progress callbacks (the CLI draws them with rich); silent by default."""

    def trial_start(self, number: int, config: dict) -> None: ...

    def step_start(self, number: int, index: int, level: float) -> None: ...

    def step_done(self, number: int, index: int, step: Step) -> None: ...

    def trial_done(self, trial: Trial) -> None: ...

    def stopped(self, why: str) -> None: ...


__all__ = ["Target", "Measurer", "LoadPlan", "Tuner", "TuneOptions", "TuneError", "trial_doc",
           "fragment", "config_key", "BATCHING_PARAMS"]
