"""GPU variants of minilm on a CUDA machine: CUDA fp16 and TensorRT fp16 against torch and ONNX
Runtime fp32, with each variant's batching gain (best throughput / batch-1 throughput).

Needs onnxruntime-gpu (optiserve[gpu]). Variants whose provider doesn't start are listed as
skipped with the reason.

    python -m benchmarks.gpu_minilm [--out DIR] [--batch-sizes 1,8,32,128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from optimizers import OptimizeOptions, optimize
    from optimizers.selection import best_throughput

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-report"))
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--variants", default="torch-fp32,onnx-fp32,onnx-int8-dynamic,"
                                          "onnx-fp16-cuda,tensorrt-fp16")
    args = ap.parse_args()
    import onnxruntime as ort

    print("onnxruntime", ort.__version__, ort.get_available_providers(), flush=True)
    result = optimize(OptimizeOptions(
        source="minilm", variants=args.variants.split(","), publish="none",
        report_dir=str(args.out), batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        min_time_s=1.0))
    ref = result.outcome("torch-fp32") if any(
        o.name == "torch-fp32" and o.status == "ok" for o in result.outcomes) else None
    rows = []
    print(f"\n{'variant':20} {'status':8} {'cos min':>8} {'best rows/s':>12} {'vs torch':>9} "
          f"{'b1 rows/s':>10} {'batching gain':>14}  providers/reason")
    for o in result.outcomes:
        if o.status != "ok":
            print(f"{o.name:20} {o.status:8} {'':>8} {'':>12} {'':>9} {'':>10} {'':>14}  "
                  f"{o.reason}")
            rows.append({"variant": o.name, "status": o.status, "reason": o.reason})
            continue
        m = o.measurements
        by = {p.batch_size: p for p in m.latency}
        best = best_throughput(m.latency)
        b1 = by[min(by)].throughput
        vs = best / best_throughput(ref.measurements.latency) if ref else float("nan")
        print(f"{o.name:20} {'ok':8} {m.fidelity.cosine_min:8.4f} {best:12.1f} {vs:8.2f}x "
              f"{b1:10.1f} {best / b1:13.2f}x  {o.build.providers}")
        rows.append({"variant": o.name, "status": "ok", "cos_min": m.fidelity.cosine_min,
                     "latency": [p.model_dump() for p in m.latency], "best_rows_per_s": best,
                     "vs_torch_fp32": vs, "batching_gain": best / b1,
                     "load_time_s": m.load_time_s, "peak_rss_mb": m.peak_rss_mb})
    print(f"\nchosen: {result.chosen}; report: {result.report}")
    (args.out / "gpu_minilm.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
