"""Per-GPU utilization, memory and power through NVML (nvidia-ml-py), when a GPU is there."""

from __future__ import annotations

import logging
import os
import threading

from . import metrics as M

log = logging.getLogger("ray.serve.optiserve.gpu")


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
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = ([int(i) for i in visible.split(",") if i.strip().isdigit()] if visible
                   else list(range(pynvml.nvmlDeviceGetCount())))
        for i in indices:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            self._handles.append((str(i), name.decode() if isinstance(name, bytes) else name, h))
        if not self._handles:
            return False
        self.sample()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()
        return True

    def sample(self) -> None:
        import pynvml

        for index, name, h in self._handles:
            tags = {"gpu": index, "gpu_name": name}
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                self.recorder.set(M.GPU_UTILIZATION, tags, util.gpu / 100.0)
                self.recorder.set(M.GPU_MEMORY_USED, tags, float(mem.used))
                self.recorder.set(M.GPU_MEMORY_TOTAL, tags, float(mem.total))
                self.recorder.set(M.GPU_POWER, tags, pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
            except Exception as e:  # a query unsupported on this GPU must not stop the rest
                log.debug("NVML query failed for GPU %s: %s", index, e)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
