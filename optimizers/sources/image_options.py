"""``--preprocess image`` and its options (a torch factory served as an image classifier) as an
:class:`~serving.repository.ImagePreprocessing`; a bad value is refused naming its option."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from serving.repository import ImagePreprocessing

from ..errors import OptimizeError

#: The option each ImagePreprocessing field comes from.
OPTION_OF = {"height": "--image-size", "width": "--image-size", "resize": "--resize",
             "resize_to": "--resize-to", "interpolation": "--interpolation",
             "rescale": "--rescale", "mean": "--mean", "std": "--std",
             "channel_order": "--channel-order", "layout": "--layout"}


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OptimizeError(f"{option} must be three comma-separated numbers, e.g. "
                            f"0.485,0.456,0.406 (got {text!r})") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise OptimizeError(f"{option} must be three numbers, one per RGB channel (got {text!r})")
    return values


def image_preprocessing(size: str = "224", resize: str = "shortest-edge",
                        resize_to: int | None = None, interpolation: str = "bilinear",
                        rescale: float = 1 / 255, mean: str = "0.485,0.456,0.406",
                        std: str = "0.229,0.224,0.225", channel_order: str = "RGB",
                        layout: str = "NCHW") -> ImagePreprocessing:
    """The options' preprocessing. ``size``: ``N`` or ``HxW``; the defaults are torchvision's
    ImageNet ones (shorter side to 256 for a 224 crop: ``resize_to`` defaults to size / 0.875
    with ``shortest-edge``)."""
    try:
        dims = [int(x) for x in size.lower().replace(",", "x").split("x") if x.strip()]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims *= 2
    if len(dims) != 2 or min(dims) < 1:
        raise OptimizeError(f"--image-size must be N or HxW, e.g. 224 or 224x224 (got {size!r})")
    height, width = dims
    if resize == "shortest-edge" and resize_to is None:
        resize_to = int(max(height, width) / 0.875)
    try:
        return ImagePreprocessing(
            height=height, width=width, resize=resize,
            resize_to=resize_to if resize == "shortest-edge" else None,
            interpolation=interpolation.lower(), rescale=rescale,
            mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
            channel_order=channel_order.upper(), layout=layout.upper())
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        option = OPTION_OF.get(field, "--image-size / --resize-to")
        raise OptimizeError(f"{option}: {err['msg']}") from None


def read_class_names(path: str) -> list[str]:
    """``--class-names FILE``: one class name per line, in the order of the model's scores."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise OptimizeError(f"--class-names {path}: cannot read it ({e})") from None
    if len(set(names)) != len(names):
        raise OptimizeError(f"--class-names {path}: names must be unique")
    return names
