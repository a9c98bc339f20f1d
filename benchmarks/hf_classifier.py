"""Bring-your-own-model benchmark: a 6-layer, 768-wide BERT sequence classifier saved with
``save_pretrained`` (random weights, a real English vocabulary: tests/support/hf_models.py
``base_sized_classifier``) through `optiserve optimize DIR` with its default variants; every
variant it built measured against torch fp32 at batch 32 of natural sentences, in one run with
the rounds interleaved (variant A, B, C, ... then again), each measurement in its own fresh
process, medians reported, with the top-1 agreement each variant was judged on (held-out rows).

Target: the chosen variant >= 3x torch fp32 at batch 32 within top-1 agreement >= 0.99 on
held-out rows.

    python -m benchmarks.hf_classifier [--rounds 5] [--threads N] [--layers 6] [--hidden 768]
                                       [--json out.json] [-- extra optiserve optimize options]

Batches: 32 validation sentences of neighbouring lengths, padded to the longest of them (as the
gateway's length grouping forms batches under load), a different window each iteration.

Measured here: see the README (Performance) and the table below, written from a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.support.variant_rounds import medians_and_ratios, optimize_and_measure
from serving.runtimes import available_cpus
from tests.support.optimize_args import optimize_args, split_passthrough


def main() -> None:
    argv, extra = split_passthrough(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from tests.support.hf_models import base_sized_classifier

    size = 32
    with tempfile.TemporaryDirectory(prefix="optiserve-bench-") as tmp:
        model_dir = base_sized_classifier(Path(tmp) / "classifier", layers=args.layers,
                                          hidden=args.hidden)
        opts = optimize_args(["--threads", str(args.threads), *extra], source=str(model_dir))
        opts.keep_build = str(Path(tmp) / "build")
        print(f"optimizing a {args.layers}-layer, {args.hidden}-wide classifier "
              f"({' '.join(extra) or 'default variants'}) ...", flush=True)
        result, samples, optimize_s = optimize_and_measure(
            opts, size, 8, args.rounds, args.threads, args.seconds)
        ok = [o for o in result.outcomes if o.status == "ok"]

    base = "torch-fp32"
    med, ratio = medians_and_ratios(samples, base)
    top1 = {o.name: o.measurements.fidelity.top1_agreement for o in ok}
    diff = {o.name: o.measurements.fidelity.max_prob_diff for o in ok}
    print(f"\nthreads {args.threads}; batch {size} of natural sentences; medians of "
          f"{args.rounds} interleaved rounds, each measurement in its own process; ratio = "
          f"median of per-round ratios to {base}; top-1 agreement on the held-out rows")
    print(f"{'variant':34} {'top-1':>7} {'max dp':>7} {'b32 rows/s':>11} {'ratio':>7}")
    for o in ok:
        mark = " (chosen)" if o.name == result.chosen else ""
        print(f"{o.name + mark:34} {top1[o.name]:7.4f} {diff[o.name]:7.4f} "
              f"{med[o.name]:11.1f} {ratio.get(o.name, float('nan')):6.2f}x")
    for o in result.outcomes:
        if o.status != "ok":
            print(f"{o.name:34} {o.status}: {o.reason}")
    chosen = result.chosen
    print(f"\nchosen {chosen}: {ratio.get(chosen, float('nan')):.2f}x {base} at b{size}, held-out "
          f"top-1 agreement {top1.get(chosen, float('nan')):.4f} (target >= 3x within 0.99); "
          f"optimize {optimize_s:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "threads": args.threads, "rounds": args.rounds, "batch": size,
            "layers": args.layers, "hidden": args.hidden, "optimize_seconds": optimize_s,
            "chosen": chosen, "held_out_top1": top1, "max_prob_diff": diff,
            "median_rows_per_s": med, "ratio_to_torch_fp32": ratio,
            "timings": result.timings}, indent=2))


if __name__ == "__main__":
    main()
