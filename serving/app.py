"""Ray Serve deployments and application builders (``import_path`` targets of the serve config)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from . import metrics as M
from .config import GatewayArgs, VersionArgs, VersionConfig, version_app_name
from .endpoints import dispatch
from .gateway import Gateway
from .protocol import InferenceError, InputRejected, ModelExecutionError, ModelUnavailable
from .settings import settings
from .statistics import StatisticsRecorder

log = logging.getLogger("ray.serve.optiserve")
def _unwrap(e: BaseException) -> BaseException:
    """The user-level exception inside Ray's wrappers (RayTaskError carries it as ``cause``)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


@serve.deployment(name="gateway")
class GatewayDeployment:
    """The gateway: Open Inference Protocol v2 over REST, answered by its own HTTP server
    (:mod:`serving.ingress`) on ``OPTISERVE_LISTEN``; batches go to the version replicas."""

    def __init__(self, repository: str):
        # the totals behind gRPC's ModelStatistics, kept as the metrics are recorded
        self.recorder = StatisticsRecorder(M.BufferedRecorder())
        self.gateway = Gateway(repository, self._backend, self.recorder, self._ready_probe)
        self._handles = {}
        self.ingress = None
        self._listening = None  # the server's start (a task or a thread-safe future)
        self._listen = settings().listen
        self.grpc = None  # the gRPC server (serving.grpc_ingress), when OPTISERVE_GRPC_LISTEN

    def _dispatch(self, method, path, headers, read_body):
        return dispatch(self.gateway, method, path, headers, read_body)

    async def __del__(self):
        """Serve's graceful shutdown (redeploy, scale-down, a draining node): the HTTP server
        drains (health fails and connections close for a while, then in-flight requests finish);
        Serve's graceful_shutdown_timeout_s for this deployment covers both phases."""
        drains = [s.drain() for s in (self.ingress, self.grpc) if s is not None]
        if drains:
            await asyncio.gather(*drains)
        await self.gateway.close()

    async def reconfigure(self, user_config: dict) -> None:
        """Apply a new gateway config, all or nothing. The first config must apply (raising
        here fails the deployment, with the message in Serve's status). Once serving, a config
        that cannot be applied is refused without raising: Ray Serve stops a replica whose
        reconfigure raises, which would turn a bad config into an outage. The running config
        stays; the refusal is logged and shown in the server metadata (``GET /v2``).

        Async, so it runs on the replica's event loop with the requests it changes (Serve moves
        a sync reconfigure to a thread pool, where the batchers' events and tasks are not
        safe to touch, and removed versions' batchers could not be closed)."""
        try:
            self.gateway.reconfigure(user_config)
        except Exception as e:
            if self.gateway.config is None:
                raise
            self.gateway.rejected_config = str(e)
            log.error("gateway config refused, the running config stays: %s", e)
        if self._listen and self.ingress is None:
            self._start_ingress(self._listen)
        if settings().grpc_listen and self.grpc is None:
            self._start_grpc(settings().grpc_listen)
        elif self.grpc is not None:  # gRPC's receive limit follows a raised max_body_bytes
            await self.grpc.follow_body_limit(self.gateway.config.max_body_bytes)

    def _start_ingress(self, address: str) -> None:
        """Listen once the first config applies, so no request arrives before there is
        something to serve; Serve reports the replica RUNNING just after."""
        from .ingress import Ingress

        host, _, port = address.rpartition(":")
        ingress = Ingress(self._dispatch, host.strip("[]"), int(port),
                          ready=self.gateway.server_ready)
        # bound here, synchronously: a port that cannot be had fails the deployment with the
        # reason in Serve's status (the first config) instead of a replica serving nothing
        ingress.bind()
        self.ingress = ingress
        self._listening = asyncio.get_running_loop().create_task(ingress.start())

    def _start_grpc(self, address: str) -> None:
        from .grpc_ingress import GrpcIngress

        host, _, port = address.rpartition(":")
        self.grpc = GrpcIngress(self.gateway, host.strip("[]"), int(port),
                                self.gateway.config.max_body_bytes, self.recorder)
        if self.ingress is not None:  # POST /-/drain drains both servers
            self.ingress.on_drain = self.grpc.drain
        self._grpc_started = asyncio.get_running_loop().create_task(self.grpc.start())

    async def check_health(self) -> None:
        """Serve's health check: also fails when the HTTP server could not start or stopped."""
        task = self._listening
        if task is not None and task.done() and task.exception() is not None:
            raise RuntimeError(f"the HTTP server failed to start: {task.exception()}")
        if self.ingress is not None and self.ingress.failed is not None:
            raise RuntimeError(f"the HTTP server stopped: {self.ingress.failed}")
        task = getattr(self, "_grpc_started", None)
        if task is not None and task.done() and task.exception() is not None:
            raise RuntimeError(f"the gRPC server failed to start: {task.exception()}")

    def _handle(self, model: str, version: int):
        key = (model, version)
        h = self._handles.get(key)
        if h is None:
            name = version_app_name(model, version)
            h = serve.get_deployment_handle(name, app_name=name)
            self._handles[key] = h
        return h

    def _backend(self, model: str, version: int):
        async def run(groups):
            try:
                return await self._handle(model, version).infer.remote(groups)
            except InferenceError:
                raise
            except Exception as e:
                inner = _unwrap(e)
                if isinstance(inner, InferenceError):
                    raise inner from None
                kind = type(inner).__name__
                if kind in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                            "DeploymentUnavailableError", "BackPressureError"):
                    raise ModelUnavailable(f"{model}:{version} is unavailable ({kind}); "
                                           "retry later") from None
                raise
        return run

    async def _ready_probe(self, model: str, version: int) -> bool:
        return bool(await self._handle(model, version).ready.remote())


@serve.deployment
class ModelVersionDeployment:
    """Runs one version of a model; batches arrive from the gateway, one call per batch."""

    def __init__(self, repository: str, model: str, version: int):
        from .repository import ModelRepository

        self.recorder = M.BufferedRecorder()
        # verifies every artifact's sha256; a mismatch fails the replica with the file named
        self.ref = ModelRepository(repository).open(model, version)
        self.tags = {"model": model, "version": str(version)}
        self.config = VersionConfig()
        self.runtime = self._load(self.config)
        self._executor = ThreadPoolExecutor(max_workers=self._lanes, thread_name_prefix="model")
        #: when each running batch began, by lane thread (the oldest decides "stuck")
        self._busy: dict[int, float] = {}
        self._gpu = None
        if self.ref.manifest.device == "cuda":
            from .gpu import GpuSampler

            self._gpu = GpuSampler(self.recorder)
            self._gpu.start()

    def _load(self, cfg: VersionConfig):
        from .runtimes import RuntimeOptions, load_runtime

        threads, lanes = cfg.layout(self.ref.manifest, _reserved_cpus())
        runtime = load_runtime(self.ref.manifest, self.ref.path, RuntimeOptions(
            intra_op_threads=threads,
            inter_op_threads=cfg.inter_op_threads, spin=cfg.spin))
        self.recorder.set(M.LOAD_TIME, self.tags, runtime.load_time_s)
        log.info("loaded %s:%s (%s) on %s in %.2f s: %d lane(s) x %d thread(s)",
                 self.ref.name, self.ref.version, self.ref.manifest.variant, runtime.providers,
                 runtime.load_time_s, lanes, threads)
        self._lanes = lanes  # once loaded: a refused config leaves the running one whole
        return runtime

    def reconfigure(self, user_config: dict) -> None:
        cfg = VersionConfig.model_validate(user_config or {})
        if cfg != self.config:
            lanes = self._lanes
            self.runtime = self._load(cfg)
            if self._lanes != lanes:
                # batches already running finish on the old lanes
                old, self._executor = self._executor, ThreadPoolExecutor(
                    max_workers=self._lanes, thread_name_prefix="model")
                old.shutdown(wait=False)
            self.config = cfg

    def stuck_for(self) -> float:
        """Seconds the oldest batch now running has been running (0: none), for the health
        check."""
        since = min(self._busy.values(), default=None)
        return 0.0 if since is None else time.monotonic() - since

    def _run(self, groups):
        t0 = time.perf_counter()
        lane = threading.get_ident()
        self._busy[lane] = time.monotonic()
        try:
            out = [self.runtime.run(g) for g in groups]
        except InputRejected:
            raise
        except Exception as e:
            # crosses to the gateway as an InferenceError, bisected there; the text is for the
            # gateway's log, clients get "internal error" and a request id
            log.exception("%s:%s failed on a batch", self.ref.name, self.ref.version)
            raise ModelExecutionError(f"{self.ref.name}:{self.ref.version} failed on a batch: "
                                      f"{type(e).__name__}: {str(e)[:500]}") from None
        finally:
            self._busy.pop(lane, None)
        return out, time.perf_counter() - t0

    async def infer(self, groups):
        loop = asyncio.get_running_loop()
        out, elapsed = await loop.run_in_executor(self._executor, self._run, groups)
        self.recorder.observe(M.COMPUTE, self.tags, elapsed)
        self.recorder.inc(M.COMPUTE_TIME, self.tags, elapsed)
        return out

    def _stuck(self) -> str | None:
        """Why this replica cannot serve: a model thread has been on one batch past the limit
        (a batch the gateway gave up on; with one lane nothing else can run, with several the
        replica serves at a fraction of its capacity until it is replaced)."""
        limit = settings().model_stuck_after_s
        if self.stuck_for() > limit:
            return (f"{self.ref.name}:{self.ref.version}: a batch has been running for "
                    f"{self.stuck_for():.0f} s (limit {limit:g} s); the model is stuck")
        return None

    async def check_health(self) -> None:
        """Serve's health check: a replica stuck on a batch fails it, so Serve replaces it."""
        reason = self._stuck()
        if reason:
            raise RuntimeError(reason)

    async def ready(self) -> bool:
        """Readiness as the gateway asks it: loaded, and not stuck on a batch."""
        return self.runtime is not None and self._stuck() is None


def _reserved_cpus() -> int:
    """Threads for the model: the CPUs this replica reserved from Ray (at least 1). Threads
    beyond the reservation compete with the gateway and other replicas on the same machine."""
    import math

    import ray

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:
        cpus = 1.0
    return max(1, math.ceil(cpus - 1e-9))


def gateway_app(args: dict):
    a = GatewayArgs.model_validate(args)
    return GatewayDeployment.bind(a.repository)


def version_app(args: dict):
    a = VersionArgs.model_validate(args)
    name = version_app_name(a.model, a.version)
    return ModelVersionDeployment.options(name=name).bind(a.repository, a.model, a.version)


__all__ = ["GatewayDeployment", "ModelVersionDeployment", "gateway_app", "version_app",
           "ModelUnavailable"]
