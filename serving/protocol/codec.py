"""Open Inference Protocol v2 (REST) request/response codec, JSON and Triton's binary extension.

Binary extension: the request body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by raw tensor bytes; an input with ``parameters.binary_data_size`` takes the next that
many bytes. BYTES tensors are sequences of 4-byte little-endian lengths, each followed by the bytes.
Outputs asked for with ``parameters.binary_data`` (or the request-level ``binary_data_output``)
are returned the same way.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..repository import DATATYPES, Signature
from .errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

HEADER_LENGTH = "inference-header-content-length"
_NP = {k: np.dtype(v) for k, v in DATATYPES.items() if k != "BYTES"}
#: Float datatypes an input of either accepts (cast to the declared one).
_FLOATS = {"FP32", "FP64"}


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
    #: Triton's classification extension: output name -> class count (``parameters.
    #: classification``); such an output comes back as its top classes' strings
    classification: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """Bounds one request must stay within; each is checked before the work it bounds."""

    #: largest body after decompression (the compressed size is bounded where it is read)
    max_body_bytes: int = 64 * 1024 * 1024
    #: most rows (first dimension) of any input: the version's max_batch_size
    max_rows: int | None = None
    #: largest single element of a BYTES tensor
    max_element_bytes: int = 1024 * 1024
    #: most dimensions of a tensor
    max_dims: int = 16


DEFAULT_LIMITS = Limits()
_DECOMPRESS_CHUNK = 1 << 20


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Inflate a gzip/deflate body, refusing (413) as soon as it grows past ``limit`` bytes:
    the output is produced in bounded chunks, so a small body that inflates to gigabytes
    costs at most ``limit`` bytes of memory and the time to produce them."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # RFC 9110's deflate is zlib-wrapped; some clients send raw deflate: accept both
        wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 and len(body) > 1 and (
            (body[0] << 8) | body[1]) % 31 == 0 else -zlib.MAX_WBITS
    else:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip "
                                   "or deflate")
    out, size = [], 0
    data = body
    try:
        while data:
            d = zlib.decompressobj(wbits)
            chunk = d.decompress(data, _DECOMPRESS_CHUNK)
            while True:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body inflates past the limit of {limit} "
                                          f"bytes (Content-Encoding: {encoding})")
                out.append(chunk)
                if d.eof or not d.unconsumed_tail and not chunk:
                    break
                chunk = d.decompress(d.unconsumed_tail, _DECOMPRESS_CHUNK)
            if not d.eof:
                raise InvalidInput(f"body is not valid {encoding} data: it ends early")
            # gzip allows several members one after another
            data = d.unused_data if wbits > zlib.MAX_WBITS else b""
    except zlib.error as e:
        raise InvalidInput(f"body is not valid {encoding} data: {e}") from None
    return b"".join(out)


def _bytes_elements(raw: bytes, name: str, count: int, max_element: int) -> list[bytes]:
    """The elements of a binary BYTES tensor; stops as soon as the data disagrees with the
    shape's ``count``, so a hostile body costs no more than the elements it claims."""
    out, pos, n = [], 0, len(raw)
    while pos < n:
        if len(out) == count:
            raise InvalidInput(f"input {name!r}: binary data holds more than the {count} "
                               "BYTES elements its shape needs")
        if pos + 4 > n:
            raise InvalidInput(f"input {name!r}: truncated BYTES element length at byte {pos}")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if size > max_element:
            raise PayloadTooLarge(f"input {name!r}: BYTES element {len(out)} is {size} bytes, "
                                  f"the limit is {max_element}")
        if pos + size > n:
            raise InvalidInput(
                f"input {name!r}: BYTES element of {size} bytes runs past the data ({n - pos} left)"
            )
        out.append(raw[pos:pos + size])
        pos += size
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_shape(name: str, shape, limits: Limits, body_bytes: int) -> list[int]:
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, "
                           f"got {_preview(shape)}")
    if len(shape) > limits.max_dims:
        raise InvalidInput(f"input {name!r}: shape has {len(shape)} dimensions, at most "
                           f"{limits.max_dims} are accepted")
    if limits.max_rows is not None and shape and shape[0] > limits.max_rows:
        raise InvalidInput(f"input {name!r} has {shape[0]} rows; this model version accepts at "
                           f"most {limits.max_rows} rows per request (max_batch_size): split "
                           "the request")
    # Python ints: no wrap-around. Every element takes at least one byte of any valid body.
    count = _count(shape)
    if count > max(body_bytes, 1):
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, more than a "
                           f"{body_bytes}-byte request can carry")
    return shape


def _count(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _preview(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def _json_tensor(name: str, datatype: str, shape: list[int], data,
                 max_element: int = DEFAULT_LIMITS.max_element_bytes) -> np.ndarray:
    count = _count(shape)
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, "
                           f"data has {len(flat)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if isinstance(v, str):
                b = v.encode("utf-8")
            elif isinstance(v, (bytes, bytearray)):
                b = bytes(v)
            else:
                raise InvalidInput(f"input {name!r}: BYTES data must be strings, "
                                   f"got {type(v).__name__} at element {i}")
            if len(b) > max_element:
                raise PayloadTooLarge(f"input {name!r}: element {i} is {len(b)} bytes, the "
                                      f"limit is {max_element}")
            out[i] = b
        return out.reshape(shape)
    want = _NP[datatype]
    arr = np.asarray(flat) if flat else np.empty(0, dtype=want)
    kind = arr.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b" or not flat
    elif want.kind in "iu":
        ok = kind in "iub" or not flat
        if ok and flat and kind != "b":
            info = np.iinfo(want)
            ok = info.min <= int(arr.min()) and int(arr.max()) <= info.max
    else:
        ok = kind in "iubf" or not flat
    if not ok:
        what = "true/false values" if datatype == "BOOL" else "numbers"
        raise InvalidInput(f"input {name!r}: data is not a list of {datatype} {what} (wrong "
                           f"type, or out of {datatype}'s range)")
    with np.errstate(all="ignore"):
        return arr.astype(want, copy=False).reshape(shape)


def _flatten(data) -> list:
    """Nested lists to one flat list, iteratively (a hostile nesting depth cannot exhaust the
    stack)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(d, list) for d in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for d in stack[-1]:
            if isinstance(d, list):
                stack.append(iter(d))
                break
            out.append(d)
        else:
            stack.pop()
    return out


def _field(doc: dict, key: str, kind, where: str, what: str):
    v = doc.get(key)
    if v is None:
        return None
    if not (_is_int(v) if kind is int else isinstance(v, kind)):
        raise InvalidInput(f"{where}{key} must be {what}, got {_preview(v)}")
    return v


def decode_request(body: bytes, headers, limits: Limits = DEFAULT_LIMITS) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors). Every way a body
    can be wrong is an :class:`InvalidInput` (400), :class:`PayloadTooLarge` (413) or
    :class:`UnsupportedMediaType` (415) whose message names the field."""
    body = _decompress(body, headers.get("content-encoding"), limits.max_body_bytes)
    header_len = headers.get(HEADER_LENGTH)
    if header_len is not None:
        try:
            hlen = int(header_len)
        except ValueError:
            raise InvalidInput(f"Inference-Header-Content-Length must be an integer, "
                               f"got {_preview(header_len)}") from None
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
    params = _field(doc, "parameters", dict, "", "an object") or {}
    inputs: dict[str, Tensor] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        where = f"inputs[{i}]."
        if not isinstance(t, dict):
            raise InvalidInput(f"inputs[{i}] must be an object with name, datatype, shape, data")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}].name must be a non-empty string")
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        datatype = t.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise InvalidInput(f"input {name!r}: datatype {_preview(datatype)} is not one of "
                               f"{', '.join(DATATYPES)}")
        shape = _check_shape(name, t.get("shape"), limits, len(body))
        tparams = _field(t, "parameters", dict, where, "an object") or {}
        size = _field(tparams, "binary_data_size", int, f"{where}parameters.",
                      "a non-negative integer")
        if size is not None:
            if size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative "
                                   f"integer")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} runs past the binary data "
                    f"({len(binary) - offset} bytes left); check Inference-Header-Content-Length"
                )
            raw = bytes(binary[offset:offset + size])
            offset += size
            data = _binary_tensor(name, datatype, shape, raw, limits.max_element_bytes)
        else:
            if "data" not in t:
                raise InvalidInput(f"input {name!r} has neither \"data\" nor "
                                   "parameters.binary_data_size")
            data = _json_tensor(name, datatype, shape, t["data"], limits.max_element_bytes)
        inputs[name] = Tensor(name, datatype, shape, data)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by "
                           "any input's binary_data_size")
    binary_default = _field(params, "binary_data_output", bool, "parameters.",
                            "true or false") or False
    outputs, classification = {}, {}
    raw_outputs = _field(doc, "outputs", list, "", "a list") or []
    for j, o in enumerate(raw_outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidInput(f"outputs[{j}] must be an object with a string \"name\"")
        op = _field(o, "parameters", dict, f"outputs[{j}].", "an object") or {}
        binary = _field(op, "binary_data", bool, f"outputs[{j}].parameters.", "true or false")
        outputs[o["name"]] = binary_default if binary is None else binary
        count = _field(op, "classification", int, f"outputs[{j}].parameters.",
                       "a positive integer (the class count)")
        if count is not None:
            if count < 1:
                raise InvalidInput(f"outputs[{j}].parameters.classification must be a positive "
                                   f"integer (the class count), got {count}")
            classification[o["name"]] = count
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput(f"id must be a string, got {_preview(rid)}")
    return InferRequest(inputs=inputs, id=rid, outputs=outputs, binary_default=binary_default,
                        parameters=params, classification=classification)


def _binary_tensor(name: str, datatype: str, shape: list[int], raw: bytes,
                   max_element: int = DEFAULT_LIMITS.max_element_bytes) -> np.ndarray:
    count = _count(shape)
    if datatype == "BYTES":
        elems = _bytes_elements(raw, name, count, max_element)
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
        if t.datatype != spec.datatype and {t.datatype, spec.datatype} == _FLOATS:
            # FP32 and FP64 are both taken for either (numpy's default is float64): cast to
            # the declared datatype here, so a batch never mixes the two
            with np.errstate(all="ignore"):
                t.data = t.data.astype(_NP[spec.datatype])
            t.datatype = spec.datatype
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
    if getattr(outputs, "parameters", None):  # e.g. the rows a tokenizer truncated
        doc["parameters"] = outputs.parameters
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
