"""Image classifiers in the optimizer: the built-in EfficientNet-Lite0 on real photographs, a
tiny Hugging Face ViT and ResNet saved offline, a torch factory with --preprocess image, the
validation images, fidelity's top-5 overlap and accuracy, and every bad preprocessing refused
by name. Optimizer runs build two fast variants only."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from optimizers.errors import OptimizeError, SourceError, ValidationDataError
from serving.repository import ImagePreprocessing, ModelRepository
from tests.helpers import run_cli
from tests.support import hf_images

FAST = ["--min-time", "0.1", "--batch-sizes", "1,8", "-q"]


def _jpeg(img, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _photo(package: str, file: str):
    from PIL import Image

    from optimizers.image_validation import _package_dir

    with Image.open(_package_dir(package) / file) as img:
        return img.convert("RGB")


# --- the built-in ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite0():
    from optimizers.sources import resolve_source

    return resolve_source("efficientnet-lite0")


def test_builtin_names_real_photographs_as_torch_sees_them(lite0):
    """Photographs shipped in scikit-image and scikit-learn, JPEG-encoded and preprocessed by
    serving's code, get the class a person would give them."""
    from serving.images import preprocess

    photos = {"espresso": ("skimage", "coffee.png"), "daisy": ("sklearn", "flower.jpg"),
              "missile": ("skimage", "rocket.jpg"), "palace": ("sklearn", "china.jpg")}
    spec = lite0.image_preprocessing
    x = preprocess([_jpeg(_photo(*where)) for where in photos.values()], spec)
    probs = lite0.reference({"pixel_values": x})["probabilities"]
    labels = lite0.postprocessing.labels
    assert [labels[i] for i in probs.argmax(1)] == list(photos)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)  # the softmax is in the graph
    assert probs[0].max() > 0.8  # the espresso, confidently


def test_builtin_contract(lite0):
    m, s = lite0.model_signature, lite0.signature
    assert [(t.name, t.datatype, t.shape) for t in s.inputs] == [("image", "BYTES", [-1])]
    assert [(t.name, t.datatype, t.shape) for t in m.inputs] == [
        ("pixel_values", "FP32", [-1, 3, 224, 224])]
    assert [(t.name, t.shape) for t in m.outputs] == [("probabilities", [-1, 1000])]
    assert [t.name for t in s.outputs] == ["probabilities", "label"]
    labels = lite0.postprocessing.labels
    assert len(labels) == len(set(labels)) == 1000
    assert labels[967] == "espresso" and labels[657] == "missile" and labels[744] == "projectile"
    spec = lite0.image_preprocessing
    assert (spec.resize_to, spec.height, spec.interpolation) == (256, 224, "bicubic")
    assert spec.mean == pytest.approx([127 / 255] * 3) and spec.std == pytest.approx(
        [128 / 255] * 3)
    assert lite0.task == "classification" and lite0.source.kind == "builtin"


def test_default_validation_images_are_seeded_and_varied():
    from optimizers.image_validation import augmented_samples

    a, b = augmented_samples(12, seed=0), augmented_samples(12, seed=0)
    assert a == b
    assert augmented_samples(12, seed=1) != a
    from PIL import Image

    sizes = {Image.open(io.BytesIO(data)).size for _, data in a}
    assert len(sizes) == 12  # crops and rescales differ
    assert all(Image.open(io.BytesIO(d)).format == "JPEG" for _, d in a)


# --- Hugging Face -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-images")
    return {"vit": hf_images.tiny_vit(root / "vit"), "resnet": hf_images.tiny_resnet(
        root / "resnet"), "root": root}


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_hf_preprocessing_is_what_transformers_computes(hf_dirs, kind):
    """serving's preprocessing of a JPEG equals the directory's own image processor on the
    same decoded image (ViT: exact resize; ResNet: ConvNeXt's crop_pct)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from optimizers.sources import resolve_source
    from serving.images import preprocess

    src = resolve_source(str(hf_dirs[kind]))
    spec = src.image_preprocessing
    processor = AutoImageProcessor.from_pretrained(str(hf_dirs[kind]), local_files_only=True,
                                                   backend="pil")
    for where in (("skimage", "coffee.png"), ("sklearn", "flower.jpg")):
        data = _jpeg(_photo(*where))
        ours = preprocess([data], spec)
        theirs = processor(images=Image.open(io.BytesIO(data)).convert("RGB"),
                           return_tensors="np")["pixel_values"]
        assert ours.shape == theirs.shape
        # the same filters and crop; transformers resizes in its own pixel type, so a few
        # values differ by a rounding step (1/255 scaled by std)
        assert np.mean(np.abs(ours - theirs)) < 0.01
        assert np.max(np.abs(ours - theirs)) < 0.05
    assert src.postprocessing.labels == hf_images.LABELS


def test_hf_image_classifier_optimizes_and_publishes(hf_dirs, tmp_path):
    repo = tmp_path / "repo"
    result = run_cli("optimize", str(hf_dirs["vit"]), "--name", "tiny-vit",
                     "--variants", "torch-fp32,onnx-fp32", "--repository", str(repo),
                     "--report", str(tmp_path / "report"), *FAST)
    assert result.returncode == 0, result.stderr + result.stdout
    r = ModelRepository(repo)
    m = r.open("tiny-vit", r.versions("tiny-vit")[0]).manifest
    assert m.schema_version == 3 and m.task == "classification"
    assert m.image_preprocessing.resize == "exact" and m.image_preprocessing.height == 32
    assert m.postprocessing.labels == hf_images.LABELS
    assert [t.datatype for t in m.signature.inputs] == ["BYTES"]
    assert m.model_signature.inputs[0].shape == [-1, 3, 32, 32]
    f = m.measurements.fidelity
    assert f.rows == "held-out" and f.samples == 64  # half the 128 default images
    assert f.top1_agreement >= 0.99 and f.top5_overlap >= 0.99 and f.passed
    assert f.accuracy is None  # no labels
    report = (tmp_path / "report" / "report.md").read_text()
    assert "top-5 overlap" in report and "128 images made from" in report
    # what the lighter choice bought and cost, in one sentence
    assert re.search(r"Choosing `onnx-fp32` over `torch-fp32` bought [0-9.]+x the throughput at "
                     r"batch 8 \([0-9]+ vs [0-9]+ images/s\) and a .*, at the cost of top-1 "
                     r"agreement 1\.0000 with it on 64 held-out images \(top-5 overlap", report
                     ) or "The reference `torch-fp32` itself was chosen" in report, report


@pytest.mark.parametrize("changes, named", [
    ({"do_pad": True}, "do_pad"),
    ({"resample": 4}, "resample"),
    ({"size": {"shortest_edge": 32}}, "shortest_edge"),
    ({"size": {"shortest_edge": 32, "longest_edge": 64}}, "longest_edge"),
    ({"image_processor_type": "DetrImageProcessor"}, "image_processor_type"),
    ({"crop_pct": 0.9}, "crop_pct"),
    ({"do_center_crop": True, "crop_size": {"height": 16, "width": 16}}, "crop_size"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"do_resize": False}, "do_resize"),
])
def test_bad_preprocessor_config_is_refused_by_name(hf_dirs, tmp_path, changes, named):
    from optimizers.sources import resolve_source

    bad = hf_images.with_processor(hf_dirs["vit"], tmp_path / "bad", **changes)
    with pytest.raises(SourceError, match=named) as e:
        resolve_source(str(bad))
    assert "preprocessor_config.json" in str(e.value)


def test_hf_image_classifier_without_processor_config(hf_dirs, tmp_path):
    from optimizers.sources import resolve_source

    import shutil

    bad = tmp_path / "noproc"
    shutil.copytree(hf_dirs["vit"], bad)
    (bad / "preprocessor_config.json").unlink()
    with pytest.raises(SourceError, match="no preprocessor_config.json"):
        resolve_source(str(bad))
    with pytest.raises(SourceError, match="drop --task"):
        resolve_source(str(hf_dirs["vit"]), task="token-classification")


# --- a torch factory with --preprocess image, a folder of images with labels -------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """24 JPEGs and one PNG from the sample photos, and labels: the tiny factory's own top-1
    for all but four images."""
    import torch

    from optimizers.image_validation import augmented_samples
    from serving.images import preprocess
    from tests.fixtures.tiny_models import image_classifier

    d = tmp_path_factory.mktemp("images")
    items = augmented_samples(25, seed=3)
    names = []
    for i, (name, data) in enumerate(items):
        if i == 0:  # one PNG
            from PIL import Image

            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, format="PNG")
            data, file = buf.getvalue(), f"{name}.png"
        else:
            file = f"{name}.jpg"
        (d / file).write_bytes(data)
        names.append(file)
    (d / "README.txt").write_text("not an image")
    spec = ImagePreprocessing(height=32, width=32, resize_to=40, mean=[0.485, 0.456, 0.406],
                              std=[0.229, 0.224, 0.225])
    order = sorted(names)
    x = preprocess([(d / n).read_bytes() for n in order], spec)
    with torch.inference_mode():
        top1 = image_classifier()(torch.from_numpy(x)).argmax(1).numpy()
    top1[:4] = (top1[:4] + 1) % 10
    labels = d.parent / f"{d.name}-labels.csv"
    labels.write_text("file,label\n" + "\n".join(f"{n},{c}" for n, c in zip(order, top1)))
    return d, labels


def test_torch_factory_with_preprocess_image_optimizes(image_folder, tmp_path):
    folder, labels = image_folder
    repo = tmp_path / "repo"
    result = run_cli(
        "optimize", "tests.fixtures.tiny_models:image_classifier", "--preprocess", "image",
        "--image-size", "32", "--resize-to", "40", "--name", "tiny-cnn",
        "--validation", str(folder), "--labels", str(labels),
        "--variants", "torch-fp32,onnx-int8-static", "--publish", "all",
        "--repository", str(repo), "--report", str(tmp_path / "report"), *FAST)
    assert result.returncode == 0, result.stderr + result.stdout
    r = ModelRepository(repo)
    manifests = {r.open("tiny-cnn", v).manifest.variant: r.open("tiny-cnn", v).manifest
                 for v in r.versions("tiny-cnn")}
    assert "torch-fp32" in manifests, result.stdout
    m = manifests["torch-fp32"]
    spec = m.image_preprocessing
    assert (spec.height, spec.width, spec.resize_to, spec.interpolation) == (32, 32, 40,
                                                                             "bilinear")
    assert m.postprocessing.labels == [str(i) for i in range(10)]
    f = m.measurements.fidelity
    assert f.samples == 12 and f.rows == "held-out"  # 25 images, 12 held out
    assert f.top1_agreement == 1.0 and f.top5_overlap == 1.0
    # the labels are the model's own top-1 except for four images
    assert f.accuracy == f.reference_accuracy and 0.5 <= f.accuracy < 1.0
    # the INT8 variant, calibrated on the 13 tuning images, was built and judged alike (it is
    # published only when within the budget)
    report = (tmp_path / "report" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| onnx-int8-static |"))
    assert "top-5 overlap" in row and "accuracy" in row, row
    assert "validation: 25 images from" in report and "1 other file(s) ignored" in report


@pytest.mark.parametrize("args, named", [
    (["--mean", "0.5,0.5"], "--mean"),
    (["--std", "0,1,1"], "--std"),
    (["--image-size", "big"], "--image-size"),
    (["--resize-to", "16"], "--resize-to"),
    (["--layout", "CHW"], "--layout"),
    (["--preprocess", "audio"], "--preprocess"),
])
def test_bad_image_options_are_refused_by_name(args, named, tmp_path):
    full = ["optimize", "tests.fixtures.tiny_models:image_classifier", "--image-size", "32",
            "--preprocess", "image", "--publish", "none", "-q", *args]
    result = run_cli(*full)
    assert result.returncode != 0
    assert named in result.stderr + result.stdout


def test_image_folder_errors_name_the_file(image_folder, tmp_path):
    from optimizers.image_validation import image_validation
    from optimizers.sources import resolve_source

    folder, labels = image_folder
    spec = ImagePreprocessing(height=32, width=32, resize_to=40, mean=[0.5] * 3, std=[0.5] * 3)
    src = resolve_source("tests.fixtures.tiny_models:image_classifier", image=spec)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in sorted(folder.glob("*.jpg"))[:3]:
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "zz-cut.jpg").write_bytes((folder / sorted(
        p.name for p in folder.glob("*.jpg"))[0]).read_bytes()[:300])
    with pytest.raises(ValidationDataError, match="zz-cut.jpg"):
        image_validation(src, str(broken), None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationDataError, match="holds no images"):
        image_validation(src, str(empty), None)
    short = tmp_path / "short.csv"
    short.write_text("\n".join(labels.read_text().splitlines()[:-1]))
    with pytest.raises(ValidationDataError, match="no label for 1 image"):
        image_validation(src, str(folder), str(short))
    wrong = tmp_path / "wrong.csv"
    first = labels.read_text().splitlines()[1].split(",")[0]
    wrong.write_text(f"{first},12")
    with pytest.raises(ValidationDataError, match=":1: class 12"):
        image_validation(src, str(folder), str(wrong))
    with pytest.raises(ValidationDataError, match="default sample images"):
        image_validation(src, None, str(labels))


def test_preprocess_image_only_for_torch_factories(hf_dirs):
    from optimizers.sources import resolve_source

    spec = ImagePreprocessing(height=32, width=32, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(SourceError, match="--preprocess image applies to torch factories"):
        resolve_source(str(hf_dirs["vit"]), image=spec)
    with pytest.raises(OptimizeError, match="drop --input"):
        resolve_source("tests.fixtures.tiny_models:image_classifier", image=spec,
                       inputs=["x:FP32:-1,3,32,32"])


# --- fidelity ----------------------------------------------------------------------------------

def test_top5_overlap_and_accuracy():
    from optimizers.fidelity import FidelityBudget, compare

    ref = np.array([[10, 9, 8, 7, 6, 0, 0, 0], [0, 0, 0, 6, 7, 8, 9, 10]], dtype=np.float32)
    cand = ref.copy()
    cand[0, [3, 4]] = -1  # row 0 loses two of its five best to classes 5 and 6
    cand[0, [5, 6]] = 5
    f = compare("classification", {"p": ref}, {"p": cand}, FidelityBudget(), np.array([0, 0]),
                image=True)
    assert f.top5_overlap == pytest.approx((3 / 5 + 1) / 2)
    assert f.top1_agreement == 1.0 and f.accuracy == 0.5 and f.reference_accuracy == 0.5
    assert f.f1 is None and f.passed and f.budget == "top-1 agreement >= 0.99"
    text = compare("classification", {"p": ref}, {"p": cand}, FidelityBudget())
    assert text.top5_overlap is None  # text classifiers keep their own metrics


def test_json_roundtrip_of_manifest_fields(hf_dirs):
    """The image source's contract survives the manifest (schema 3)."""
    from optimizers.sources import resolve_source

    src = resolve_source(str(hf_dirs["resnet"]))
    spec = src.image_preprocessing
    assert (spec.resize_to, spec.height, spec.interpolation) == (36, 32, "bicubic")
    again = ImagePreprocessing.model_validate(json.loads(spec.model_dump_json()))
    assert again == spec
    assert Path(src.source.ref).name == "resnet"
