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

    @property
    def prom(self) -> str:
        """The Prometheus metric family name (add ``_bucket``/``_sum``/``_count`` to histograms)."""
        return RAY_PREFIX + self.name + ("_total" if self.kind == "counter" else "")


MV = ("model", "version")

REQUESTS = MetricSpec(
    "optiserve_requests", "counter",
    "Inference requests by outcome (success, client_error, server_error, overloaded, timeout).",
    (*MV, "outcome", "code"))
ROWS = MetricSpec("optiserve_rows", "counter", "Rows (inferences) processed successfully.", MV)
REQUEST_DURATION = MetricSpec(
    "optiserve_request_duration_seconds", "histogram",
    "End-to-end request latency in the gateway, from receipt to response.", MV,
    tuple(LATENCY_BUCKETS_S))
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
GPU_UTILIZATION = MetricSpec(
    "optiserve_gpu_utilization_ratio", "gauge", "GPU utilization (0-1).", ("gpu", "gpu_name"))
GPU_MEMORY_USED = MetricSpec(
    "optiserve_gpu_memory_used_bytes", "gauge", "GPU memory used.", ("gpu", "gpu_name"))
GPU_MEMORY_TOTAL = MetricSpec(
    "optiserve_gpu_memory_total_bytes", "gauge", "GPU memory in total.", ("gpu", "gpu_name"))
GPU_POWER = MetricSpec("optiserve_gpu_power_watts", "gauge", "GPU power draw.", ("gpu", "gpu_name"))

ALL: tuple[MetricSpec, ...] = (
    REQUESTS, ROWS, REQUEST_DURATION, QUEUE_WAIT, COMPUTE, BATCH_SIZE, INFLIGHT, QUEUE_ROWS,
    LOAD_TIME, TRAFFIC_WEIGHT, SHADOW_REQUESTS, SHADOW_AGREEMENT, GPU_UTILIZATION,
    GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_POWER,
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
