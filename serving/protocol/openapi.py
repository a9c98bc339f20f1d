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
    classification: int | None = Field(
        None, ge=1, description="Triton's classification extension: return this output's k "
        "highest classes per row instead of its numbers, as BYTES [rows, k] strings "
        "'score:index:label' (label where the version has label names).")


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


class ResponseParameters(_Open):
    truncated: list[int] | None = Field(
        None, description="Text models: the rows (indices in the request) whose text was "
        "longer than the model's maximum and was cut to it (at the side the version's "
        "manifest says).")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: ResponseParameters | None = None
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


_SENTENCE = "The weather in Lyon is mild today."


def _tiny_png() -> str:
    """A 2x2 PNG as a data URL: an example image small enough to sit in the document."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 120, 40)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_examples(name: str, manifest) -> tuple[dict, dict]:
    """An image version's examples: one encoded image in (JSON carries it as a data URL; the
    binary extension as its raw bytes), probabilities and the top label out, the best labels
    with the classification extension."""
    spec, post = manifest.image_preprocessing, manifest.postprocessing
    image = {"name": spec.image_input, "datatype": "BYTES", "shape": [1], "data": [_tiny_png()]}
    requests = {name: {
        "summary": f"{name}: one image (JPEG, PNG or WebP; in JSON a base64 data URL, with the "
                   "binary extension its bytes)",
        "description": f"Instead of {spec.image_input!r}, already preprocessed pixels may be "
                       f"sent as {spec.pixel_input!r} (FP32 {spec.pixel_shape}): "
                       "image_preprocessing in the model's metadata says how they are made.",
        "value": {"inputs": [image]}}}
    responses: dict = {}
    if post is None:
        return requests, responses
    prob = manifest.model_signature.outputs[0].name
    k = min(5, len(post.labels))
    requests[f"{name}-class-count"] = {
        "summary": f"{name}: the {k} best labels of an image (Triton's classification "
                   "extension)",
        "value": {"inputs": [image], "outputs": [
            {"name": prob, "parameters": {"classification": k}}, {"name": "label"}]}}
    n = len(post.labels)
    probs = [round(1.0 / n, 4)] * n
    label = {"name": "label", "datatype": "BYTES", "shape": [1], "data": [post.labels[0]]}
    responses[f"{name}-labels"] = {
        "summary": f"{name}: probabilities in label order and the top label",
        "value": {"model_name": name, "model_version": str(manifest.version), "outputs": [
            {"name": prob, "datatype": "FP32", "shape": [1, n], "data": probs}, label]}}
    responses[f"{name}-class-count"] = {
        "summary": f"{name}: with classification {k}",
        "value": {"model_name": name, "model_version": str(manifest.version), "outputs": [
            {"name": prob, "datatype": "BYTES", "shape": [1, k],
             "data": [f"{probs[i]:f}:{i}:{post.labels[i]}" for i in range(k)]}, label]}}
    return requests, responses


def task_examples(name: str, manifest) -> tuple[dict, dict]:
    """(request examples, response examples) of one served model, in its task's terms."""
    if getattr(manifest, "image_preprocessing", None) is not None:
        return image_examples(name, manifest)
    sig, post = manifest.signature, manifest.postprocessing
    requests = {name: {"summary": f"one row for {name}", "value": example_request(sig)}}
    responses: dict = {}
    if manifest.preprocessing is None or post is None and manifest.task != "embedding":
        return requests, responses
    text = manifest.preprocessing.text_input
    if manifest.task == "classification":
        k = min(2, len(post.labels))
        requests[f"{name}-class-count"] = {
            "summary": f"{name}: the {k} best labels (Triton's classification extension)",
            "value": {"inputs": [{"name": text, "datatype": "BYTES", "shape": [1],
                                  "data": [_SENTENCE]}],
                      "outputs": [{"name": "probabilities",
                                   "parameters": {"classification": k}},
                                  {"name": "label"}]}}
        n = len(post.labels)
        probs = [round(1.0 / n, 4)] * n
        outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [1, n],
                    "data": probs},
                   {"name": "label", "datatype": "BYTES", "shape": [1], "data": [post.labels[0]]}]
        responses[f"{name}-labels"] = {"summary": f"{name}: probabilities in label order and "
                                       "the top label", "value": {
            "model_name": name, "model_version": str(manifest.version), "outputs": outputs}}
        responses[f"{name}-class-count"] = {"summary": f"{name}: with classification {k}",
                                            "value": {
            "model_name": name, "model_version": str(manifest.version), "outputs": [
                {"name": "probabilities", "datatype": "BYTES", "shape": [1, k],
                 "data": [f"{probs[i]:f}:{i}:{post.labels[i]}" for i in range(k)]},
                outputs[1]]}}
    elif manifest.task == "token-classification":
        label = next((x for x in post.labels if x not in post.ignore_labels), post.labels[0])
        group = label.split("-", 1)[-1]
        entity = {"entity_group": group, "score": 0.98, "word": "Lyon", "start": 15, "end": 19}
        import json

        responses[f"{name}-entities"] = {
            "summary": f"{name}: token labels, their character offsets and the entities",
            "value": {"model_name": name, "model_version": str(manifest.version), "outputs": [
                {"name": "token_labels", "datatype": "BYTES", "shape": [1, 2],
                 "data": [post.ignore_labels[0] if post.ignore_labels else label, label]},
                {"name": "token_offsets", "datatype": "INT64", "shape": [1, 2, 2],
                 "data": [11, 14, 15, 19]},
                {"name": "entities", "datatype": "BYTES", "shape": [1],
                 "data": [json.dumps([entity])]}]}}
    elif manifest.task == "embedding":
        dim = sig.outputs[0].shape[-1] if sig.outputs[0].shape[-1] > 0 else 4
        responses[f"{name}-embedding"] = {
            "summary": f"{name}: one embedding per text ({dim} numbers, shortened here)",
            "value": {"model_name": name, "model_version": str(manifest.version), "outputs": [
                {"name": sig.outputs[0].name, "datatype": "FP32", "shape": [1, dim],
                 "data": [0.0] * min(dim, 4)}]}}
    responses[f"{name}-truncated"] = {
        "summary": f"{name}: a text longer than the model's {manifest.preprocessing.max_length} "
                   "tokens is cut and named", "value": {
            "model_name": name, "model_version": str(manifest.version),
            "parameters": {"truncated": [0]}, "outputs": []}}
    return requests, responses


def openapi_document(models: dict[str, list[int]], version: str,
                     signatures: dict | None = None, manifests: dict | None = None) -> dict:
    """The document for the served ``models`` ({name: [versions]}); ``signatures`` ({name:
    the stable version's signature}) give the input names and an example request per model;
    ``manifests`` ({name: the stable version's manifest}) examples in each task's terms
    (labels and the classification extension, entities, embeddings, truncated rows)."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(m, "validation") for m in _MODELS],
                                 ref_template="#/components/schemas/{model}")
    defs = defs["$defs"]
    signatures = signatures or {}
    input_names = sorted({t.name for sig in signatures.values() for t in sig.inputs} | {
        m.image_preprocessing.pixel_input for m in (manifests or {}).values()
        if getattr(m, "image_preprocessing", None) is not None})  # images' raw-pixel input
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
    answer = _json(_ref(InferenceResponse))
    if signatures:
        request_body["content"]["application/json"]["examples"] = {
            name: {"summary": f"one row for {name}", "value": example_request(sig)}
            for name, sig in sorted(signatures.items())}
    for name, manifest in sorted((manifests or {}).items()):
        requests, responses = task_examples(name, manifest)
        request_body["content"]["application/json"].setdefault("examples", {}).update(requests)
        if responses:
            answer["content"]["application/json"].setdefault("examples", {}).update(responses)
    infer = {
        "summary": "Run inference (Open Inference Protocol v2)",
        "requestBody": {"required": True, **request_body},
        "responses": {"200": {"description": "Outputs", **answer},
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
