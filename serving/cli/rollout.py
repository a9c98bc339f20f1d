"""``optiserve rollout``: canary rollouts judged on Prometheus data."""

from __future__ import annotations

import logging
import re
import signal
import threading
from typing import Optional

import typer
from rich.table import Table

from .common import RepositoryOption, console, err_console, fail

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
    from ..repository import resolve_root
    from ..rollout import (
        ConfigMapStateStore, Controller, FileStateStore, LocalServeTarget, Prometheus,
        RayServiceTarget,
    )
    from ..serve_api import ServeAPI

    if target == "local":
        tgt = LocalServeTarget(ServeAPI(serve_api))
        store = FileStateStore(state_dir or resolve_root(repository) / ".rollouts")
    elif target == "rayservice":
        if not namespace or not rayservice:
            fail("--target rayservice needs --namespace and --rayservice")
        client = _kube()
        tgt = RayServiceTarget(client.CustomObjectsApi(), namespace, rayservice)
        store = ConfigMapStateStore(client.CoreV1Api(), namespace, configmap)
    else:
        fail(f"--target must be local or rayservice (got {target!r})")
    return Controller(store, tgt, Prometheus(prometheus), on_event=on_event)


def _print_event(st, message: str) -> None:
    console.print(f"[dim]{st.updated_at:%H:%M:%S}[/] {st.model}: {message}", highlight=False)


def _run_until_done(ctl, model: str, poll_s: float = 1.0) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        ctl.tick()
        st = ctl.store.load(model)
        if st is not None and st.done:
            return 0 if st.phase == "promoted" else 3
        if st is not None and st.phase == "inconclusive":
            console.print(f"paused at {st.weight:g}% with too little data to judge; the "
                          f"weights are held. `optiserve rollout resume {model}` waits "
                          "again; promote or abort decide now")
            return 4
        stop.wait(poll_s)
    console.print("stopped watching; the rollout is saved and resumes with "
                  "`optiserve rollout controller`")
    return 130


@app.command("start")
def start_command(
    model: str = typer.Argument(..., help="Model name."),
    canary: int = typer.Option(..., "--canary", help="Version to roll out."),
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
    detach: bool = typer.Option(False, "--detach", help="Only record it; a running "
                                                        "`rollout controller` carries it out."),
    target: str = TargetOpt, serve_api: str = ServeApiOpt,
    namespace: Optional[str] = NamespaceOpt, rayservice: Optional[str] = RayServiceOpt,
    state_dir: Optional[str] = StateDirOpt, state_configmap: str = ConfigMapOpt,
    repository: Optional[str] = RepositoryOption,
) -> None:
    """Start a canary rollout (and, locally, carry it out until it ends)."""
    from ..rollout import RolloutError

    try:
        weights = [float(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        fail(f"--steps must be comma-separated percentages, e.g. 10,25,50,100 (got {steps!r})")
    ctl = build(target, serve_api, namespace, rayservice, state_dir, state_configmap, prometheus,
                repository, on_event=_print_event)
    try:
        st = ctl.start(model, canary, steps=weights, interval_s=parse_duration(interval),
                       max_error_rate=max_error_rate, max_p99_ms=max_p99_ms,
                       max_p99_ratio=max_p99_ratio or None, min_agreement=min_agreement or None,
                       min_requests=min_requests, failure_budget=failure_budget,
                       shadow=shadow, max_wait_intervals=max_wait,
                       on_inconclusive=on_inconclusive,
                       prometheus_selector=prometheus_selector,
                       scrape_interval_s=parse_duration(scrape_interval, "--scrape-interval"))
    except RolloutError as e:
        fail(str(e))
    if detach or target != "local":
        console.print(f"rollout of {model}:{canary} recorded (stable {st.spec.stable}); "
                      "the controller carries it out")
        return
    raise typer.Exit(_run_until_done(ctl, model))


@app.command("status")
def status_command(
    model: str = typer.Argument(...),
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
    st = ctl.store.load(model)
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


def _finish_command(action: str, model, target, serve_api, namespace, rayservice, state_dir,
                    state_configmap, repository, prometheus) -> None:
    from ..rollout import RolloutError, TargetError

    ctl = build(target, serve_api, namespace, rayservice, state_dir, state_configmap,
                prometheus, repository, on_event=_print_event)
    try:
        getattr(ctl, action)(model)
    except (RolloutError, TargetError) as e:
        fail(str(e))


@app.command("promote")
def promote_command(model: str = typer.Argument(...), prometheus: str = PromOpt,
                    target: str = TargetOpt,
                    serve_api: str = ServeApiOpt, namespace: Optional[str] = NamespaceOpt,
                    rayservice: Optional[str] = RayServiceOpt,
                    state_dir: Optional[str] = StateDirOpt,
                    state_configmap: str = ConfigMapOpt,
                    repository: Optional[str] = RepositoryOption) -> None:
    """Send all traffic to the canary now and end the rollout."""
    _finish_command("promote", model, target, serve_api, namespace, rayservice, state_dir,
                    state_configmap, repository, prometheus)


@app.command("abort")
def abort_command(model: str = typer.Argument(...), prometheus: str = PromOpt,
                  target: str = TargetOpt,
                  serve_api: str = ServeApiOpt, namespace: Optional[str] = NamespaceOpt,
                  rayservice: Optional[str] = RayServiceOpt,
                  state_dir: Optional[str] = StateDirOpt, state_configmap: str = ConfigMapOpt,
                  repository: Optional[str] = RepositoryOption) -> None:
    """Send all traffic back to stable now and end the rollout."""
    _finish_command("abort", model, target, serve_api, namespace, rayservice, state_dir,
                    state_configmap, repository, prometheus)


@app.command("resume")
def resume_command(model: str = typer.Argument(...), prometheus: str = PromOpt,
                   detach: bool = typer.Option(False, "--detach", help="Only record it; a "
                                               "running `rollout controller` carries it on."),
                   target: str = TargetOpt,
                   serve_api: str = ServeApiOpt, namespace: Optional[str] = NamespaceOpt,
                   rayservice: Optional[str] = RayServiceOpt,
                   state_dir: Optional[str] = StateDirOpt, state_configmap: str = ConfigMapOpt,
                   repository: Optional[str] = RepositoryOption) -> None:
    """Continue an inconclusive rollout at its step (and, locally, carry it on)."""
    _finish_command("resume", model, target, serve_api, namespace, rayservice, state_dir,
                    state_configmap, repository, prometheus)
    if detach or target != "local":
        return
    ctl = build(target, serve_api, namespace, rayservice, state_dir, state_configmap, prometheus,
                repository, on_event=_print_event)
    raise typer.Exit(_run_until_done(ctl, model))


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

