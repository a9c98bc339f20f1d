"""OpenVINO variants on CPU: fp32, bf16 (where the CPU computes in bf16) and NNCF INT8.

All three are built from the ONNX export the ONNX variants share (``ctx.cache["onnx-export"]``),
converted once to an OpenVINO model and saved as IR (``model.xml`` + ``model.bin``). The
inference precision each was built for is written into its IR (see
:mod:`serving.runtimes.openvino`), so serving compiles it exactly as it was measured.

INT8 is NNCF's post-training quantization (transformer preset for transformer encoders) under
NNCF's accuracy control: the metric is the fidelity budget's own (cosine min, or top-1 agreement
for classifiers) against the reference on the tuning rows, and when full quantization misses the
budget NNCF reverts the most damaging quantizer groups to fp32 until it holds, within
``ctx.tune_seconds``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from serving.runtimes.openvino import PRECISION_KEY

from ..fidelity import row_cosines
from .base import BuildContext, VariantBuild, VariantSkipped
from .onnx_variants import QuantizationFailed, _quiet, exported_onnx

INSTALL_HINT = "pip install optiserve[openvino]"
#: Accuracy control aims this share of the budget's allowed loss above the budget on the tuning
#: rows: the held-out rows that judge the variant are worse than the rows it was tuned on (a
#: minimum over unseen rows), and NNCF quantizes exactly up to the line it is given.
MARGIN = 0.25
#: Models NNCF's accuracy control compiles at once while it ranks quantizer groups: compiling
#: is most of its time (171 compiles, 64 of its 96 s on minilm with one worker).
RANKING_WORKERS = 2
#: CPU flags of native bf16 arithmetic (AVX-512 BF16, AMX): without them OpenVINO emulates it.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def openvino_installed() -> bool:
    """Whether ``openvino`` imports (the OpenVINO variants are defaults only then)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise VariantSkipped(f"OpenVINO is not installed ({INSTALL_HINT})") from None
    return ov


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def bf16_skip_reason(capabilities: list[str], cpu_flags: set[str] | None) -> str | None:
    """Why bf16 does not apply on this CPU, or None when it does.

    OpenVINO lists ``BF16`` among the CPU's optimization capabilities where it runs bf16; where
    the kernel also reports CPU flags, bf16 counts only with native bf16 arithmetic (AVX-512
    BF16 or AMX), since elsewhere bf16 would be converted back and forth at fp32 speed or worse.
    """
    if "BF16" not in capabilities:
        return ("this CPU has no bf16 support in OpenVINO (OPTIMIZATION_CAPABILITIES: "
                f"{', '.join(capabilities)})")
    if cpu_flags is not None and not set(BF16_FLAGS) & cpu_flags:
        return (f"this CPU lacks native bf16 arithmetic ({' or '.join(BF16_FLAGS)}); OpenVINO "
                "would emulate bf16")
    return None


def _ir_dir(ctx: BuildContext, name: str) -> Path:
    d = ctx.scratch(name)
    for f in d.glob("model.*"):
        f.unlink()
    return d


def _fp32_model(ctx: BuildContext):
    """The source as an OpenVINO model (fp32 weights), converted once from the ONNX export."""
    ov = _openvino()
    if "openvino-ir" not in ctx.cache:
        src = exported_onnx(ctx)
        ctx.status("converting the ONNX graph to OpenVINO")
        try:
            model = ov.convert_model(str(src))
        except Exception as e:  # e.g. ai.onnx.ml operators (tree ensembles) OpenVINO lacks
            raise VariantSkipped(f"OpenVINO cannot convert the ONNX graph: "
                                 f"{str(e).strip().splitlines()[0][:300]}") from None
        path = _ir_dir(ctx, "openvino-ir") / "model.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        ctx.cache["openvino-ir"] = path
    return ov.Core().read_model(str(ctx.cache["openvino-ir"]))


def _save(ctx: BuildContext, model, variant: str, precision: str, notes: list[str]
          ) -> VariantBuild:
    ov = _openvino()
    model.set_rt_info(precision, PRECISION_KEY)
    xml = _ir_dir(ctx, variant) / "model.xml"
    # fp16 compression of the weights is OpenVINO's default; the fp32 variant must stay fp32
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return VariantBuild(variant, "openvino", xml, providers=[], notes=notes,
                        extra_files={"model.bin": xml.with_suffix(".bin")})


def build_openvino_fp32(ctx: BuildContext) -> VariantBuild:
    """The ONNX export in OpenVINO, computed in fp32 (INFERENCE_PRECISION_HINT f32)."""
    model = _fp32_model(ctx)
    return _save(ctx, model, "openvino-fp32", "f32", ["OpenVINO CPU, inference precision f32"])


def build_openvino_bf16(ctx: BuildContext) -> VariantBuild:
    """fp32 weights, computed in bf16 where the CPU has native bf16 (AVX-512 BF16, AMX)."""
    ov = _openvino()
    reason = bf16_skip_reason(list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                              _cpu_flags())
    if reason:
        raise VariantSkipped(reason)
    model = _fp32_model(ctx)
    return _save(ctx, model, "openvino-bf16", "bf16", ["OpenVINO CPU, inference precision bf16"])


class _OutOfTime(Exception):
    pass


class BudgetMetric:
    """The fidelity budget's metric as NNCF's accuracy control takes it.

    Dataset items are (inputs, rows) of the tuning batches; the metric of a set of items is the
    budget's (cosine min over their rows, top-1 agreement for classifiers, token-label agreement
    over real tokens for token classifiers) against
    ``ctx.reference``, with one value per item for NNCF's ranking. It raises once
    ``deadline`` has passed, which ends the accuracy control.
    """

    def __init__(self, ctx: BuildContext, deadline: float = float("inf")):
        self.ctx = ctx
        self.deadline = deadline
        self.names = [o.name for o in ctx.source.model_signature.outputs]
        self.classifier = ctx.source.task == "classification"
        self.tokens = ctx.source.task == "token-classification"
        self.mask = ctx.source.preprocessing.mask_input if self.tokens else None
        self.threshold = (ctx.budget.min_top1 if self.classifier or self.tokens
                          else ctx.budget.min_cosine)
        self.target = self.threshold + MARGIN * (1.0 - self.threshold)
        self.calls = 0

    def items(self) -> list[tuple[dict, np.ndarray]]:
        return list(zip(self.ctx.validation.batches, self.ctx.validation.rows_of))

    def item_value(self, out: dict[str, np.ndarray], rows: np.ndarray,
                   feeds: dict[str, np.ndarray] | None = None) -> float:
        ref = {k: self.ctx.reference[k][rows] for k in self.names}
        if self.tokens:  # argmax per real token (the mask's), padding left out
            c = out[self.names[0]]
            r = ref[self.names[0]][:, :c.shape[1]]
            real = feeds[self.mask].astype(bool)
            return float(np.mean((r.argmax(-1) == c.argmax(-1))[real]))
        if self.classifier:
            r, c = ref[self.names[0]], out[self.names[0]]
            return float(np.mean(r.reshape(len(r), -1).argmax(1) == c.reshape(len(c), -1)
                                 .argmax(1)))
        return float(np.min([row_cosines(ref[k], out[k]) for k in self.names]))

    def __call__(self, compiled, data) -> tuple[float, list[float]]:
        if time.monotonic() > self.deadline:
            raise _OutOfTime()
        self.calls += 1
        ports = [compiled.output(n) for n in self.names]
        values, sizes = [], []
        for feeds, rows in data:
            res = compiled(feeds)
            values.append(self.item_value({n: res[p] for n, p in zip(self.names, ports)}, rows,
                                          feeds))
            sizes.append(len(rows))
        if not values:
            return 1.0, []
        if self.classifier or self.tokens:  # over all rows: the items' shares by size
            return float(np.average(values, weights=sizes)), values
        return float(min(values)), values


#: Operations NNCF quantizes whose inputs it gives FakeQuantize operations.
QUANTIZED_OPS = ("MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData")


def int8_operations(model) -> int:
    """Operations computing on quantized inputs (an input straight from a FakeQuantize)."""
    return sum(op.get_type_name() in QUANTIZED_OPS
               and any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())
               for op in model.get_ops())


@contextlib.contextmanager
def _nncf_quiet(workdir: Path):
    """NNCF's log lines and progress bars stay out of optiserve's output."""
    import nncf

    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with _quiet(workdir), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level or logging.INFO)


def _quantization_parameters(transformer: bool):
    """NNCF's transformer preset without SmoothQuant. On MiniLM's held-out rows SmoothQuant
    costs the worst rows most (cosine min 0.975/0.975/0.953 with it, 0.981/0.980/0.976 without,
    over three seeded splits), and the budget is a minimum over rows."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
    )

    if not transformer:
        return None
    return AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))


def build_openvino_int8(ctx: BuildContext) -> VariantBuild:
    """NNCF post-training INT8 with accuracy control against the fidelity budget."""
    ov = _openvino()
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    except ImportError:
        raise VariantSkipped(f"NNCF is not installed ({INSTALL_HINT})") from None
    model = _fp32_model(ctx)
    metric = BudgetMetric(ctx)
    items = metric.items()
    work = ctx.scratch("openvino-int8-work")

    # NNCF measures the fp32 model itself; the budget is absolute, NNCF's drop relative to it
    ctx.status("openvino-int8: checking the fp32 model")
    core = ov.Core()
    fp32_metric, _ = metric(core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32"}), items)
    if fp32_metric < metric.threshold:
        raise QuantizationFailed(f"the fp32 OpenVINO model itself misses the budget "
                                 f"({fp32_metric:.4f} < {metric.threshold})")
    transformer = bool(ctx.source.transformer)
    calibration = nncf.Dataset([feeds for feeds, _ in items])
    common = dict(subset_size=len(items),
                  model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                  advanced_parameters=_quantization_parameters(transformer))
    # every operation INT8 first: within the budget it is the answer, and otherwise it is the
    # best case of the search (operations kept in fp32 only slow the model down); kept, as the
    # build may stop at its best case and run again
    key = f"openvino-int8-full:{ctx.source.task}"
    if key not in ctx.cache:
        ctx.status("openvino-int8: quantizing (NNCF)")
        with _nncf_quiet(work):
            full = nncf.quantize(model.clone(), calibration, **common)
        ctx.cache[key] = (full, metric(core.compile_model(full, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32"}), items)[0])
    full, full_metric = ctx.cache[key]
    total = int8_operations(full)
    quantized = full
    if full_metric < metric.target:
        ctx.status(f"openvino-int8: {full_metric:.4f} fully quantized; measuring its best case")
        ctx.worth_searching("openvino-int8", _save(ctx, full.clone(), "openvino-int8-full",
                                                   "f32", []))
        ctx.status("openvino-int8: NNCF accuracy control")
        metric.deadline = time.monotonic() + ctx.tune_seconds
        try:
            with _nncf_quiet(work):
                quantized = nncf.quantize_with_accuracy_control(
                    model, calibration_dataset=calibration,
                    validation_dataset=nncf.Dataset(items), validation_fn=metric,
                    # NNCF's drop is measured from its own run of the fp32 model, equal to ours
                    max_drop=max(0.0, fp32_metric - metric.target),
                    drop_type=nncf.DropType.ABSOLUTE, subset_size=common["subset_size"],
                    model_type=common["model_type"],
                    advanced_quantization_parameters=common["advanced_parameters"],
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        max_num_iterations=32, ranking_subset_size=min(len(items), 8),
                        num_ranking_workers=RANKING_WORKERS, intermediate_model_dir=str(work)),
                )
        except _OutOfTime:
            raise QuantizationFailed(
                f"NNCF's accuracy control did not reach the budget "
                f"({ctx.budget.describe(ctx.source.task)}) within the {ctx.tune_seconds:.0f} s "
                "it was given (--tune-seconds, --search-seconds)") from None
    kept = int8_operations(quantized)
    shutil.rmtree(work, ignore_errors=True)

    metric.deadline = float("inf")
    final_metric, _ = metric(core.compile_model(quantized, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32"}), items)
    fid_text = ("token-label agreement" if metric.tokens else "top-1 agreement"
                if metric.classifier else "cosine min") + f" {final_metric:.4f}"
    if final_metric < metric.threshold:
        raise QuantizationFailed(
            f"no INT8 model within the budget ({ctx.budget.describe(ctx.source.task)}): NNCF's "
            f"accuracy control reached {fid_text} on the tuning rows with {total - kept} of "
            f"{total} quantized operations kept in fp32")
    notes = ["openvino-int8: NNCF INT8"
             f"{' (transformer preset, no SmoothQuant)' if transformer else ''}, "
             f"calibrated on {ctx.validation.rows} rows"]
    if kept == total:
        notes.append(f"openvino-int8: all {total} quantizable operations INT8 ({fid_text} on "
                     "the tuning rows)")
    else:
        notes.append(f"openvino-int8: NNCF's accuracy control kept {total - kept} of {total} "
                     f"quantizable operations in fp32, aiming at {metric.target:.4f} on the "
                     f"tuning rows, a margin above the budget ({fid_text})")
    return _save(ctx, quantized, "openvino-int8", "f32", notes)


__all__ = ["build_openvino_fp32", "build_openvino_bf16", "build_openvino_int8",
           "bf16_skip_reason", "openvino_installed", "BudgetMetric"]
