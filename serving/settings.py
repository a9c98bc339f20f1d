"""Every knob of optiserve in one place: limits, timeouts and defaults, each with its unit.

Each field reads ``OPTISERVE_<NAME>`` from the environment of the process that uses it (a
gateway or model replica, the rollout controller, the command line). On Kubernetes the chart
sets them on the pods; locally ``optiserve serve`` passes its own environment to Ray's workers.
Knobs that belong to a served version (its batching, its body limits) are defaults here and
can be set per version in the serve config (``user_config``), which wins.

``optiserve serve --help`` and the README list them (generated from this class,
:func:`describe`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "OPTISERVE_"
KiB, MiB = 1024, 1024 * 1024


def _group(name: str) -> dict:
    return {"group": name}


class Settings(BaseSettings):
    """optiserve's knobs. A wrong value fails at start with the variable named."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore",
                                      validate_default=True)

    # ---- model repository --------------------------------------------------------------------
    repository: str = Field(
        "model-repository", json_schema_extra=_group("repository"),
        description="Model repository directory (the --repository option wins).")
    stale_staging_s: PositiveFloat = Field(
        3600.0, json_schema_extra=_group("repository"),
        description="Seconds after which a publish's staging directory left by a killed "
                    "process is removed.")
    cache: str | None = Field(
        None, json_schema_extra=_group("repository"),
        description="Cache directory of generated data (the distillation corpus) "
                    "[default: ~/.cache/optiserve].")

    # ---- HTTP ingress (gateway replicas) ---------------------------------------------------
    listen: str | None = Field(
        None, json_schema_extra=_group("http"),
        description="host:port every gateway replica answers HTTP on (set by optiserve serve "
                    "from its --host/--port, by the chart from serve.port); unset: no HTTP.")
    http_max_connections: PositiveInt = Field(
        1000, json_schema_extra=_group("http"),
        description="Open connections per gateway replica; one more is answered 503 and "
                    "closed at once, so idle connections cannot crowd out connected clients.")
    http_max_header_bytes: PositiveInt = Field(
        64 * KiB, json_schema_extra=_group("http"),
        description="Request line and headers, bytes; more gets 431.")
    http_idle_timeout_s: PositiveFloat = Field(
        60.0, json_schema_extra=_group("http"),
        description="Seconds a connection with no request in progress stays open (keep-alive, "
                    "or one that never sends).")
    http_request_timeout_s: PositiveFloat = Field(
        60.0, json_schema_extra=_group("http"),
        description="Seconds from a request's first byte to its last; slower gets 408.")
    http_write_timeout_s: PositiveFloat = Field(
        60.0, json_schema_extra=_group("http"),
        description="Seconds a client may stop reading its answers before it is cut off.")
    http_linger_s: NonNegativeFloat = Field(
        30.0, json_schema_extra=_group("http"),
        description="Seconds the rest of a refused (413) body is read and dropped, so the "
                    "client, still sending, reads the 413 instead of a reset (nginx: 30 s).")
    http_linger_bytes: PositiveInt = Field(
        1024 * MiB, json_schema_extra=_group("http"),
        description="Bytes of a refused (413) body read and dropped at most.")
    http_drain_accept_s: NonNegativeFloat = Field(
        5.0, json_schema_extra=_group("http"),
        description="Seconds a draining gateway replica keeps accepting (health failing, every "
                    "answer closing its connection) so load balancers and clients move away "
                    "before its socket closes.")
    http_drain_timeout_s: PositiveFloat = Field(
        35.0, json_schema_extra=_group("http"),
        description="Seconds a draining gateway replica then waits for requests in flight "
                    "(keep it above the request timeout).")

    # ---- gRPC ingress (gateway replicas) ---------------------------------------------------
    grpc_listen: str | None = Field(
        None, json_schema_extra=_group("grpc"),
        description="host:port every gateway replica answers the OIP over gRPC on (set by "
                    "optiserve serve from its --host/--grpc-port, by the chart from "
                    "serve.grpcPort); unset: no gRPC.")
    grpc_max_concurrent_rpcs: PositiveInt = Field(
        1000, json_schema_extra=_group("grpc"),
        description="RPCs in progress per gateway replica (streams count as one); one more is "
                    "answered RESOURCE_EXHAUSTED at once.")
    grpc_max_connections: PositiveInt = Field(
        1000, json_schema_extra=_group("grpc"),
        description="Open gRPC connections per gateway replica; one more is closed as it is "
                    "accepted (the client sees UNAVAILABLE), so idle connections cannot crowd "
                    "out connected clients.")
    grpc_max_concurrent_streams: PositiveInt = Field(
        100, json_schema_extra=_group("grpc"),
        description="HTTP/2 streams one gRPC connection may have open at once.")
    grpc_stream_max_inflight: PositiveInt = Field(
        64, json_schema_extra=_group("grpc"),
        description="Requests of one ModelStreamInfer stream being answered at once; the "
                    "stream reads no more until its oldest is answered (answers keep order).")
    grpc_idle_timeout_s: PositiveFloat = Field(
        300.0, json_schema_extra=_group("grpc"),
        description="Seconds a gRPC connection with no RPC stays open.")
    grpc_keepalive_min_interval_s: PositiveFloat = Field(
        10.0, json_schema_extra=_group("grpc"),
        description="Shortest interval between a client's keepalive pings, seconds; a client "
                    "pinging faster is disconnected (after 2 strikes).")
    grpc_message_overhead_bytes: PositiveInt = Field(
        64 * KiB, json_schema_extra=_group("grpc"),
        description="Bytes a gRPC infer message may carry past max_body_bytes (names, shapes, "
                    "framing) before gRPC itself refuses it with RESOURCE_EXHAUSTED.")

    # ---- gateway -------------------------------------------------------------------------
    max_body_bytes: PositiveInt = Field(
        64 * MiB, json_schema_extra=_group("gateway"),
        description="Largest request body after decompression, bytes; more gets 413 "
                    "(serve config: the gateway's user_config.max_body_bytes wins).")
    max_element_bytes: PositiveInt = Field(
        64 * KiB, json_schema_extra=_group("gateway"),
        description="Largest element of a BYTES input (one text), bytes; more gets 413 "
                    "(serve config: user_config.max_element_bytes wins).")
    max_request_pixels: PositiveInt = Field(
        100_000_000, json_schema_extra=_group("gateway"),
        description="Most pixels (width x height, summed) of the encoded images of one "
                    "request to an image version, read from their headers before any is "
                    "decoded; more gets 413. Each image is also bounded by its version's "
                    "image_preprocessing.max_pixels, and an image element by max_body_bytes.")
    inline_text_bytes: PositiveInt = Field(
        16 * KiB, json_schema_extra=_group("gateway"),
        description="Text of a batch tokenized on the event loop up to this many bytes; "
                    "more goes to the gateway's worker threads.")
    inline_body_bytes: PositiveInt = Field(
        64 * KiB, json_schema_extra=_group("gateway"),
        description="Request bodies decoded on the event loop up to this many bytes; larger "
                    "or compressed ones in the worker threads.")
    gateway_worker_threads: PositiveInt = Field(
        2, json_schema_extra=_group("gateway"),
        description="Threads per gateway replica that decode and tokenize large requests.")
    openai_max_inputs: PositiveInt = Field(
        2048, json_schema_extra=_group("gateway"),
        description="Most inputs of one /v1/embeddings request (OpenAI's own limit); each "
                    "max_batch_size of them is one OIP request.")
    length_group_overhead_tokens: PositiveInt = Field(
        32, json_schema_extra=_group("gateway"),
        description="Cost of one more model call, in tokens of padding, when a batch of "
                    "texts is split into groups of similar length.")

    # ---- batching defaults (per version in the serve config) -----------------------------
    max_queue_rows: PositiveInt = Field(
        2048, json_schema_extra=_group("batching"),
        description="Rows allowed to wait per version; more gets 503 with Retry-After "
                    "(serve config: versions.N.max_queue_rows wins).")
    merge_batches: PositiveInt = Field(
        4, json_schema_extra=_group("batching"),
        description="While a version's model is busy, up to this many max_batch_size batches "
                    "of waiting rows go to it in one call, each model run still at most "
                    "max_batch_size rows: texts are regrouped by length (less padding: "
                    "MiniLM INT8 on one thread, 1.72 vs 2.01 ms of CPU per sentence over 32 vs "
                    "8 rows, measured), tensors cut in order (serve config: "
                    "versions.N.merge_batches wins).")
    max_inflight_batches: PositiveInt = Field(
        2, json_schema_extra=_group("batching"),
        description="Batches running at once per version and gateway replica "
                    "(serve config: versions.N.max_inflight_batches wins).")
    request_timeout_s: PositiveFloat = Field(
        30.0, json_schema_extra=_group("batching"),
        description="Seconds a request may take before it gets 504 "
                    "(serve config: versions.N.timeout_s wins).")
    model_stuck_after_s: PositiveFloat = Field(
        60.0, json_schema_extra=_group("batching"),
        description="Seconds a model replica may spend on one batch before its health check "
                    "fails (Serve replaces it) and it reports not ready; keep it above the "
                    "longest request timeout of the versions it serves.")

    # ---- sizing (optiserve serve with no sizing flags) -----------------------------------
    max_threads: PositiveInt = Field(
        4, json_schema_extra=_group("sizing"),
        description="Most CPUs per model replica the sizing rule gives (its intra-op threads, "
                    "or its single-thread lanes with ONNX Runtime on CPU).")
    gateway_cpus: PositiveFloat = Field(
        1.0, json_schema_extra=_group("sizing"),
        description="CPUs each gateway replica reserves on machines of 4 CPUs or more.")
    small_gateway_cpus: PositiveFloat = Field(
        0.25, json_schema_extra=_group("sizing"),
        description="CPUs each gateway replica reserves below 4 CPUs.")
    cpus_per_gateway: PositiveInt = Field(
        8, json_schema_extra=_group("sizing"),
        description="One gateway replica per this many CPUs (at least one, one per GPU).")

    # ---- local cluster (optiserve serve) -------------------------------------------------
    metrics_report_interval_ms: PositiveInt = Field(
        2000, json_schema_extra=_group("local"),
        description="How often Ray's workers export metrics, ms.")
    slow_startup_report_s: PositiveInt = Field(
        10, json_schema_extra=_group("local"),
        description="Seconds after which (and how often) Serve reports a replica it cannot "
                    "schedule, with the resources required and available, in its status (Ray's "
                    "RAY_SERVE_SLOW_STARTUP_WARNING_S and _PERIOD_S; Ray's default 30 s made a "
                    "rollout say why a canary waited only after 33 s, measured). The chart "
                    "sets 10.")
    serve_control_loop_interval_s: PositiveFloat = Field(
        0.1, json_schema_extra=_group("local"),
        description="Serve controller's reconcile period, seconds (Ray's default). Each step "
                    "of a deploy waits for it: 0.5 s made start-up ~0.5 s longer and saved "
                    "0.02 of a core idle (2 CPUs, measured).")

    # ---- rollout controller ---------------------------------------------------------------
    rollout_backoff_min_s: PositiveFloat = Field(
        1.0, json_schema_extra=_group("rollout"),
        description="First retry delay after a rollout's unexpected error, seconds "
                    "(doubles each time).")
    rollout_backoff_max_s: PositiveFloat = Field(
        60.0, json_schema_extra=_group("rollout"),
        description="Longest retry delay after repeated errors, seconds.")
    rollout_heartbeat_s: PositiveFloat = Field(
        5.0, json_schema_extra=_group("rollout"),
        description="Seconds between the runner's marks on a rollout it carries; a runner "
                    "silent for 3 heartbeats is taken for dead.")
    rollout_drain_s: PositiveFloat = Field(
        5.0, json_schema_extra=_group("rollout"),
        description="Seconds a version removed from routing keeps its application before "
                    "it is deleted (requests in flight finish).")
    rollout_min_window_scrapes: PositiveInt = Field(
        4, json_schema_extra=_group("rollout"),
        description="Analysis windows are at least this many scrape intervals long.")

    # ---- optimizer: the torch.compile variant (written into its compile.json) -------------
    compile_batch_buckets: Annotated[list[PositiveInt], NoDecode] = Field(
        [2, 4, 8, 16, 32, 64, 128, 256], min_length=1, json_schema_extra=_group("optimize"),
        description="Batch sizes (comma-separated) a torch-compile version pads each batch to; "
                    "each bucket and sequence bucket is one CUDA graph. No 1: torch compiles "
                    "size-1 dimensions separately, so a single row runs padded to 2.")
    compile_min_seq_bucket: PositiveInt = Field(
        16, json_schema_extra=_group("optimize"),
        description="Smallest sequence bucket of a torch-compile text model; the buckets "
                    "double from it up to the model's max_length (tokens).")

    @field_validator("compile_batch_buckets", mode="before")
    @classmethod
    def _int_list(cls, v):
        if isinstance(v, str):  # "2,4,8" (environment variables)
            v = [p for p in v.replace(" ", "").strip("[]").split(",") if p]
        return v

    @field_validator("compile_batch_buckets")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        return sorted(set(v))

    # ---- tune -----------------------------------------------------------------------------
    tune_keep_up: float = Field(
        0.9, gt=0, le=1, json_schema_extra=_group("tune"),
        description="An open-loop step counts only when it served this share of the "
                    "offered rate.")
    tune_max_failed_applies: PositiveInt = Field(
        3, json_schema_extra=_group("tune"),
        description="Configurations in a row that cannot be applied before the tune stops.")


class SettingsError(ValueError):
    """An OPTISERVE_* variable that cannot be used; the message names it and says why."""


@lru_cache(maxsize=1)
def settings() -> Settings:
    """This process's settings, read from the environment once."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        raise SettingsError("; ".join(
            f"{env_name(str(err['loc'][0]))}={err.get('input')!r}: {err['msg']}"
            for err in e.errors())) from None


def reload() -> Settings:
    """Read the environment again (tests that change it, a process that set it late)."""
    settings.cache_clear()
    return settings()


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def describe() -> list[tuple[str, str, str, str]]:
    """(group, environment variable, default, description) of every knob."""
    rows = []
    for name, f in Settings.model_fields.items():
        extra = f.json_schema_extra or {}
        default = f.default
        if isinstance(default, int) and not isinstance(default, bool) and default >= KiB \
                and default % KiB == 0 and name.endswith("bytes"):
            shown = f"{default // MiB} MiB" if default % MiB == 0 else f"{default // KiB} KiB"
        else:
            shown = "unset" if default is None else f"{default:g}" if isinstance(
                default, float) else ",".join(map(str, default)) if isinstance(
                default, list) else str(default)
        rows.append((extra.get("group", ""), env_name(name), shown, f.description or ""))
    return rows


def help_text() -> str:
    """The knobs as lines for a command's help."""
    return "\n\n".join(f"{env} [{default}]: {desc}" for _g, env, default, desc in describe())


def markdown_table() -> str:
    """The knobs as the README's table."""
    lines = ["| variable | default | what |", "|---|---|---|"]
    lines += [f"| `{env}` | {default} | {desc} |" for _g, env, default, desc in describe()]
    return "\n".join(lines)


__all__ = ["Settings", "SettingsError", "settings", "reload", "describe", "env_name", "help_text",
           "markdown_table"]
