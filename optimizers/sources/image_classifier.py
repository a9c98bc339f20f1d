"""What every image classification source has in common: the module the optimizer exports (the
model, then a softmax, inside the graph, as text classifiers have theirs) and the version's
contract.

An image classification version takes encoded images (``signature``: one BYTES element per
image), which serving decodes, resizes and normalises as ``image_preprocessing`` records
(:mod:`serving.images`); the model file takes the pixel tensor (``model_signature``) and returns
``probabilities`` [N, classes]; the gateway adds each row's ``label`` from ``postprocessing``.
"""

from __future__ import annotations

import torch

from serving.repository import (
    ImagePreprocessing, Postprocessing, Signature, Source, TensorSpec,
)

from .base import SourceModel


class ImageClassifier(torch.nn.Module):
    """Pixels in, class probabilities out: ``model``'s scores (a tensor, or a Hugging Face
    output's ``logits``) through a softmax, unless they are probabilities already."""

    def __init__(self, model: torch.nn.Module, softmax: bool = True,
                 hugging_face: bool = False):
        super().__init__()
        self.model = model
        self.softmax = softmax
        self.hugging_face = hugging_face

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.hugging_face:
            scores = self.model(pixel_values=pixels).logits
        else:
            scores = self.model(pixels)
        return torch.softmax(scores, dim=-1) if self.softmax else scores


def image_source(*, name: str, source: Source, module: torch.nn.Module,
                 spec: ImagePreprocessing, labels: list[str], notes: list[str]) -> SourceModel:
    """The SourceModel of an image classifier (``module``: pixels -> probabilities)."""
    probs = TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(labels)])
    return SourceModel(
        name=name,
        source=source,
        task="classification",
        model_signature=Signature(
            inputs=[TensorSpec(name=spec.pixel_input, datatype="FP32", shape=spec.pixel_shape)],
            outputs=[probs]),
        signature=Signature(
            inputs=[TensorSpec(name=spec.image_input, datatype="BYTES", shape=[-1])],
            outputs=[probs, TensorSpec(name="label", datatype="BYTES", shape=[-1])]),
        image_preprocessing=spec,
        postprocessing=Postprocessing(labels=labels),
        torch_module=module.eval(),
        notes=[*notes, f"image classification, {len(labels)} classes "
               f"({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}); softmax in the "
               f"graph; images {describe(spec)}"],
    )


def describe(spec: ImagePreprocessing) -> str:
    """The preprocessing in words (notes, the report)."""
    if spec.resize == "exact":
        size = f"resized to {spec.height}x{spec.width} ({spec.interpolation})"
    else:
        size = (f"shorter side to {spec.resize_to or max(spec.height, spec.width)} "
                f"({spec.interpolation}), center {spec.height}x{spec.width} crop")
    return (f"{size}, x*{spec.rescale:.5g} normalised by mean "
            f"{[round(m, 4) for m in spec.mean]} std {[round(s, 4) for s in spec.std]}, "
            f"{spec.channel_order} {spec.layout}")
