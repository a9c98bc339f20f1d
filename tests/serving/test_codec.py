"""Open Inference Protocol codec: JSON and binary tensors, and precise errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import orjson
import pytest

from serving.protocol import (
    InvalidInput,
    UnsupportedMediaType,
    decode_request,
    decode_response,
    encode_infer_request,
    encode_response,
    validate_inputs,
)
from serving.repository import Signature, TensorSpec

TEXT_SIG = Signature(inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
                     outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, 4])])
TENSOR_SIG = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
                       outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])])


def _json(doc) -> bytes:
    return orjson.dumps(doc)


def test_json_text_request_round_trip():
    req = decode_request(_json({"id": "r1", "inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["héllo", "world"]}]}), {})
    validate_inputs(req, TEXT_SIG, "m")
    assert req.id == "r1"
    assert list(req.inputs["text"].data) == ["héllo".encode(), b"world"]
    body, headers = encode_response("m", 3, {"embedding": np.ones((2, 4), np.float32)}, req)
    assert headers["content-type"] == "application/json"
    doc = orjson.loads(body)
    assert doc["model_version"] == "3" and doc["id"] == "r1"
    assert doc["outputs"][0]["shape"] == [2, 4] and doc["outputs"][0]["data"] == [1.0] * 8


def test_binary_request_and_response_round_trip():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, headers = encode_infer_request({"x": x}, binary=True, binary_output=True)
    req = decode_request(body, headers)
    validate_inputs(req, TENSOR_SIG, "m")
    np.testing.assert_array_equal(req.inputs["x"].data, x)
    out, out_headers = encode_response("m", 1, {"y": x[:, :2] * 2}, req)
    assert "inference-header-content-length" in out_headers
    doc, tensors = decode_response(out, out_headers)
    np.testing.assert_array_equal(tensors["y"], x[:, :2] * 2)
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 16


def test_binary_bytes_tensor():
    texts = np.array(["a", "", "ü" * 3], dtype=object)
    body, headers = encode_infer_request({"text": texts}, binary=True)
    req = decode_request(body, headers)
    assert list(req.inputs["text"].data) == [b"a", b"", "ü".encode() * 3]


def test_triton_shape_n_by_1_for_text_is_accepted():
    req = decode_request(_json({"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]}]}), {})
    validate_inputs(req, TEXT_SIG, "m")
    assert req.inputs["text"].shape == [2]


def test_nested_json_data_is_flattened():
    req = decode_request(_json({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}]}), {})
    assert req.inputs["x"].data.shape == (2, 3)


def test_gzip_body():
    body = gzip.compress(_json({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}))
    req = decode_request(body, {"content-encoding": "gzip"})
    assert req.inputs["x"].data.tolist() == [[1, 2, 3]]
    with pytest.raises(UnsupportedMediaType, match="Content-Encoding 'br' is not supported"):
        decode_request(body, {"content-encoding": "br"})


@pytest.mark.parametrize("body, headers, message", [
    (b"{not json", {}, "request body is not valid JSON"),
    (b"[1, 2]", {}, "must be a JSON object"),
    (b'{"inputs": []}', {}, "non-empty \"inputs\" list"),
    (_json({"inputs": [{"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}]}), {},
     "datatype 'FP33' is not one of"),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2]}]}), {},
     "shape [2, 3] needs 6 elements, data has 2"),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}), {},
     "data is not a list of FP32 numbers"),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}), {},
     "shape must be a list of non-negative integers"),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}), {},
     "has neither \"data\" nor parameters.binary_data_size"),
    (b'{"inputs": []}', {"inference-header-content-length": "abc"},
     "Inference-Header-Content-Length must be an integer"),
    (b'{"inputs": []}', {"inference-header-content-length": "999"},
     "Inference-Header-Content-Length 999 is outside the 14-byte body"),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                        "parameters": {"binary_data_size": 12}}]}) + b"\x00" * 4,
     {"inference-header-content-length": "77"}, "runs past the binary data"),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                        "parameters": {"binary_data_size": 8}}]}) + b"\x00" * 8,
     {"inference-header-content-length": "76"}, "needs 12 bytes, binary data has 8"),
    (_json({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": 6}}]}) + struct.pack("<I", 9) + b"ab",
     {"inference-header-content-length": "75"}, "BYTES element of 9 bytes runs past the data"),
])
def test_malformed_requests_get_precise_errors(body, headers, message):
    if "inference-header-content-length" in headers and headers[
            "inference-header-content-length"].isdigit() and int(
            headers["inference-header-content-length"]) < 999:
        # point the header length at the JSON part exactly
        headers = {"inference-header-content-length": str(body.index(b"}]}") + 3)}
    with pytest.raises(InvalidInput) as err:
        decode_request(body, headers)
    assert message in str(err.value)


@pytest.mark.parametrize("inputs, message", [
    ([{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}],
     "input 'text' has datatype FP32, expected BYTES"),
    ([{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
     "unknown input 'txt' for model 'm'; expected text"),
    ([{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}],
     "input 'text' has shape [1, 2], expected [-1]"),
    ([{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}], "input 'text' has no rows"),
])
def test_signature_mismatches(inputs, message):
    req = decode_request(_json({"inputs": inputs}), {})
    with pytest.raises(InvalidInput) as err:
        validate_inputs(req, TEXT_SIG, "m")
    assert str(err.value).startswith(message)


def test_unknown_requested_output():
    req = decode_request(_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                            "data": [1, 2, 3]}],
                                "outputs": [{"name": "z"}]}), {})
    with pytest.raises(InvalidInput, match="unknown output 'z'; model 'm' has y"):
        validate_inputs(req, TENSOR_SIG, "m")


def test_bytes_elements_are_bounded_in_json_and_binary():
    from serving.protocol import PayloadTooLarge
    from serving.protocol.codec import Limits

    limits = Limits(max_element_bytes=10)
    ok = _json({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2],
                            "data": ["0123456789", "short"]}]})
    assert decode_request(ok, {}, limits).inputs["t"].data.tolist() == [b"0123456789", b"short"]
    big = _json({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2],
                             "data": ["short", "01234567890"]}]})
    with pytest.raises(PayloadTooLarge, match="input 't': element 1 is 11 bytes, the limit is 10"):
        decode_request(big, {}, limits)
    body, headers = encode_infer_request({"t": np.array(["short", "01234567890"], dtype=object)})
    with pytest.raises(PayloadTooLarge, match="BYTES element 1 is 11 bytes, the limit is 10"):
        decode_request(body, headers, limits)
