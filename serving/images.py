"""Encoded images (JPEG, PNG, WebP) to a model's pixel tensor, exactly as a version's
:class:`~serving.repository.ImagePreprocessing` records: the one implementation the gateway
serves with and the optimizer judges variants with, so a variant's measured fidelity is the
fidelity clients get.

Every way an element can be unusable is the client's fault and names the element: not an
image, a format the version does not take, more pixels than its limit (read from the header,
before any pixel is decoded: decompression bombs), a truncated or corrupt file. Pillow reads
every header and decodes PNG and WebP; JPEGs are decoded by simplejpeg where installed (the same
libjpeg-turbo pixels, faster: benchmarks/image_decode.py). Both release the GIL while they decode
and resize, so a batch's images can be done in worker threads.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np

from .protocol.errors import InvalidInput, PayloadTooLarge
from .repository import ImagePreprocessing

_FILTERS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST",
            "lanczos": "LANCZOS"}


def _where(name: str, index: int) -> str:
    return f"input {name!r} element {index}"


def open_header(data: bytes, spec: ImagePreprocessing, name: str, index: int):
    """One element opened from its header only (no pixel decoded yet): refuses (400/413) what
    the version cannot take, naming the element, before any decoding work is spent on it."""
    from PIL import Image, UnidentifiedImageError

    where = _where(name, index)
    if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
        raise InvalidInput(f"{where}: empty; expected an encoded image "
                           f"({', '.join(spec.formats)})")
    try:
        with warnings.catch_warnings():
            # the pixel limit below is the version's; Pillow's own global one must not
            # decide first (or warn into the log for every large image)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)), formats=list(spec.formats))
    except UnidentifiedImageError:
        raise InvalidInput(f"{where}: not an image this version takes (expected "
                           f"{', '.join(spec.formats)})") from None
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"{where}: the image has more pixels than this version's limit "
                              f"of {spec.max_pixels}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # a header that lies
        raise InvalidInput(f"{where}: the image's header is corrupt ({e})") from None
    w, h = img.size
    if w * h > spec.max_pixels:
        raise PayloadTooLarge(f"{where}: {w}x{h} pixels is more than this version's limit of "
                              f"{spec.max_pixels} pixels per image")
    return img


#: EXIF orientation -> the transpose that shows the image upright (ImageOps.exif_transpose's)
_ORIENT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
           6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def _decode_jpeg(img, data: bytes):
    """A YCbCr or greyscale JPEG decoded by simplejpeg (libjpeg-turbo, its default accurate DCT
    and upsampling: the same pixels as Pillow's decode, 1.12-1.24x faster with the resize,
    benchmarks/image_decode.py), EXIF orientation applied; None where Pillow decodes (other
    formats, CMYK/YCCK JPEGs, simplejpeg not installed)."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    from PIL import Image

    # strict: a truncated or corrupt file raises (ValueError) instead of half an image
    out = Image.fromarray(simplejpeg.decode_jpeg(bytes(data), colorspace="RGB", strict=True))
    method = _ORIENT.get(img.getexif().get(0x0112))
    return out.transpose(getattr(Image.Transpose, method)) if method else out


def decode(img, name: str, index: int, data: bytes | None = None):
    """An image opened by :func:`open_header` (from ``data``, its bytes) decoded to RGB, EXIF
    orientation applied; a truncated or corrupt file is refused (400) naming the element."""
    from PIL import Image, ImageOps

    try:
        if data is not None:
            fast = _decode_jpeg(img, data)
            if fast is not None:
                return fast
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidInput(f"{_where(name, index)}: the {img.format or 'image'} file is "
                           f"truncated or corrupt ({e})") from None
    return img


def open_image(data: bytes, spec: ImagePreprocessing, name: str, index: int):
    """The decoded RGB image of one element, EXIF orientation applied; refuses (400/413) what
    the version cannot take, naming the element."""
    return decode(open_header(data, spec, name, index), name, index, data)


def resized(img, spec: ImagePreprocessing):
    """The image resized (and center-cropped) to the version's height x width."""
    from PIL import Image

    resample = getattr(Image.Resampling, _FILTERS[spec.interpolation])
    if spec.resize == "exact":
        return img.resize((spec.width, spec.height), resample=resample)
    short = spec.resize_to or max(spec.height, spec.width)
    w, h = img.size
    # torchvision's Resize(int): the shorter side becomes ``short``, the longer one scaled and
    # truncated to an int
    if w <= h:
        size = (short, int(short * h / w))
    else:
        size = (int(short * w / h), short)
    if size != (w, h):
        img = img.resize(size, resample=resample)
    w, h = img.size
    left, top = int(round((w - spec.width) / 2.0)), int(round((h - spec.height) / 2.0))
    return img.crop((left, top, left + spec.width, top + spec.height))


def to_pixels(img, spec: ImagePreprocessing) -> np.ndarray:
    """One RGB image of height x width as the model's float32 pixels (no batch dimension)."""
    x = np.asarray(img, dtype=np.float32) * np.float32(spec.rescale)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.channel_order == "BGR":
        x = x[..., ::-1]
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_one(data: bytes, spec: ImagePreprocessing, name: str = "image",
                   index: int = 0) -> np.ndarray:
    """One encoded image to the model's pixels (no batch dimension)."""
    return to_pixels(resized(open_image(data, spec, name, index), spec), spec)


def preprocess(images: Sequence[bytes], spec: ImagePreprocessing, name: str = "image",
               start: int = 0, max_total_pixels: int | None = None) -> np.ndarray:
    """Encoded images to the model's pixel batch [N, ...]; element ``start + i`` names the
    i-th in errors. With ``max_total_pixels``, every header is read first and a batch holding
    more pixels in all is refused (413) before any image is decoded."""
    if max_total_pixels is not None:
        opened = [open_header(d, spec, name, start + i) for i, d in enumerate(images)]
        total = sum(img.size[0] * img.size[1] for img in opened)
        if total > max_total_pixels:
            raise PayloadTooLarge(
                f"input {name!r}: the request's {len(images)} images hold {total} pixels, more "
                f"than the limit of {max_total_pixels} pixels per request")
    else:
        opened = None
    out = np.empty((len(images), *spec.pixel_shape[1:]), dtype=np.float32)
    for i, data in enumerate(images):
        img = (opened[i] if opened is not None else open_header(data, spec, name, start + i))
        out[i] = to_pixels(resized(decode(img, name, start + i, data), spec), spec)
    return out
