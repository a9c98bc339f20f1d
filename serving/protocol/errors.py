"""Errors that carry their HTTP meaning; mapped to responses in one place (the gateway)."""

from __future__ import annotations


class InferenceError(Exception):
    """Base class: ``status`` is the HTTP status, the message says what was wrong and expected."""

    status = 500
    outcome = "server_error"

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(InferenceError):
    status = 400
    outcome = "client_error"


class ModelNotFound(InferenceError):
    status = 404
    outcome = "client_error"


class PayloadTooLarge(InferenceError):
    status = 413
    outcome = "client_error"


class UnsupportedMediaType(InferenceError):
    status = 415
    outcome = "client_error"


class Overloaded(InferenceError):
    """The queue is full: come back later (503 with Retry-After)."""

    status = 503
    outcome = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class ModelUnavailable(InferenceError):
    """The model is known but cannot serve right now (loading, failed replica)."""

    status = 503
    outcome = "server_error"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class RequestTimeout(InferenceError):
    status = 504
    outcome = "timeout"
