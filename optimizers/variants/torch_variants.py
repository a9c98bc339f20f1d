"""torch fp32 (the reference, as served) and torch dynamic INT8, saved as TorchScript."""

from __future__ import annotations

import warnings

from .base import BuildContext, VariantBuild, VariantSkipped


def _example_args(ctx: BuildContext):
    import torch

    batch = ctx.validation.batches[0]
    return tuple(torch.from_numpy(batch[s.name]) for s in ctx.source.model_signature.inputs)


def _trace_and_save(module, ctx: BuildContext, name: str):
    import torch

    out = ctx.scratch(name) / "model.pt"
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        # The example batch has padding, so the traced graph keeps the attention-mask path.
        traced = torch.jit.trace(module, _example_args(ctx), check_trace=False)
        traced.save(str(out))
    return out


def _module(ctx: BuildContext):
    if ctx.source.torch_module is None:
        raise VariantSkipped("the source is not a torch model")
    return ctx.source.torch_module


def build_torch_fp32(ctx: BuildContext) -> VariantBuild:
    """The source module traced to TorchScript, unchanged numerically."""
    path = _trace_and_save(_module(ctx), ctx, "torch-fp32")
    return VariantBuild("torch-fp32", "torch", path, providers=[])


def build_torch_int8_dynamic(ctx: BuildContext) -> VariantBuild:
    """Linear layers with INT8 weights and dynamically quantized activations."""
    import copy

    import torch

    module = copy.deepcopy(_module(ctx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            module, {torch.nn.Linear}, dtype=torch.qint8
        )
    path = _trace_and_save(quantized, ctx, "torch-int8-dynamic")
    return VariantBuild("torch-int8-dynamic", "torch", path, providers=[])
