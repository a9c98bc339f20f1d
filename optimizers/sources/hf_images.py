"""A Hugging Face image classifier directory (``*ForImageClassification`` with its
``preprocessor_config.json``) as the source.

The image processor's settings become the version's
:class:`~serving.repository.ImagePreprocessing`, which serving applies with its own code
(:mod:`serving.images`); transformers' processor never runs in serving. Only what maps exactly
is taken, and the rest is refused naming the setting:

- ``size`` ``{"height", "width"}`` (or a single number): resized to that size, aspect ratio not
  kept (ViT, DeiT, BEiT); a ``crop_size`` after it must equal it;
- ``size`` ``{"shortest_edge"}`` with ``do_center_crop`` and ``crop_size``: the shorter side
  resized, then the center crop (MobileNet, BiT, MobileViT);
- ``size`` ``{"shortest_edge"}`` with ``crop_pct`` (ConvNeXt's processor, also ResNet's): below
  384 the shorter side goes to ``int(shortest_edge / crop_pct)``, then the center square;
  from 384 on, resized to the square without cropping;
- ``resample`` (Pillow's filter numbers: nearest, bilinear, bicubic, lanczos),
  ``do_rescale``/``rescale_factor``, ``do_normalize``/``image_mean``/``image_std``,
  ``do_flip_channel_order`` (BGR);
- anything else that changes pixels (padding, ``longest_edge``, label reduction, other
  processor types' own rules) is refused.
"""

from __future__ import annotations

from pathlib import Path

from serving.repository import ImagePreprocessing, Source, sha256_file

from ..errors import SourceError
from .base import SourceModel

#: Image processors whose resizing the rules above describe (without "Fast"/"Pil").
PROCESSORS = ("ViTImageProcessor", "DeiTImageProcessor", "BeitImageProcessor",
              "ConvNextImageProcessor", "MobileNetV1ImageProcessor",
              "MobileNetV2ImageProcessor", "MobileViTImageProcessor", "BitImageProcessor",
              "ViTFeatureExtractor", "DeiTFeatureExtractor", "ConvNextFeatureExtractor")
#: Pillow's resampling filter numbers, as image processors store them.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
#: Settings that do not change pixels (or are read above).
_KNOWN = {"image_processor_type", "feature_extractor_type", "processor_class", "do_resize",
          "size", "resample", "do_center_crop", "crop_size", "crop_pct", "do_rescale",
          "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
          "do_flip_channel_order", "data_format", "input_data_format", "default_to_square",
          "return_tensors", "device", "disable_grouping", "include_top"}


def _size(value, what: str, cfg_path: Path) -> dict:
    if isinstance(value, int):
        return {"height": value, "width": value}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    raise SourceError(f"{cfg_path}: {what} {value!r} is neither a number nor "
                      "{\"height\", \"width\"} / {\"shortest_edge\"}")


def _three(cfg: dict, key: str, cfg_path: Path) -> list[float]:
    v = cfg.get(key)
    if isinstance(v, (int, float)):
        v = [v] * 3
    if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
        raise SourceError(f"{cfg_path}: {key} {v!r} must be three numbers (one per RGB channel)")
    return [float(x) for x in v]


def preprocessing_from_config(cfg: dict, cfg_path: Path) -> ImagePreprocessing:
    """The ImagePreprocessing equal to an image processor's settings; refuses, naming the
    setting, what serving's preprocessing cannot do exactly."""
    kind = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "")
    base = kind.removesuffix("Fast").removesuffix("Pil")
    if base not in PROCESSORS:
        raise SourceError(f"{cfg_path}: image_processor_type {kind or None!r} is not one whose "
                          f"resizing optiserve reproduces ({', '.join(PROCESSORS[:8])})")
    unknown = sorted(k for k, v in cfg.items() if k not in _KNOWN and v not in (None, False))
    if unknown:
        raise SourceError(f"{cfg_path}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'}"
                          " not something serving's image preprocessing does; optiserve "
                          "serves decode, resize, center crop, rescale and normalise only")
    if cfg.get("include_top") is False or cfg.get("rescale_offset"):
        raise SourceError(f"{cfg_path}: include_top false / rescale_offset change the pixels in "
                          "a way serving's preprocessing does not")
    if not cfg.get("do_resize", True):
        raise SourceError(f"{cfg_path}: do_resize is false: images of any size cannot make the "
                          "model's fixed pixel tensor")
    if "size" not in cfg:
        raise SourceError(f"{cfg_path}: no size; expected size {{\"height\", \"width\"}} or "
                          "{\"shortest_edge\"}")
    size = _size(cfg["size"], "size", cfg_path)
    resample = cfg.get("resample")
    if resample not in RESAMPLE:
        raise SourceError(f"{cfg_path}: resample {resample!r} is not a filter serving has "
                          f"({', '.join(f'{k} {v}' for k, v in RESAMPLE.items())})")
    crop = (_size(cfg.get("crop_size"), "crop_size", cfg_path)
            if cfg.get("do_center_crop") and cfg.get("crop_size") is not None else None)
    crop_pct = cfg.get("crop_pct")
    if crop_pct is not None and base not in ("ConvNextImageProcessor", "ConvNextFeatureExtractor"):
        raise SourceError(f"{cfg_path}: crop_pct means different things to different "
                          f"processors; optiserve reads it only for ConvNeXt's (not {kind})")
    extra = set(size) - {"height", "width", "shortest_edge"}
    if extra:
        raise SourceError(f"{cfg_path}: size.{sorted(extra)[0]} is not a resize serving does "
                          "(height/width or shortest_edge)")
    if "shortest_edge" in size and ("height" in size or "width" in size):
        raise SourceError(f"{cfg_path}: size has both shortest_edge and height/width")
    geometry: dict
    if "shortest_edge" in size:
        s = int(size["shortest_edge"])
        if crop_pct is not None:
            if s < 384:
                geometry = dict(height=s, width=s, resize="shortest-edge",
                                resize_to=int(s / float(crop_pct)))
            else:
                geometry = dict(height=s, width=s, resize="exact")
        elif crop is not None:
            if set(crop) != {"height", "width"}:
                raise SourceError(f"{cfg_path}: crop_size {cfg['crop_size']!r} must give height "
                                  "and width")
            geometry = dict(height=int(crop["height"]), width=int(crop["width"]),
                            resize="shortest-edge", resize_to=s)
            if s < max(geometry["height"], geometry["width"]):
                raise SourceError(f"{cfg_path}: crop_size {crop['height']}x{crop['width']} is "
                                  f"larger than size.shortest_edge {s}")
        else:
            raise SourceError(f"{cfg_path}: size.shortest_edge {s} without a center crop "
                              "(do_center_crop, crop_size) or crop_pct keeps each image's aspect "
                              "ratio in the tensor's size; the model needs one fixed size")
    else:
        if set(size) != {"height", "width"}:
            raise SourceError(f"{cfg_path}: size {cfg['size']!r} must give height and width")
        geometry = dict(height=int(size["height"]), width=int(size["width"]), resize="exact")
        if crop is not None and (int(crop.get("height", 0)), int(crop.get("width", 0))) != (
                geometry["height"], geometry["width"]):
            raise SourceError(f"{cfg_path}: crop_size {cfg['crop_size']!r} after resizing to "
                              f"size {cfg['size']!r} is a crop serving does not do after an "
                              "exact resize")
    rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    if cfg.get("do_normalize", "image_mean" in cfg):
        mean, std = _three(cfg, "image_mean", cfg_path), _three(cfg, "image_std", cfg_path)
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    try:
        return ImagePreprocessing(
            **geometry, interpolation=RESAMPLE[resample], rescale=rescale, mean=mean, std=std,
            channel_order="BGR" if cfg.get("do_flip_channel_order") else "RGB",
            layout="NCHW", pixel_input="pixel_values", image_input="image")
    except ValueError as e:
        raise SourceError(f"{cfg_path}: {e}") from None


def load(d, name: str, task: str | None, pooling: str | None) -> SourceModel:
    """The SourceModel of a ``*ForImageClassification`` directory (``d``: what
    :func:`~optimizers.sources.huggingface.read_directory` read)."""

    from . import huggingface as hf
    from .image_classifier import ImageClassifier, image_source

    if task not in (None, "classification"):
        raise SourceError(f"--task {task}: {d.model_dir} holds {d.architecture}, an image "
                          "classifier; drop --task")
    if pooling is not None:
        raise SourceError(f"--pooling applies to text encoders, not to {d.architecture}")
    cfg_path = d.model_dir / "preprocessor_config.json"
    if not cfg_path.is_file():
        raise SourceError(f"{d.model_dir} has no preprocessor_config.json; an image classifier "
                          "needs its image processor's settings (image_processor.save_pretrained"
                          "(DIR))")
    spec = preprocessing_from_config(hf._read_json(cfg_path, "the image processor's config"),
                                     cfg_path)
    config = hf.read_config(d)
    if config.problem_type not in (None, "single_label_classification"):
        raise SourceError(f"{d.model_dir / 'config.json'}: problem_type {config.problem_type} "
                          "is not single-label classification (softmax over the classes)")
    labels = hf.labels_of(d, config)
    channels = getattr(config, "num_channels", 3)
    if channels != 3:
        raise SourceError(f"{d.model_dir / 'config.json'}: num_channels {channels}; serving "
                          "makes RGB images (3 channels)")
    model, weights = hf.load_model(d, "image-classification", config)
    return image_source(
        name=name or hf._default_name(d.root),
        source=Source(kind="huggingface", ref=str(d.root.resolve()),
                      sha256=sha256_file(weights)),
        module=ImageClassifier(model, hugging_face=True), spec=spec, labels=labels,
        notes=[f"Hugging Face {d.architecture} from {d.root.name}/"
               f"{weights.relative_to(d.root).as_posix()}; preprocessing from "
               "preprocessor_config.json"])
