"""A tiny random image classifier (a few KB of ONNX: conv, ReLU, global pooling, a dense layer,
softmax) published as an image version exactly as the optimizer writes one, and photos to send
it: real photographs from installed packages, encoded in memory."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from serving.repository import (
    Artifact, BatchingPolicy, Fidelity, ImagePreprocessing, Manifest, Measurements,
    ModelRepository, Postprocessing, Signature, Source, TensorSpec,
)

LABELS = ["tabby", "tulip", "teapot", "tractor", "tram"]


def tiny_cnn(path: Path, classes: int = len(LABELS), seed: int = 0) -> None:
    """pixel_values [N,3,H,W] -> probabilities [N, classes] (softmax inside the model)."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", classes])
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "k"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "kb"),
             numpy_helper.from_array(rng.normal(0, 1.0, (8, classes)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, classes).astype(np.float32), "wb")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixel_values", "k", "kb"], ["c"], strides=[2, 2]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "wb"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny_cnn", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def image_spec(size: int = 32, **kw) -> ImagePreprocessing:
    return ImagePreprocessing(**{"image_input": "image", "pixel_input": "pixel_values",
                                 "height": size, "width": size, "resize_to": size + size // 7,
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                 **kw})


def image_manifest(spec: ImagePreprocessing, classes: int, labels: list[str],
                   model_file: str = "model.onnx", max_batch_size: int = 32) -> Manifest:
    """The manifest of an image classification version, as the optimizer writes it."""
    out = TensorSpec(name="probabilities", datatype="FP32", shape=[-1, classes])
    return Manifest(
        name="images", version=1, variant="onnx-fp32", task="classification",
        runtime="onnxruntime", model_file=model_file,
        model_signature=Signature(
            inputs=[TensorSpec(name=spec.pixel_input, datatype="FP32", shape=spec.pixel_shape)],
            outputs=[out]),
        signature=Signature(
            inputs=[TensorSpec(name=spec.image_input, datatype="BYTES", shape=[-1])],
            outputs=[out, TensorSpec(name="label", datatype="BYTES", shape=[-1])]),
        image_preprocessing=spec, postprocessing=Postprocessing(labels=labels),
        artifacts=[Artifact(path=model_file, sha256="0" * 64, size_bytes=0)],
        measurements=Measurements(fidelity=Fidelity(samples=0, passed=True, budget="-"),
                                  size_bytes=0),
        batching=BatchingPolicy(max_batch_size=max_batch_size, max_delay_ms=5.0),
        source=Source(kind="onnx", ref="test"), optiserve_version="test")


def publish_tiny_classifier(repo: ModelRepository, name: str = "pets", size: int = 32,
                            **spec) -> int:
    """Publish the tiny CNN as an image classification version; its number."""
    sp = image_spec(size, **spec)

    def fill(staging: Path) -> Manifest:
        tiny_cnn(staging / "model.onnx")
        return image_manifest(sp, len(LABELS), LABELS)

    return repo.publish(name, fill).version


def photos() -> list[np.ndarray]:
    """Real photographs (RGB uint8) from installed packages: scikit-learn's two sample images
    and scikit-image's colour ones."""
    from sklearn.datasets import load_sample_images
    from skimage import data

    out = list(load_sample_images().images)
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        out.append(getattr(data, name)())
    return out


def encode(rgb: np.ndarray, fmt: str = "JPEG", size: tuple[int, int] | None = None,
           quality: int = 90, **kw) -> bytes:
    """One image encoded (optionally resized to ``size`` = (width, height) first)."""
    from PIL import Image

    img = Image.fromarray(rgb)
    if size is not None:
        img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}), **kw)
    return buf.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A small, valid-looking PNG whose header declares ``width`` x ``height`` pixels (a
    decompression bomb: its IDAT is a few bytes of a stream that would inflate to gigabytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\0" + b"\0" * (width * 3)
    comp = zlib.compressobj(9)
    idat = comp.compress(row * 16) + comp.flush()  # only the first rows: the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
