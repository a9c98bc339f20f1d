"""``optiserve rollout``: canary rollouts judged on Prometheus data."""

from __future__ import annotations

import logging
import re
import signal
import threading
from typing import Optional

import typer
from rich.table import Table

from .common import RepositoryOption, console, err_console, fail, model_name

app = typer.Typer(help="Canary rollouts judged on Prometheus data.", no_args_is_help=True)

# Each option can also come from the environment (the controller's pod sets them), so
# `rollout start/status` run inside that pod need no flags.
TargetOpt = typer.Option("local", "--target", envvar="OPTISERVE_ROLLOUT_TARGET",
                         help="local (Ray Serve REST API) or rayservice.")
ServeApiOpt = typer.Option("http://127.0.0.1:8265", "--serve-api", envvar="OPTISERVE_SERVE_API",
                           help="Serve REST API (local target).")
NamespaceOpt = typer.Option(None, "--namespace", envvar="OPTISERVE_NAMESPACE",
                            help="RayService namespace (rayservice target).")
RayServiceOpt = typer.Option(None, "--rayservice", envvar="OPTISERVE_RAYSERVICE",
                             help="RayService name (rayservice target).")
StateDirOpt = typer.Option(None, "--state-dir", envvar="OPTISERVE_ROLLOUT_STATE_DIR",
                           help="Local state directory [default: <repository>/.rollouts].")
ConfigMapOpt = typer.Option("optiserve-rollouts", "--state-configmap",
                            envvar="OPTISERVE_ROLLOUT_CONFIGMAP",
                            help="ConfigMap holding rollout state (rayservice target).")
PromOpt = typer.Option("http://127.0.0.1:9090", "--prometheus", envvar="OPTISERVE_PROMETHEUS",
                       help="Prometheus URL.")


def parse_duration(text: str, option: str = "--interval") -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        fail(f"{option} {text!r} must look like 30s, 2m or 500ms")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def _kube():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client


def build(target: str, serve_api: str, namespace: Optional[str], rayservice: Optional[str],
          state_dir: Optional[str], configmap: str, prometheus: str, repository: Optional[str],
          on_event=None):
    from serving.config import gateway_user_config
    from serving.repository import ModelRepository, resolve_root
    from ..rollout import (
        ConfigMapStateStore, Controller, FileStateStore, LocalServeTarget, Prometheus,
        RayServiceTarget,
    )
    from ..serve_api import ServeAPI

    root = resolve_root(repository)
    if target == "local":
        tgt = LocalServeTarget(ServeAPI(serve_api))
        store = FileStateStore(state_dir or root / ".rollouts")
    elif target == "rayservice":
        if not namespace or not rayservice:
            fail("--target rayservice needs --namespace and --rayservice")
        client = _kube()
        tgt = RayServiceTarget(client.CustomObjectsApi(), namespace, rayservice)
        store = ConfigMapStateStore(
            client.CoreV1Api(), namespace, configmap,
            models=lambda: list(gateway_user_config(tgt.config()).get("models") or {}))
    else:
        fail(f"--target must be local or rayservice (got {target!r})")
    # where this process can read the repository, a canary is checked before it is deployed
    repo = ModelRepository(root) if root.is_dir() else None
    return Controller(store, tgt, Prometheus(prometheus), on_event=on_event, repository=repo)


def _print_event(st, message: str) -> None:
    console.print(f"[dim]{st.updated_at:%H:%M:%S}[/] {st.model}: {message}", highlight=False)


def _exit_code(st) -> int:
    return 0 if st.phase == "promoted" else 3


def _run_until_done(ctl, model: str, poll_s: float = 1.0) -> int:
    """Be the runner of ``model``'s rollout until it is settled (ended, and what it retires
    removed) or held (inconclusive, paused); then say no runner looks after it any more."""
    try:
        return _run(ctl, model, poll_s)
    finally:
        ctl.release(model)


def _load(ctl, model: str):
    """The model's rollout state; one that cannot be read stops the command, named."""
    from optiserve.rollout.state import UnreadableState

    try:
        return ctl.store.load(model)
    except UnreadableState as e:
        fail(str(e))


def _run(ctl, model: str, poll_s: float) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        ctl.tick(only=model)
        st = _load(ctl, model)
        if st is not None and st.settled:
            return _exit_code(st)
        if st is not None and st.phase in ("inconclusive", "paused") and st.request is None:
            why = ("with too little data to judge" if st.phase == "inconclusive"
                   else "by hand")
            console.print(f"paused at {st.weight:g}% {why}; the weights are held. "
                          f"`optiserve rollout resume {model}` goes on; promote or abort "
                          "decide now")
            return 4
        stop.wait(poll_s)
    console.print("stopped; the rollout is saved and goes on with `optiserve rollout "
                  "controller` (or `rollout resume`)")
    return 130


@app.command("start")
def start_command(
    model: str = typer.Argument(..., help="Model name.", callback=model_name),
    canary: str = typer.Option(..., "--canary", help="Version to roll out, or 'latest' (the "
                                                      "newest in the repository); deployed "
                                                      "first when it is not served."),
    steps: str = typer.Option("10,25,50,100", "--steps", help="Canary weights in percent."),
    interval: str = typer.Option("30s", "--interval", help="How long each step is held."),
    prometheus: str = PromOpt,
    max_error_rate: float = typer.Option(0.01, "--max-error-rate"),
    max_p99_ms: Optional[float] = typer.Option(None, "--max-p99-ms"),
    max_p99_ratio: Optional[float] = typer.Option(1.2, "--max-p99-ratio"),
    min_agreement: Optional[float] = typer.Option(0.99, "--min-agreement",
                                                  help="Mean agreement with stable (0 = off)."),
    min_requests: int = typer.Option(20, "--min-requests"),
    failure_budget: int = typer.Option(2, "--failure-budget"),
    shadow: float = typer.Option(0.1, "--shadow", help="Share of requests mirrored."),
    max_wait: int = typer.Option(10, "--max-wait-intervals",
                                 help="Intervals a step may wait for enough data."),
    on_inconclusive: str = typer.Option("pause", "--on-inconclusive",
                                        help="pause (hold the weights) or rollback when a "
                                             "step never gets enough data."),
    prometheus_selector: str = typer.Option(
        "", "--prometheus-selector", envvar="OPTISERVE_PROMETHEUS_SELECTOR",
        help='Label matchers every analysis query carries, e.g. namespace="ml",release="x".'),
    scrape_interval: str = typer.Option("15s", "--scrape-interval",
                                        envvar="OPTISERVE_SCRAPE_INTERVAL",
                                        help="Prometheus' scrape interval of the serving "
                                             "metrics; windows are at least 4 of them."),
    retire_after: Optional[str] = typer.Option(
        None, "--retire-after", help="After promotion, how long the old stable stays served "
                                     "at 0 % before it is removed [default: one interval]."),
    keep: bool = typer.Option(False, "--keep", help="Remove nothing at the end (the old "
                                                    "stable, or a rolled-back canary, stays "
                                                    "served at 0 %)."),
    deploy_timeout: str = typer.Option("15m", "--deploy-timeout",
                                       help="Longest a canary deployed by the rollout may "
                                            "take to become ready."),
    max_prediction_ratio: float = typer.Option(
        2.0, "--max-prediction-ratio", help="Warn when the canary's observed compute per row "
                                            "is this factor off the optimizer's measurement "
                                            "(0 = off)."),
    detach: bool = typer.Option(False, "--detach", help="Only record it; a running "
                                                        "`rollout controller` carries it out."),
    target: str = TargetOpt, serve_api: str = ServeApiOpt,
    namespace: Optional[str] = NamespaceOpt, rayservice: Optional[str] = RayServiceOpt,
    state_dir: Optional[str] = StateDirOpt, state_configmap: str = ConfigMapOpt,
    repository: Optional[str] = RepositoryOption,
) -> None:
    """Roll out a version: deploy it if it is not served, walk the steps judged on
    Prometheus, then retire the loser (locally it runs here until it ends)."""
    from ..rollout import RolloutError
    from ..rollout.state import UnreadableState

    try:
        weights = [float(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        fail(f"--steps must be comma-separated percentages, e.g. 10,25,50,100 (got {steps!r})")
    ctl = build(target, serve_api, namespace, rayservice, state_dir, state_configmap, prometheus,
                repository, on_event=_print_event)
    if canary.strip().lower() == "latest":
        if ctl.repository is None:
            fail("--canary latest needs the model repository (--repository)")
        try:
            version = ctl.repository.latest(model)
        except Exception as e:
            fail(f"--canary latest: {e}")
    else:
        try:
            version = int(canary)
        except ValueError:
            fail(f"--canary must be a version number or 'latest' (got {canary!r})")
    try:
        st = ctl.start(model, version, steps=weights, interval_s=parse_duration(interval),
                       max_error_rate=max_error_rate, max_p99_ms=max_p99_ms,
                       max_p99_ratio=max_p99_ratio or None, min_agreement=min_agreement or None,
                       min_requests=min_requests, failure_budget=failure_budget,
                       shadow=shadow, max_wait_intervals=max_wait,
                       on_inconclusive=on_inconclusive,
                       prometheus_selector=prometheus_selector,
                       scrape_interval_s=parse_duration(scrape_interval, "--scrape-interval"),
                       retire_after_s=(parse_duration(retire_after, "--retire-after")
                                       if retire_after else None),
                       keep=keep,
                       deploy_timeout_s=parse_duration(deploy_timeout, "--deploy-timeout"),
                       max_prediction_ratio=max_prediction_ratio or None)
    except (RolloutError, UnreadableState) as e:
        fail(str(e))
    if detach or target != "local":
        console.print(f"rollout of {model}:{version} recorded (stable {st.spec.stable}); "
                      "the controller carries it out")
        return
    raise typer.Exit(_run_until_done(ctl, model))


@app.command("status")
def status_command(
    model: str = typer.Argument(..., callback=model_name),
    as_json: bool = typer.Option(False, "--json"),
    prometheus: str = PromOpt,
    target: str = TargetOpt, serve_api: str = ServeApiOpt,
    namespace: Optional[str] = NamespaceOpt, rayservice: Optional[str] = RayServiceOpt,
    state_dir: Optional[str] = StateDirOpt, state_configmap: str = ConfigMapOpt,
    repository: Optional[str] = RepositoryOption,
) -> None:
    """Phase, step, weight, the last analysis against its thresholds, and the history."""
    ctl = build(target, serve_api, namespace, rayservice, state_dir, state_configmap,
                prometheus, repository)
    st = _load(ctl, model)
    if st is None:
        fail(f"no rollout of {model} has been recorded")
    if as_json:
        print(st.model_dump_json(indent=2))
        return
    s = st.spec
    console.print(f"[bold]{model}[/]: {st.phase}  canary {s.canary} over stable {s.stable}  "
                  f"step {st.step + 1}/{len(s.steps)} ({st.weight:g}% to canary)  "
                  f"failed analyses {st.failures}/{s.failure_budget}")
    if st.reason:
        console.print(f"reason: {st.reason}", highlight=False)
    if st.desired is not None and not st.confirmed:
        console.print("the latest split is " + ("applied; waiting for the gateway to report it"
                                                if st.applied else "recorded, not applied yet"))
    if st.request is not None:
        console.print(f"requested: {st.request.action} by {st.request.by} at "
                      f"{st.request.at:%H:%M:%S} (the runner carries it out)", highlight=False)
    if st.retire:
        console.print(f"to remove at {st.retire_at:%H:%M:%S}: "
                      + ", ".join(f"{model}:{v}" for v in st.retire), highlight=False)
    if st.last_analysis:
        a = st.last_analysis
        table = Table(title=f"last analysis ({a.at:%H:%M:%S}, {a.outcome}: {a.reason})")
        for col in ("check", "value", "threshold", "verdict", "detail"):
            table.add_column(col)
        for c in a.checks:
            table.add_row(c.name, "n/a" if c.value is None else f"{c.value:.4g}",
                          "" if c.threshold is None else f"{c.threshold:g}", c.verdict, c.detail)
        console.print(table)
    for t in st.history:
        console.print(f"  {t.at:%H:%M:%S} {t.from_phase} -> {t.to_phase} at {t.weight:g}%: "
                      f"{t.reason}", highlight=False)


def _request_command(action: str, model, target, serve_api, namespace, rayservice, state_dir,
                     state_configmap, repository, prometheus, wait_s: float = 60.0,
                     detach: bool = False) -> None:
    """Record ``action`` for the runner. A live runner (the controller, a foreground
    ``rollout start``) carries it out and this waits to see it; with none, this process
    becomes the runner until the rollout is settled or held."""
    import time

    from ..rollout import RolloutError
    from ..rollout.state import UnreadableState

    ctl = build(target, serve_api, namespace, rayservice, state_dir, state_configmap,
                prometheus, repository, on_event=_print_event)
    try:
        st = ctl.request(model, action)
    except (RolloutError, UnreadableState) as e:
        fail(str(e))
    if ctl.runner_alive(st) or detach:
        console.print(f"{action} of {model} recorded; the running controller carries it out")
        if detach:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            st = _load(ctl, model)
            if st.request is None:
                console.print(f"{model}: {st.phase} ({st.reason})", highlight=False)
                return
            time.sleep(0.5)
        fail(f"the {action} is recorded but no runner carried it out within {wait_s:.0f} s; "
             "it will be when the controller runs")
    code = _run_until_done(ctl, model)
    st = _load(ctl, model)
    console.print(f"{model}: {st.phase} ({st.reason})", highlight=False)
    if code not in (0, 3, 4):
        raise typer.Exit(code)


_WAIT = typer.Option(60.0, "--wait", help="Seconds to wait for a running controller to carry "
                                          "it out.")
_DETACH = typer.Option(False, "--detach", help="Only record it; a running `rollout "
                                               "controller` carries it out.")


def _request_cli(action: str, doc: str):
    """The ``rollout <action>`` command: the same flags for each of them."""
    def command(model: str = typer.Argument(..., callback=model_name),
                prometheus: str = PromOpt,
                wait: float = _WAIT, detach: bool = _DETACH,
                target: str = TargetOpt,
                serve_api: str = ServeApiOpt, namespace: Optional[str] = NamespaceOpt,
                rayservice: Optional[str] = RayServiceOpt,
                state_dir: Optional[str] = StateDirOpt, state_configmap: str = ConfigMapOpt,
                repository: Optional[str] = RepositoryOption) -> None:
        _request_command(action, model, target, serve_api, namespace, rayservice, state_dir,
                         state_configmap, repository, prometheus, wait, detach)

    command.__doc__ = doc
    return app.command(action)(command)


promote_command = _request_cli("promote", "Send all traffic to the canary now and end the "
                                          "rollout.")
abort_command = _request_cli("abort", "Send all traffic back to stable now and end the rollout.")
pause_command = _request_cli("pause", "Hold the rollout at its step (weights kept) until "
                                      "resumed, promoted or aborted.")
resume_command = _request_cli("resume", "Continue a paused or inconclusive rollout at its step "
                                        "(with no controller running, this process carries "
                                        "it on).")


@app.command("controller")
def controller_command(
    prometheus: str = PromOpt,
    metrics_port: int = typer.Option(9464, "--metrics-port", help="/metrics and /healthz."),
    metrics_host: str = typer.Option("0.0.0.0", "--metrics-host"),
    poll: float = typer.Option(2.0, "--poll", help="Seconds between passes."),
    target: str = TargetOpt, serve_api: str = ServeApiOpt,
    namespace: Optional[str] = NamespaceOpt, rayservice: Optional[str] = RayServiceOpt,
    state_dir: Optional[str] = StateDirOpt, state_configmap: str = ConfigMapOpt,
    repository: Optional[str] = RepositoryOption,
) -> None:
    """Run the rollout loop until stopped (the Kubernetes controller Deployment runs this)."""
    from ..rollout import serve_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ctl = build(target, serve_api, namespace, rayservice, state_dir, state_configmap, prometheus,
                repository, on_event=_print_event)
    try:
        server = serve_metrics(ctl.metrics, metrics_port, metrics_host)
    except OSError as e:
        fail(f"cannot listen on {metrics_host}:{metrics_port}: {e.strerror or e}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err_console.print(f"rollout controller: target {target}, metrics on :{metrics_port}/metrics")
    try:
        ctl.run(stop, poll)
    finally:
        server.shutdown()

