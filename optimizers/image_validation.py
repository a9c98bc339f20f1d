"""Validation images of image classifiers: a folder of the user's images (with an optional
labels file), or, by default, photographs shipped inside installed packages with seeded
crops, flips and rescales. Nothing is downloaded.

Every image goes through :mod:`serving.images`, the code serving preprocesses clients' images
with, after being encoded (the default images as JPEG, the user's as they are on disk): a
variant is judged on exactly the pixels clients' images become.

Labels file (``--labels FILE``, with a folder): CSV lines ``file,label``, ``file`` a name in the
folder, ``label`` a class index or one of the model's label names; a first line ``file,label``
is a header; every image of the folder needs a line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .errors import ValidationDataError

#: What a folder's images are recognised by (their suffix, any case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
#: How many default images: half judge fidelity (held out), half calibrate and tune. Each
#: disagreement costs 1/64 of top-1 agreement on the held-out half.
DEFAULT_IMAGES = 128
#: Photographs shipped in scikit-image's package data and scikit-learn's sample images: (package,
#: file), read from the installed package files, never fetched. Subjects an everyday-object
#: classifier has classes for (a cat, a cup of espresso, a rocket, motorcycles, a palace, a
#: daisy, a camera on a tripod, coins, an astronaut); the packages' astronomy and microscopy
#: images are left out: EfficientNet-Lite0's top class for them has p ~0.13, a coin toss that
#: any rounding flips (with every operator INT8, 2 of the 4 disagreements among 64 held-out
#: images were the deep field's), which would judge quantization on noise.
PHOTOS = (("skimage", "chelsea.png"), ("skimage", "coffee.png"), ("skimage", "rocket.jpg"),
          ("skimage", "astronaut.png"), ("skimage", "motorcycle_left.png"),
          ("skimage", "motorcycle_right.png"), ("skimage", "camera.png"),
          ("skimage", "coins.png"), ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"))


def _package_dir(package: str) -> Path:
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images"


def sample_photos() -> list[tuple[str, object]]:
    """The packages' photographs as RGB Pillow images, (name, image)."""
    from PIL import Image

    out = []
    for package, file in PHOTOS:
        path = _package_dir(package) / file
        try:
            with Image.open(path) as img:
                out.append((Path(file).stem, img.convert("RGB")))
        except OSError as e:  # pragma: no cover - a dependency of the optimize extra
            raise ValidationDataError(f"the sample photo {path} cannot be read ({e}); "
                                      "install scikit-image and scikit-learn") from None
    return out


def augmented_samples(count: int = DEFAULT_IMAGES, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` JPEG images made from the sample photos, seeded: each a random crop (a third
    to all of the photo's area, aspect 3:4 to 4:3), mirrored half the time, rescaled to 40% to
    100% of its size (at least 64 pixels on its shorter side)."""
    from PIL import Image

    photos = sample_photos()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        name, img = photos[i % len(photos)]
        w, h = img.size
        area = rng.uniform(1 / 3, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, max(16, round(np.sqrt(area * aspect)))))
        ch = int(min(h, max(16, round(np.sqrt(area / aspect)))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = max(rng.uniform(0.4, 1.0), 64 / min(cw, ch))
        if scale < 1.0:
            crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))),
                               Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        out.append((f"{name}-{i:03d}", buf.getvalue()))
    return out


def read_folder(path: Path) -> tuple[list[tuple[str, bytes]], int]:
    """The folder's images (name, bytes) sorted by name, and how many other files it holds."""
    if not path.is_dir():
        raise ValidationDataError(f"validation data {path} is not a folder; an image classifier "
                                  f"takes a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ValidationDataError(f"validation folder {path} holds no images (files ending in "
                                  f"{', '.join(IMAGE_SUFFIXES)})")
    return [(p.name, p.read_bytes()) for p in images], len(files) - len(images)


def pixels(items: list[tuple[str, bytes]], spec, where: str) -> np.ndarray:
    """Every image through serving's preprocessing; one that it refuses names its file."""
    from serving.images import preprocess_one
    from serving.protocol.errors import InferenceError

    out = np.empty((len(items), *spec.pixel_shape[1:]), dtype=np.float32)
    for i, (name, data) in enumerate(items):
        try:
            out[i] = preprocess_one(data, spec, spec.image_input, i)
        except InferenceError as e:
            raise ValidationDataError(f"{where}: {name}: {e}") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # what the decoder raised
            raise ValidationDataError(f"{where}: {name}: not a readable image ({e})") from None
    return out


def read_labels(path: Path, names: list[str], labels: list[str]) -> np.ndarray:
    """One class index per image (in ``names`` order) from a ``file,label`` CSV file."""
    index = {n: i for i, n in enumerate(labels)}
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationDataError(f"cannot read labels {path}: {e}") from None
    given: dict[str, int] = {}
    for n, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if not row or not any(row):
            continue
        if n == 1 and [c.lower() for c in row[:2]] == ["file", "label"]:
            continue
        if len(row) != 2:
            raise ValidationDataError(f"{path}:{n}: expected 'file,label' (got {row})")
        file, label = row
        if file not in names:
            raise ValidationDataError(f"{path}:{n}: {file!r} is not an image of the "
                                      "validation folder")
        if label in index:
            value = index[label]
        else:
            try:
                value = int(label)
            except ValueError:
                raise ValidationDataError(
                    f"{path}:{n}: label {label!r} is neither a class index nor one of the "
                    f"model's labels ({', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''})"
                ) from None
            if not 0 <= value < len(labels):
                raise ValidationDataError(f"{path}:{n}: class {value} is not one of the "
                                          f"model's {len(labels)} classes (0..{len(labels) - 1})")
        given[file] = value
    missing = [f for f in names if f not in given]
    if missing:
        raise ValidationDataError(f"{path} has no label for {len(missing)} image(s): "
                                  f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return np.array([given[f] for f in names], dtype=np.int64)


def image_validation(source, path: str | None, labels: str | None):
    """The validation set of an image classifier: its pixel tensors, and labels if given."""
    from .validation import _tensor_set

    spec = source.image_preprocessing
    if path is None:
        if labels:
            raise ValidationDataError("--labels names the classes of a --validation-data "
                                      "folder's images; the default sample images have none")
        items = augmented_samples()
        note = (f"validation: {len(items)} images made from {len(PHOTOS)} photographs shipped "
                "in scikit-image and scikit-learn (seeded crops, flips, rescales; JPEG), "
                "preprocessed by serving's code; crops of one photograph can fall on both sides "
                "of the held-out split")
        where = "the sample images"
    else:
        items, other = read_folder(Path(path))
        note = (f"validation: {len(items)} images from {Path(path).name}/"
                + (f" ({other} other file(s) ignored)" if other else "")
                + (" with labels" if labels else "") + ", preprocessed by serving's code")
        where = f"validation folder {path}"
    vset = _tensor_set({spec.pixel_input: pixels(items, spec, where)})
    if labels:
        vset.labels = read_labels(Path(labels), [n for n, _ in items],
                                  source.postprocessing.labels)
    vset.notes = [note]
    return vset
