"""ONNX variants on CPU: graph-optimised fp32, dynamic INT8 and calibrated static INT8.

INT8 variants are accuracy-aware: when full quantization misses the fidelity budget, each
quantizable node's damage is measured on the rows that suffered most, and the most damaging nodes
stay in fp32 (fewest possible, found by doubling then bisecting) until the budget holds.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from serving.repository import Fidelity

from .base import BuildContext, VariantBuild, VariantSkipped

#: Node types the INT8 quantizers turn into integer kernels.
QUANTIZABLE = ("MatMul", "Gemm", "Attention", "Conv")


class QuantizationFailed(Exception):
    """No quantized model met the fidelity budget."""


def exported_onnx(ctx: BuildContext) -> Path:
    """The fp32 ONNX graph of the source, exported once (torch) or the source file (ONNX)."""
    if "onnx-export" in ctx.cache:
        return ctx.cache["onnx-export"]
    src = ctx.source
    if src.onnx_path is not None:
        path = src.onnx_path
    else:
        import torch

        if src.torch_module is None:  # pragma: no cover - every source has one or the other
            raise VariantSkipped("the source has neither an ONNX graph nor a torch module")
        path = ctx.scratch("export") / "model.onnx"
        batch = ctx.validation.batches[0]
        names = [s.name for s in src.model_signature.inputs]
        args = tuple(torch.from_numpy(batch[n]) for n in names)
        axes = {}
        for spec in [*src.model_signature.inputs, *src.model_signature.outputs]:
            dyn = {i: f"{spec.name}_d{i}" for i, d in enumerate(spec.shape) if d == -1}
            if dyn:
                axes[spec.name] = dyn
        ctx.status("exporting to ONNX")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The legacy (TorchScript) exporter: its graph is what ORT's transformer fusions match.
            torch.onnx.export(
                src.torch_module, args, str(path), input_names=names,
                output_names=[o.name for o in src.model_signature.outputs],
                dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False,
            )
    ctx.cache["onnx-export"] = path
    return path


def optimized_fp32(ctx: BuildContext) -> Path:
    """ONNX Runtime graph optimisation; transformer fusions for transformer encoders."""
    if "onnx-fp32" in ctx.cache:
        return ctx.cache["onnx-fp32"]
    src_path = exported_onnx(ctx)
    out = ctx.scratch("onnx-fp32") / "model.onnx"
    t = ctx.source.transformer
    ctx.status("optimizing the ONNX graph")
    if t:
        from onnxruntime.transformers import optimizer

        with _quiet():
            model = optimizer.optimize_model(
                str(src_path), model_type=t["model_type"], num_heads=t["num_heads"],
                hidden_size=t["hidden_size"], opt_level=1, use_gpu=False,
            )
            model.save_model_to_file(str(out))
    else:
        ort_optimize(src_path, out)
    ctx.cache["onnx-fp32"] = out
    return out


def ort_optimize(src: Path, out: Path) -> Path:
    """ONNX Runtime's graph optimisations applied offline and saved to ``out``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # EXTENDED, not ALL: ALL adds layout changes specific to this machine's CPU.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return out


class _quiet:
    """Silence the quantizer's and optimizer's chatter (warnings, root-logger notices), and run
    them inside ``workdir``: shape inference and calibration write temporary files
    (``sym_shape_infer_temp.onnx``, ``<uuid>.data``) into the current directory."""

    def __init__(self, workdir: Path | None = None):
        self._workdir = workdir

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        self._cwd = os.getcwd()
        if self._workdir is not None:
            os.chdir(self._workdir)

    def __exit__(self, *exc):
        os.chdir(self._cwd)
        logging.disable(self._level)
        self._w.__exit__(*exc)


def quantizable_nodes(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE and n.name]


def tune(ctx: BuildContext, label: str, quantize: Callable[..., Path], base: Path
         ) -> tuple[Path, Fidelity, list[str]]:
    """Quantize everything; if the budget is missed, keep the most damaging nodes in fp32."""
    key = f"{label}-full:{ctx.source.task}:{ctx.budget}"
    if key not in ctx.cache:  # kept: the build may stop at its best case and run again
        ctx.status(f"{label}: quantizing")
        full = ctx.scratch(f"{label}-full") / "model.onnx"
        shutil.move(quantize(exclude=[], only=None), full)
        ctx.cache[key] = (full, *ctx.evaluate_onnx(full))
    full, fid, scores = ctx.cache[key]
    if fid.passed:
        return full, fid, []
    # keeping nodes in fp32 only slows the model down: its fully quantized form is the best case
    ctx.status(f"{label}: {_fid_text(fid)} fully quantized; measuring its best case")
    ctx.worth_searching(label, VariantBuild(label, "onnxruntime", full))
    deadline = time.monotonic() + ctx.tune_seconds
    candidates = quantizable_nodes(base)
    worst = np.argsort(scores)[: min(32, len(scores))]
    damage = {}
    for i, node in enumerate(candidates, 1):
        if time.monotonic() > deadline:
            break
        ctx.status(f"{label}: sensitivity of node {i}/{len(candidates)}")
        _, s = ctx.evaluate_onnx(quantize(exclude=[], only=[node]), rows=worst)
        damage[node] = float(1.0 - s.min())
    order = sorted(damage, key=lambda n: -damage[n])
    results: dict[int, tuple[Path, Fidelity]] = {}

    def attempt(k: int) -> bool:
        ctx.status(f"{label}: trying with {k} node(s) kept in fp32")
        path = quantize(exclude=order[:k], only=None)
        kept = ctx.scratch(f"{label}-k{k}") / "model.onnx"
        shutil.move(path, kept)
        f, _ = ctx.evaluate_onnx(kept)
        results[k] = (kept, f)
        return f.passed

    lo, hi, k = 0, None, 1
    while k < len(order) and time.monotonic() < deadline:
        if attempt(k):
            hi = k
            break
        lo, k = k, k * 2
    if hi is None:
        if order and time.monotonic() < deadline and attempt(len(order) - 1):
            hi = len(order) - 1
        elif time.monotonic() >= deadline:
            raise QuantizationFailed(
                f"no INT8 model within the budget ({fid.budget}): full quantization gave "
                f"{_fid_text(fid)}, and the search ran out of the {ctx.tune_seconds:.0f} s it "
                f"was given (--tune-seconds, --search-seconds) after ranking {len(damage)} of "
                f"{len(candidates)} nodes and keeping up to {max(results, default=0)} in fp32")
        else:
            raise QuantizationFailed(
                f"no INT8 model within the budget ({fid.budget}): full quantization gave "
                f"{_fid_text(fid)}; keeping up to {max(results, default=0)} node(s) in fp32 "
                "did not reach it"
            )
    while hi - lo > 1 and time.monotonic() < deadline:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    path, fid = results[hi]
    return path, fid, order[:hi]


def _fid_text(f: Fidelity) -> str:
    return f.headline()


def _notes(label: str, fid: Fidelity, excluded: list[str], total: int) -> list[str]:
    if not excluded:
        return [f"{label}: every quantizable node is INT8"]
    return [f"{label}: {len(excluded)} of {total} quantizable nodes kept in fp32 to stay within "
            f"the budget ({_fid_text(fid)}): {', '.join(excluded)}"]


def _require_quantizable(path: Path) -> None:
    """INT8 only where there is something to quantize: tree ensembles and linear classifiers
    (ai.onnx.ml operators) have no INT8 kernels, and a copy of the fp32 graph helps nobody."""
    if not quantizable_nodes(path):
        raise VariantSkipped(f"the graph has no {'/'.join(QUANTIZABLE)} nodes to quantize")


def _onnx_required(ctx: BuildContext) -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise VariantSkipped("onnxruntime is not installed (install optiserve[cpu])")


def build_onnx_fp32(ctx: BuildContext) -> VariantBuild:
    """fp32 ONNX with ONNX Runtime's graph optimisations (BERT fusions for transformers)."""
    _onnx_required(ctx)
    path = optimized_fp32(ctx)
    notes = []
    if ctx.source.transformer:
        notes.append(f"transformer fusions for {ctx.source.transformer['model_type']}")
    return VariantBuild("onnx-fp32", "onnxruntime", path, notes=notes)


def build_onnx_int8_dynamic(ctx: BuildContext) -> VariantBuild:
    """INT8 weights (QInt8, per channel), activations quantized per batch at run time."""
    _onnx_required(ctx)
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Transformers quantize their fused graph (Attention); other graphs the exported one, as
    # ONNX Runtime's CPU fusions (FusedGemm) hide MatMul/Gemm from the quantizer. Serving's
    # session applies the graph optimisations to the quantized model when it loads it.
    base = optimized_fp32(ctx) if ctx.source.transformer else exported_onnx(ctx)
    _require_quantizable(base)
    work = ctx.scratch("onnx-int8-dynamic-work")

    def quantize(exclude: list[str], only: list[str] | None) -> Path:
        out = work / "candidate.onnx"
        with _quiet(work):
            quantize_dynamic(
                str(base), str(out), weight_type=QuantType.QInt8, per_channel=True,
                nodes_to_exclude=exclude, nodes_to_quantize=only or None,
                # The fused transformer graph has contrib ops whose outputs lack type info.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        return out

    path, fid, excluded = tune(ctx, "onnx-int8-dynamic", quantize, base)
    final = ctx.scratch("onnx-int8-dynamic") / "model.onnx"
    shutil.move(path, final)
    notes = _notes("onnx-int8-dynamic", fid, excluded, len(quantizable_nodes(base)))
    return VariantBuild("onnx-int8-dynamic", "onnxruntime", final, notes=notes)


def build_onnx_int8_static(ctx: BuildContext) -> VariantBuild:
    """INT8 weights and activations (QDQ), activation ranges calibrated on validation data."""
    _onnx_required(ctx)
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    base_src = exported_onnx(ctx)
    _require_quantizable(base_src)
    work = ctx.scratch("onnx-int8-static-work")
    base = work / "preprocessed.onnx"
    ctx.status("onnx-int8-static: pre-processing")
    with _quiet(work):
        try:
            quant_pre_process(str(base_src), str(base), skip_symbolic_shape=False)
        except Exception:
            quant_pre_process(str(base_src), str(base), skip_symbolic_shape=True)
    calibration = ctx.validation.batches[: max(1, min(len(ctx.validation.batches), 16))]
    # Image classifiers (convolutional networks): every operator ONNX Runtime quantizes, so a
    # convolution's output range is its activation's (ReLU6 0..6) instead of the convolution's
    # whole range. EfficientNet-Lite0, 64 held-out images: top-1 agreement 0.94 with every
    # operator quantized, 0.63 with Conv/Gemm only (MinMax, per channel).
    op_types = None if ctx.source.is_image else list(QUANTIZABLE)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    def quantize(exclude: list[str], only: list[str] | None) -> Path:
        out = work / "candidate.onnx"
        with _quiet(work):
            quantize_static(
                str(base), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=op_types,
                nodes_to_exclude=exclude, nodes_to_quantize=only or None,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        return out

    path, fid, excluded = tune(ctx, "onnx-int8-static", quantize, base)
    final = ctx.scratch("onnx-int8-static") / "model.onnx"
    shutil.move(path, final)
    notes = [f"calibrated on {sum(len(b[next(iter(b))]) for b in calibration)} rows (MinMax)"]
    notes += _notes("onnx-int8-static", fid, excluded, len(quantizable_nodes(base)))
    return VariantBuild("onnx-int8-static", "onnxruntime", final, notes=notes)
