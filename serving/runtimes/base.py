"""What every runtime offers: run model-level tensors, report its providers and load time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..repository import DATATYPES, Manifest


def short_message(e: BaseException, limit: int = 300) -> str:
    """An exception's text fit for a client: the first line that says something, no colour
    codes, bounded."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    text = " ".join(text.split("\n")[0].split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class RuntimeLoadError(RuntimeError):
    """A model version cannot be loaded as its manifest asks (missing provider, bad file, ...)."""


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RuntimeOptions:
    """Thread settings; the optimizer benchmarks with the same ones serving uses."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = 1
    #: Let idle intra-op threads spin for work. Off by default: spinning threads burn the CPU
    #: that the gateway, HTTP and other replicas on the same machine need.
    spin: bool = False
    #: Where TensorRT keeps built engines (the version directory itself stays immutable).
    cache_dir: str | None = None

    def threads(self) -> int:
        return self.intra_op_threads or available_cpus()


class ModelRuntime(Protocol):
    manifest: Manifest
    providers: list[str]
    load_time_s: float

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch of model-level input tensors; return output tensors by name."""
        ...


def cast_inputs(manifest: Manifest, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast inputs to the model signature's dtypes (clients may send INT32 ids, ...)."""
    out = {}
    for spec in manifest.model_signature.inputs:
        if spec.name not in inputs:
            raise ValueError(f"model input {spec.name!r} is missing")
        out[spec.name] = np.ascontiguousarray(inputs[spec.name], dtype=DATATYPES[spec.datatype])
    return out


def check_shapes(manifest: Manifest, feeds: dict[str, np.ndarray]) -> None:
    """Refuse (InputRejected) inputs whose rank or fixed dimensions differ from the signature."""
    from ..protocol.errors import InputRejected

    for spec in manifest.model_signature.inputs:
        got = feeds[spec.name].shape
        if len(got) != len(spec.shape) or any(d not in (-1, n) for d, n in zip(spec.shape, got)):
            raise InputRejected(f"{manifest.name}:{manifest.version} rejected the inputs: "
                                f"{spec.name!r} has shape {list(got)}, expected {spec.shape} "
                                "(-1 = any size)")
