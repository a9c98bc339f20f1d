"""The gateway: Open Inference Protocol endpoints, tokenization, batching, traffic split, shadow.

Requests are batched here, where they arrive, and each batch crosses to the version replica in
one call: one handle call per request capped a trivial Serve app at ~1,700 req/s on a 2-core
machine versus ~5,000 without the hop (measured), so per-request hops would cost more CPU than
the model itself at MiniLM-INT8 rates.

:class:`Gateway` is plain asyncio and takes a ``backend(model, version)`` factory, so it is
tested without Ray; ``serving.app`` wraps it in a Ray Serve deployment.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from . import metrics as M
from .batching import AdaptiveBatcher, BatchPolicy, Observer
from .config import GatewayConfig, ModelRoute
from .protocol import (
    InferenceError, InferRequest, InputRejected, InvalidInput, ModelExecutionError, ModelNotFound,
    ShadowDropped, decode_request, encode_response, validate_inputs,
)
from .protocol.codec import Limits
from .repository import Manifest, ModelRepository
from .routing import TrafficPolicy, choose_version, shadow_target
from .runtimes import TextEncoder, length_groups
from .tasks import TextTask, apply_class_counts, check_class_counts, text_task
from .tasks.image import ImageInputs, image_metadata
from .settings import settings

#: under Ray Serve's logger, so records land in the replica's log file with Serve's request ids
log = logging.getLogger("ray.serve.optiserve.gateway")
SERVER_NAME = "optiserve"
SERVER_VERSION = "0.1.0"
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch"}

#: backend(model, version) -> coroutine function running a list of padded groups on the replica
Backend = Callable[[list[dict[str, np.ndarray]]], Awaitable[list[dict[str, np.ndarray]]]]

#: Every outcome a request can have, as counted and timed (``cancelled``: the client went
#: away, or the request was cancelled, before an answer).
OUTCOMES = (("success", "200"), ("client_error", "400"), ("server_error", "500"),
            ("server_error", "503"), ("overloaded", "503"), ("timeout", "504"),
            ("cancelled", "499"))


class NullRecorder:
    def inc(self, *a, **k): ...
    def observe(self, *a, **k): ...
    def set(self, *a, **k): ...
    def forget(self, *a, **k): ...


class _BatchObserver(Observer):
    def __init__(self, recorder, tags):
        self.recorder, self.tags = recorder, tags

    def dispatched(self, rows: int, waits_s: list[float]) -> None:
        self.recorder.observe(M.BATCH_SIZE, self.tags, rows)
        self.recorder.inc(M.BATCH_ROWS, self.tags, rows)
        for w in waits_s:
            self.recorder.observe(M.QUEUE_WAIT, self.tags, w)

    def queue_changed(self, rows: int) -> None:
        self.recorder.set(M.QUEUE_ROWS, self.tags, rows)

    def bisected(self, requests: int) -> None:
        log.warning("a batch of %d requests to %s:%s failed; running it again in halves to "
                    "find the request that caused it", requests, self.tags["model"],
                    self.tags["version"])


@dataclass
class VersionState:
    """One served version in the gateway: its manifest, tokenizer and batcher."""

    model: str
    version: int
    manifest: Manifest
    backend: Backend
    encoder: TextEncoder | None
    batcher: AdaptiveBatcher = None
    tags: dict[str, str] = field(default_factory=dict)
    inflight: int = 0
    #: mirrored copies started towards this version and not queued yet: an idle version is
    #: taken by the first copy, not by every request that completes in the same tick
    shadows_starting: int = 0
    executor: ThreadPoolExecutor | None = None
    #: text versions: what the outputs mean (labels, entities, truncated rows)
    task: TextTask | None = None
    #: image versions: images (or pixels) in, labels out
    images: ImageInputs | None = None

    def __post_init__(self):
        if self.encoder is not None and self.task is None:  # the model's tensors as they are
            self.task = TextTask(self.manifest)

    def input_signature(self, req: InferRequest):
        """What a request's inputs are checked against (image versions also take pixels)."""
        return self.images.signature(req) if self.images else self.manifest.signature

    def same_pixels(self, other: VersionState) -> bool:
        """Both are image versions that preprocess images identically: one's decoded pixels
        are the other's (a mirrored request is not decoded again)."""
        return (self.images is not None and other.images is not None
                and self.images.spec == other.images.spec)

    async def admit(self, req: InferRequest) -> tuple[Any, int]:
        """:meth:`prepare`, images decoded off the event loop."""
        if self.images is not None:
            return await self.images.prepare(req, self.executor)
        return self.prepare(req)

    @property
    def run_rows(self) -> int | None:
        """Most rows of one model run (max_batch_size; None before a batcher is attached)."""
        return self.batcher.policy.max_batch_size if self.batcher is not None else None

    def prepare(self, req: InferRequest) -> tuple[Any, int]:
        """Turn request tensors into a batch payload and its row count (texts stay strings:
        a whole batch is tokenized in one call, cheaper than one call per request)."""
        if self.encoder is not None:
            texts = req.inputs[self.manifest.preprocessing.text_input].data.ravel()
            try:
                decoded = [t.decode("utf-8") for t in texts]
            except UnicodeDecodeError as e:
                raise InvalidInput(f"input {self.manifest.preprocessing.text_input!r} is not "
                                   f"UTF-8 text: {e.reason} at byte {e.start}") from None
            return decoded, len(decoded)
        arrays = {n: t.data for n, t in req.inputs.items()}
        return arrays, len(next(iter(arrays.values())))

    def _encode(self, texts: list[str]):
        encoded = self.encoder.encode_batch(texts, keep=self.task.needs_encodings)
        rows = encoded.rows
        # a dispatch may hold several batches (merge_batches): no model run exceeds one
        groups = length_groups([len(r) for r in rows], max_rows=self.run_rows)
        return groups, [self.encoder.pad([rows[i] for i in g]) for g in groups], encoded

    async def run_batch(self, payloads: list[Any]) -> list[dict[str, np.ndarray]]:
        if self.encoder is not None:
            texts = [t for p in payloads for t in p]
            # small work runs on the event loop (a thread hop costs more than it saves); large work in
            # the worker threads, so one large request never stalls the loop that serves everyone
            # else (``tokenizers`` releases the GIL while it encodes)
            if self.executor is None or sum(map(len, texts)) <= settings().inline_text_bytes:
                groups, feeds, encoded = self._encode(texts)
            else:
                groups, feeds, encoded = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._encode, texts)
            try:
                results = await self.backend(feeds)
            except InputRejected as e:
                # the gateway made these tensors itself: a model refusing them is the
                # server's fault, never the client's
                raise ModelExecutionError(str(e)) from None
            return self.task.split([len(p) for p in payloads], groups, results, encoded)
        # tensors: requests whose non-batch dimensions agree are concatenated into one feed,
        # in arrival order, of at most max_batch_size rows (a dispatch may hold several batches)
        limit = self.run_rows or sum(len(next(iter(p.values()))) for p in payloads)
        by_shape: dict[tuple, list[list[int]]] = {}
        filled: dict[tuple, int] = {}
        for i, p in enumerate(payloads):
            key = tuple(v.shape[1:] for v in p.values())
            n = len(next(iter(p.values())))
            runs = by_shape.setdefault(key, [[]])
            if runs[-1] and filled[key] + n > limit:
                runs.append([])
                filled[key] = 0
            runs[-1].append(i)
            filled[key] = filled.get(key, 0) + n
        groups = [g for runs in by_shape.values() for g in runs]
        feeds = [{n: np.concatenate([payloads[i][n] for i in g]) for n in payloads[g[0]]}
                 for g in groups]
        results = await self.backend(feeds)
        if self.images is not None:
            results = [self.images.finish(r) for r in results]
        out: list[dict[str, np.ndarray]] = [{} for _ in payloads]
        for g, res in zip(groups, results):
            start = 0
            for i in g:
                n = len(next(iter(payloads[i].values())))
                out[i] = {k: v[start:start + n] for k, v in res.items()}
                start += n
        return out


@dataclass
class ModelState:
    route: ModelRoute
    policy: TrafficPolicy
    versions: dict[int, VersionState]


class ConfigRejected(ValueError):
    """A gateway config that cannot be applied; the running one stays. Names the field."""


def _roles(st: ModelState) -> dict[int, str]:
    return {v: "stable" if v == st.policy.stable else (
        "canary" if v == st.policy.canary else "idle") for v in st.versions}


def _predicted_compute(vs: VersionState):
    """(tags, seconds) of each PREDICTED_COMPUTE series of a version: the compute per batch its
    manifest measured, p50 and p99 at each benchmarked batch size."""
    for p in vs.manifest.measurements.latency:
        for quantile, ms in (("0.5", p.p50_ms), ("0.99", p.p99_ms)):
            yield {**vs.tags, "batch_size": str(p.batch_size), "quantile": quantile}, ms / 1000.0


def agreement(task: str, stable: np.ndarray, canary: np.ndarray) -> np.ndarray:
    """Per-row agreement: cosine for embeddings (and generic outputs), top-1 match otherwise."""
    if task == "token-classification":  # token_labels, the first output
        from .tasks import token_label_agreement

        return token_label_agreement(stable, canary)
    if task == "classification":
        return (stable.reshape(len(stable), -1).argmax(1)
                == canary.reshape(len(canary), -1).argmax(1)).astype(np.float64)
    a = stable.reshape(len(stable), -1).astype(np.float64)
    b = canary.reshape(len(canary), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * b).sum(1) / denom
    return np.clip(np.nan_to_num(cos, nan=0.0), -1.0, 1.0)


def compare_outputs(served: Manifest, served_out: dict[str, np.ndarray],
                    mirror_out: dict[str, np.ndarray]) -> tuple[np.ndarray, str | None]:
    """Per-row agreement of a mirrored answer with the served one, on the served version's
    primary output, matched by name and shape. Outputs that cannot be compared (the other
    version renamed, dropped or resized it) disagree on every row (0), with the reason."""
    name = served.signature.outputs[0].name
    a = served_out.get(name)
    rows = 0 if a is None else len(a)
    b = mirror_out.get(name)
    if b is None:
        return np.zeros(rows), (f"the other version has no output {name!r} (it has "
                                f"{', '.join(sorted(mirror_out)) or 'none'})")
    if a.shape != b.shape:
        return np.zeros(rows), (f"output {name!r} has shape {list(b.shape)} there, "
                                f"{list(a.shape)} here")
    try:
        return agreement(served.task, a, b), None
    except Exception as e:  # a dtype that does not compare: disagreement, with why
        return np.zeros(rows), f"output {name!r} cannot be compared: {e}"


class Gateway:
    """Serves the OIP for the configured models; ``reconfigure`` applies a new config in place."""

    def __init__(self, repository: str, backend_factory: Callable[[str, int], Backend],
                 recorder=None, ready_probe: Callable[[str, int], Awaitable[bool]] | None = None):
        self.repo = ModelRepository(repository)
        self._backend_factory = backend_factory
        self.recorder = recorder or NullRecorder()
        self._ready_probe = ready_probe
        self._ready_cache: dict[tuple[str, int], tuple[float, bool]] = {}
        self.models: dict[str, ModelState] = {}
        self.config: GatewayConfig | None = None
        self._rng = random.Random()
        self._shadow_tasks: set[asyncio.Task] = set()
        #: tokenization and decoding of large requests, off the event loop
        self.executor = ThreadPoolExecutor(max_workers=settings().gateway_worker_threads,
                                           thread_name_prefix="gateway-work")
        #: the last config that was refused (the running one stayed): shown in /v2
        self.rejected_config: str | None = None

    # ---- configuration ---------------------------------------------------------------------
    def reconfigure(self, user_config: dict) -> None:
        """Apply a gateway config: add/remove versions, change batching and weights in place.

        All or nothing: every new version is loaded and every batching policy resolved before
        anything changes; if one fails, the running config stays exactly as it was, what was
        loaded for the new one is dropped, and :class:`ConfigRejected` says what failed."""
        cfg = GatewayConfig.model_validate(user_config)
        new: dict[str, ModelState] = {}
        loaded: list[VersionState] = []
        updates: list[tuple[VersionState, Any]] = []
        # nothing below changes running state; what a failure leaves behind (versions loaded
        # for the new config, never queued on, never started) is only garbage
        for name, route in cfg.models.items():
            old = self.models.get(name)
            versions = {}
            for v, batching in route.versions.items():
                vs = old.versions.get(v) if old else None
                if vs is None:
                    try:
                        vs = self._load_version(name, v)
                    except Exception as e:
                        raise ConfigRejected(f"models.{name}.versions.{v}: {name}:{v} cannot "
                                             f"be loaded: {e}") from e
                    loaded.append(vs)
                updates.append((vs, batching.resolve(vs.manifest.batching)))
                versions[v] = vs
            new[name] = ModelState(route, route.policy(), versions)
        for vs, policy in updates:
            vs.batcher.update(policy)
        removed = [vs for name, st in self.models.items() for v, vs in st.versions.items()
                   if name not in new or v not in new[name].versions]
        previous = {(name, v): role for name, st in self.models.items()
                    for v, role in _roles(st).items()}
        self.models, self.config = new, cfg
        self.rejected_config = None
        for vs in loaded:
            # rate()/increase() see a version's first requests, whichever protocol brings them
            for (outcome, code), protocol in itertools.product(OUTCOMES, M.PROTOCOLS):
                self.recorder.inc(M.REQUESTS, {**vs.tags, "outcome": outcome, "code": code,
                                               "protocol": protocol}, 0.0)
            for tags, seconds in _predicted_compute(vs):
                self.recorder.set(M.PREDICTED_COMPUTE, tags, seconds)
        current = set()
        for name, st in new.items():
            weights = st.policy.weights()
            for v, role in _roles(st).items():
                current.add((name, v, role))
                self.recorder.set(M.TRAFFIC_WEIGHT, {"model": name, "version": str(v),
                                                     "role": role}, weights.get(v, 0.0))
        # a version whose role changed stops reporting the old one (no stale role series)
        for (name, v), role in previous.items():
            if (name, v, role) not in current:
                self.recorder.forget(M.TRAFFIC_WEIGHT, {"model": name, "version": str(v),
                                                        "role": role})
        for vs in removed:
            for spec in (M.INFLIGHT, M.QUEUE_ROWS):
                self.recorder.forget(spec, vs.tags)
            for tags, _ in _predicted_compute(vs):
                self.recorder.forget(M.PREDICTED_COMPUTE, tags)
            self._spawn(vs.batcher.close())

    def _load_version(self, model: str, version: int) -> VersionState:
        ref = self.repo.get(model, version)
        m = ref.manifest
        encoder = task = None
        if m.preprocessing is not None:
            path = ref.file(m.preprocessing.tokenizer_file)
            from .repository import IntegrityError, sha256_file

            if sha256_file(path) != m.artifact(m.preprocessing.tokenizer_file).sha256:
                raise IntegrityError(f"{model}:{version}: {m.preprocessing.tokenizer_file} does "
                                     "not match its sha256 in the manifest")
            encoder, task = TextEncoder(path, m.preprocessing), text_task(m)
        tags = {"model": model, "version": str(version)}
        vs = VersionState(model, version, m, self._backend_factory(model, version), encoder,
                          tags=tags, executor=self.executor, task=task,
                          images=ImageInputs(m) if m.image_preprocessing else None)
        vs.batcher = AdaptiveBatcher(vs.run_batch, BatchPolicy(), label=f"{model}:{version}",
                                     observer=_BatchObserver(self.recorder, tags))
        return vs

    def _spawn(self, coro) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (configured before serving): nothing is queued yet
            coro.close()
            return
        self._shadow_tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        """Nobody awaits a background task: what it raises is logged here, never lost."""
        self._shadow_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background task of the gateway failed", exc_info=task.exception())

    # ---- lookups -----------------------------------------------------------------------------
    def model(self, name: str) -> ModelState:
        st = self.models.get(name)
        if st is None:
            raise ModelNotFound(f"model {name!r} is not served; served models: "
                                f"{', '.join(sorted(self.models)) or 'none'}")
        return st

    def version(self, name: str, version: str | int | None) -> VersionState:
        st = self.model(name)
        if version is None or version == "":
            return st.versions[st.policy.stable]
        try:
            v = int(version)
        except (TypeError, ValueError):
            raise InvalidInput(f"version {version!r} must be an integer") from None
        vs = st.versions.get(v)
        if vs is None:
            raise ModelNotFound(f"version {v} of model {name!r} is not served; served versions: "
                                f"{', '.join(map(str, sorted(st.versions)))}")
        return vs

    async def version_ready(self, vs: VersionState) -> bool:
        if self._ready_probe is None:
            return True
        key = (vs.model, vs.version)
        now = time.monotonic()
        cached = self._ready_cache.get(key)
        if cached and now - cached[0] < 1.0:
            return cached[1]
        try:
            ok = await asyncio.wait_for(self._ready_probe(vs.model, vs.version), 2.0)
        except Exception:
            ok = False
        self._ready_cache[key] = (now, ok)
        return ok

    async def server_ready(self) -> bool:
        if not self.models:
            return False
        checks = [self.version_ready(st.versions[st.policy.stable]) for st in self.models.values()]
        return all(await asyncio.gather(*checks))

    # ---- metadata ----------------------------------------------------------------------------
    def server_metadata(self) -> dict:
        doc = {"name": SERVER_NAME, "version": SERVER_VERSION,
               "extensions": ["binary_tensor_data", "model_configuration", "model_repository"],
               "openapi": "/v2/openapi.json"}
        if self.rejected_config:
            doc["config_rejected"] = self.rejected_config
        return doc

    def openapi(self) -> dict:
        from .protocol.openapi import openapi_document

        stable = {n: st.versions[st.policy.stable].manifest for n, st in self.models.items()}
        return openapi_document(
            {n: list(st.versions) for n, st in self.models.items()}, SERVER_VERSION,
            {n: m.signature for n, m in stable.items()}, manifests=stable)

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        st = self.model(name)
        vs = self.version(name, version)
        m = vs.manifest
        return {
            "name": name,
            "versions": [str(v) for v in sorted(st.versions)] if not version else [str(vs.version)],
            "platform": PLATFORMS.get(m.runtime, m.runtime),
            "inputs": [t.model_dump() for t in m.signature.inputs],
            "outputs": [t.model_dump() for t in m.signature.outputs],
            "parameters": {"variant": m.variant, "task": m.task, "stable": st.policy.stable,
                           "canary": st.policy.canary,
                           "canary_weight": st.policy.canary_weight,
                           **({"labels": m.postprocessing.labels} if m.postprocessing else {}),
                           **image_metadata(m)},
        }

    def model_config(self, name: str, version: str | None = None) -> dict:
        """Triton's model-configuration extension (tritonclient's get_model_config)."""
        vs = self.version(name, version)
        m, p = vs.manifest, vs.batcher.policy

        def dims(spec):
            return {"name": spec.name, "data_type": f"TYPE_{spec.datatype.replace('BYTES', 'STRING')}",
                    "dims": spec.shape[1:] or [1]}

        return {
            "name": name, "platform": PLATFORMS.get(m.runtime, m.runtime),
            "max_batch_size": p.max_batch_size,
            "input": [dims(t) for t in m.signature.inputs],
            "output": [dims(t) for t in m.signature.outputs],
            "dynamic_batching": {"max_queue_delay_microseconds": int(p.max_delay_s * 1e6),
                                 "default_queue_policy": {"max_queue_size": p.max_queue_rows}},
            "version_policy": {"specific": {"versions": sorted(self.model(name).versions)}},
            "parameters": {"variant": {"string_value": m.variant}, **{
                k: {"string_value": orjson.dumps(v).decode()} for k, v in
                image_metadata(m).items()}},
        }

    async def repository_index(self) -> list[dict]:
        out = []
        for name, st in sorted(self.models.items()):
            for v, vs in sorted(st.versions.items()):
                ready = await self.version_ready(vs)
                out.append({"name": name, "version": str(v),
                            "state": "READY" if ready else "UNAVAILABLE"})
        return out

    # ---- inference -----------------------------------------------------------------------------
    def limits(self, vs: VersionState) -> Limits:
        cfg = self.config
        # an encoded image is one element: bounded by the body (and its pixels by the version)
        return Limits(max_body_bytes=cfg.max_body_bytes, max_rows=vs.batcher.policy.max_batch_size,
                      max_element_bytes=cfg.max_body_bytes if vs.images else cfg.max_element_bytes)

    async def handle_infer(self, name: str, version: str | None,
                           read_body: Callable[[int], Awaitable[bytes]], headers,
                           protocol: str = "http") -> tuple[int, bytes, dict[str, str]]:
        """Serve one infer request: (status, body, headers). Every outcome is counted and
        timed under the version that was chosen for it, so a canary's errors are the
        canary's, and a p99 sees the requests that timed out; ``protocol`` (one of
        ``metrics.PROTOCOLS``) labels those series with how the request arrived."""
        t0 = time.perf_counter()
        tags = {"model": name if name in self.models else "", "version": ""}
        try:
            st = self.model(name)
            if version:
                vs = self.version(name, version)
            else:
                sticky = headers.get(st.policy.sticky_header) if st.policy.sticky_header else None
                vs = st.versions[choose_version(st.policy, sticky, self._rng)]
            tags = vs.tags
            body = await read_body(self.config.max_body_bytes)
            out, out_headers = await self._infer(st, vs, not version, body, headers)
        except asyncio.CancelledError:
            self._count(tags, "cancelled", "499", t0, protocol)
            raise
        except Exception as e:
            status, outcome, message, extra = error_outcome(e)
            doc = {"error": message}
            if status >= 500 and (not isinstance(e, InferenceError)
                                  or isinstance(e, ModelExecutionError)):
                # the details are for the log, under an id the client can quote
                rid = uuid.uuid4().hex[:16]
                log.error("infer %s:%s (request id %s) failed", tags["model"], tags["version"],
                          rid, exc_info=e)
                doc = {"error": f"internal error (request id {rid})", "request_id": rid}
            self._count(tags, outcome, str(status), t0, protocol)
            return status, orjson.dumps(doc), {"content-type": "application/json", **extra}
        self._count(tags, "success", "200", t0, protocol)
        return 200, out, out_headers

    def _count(self, tags: dict[str, str], outcome: str, code: str, t0: float,
               protocol: str) -> None:
        self.recorder.inc(M.REQUESTS, {**tags, "outcome": outcome, "code": code,
                                       "protocol": protocol})
        self.recorder.observe(M.REQUEST_DURATION, {**tags, "outcome": outcome,
                                                   "protocol": protocol},
                              time.perf_counter() - t0)

    async def _infer(self, st: ModelState, vs: VersionState, routed: bool, body: bytes, headers
                     ) -> tuple[bytes, dict[str, str]]:
        limits = self.limits(vs)
        if len(body) <= settings().inline_body_bytes and not headers.get("content-encoding"):
            req = decode_request(body, headers, limits)
        else:
            req = await asyncio.get_running_loop().run_in_executor(
                self.executor, decode_request, body, dict(headers), limits)
        validate_inputs(req, vs.input_signature(req), vs.model)
        check_class_counts(req.classification, vs.manifest.signature)
        payload, rows = await vs.admit(req)
        vs.inflight += 1
        self.recorder.set(M.INFLIGHT, vs.tags, vs.inflight)
        try:
            outputs = await vs.batcher.submit(payload, rows)
        finally:
            vs.inflight -= 1
            self.recorder.set(M.INFLIGHT, vs.tags, vs.inflight)
        self.recorder.inc(M.ROWS, vs.tags, rows)
        if routed:  # requests pinned to a version are not mirrored
            other = st.policy.canary if vs.version == st.policy.stable else st.policy.stable
            mirror = st.versions.get(other) if other is not None else None
            # room to mirror beyond the configured share: the other version is idle and this
            # one has nothing waiting (low traffic); under load only the configured share
            room = (mirror is not None and mirror.batcher.idle
                    and mirror.shadows_starting == 0 and vs.batcher.queued_rows == 0)
            target = shadow_target(st.policy, vs.version, self._rng, room=room)
            if target is not None:
                st.versions[target].shadows_starting += 1
                self._spawn(self._shadow(st, vs, st.versions[target], req, outputs,
                                         (payload, rows)))
        outputs = apply_class_counts(outputs, req.classification, vs.manifest)
        return encode_response(vs.model, vs.version, outputs, req)

    async def _shadow(self, st: ModelState, served: VersionState, mirror: VersionState,
                      req: InferRequest, served_out: dict[str, np.ndarray],
                      served_payload: tuple[Any, int] | None = None) -> None:
        """Send a copy of a served request to the other version and record their agreement
        (labelled stable/canary whichever way the copy went). Copies queue in their own
        bounded share and give way to real requests; a dropped or failed copy is counted
        here only, never as a request of either version."""
        tags = {"model": served.model, "stable": str(st.policy.stable),
                "canary": str(st.policy.canary)}
        try:
            try:
                if served_payload is not None and mirror.same_pixels(served):
                    payload, rows = served_payload
                else:
                    payload, rows = await mirror.admit(req)
            finally:
                # submit() queues the copy before it first yields: from here it is seen waiting
                mirror.shadows_starting -= 1
            out = await mirror.batcher.submit(payload, rows, shadow=True)
        except ShadowDropped:
            self.recorder.inc(M.SHADOW_REQUESTS, {**tags, "outcome": "dropped"})
            return
        except Exception as e:
            log.warning("shadow request to %s:%s failed: %s", mirror.model, mirror.version, e)
            self.recorder.inc(M.SHADOW_REQUESTS, {**tags, "outcome": "failed"})
            return
        scores, reason = compare_outputs(served.manifest, served_out, out)
        if reason:
            # a canary whose outputs cannot be compared disagrees: counted, not lost
            log.warning("shadow comparison of %s:%s with %s:%s: %s; counted as disagreement",
                        served.model, served.version, mirror.model, mirror.version, reason)
        for s in scores:
            self.recorder.observe(M.SHADOW_AGREEMENT, tags, float(s))
        # the exact sum takes scores below 0 (anti-correlated embeddings) as 0, like the
        # histogram's lowest bucket does for the quantiles
        self.recorder.inc(M.SHADOW_AGREEMENT_SUM, tags, float(np.clip(scores, 0, None).sum()))
        self.recorder.inc(M.SHADOW_REQUESTS, {**tags, "outcome": "compared"})

    async def close(self) -> None:
        for st in self.models.values():
            for vs in st.versions.values():
                await vs.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def error_outcome(e: Exception) -> tuple[int, str, str, dict[str, str]]:
    """(status, outcome label, message, headers) for an exception raised while serving. The
    message of anything that is not an :class:`InferenceError` stays in the log."""
    if isinstance(e, InferenceError):
        return e.status, e.outcome, str(e), e.headers()
    return 500, "server_error", "internal error", {}
