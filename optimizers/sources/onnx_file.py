"""An ONNX file as the source: its graph is the reference, run without graph optimisation."""

from __future__ import annotations

from pathlib import Path

from serving.repository import Signature, Source, TensorSpec, sha256_file

from ..errors import SourceError
from .base import SourceModel

# onnx.TensorProto element types -> Open Inference Protocol datatypes
_ONNX_TO_OIP = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
                8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64"}


def _specs(values, what: str, path: Path) -> list[TensorSpec]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        if t.elem_type not in _ONNX_TO_OIP:
            raise SourceError(
                f"{path}: {what} {v.name!r} has ONNX element type {t.elem_type}, which optiserve "
                f"cannot serve (expected one of {sorted(set(_ONNX_TO_OIP.values()))})"
            )
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                for d in t.shape.dim]
        if not dims:
            raise SourceError(f"{path}: {what} {v.name!r} is a scalar; expected a batch dimension")
        dims[0] = -1  # the first dimension is the batch
        specs.append(TensorSpec(name=v.name, datatype=_ONNX_TO_OIP[t.elem_type], shape=dims))
    return specs


def load(path: str, name: str | None = None, task: str = "generic") -> SourceModel:
    import onnx

    p = Path(path)
    if not p.is_file():
        raise SourceError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as e:
        raise SourceError(
            f"{path} is not a valid ONNX model ({type(e).__name__}: {str(e).strip()[:300]}); "
            "expected a file written by onnx.save or torch.onnx.export"
        ) from e
    initializers = {i.name for i in model.graph.initializer}
    inputs = _specs([i for i in model.graph.input if i.name not in initializers], "input", p)
    outputs = _specs(model.graph.output, "output", p)
    if any(s.datatype == "BYTES" for s in inputs + outputs):
        raise SourceError(f"{path}: string tensors in the graph are not supported")
    sig = Signature(inputs=inputs, outputs=outputs)
    return SourceModel(
        name=name or p.stem,
        source=Source(kind="onnx", ref=str(p.resolve()), sha256=sha256_file(p)),
        task=task,
        model_signature=sig,
        signature=sig,
        onnx_path=p.resolve(),
    )
