"""The click models by name: builders, families, and the state-dict layout each expects.

Family modules register their models here (:func:`register_click_model`); the loader recognises a
file by comparing its keys and shapes with every registered layout (:func:`expected_click_shapes`,
built once on the meta device), so no family needs its own detection code.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base import ClickModel

__all__ = [
    "ClickSpec",
    "build_click_model",
    "click_spec",
    "expected_click_shapes",
    "largest_click_bytes",
    "list_click_models",
    "register_click_model",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ClickSpec:
    """``builder()`` makes the model (random weights); ``unused_prefixes``: keys of the official files
    that image mode never uses (SAM 2.1's video-tracking modules), skipped when loading."""
    name: str
    family: str
    builder: Callable[[], ClickModel]
    description: str = ""
    unused_prefixes: tuple[str, ...] = ()


_REGISTRY: dict[str, ClickSpec] = {}
# The family modules that register models; imported on first use so `import engine` stays light.
_FAMILIES = ("sam", "tinyvit", "sam2")


def register_click_model(spec: ClickSpec) -> ClickSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"click model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_registered() -> None:
    import importlib
    for mod in _FAMILIES:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{mod}":   # a family not written yet is simply absent
                raise


def list_click_models() -> list[str]:
    """Names of the click models this build knows, in the catalog's order."""
    _ensure_registered()
    order = ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
             "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam"]
    return sorted(_REGISTRY, key=lambda n: (order.index(n) if n in order else len(order), n))


def click_spec(name: str) -> ClickSpec:
    _ensure_registered()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown click model {name!r}; known: {', '.join(list_click_models())}") from None


def build_click_model(name: str) -> ClickModel:
    """A click model with random weights, in eval mode."""
    return click_spec(name).builder().eval()


@functools.cache
def expected_click_shapes(name: str) -> dict[str, Shape]:
    """The state-dict keys and shapes of ``name`` (built on the meta device: no memory, no time)."""
    from ..checkpoints.formats import SkipRandomInit
    with torch.device("meta"), SkipRandomInit():
        model = click_spec(name).builder()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=1)
def largest_click_bytes() -> int:
    """fp32 bytes of the biggest registered click model's state dict."""
    return max((4 * sum(math.prod(s) for s in expected_click_shapes(n).values()) for n in list_click_models()),
               default=0)
