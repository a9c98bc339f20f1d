"""Tiny Hugging Face image classifiers built offline, as a user's ``save_pretrained`` writes
them (randomly initialised ViT and ResNet with their image processors), and broken
preprocessor configs. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

LABELS = ["cat", "cup", "rocket", "flower", "bike"]


def _labels(config) -> None:
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {n: i for i, n in enumerate(LABELS)}


def _spread(model, std: float) -> None:
    """Weights larger than the default init, so that a random model's classes differ from
    image to image (the default init's outputs are near uniform)."""
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, std)


def tiny_vit(out: Path) -> Path:
    """ViTForImageClassification on 32x32 images (ViT's processor: resized to 32x32)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=len(LABELS))
    _labels(config)
    model = ViTForImageClassification(config).eval()
    _spread(model, 0.2)
    model.save_pretrained(str(out))
    ViTImageProcessor(size={"height": 32, "width": 32}, resample=2,
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
                      ).save_pretrained(str(out))
    return out


def tiny_resnet(out: Path) -> Path:
    """ResNetForImageClassification with ConvNeXt's processor (shortest edge 32, crop_pct
    0.875: shorter side to 36, center 32x32, bicubic)."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=len(LABELS))
    _labels(config)
    model = ResNetForImageClassification(config).eval()
    _spread(model, 0.3)
    model.save_pretrained(str(out))
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, resample=3
                           ).save_pretrained(str(out))
    return out


def with_processor(src: Path, out: Path, **changes) -> Path:
    """A copy of ``src`` whose preprocessor_config.json has ``changes`` (None removes a key)."""
    import shutil

    shutil.copytree(src, out)
    path = out / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))
    return out
