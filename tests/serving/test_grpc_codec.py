"""gRPC infer messages to the REST body the gateway serves and back (serving/grpc_codec.py),
checked with the REST codec itself: what tritonclient.grpc sends decodes to the same tensors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from serving.grpc_codec import infer_response, request_body, status_code
from serving.protocol import InvalidInput, decode_request, encode_response


def _request(*tensors, raw=True, outputs=(), rid=""):
    import tritonclient.grpc as tg

    from tritonclient.grpc._utils import _get_inference_request

    inputs = []
    for name, arr, dt in tensors:
        i = tg.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    req = _get_inference_request("m", inputs, "", rid, [tg.InferRequestedOutput(o)
                                                        for o in outputs] or None,
                                 0, False, False, 0, None, None)
    if not raw:  # the same tensors as typed contents
        typed = pb.ModelInferRequest(model_name="m")
        for (name, arr, dt), t in zip(tensors, req.inputs):
            ti = typed.inputs.add(name=name, datatype=dt, shape=t.shape)
            field = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents",
                     "INT8": "int_contents"}[dt]
            values = [v.encode() if isinstance(v, str) else v for v in arr.ravel().tolist()]
            getattr(ti.contents, field).extend(values)
        req = typed
    return req


@pytest.mark.parametrize("raw", [True, False])
def test_raw_and_typed_contents_decode_to_the_same_tensors(raw):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ids = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int64)
    text = np.array(["a", "héllo", ""], dtype=object)
    req = _request(("x", x, "FP32"), ("ids", ids, "INT64"), ("t", text, "BYTES"), raw=raw)
    body, headers = request_body(req)
    decoded = decode_request(body, headers)
    np.testing.assert_array_equal(decoded.inputs["x"].data, x)
    np.testing.assert_array_equal(decoded.inputs["ids"].data, ids)
    assert list(decoded.inputs["t"].data) == [b"a", "héllo".encode(), b""]
    assert decoded.binary_default is True


def test_outputs_come_back_raw_with_the_request_id():
    req = _request(("x", np.zeros((2, 2), np.float32), "FP32"), outputs=["y"], rid="r-9")
    decoded = decode_request(*request_body(req))
    assert decoded.outputs == {"y": True} and decoded.id == "r-9"
    y = np.array([[0.5, 1.5], [2.5, 3.5]], np.float32)
    resp = infer_response(*encode_response("m", 3, {"y": y, "z": y}, decoded))
    assert resp.model_version == "3" and resp.id == "r-9"
    assert [o.name for o in resp.outputs] == ["y"] and list(resp.outputs[0].shape) == [2, 2]
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32), y.ravel())


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.raw_input_contents.append(b"x"), r"raw_input_contents has 2 entries for 1 "),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), r"has contents while the request "
                                                               r"uses raw_input_contents"),
    (lambda r: setattr(r.inputs[0].parameters["shared_memory_region"], "string_param", "r"),
     r"shared memory is not supported"),
])
def test_raw_requests_that_cannot_be_read_name_the_field(edit, message):
    req = _request(("x", np.zeros((1, 2), np.float32), "FP32"))
    edit(req)
    with pytest.raises(InvalidInput, match=message):
        request_body(req)


def test_typed_contents_in_the_wrong_field_or_out_of_range_are_refused():
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype="FP32", shape=[2])
    t.contents.int_contents.extend([1, 2])
    with pytest.raises(InvalidInput, match=r"contents.int_contents cannot carry FP32 data"):
        request_body(req)
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="b", datatype="INT8", shape=[2])
    t.contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidInput, match=r"outside INT8's range \[-128, 127\]"):
        request_body(req)
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match=r"FP16 data must be sent in raw_input_contents"):
        request_body(req)
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="e", datatype="FP32", shape=[1])
    with pytest.raises(InvalidInput, match=r"'e' has neither contents nor raw_input_contents"):
        request_body(req)


def test_shapes_that_disagree_with_the_data_are_left_to_the_rest_codec():
    req = _request(("x", np.zeros((2, 2), np.float32), "FP32"))
    req.inputs[0].shape[:] = [3, 2]
    with pytest.raises(InvalidInput, match=r"shape \[3, 2\] of FP32 needs 24 bytes, binary data "
                                           r"has 16"):
        decode_request(*request_body(req))


def test_rest_statuses_map_to_grpc_codes():
    assert status_code(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(404) == grpc.StatusCode.NOT_FOUND
    assert status_code(413) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_code(503) == grpc.StatusCode.UNAVAILABLE
    assert status_code(504) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_code(499) == grpc.StatusCode.CANCELLED
    assert status_code(500) == grpc.StatusCode.INTERNAL
