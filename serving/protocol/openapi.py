"""The OpenAPI 3 document of the endpoints the gateway serves (``GET /v2/openapi.json``).

Request and response bodies are described by pydantic models (their JSON Schema goes into
``components``); the path parameters list the models and versions actually served, so a client
generator or a fuzzer (the test suite runs schemathesis against the live server) reaches the
real infer path. The codec itself stays hand-written (it is on the hot path); the schema says
what it accepts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..repository import DATATYPES

Datatype = Literal[tuple(DATATYPES)]  # type: ignore[valid-type]
JSONData = Any


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputParameters(_Open):
    binary_data_size: int | None = Field(
        None, ge=0, description="Bytes of this input in the binary part (Triton's binary "
                                "tensor extension).")


class RequestInput(BaseModel):
    name: str = Field(description="Input name, as in the model's metadata.")
    shape: list[int] = Field(description="Dimensions; the first is the batch (rows).",
                             json_schema_extra={"items": {"type": "integer", "minimum": 0}})
    datatype: Datatype
    parameters: InputParameters | None = None
    data: JSONData = Field(None, description="Row-major elements, flat or nested; BYTES as "
                                             "strings.")


class OutputParameters(_Open):
    binary_data: bool | None = Field(None, description="Return this output in binary.")


class RequestOutput(BaseModel):
    name: str
    parameters: OutputParameters | None = None


class RequestParameters(_Open):
    binary_data_output: bool | None = Field(None, description="Every output in binary.")


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="Echoed in the response.")
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict | None = None
    data: JSONData = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the field; for a 500 only "
                                   "'internal error' and the request id.")
    request_id: str | None = Field(None, description="Set on 500s: quote it; the log has the "
                                                     "details under it.")


class ServerMetadata(_Open):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Open):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str


_MODELS = (InferenceRequest, InferenceResponse, ErrorResponse, ServerMetadata, ModelMetadata,
           IndexEntry)


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {400: "Bad request: the message names the field", 404: "Unknown model or version",
            405: "Wrong method", 413: "Body (or an element) too large", 415: "Unsupported "
            "Content-Encoding", 499: "The client went away", 500: "Internal error (request id)",
            503: "Overloaded or unavailable; see Retry-After", 504: "Timed out"}
    return {str(c): {"description": text[c], **_json(_ref(ErrorResponse))} for c in codes}


def example_request(signature) -> dict:
    """A valid request for a signature: one row, BYTES as a sentence, numbers as zeros."""
    inputs = []
    for spec in signature.inputs:
        shape = [1] + [d if d > 0 else 1 for d in spec.shape[1:]]
        count = 1
        for d in shape:
            count *= d
        data = ["The weather in Lyon is mild today."] * count if spec.datatype == "BYTES" \
            else [False] * count if spec.datatype == "BOOL" else [0] * count
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": shape,
                       "data": data})
    return {"inputs": inputs}


def openapi_document(models: dict[str, list[int]], version: str,
                     signatures: dict | None = None) -> dict:
    """The document for the served ``models`` ({name: [versions]}); ``signatures`` ({name:
    the stable version's signature}) give the input names and an example request per model."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(m, "validation") for m in _MODELS],
                                 ref_template="#/components/schemas/{model}")
    defs = defs["$defs"]
    signatures = signatures or {}
    input_names = sorted({t.name for sig in signatures.values() for t in sig.inputs})
    if input_names:  # the names the served models take: generated requests reach validation
        defs["RequestInput"]["properties"]["name"]["enum"] = input_names
    names = sorted(models)
    versions = sorted({str(v) for vs in models.values() for v in vs}, key=int)
    model_param = {"name": "model_name", "in": "path", "required": True,
                   "schema": {"type": "string", "enum": names or ["none"]}}
    version_param = {"name": "model_version", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": versions or ["1"]}}
    infer_headers = [
        {"name": "Content-Encoding", "in": "header", "required": False,
         "schema": {"type": "string", "enum": ["identity", "gzip", "deflate"]}},
        {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
         "description": "Bytes of JSON before the binary tensor data.",
         "schema": {"type": "integer", "minimum": 0}},
    ]
    request_body = _json(_ref(InferenceRequest))
    if signatures:
        request_body["content"]["application/json"]["examples"] = {
            name: {"summary": f"one row for {name}", "value": example_request(sig)}
            for name, sig in sorted(signatures.items())}
    infer = {
        "summary": "Run inference (Open Inference Protocol v2)",
        "requestBody": {"required": True, **request_body},
        "responses": {"200": {"description": "Outputs", **_json(_ref(InferenceResponse))},
                      **_errors(400, 404, 413, 415, 500, 503, 504)},
    }
    ready = {"responses": {"200": {"description": "Ready"}, **_errors(400, 404)}}
    meta = {"responses": {"200": {"description": "Model metadata",
                                  **_json(_ref(ModelMetadata))}, **_errors(404)}}
    config = {"responses": {"200": {"description": "Model configuration (Triton's extension)",
                                    **_json({"type": "object"})}, **_errors(404)}}
    paths: dict[str, dict] = {
        "/v2": {"get": {"summary": "Server metadata", "responses": {
            "200": {"description": "Server metadata", **_json(_ref(ServerMetadata))}}}},
        "/v2/health/live": {"get": {"responses": {"200": {"description": "Live"}}}},
        "/v2/health/ready": {"get": {"responses": {"200": {"description": "Ready"},
                                                   **_errors(400)}}},
        "/v2/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": {"description": "OpenAPI 3 document", **_json({"type": "object"})}}}},
        "/v2/repository/index": {"post": {"summary": "Served models and their state",
                                          "responses": {"200": {"description": "Index", **_json(
                                              {"type": "array", "items": _ref(IndexEntry)})}}}},
    }
    for prefix, params in (("/v2/models/{model_name}", [model_param]),
                           ("/v2/models/{model_name}/versions/{model_version}",
                            [model_param, version_param])):
        paths[prefix] = {"parameters": params, "get": meta}
        paths[prefix + "/ready"] = {"parameters": params, "get": ready}
        paths[prefix + "/config"] = {"parameters": params, "get": config}
        paths[prefix + "/infer"] = {"parameters": params,
                                    "post": {**infer, "parameters": infer_headers}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "optiserve inference API", "version": version,
                 "description": "Open Inference Protocol v2 (REST) as optiserve serves it."},
        "paths": paths,
        "components": {"schemas": defs},
    }
