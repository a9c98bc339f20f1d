"""``optiserve tune``: search batching and layout of one version against a p99 SLO."""

from __future__ import annotations

import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
import yaml

from .common import RepositoryOption, console, err_console, fail
from .common import model_ref as model_ref_check

#: exit code when no configuration met the SLO (the closest trial is reported)
SLO_NOT_MET = 3


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h30m`` -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ValueError(f"--budget {text!r}: expected e.g. 90s, 10m or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _short(config: dict) -> str:
    return (f"batch {config['max_batch_size']}, delay {config['max_delay_ms']:g} ms, "
            f"{config['replicas']}x{config['threads']} thr, gw {config['gateway_replicas']}")


def tune_command(
    model_ref: str = typer.Argument(..., metavar="MODEL[:VERSION]", callback=model_ref_check,
                                    help="The version to tune [default: the newest]."),
    repository: Optional[str] = RepositoryOption,
    slo_p99_ms: float = typer.Option(100.0, "--slo-p99-ms", help="p99 latency objective (ms)."),
    strategy: str = typer.Option("bayes", "--strategy", help="grid, random or bayes (optuna "
                                                             "TPE with SLO pruning; needs "
                                                             "optuna: pip install "
                                                             "'optiserve[tune]')."),
    trials: int = typer.Option(20, "--trials", min=1, help="Trials in the study in all (a "
                                                           "resumed study counts its own)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Wall time for this run, e.g. "
                                                                "10m; no new trial after it."),
    space_file: Optional[Path] = typer.Option(
        None, "--space", help="Search space (YAML/JSON) [default: from the machine's CPUs and "
                              "the manifest's batching]."),
    load: str = typer.Option("concurrency", "--load",
                             help="concurrency: closed loop at doubling client counts; rate: "
                                  "open loop (Poisson) at a rising offered rate."),
    input_file: Optional[str] = typer.Option(None, "--input-file", help="Request inputs, as "
                                                                        "for optiserve bench."),
    rows: int = typer.Option(1, "--rows", min=1, help="Rows per request."),
    step_s: float = typer.Option(3.0, "--step-duration", help="Seconds measured per load step."),
    warmup_s: float = typer.Option(0.5, "--warmup", help="Seconds sent before each step."),
    max_steps: int = typer.Option(8, "--max-steps", min=1, help="Load steps per trial at most."),
    start_load: Optional[float] = typer.Option(
        None, "--start-load", help="First concurrency / rate of each sweep [default: adaptive: "
                                   "a quarter of the best trial's concurrency, half its rate]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random and bayes strategies."),
    study_path: Optional[Path] = typer.Option(
        None, "--study", help="Study file (JSON lines); an existing one is continued "
                              "[default: tune-MODEL-vVERSION-STRATEGY.jsonl in --report or .]."),
    url: Optional[str] = typer.Option(
        None, "--url", help="Attach to this running optiserve serve instead of starting one; "
                            "its configuration, as it was when the study began, is put back at "
                            "the end. When the space's largest layout does not fit in the CPUs "
                            "the version's replicas reserve, the version is redeployed once at "
                            "the start and once at the restore (brief downtime of it)."),
    serve_api: str = typer.Option("http://127.0.0.1:8265", "--serve-api",
                                  help="The attached server's Serve REST API (Ray dashboard)."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the best configuration as a serve-config "
                                           "fragment (YAML) on stdout."),
    apply: bool = typer.Option(False, "--apply", help="Publish a new version whose manifest "
                                                      "carries the tuned batching."),
    write_config: Optional[Path] = typer.Option(
        None, "--write-config", help="Write a full serve config with the tuned batching and "
                                     "layout (for optiserve serve --config)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write tune.md and tune.png "
                                                                 "here."),
) -> None:
    """Search the serving configuration against a latency SLO, measuring a live server.

    Each trial applies a configuration (batching in place through the gateway's user_config;
    replicas, threads and gateway replicas by redeploying only the tuned version's
    application), measures it with the load generator of optiserve bench and scores it: the
    highest sustained throughput with p99 <= SLO and no errors. Exits 3 when no configuration
    met the SLO, reporting the closest trial."""
    from serving.repository import ModelRepository, RepositoryError, parse_ref
    from ..sizing import machine_cpus, plan
    from ..tune.scoring import best_trial, closest_trial
    from ..tune.space import SpaceError, default_space, defaults_from, limits, load_space
    from ..tune.strategies import STRATEGIES, make_strategy
    from ..tune.study import StudyError, StudyFile

    if strategy not in STRATEGIES:
        fail(f"--strategy must be one of {', '.join(STRATEGIES)} (got {strategy!r})")
    if strategy == "bayes" and not _importable("optuna"):
        fail("--strategy bayes needs optuna: pip install 'optiserve[tune]' (or --strategy "
             "grid|random)")
    if load not in ("concurrency", "rate"):
        fail(f"--load must be concurrency or rate (got {load!r})")
    if slo_p99_ms <= 0 or step_s <= 0 or warmup_s < 0:
        fail("--slo-p99-ms and --step-duration must be > 0, --warmup >= 0")
    try:
        budget_s = parse_duration(budget) if budget else None
        name, version = parse_ref(model_ref)
        repo = ModelRepository(repository)
        ref = repo.get(name, version)
    except (ValueError, RepositoryError) as e:
        fail(str(e))
    version = ref.version
    cpus = machine_cpus()
    layout = plan(cpus, 0, versions=1)
    defaults = defaults_from(ref.manifest, layout)
    try:
        space = load_space(space_file) if space_file else default_space(ref.manifest, cpus)
    except SpaceError as e:
        fail(str(e))
    space_doc = space.model_dump(exclude_none=True)
    lim = limits(space, defaults)
    study_path = study_path or (report or Path(".")) / f"tune-{name}-v{version}-{strategy}.jsonl"
    header = {"model": name, "version": version, "slo_p99_ms": slo_p99_ms,
              "strategy": strategy, "load": load, "space": space_doc, "seed": seed,
              "defaults": defaults}
    deployed = None
    if url is not None:
        # the attached server's configuration before the tune, kept in a new study's header: a
        # tune killed mid-trial and run again restores this one, not the trial's
        from ..serve_api import ServeAPI

        try:
            deployed = ServeAPI(serve_api, timeout_s=30).deployed_config()
        except Exception as e:
            fail(f"cannot tune {name}:{version} at {url}: {e}")
        header["attached"] = {"url": url, "deployed_config": deployed}
    study = StudyFile(study_path)
    try:
        history = study.open(header)
    except (StudyError, OSError) as e:
        fail(str(e))
    if url is not None:
        deployed = study.original_config(url, deployed)
    strat = make_strategy(strategy, space, defaults, cpus, slo_p99_ms, seed=seed,
                          history=history)
    size = strat.size()
    err_console.print(
        f"tuning {name}:{version} ({ref.manifest.variant}) for p99 <= {slo_p99_ms:g} ms: "
        f"{strategy}, {trials} trials" + (f" of {size} configurations" if size else "")
        + (f", {len(history)} recorded in {study_path}" if history else f"; study {study_path}"),
        highlight=False)

    def _term(signum, _frame):
        raise KeyboardInterrupt

    # SIGINT too: with Python's default handler asyncio.run (the load generator) takes SIGINT
    # over and only cancels its task, so a Ctrl-C during a measurement would be lost
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    server = None
    target = None
    tmp = None
    try:
        if url is None:
            server, tmp = _start_server(repo, name, version, layout, lim)
            url_ = server.url
            api = server.serve_api
        else:
            url_, api = url, serve_api
        try:
            target = _target(url_, api, name, version, server, lim, base=deployed)
        except Exception as e:
            fail(f"cannot tune {name}:{version} at {url_}: {e}")
        trials_done = _run(strat, target, study, name, version, trials, budget_s, slo_p99_ms,
                           load, input_file, rows, step_s, warmup_s, max_steps, start_load)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: {len(study.trials)} trials recorded in "
                          f"{study_path}; run the same command to continue", highlight=False)
        raise typer.Exit(130)
    except typer.Exit:
        raise
    except RuntimeError as e:  # the server went away, a Serve API error outside a trial
        fail(f"tune stopped: {str(e)[-2000:]}; {len(study.trials)} trials recorded in "
             f"{study_path}; run the same command to continue")
    finally:
        if target is not None and server is None:
            try:
                target.restore()
            except Exception as e:
                err_console.print(f"could not restore the server's configuration: {e}")
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()

    best = best_trial(trials_done)
    frag = None
    if best is not None:
        from ..tune.runner import fragment

        frag = yaml.safe_dump(fragment(target.doc_for(best.config), name, version),
                              sort_keys=False)
    if report:
        from ..tune.report import write_report

        importances = strat.importances() if hasattr(strat, "importances") else None
        md = write_report(report, model=name, version=version, strategy=strategy,
                          slo_ms=slo_p99_ms, load=load, trials=trials_done,
                          importances=importances, config_fragment=frag)
        err_console.print(f"report: {md}", highlight=False)
    if best is None:
        close = closest_trial(trials_done, slo_p99_ms)
        msg = f"no configuration met p99 <= {slo_p99_ms:g} ms in {len(trials_done)} trials"
        if close:
            t, s = close
            msg += (f"; closest: trial {t.number} ({_short(t.config)}) at p99 {s.p99_ms:.1f} ms, "
                    f"{s.throughput:.1f} req/s, {s.errors} errors")
        fail(msg, code=SLO_NOT_MET)
    b = best.best
    err_console.print(
        f"[bold green]best[/]: trial {best.number}: {_short(best.config)}: {best.value:.1f} "
        f"req/s at p99 {b.p99_ms:.1f} ms (p50 {b.p50_ms:.1f}, p95 {b.p95_ms:.1f})",
        highlight=False)
    if print_config:
        print(frag, end="")
    if write_config:
        from serving.config import ConfigError
        from ..tune.apply import write_serve_config

        doc = target.doc_for(best.config)
        # the attached server's address; a server started for the tune had a passing port
        doc["http_options"] = (target.original.get("http_options") if server is None else None
                               ) or {"host": "127.0.0.1", "port": 8000}
        try:
            write_serve_config(write_config, doc)
        except (ConfigError, OSError) as e:
            fail(f"cannot write {write_config}: {e}")
        err_console.print(f"serve config: {write_config} (optiserve serve --config "
                          f"{write_config})", highlight=False)
    if apply:
        from ..tune.apply import publish_tuned

        try:
            new = publish_tuned(repo, name, version, best, slo_p99_ms)
        except RepositoryError as e:
            fail(f"publishing the tuned version failed: {e}")
        err_console.print(f"published {name}:{new.version}: {name}:{version} with the tuned "
                          f"batching (max_batch_size {new.manifest.batching.max_batch_size}, "
                          f"max_delay_ms {new.manifest.batching.max_delay_ms:g})",
                          highlight=False)


def _start_server(repo, name: str, version: int, layout, lim: dict):
    import os

    from serving.config import build_serve_config
    from ..server import ServeProcess
    from ..tune.runner import reservation

    root = str(repo.root.resolve())
    doc = build_serve_config(root, [(name, version)], gateway_cpus=layout.gateway_cpus,
                             threads=layout.threads)
    # the reservation every trial keeps (see optiserve.tune.runner.reservation), from the start
    per = reservation(doc, name, version, lim, float(os.cpu_count() or 1), keep_own=False)
    doc = build_serve_config(root, [(name, version)], version_cpus=per,
                             gateway_cpus=layout.gateway_cpus, threads=layout.threads)
    tmp = tempfile.TemporaryDirectory(prefix="optiserve-tune-")
    server = ServeProcess(doc, Path(tmp.name))
    t0 = time.perf_counter()
    with err_console.status("starting optiserve serve..."):
        try:
            server.start()
        except RuntimeError as e:
            tmp.cleanup()
            fail(f"could not start optiserve serve: {str(e)[-2000:]}")
        except BaseException:
            # Ctrl-C / SIGTERM while it starts: the server runs in its own session and would
            # outlive the tune; stop it by its PID (SIGTERM, then its process group)
            try:
                server.stop()
            finally:
                tmp.cleanup()
            raise
    err_console.print(f"serving at {server.url} in {time.perf_counter() - t0:.1f} s "
                      f"(Serve API {server.serve_api})", highlight=False)
    return server, tmp


def _target(url: str, api: str, name: str, version: int, server, lim: dict, base=None):
    from ..tune.runner import Target

    alive = (lambda: server.proc.poll() is None) if server is not None else (lambda: True)
    return Target(url, api, name, version, lim, base=base, alive=alive)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _run(strat, target, study, name, version, trials, budget_s, slo, load, input_file, rows,
         step_s, warmup_s, max_steps, start_load):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.progress import TimeElapsedColumn

    from ..bench import fetch_metadata, load_inputs
    from ..tune.runner import Events, LoadPlan, Measurer, TuneOptions, Tuner

    try:
        meta = fetch_metadata(target.url, name, str(version))
        inputs = load_inputs(input_file, meta)
    except (RuntimeError, ValueError, OSError) as e:
        fail(str(e))
    lplan = LoadPlan(mode=load, step_s=step_s, warmup_s=warmup_s, max_steps=max_steps,
                     start=start_load, rows_per_request=rows)
    measurer = Measurer(target.url, name, version, inputs, lplan)
    unit = "clients" if load == "concurrency" else "req/s"

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=False) as progress:
        task = progress.add_task("trials", total=trials, completed=len(study.trials))

        class Draw(Events):
            def trial_start(self, number, config):
                progress.update(task, description=f"trial {number}: {_short(config)}: applying")

            def step_start(self, number, index, level):
                progress.update(task, description=f"trial {number}: step {index + 1} at "
                                                  f"{level:g} {unit}")

            def trial_done(self, t):
                s = t.best or (t.steps[-1] if t.steps else None)
                p99 = f"p99 {s.p99_ms:.1f} ms" if s and s.p99_ms is not None else "no answers"
                value = f"{t.value:.1f} req/s" if t.value is not None else "-"
                colour = {"complete": "green", "slo_broken": "yellow"}.get(t.state, "red")
                progress.console.print(
                    f"trial {t.number:>3} [{colour}]{t.state:<10}[/] {value:>12} {p99:<16} "
                    f"{_short(t.config)} ({t.applied or 'not applied'}, {len(t.steps)} steps"
                    + (f"; {t.error[:200]}" if t.error else "") + ")", highlight=False)
                progress.update(task, advance=1, description="trials")

            def stopped(self, why):
                progress.console.print(f"stopped: {why}")

        tuner = Tuner(strat, target.apply, measurer.step, study,
                      TuneOptions(slo_ms=slo, trials=trials, budget_s=budget_s), lplan,
                      replicas=target.replicas, events=Draw())
        return tuner.run()


__all__ = ["tune_command", "parse_duration", "SLO_NOT_MET", "console"]
