"""OpenVINO variants and runtime with the real openvino and nncf, on the tiny classifier."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.installed import require

# installed by scripts/test.sh (the openvino extra): missing, the module fails, never skips
require("openvino", "openvino")
require("nncf", "openvino")

from optimizers.fidelity import FidelityBudget  # noqa: E402
from optimizers.sources import resolve_source  # noqa: E402
from optimizers.validation import load_validation  # noqa: E402
from optimizers.variants import (  # noqa: E402
    VARIANTS, BuildContext, QuantizationFailed, VariantSkipped,
)
from optimizers.variants.openvino_variants import (  # noqa: E402
    _cpu_flags, bf16_skip_reason, int8_operations,
)
from serving.protocol.errors import InputRejected  # noqa: E402
from serving.repository import (  # noqa: E402
    Artifact, BatchingPolicy, Fidelity, Manifest, Measurements,
)
from serving.runtimes import RuntimeOptions, load_runtime  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

FACTORY = "tests.fixtures.tiny_models:classifier"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny classifier, 256 random rows and their reference outputs."""
    src = resolve_source(FACTORY, inputs=["x:FP32:-1,16"], task="classification", name="tiny")
    vset = load_validation(src, None, None)
    reference = vset.gather([src.reference(b) for b in vset.batches])
    return src, vset, reference, tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def tiny_generic(tiny):
    """The same model judged by cosine (task generic): a budget INT8 can miss."""
    src = resolve_source(FACTORY, inputs=["x:FP32:-1,16"], task="generic", name="tiny")
    return (src, *tiny[1:])


def context(tiny, name: str, budget: FidelityBudget | None = None, tune_seconds: float = 60.0,
            cache: dict | None = None) -> BuildContext:
    src, vset, reference, root = tiny
    return BuildContext(source=src, validation=vset, reference=reference,
                        budget=budget or FidelityBudget(), workdir=root / name, threads=2,
                        cache=cache if cache is not None else {}, tune_seconds=tune_seconds)


def as_version(build, src, where: Path) -> tuple[Manifest, Path]:
    """The build's files in a version directory and a manifest naming them."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build.model_file, where / build.model_file.name)
    for rel, path in build.extra_files.items():
        shutil.copyfile(path, where / rel)
    files = [build.model_file.name, *build.extra_files]
    manifest = Manifest(
        name=src.name, version=1, variant=build.variant, task=src.task, runtime=build.runtime,
        model_file=build.model_file.name, execution_providers=[],
        model_signature=src.model_signature, signature=src.signature,
        artifacts=[Artifact(path=f, sha256="0" * 64, size_bytes=0) for f in files],
        measurements=Measurements(fidelity=Fidelity(samples=0, passed=True, budget="-"),
                                  size_bytes=0),
        batching=BatchingPolicy(max_batch_size=32, max_delay_ms=1.0),
        source=src.source, optiserve_version="test")
    return manifest, where


def outputs(runtime, vset) -> np.ndarray:
    return vset.gather([runtime.run(b) for b in vset.batches])["output"]


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_fp32_ir_runs_like_onnxruntime_with_the_threads_and_precision_asked(tiny):
    import onnxruntime as ort
    import openvino as ov

    src, vset, reference, root = tiny
    ctx = context(tiny, "fp32")
    build = VARIANTS["openvino-fp32"].build(ctx)
    assert build.runtime == "openvino" and build.model_file.suffix == ".xml"
    assert set(build.extra_files) == {"model.bin"}
    manifest, vdir = as_version(build, src, root / "v-fp32")
    rt = load_runtime(manifest, vdir, RuntimeOptions(intra_op_threads=1))
    # f32 as built, also on CPUs whose OpenVINO default is bf16 (AMX); threads as asked
    assert rt.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert rt.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert rt.compiled.get_property("NUM_STREAMS") == 1
    assert rt.providers == ["OpenVINO CPU (f32, 1 threads)"]
    session = ort.InferenceSession(str(ctx.cache["onnx-export"]),
                                   providers=["CPUExecutionProvider"])
    x = vset.tensors["x"]
    for rows in (1, 7, 32, 100):  # dynamic batch
        want = session.run(None, {"x": x[:rows]})[0]
        got = rt.run({"x": x[:rows].astype(np.float64)})["output"]  # cast as the signature says
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputRejected, match=r"'x' has shape \[2, 3\], expected \[-1, 16\]"):
        rt.run({"x": np.zeros((2, 3), np.float32)})
    assert top1(outputs(rt, vset), reference["output"]) == 1.0


def test_bf16_applies_where_the_cpu_computes_in_bf16_and_is_skipped_elsewhere(tiny):
    import openvino as ov

    caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    assert "lacks native bf16" in bf16_skip_reason(["FP32", "BF16", "INT8"], {"avx2", "fma"})
    assert "no bf16 support in OpenVINO" in bf16_skip_reason(["FP32", "INT8"], None)
    assert bf16_skip_reason(["FP32", "BF16"], {"avx512f", "amx_bf16"}) is None
    reason = bf16_skip_reason(caps, _cpu_flags())
    src, vset, reference, root = tiny
    ctx = context(tiny, "bf16")
    if reason:
        with pytest.raises(VariantSkipped, match="bf16"):
            VARIANTS["openvino-bf16"].build(ctx)
        return
    build = VARIANTS["openvino-bf16"].build(ctx)
    manifest, vdir = as_version(build, src, root / "v-bf16")
    rt = load_runtime(manifest, vdir, RuntimeOptions(intra_op_threads=1))
    assert rt.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    got = outputs(rt, vset)
    assert top1(got, reference["output"]) >= 0.97
    assert not np.allclose(got, reference["output"], atol=1e-5)  # computed in bf16 indeed


def test_int8_is_quantized_within_the_budget(tiny):
    src, vset, reference, root = tiny
    ctx = context(tiny, "int8")
    build = VARIANTS["openvino-int8"].build(ctx)
    import openvino as ov

    model = ov.Core().read_model(str(build.model_file))
    assert int8_operations(model) == 3  # the three Linear layers
    manifest, vdir = as_version(build, src, root / "v-int8")
    rt = load_runtime(manifest, vdir, RuntimeOptions(intra_op_threads=1))
    assert top1(outputs(rt, vset), reference["output"]) >= ctx.budget.min_top1
    assert any("all 3 quantizable operations INT8" in n for n in build.notes), build.notes


def test_accuracy_control_keeps_layers_in_fp32_to_meet_a_strict_budget(tiny_generic):
    from optimizers.fidelity import row_cosines

    src, vset, reference, root = tiny_generic
    import openvino as ov

    strict = FidelityBudget(min_cosine=0.99999)
    build = VARIANTS["openvino-int8"].build(context(tiny_generic, "int8-strict", strict))
    kept = int8_operations(ov.Core().read_model(str(build.model_file)))
    assert kept < 3, build.notes
    assert any(f"kept {3 - kept} of 3 quantizable operations in fp32" in n
               for n in build.notes), build.notes
    manifest, vdir = as_version(build, src, root / "v-int8-strict")
    rt = load_runtime(manifest, vdir, RuntimeOptions(intra_op_threads=1))
    assert row_cosines(reference["output"], outputs(rt, vset)).min() >= 0.99999


def test_accuracy_control_is_bounded_in_time(tiny_generic):
    strict = FidelityBudget(min_cosine=0.99999)
    with pytest.raises(QuantizationFailed, match=r"within the 0 s it was given \(--tune-seconds"):
        VARIANTS["openvino-int8"].build(context(tiny_generic, "int8-late", strict,
                                                tune_seconds=0.0))


MISSING = """
import sys
sys.modules["openvino"] = None
from serving.repository import Manifest
from serving.runtimes import RuntimeLoadError, load_runtime
from optimizers.sources import resolve_source
from optimizers.variants import VARIANTS, VariantSkipped, default_variants
src = resolve_source("tests.fixtures.tiny_models:classifier", inputs=["x:FP32:-1,16"])
print("defaults", ",".join(default_variants(src)))
try:
    VARIANTS["openvino-int8"].build(None)
except VariantSkipped as e:
    print("skipped", e)
try:
    load_runtime(Manifest.model_validate_json(sys.stdin.read()), ".")
except RuntimeLoadError as e:
    print("refused", e)
"""


def test_without_openvino_the_variants_skip_and_the_runtime_says_what_to_install(tiny):
    src, _, _, root = tiny
    build = VARIANTS["openvino-fp32"].build(context(tiny, "fp32-missing"))
    manifest, _ = as_version(build, src, root / "v-missing")
    out = subprocess.run([sys.executable, "-c", MISSING], input=manifest.model_dump_json(),
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert "openvino" not in lines["defaults"] and "onnx-int8-static" in lines["defaults"]
    assert lines["skipped"] == "OpenVINO is not installed (pip install optiserve[openvino])"
    assert "install optiserve[openvino]" in lines["refused"]
