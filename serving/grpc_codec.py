"""The Open Inference Protocol's gRPC messages (``tritonclient``'s generated ``service_pb2``)
turned into the REST request the gateway already serves, and its answer back.

A gRPC infer request becomes the body of a REST request in Triton's binary extension (a JSON
header, then every input's bytes), so it goes through exactly the decoding, validation,
limits, batching and metrics of a REST request (``Gateway.handle_infer``); the cost is one
copy of the tensor bytes and a small JSON header. Outputs always come back raw
(``raw_output_contents``), as Triton answers them.
"""

from __future__ import annotations

import struct

import grpc
import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb

from .protocol.codec import HEADER_LENGTH
from .protocol.errors import InvalidInput
from .repository import DATATYPES

#: the InferTensorContents field each datatype's typed contents are read from
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}

#: REST status -> gRPC status code, as Triton and KServe map them
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT, 499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(status: int) -> grpc.StatusCode:
    """The gRPC code of a REST status (anything else is the server's fault: INTERNAL)."""
    return STATUS_CODES.get(status, grpc.StatusCode.INTERNAL if status >= 500
                            else grpc.StatusCode.INVALID_ARGUMENT)


def _typed(name: str, datatype: str, contents: pb.InferTensorContents) -> bytes:
    """The raw bytes of typed contents, after checking they sit in the datatype's field and
    fit its range (the proto carries INT8..INT32 in one int32 field, UINT8..UINT32 in one
    uint32 field)."""
    want = CONTENTS.get(datatype)
    used = [f.name for f, _ in contents.ListFields()]
    if want is None:
        raise InvalidInput(f"input {name!r}: {datatype} data must be sent in "
                           "raw_input_contents (the proto has no typed field for it)")
    wrong = [f for f in used if f != want]
    if wrong:
        raise InvalidInput(f"input {name!r}: contents.{wrong[0]} cannot carry {datatype} data; "
                           f"use contents.{want} or raw_input_contents")
    values = getattr(contents, want)
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    dtype = np.dtype(DATATYPES[datatype])
    arr = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else
                     bool if dtype.kind == "b" else np.int64 if dtype.kind == "i" else np.uint64)
    if dtype.kind in "iu" and len(arr):
        info = np.iinfo(dtype)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise InvalidInput(f"input {name!r}: contents.{want} holds values outside "
                               f"{datatype}'s range [{info.min}, {info.max}]")
    return arr.astype(dtype).tobytes()


def request_body(req: pb.ModelInferRequest) -> tuple[bytes, dict[str, str]]:
    """The REST body (binary extension) and headers of a gRPC infer request; raises
    :class:`InvalidInput` naming the field for what has no REST equivalent. Everything the
    REST codec checks (datatypes, shapes against the data, limits) is left to it."""
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} "
                           "inputs; send one per input, in the inputs' order")
    entries, blobs = [], []
    for i, t in enumerate(req.inputs):
        if "shared_memory_region" in t.parameters:
            raise InvalidInput(f"inputs[{i}]: shared memory is not supported; send the data in "
                               "raw_input_contents or contents")
        has_typed = t.HasField("contents")
        if raw:
            if has_typed:
                raise InvalidInput(f"inputs[{i}] ({t.name!r}) has contents while the request "
                                   "uses raw_input_contents; use one or the other")
            data = raw[i]
        elif has_typed:
            if t.datatype not in DATATYPES:
                raise InvalidInput(f"input {t.name!r}: datatype {t.datatype!r} is not one of "
                                   f"{', '.join(DATATYPES)}")
            data = _typed(t.name, t.datatype, t.contents)
        else:
            raise InvalidInput(f"input {t.name!r} has neither contents nor raw_input_contents")
        entries.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                        "parameters": {"binary_data_size": len(data)}})
        blobs.append(data)
    doc: dict = {"inputs": entries, "parameters": {"binary_data_output": True}}
    if req.outputs:
        doc["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}}
                          for o in req.outputs]
    if req.id:
        doc["id"] = req.id
    head = orjson.dumps(doc)
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(head))}


def infer_response(body: bytes, headers: dict[str, str]) -> pb.ModelInferResponse:
    """A successful REST answer (binary outputs) as a gRPC infer response."""
    hlen = int(headers.get(HEADER_LENGTH, len(body)))
    doc = orjson.loads(body[:hlen])
    resp = pb.ModelInferResponse(model_name=doc["model_name"],
                                 model_version=doc["model_version"], id=doc.get("id", ""))
    pos = hlen
    for o in doc["outputs"]:
        resp.outputs.add(name=o["name"], datatype=o["datatype"], shape=o["shape"])
        size = o["parameters"]["binary_data_size"]
        resp.raw_output_contents.append(body[pos:pos + size])
        pos += size
    return resp


def error_message(body: bytes) -> str:
    """The message of a REST error answer."""
    try:
        return str(orjson.loads(body)["error"])
    except Exception:
        return body.decode("utf-8", "replace")[:500]


__all__ = ["request_body", "infer_response", "error_message", "status_code", "CONTENTS"]
