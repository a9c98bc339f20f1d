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


class BatchTimeout(RequestTimeout):
    """A batch's model call passed its deadline (the request timeout): its requests get 504
    and its in-flight slot is freed; not bisected (the replica, not a request, is at fault)."""


class InputRejected(InvalidInput):
    """The model itself refused a request's tensors (e.g. an index out of its range): the
    request's fault, raised for that request alone after its batch was bisected."""


class ModelExecutionError(InferenceError):
    """The model failed on a batch for a reason it does not attribute to the inputs. The
    message is for the log; clients get "internal error" and a request id."""


class RequestCancelled(InferenceError):
    """The client went away (or the request was cancelled) before it was answered."""

    status = 499
    outcome = "cancelled"


class ShadowDropped(InferenceError):
    """A mirrored copy gave way to real traffic (queue share full, or evicted)."""

    status = 503
    outcome = "dropped"


#: Errors of the serving machinery, not of one request: every request of a batch gets them
#: as they are, with no bisection (retrying alone cannot help, and costs the model time).
def is_infrastructure(e: BaseException) -> bool:
    return isinstance(e, InferenceError) and not isinstance(e, (InputRejected,
                                                                  ModelExecutionError))
