"""The in-process GPU sampler's device resolution and labels, against a stand-in for NVML (no GPU
here): CUDA_VISIBLE_DEVICES as indices, GPU and MIG UUIDs, MIG instances of a GPU in MIG mode,
every series labelled by the device's UUID; MIG instances report memory only."""

from __future__ import annotations

import types

import pytest

from serving import metrics as M
from serving.gpu import GpuSampler, visible_devices


class NvmlError(Exception):
    pass


def fake_nvml(mig_on_gpu1: bool = True) -> types.SimpleNamespace:
    """Two H100s; the second in MIG mode with two instances (slot 1 empty)."""
    gpus = [{"uuid": "GPU-aaaa", "name": "NVIDIA H100", "mig": 0, "util": 70, "used": 5,
             "total": 80, "power": 300_000, "instances": []},
            {"uuid": "GPU-bbbb", "name": "NVIDIA H100", "mig": 1 if mig_on_gpu1 else 0,
             "util": 10, "used": 7, "total": 80, "power": 100_000,
             "instances": [{"uuid": "MIG-1111", "name": "NVIDIA H100 MIG 3g.40gb", "used": 3,
                            "total": 40}, None,
                           {"uuid": "MIG-2222", "name": "NVIDIA H100 MIG 3g.40gb", "used": 4,
                            "total": 40}]}]
    by_uuid = {g["uuid"]: g for g in gpus}
    by_uuid.update({i["uuid"]: {**i, "is_mig": True} for g in gpus for i in g["instances"] if i})

    def not_mig(h):
        if h.get("is_mig"):
            raise NvmlError("NVML_ERROR_NOT_SUPPORTED")
        return h

    def mig_handle(parent, i):
        inst = parent["instances"][i]
        if inst is None:
            raise NvmlError("NVML_ERROR_NOT_FOUND")
        return by_uuid[inst["uuid"]]

    return types.SimpleNamespace(
        NVML_DEVICE_MIG_ENABLE=1,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetHandleByUUID=lambda u: by_uuid[u.decode()],
        nvmlDeviceGetUUID=lambda h: h["uuid"].encode(),
        nvmlDeviceGetName=lambda h: h["name"],
        nvmlDeviceGetMigMode=lambda h: (not_mig(h)["mig"], h["mig"]),
        nvmlDeviceGetMaxMigDeviceCount=lambda h: len(h["instances"]),
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=h["used"], total=h["total"]),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=not_mig(h)["util"]),
        nvmlDeviceGetPowerUsage=lambda h: not_mig(h)["power"],
    )


def uuids(devices) -> list[tuple[str, str, bool]]:
    return [(d.ordinal, d.uuid, d.mig) for d in devices]


@pytest.mark.parametrize("visible, want", [
    (None, [("0", "GPU-aaaa", False), ("1", "MIG-1111", True), ("2", "MIG-2222", True)]),
    ("1,0", [("0", "GPU-bbbb", False), ("1", "GPU-aaaa", False)]),
    ("GPU-bbbb", [("0", "GPU-bbbb", False)]),
    ("MIG-2222", [("0", "MIG-2222", True)]),
    ("GPU-aaaa,MIG-1111", [("0", "GPU-aaaa", False), ("1", "MIG-1111", True)]),
    # CUDA stops at the first empty or invalid entry
    ("0,,1", [("0", "GPU-aaaa", False)]),
    ("NoDevFiles", []),
])
def test_visible_devices_as_cuda_sees_them(visible, want):
    assert uuids(visible_devices(fake_nvml(), visible)) == want


def test_without_mig_every_gpu_is_one_device():
    assert uuids(visible_devices(fake_nvml(mig_on_gpu1=False), None)) == [
        ("0", "GPU-aaaa", False), ("1", "GPU-bbbb", False)]


class Capture:
    def __init__(self):
        self.series: dict[tuple[str, tuple], float] = {}

    def set(self, spec, tags, value):
        assert set(tags) == set(spec.tag_keys), (spec.prom, tags)
        self.series[(spec.prom, tuple(sorted(tags.items())))] = value


def test_samples_are_labelled_by_uuid_and_mig_reports_memory_only(monkeypatch):
    nvml = fake_nvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    rec = Capture()
    sampler = GpuSampler(rec, interval_s=3600)
    assert sampler.start()
    sampler.stop()
    got = {(name, dict(tags)["gpu_uuid"]): v for (name, tags), v in rec.series.items()}
    assert got[(M.GPU_UTILIZATION.prom, "GPU-aaaa")] == 0.7
    assert got[(M.GPU_POWER.prom, "GPU-aaaa")] == 300.0
    assert got[(M.GPU_MEMORY_USED.prom, "MIG-1111")] == 3.0
    assert got[(M.GPU_MEMORY_TOTAL.prom, "MIG-2222")] == 40.0
    assert (M.GPU_UTILIZATION.prom, "MIG-1111") not in got
    assert (M.GPU_POWER.prom, "MIG-2222") not in got
    # the parent of the MIG instances is not a device of its own
    assert not any(u == "GPU-bbbb" for _, u in got)
    names = {dict(tags)["gpu_name"] for (_, tags) in rec.series}
    assert names == {"NVIDIA H100", "NVIDIA H100 MIG 3g.40gb"}


def test_uuid_visible_devices_are_sampled(monkeypatch):
    """UUID-style CUDA_VISIBLE_DEVICES (what the NVIDIA device plugin sets) yields series."""
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake_nvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    rec = Capture()
    sampler = GpuSampler(rec, interval_s=3600)
    assert sampler.start()
    sampler.stop()
    assert {dict(t)["gpu_uuid"] for _, t in rec.series} == {"GPU-bbbb"}
    assert {dict(t)["gpu"] for _, t in rec.series} == {"0"}
