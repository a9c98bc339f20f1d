"""Every metric optiserve exports: names, kinds, labels and buckets, defined once.

Serving code records them through ``ray.serve.metrics`` (so they reach Ray's Prometheus endpoint
with ``application``, ``deployment`` and ``replica`` labels added by Serve). Ray exports a custom
metric ``X`` as ``ray_X`` (counters as ``ray_X_total``): :attr:`MetricSpec.prom` is the name that
dashboards, alert rules and the rollout analysis query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
#: Agreement is near 1 for a faithful canary; resolution where it matters.
AGREEMENT_BUCKETS = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0]
#: Ray's exporter puts this before every custom metric's name.
RAY_PREFIX = "ray_"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] | None = None
    #: Recorded inside Ray (prefixed ``ray_`` on export) or by prometheus-client directly.
    ray: bool = True

    @property
    def prom(self) -> str:
        """The Prometheus metric family name (add ``_bucket``/``_sum``/``_count`` to histograms)."""
        prefix = RAY_PREFIX if self.ray else ""
        return prefix + self.name + ("_total" if self.kind == "counter" else "")


MV = ("model", "version")

#: Outcomes whose duration is the server's doing, so latency objectives (the rollout's p99
#: check, the dashboards' quantiles, the p99 alert) are computed over these: a 504 counts at the
#: time it took, while instant refusals (client_error, overloaded) and requests the client gave
#: up on (cancelled) would only pull the quantile down (or reflect the client).
LATENCY_OUTCOMES = ("success", "server_error", "timeout")
LATENCY_MATCHER = f'outcome=~"{"|".join(LATENCY_OUTCOMES)}"'

#: How a request reached the gateway: the OIP over REST (``http``), the OIP over gRPC (``grpc``),
#: or the OpenAI-compatible ``/v1/embeddings`` (``openai``; one per OIP request it makes, a long
#: input list being split at the version's max_batch_size). Only the per-request series carry it;
#: every query that judges a version (the rollout's checks, the alerts) sums over it.
PROTOCOLS = ("http", "grpc", "openai")

REQUESTS = MetricSpec(
    "optiserve_requests", "counter",
    "Inference requests by outcome (success, client_error, server_error, overloaded, timeout, "
    "cancelled) and protocol (http, grpc, openai).",
    (*MV, "outcome", "code", "protocol"))
ROWS = MetricSpec("optiserve_rows", "counter", "Rows (inferences) processed successfully.", MV)
REQUEST_DURATION = MetricSpec(
    "optiserve_request_duration_seconds", "histogram",
    "End-to-end request latency in the gateway, from receipt to response, by outcome (every "
    "outcome is timed: success, client_error, server_error, overloaded, timeout, cancelled) "
    "and protocol (http, grpc, openai).",
    (*MV, "outcome", "protocol"), tuple(LATENCY_BUCKETS_S))
QUEUE_WAIT = MetricSpec(
    "optiserve_queue_wait_seconds", "histogram",
    "Time a request waited in the batcher before its batch was dispatched.", MV,
    tuple(LATENCY_BUCKETS_S))
COMPUTE = MetricSpec(
    "optiserve_compute_seconds", "histogram",
    "Model compute time per batch in the version replica.", MV, tuple(LATENCY_BUCKETS_S))
BATCH_SIZE = MetricSpec(
    "optiserve_batch_size", "histogram", "Rows per dispatched batch.", MV,
    tuple(float(b) for b in BATCH_BUCKETS))
INFLIGHT = MetricSpec(
    "optiserve_inflight_requests", "gauge", "Requests received and not yet answered.", MV)
QUEUE_ROWS = MetricSpec(
    "optiserve_queue_rows", "gauge", "Rows waiting in the batcher queue.", MV)
LOAD_TIME = MetricSpec(
    "optiserve_model_load_seconds", "gauge", "Time the replica took to load the version.", MV)
TRAFFIC_WEIGHT = MetricSpec(
    "optiserve_traffic_weight", "gauge",
    "Share of a model's traffic (0-100) routed to a version, by role (stable, canary).",
    (*MV, "role"))
SHADOW_REQUESTS = MetricSpec(
    "optiserve_shadow_requests", "counter",
    "Requests mirrored to the canary, by outcome (compared, dropped, failed).",
    ("model", "stable", "canary", "outcome"))
SHADOW_AGREEMENT = MetricSpec(
    "optiserve_shadow_agreement", "histogram",
    "Per-row agreement of canary with stable on mirrored requests (cosine for embeddings, "
    "1/0 top-1 match for classifiers).", ("model", "stable", "canary"), tuple(AGREEMENT_BUCKETS))
# Exact sums beside the histograms whose mean is used (mean batch size, compute per row, mean
# agreement): Ray rebuilds a histogram's ``_sum`` from bucket midpoints when it exports it
# (measured: 73 rows in 12 batches exported as batch_size_sum 69; one top-1 mismatch as 0.25),
# while its ``_count`` and buckets are exact. Recorded when the histogram is (once per batch or
# comparison), not summed like the other counters, so that both reach Prometheus together.
BATCH_ROWS = MetricSpec(
    "optiserve_batch_rows", "counter",
    "Rows in dispatched batches, summed exactly (mean batch size: this over "
    "optiserve_batch_size_count).", MV)
COMPUTE_TIME = MetricSpec(
    "optiserve_compute_time_seconds", "counter",
    "Model compute time of all batches, summed exactly (per row: this over "
    "optiserve_batch_rows_total).", MV)
SHADOW_AGREEMENT_SUM = MetricSpec(
    "optiserve_shadow_agreement_score", "counter",
    "Per-row agreement scores of compared shadow rows, summed exactly (mean agreement: this "
    "over optiserve_shadow_agreement_count).", ("model", "stable", "canary"))
#: histogram name -> its exact sum (use it for means: sum over the histogram's _count)
EXACT_SUM = {BATCH_SIZE.name: BATCH_ROWS, COMPUTE.name: COMPUTE_TIME,
             SHADOW_AGREEMENT.name: SHADOW_AGREEMENT_SUM}
_WITH_HISTOGRAM = frozenset(EXACT_SUM.values())
PREDICTED_COMPUTE = MetricSpec(
    "optiserve_predicted_compute_seconds", "gauge",
    "Compute time per batch the optimizer measured for a version (its manifest), by batch size "
    "and quantile (0.5, 0.99): what a canary's observed compute is compared with.",
    (*MV, "batch_size", "quantile"))
#: gpu: CUDA's index in the replica; gpu_uuid: NVML's UUID (GPU-... / MIG-...), the same for
#: every replica sharing the device
GPU_LABELS = ("gpu", "gpu_uuid", "gpu_name")
GPU_UTILIZATION = MetricSpec(
    "optiserve_gpu_utilization_ratio", "gauge", "GPU utilization (0-1).", GPU_LABELS)
GPU_MEMORY_USED = MetricSpec(
    "optiserve_gpu_memory_used_bytes", "gauge", "GPU memory used.", GPU_LABELS)
GPU_MEMORY_TOTAL = MetricSpec(
    "optiserve_gpu_memory_total_bytes", "gauge", "GPU memory in total.", GPU_LABELS)
GPU_POWER = MetricSpec("optiserve_gpu_power_watts", "gauge", "GPU power draw.", GPU_LABELS)

# ---- the rollout controller (its own process, prometheus-client, its own /metrics) -------------
ROLLOUT = ("model",)
ROLLOUT_PHASE = MetricSpec(
    "optiserve_rollout_phase", "gauge",
    "1 for the rollout's current phase (pending, progressing, inconclusive, promoted, "
    "rolled_back, aborted).",
    (*ROLLOUT, "phase"), ray=False)
ROLLOUT_WEIGHT = MetricSpec(
    "optiserve_rollout_canary_weight", "gauge", "Percent of traffic the controller gives the "
    "canary.", (*ROLLOUT, "stable", "canary"), ray=False)
ROLLOUT_STEP = MetricSpec(
    "optiserve_rollout_step", "gauge", "Index of the current step (0-based).", ROLLOUT, ray=False)
ROLLOUT_CHECK_VALUE = MetricSpec(
    "optiserve_rollout_check_value", "gauge", "Last measured value of each analysis check "
    "(error_rate, p99_ms, p99_ratio, agreement, requests).", (*ROLLOUT, "check"), ray=False)
ROLLOUT_CHECK_PASSED = MetricSpec(
    "optiserve_rollout_check_passed", "gauge", "1 if the check passed at the last analysis, "
    "0 if it failed, -1 if there was not enough data.", (*ROLLOUT, "check"), ray=False)
ROLLOUT_FAILURES = MetricSpec(
    "optiserve_rollout_failed_checks", "gauge", "Failed analyses counted against the failure "
    "budget in the current rollout.", ROLLOUT, ray=False)
ROLLOUT_ERRORS = MetricSpec(
    "optiserve_rollout_errors", "counter", "Errors the controller retried, by kind (target: "
    "the serving target could not be read or changed; unexpected: anything else, retried with "
    "backoff; store: the state could not be read; drift: the target's split had been changed "
    "behind its back and was re-applied; unconfirmed: the gateway did not report a new split "
    "in time).", (*ROLLOUT, "kind"), ray=False)
ROLLOUT_TRANSITIONS = MetricSpec(
    "optiserve_rollout_transitions", "counter", "Phase transitions.",
    (*ROLLOUT, "from_phase", "to_phase"), ray=False)

ALL: tuple[MetricSpec, ...] = (
    REQUESTS, ROWS, REQUEST_DURATION, QUEUE_WAIT, COMPUTE, BATCH_SIZE, INFLIGHT, QUEUE_ROWS,
    LOAD_TIME, TRAFFIC_WEIGHT, SHADOW_REQUESTS, SHADOW_AGREEMENT, BATCH_ROWS, COMPUTE_TIME,
    SHADOW_AGREEMENT_SUM, PREDICTED_COMPUTE,
    GPU_UTILIZATION,
    GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_POWER, ROLLOUT_PHASE, ROLLOUT_WEIGHT, ROLLOUT_STEP,
    ROLLOUT_CHECK_VALUE, ROLLOUT_CHECK_PASSED, ROLLOUT_FAILURES, ROLLOUT_ERRORS,
    ROLLOUT_TRANSITIONS,
)


class Recorder:
    """Creates the ``ray.serve.metrics`` objects for the specs it is asked for (in a replica)."""

    def __init__(self):
        self._objs: dict[str, object] = {}

    def get(self, spec: MetricSpec):
        obj = self._objs.get(spec.name)
        if obj is None:
            from ray.serve import metrics as m

            if spec.kind == "counter":
                obj = m.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
            elif spec.kind == "gauge":
                obj = m.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
            else:
                obj = m.Histogram(spec.name, description=spec.description,
                                  boundaries=list(spec.boundaries), tag_keys=spec.tag_keys)
            self._objs[spec.name] = obj
        return obj

    def inc(self, spec: MetricSpec, tags: dict[str, str], value: float = 1.0) -> None:
        self.get(spec).inc(value, tags)

    def observe(self, spec: MetricSpec, tags: dict[str, str], value: float) -> None:
        self.get(spec).observe(value, tags)

    def set(self, spec: MetricSpec, tags: dict[str, str], value: float) -> None:
        self.get(spec).set(value, tags)

    def forget(self, spec: MetricSpec, tags: dict[str, str]) -> None:
        """Stop reporting a gauge series (Ray drops it once it is not refreshed)."""

    def _zero(self, spec: MetricSpec, tags: dict[str, str], _value: float = 0.0) -> None:
        """Export a counter series at 0 (``Counter.inc`` takes only increments > 0): the same
        record ``inc`` makes, of 0, with Serve's replica tags added as ``inc`` adds them."""
        from ray.serve.metrics import _add_serve_context_tag_values

        obj = self.get(spec)
        tags = dict(tags)
        _add_serve_context_tag_values(obj._tag_keys, tags)
        obj._record(0.0, tags)


class BufferedRecorder(Recorder):
    """Counters and gauges kept in plain dicts and pushed every ``interval_s`` by a background
    thread; histograms go straight through.

    Two reasons: per-request metric calls cost ~6 µs each in a replica (profiled: a request
    touching nine metrics spent ~10% of the gateway's CPU on them), and Ray drops a gauge that
    is not set again within two export intervals, so gauges must be re-sent periodically.
    """

    def __init__(self, interval_s: float = 1.0):
        import threading

        super().__init__()
        self._counts: dict[tuple, float] = {}
        self._gauges: dict[tuple, float] = {}
        #: counter series already exported (at 0 or more)
        self._exported: set[tuple] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,),
                                        name="metrics-flush", daemon=True)
        self._thread.start()

    @staticmethod
    def _key(spec: MetricSpec, tags: dict[str, str]) -> tuple:
        return (spec, tuple(sorted(tags.items())))

    def inc(self, spec: MetricSpec, tags: dict[str, str], value: float = 1.0) -> None:
        if spec in _WITH_HISTOGRAM:
            # an exact sum goes out with its histogram's count, or their ratio (a mean over a
            # window) is skewed by the push interval: measured 0.26 for a mean of 0.99
            if value > 0:
                Recorder.inc(self, spec, tags, value)
            return
        key = self._key(spec, tags)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + value

    def set(self, spec: MetricSpec, tags: dict[str, str], value: float) -> None:
        self._gauges[self._key(spec, tags)] = value

    def forget(self, spec: MetricSpec, tags: dict[str, str]) -> None:
        self._gauges.pop(self._key(spec, tags), None)

    def flush(self) -> None:
        """Push the summed counters and every gauge. Each series on its own: one that Ray
        refuses must not cost the others.

        A counter series that was zero-initialised (``inc(spec, tags, 0)``) is exported at 0
        before its first event: Prometheus' ``increase()`` only counts what happens after a
        series' first sample, so a series born at N would lose its first N events, the first
        errors of a canary at its first step among them. Ray's ``Counter.inc`` refuses 0, so
        the zero goes in as a raw record of 0."""
        with self._lock:
            counts, self._counts = self._counts, {}
        for key, value in counts.items():
            spec, tags = key
            if value > 0:
                self._push(Recorder.inc, spec, tags, value)
                self._exported.add(key)
            elif key not in self._exported:
                self._push(Recorder._zero, spec, tags, 0.0)
                self._exported.add(key)
        for (spec, tags), value in list(self._gauges.items()):
            self._push(Recorder.set, spec, tags, value)

    def _push(self, record, spec: MetricSpec, tags: tuple, value: float) -> None:
        try:
            record(self, spec, dict(tags), value)
        except Exception as e:  # metrics must never take the replica down
            import logging

            logging.getLogger("ray.serve.optiserve").warning(
                "metric %s %s not recorded: %s", spec.name, dict(tags), e)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except Exception:  # metrics must never take the replica down
                pass
