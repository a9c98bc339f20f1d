"""Run a built variant the way serving will, in a fresh process: outputs, latency, memory.

Each variant runs in its own spawned process so that its peak RSS and load time are its own and
a variant that crashes (or hangs) is reported as failed instead of taking the run down.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import resource
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.repository import LatencyPoint, Manifest


@dataclass
class MeasureResult:
    outputs: list[dict[str, np.ndarray]]
    latency: list[LatencyPoint]
    load_time_s: float
    peak_rss_mb: float
    providers: list[str]
    threads: int
    host: str


def _percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def _measure(manifest_json: str, version_dir: str, eval_batches, bench_batches, threads: int,
             min_time_s: float, min_iters: int, max_iters: int) -> MeasureResult:
    from serving.runtimes import RuntimeOptions, load_runtime

    manifest = Manifest.model_validate_json(manifest_json)
    runtime = load_runtime(manifest, Path(version_dir), RuntimeOptions(intra_op_threads=threads))
    outputs = [runtime.run(b) for b in eval_batches]
    latency = []
    for size, batches in bench_batches.items():
        for b in batches[:2]:  # warm-up, also lets TensorRT/cuDNN pick kernels
            runtime.run(b)
        samples: list[float] = []
        widths: list[int] = []
        start = time.perf_counter()
        i = 0
        while i < max_iters and (i < min_iters or time.perf_counter() - start < min_time_s):
            b = batches[i % len(batches)]
            t0 = time.perf_counter()
            runtime.run(b)
            samples.append(time.perf_counter() - t0)
            first = next(iter(b.values()))
            widths.append(first.shape[1] if first.ndim > 1 else 1)
            i += 1
        latency.append(LatencyPoint(
            batch_size=size,
            seq_len=int(np.mean(widths)) if manifest.preprocessing else None,
            p50_ms=_percentile(samples, 50), p95_ms=_percentile(samples, 95),
            p99_ms=_percentile(samples, 99),
            throughput=size / float(np.mean(samples)), iterations=len(samples),
        ))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return MeasureResult(outputs, latency, runtime.load_time_s, peak_kb / 1024.0,
                         list(runtime.providers), threads, socket.gethostname())


def measure_in_subprocess(manifest: Manifest, version_dir: Path, eval_batches, bench_batches,
                          threads: int, min_time_s: float = 1.0, min_iters: int = 10,
                          max_iters: int = 2000, timeout_s: float = 900.0) -> MeasureResult:
    """Measure in a fresh spawned process; raise RuntimeError with the child's error."""
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        fut = pool.submit(_measure, manifest.model_dump_json(), str(version_dir), eval_batches,
                          bench_batches, threads, min_time_s, min_iters, max_iters)
        try:
            return fut.result(timeout=timeout_s)
        except cf.process.BrokenProcessPool as e:
            raise RuntimeError("the measuring process crashed (killed or segfault)") from e
        except cf.TimeoutError as e:
            for p in pool._processes.values():  # noqa: SLF001 - no public way to kill a hung child
                p.kill()
            raise RuntimeError(f"measuring took longer than {timeout_s:.0f} s") from e
