"""GPU variants that need torch alone (no onnxruntime-gpu, no TensorRT): fp16 and bf16 on CUDA,
and a torch.compile variant (inductor, CUDA graphs for fixed batch and sequence buckets).

Artifacts, all listed with their sha256 in the manifest:

- ``torch-fp16-cuda`` / ``torch-bf16-cuda``: ``model.pt``, the source module converted to
  fp16/bf16 and traced to TorchScript on the GPU. The torch runtime loads it with
  ``torch.jit.load`` (no pickle, no Python code from the repository) onto the replica's GPU and
  casts FP32 inputs to the module's dtype; outputs come back FP32.
- ``torch-compile-cuda``: the same fp16 ``model.pt`` plus ``compile.json``, the recipe (inductor,
  ``reduce-overhead``, the buckets). The replica compiles at load (``serving.runtimes.
  torch_compile``); compiled kernels are never stored, they belong to one GPU and torch build.

Each builds only where torch sees a CUDA device; elsewhere it is skipped with the reason. The
conversion and tracing are device-agnostic (:func:`build_half`, :func:`build_compiled` take the
device), which is how the tests run them on CPU.
"""

from __future__ import annotations

import copy
import json

from serving.runtimes.buckets import seq_buckets
from serving.runtimes.torch_compile import RECIPE_FILE, CompileRecipe, sample_feeds
from serving.settings import settings

from .base import BuildContext, VariantBuild, VariantSkipped
from .torch_variants import source_module, trace_and_save

DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def cuda_skip_reason() -> str | None:
    """None when torch runs on a CUDA device here, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install optiserve[torch], a CUDA build)"
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU build; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
    return None


def bf16_skip_reason() -> str | None:
    """None when the CUDA device computes in bf16 (compute capability 8.0 and later)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    if (major, minor) >= (8, 0):
        return None
    return (f"{torch.cuda.get_device_name()} (compute capability {major}.{minor}) has no native "
            "bf16; it needs 8.0 or later")


def _require_cuda() -> None:
    reason = cuda_skip_reason()
    if reason:
        raise VariantSkipped(reason)


def build_half(ctx: BuildContext, name: str, precision: str, device: str) -> VariantBuild:
    """The source module in fp16 or bf16 weights and compute, traced on ``device``."""
    import torch

    dtype = getattr(torch, DTYPES[precision])
    module = copy.deepcopy(source_module(ctx)).to(device=device, dtype=dtype).eval()
    path = trace_and_save(module, ctx, name, device=device, dtype=dtype)
    return VariantBuild(name, "torch", path, device=device, providers=[], notes=[
        f"{precision} weights and compute, traced on {device}; inputs and outputs stay as the "
        "signature says (FP32 is cast on the way in and out)"])


def compile_recipe(ctx: BuildContext) -> CompileRecipe:
    """Buckets for this source: the batch buckets of the settings and, for text models whose
    outputs have no sequence dimension, sequence buckets up to the model's max_length."""
    s = settings()
    src = ctx.source
    pre = src.preprocessing
    seq_inputs, seq = [], []
    if pre is not None and all(-1 not in o.shape[1:] for o in src.model_signature.outputs):
        seq_inputs = [n for n in (pre.ids_input, pre.mask_input, pre.type_ids_input) if n]
        seq = seq_buckets(s.compile_min_seq_bucket, pre.max_length)
    recipe = CompileRecipe(batch_buckets=s.compile_batch_buckets, seq_buckets=seq,
                           seq_inputs=seq_inputs)
    if sample_feeds(src.model_signature, None, 1, 1, seq_inputs) is None:
        free = [i.name for i in src.model_signature.inputs
                if -1 in i.shape[1:] and i.name not in seq_inputs]
        raise VariantSkipped(f"torch.compile with fixed buckets needs every dimension but the "
                             f"batch fixed; {', '.join(free)} has another free dimension")
    return recipe


def build_compiled(ctx: BuildContext, name: str, precision: str, device: str) -> VariantBuild:
    """The fp16/bf16 TorchScript plus the recipe the replica compiles it with."""
    source_module(ctx)  # a source that is not a torch model says so first
    recipe = compile_recipe(ctx)
    build = build_half(ctx, name, precision, device)
    path = build.model_file.parent / RECIPE_FILE
    path.write_text(json.dumps(recipe.model_dump(), indent=2) + "\n")
    build.extra_files[RECIPE_FILE] = path
    seq = (f", sequences to {recipe.seq_buckets[0]}..{recipe.seq_buckets[-1]} tokens"
           if recipe.seq_buckets else "")
    build.notes.append(
        f"torch.compile at load (inductor, {recipe.mode}); batches padded to "
        f"{recipe.batch_buckets[0]}..{recipe.batch_buckets[-1]} rows{seq} ({RECIPE_FILE})")
    return build


def build_torch_fp16_cuda(ctx: BuildContext) -> VariantBuild:
    """fp16 weights and compute on the GPU, TorchScript."""
    _require_cuda()
    return build_half(ctx, "torch-fp16-cuda", "fp16", "cuda")


def build_torch_bf16_cuda(ctx: BuildContext) -> VariantBuild:
    """bf16 weights and compute on the GPU (Ampere and later), TorchScript."""
    _require_cuda()
    reason = bf16_skip_reason()
    if reason:
        raise VariantSkipped(reason)
    return build_half(ctx, "torch-bf16-cuda", "bf16", "cuda")


def build_torch_compile_cuda(ctx: BuildContext) -> VariantBuild:
    """The fp16 TorchScript compiled by inductor at load, CUDA graphs per bucket shape."""
    _require_cuda()
    return build_compiled(ctx, "torch-compile-cuda", "fp16", "cuda")
