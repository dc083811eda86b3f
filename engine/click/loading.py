"""Loading the click models' official files: SAM's and MobileSAM's bare state dicts, SAM 2.1's
``{"model": state_dict}``, and this project's safetensors copies of either.

The file is read with the DeepLab loader's reader (``weights_only`` unpickling, declared sizes checked
before anything is inflated, NaN refused); the architecture is the registered click model whose keys
and shapes the file has exactly, after dropping the keys its family lists as unused in image mode.
Anything else missing or unexpected is an error naming the keys.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoints.formats import SkipRandomInit
from ..checkpoints.limits import LIMIT_SLACK, CheckpointError
from .base import ClickModel
from .registry import (
    click_spec,
    expected_click_shapes,
    largest_click_bytes,
    list_click_models,
)

__all__ = ["click_limit", "detect_click_model", "load_click_model"]

Shape = tuple[int, ...]


def click_limit() -> int:
    """Bytes of tensor data a click checkpoint may declare: four times the largest click model (room
    for a training script's optimiser state) plus the loader's slack."""
    return 4 * largest_click_bytes() + LIMIT_SLACK


def _usable(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    skip = click_spec(name).unused_prefixes
    return {k: v for k, v in sd.items() if not k.startswith(skip)} if skip else sd


def _diff(sd: dict[str, torch.Tensor], expected: dict[str, Shape]) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {expected[k]})" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    return missing, unexpected, wrong


def _describe(missing: list[str], unexpected: list[str], wrong: list[str], limit: int = 4) -> str:
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def detect_click_model(sd: dict[str, torch.Tensor], path: str | os.PathLike = "checkpoint",
                       arch: str | None = None) -> str:
    """The registered click model whose layout ``sd`` has exactly; CheckpointError naming the keys
    otherwise (against ``arch`` when given, else against the closest model)."""
    names = [arch] if arch else list_click_models()
    if arch is not None:
        click_spec(arch)   # ValueError for an unknown name
    best = None
    for name in names:
        diff = _diff(_usable(sd, name), expected_click_shapes(name))
        if not any(diff):
            return name
        score = sum(len(d) for d in diff)
        if best is None or score < best[0]:
            best = (score, name, diff)
    if best is None:
        raise CheckpointError(f"{path}: no click model is registered")
    _, name, diff = best
    what = f"{arch}" if arch else f"any click model (closest: {name})"
    raise CheckpointError(f"{path}: the weights do not fit {what}: {_describe(*diff)}")


def load_click_model(path: str | os.PathLike, *, arch: str | None = None, device: str | torch.device = "cpu"
                     ) -> ClickModel:
    """Read a click model's weights file and return the model in eval mode on ``device``.

    ``arch``: a name from :func:`~engine.click.registry.list_click_models` to insist on (default:
    recognised from the keys and shapes). Raises CheckpointError (one sentence naming the file) for
    an unreadable, oversized, damaged or foreign file, ValueError for an unknown ``arch``.
    """
    from ..checkpoints.io import read_checkpoint
    path = Path(path)
    raw = read_checkpoint(path, max_bytes=click_limit())
    sd = {k.removeprefix("module."): v for k, v in raw.state_dict.items()}
    name = detect_click_model(sd, path, arch)
    with SkipRandomInit():   # every weight is overwritten by the strict load below
        model = click_spec(name).builder()
    try:
        model.load_state_dict(_usable(sd, name), strict=True)
    except RuntimeError as exc:   # only if the layout check and the module disagree
        raise CheckpointError(f"{path}: weights do not fit {name}: {exc}") from None
    return model.eval().to(device)
