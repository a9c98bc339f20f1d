"""GPU variants through ONNX Runtime: CUDA fp16 and TensorRT fp16 (engine cache).

They are built only where a CUDA device really runs them: onnxruntime-gpu on a machine without
a usable GPU lists the providers but silently runs on CPU, so each provider is probed with a tiny
session and must come up first in ``session.get_providers()``.
"""

from __future__ import annotations

import functools

from .base import BuildContext, VariantBuild, VariantSkipped
from .onnx_variants import _quiet, exported_onnx


@functools.cache
def probe_provider(provider: str) -> str | None:
    """None when ``provider`` really runs here, else the reason it does not."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return "onnxruntime is not installed"
    have = ort.get_available_providers()
    if provider not in have:
        return f"{provider} is not in this onnxruntime ({', '.join(have)}); install optiserve[gpu]"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=[provider])
    except Exception as e:
        return f"{provider} failed to start: {str(e).splitlines()[0][:200]}"
    if session.get_providers()[0] != provider:
        return f"{provider} did not start (no usable CUDA device); onnxruntime fell back to CPU"
    del onnx
    return None


def _require(provider: str) -> None:
    reason = probe_provider(provider)
    if reason:
        raise VariantSkipped(reason)


def build_onnx_fp16_cuda(ctx: BuildContext) -> VariantBuild:
    """fp16 weights and compute on the CUDA execution provider (inputs/outputs stay fp32)."""
    _require("CUDAExecutionProvider")
    from onnxruntime.transformers import optimizer

    src = exported_onnx(ctx)
    out = ctx.scratch("onnx-fp16-cuda") / "model.onnx"
    t = ctx.source.transformer
    with _quiet():
        if t:
            model = optimizer.optimize_model(
                str(src), model_type=t["model_type"], num_heads=t["num_heads"],
                hidden_size=t["hidden_size"], opt_level=0, use_gpu=True,
            )
        else:
            model = optimizer.optimize_model(str(src), model_type="bert", num_heads=0,
                                             hidden_size=0, opt_level=0, use_gpu=True)
        model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(str(out))
    return VariantBuild("onnx-fp16-cuda", "onnxruntime", out, device="cuda",
                        providers=["CUDAExecutionProvider"])


def build_tensorrt_fp16(ctx: BuildContext) -> VariantBuild:
    """The fp32 graph compiled by TensorRT in fp16; engines cached per version on disk."""
    _require("TensorrtExecutionProvider")
    import shutil

    src = exported_onnx(ctx)
    out = ctx.scratch("tensorrt-fp16") / "model.onnx"
    shutil.copyfile(src, out)
    return VariantBuild(
        "tensorrt-fp16", "onnxruntime", out, device="cuda",
        providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"],
        notes=["TensorRT builds its engine on first load; later loads reuse the engine cache"],
    )
