"""A folder's first model, when no weights exist yet: the architecture with the folder's classes, its
backbone from cached ImageNet weights when they are on this machine, else from scratch.

Used by the app's fine-tune dialog with no model loaded (the no-weights banner's third way forward) and
by ``deeplab-gui train FOLDER --new ARCH``. The trainer trains BatchNorm whose statistics were never
learned (``params.bn_statistics_trained``), so a from-scratch start does not diverge.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

__all__ = ["NEW_MODEL_ARCHS", "imagenet_start", "new_model"]

# Lightest first: from scratch or from an ImageNet backbone on a CPU, a MobileNetV2 model is the one that
# learns something in minutes.
NEW_MODEL_ARCHS = ("deeplabv3plus_mobilenet_v2", "deeplabv3_mobilenet_v2", "deeplabv3plus_resnet50",
                   "deeplabv3plus_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv1_vgg16")


def imagenet_start(arch: str) -> Path | None:
    """The downloaded ImageNet weights a new ``arch`` model's backbone can start from, if any (checking a
    file hashes it, about a second: not on a UI thread)."""
    from engine.weights import catalog
    for entry in catalog.list_weights("backbone"):
        if arch in entry.backbone_for and catalog.is_downloaded(entry):
            return catalog.weights_path(entry)
    return None


def new_model(arch: str, class_names: list[str], class_colors: list | None = None) -> nn.Module:
    """``arch`` with these classes; ``meta.extra["start"]`` records the ImageNet file or "scratch"."""
    import engine
    model = engine.build_model(arch, num_classes=len(class_names), class_names=list(class_names),
                               class_colors=list(class_colors or []))
    start = imagenet_start(arch)
    if start is not None:
        engine.load_backbone_weights(model, start)
    model.meta.extra["start"] = start.name if start is not None else "scratch"
    return model
