"""How ``optiserve serve`` lays out a machine when no flags say otherwise.

The rule (also in ``optiserve serve --help`` and the README; its numbers are settings,
``serving.settings``):

- **Gateway**: one replica per ``OPTISERVE_CPUS_PER_GATEWAY`` (8) CPUs (at least 1) —
  tokenization, batching and the HTTP path are Python and use about one core at a few thousand
  requests per second. With GPUs, one per GPU at least: the model is fast there and the ingress
  is what limits.
- **Model**: every CPU the gateway does not need goes to the model replicas of the served
  versions, shared equally between versions: ``floor(C - gateway)`` CPUs per version (at least
  1), in replicas of at most ``OPTISERVE_MAX_THREADS`` (4) CPUs each (ONNX Runtime's scaling
  on one small batch flattens past a few threads, while independent replicas keep scaling), so
  ``threads = min(max_threads, cpus)`` and ``replicas = cpus // threads`` (``threads``: the
  replica's CPUs, run as lanes or intra-op threads, below).
  With GPUs, one replica per GPU per version.
- **Lanes**: a replica running ONNX Runtime on CPU runs its ``threads`` CPUs as that many
  single-thread lanes (batches at once on one shared session, ``VersionConfig.layout``) rather
  than one batch on that many intra-op threads: one thread per call costs the least CPU per
  row (MiniLM INT8, 32-row batches: 1.72 ms per sentence on 1 thread vs 2.01 on 2), with one
  copy of the model in memory. ``--threads`` (and other runtimes, GPUs) keeps one batch at a
  time on that many threads.
- On small machines the gateway's share is not reserved whole: below 4 CPUs it reserves
  ``OPTISERVE_SMALL_GATEWAY_CPUS`` (0.25) and the model replicas take the rest rounded up (the
  gateway's and the model's busy times interleave).

Every field can be overridden (``--replicas``, ``--threads``, ``--cpus-per-replica``,
``--gateway-replicas``, ``--gpus-per-replica``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from serving.settings import settings



@dataclass(frozen=True)
class Layout:
    cpus: float
    gpus: int
    gateway_replicas: int
    gateway_cpus: float
    version_replicas: int
    threads: int
    cpus_per_replica: float
    gpus_per_replica: float

    def describe(self, versions: int = 1) -> str:
        gpu = f", {self.gpus_per_replica:g} GPU" if self.gpus_per_replica else ""
        return (f"{self.cpus:g} CPUs{f', {self.gpus} GPUs' if self.gpus else ''}: gateway "
                f"{self.gateway_replicas} x {self.gateway_cpus:g} CPU; per served version "
                f"{self.version_replicas} replica(s) x {self.threads} thread(s) "
                f"({self.cpus_per_replica:g} CPU{gpu} each)"
                + (f"; {versions} versions" if versions > 1 else ""))


def machine_cpus() -> float:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = float(os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1.0, float(quota) / float(period)))
    except (OSError, ValueError):
        pass
    return n


def plan(cpus: float, gpus: int = 0, versions: int = 1, *, replicas: int | None = None,
         threads: int | None = None, cpus_per_replica: float | None = None,
         gateway_replicas: int | None = None, gpus_per_replica: float | None = None) -> Layout:
    """The layout for a machine of ``cpus`` CPUs and ``gpus`` GPUs serving ``versions`` model
    versions; any argument given overrides what the rule would choose."""
    if cpus <= 0:
        raise ValueError(f"cpus must be positive, got {cpus}")
    versions = max(1, versions)
    s = settings()
    max_threads = s.max_threads
    gw_cpus = s.gateway_cpus if cpus >= 4 else s.small_gateway_cpus
    gw = gateway_replicas or max(1, math.floor(cpus / s.cpus_per_gateway), gpus)
    if gpus:
        per_gpu = gpus_per_replica if gpus_per_replica is not None else 1.0
        r = replicas or max(1, math.floor(gpus / versions / per_gpu))
        model_cpus = max(1.0, (cpus - gw * gw_cpus) / versions / r)
        t = threads or max(1, min(max_threads, math.floor(model_cpus)))
        return Layout(cpus, gpus, gw, gw_cpus, r, t, cpus_per_replica or float(t), per_gpu)
    spare = cpus - gw * gw_cpus
    per_version = max(1, (math.ceil(spare - 1e-9) if cpus < 4 else math.floor(spare + 1e-9))
                      // versions)
    if cpus_per_replica is not None:
        t = threads or max(1, math.ceil(cpus_per_replica - 1e-9))
        r = replicas or max(1, math.floor(per_version / cpus_per_replica + 1e-9))
        return Layout(cpus, 0, gw, gw_cpus, r, t, cpus_per_replica, 0.0)
    if replicas is not None:
        t = threads or max(1, math.ceil(per_version / replicas))
        r = replicas
    elif threads is not None:
        t, r = threads, max(1, per_version // threads)
    else:  # as few replicas as keep threads <= max_threads, the CPUs spread evenly over them
        r = math.ceil(per_version / max_threads)
        t = math.ceil(per_version / r)
    # what each replica reserves from Ray: its share of the spare CPUs, so the whole layout
    # fits in what Ray sees (threads may exceed it by a fraction of a core)
    reserve = math.floor(min(float(t), max(spare, 1.0) / versions / r) * 100) / 100
    return Layout(cpus, 0, gw, gw_cpus, r, t, reserve, 0.0)
