"""The Open Inference Protocol's REST endpoints over a :class:`Gateway`, free of any HTTP
framework: ``dispatch(gateway, method, path, headers, read_body)`` answers ``(status, body,
headers)``. The gateway's HTTP server (:mod:`serving.ingress`) calls it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Awaitable, Callable, Mapping

import orjson

from .protocol import InferenceError

log = logging.getLogger("ray.serve.optiserve")

Answer = tuple[int, bytes, dict[str, str]]
ReadBody = Callable[[int], Awaitable[bytes]]
_JSON = {"content-type": "application/json"}


def json_answer(doc, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return status, orjson.dumps(doc), {**_JSON, **(headers or {})}


def error_answer(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return json_answer({"error": message}, status, headers)


async def dispatch(gateway, method: str, path: str, headers: Mapping[str, str],
                   read_body: ReadBody) -> Answer:
    """Answer one request. ``headers`` maps lower-case names to values; ``read_body(limit)``
    returns the body or raises :class:`PayloadTooLarge` / :class:`RequestCancelled`."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "v1":  # OpenAI-compatible embeddings
        from .openai_compat import dispatch as openai_dispatch

        return await openai_dispatch(gateway, method, parts[1:], headers, read_body)
    if not parts or parts[0] != "v2":
        return error_answer(404, f"unknown endpoint {path}; the API is under /v2")
    rest = parts[1:]
    try:
        if rest and rest[0] == "models" and len(rest) >= 2:
            return await _model_endpoint(gateway, method, path, headers, read_body, rest[1],
                                         rest[2:])
        if not rest:
            return json_answer(gateway.server_metadata())
        if rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            ok = True if rest[1] == "live" else await gateway.server_ready()
            # the protocol answers health with 200 (true) or a 4xx (false)
            return (200, b"", {}) if ok else error_answer(
                400, "not ready: a served model's stable version has no ready replica")
        if rest == ["repository", "index"] and method == "POST":
            return json_answer(await gateway.repository_index())
        if rest == ["openapi.json"] and method == "GET":
            return json_answer(gateway.openapi())
    except InferenceError as e:
        return error_answer(e.status, str(e), e.headers())
    except Exception:
        rid = uuid.uuid4().hex[:16]
        log.exception("%s %s (request id %s) failed", method, path, rid)
        return json_answer({"error": f"internal error (request id {rid})", "request_id": rid},
                           500)
    return error_answer(404, f"unknown endpoint {method} {path}")


async def _model_endpoint(gateway, method: str, path: str, headers, read_body: ReadBody,
                          model: str, tail: list[str]) -> Answer:
    version = None
    if len(tail) >= 2 and tail[0] == "versions":
        version, tail = tail[1], tail[2:]
    action = tail[0] if tail else ""
    if len(tail) > 1 or action not in ("", "ready", "config", "infer"):
        return error_answer(404, f"unknown endpoint {method} {path}")
    if action == "infer":
        if method != "POST":
            return error_answer(405, "infer takes POST")
        # handle_infer counts and times every outcome itself and never raises but cancellation
        return await gateway.handle_infer(model, version, read_body, headers)
    if method != "GET":
        return error_answer(405, f"{action or 'metadata'} takes GET")
    if action == "ready":
        vs = gateway.version(model, version)
        ok = await gateway.version_ready(vs)
        return (200, b"", {}) if ok else error_answer(
            400, f"{vs.model}:{vs.version} has no ready replica")
    if action == "config":
        return json_answer(gateway.model_config(model, version))
    return json_answer(gateway.model_metadata(model, version))


__all__ = ["dispatch", "json_answer", "error_answer", "Answer", "ReadBody"]
