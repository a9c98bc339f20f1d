"""The seed's question for images: the built-in EfficientNet-Lite0 (ImageNet-1k) through
`optiserve optimize efficientnet-lite0`; the chosen variant (and every other one it built)
measured against torch fp32 at batch 32 of 224x224 images, in one run with the rounds
interleaved (variant A, B, C, ... then again), each measurement in its own fresh process,
medians reported, with the held-out top-1 agreement and top-5 overlap each variant was judged
on (the 64 held-out of the 128 default images: seeded crops of photographs shipped in
scikit-image and scikit-learn, JPEG-encoded and preprocessed by serving's code).

Target: the chosen variant >= 3x torch fp32 at batch 32 within top-1 agreement >= 0.99 on
held-out images.

    python -m benchmarks.efficientnet [--rounds 5] [--threads N] [--json out.json]
                                      [-- extra optiserve optimize options]

Batches: 32 preprocessed validation images (pixel tensors, as the model replica receives them
after the gateway decoded them), a different window each iteration.

Measured here (2 CPUs with AVX-512 VNNI and BF16, shared; --threads 2; 3 interleaved rounds;
`-- --search-seconds 240 --tune-seconds 240 --min-time 0.5`; optimize took 329 s):

| variant | held-out top-1 | top-5 overlap | b32 images/s | x torch-fp32 | MB |
|---|---|---|---|---|---|
| torch-fp32 | 1.0000 | 1.0000 | 24.9 | 1.00x | 19.1 |
| onnx-fp32 (chosen) | 1.0000 | 1.0000 | 192.6 | 7.75x | 18.6 |
| openvino-fp32 | 1.0000 | 1.0000 | 169.6 | 6.81x | 18.7 |
| openvino-bf16 | 0.9844 | 0.9844 | 340.8 | 13.68x | 18.7 |
| openvino-int8 | 0.9688 | 0.9500 | 424.0 | 16.87x | 5.2 |
| onnx-int8-static | failed: every operator INT8 gave top-1 0.8594 on the tuning images; the search for nodes to keep in fp32 ranked 39 of 50 in its 187 s | | | | |
| onnx-int8-dynamic | skipped: its best case runs 13.3 images/s (ConvInteger) | | | | |

Target met: the chosen onnx-fp32 is 7.75x torch fp32 at batch 32 with held-out top-1 agreement
1.0000 (64 images). The faster OpenVINO bf16 and INT8 variants miss the 0.99 budget by one and
two of the 64 held-out images (NNCF's accuracy control reached its target on the 64 tuning
images).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.support.variant_rounds import medians_and_ratios, optimize_and_measure
from serving.runtimes import available_cpus
from tests.support.optimize_args import optimize_args, split_passthrough

#: Variants built unless options after -- say otherwise: every CPU variant that applies to a
#: convolutional network (torch's dynamic INT8 quantizes Linear layers only: one here).
VARIANTS = ("torch-fp32,onnx-fp32,onnx-int8-static,onnx-int8-dynamic,openvino-fp32,"
            "openvino-bf16,openvino-int8")


def main() -> None:
    argv, extra = split_passthrough(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import tempfile

    size = 32
    if "--variants" not in extra:
        extra = ["--variants", VARIANTS, *extra]
    if "--batch-sizes" not in extra:
        extra = ["--batch-sizes", "1,32", *extra]
    with tempfile.TemporaryDirectory(prefix="optiserve-bench-") as tmp:
        opts = optimize_args(["--threads", str(args.threads), *extra],
                             source="efficientnet-lite0")
        opts.keep_build = str(Path(tmp) / "build")
        print(f"optimizing efficientnet-lite0 ({' '.join(extra)}) ...", flush=True)
        result, samples, optimize_s = optimize_and_measure(
            opts, size, 4, args.rounds, args.threads, args.seconds)
        ok = [o for o in result.outcomes if o.status == "ok"]

    base = "torch-fp32"
    med, ratio = medians_and_ratios(samples, base)
    fid = {o.name: o.measurements.fidelity for o in ok}
    sizes = {o.name: o.measurements.size_bytes for o in ok}
    print(f"\nthreads {args.threads}; batch {size} of 224x224 images; medians of {args.rounds} "
          f"interleaved rounds, each measurement in its own process; ratio = median of "
          f"per-round ratios to {base}; agreement on the held-out images")
    print(f"{'variant':28} {'top-1':>7} {'top-5':>7} {'b32 img/s':>10} {'ratio':>7} {'MB':>6}")
    for o in ok:
        mark = " (chosen)" if o.name == result.chosen else ""
        f = fid[o.name]
        print(f"{o.name + mark:28} {f.top1_agreement:7.4f} {f.top5_overlap:7.4f} "
              f"{med[o.name]:10.1f} {ratio.get(o.name, float('nan')):6.2f}x "
              f"{sizes[o.name] / 1e6:6.2f}")
    for o in result.outcomes:
        if o.status != "ok":
            print(f"{o.name:28} {o.status}: {o.reason}")
    chosen = result.chosen
    top1 = fid[chosen].top1_agreement if chosen in fid else float("nan")
    print(f"\nchosen {chosen}: {ratio.get(chosen, float('nan')):.2f}x {base} at b{size}, held-out "
          f"top-1 agreement {top1:.4f} (target >= 3x within 0.99); optimize {optimize_s:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "threads": args.threads, "rounds": args.rounds, "batch": size,
            "optimize_seconds": optimize_s, "chosen": chosen,
            "held_out": {k: f.model_dump(exclude_none=True) for k, f in fid.items()},
            "size_bytes": sizes, "median_images_per_s": med, "ratio_to_torch_fp32": ratio,
            "timings": result.timings}, indent=2))


if __name__ == "__main__":
    main()
