"""Optimizer benchmark: every minilm variant the optimizer built (every runtime, precision and
student), its throughput relative to torch fp32, measured in one run with the rounds interleaved
(variant A, B, C, ... then again), each measurement in its own fresh process (two runtimes'
thread pools in one process distort each other on a small machine), medians reported, with the
fidelity each variant was judged on: cosine min on the held-out rows no build step saw.

Shapes: batch 32 x 128 tokens and batch 1 x 16 tokens (real text, truncated/padded to length).
Targets: the chosen variant >= 7x torch fp32 at b32 within cosine min >= 0.98 on held-out rows
(stretch 9x with a distilled student); `optiserve optimize minilm` with its default variants
in <= 3 minutes.

    python -m benchmarks.optimizer_minilm [--rounds 5] [--threads N] [--json out.json]
                                          [-- extra optiserve optimize options]

It first runs the optimizer (in process, publishing nothing, keeping every candidate) and times
it; options after `--` go to it (e.g. `-- --students l3` to add a distilled student).

Measured here (2-core VM, AVX-512 + AMX, no other job; default variants with the `openvino`
extra; 2 threads per measurement; 3 interleaved rounds; held-out half of the 284 validation
sentences, split seed 0):

    variant              held-out cos min   b32x128 rows/s  ratio   b1x16 rows/s  ratio
    torch-fp32                     1.0000             43.3  1.00x           90.6  1.00x
    torch-int8-dynamic             0.8718             52.6  1.15x          189.4  2.09x
    onnx-fp32                      1.0000             34.1  0.79x          152.3  1.68x
    onnx-int8-dynamic              0.9822             66.7  1.61x          225.6  2.68x
    onnx-int8-static               0.9782             40.3  0.91x          154.2  1.76x
    openvino-fp32                  1.0000             38.4  0.84x          135.0  1.61x
    openvino-bf16 (chosen)         1.0000            113.8  2.50x          160.5  1.74x
    openvino-int8                  0.9827             92.6  2.23x          200.3  2.24x

    optimize took 449 s (target 180 s): the INT8 searches dominate (NNCF's accuracy control
    ~2 min, ONNX Runtime's fp32-node search), each bounded by --tune-seconds.

The chosen variant is 2.5x torch fp32 at b32x128, not the 7x target. bf16 on AMX is exact
here (cosine min 1.0000) and the fastest at batch 32; INT8 gains less on 128-token rows, where
attention (left in fp32/bf16) is a large share. A 3-layer distilled student (`-- --students
l3`, ~6 min of training on the built-in corpus) measured 1.7x the teacher in torch and 3.2x in
ONNX INT8 at 1 thread, but at held-out cosine min ~0.66, so it never passes the 0.98 budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np


from serving.runtimes import TextEncoder, available_cpus
from tests.support.optimize_args import optimize_args, split_passthrough
from tests.support.variant_rounds import optimize_timed

ROOT = Path(__file__).resolve().parent.parent


def inputs(enc: TextEncoder, texts: list[str], batch: int, tokens: int) -> dict[str, np.ndarray]:
    """``batch`` rows of exactly ``tokens`` real tokens (sentences concatenated, truncated)."""
    rows, i = [], 0
    cls, sep = enc.encode(["x"])[0][[0, -1]]
    while len(rows) < batch:
        ids: list[int] = []
        while len(ids) < tokens:
            ids += list(enc.encode([texts[i % len(texts)]])[0][1:-1])
            i += 1
        rows.append(np.array([cls, *ids[: tokens - 2], sep], dtype=np.int64))
    return enc.pad(rows)


def main() -> None:
    argv, extra = split_passthrough(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from optimizers.measure import measure_in_subprocess
    from optimizers.pipeline import _draft_manifest

    with tempfile.TemporaryDirectory(prefix="optiserve-bench-") as tmp:
        opts = optimize_args(extra)
        opts.keep_build = str(Path(tmp) / "build")
        print(f"optimizing minilm ({' '.join(extra) or 'default variants'}) ...", flush=True)
        result, ok, optimize_s = optimize_timed(opts)
        src = result.source
        enc = TextEncoder(src.extra_files[src.preprocessing.tokenizer_file], src.preprocessing)
        texts = [t.strip() for t in (ROOT / "optimizers/data/minilm_validation.txt")
                 .read_text().splitlines() if t.strip()]
        shapes = {"b32x128": (32, inputs(enc, texts, 32, 128)),
                  "b1x16": (1, inputs(enc, texts, 1, 16))}
        drafts = {o.name: _draft_manifest(src, o.build, o.candidate_dir, None, None, [])
                  for o in ok}
        samples = {(o.name, s): [] for o in ok for s in shapes}
        for r in range(args.rounds):
            for s, (size, feeds) in shapes.items():
                for o in ok:  # interleaved: every variant once per round, each in its process
                    m = measure_in_subprocess(drafts[o.name], o.candidate_dir, [],
                                              {size: [feeds]}, args.threads,
                                              min_time_s=args.seconds, min_iters=3)
                    samples[(o.name, s)].append(m.latency[0].throughput)
            print(f"round {r + 1}/{args.rounds} done", flush=True)

    base = "torch-fp32"
    med = {k: statistics.median(x) for k, x in samples.items()}
    ratio = {k: statistics.median([a / b for a, b in zip(samples[k], samples[(base, k[1])])])
             for k in samples if (base, k[1]) in samples}
    fid = {o.name: o.measurements.fidelity.cosine_min for o in ok}
    print(f"\nthreads {args.threads}; medians of {args.rounds} interleaved rounds, each "
          f"measurement in its own process; ratio = median of per-round ratios to {base}; "
          "cos min on the held-out rows")
    print(f"{'variant':34} {'cos min':>8} {'b32x128 rows/s':>15} {'ratio':>7} "
          f"{'b1x16 rows/s':>13} {'ratio':>7}")
    for o in ok:
        v = o.name
        print(f"{v:34} {fid[v]:8.4f} {med[(v, 'b32x128')]:15.1f} "
              f"{ratio.get((v, 'b32x128'), float('nan')):6.2f}x {med[(v, 'b1x16')]:13.1f} "
              f"{ratio.get((v, 'b1x16'), float('nan')):6.2f}x")
    for o in result.outcomes:
        if o.status != "ok":
            print(f"{o.name:34} {o.status}: {o.reason}")
    chosen = result.chosen
    out = {"threads": args.threads, "rounds": args.rounds, "optimize_seconds": optimize_s,
           "optimize_args": extra, "chosen": chosen, "held_out_cos_min": fid,
           "median_rows_per_s": {f"{v}/{s}": x for (v, s), x in med.items()},
           "ratio_to_torch_fp32": {f"{v}/{s}": x for (v, s), x in ratio.items()}}
    if chosen and (chosen, "b32x128") in ratio:
        print(f"\nchosen {chosen}: {ratio[(chosen, 'b32x128')]:.2f}x {base} at b32x128, held-out "
              f"cos min {fid[chosen]:.4f} (target >= 7x within 0.98; stretch 9x); optimize "
              f"{optimize_s:.0f} s (target <= 180 s with the default variants)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
