"""Ray Serve deployments and application builders (``import_path`` targets of the serve config)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from . import metrics as M
from .config import LISTEN_ENV, GatewayArgs, VersionArgs, VersionConfig, version_app_name
from .endpoints import dispatch
from .gateway import Gateway
from .protocol import (
    InferenceError, InputRejected, ModelExecutionError, ModelUnavailable, PayloadTooLarge,
    RequestCancelled,
)

log = logging.getLogger("ray.serve.optiserve")
def _unwrap(e: BaseException) -> BaseException:
    """The user-level exception inside Ray's wrappers (RayTaskError carries it as ``cause``)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


@serve.deployment(name="gateway")
class GatewayDeployment:
    """The HTTP ingress: Open Inference Protocol v2 over REST."""

    def __init__(self, repository: str):
        self.recorder = M.BufferedRecorder()
        self.gateway = Gateway(repository, self._backend, self.recorder, self._ready_probe)
        self._handles = {}
        self.listener = None
        self._listening = None  # the listener's start (a task or a thread-safe future)
        self._listen = os.environ.get(LISTEN_ENV)
        self._loop = asyncio.get_event_loop()  # the replica's loop (reconfigure may run in a
        # thread of Serve's pool)

    def _dispatch(self, method, path, headers, read_body):
        return dispatch(self.gateway, method, path, headers, read_body)

    async def __del__(self):
        """Serve's graceful shutdown: it drains the requests it routed itself; the listener's
        own requests get the same chance (stop accepting, let those in flight answer)."""
        if self.listener is not None:
            await self.listener.stop()

    def reconfigure(self, user_config: dict) -> None:
        """Apply a new gateway config, all or nothing. The first config must apply (raising
        here fails the deployment, with the message in Serve's status). Once serving, a config
        that cannot be applied is refused without raising: Ray Serve stops a replica whose
        reconfigure raises, which would turn a bad config into an outage. The running config
        stays; the refusal is logged and shown in the server metadata (``GET /v2``)."""
        try:
            self.gateway.reconfigure(user_config)
        except Exception as e:
            if self.gateway.config is None:
                raise
            self.gateway.rejected_config = str(e)
            log.error("gateway config refused, the running config stays: %s", e)
        if self._listen and self.listener is None:
            self._start_listener(self._listen)

    def _start_listener(self, address: str) -> None:
        """Listen once the first config applies, so no request arrives before there is
        something to serve; Serve reports the replica RUNNING just after."""
        from .listener import Listener

        host, _, port = address.rpartition(":")
        listener = Listener(self._dispatch, lambda: self.gateway.config.max_body_bytes,
                            host.strip("[]"), int(port))
        # bound here, synchronously: a port that cannot be had fails the deployment with the
        # reason in Serve's status (the first config) instead of a replica serving nothing
        listener.bind()
        self.listener = listener
        self._listening = asyncio.run_coroutine_threadsafe(listener.start(), self._loop) \
            if not _on_loop(self._loop) else self._loop.create_task(listener.start())

    async def check_health(self) -> None:
        """Serve's health check: also fails when the listener could not start serving."""
        task = self._listening
        if task is not None and task.done() and task.exception() is not None:
            raise RuntimeError(f"the HTTP listener failed: {task.exception()}")

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

    async def __call__(self, request: Request) -> Response:
        """Serve's HTTP ingress (HAProxy or Serve's proxy in front); the same endpoints as the
        gateway's own listener (:mod:`serving.listener`)."""

        async def read_body(limit: int) -> bytes:
            from starlette.requests import ClientDisconnect

            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of "
                                      f"{limit} bytes")
            chunks, size = [], 0
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
            except ClientDisconnect:
                raise RequestCancelled("the client went away while sending the body") from None
            return b"".join(chunks)

        status, body, headers = await dispatch(self.gateway, request.method,
                                               request.scope["path"], request.headers, read_body)
        return Response(body, status_code=status, headers=headers)


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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._gpu = None
        if self.ref.manifest.device == "cuda":
            from .gpu import GpuSampler

            self._gpu = GpuSampler(self.recorder)
            self._gpu.start()

    def _load(self, cfg: VersionConfig):
        from .runtimes import RuntimeOptions, load_runtime

        runtime = load_runtime(self.ref.manifest, self.ref.path, RuntimeOptions(
            intra_op_threads=cfg.intra_op_threads or _reserved_cpus(),
            inter_op_threads=cfg.inter_op_threads, spin=cfg.spin))
        self.recorder.set(M.LOAD_TIME, self.tags, runtime.load_time_s)
        log.info("loaded %s:%s (%s) on %s in %.2f s", self.ref.name, self.ref.version,
                 self.ref.manifest.variant, runtime.providers, runtime.load_time_s)
        return runtime

    def reconfigure(self, user_config: dict) -> None:
        cfg = VersionConfig.model_validate(user_config or {})
        if cfg != self.config:
            self.runtime = self._load(cfg)
            self.config = cfg

    def _run(self, groups):
        t0 = time.perf_counter()
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
        return out, time.perf_counter() - t0

    async def infer(self, groups):
        loop = asyncio.get_running_loop()
        out, elapsed = await loop.run_in_executor(self._executor, self._run, groups)
        self.recorder.observe(M.COMPUTE, self.tags, elapsed)
        self.recorder.inc(M.COMPUTE_TIME, self.tags, elapsed)
        return out

    async def ready(self) -> bool:
        return self.runtime is not None


def _on_loop(loop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


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
