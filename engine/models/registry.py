"""Model registry: a dict of thin builder functions (segment-anything's build_sam style).

A builder is ``fn(num_classes: int, output_stride: int | None, **kw) -> nn.Module``, registered with
``@register("name", output_strides=(8, 16), default_stride=16, preprocessing=IMAGENET)``.
``build_model`` validates the stride, calls the builder and attaches ``model.meta``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..meta import IMAGENET, ModelMeta, Preprocessing

__all__ = ["register", "list_models", "build_model", "builder_defaults", "model_spec", "ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    output_strides: tuple[int, ...]
    default_stride: int
    preprocessing: Preprocessing
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, output_strides: tuple[int, ...] = (8, 16), default_stride: int = 16,
             preprocessing: Preprocessing = IMAGENET, description: str = ""):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise KeyError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, fn, tuple(output_strides), default_stride, preprocessing, description)
        return fn
    return deco


def list_models() -> list[str]:
    """Registry names of every architecture, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def builder_defaults(fn: Callable[..., nn.Module]) -> dict:
    """The builder's keyword defaults (beyond num_classes/output_stride).

    Recorded in ``meta.options`` so a checkpoint rebuilds the same module even if a default changes later.
    """
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name not in ("num_classes", "output_stride")}


def build_model(name: str, *, num_classes: int = 21, output_stride: int | None = None,
                class_names: list[str] | None = None, class_colors=None, **kw) -> nn.Module:
    """Build a randomly initialised model (eval mode) with ``model.meta`` attached.

    ``kw`` go to the family builder (``aux=True``, ``separable=True``, ``pretrained_backbone=...``).
    ``model(x)`` takes N×3×H×W normalised input and returns N×C×H×W logits at the input's size.
    """
    spec = model_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    os_ = spec.default_stride if output_stride is None else int(output_stride)
    if os_ not in spec.output_strides:
        raise ValueError(f"{name} supports output stride {spec.output_strides}, not {os_}")
    model = spec.builder(num_classes=num_classes, output_stride=os_, **kw)
    options = {**builder_defaults(spec.builder), **kw}
    model.meta = ModelMeta(
        arch=name, num_classes=num_classes, output_stride=os_, aux=bool(options.pop("aux", False)),
        options={k: v for k, v in options.items() if k != "pretrained_backbone"},
        class_names=list(class_names or []), class_colors=list(class_colors or []),
        preprocessing=spec.preprocessing, source_format="random")
    return model.eval()
