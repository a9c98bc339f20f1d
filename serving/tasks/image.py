"""Image versions in the gateway: encoded images (or raw pixels) in, the model's pixel tensor to
the batcher, labels out.

A request's images are decoded in the gateway's worker threads (Pillow releases the GIL), one
request per job, before the request joins the batcher: a broken image fails its own request
with a 400 naming the element, never a batch it shares with other clients (no bisection), and
the decoded pixel tensors are batched exactly like any tensor input. Every header of a request
is read, and its pixels summed against ``max_request_pixels``, before any image is decoded.

Clients send either the version's ``image_input`` (BYTES, one encoded image per element: the
binary extension, or in JSON a ``data:image/...;base64,`` URL per element) or, instead,
already-preprocessed pixels under the model's ``pixel_input`` name (FP32, the model's shape).
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import numpy as np

from ..images import preprocess
from ..protocol.codec import InferRequest
from ..protocol.errors import InvalidInput
from ..repository import Manifest, Signature
from ..settings import settings
from .classification import ClassificationTask

_DATA_URL = b"data:"


def from_data_url(data: bytes, name: str, index: int) -> bytes:
    """An element sent as a ``data:image/...;base64,`` URL (JSON has no raw bytes) decoded to
    the image's bytes; anything else as it is."""
    if not data.startswith(_DATA_URL):
        return data
    head, sep, payload = data.partition(b",")
    if not sep or not head.endswith(b";base64"):
        raise InvalidInput(f"input {name!r} element {index}: a data URL must be "
                           "'data:image/<type>;base64,<data>'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"input {name!r} element {index}: the data URL's base64 is "
                           "invalid") from None


class ImageInputs:
    """What an image version's gateway does beyond tensors: which signature a request is
    checked against, images to pixels, and the classifier's ``label``."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.spec = manifest.image_preprocessing
        #: raw pixels: the model's own input, the version's outputs (labels included)
        self.pixel_signature = Signature(inputs=manifest.model_signature.inputs,
                                         outputs=manifest.signature.outputs)
        self.task = (ClassificationTask(manifest) if manifest.task == "classification"
                     and manifest.postprocessing is not None else None)

    def signature(self, req: InferRequest) -> Signature:
        """The signature a request is validated against: the model's pixel input when the
        client sends pixels, else the encoded images."""
        if self.spec.pixel_input in req.inputs:
            return self.pixel_signature
        return self.manifest.signature

    def pixels(self, images: list[bytes]) -> np.ndarray:
        name = self.spec.image_input
        images = [from_data_url(d, name, i) for i, d in enumerate(images)]
        return preprocess(images, self.spec, name,
                          max_total_pixels=settings().max_request_pixels)

    async def prepare(self, req: InferRequest, executor) -> tuple[dict[str, np.ndarray], int]:
        """The request's pixel feed and its rows; images decoded in ``executor``."""
        pixel = self.spec.pixel_input
        if pixel in req.inputs:
            x = req.inputs[pixel].data
            return {pixel: x}, len(x)
        images = list(req.inputs[self.spec.image_input].data.ravel())
        if executor is None:
            x = self.pixels(images)
        else:
            x = await asyncio.get_running_loop().run_in_executor(executor, self.pixels, images)
        return {pixel: x}, len(x)

    def finish(self, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch's model outputs plus the classifier's ``label``."""
        return self.task.finish(dict(result)) if self.task is not None else result


def image_metadata(manifest: Manifest) -> dict:
    """Model metadata's ``parameters`` of an image version: how images are preprocessed, and
    the pixel input a client may send instead of encoded images."""
    spec = manifest.image_preprocessing
    if spec is None:
        return {}
    pixel = next(t for t in manifest.model_signature.inputs if t.name == spec.pixel_input)
    return {"image_preprocessing": spec.model_dump(mode="json"),
            "pixel_input": {**pixel.model_dump(mode="json"), "description": (
                f"instead of {spec.image_input!r}: pixels already preprocessed as "
                "image_preprocessing says")}}
