"""Open Inference Protocol v2 (REST) request/response codec, JSON and Triton's binary extension.

Binary extension: the request body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by raw tensor bytes; an input with ``parameters.binary_data_size`` takes the next that
many bytes. BYTES tensors are sequences of 4-byte little-endian lengths, each followed by the bytes.
Outputs asked for with ``parameters.binary_data`` (or the request-level ``binary_data_output``)
are returned the same way.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..repository import DATATYPES, Signature
from .errors import InvalidInput, UnsupportedMediaType

HEADER_LENGTH = "inference-header-content-length"
_NP = {k: np.dtype(v) for k, v in DATATYPES.items() if k != "BYTES"}


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # object array of bytes for BYTES


@dataclass
class InferRequest:
    inputs: dict[str, Tensor]
    id: str | None = None
    #: requested outputs: name -> binary? (empty: all outputs, binary per ``binary_default``)
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    parameters: dict = field(default_factory=dict)


def _decompress(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error) as e:
        raise InvalidInput(f"body is not valid {encoding} data: {e}")
    raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    out, pos, n = [], 0, len(raw)
    while pos < n:
        if pos + 4 > n:
            raise InvalidInput(f"input {name!r}: truncated BYTES element length at byte {pos}")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > n:
            raise InvalidInput(
                f"input {name!r}: BYTES element of {size} bytes runs past the data ({n - pos} left)"
            )
        out.append(raw[pos:pos + size])
        pos += size
    return out


def _check_shape(name: str, shape) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, "
                           f"got {shape!r}")
    return shape


def _count(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def _json_tensor(name: str, datatype: str, shape: list[int], data) -> np.ndarray:
    count = _count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, "
                               f"data has {len(flat)}")
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if isinstance(v, str):
                out[i] = v.encode("utf-8")
            elif isinstance(v, (bytes, bytearray)):
                out[i] = bytes(v)
            else:
                raise InvalidInput(f"input {name!r}: BYTES data must be strings, "
                                   f"got {type(v).__name__}")
        return out.reshape(shape)
    try:
        arr = np.asarray(data, dtype=_NP[datatype])
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"input {name!r}: data is not a list of {datatype} numbers"
        ) from None
    if arr.size != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, "
                           f"data has {arr.size}")
    return arr.reshape(shape)


def _flatten(data) -> list:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out = []
        for d in data:
            out.extend(_flatten(d))
        return out
    return data


def decode_request(body: bytes, headers) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors)."""
    body = _decompress(body, headers.get("content-encoding"))
    header_len = headers.get(HEADER_LENGTH)
    if header_len is not None:
        try:
            hlen = int(header_len)
        except ValueError:
            raise InvalidInput(f"Inference-Header-Content-Length must be an integer, "
                               f"got {header_len!r}") from None
        if hlen < 0 or hlen > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {hlen} is outside the "
                               f"{len(body)}-byte body")
        json_part, binary = body[:hlen], memoryview(body)[hlen:]
    else:
        json_part, binary = body, memoryview(b"")
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object with an \"inputs\" list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request must have a non-empty \"inputs\" list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("\"parameters\" must be an object")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        if not isinstance(t, dict):
            raise InvalidInput(f"inputs[{i}] must be an object with name, datatype, shape, data")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}] has no \"name\"")
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        datatype = t.get("datatype")
        if datatype not in DATATYPES:
            raise InvalidInput(f"input {name!r}: datatype {datatype!r} is not one of "
                               f"{', '.join(DATATYPES)}")
        shape = _check_shape(name, t.get("shape"))
        tparams = t.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative "
                                   f"integer")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} runs past the binary data "
                    f"({len(binary) - offset} bytes left); check Inference-Header-Content-Length"
                )
            raw = bytes(binary[offset:offset + size])
            offset += size
            data = _binary_tensor(name, datatype, shape, raw)
        else:
            if "data" not in t:
                raise InvalidInput(f"input {name!r} has neither \"data\" nor "
                                   "parameters.binary_data_size")
            data = _json_tensor(name, datatype, shape, t["data"])
        inputs[name] = Tensor(name, datatype, shape, data)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by "
                           "any input's binary_data_size")
    binary_default = bool(params.get("binary_data_output", False))
    outputs = {}
    for o in doc.get("outputs") or []:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidInput("each entry of \"outputs\" must be an object with a \"name\"")
        op = o.get("parameters") or {}
        outputs[o["name"]] = bool(op.get("binary_data", binary_default))
    rid = doc.get("id")
    return InferRequest(inputs=inputs, id=str(rid) if rid is not None else None,
                        outputs=outputs, binary_default=binary_default, parameters=params)


def _binary_tensor(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    count = _count(shape)
    if datatype == "BYTES":
        elems = _bytes_elements(raw, name)
        if len(elems) != count:
            raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, "
                               f"binary data has {len(elems)}")
        arr = np.empty(count, dtype=object)
        arr[:] = elems
        return arr.reshape(shape)
    dtype = _NP[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: shape {shape} of {datatype} needs "
                           f"{count * dtype.itemsize} bytes, binary data has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def validate_inputs(req: InferRequest, signature: Signature, model: str) -> None:
    """Names, datatypes and shapes against the served signature, with exact messages."""
    expected = {t.name: t for t in signature.inputs}
    for name, t in req.inputs.items():
        spec = expected.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input {name!r} for model {model!r}; expected "
                               f"{', '.join(expected)}")
        if t.datatype != spec.datatype:
            raise InvalidInput(f"input {name!r} has datatype {t.datatype}, expected "
                               f"{spec.datatype}")
        shape, want = t.shape, spec.shape
        # a text input [-1] also accepts [N, 1], the shape Triton clients often send
        if spec.datatype == "BYTES" and len(want) == 1 and len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]
            t.data = t.data.reshape(shape)
            t.shape = shape
        if len(shape) != len(want) or any(w not in (-1, s) for w, s in zip(want, shape)):
            raise InvalidInput(f"input {name!r} has shape {t.shape}, expected {want} "
                               "(-1 = any size)")
        if shape and shape[0] == 0:
            raise InvalidInput(f"input {name!r} has no rows")
    missing = [n for n in expected if n not in req.inputs]
    if missing:
        raise InvalidInput(f"model {model!r} needs input(s) {', '.join(missing)}")
    rows = {t.shape[0] for t in req.inputs.values()}
    if len(rows) > 1:
        raise InvalidInput(f"inputs have different batch sizes {sorted(rows)}")
    for name in req.outputs:
        if name not in {o.name for o in signature.outputs}:
            raise InvalidInput(f"unknown output {name!r}; model {model!r} has "
                               f"{', '.join(o.name for o in signature.outputs)}")


def _to_datatype(arr: np.ndarray) -> str:
    for k, v in _NP.items():
        if arr.dtype == v:
            return k
    return "BYTES"


def encode_response(model: str, version: int, outputs: dict[str, np.ndarray], req: InferRequest,
                    ) -> tuple[bytes, dict[str, str]]:
    """Serialize an infer response; binary where the request asked for it."""
    wanted = req.outputs or {name: req.binary_default for name in outputs}
    header_outputs, blobs = [], []
    for name, binary in wanted.items():
        arr = np.ascontiguousarray(outputs[name])
        entry = {"name": name, "datatype": _to_datatype(arr), "shape": list(arr.shape)}
        if binary:
            raw = arr.tobytes() if arr.dtype != object else b"".join(
                struct.pack("<I", len(b)) + b for b in arr.ravel())
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.ravel() if arr.dtype != object else [
                b.decode("utf-8", "replace") for b in arr.ravel()]
        header_outputs.append(entry)
    doc = {"model_name": model, "model_version": str(version), "outputs": header_outputs}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


def encode_infer_request(inputs: dict[str, np.ndarray], binary: bool = True,
                         binary_output: bool = True, request_id: str | None = None
                         ) -> tuple[bytes, dict[str, str]]:
    """Client side: build an infer request (used by ``optiserve bench`` and shadow tests)."""
    entries, blobs = [], []
    for name, arr in inputs.items():
        dt = "BYTES" if arr.dtype == object or arr.dtype.kind in "SU" else _to_datatype(arr)
        entry = {"name": name, "datatype": dt, "shape": list(arr.shape)}
        if binary:
            if dt == "BYTES":
                raw = b"".join(struct.pack("<I", len(b)) + b for b in (
                    x.encode() if isinstance(x, str) else bytes(x) for x in arr.ravel()))
            else:
                raw = np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = [x if isinstance(x, str) else x.decode() for x in arr.ravel()] \
                if dt == "BYTES" else arr.ravel()
        entries.append(entry)
    doc: dict = {"inputs": entries}
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    if request_id:
        doc["id"] = request_id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {"content-type": "application/json"}
    if binary:
        headers = {"content-type": "application/octet-stream",
                   "inference-header-content-length": str(len(head))}
        return head + b"".join(blobs), headers
    return head, headers


def decode_response(body: bytes, headers) -> tuple[dict, dict[str, np.ndarray]]:
    """Client side: parse an infer response into (header document, outputs)."""
    hlen = headers.get(HEADER_LENGTH)
    head = body[: int(hlen)] if hlen is not None else body
    doc = orjson.loads(head)
    pos = int(hlen) if hlen is not None else len(body)
    out = {}
    for o in doc.get("outputs", []):
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[o["name"]] = _binary_tensor(o["name"], o["datatype"], o["shape"],
                                            body[pos:pos + size])
            pos += size
        else:
            out[o["name"]] = _json_tensor(o["name"], o["datatype"], o["shape"], o["data"])
    return doc, out
