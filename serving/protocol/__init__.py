"""Open Inference Protocol v2 types, codec and errors."""

from .codec import (
    InferRequest, Tensor, decode_request, decode_response, encode_infer_request, encode_response,
    validate_inputs,
)
from .errors import (
    InferenceError, InputRejected, InvalidInput, ModelExecutionError, ModelNotFound,
    ModelUnavailable, Overloaded, PayloadTooLarge, RequestCancelled, RequestTimeout,
    ShadowDropped, UnsupportedMediaType, is_infrastructure,
)

__all__ = [
    "InferRequest", "Tensor", "decode_request", "decode_response", "encode_infer_request",
    "encode_response", "validate_inputs", "InferenceError", "InvalidInput", "ModelNotFound",
    "ModelUnavailable", "Overloaded", "PayloadTooLarge", "RequestTimeout", "UnsupportedMediaType",
    "InputRejected", "ModelExecutionError", "RequestCancelled", "ShadowDropped",
    "is_infrastructure",
]
