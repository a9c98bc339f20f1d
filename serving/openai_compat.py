"""OpenAI-compatible embeddings over the gateway: ``POST /v1/embeddings`` and ``GET /v1/models``,
the API shape most application frameworks (the ``openai`` client with a ``base_url``,
LangChain, LlamaIndex) call embedding models through.

An embeddings request becomes OIP infer requests of the model's text input (split at the
version's ``max_batch_size``, sent at once), so it is batched, limited, routed (stable/canary,
or pinned by ``model: "name:version"``) and counted exactly as an OIP request. Errors answer in
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the REST status.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import orjson

from .protocol.codec import decode_response
from .protocol.errors import InferenceError, InvalidInput, ModelNotFound

from .settings import settings

_JSON = {"content-type": "application/json"}


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    doc = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return status, orjson.dumps(doc), {**_JSON, **(headers or {})}


class _Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.answer = _error(status, message, param, code)


def _embedding_version(gateway, ref: str):
    """(name, version or None, its VersionState) of ``model``; only text embedding models."""
    if not isinstance(ref, str) or not ref:
        raise _Refused(400, "model must be a non-empty string: a served embedding model's "
                            "name, or name:version", "model")
    name, _, version = ref.partition(":")
    try:
        vs = gateway.version(name, version or None)
    except ModelNotFound as e:
        raise _Refused(404, str(e), "model", "model_not_found") from None
    except InferenceError as e:
        raise _Refused(e.status, str(e), "model") from None
    if vs.encoder is None or vs.manifest.task != "embedding":
        raise _Refused(400, f"model {ref!r} is a {vs.manifest.task} model without text input; "
                            "/v1/embeddings serves text embedding models", "model",
                       "model_not_supported")
    return name, version or None, vs


def _texts(doc: dict) -> list[str]:
    value = doc.get("input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Refused(400, "input must be a string or a non-empty list of strings", "input")
    most = settings().openai_max_inputs
    if len(value) > most:
        raise _Refused(400, f"input has {len(value)} items; at most {most} per request", "input")
    for i, t in enumerate(value):
        if not isinstance(t, str):
            # token arrays would need the model's own tokenizer on the client side
            raise _Refused(400, f"input[{i}] must be a string (token arrays are not "
                                "accepted)", "input")
        if not t:
            raise _Refused(400, f"input[{i}] is empty", "input")
    return value


async def embeddings(gateway, headers, read_body):
    """``POST /v1/embeddings``: (status, body, headers)."""
    try:
        body = await read_body(gateway.config.max_body_bytes)
    except InferenceError as e:
        return _error(e.status, str(e), headers=e.headers())
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        return _error(400, f"request body is not valid JSON: {e}")
    if not isinstance(doc, dict):
        return _error(400, "request body must be a JSON object")
    try:
        name, version, vs = _embedding_version(gateway, doc.get("model"))
        texts = _texts(doc)
        fmt = doc.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise _Refused(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}",
                           "encoding_format")
        output = vs.manifest.signature.outputs[0]
        dims = doc.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)
                                 or dims != output.shape[-1]):
            # no served model is trained to be truncated (Matryoshka): cutting its vectors
            # would change their meaning silently
            raise _Refused(400, f"model {doc['model']!r} does not support dimensions other than "
                                f"its own ({output.shape[-1]})", "dimensions")
    except _Refused as r:
        return r.answer
    rows = vs.batcher.policy.max_batch_size
    chunks = [texts[i:i + rows] for i in range(0, len(texts), rows)]
    answers = await asyncio.gather(*(_infer(gateway, name, version, vs, c, output.name, headers)
                                     for c in chunks))
    for status, out, out_headers in answers:
        if status != 200:
            message = orjson.loads(out).get("error", "error")
            return _error(status, message, headers={k: v for k, v in out_headers.items()
                                                    if k.lower() == "retry-after"})
    vectors = np.concatenate([decode_response(out, h)[1][output.name] for _, out, h in answers])
    vectors = vectors.astype(np.float32, copy=False).reshape(len(texts), -1)
    # usage: the tokens the model saw (truncated to its max_length, with special tokens)
    tokens = int(sum(len(r) for r in vs.encoder.encode(texts)))
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
             if fmt == "base64" else v.tolist()} for i, v in enumerate(vectors)]
    model_id = f"{name}:{version}" if version else name
    return 200, orjson.dumps({"object": "list", "data": data, "model": model_id,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}), _JSON


async def _infer(gateway, name, version, vs, texts, output, headers):
    text_input = vs.manifest.preprocessing.text_input
    body = orjson.dumps({"inputs": [{"name": text_input, "datatype": "BYTES",
                                     "shape": [len(texts)], "data": texts}],
                         "outputs": [{"name": output, "parameters": {"binary_data": True}}]})

    async def read(limit: int) -> bytes:
        return body

    # the client's headers carry the sticky-routing header; the body is ours (plain JSON)
    own = {k: v for k, v in headers.items() if k not in ("content-encoding", "content-length",
                                                          "inference-header-content-length")}
    return await gateway.handle_infer(name, version, read, {**own, **_JSON}, protocol="openai")


def models(gateway):
    """``GET /v1/models``: every served text embedding model, by name and name:version."""
    data = []
    for name, st in sorted(gateway.models.items()):
        stable = st.versions[st.policy.stable]
        if stable.encoder is None or stable.manifest.task != "embedding":
            continue
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "optiserve"})
        data += [{"id": f"{name}:{v}", "object": "model", "created": 0,
                  "owned_by": "optiserve"} for v in sorted(st.versions)]
    return 200, orjson.dumps({"object": "list", "data": data}), _JSON


async def dispatch(gateway, method: str, rest: list[str], headers, read_body):
    """The ``/v1`` endpoints (``rest``: the path's parts after ``v1``)."""
    try:
        if rest == ["embeddings"]:
            if method != "POST":
                return _error(405, "/v1/embeddings takes POST")
            return await embeddings(gateway, headers, read_body)
        if rest == ["models"]:
            if method != "GET":
                return _error(405, "/v1/models takes GET")
            return models(gateway)
    except InvalidInput as e:
        return _error(400, str(e))
    return _error(404, f"unknown endpoint {method} /v1/{'/'.join(rest)}; the OpenAI-compatible "
                       "API serves /v1/embeddings and /v1/models")


__all__ = ["dispatch", "embeddings", "models"]
