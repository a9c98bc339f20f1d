"""The variants the optimizer can build, in the order it builds them."""

from __future__ import annotations

from .base import BuildContext, Variant, VariantBuild, VariantSkipped
from .gpu import build_onnx_fp16_cuda, build_tensorrt_fp16, probe_provider
from .onnx_variants import (
    QuantizationFailed,
    build_onnx_fp32,
    build_onnx_int8_dynamic,
    build_onnx_int8_static,
)
from .openvino_variants import (
    build_openvino_bf16,
    build_openvino_fp32,
    build_openvino_int8,
    openvino_installed,
)
from .sklearn_variant import build_sklearn
from .torch_gpu import build_torch_bf16_cuda, build_torch_compile_cuda, build_torch_fp16_cuda
from .torch_variants import build_torch_fp32, build_torch_int8_dynamic

VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("sklearn", "the scikit-learn estimator (reference of tabular models)", build_sklearn),
    Variant("torch-fp32", "the source in torch, fp32 (reference)", build_torch_fp32),
    Variant("torch-int8-dynamic", "torch, INT8 linear layers (dynamic)", build_torch_int8_dynamic),
    Variant("onnx-fp32", "ONNX Runtime, fp32, graph-optimised", build_onnx_fp32),
    Variant("onnx-int8-dynamic", "ONNX Runtime, INT8 dynamic (QInt8 per channel)",
            build_onnx_int8_dynamic, cost=1),
    Variant("onnx-int8-static", "ONNX Runtime, INT8 static (calibrated QDQ)",
            build_onnx_int8_static, cost=1),
    Variant("openvino-fp32", "OpenVINO, fp32", build_openvino_fp32),
    Variant("openvino-bf16", "OpenVINO, bf16 compute (CPUs with AVX-512 BF16 or AMX)",
            build_openvino_bf16),
    Variant("openvino-int8", "OpenVINO, INT8 (NNCF, accuracy control against the budget)",
            build_openvino_int8, cost=1),
    Variant("torch-fp16-cuda", "torch on CUDA, fp16 (TorchScript)", build_torch_fp16_cuda,
            device="cuda"),
    Variant("torch-bf16-cuda", "torch on CUDA, bf16 (TorchScript; Ampere and later)",
            build_torch_bf16_cuda, device="cuda"),
    Variant("torch-compile-cuda", "torch.compile on CUDA, fp16 (inductor, CUDA graphs per "
            "batch/sequence bucket)", build_torch_compile_cuda, device="cuda"),
    Variant("onnx-fp16-cuda", "ONNX Runtime CUDA, fp16", build_onnx_fp16_cuda, device="cuda"),
    Variant("tensorrt-fp16", "ONNX Runtime TensorRT, fp16", build_tensorrt_fp16, device="cuda"),
]}

__all__ = ["VARIANTS", "BuildContext", "Variant", "VariantBuild", "VariantSkipped",
           "QuantizationFailed", "probe_provider", "TABULAR_VARIANTS", "OPENVINO_VARIANTS",
           "default_variants", "build_order"]

#: Defaults only where ``openvino`` imports (the ``openvino`` extra).
OPENVINO_VARIANTS = ["openvino-fp32", "openvino-bf16", "openvino-int8"]

#: Variants image classifiers build only when named (see default_variants).
IMAGE_NOT_DEFAULT = ("onnx-int8-dynamic", "torch-int8-dynamic")

#: What a scikit-learn source builds when no --variants are named (the others never apply).
TABULAR_VARIANTS = ["sklearn", "onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static"]


def build_order(names: list[str]) -> list[str]:
    """The variants in the order they are built: one-step builds first (in the order given),
    then those that may search, so each search knows what it has to beat."""
    return sorted(names, key=lambda n: VARIANTS[n].cost)


def default_variants(source) -> list[str]:
    """Every variant that can apply to this source, in build order."""
    if source.tabular is not None:
        return list(TABULAR_VARIANTS)
    names = [n for n in VARIANTS if n != "sklearn"]
    if source.is_image:
        # dynamic INT8 does not help convolutional networks on CPU: ONNX Runtime's ConvInteger
        # ran EfficientNet-Lite0 at 11.9 images/s at batch 32, onnx-fp32 at 93; torch's
        # quantizes Linear layers only (one, the classifier). Named, they still run.
        names = [n for n in names if n not in IMAGE_NOT_DEFAULT]
    if not openvino_installed():  # named explicitly they are skipped, saying how to install
        names = [n for n in names if n not in OPENVINO_VARIANTS]
    return names
