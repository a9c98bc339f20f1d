"""Per-GPU utilization, memory and power through NVML (nvidia-ml-py), when a GPU is there.

The devices are the ones this process sees: ``CUDA_VISIBLE_DEVICES`` as CUDA reads it (indices,
``GPU-<uuid>``, ``MIG-<uuid>``, or unset: every GPU, and every MIG instance of a GPU in MIG
mode), each labelled by its NVML UUID, so replicas sharing a GPU report the same series and
dashboards can take one of them. MIG instances get memory only: NVML has no utilization or
power per instance (the chart's dashboards read dcgm-exporter's for that).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from . import metrics as M

log = logging.getLogger("ray.serve.optiserve.gpu")


@dataclass(frozen=True)
class Device:
    ordinal: str  # CUDA's index of the device in this process
    uuid: str
    name: str
    handle: object
    mig: bool


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _mig_devices(pynvml, parent) -> list:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(parent)
    except Exception:  # not MIG-capable
        return []
    if current != getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    out = []
    for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
        try:
            out.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i))
        except Exception:  # an empty slot
            continue
    return out


def visible_devices(pynvml, cuda_visible: str | None) -> list[Device]:
    """The GPUs (and MIG instances) CUDA shows this process, in CUDA's order."""
    handles: list[tuple[object, bool]] = []
    if cuda_visible is None:
        for i in range(pynvml.nvmlDeviceGetCount()):
            parent = pynvml.nvmlDeviceGetHandleByIndex(i)
            migs = _mig_devices(pynvml, parent)
            handles += [(h, True) for h in migs] if migs else [(parent, False)]
    else:
        for entry in (e.strip() for e in cuda_visible.split(",")):
            if not entry:
                break  # CUDA stops at the first empty or invalid entry
            if entry.isdigit():
                handles.append((pynvml.nvmlDeviceGetHandleByIndex(int(entry)), False))
            elif entry.startswith(("GPU-", "MIG-")):
                handles.append((pynvml.nvmlDeviceGetHandleByUUID(entry.encode()),
                                entry.startswith("MIG-")))
            else:
                break
    return [Device(str(i), _text(pynvml.nvmlDeviceGetUUID(h)), _text(pynvml.nvmlDeviceGetName(h)),
                   h, mig) for i, (h, mig) in enumerate(handles)]


class GpuSampler:
    """Samples the GPUs this process sees every ``interval_s`` into the GPU gauges."""

    def __init__(self, recorder, interval_s: float = 5.0):
        self.recorder = recorder
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles = []

    def start(self) -> bool:
        """Start sampling; False (and nothing started) when NVML or a GPU is missing."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # no driver, no package: no GPU metrics
            log.info("GPU metrics off: %s", e)
            return False
        try:
            self._handles = visible_devices(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
        except Exception as e:
            log.warning("GPU metrics off: cannot resolve the visible GPUs: %s", e)
            return False
        if not self._handles:
            return False
        self.sample()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()
        return True

    def sample(self) -> None:
        import pynvml

        for dev in self._handles:
            tags = {"gpu": dev.ordinal, "gpu_uuid": dev.uuid, "gpu_name": dev.name}
            h = dev.handle
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                self.recorder.set(M.GPU_MEMORY_USED, tags, float(mem.used))
                self.recorder.set(M.GPU_MEMORY_TOTAL, tags, float(mem.total))
            except Exception as e:  # a query unsupported on this GPU must not stop the rest
                log.debug("NVML memory query failed for GPU %s: %s", dev.uuid, e)
            if dev.mig:  # NVML has no utilization or power per MIG instance (dcgm-exporter has)
                continue
            for spec, query in ((M.GPU_UTILIZATION,
                                 lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0),
                                (M.GPU_POWER,
                                 lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0)):
                try:
                    self.recorder.set(spec, tags, query())
                except Exception as e:
                    log.debug("NVML query failed for GPU %s: %s", dev.uuid, e)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
