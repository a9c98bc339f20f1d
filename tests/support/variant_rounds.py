"""Shared by the benchmarks that optimize a model and compare its variants: one optimize run,
then every variant's throughput at one batch size measured round after round (every variant
once per round, each measurement in its own fresh process), and the medians."""

from __future__ import annotations

import statistics
import time


def optimize_timed(opts):
    """(optimize result, the outcomes built successfully, optimize seconds), said as it goes."""
    from optimizers import optimize

    t0 = time.perf_counter()
    result = optimize(opts)
    optimize_s = time.perf_counter() - t0
    print(f"optimize took {optimize_s:.0f} s; chosen {result.chosen}", flush=True)
    return result, [o for o in result.outcomes if o.status == "ok"], optimize_s


def optimize_and_measure(opts, size: int, n_batches: int, rounds: int, threads: int,
                         seconds: float):
    """(optimize result, {variant: [rows/s per round]}, optimize seconds) for the variants the
    run built successfully, at batch ``size`` over ``n_batches`` validation batches."""
    from optimizers.measure import measure_in_subprocess
    from optimizers.pipeline import _draft_manifest
    from optimizers.validation import load_validation

    result, ok, optimize_s = optimize_timed(opts)
    src = result.source
    vset = load_validation(src, None, None)
    batches = [vset.bench_batch(size, i) for i in range(n_batches)]
    drafts = {o.name: _draft_manifest(src, o.build, o.candidate_dir, None, None, []) for o in ok}
    samples = {o.name: [] for o in ok}
    for r in range(rounds):
        for o in ok:  # interleaved: every variant once per round, each in its process
            m = measure_in_subprocess(drafts[o.name], o.candidate_dir, [], {size: batches},
                                      threads, min_time_s=seconds, min_iters=3)
            samples[o.name].append(m.latency[0].throughput)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return result, samples, optimize_s


def medians_and_ratios(samples: dict[str, list[float]], base: str):
    """Median rows/s per variant, and each variant's median per-round ratio to ``base``."""
    med = {k: statistics.median(x) for k, x in samples.items()}
    ratio = {k: statistics.median([a / b for a, b in zip(samples[k], samples[base])])
             for k in samples if base in samples}
    return med, ratio
