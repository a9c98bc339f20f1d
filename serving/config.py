"""The serve config: Ray Serve's declarative schema with optiserve's typed parts.

The file ``optiserve serve --config`` reads is exactly what a KubeRay RayService takes as
``serveConfigV2``: Ray's ``applications`` list, where optiserve's applications carry typed
``args`` and ``user_config`` validated here with messages that name the field. The layout:

- application ``optiserve``: the gateway (its own HTTP server, OIP endpoints, tokenization,
  batching, traffic split), one replica per node that offers the ``optiserve_gateway`` resource;
  Serve's proxies are off. Its deployment's ``user_config`` (:class:`GatewayConfig`) holds per
  model the served versions with their batching, the stable/canary weights and the shadow
  share; changing it is applied in place (``reconfigure``), no replica restarts.
- one application per served version, ``<model>-v<version>`` (no route): the replica that runs the
  model. Replicas, autoscaling and CPUs/GPUs are Ray's own deployment options; threads are its
  ``user_config`` (:class:`VersionConfig`).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import (
    BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError,
    field_validator, model_validator,
)

from .repository import ModelRepository
from .repository.schema import check_model_name
from .repository.schema import BatchingPolicy
from .settings import settings

GATEWAY_APP = "optiserve"
GATEWAY_DEPLOYMENT = "gateway"
GATEWAY_IMPORT = "serving.app:gateway_app"
VERSION_IMPORT = "serving.app:version_app"
#: The custom Ray resource a gateway replica asks for: each node that may answer HTTP offers
#: it (one per serving pod on Kubernetes, so replicas = pods; many on a local machine)
GATEWAY_RESOURCE = "optiserve_gateway"
#: offered by every node that may run model replicas (many units each): a canary that shares
#: its stable's CPUs reserves no CPU, and asks for one of these so that it still lands where
#: models run (never on a head started with no CPUs)
MODEL_RESOURCE = "optiserve_model"



def version_app_name(model: str, version: int) -> str:
    """Application and deployment name of a served version."""
    return f"{model}-v{version}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingConfig(_Strict):
    """Dynamic batching of one version; unset fields take the optimizer's recommendation."""

    max_batch_size: PositiveInt | None = Field(
        None, description="Most rows per model call, and per request: a request with more "
                          "rows is refused with 400 [default: the manifest's recommendation].")
    max_delay_ms: NonNegativeFloat | None = Field(
        None, le=10_000, description="Longest a row waits for batch-mates [default: manifest].")
    max_queue_rows: PositiveInt = Field(
        default_factory=lambda: settings().max_queue_rows,
        description="Rows allowed to wait; past it requests get 503 with Retry-After "
                    "[default: OPTISERVE_MAX_QUEUE_ROWS, 2048].")
    max_shadow_rows: PositiveInt | None = Field(
        None, description="Rows of mirrored (shadow) copies allowed to wait, apart from real "
                          "requests; past it copies are dropped [default: max_queue_rows/4, at "
                          "least max_batch_size].")
    merge_batches: PositiveInt = Field(
        default_factory=lambda: settings().merge_batches,
        description="While the model is busy, up to this many max_batch_size batches of "
                    "waiting rows go to it in one call; every model run stays within "
                    "max_batch_size rows [default: OPTISERVE_MERGE_BATCHES, 4].")
    max_inflight_batches: PositiveInt = Field(
        default_factory=lambda: settings().max_inflight_batches,
        description="Batches running at once per gateway replica (keep ~2 per model replica) "
                    "[default: OPTISERVE_MAX_INFLIGHT_BATCHES, 2].")
    timeout_s: PositiveFloat | None = Field(
        default_factory=lambda: settings().request_timeout_s,
        description="Longest a request may take before it gets 504 "
                    "[default: OPTISERVE_REQUEST_TIMEOUT_S, 30].")

    def resolve(self, default: BatchingPolicy):
        from .batching import BatchPolicy

        return BatchPolicy(
            max_batch_size=self.max_batch_size or default.max_batch_size,
            max_delay_s=(self.max_delay_ms if self.max_delay_ms is not None
                         else default.max_delay_ms) / 1000.0,
            max_queue_rows=self.max_queue_rows, max_inflight=self.max_inflight_batches,
            merge_batches=self.merge_batches,
            timeout_s=self.timeout_s, max_shadow_rows=self.max_shadow_rows,
        )


class ModelRoute(_Strict):
    """The versions of one model the gateway serves, and how traffic splits between them."""

    versions: dict[int, BatchingConfig] = Field(
        description="Served versions and their batching ({} for the defaults).", min_length=1)
    stable: PositiveInt = Field(description="Version that takes the traffic not sent to canary.")
    canary: PositiveInt | None = Field(None, description="Version under test, if any.")
    canary_weight: float = Field(0.0, ge=0, le=100, description="Percent of traffic to canary.")
    shadow: float = Field(
        0.0, ge=0, le=1, description="Share of stable's requests mirrored to the canary and "
                                     "compared (their answers are not returned).")
    sticky_header: str | None = Field(
        None, description="Header whose value pins a client to a version (e.g. x-session-id).")

    @field_validator("versions")
    @classmethod
    def _positive(cls, v: dict[int, BatchingConfig]) -> dict[int, BatchingConfig]:
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError(f"versions must be positive integers, got {bad}")
        return v

    @field_validator("sticky_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return v.lower() if v else v

    @model_validator(mode="after")
    def _consistent(self) -> ModelRoute:
        served = sorted(self.versions)
        if self.stable not in self.versions:
            raise ValueError(f"stable ({self.stable}) must be one of the served versions {served}")
        if self.canary is not None:
            if self.canary not in self.versions:
                raise ValueError(
                    f"canary ({self.canary}) must be one of the served versions {served}")
            if self.canary == self.stable:
                raise ValueError(f"canary ({self.canary}) must differ from stable ({self.stable})")
        elif self.canary_weight > 0 or self.shadow > 0:
            raise ValueError("canary_weight and shadow need a canary version")
        return self

    def policy(self):
        from .routing import TrafficPolicy

        return TrafficPolicy(stable=self.stable, canary=self.canary,
                             canary_weight=self.canary_weight, shadow=self.shadow,
                             sticky_header=self.sticky_header)


class GatewayConfig(_Strict):
    """The gateway deployment's ``user_config``: applied in place, no restart."""

    models: dict[str, ModelRoute] = Field(description="Served models by name.", min_length=1)
    max_body_bytes: PositiveInt = Field(
        default_factory=lambda: settings().max_body_bytes,
        description="Largest request body accepted, after decompression (413 above) "
                    "[default: OPTISERVE_MAX_BODY_BYTES, 64 MiB].")
    max_element_bytes: PositiveInt = Field(
        default_factory=lambda: settings().max_element_bytes,
        description="Largest single element of a BYTES input, e.g. one text (413 above; a "
                    "text model's tokenizer still truncates to the manifest's max_length) "
                    "[default: OPTISERVE_MAX_ELEMENT_BYTES, 64 KiB].")

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelRoute]) -> dict[str, ModelRoute]:
        for name in v:
            check_model_name(name)
        return v


class GatewayArgs(_Strict):
    """The gateway application's ``args`` (changing them restarts the gateway)."""

    repository: str = Field(description="Model repository path, as seen by the replicas.")


class VersionArgs(_Strict):
    """A version application's ``args``."""

    repository: str = Field(description="Model repository path, as seen by the replicas.")
    model: str
    version: PositiveInt

    @field_validator("model")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)


class VersionConfig(_Strict):
    """A version deployment's ``user_config``."""

    intra_op_threads: PositiveInt | None = Field(
        None, description="Threads per model call [default: 1 with lanes (ONNX Runtime on "
                           "CPU), else the CPUs the replica reserved from Ray (num_cpus)].")
    lanes: PositiveInt | None = Field(
        None, description="Batches this replica runs at once, each on intra_op_threads "
                          "threads, on one shared session (ONNX Runtime on CPU only) [default: "
                          "ONNX Runtime on CPU without intra_op_threads: one single-thread "
                          "lane per reserved CPU; else 1]. One thread per call costs the "
                          "least CPU per row: MiniLM INT8, 32-row batches, 1.72 vs 2.01 ms "
                          "per sentence on 1 vs 2 threads.")
    cpus: PositiveInt | None = Field(
        None, description="CPUs the replica plans its threads and lanes for [default: the "
                          "CPUs it reserved from Ray, at least 1]; a canary sharing its "
                          "stable's CPUs (reserving none) is given the stable's.")
    inter_op_threads: PositiveInt = Field(1, description="Threads across independent ops.")
    spin: bool = Field(False, description="Let idle ONNX Runtime threads spin (lower latency "
                                          "on a dedicated machine, wasted CPU on a shared one).")


    def layout(self, manifest, cpus: int) -> tuple[int, int]:
        """(intra-op threads, lanes) of a replica of ``manifest`` that reserved ``cpus`` CPUs
        (this config's ``cpus`` wins); ValueError naming ``lanes`` where the runtime cannot run
        batches at once."""
        cpus = self.cpus or cpus
        lanes_ok = manifest.runtime == "onnxruntime" and manifest.device == "cpu"
        if self.lanes is not None:
            if self.lanes > 1 and not lanes_ok:
                # other runtimes keep per-call state (OpenVINO's infer request, a torch
                # module's buffers, a GPU stream): one batch at a time there
                raise ValueError(
                    f"lanes: {self.lanes} batches at once need ONNX Runtime on CPU; "
                    f"{manifest.name}:{manifest.version} runs {manifest.runtime} on "
                    f"{manifest.device} (lanes: 1)")
            return self.intra_op_threads or max(1, cpus // self.lanes), self.lanes
        if self.intra_op_threads is not None:
            return self.intra_op_threads, 1
        return (1, cpus) if lanes_ok else (cpus, 1)


class ConfigError(ValueError):
    """A serve config that cannot be deployed; the message names the field."""


def _loc(prefix: str, err: dict) -> str:
    return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])


def _raise(prefix: str, e: ValidationError) -> None:
    lines = [f"{_loc(prefix, err)}: {err['msg']}" for err in e.errors()]
    raise ConfigError("invalid serve config:\n  " + "\n  ".join(lines)) from None


def validate_serve_config(doc: Any, repository_check: bool = True) -> dict:
    """Validate a whole serve config (Ray's schema, then optiserve's parts); return it."""
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(doc, dict):
        raise ConfigError("invalid serve config: expected a mapping with an 'applications' list")
    try:
        ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") \
            else ServeDeploySchema.parse_obj(doc)
    except Exception as e:  # Ray's pydantic errors already name the field
        raise ConfigError(f"invalid serve config (Ray Serve schema): {e}") from None
    apps = doc.get("applications", [])
    gateway_routes: dict[str, ModelRoute] = {}
    served: dict[tuple[str, int], str] = {}
    repos = set()
    for i, app in enumerate(apps):
        prefix = f"applications[{i}]"
        if app.get("import_path") == GATEWAY_IMPORT:
            try:
                args = GatewayArgs.model_validate(app.get("args") or {})
            except ValidationError as e:
                _raise(prefix + ".args", e)
            repos.add(args.repository)
            for j, dep in enumerate(app.get("deployments") or []):
                if dep.get("name") == GATEWAY_DEPLOYMENT:
                    try:
                        gw = GatewayConfig.model_validate(dep.get("user_config") or {})
                    except ValidationError as e:
                        _raise(f"{prefix}.deployments[{j}].user_config", e)
                    gateway_routes = gw.models
        elif app.get("import_path") == VERSION_IMPORT:
            try:
                args = VersionArgs.model_validate(app.get("args") or {})
            except ValidationError as e:
                _raise(prefix + ".args", e)
            repos.add(args.repository)
            expected = version_app_name(args.model, args.version)
            if app.get("name") != expected:
                raise ConfigError(f"invalid serve config:\n  {prefix}.name: the application "
                                  f"serving {args.model}:{args.version} must be named {expected!r}")
            served[(args.model, args.version)] = prefix
            for j, dep in enumerate(app.get("deployments") or []):
                try:
                    VersionConfig.model_validate(dep.get("user_config") or {})
                except ValidationError as e:
                    _raise(f"{prefix}.deployments[{j}].user_config", e)
    if not gateway_routes:
        raise ConfigError(f"invalid serve config: no application imports {GATEWAY_IMPORT} with a "
                          f"'{GATEWAY_DEPLOYMENT}' deployment whose user_config lists models")
    for model, route in gateway_routes.items():
        for v in route.versions:
            if (model, v) not in served:
                raise ConfigError(
                    f"invalid serve config:\n  gateway user_config.models.{model}.versions: "
                    f"{model}:{v} has no application; add one named "
                    f"{version_app_name(model, v)!r} importing {VERSION_IMPORT}")
    if repository_check:
        for root in repos:
            repo = ModelRepository(root)
            for model, v in served:
                try:
                    repo.get(model, v)
                except Exception as e:
                    raise ConfigError(f"invalid serve config:\n  {served[(model, v)]}.args: {e}")
    return doc


def lanes_of(user_config: dict, cpus: float) -> int:
    """The lanes a version replica runs with, as far as its user_config says without the
    manifest: ``VersionConfig.layout`` for ONNX Runtime on CPU (given lanes, else 1 with
    intra_op_threads, else one per reserved CPU; other runtimes then run one lane with that
    many batches ready)."""
    from types import SimpleNamespace

    onnx_cpu = SimpleNamespace(name="?", version=0, runtime="onnxruntime", device="cpu")
    return VersionConfig.model_validate(user_config).layout(
        onnx_cpu, max(1, math.ceil(cpus - 1e-9)))[1]


def build_serve_config(repository: str, refs: list[tuple[str, int]], *, host: str = "127.0.0.1",
                       port: int = 8000, version_cpus: float = 1.0, gateway_cpus: float = 0.25,
                       gateway_replicas: int = 1, version_replicas: int = 1,
                       num_gpus: float = 0.0, threads: int | None = None,
                       runtime: dict[tuple[str, int], dict] | None = None) -> dict:
    """A serve config deploying these versions (the newest of each model is stable).
    ``runtime``: a version's replica ``user_config`` (VersionConfig), instead of ``threads``."""
    by_model: dict[str, list[int]] = {}
    for model, v in refs:
        by_model.setdefault(model, []).append(v)
    runtime = runtime or {}
    user = {ref: runtime.get(ref, {"intra_op_threads": threads} if threads else {})
            for ref in refs}
    # two batches in flight per lane of each model replica: one computing, the next one ready
    routes = {m: {"versions": {v: {"max_inflight_batches": 2 * version_replicas
                                   * lanes_of(user[(m, v)], version_cpus)}
                               for v in sorted(vs)},
                  "stable": max(vs)}
              for m, vs in by_model.items()}
    s = settings()
    apps = [{
        "name": GATEWAY_APP, "route_prefix": None, "import_path": GATEWAY_IMPORT,
        "args": {"repository": repository},
        "deployments": [{
            "name": GATEWAY_DEPLOYMENT, "num_replicas": gateway_replicas,
            # the gateway sheds load itself with clear 503s; let requests reach it
            "max_ongoing_requests": 4096,
            "ray_actor_options": {"num_cpus": gateway_cpus,
                                  "resources": {GATEWAY_RESOURCE: 1}},
            # a stopping replica drains its HTTP server: connections move away while it still
            # accepts, then requests in flight finish (serving.ingress)
            "graceful_shutdown_timeout_s": s.http_drain_accept_s + s.http_drain_timeout_s + 5,
            # a log line per request costs ~5% of the gateway's CPU; metrics count requests
            "logging_config": {"enable_access_log": False},
            "user_config": {"models": routes},
        }],
    }]
    for model, v in refs:
        name = version_app_name(model, v)
        actor = {"num_cpus": version_cpus}
        if num_gpus:
            actor["num_gpus"] = num_gpus
        apps.append({
            "name": name, "route_prefix": None, "import_path": VERSION_IMPORT,
            "args": {"repository": repository, "model": model, "version": v},
            "deployments": [{
                "name": name, "num_replicas": version_replicas, "max_ongoing_requests": 16,
                "ray_actor_options": actor, "logging_config": {"enable_access_log": False},
                "user_config": dict(user[(model, v)]),
            }],
        })
    # Serve's proxies are off: each gateway replica answers HTTP on http_options' host:port
    return {"proxy_location": "Disabled", "http_options": {"host": host, "port": port},
            "applications": apps}


def gateway_user_config(doc: dict) -> dict:
    """The gateway deployment's user_config inside a serve config (for in-place edits)."""
    for app in doc.get("applications", []):
        if app.get("import_path") == GATEWAY_IMPORT:
            for dep in app.get("deployments") or []:
                if dep.get("name") == GATEWAY_DEPLOYMENT:
                    return dep.setdefault("user_config", {})
    raise ConfigError(f"the serve config has no {GATEWAY_IMPORT} gateway deployment")
