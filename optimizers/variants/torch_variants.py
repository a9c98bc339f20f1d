"""torch fp32 (the reference, as served) and torch dynamic INT8, saved as TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path

from .base import BuildContext, VariantBuild, VariantSkipped


def example_args(ctx: BuildContext, device: str = "cpu", dtype=None) -> tuple:
    """The first tuning batch as tensors on ``device``, floating inputs in ``dtype``."""
    import torch

    batch = ctx.validation.batches[0]
    args = []
    for s in ctx.source.model_signature.inputs:
        t = torch.from_numpy(batch[s.name]).to(device)
        args.append(t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    return tuple(args)


def trace_and_save(module, ctx: BuildContext, name: str, device: str = "cpu",
                   dtype=None) -> Path:
    """``module`` traced on ``device`` with the first tuning batch, saved as TorchScript."""
    import torch

    out = ctx.scratch(name) / "model.pt"
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        # The example batch has padding, so the traced graph keeps the attention-mask path.
        traced = torch.jit.trace(module, example_args(ctx, device, dtype), check_trace=False)
        traced.save(str(out))
    return out


def source_module(ctx: BuildContext):
    """The source's torch module; skipped for sources that are not torch models."""
    if ctx.source.torch_module is None:
        raise VariantSkipped("the source is not a torch model")
    return ctx.source.torch_module


def build_torch_fp32(ctx: BuildContext) -> VariantBuild:
    """The source module traced to TorchScript, unchanged numerically."""
    path = trace_and_save(source_module(ctx), ctx, "torch-fp32")
    return VariantBuild("torch-fp32", "torch", path, providers=[])


def build_torch_int8_dynamic(ctx: BuildContext) -> VariantBuild:
    """Linear layers with INT8 weights and dynamically quantized activations."""
    import copy

    import torch

    module = copy.deepcopy(source_module(ctx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            module, {torch.nn.Linear}, dtype=torch.qint8
        )
    path = trace_and_save(quantized, ctx, "torch-int8-dynamic")
    return VariantBuild("torch-int8-dynamic", "torch", path, providers=[])
