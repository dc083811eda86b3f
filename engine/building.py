"""``engine.build_model``: the model registry's builder, taking ImageNet backbone weights as a file too.

Models never read files (reading belongs to ``engine.checkpoints``, which needs the registry to
recognise formats); so a ``pretrained_backbone`` path is read here, safely, and handed on as a state dict.
"""
from __future__ import annotations

import os
from typing import Any

import torch.nn as nn

from .checkpoints import read_checkpoint
from .models import build_model as _build

__all__ = ["build_model"]


def build_model(name: str, *, num_classes: int = 21, output_stride: int | None = None, **kw: Any) -> nn.Module:
    """Build a randomly initialised model (eval mode) with ``model.meta`` attached.

    ``kw`` go to the family builder (``aux=True``, ``separable=True``, ``pretrained_backbone=`` a state
    dict or a checkpoint path).  ``model(x)`` takes N×3×H×W normalised input and returns N×C×H×W logits
    at the input's size.
    """
    backbone = kw.get("pretrained_backbone")
    if isinstance(backbone, (str, os.PathLike)):
        kw["pretrained_backbone"] = dict(read_checkpoint(backbone).state_dict)
    return _build(name, num_classes=num_classes, output_stride=output_stride, **kw)
