"""``optiserve serve``: optimize the built-in model if needed, start Ray, deploy, serve."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Optional

import typer
import yaml

from .common import RepositoryOption, console, err_console, fail, progress_bars


def serve_command(
    models: Optional[list[str]] = typer.Argument(
        None, help="MODEL or MODEL:VERSION to serve [default: the newest version of every model]."),
    repository: Optional[str] = RepositoryOption,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="Inference (HTTP) port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", min=0,
                                  help="Inference (OIP gRPC) port; 0: no gRPC."),
    metrics_port: int = typer.Option(8080, "--metrics-port", help="Prometheus metrics port."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port",
                                       help="Ray dashboard / Serve REST API port."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Serve config (the RayService serveConfigV2 schema)."),
    replicas: Optional[int] = typer.Option(None, "--replicas", min=1,
                                           help="Replicas per model version [default: sized "
                                                "from the machine, see above]."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="Intra-op threads per model replica [default: "
                                               "sized from the machine]."),
    cpus: Optional[float] = typer.Option(None, "--cpus-per-replica", min=0.01,
                                         help="Ray CPUs each model replica reserves [default: "
                                              "its share of the machine]."),
    gateway_replicas: Optional[int] = typer.Option(None, "--gateway-replicas", min=1,
                                                   help="Gateway replicas [default: one per 8 "
                                                        "CPUs, at least one per GPU]."),
    gpus: Optional[float] = typer.Option(None, "--gpus-per-replica", min=0.0,
                                         help="GPUs per model replica (fractions share a GPU) "
                                              "[default: 1 for GPU variants when GPUs are "
                                              "present, else 0]."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the serve config and exit."),
) -> None:
    """Serve models over the Open Inference Protocol on an embedded local Ray cluster."""
    from serving.config import ConfigError, build_serve_config, validate_serve_config
    from ..local import LocalCluster, LocalOptions
    from serving.repository import ModelRepository, RepositoryError, parse_ref

    repo = ModelRepository(repository)
    if config is not None:
        if models:
            fail("give either MODEL[:VERSION] arguments or --config, not both")
        try:
            doc = yaml.safe_load(config.read_text())
            doc = validate_serve_config(doc)
        except OSError as e:
            fail(f"cannot read {config}: {e.strerror or e}")
        except yaml.YAMLError as e:
            fail(f"{config} is not valid YAML: {e}")
        except ConfigError as e:
            fail(f"{config}: {e}")
    else:
        if not models and not repo.models():
            console.print(f"model repository {repo.root} is empty: optimizing the built-in "
                          "'minilm' first")
            _optimize_builtin(repo)
        try:
            refs = []
            for ref in models or repo.models():
                name, version = parse_ref(ref)
                refs.append((name, repo.get(name, version).version))
        except (ValueError, RepositoryError) as e:
            fail(str(e))
        from serving.config import VersionConfig

        from ..sizing import machine_cpus, plan

        on_cuda = [f"{m}:{v} ({repo.get(m, v).manifest.variant})" for m, v in refs
                   if repo.get(m, v).manifest.device != "cpu"]
        n_gpus = _gpu_count() if on_cuda else 0
        if on_cuda and not n_gpus and not print_config:
            # else each replica would fail at load, one by one, far from this command line
            fail(f"{', '.join(on_cuda)} run(s) on CUDA, but this machine shows no GPU (NVML, "
                 "within CUDA_VISIBLE_DEVICES): serve it on a GPU node with the serve-gpu "
                 "extra, or serve a CPU version")
        layout = plan(machine_cpus(), n_gpus, versions=len(refs), replicas=replicas,
                      threads=threads, cpus_per_replica=cpus, gateway_replicas=gateway_replicas,
                      gpus_per_replica=gpus if n_gpus else None)
        # CPU versions without --threads: the replica picks lanes or threads for its runtime
        # from the CPUs it reserved (VersionConfig.layout); else that many threads per call
        runtime = {ref: {} if threads is None and repo.get(*ref).manifest.device == "cpu"
                   else {"intra_op_threads": layout.threads} for ref in refs}
        if not print_config:
            lanes = " (ONNX Runtime on CPU: as single-thread lanes)" if any(
                VersionConfig().layout(repo.get(*ref).manifest, layout.threads)[1] > 1
                for ref, c in runtime.items() if not c) else ""
            console.print(f"layout: {layout.describe(len(refs))}{lanes}", highlight=False)
        num_gpus = layout.gpus_per_replica if n_gpus else (gpus or 0.0)
        doc = build_serve_config(str(repo.root.resolve()), refs, host=host, port=port,
                                 version_cpus=layout.cpus_per_replica,
                                 version_replicas=layout.version_replicas,
                                 gateway_replicas=layout.gateway_replicas,
                                 gateway_cpus=layout.gateway_cpus, num_gpus=num_gpus,
                                 runtime=runtime)
    if print_config:
        console.print(yaml.safe_dump(doc, sort_keys=False), highlight=False, markup=False)
        return
    cluster = LocalCluster(doc, LocalOptions(metrics_port=metrics_port,
                                             grpc_port=grpc_port or None,
                                             dashboard_port=dashboard_port))
    stop = threading.Event()
    t0 = time.perf_counter()
    try:
        with err_console.status("starting Ray and deploying...") as status:
            cluster.start(on_status=lambda s: status.update(
                "deploying: " + ", ".join(f"{k} {v}" for k, v in s.items())))
    except KeyboardInterrupt:
        cluster.stop()
        fail("interrupted while starting", code=130)
    except Exception as e:
        cluster.stop()
        fail(f"could not start serving: {e}")

    def _signal(signum, _frame):
        stop.set()

    # after ray.init, which installs its own SIGTERM handler in the driver
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _signal)
    http = doc.get("http_options") or {}
    url = f"http://{http.get('host', host)}:{http.get('port', port)}"
    console.print(f"[bold green]serving[/] in {time.perf_counter() - t0:.1f} s "
                  f"({time.time() - _process_start():.1f} s since the command started)")
    console.print(f"  start-up: {'interpreter, imports, serve config':55} "
                  f"{t0 - _PERF_AT_IMPORT + _import_s():6.2f} s", highlight=False)
    for name, seconds in cluster.timings.items():
        console.print(f"  start-up: {name:55} {seconds:6.2f} s", highlight=False)
    from serving.config import gateway_user_config

    for name, route in gateway_user_config(doc)["models"].items():
        versions = ", ".join(str(v) for v in route["versions"])
        console.print(f"  {name} (versions {versions}): {url}/v2/models/{name}/infer")
    console.print(f"  health:    {url}/v2/health/ready")
    if grpc_port:
        console.print(f"  gRPC:      {http.get('host', host)}:{grpc_port} "
                      "(OIP, tritonclient.grpc)")
    console.print(f"  metrics:   http://127.0.0.1:{metrics_port}/metrics")
    # the Serve REST API (rollouts, tune) comes up after serving: nothing before the first
    # answer needs it (see optiserve/ray_head.py)
    try:
        with err_console.status("starting the Ray dashboard (Serve REST API)..."):
            seconds = cluster.start_dashboard()
    except Exception as e:
        cluster.stop()
        fail(f"could not start the Ray dashboard (Serve REST API): {e}")
    console.print(f"  start-up: {'Ray dashboard, Serve REST API (after serving)':55} "
                  f"{seconds:6.2f} s", highlight=False)
    console.print(f"  Serve API: http://127.0.0.1:{dashboard_port}/api/serve/applications/")
    console.print("Ctrl-C to stop")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        console.print("stopping...")
        cluster.stop()
        console.print("stopped")


_PERF_AT_IMPORT = time.perf_counter()


def _process_start() -> float:
    """When this process started (wall clock), for start-up timings that include imports."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time() - time.perf_counter() + _PERF_AT_IMPORT


def _import_s() -> float:
    """Seconds from the process's start to this module's import (interpreter and imports)."""
    return max(0.0, (time.time() - time.perf_counter() + _PERF_AT_IMPORT) - _process_start())


def _gpu_count() -> int:
    """GPUs this process sees (NVML, within CUDA_VISIBLE_DEVICES); 0 without a driver."""
    import os

    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return min(n, len([d for d in visible.split(",") if d.strip()]))
    return n


def _optimize_builtin(repo) -> None:
    from optimizers import OptimizeError, OptimizeOptions, optimize

    try:
        with progress_bars() as progress:
            result = optimize(OptimizeOptions(source="minilm", repository=str(repo.root)),
                              progress)
    except OptimizeError as e:
        fail(f"optimizing the built-in model failed: {e}")
    if not result.published:
        fail("optimizing the built-in model published nothing (no variant within budget)")
    ref = result.published[0]
    console.print(f"published {ref.name}:{ref.version} ({ref.manifest.variant})")
