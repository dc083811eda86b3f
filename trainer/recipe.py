"""The fine-tuning recipe: every knob of a run in one dataclass (stored in each checkpoint).

Defaults follow the DeepLab papers and their peers (DESIGN §6): SGD momentum 0.9, poly 0.9
schedule, head learning rate ×10 the backbone's, weight decay 1e-4, random scale 0.5-2.0, crop
(padded with the ignore label), horizontal flip, BatchNorm frozen for small batches.  The GUI
exposes only ``iterations``, ``time_budget_s``, ``lr`` and ``crop``; the rest is for scripts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Recipe", "IGNORE_INDEX", "SMALL_BATCH"]

IGNORE_INDEX = 255  # void / unlabelled pixels: no loss, no metric
SMALL_BATCH = 8  # BN statistics from fewer images per process are noise (DeepLab v3 §4.1 used 16)


@dataclass(frozen=True)
class Recipe:
    """Configuration of one fine-tuning run.

    ``iterations``: optimiser steps (each ``accumulate`` micro-batches of ``batch_size`` crops).
    ``time_budget_s``: stop after this many seconds of training too (None: no limit); the poly
    schedule then follows whichever budget is closer to exhaustion.
    ``freeze_bn``: None decides from the batch size (frozen below ``SMALL_BATCH`` per process).
    ``heldout_fraction``: share of labelled images kept for validation (at least one from 3 images).
    ``eval_every``: validate every N steps for early stopping (0: only before and after).
    ``patience``: stop after this many validations without a better mIoU (0: never stop early).
    ``eval_max_side``: validation images are scaled down to this longer side (speed), masks are not.
    ``amp``: mixed precision on CUDA (ignored on CPU).  ``device``: "auto", "cpu", "cuda", "cuda:N".
    """

    iterations: int = 300
    time_budget_s: float | None = None
    lr: float = 0.001
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    batch_size: int = 4
    accumulate: int = 1
    crop: int = 321
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    freeze_bn: bool | None = None
    aux_weight: float = 0.4
    heldout_fraction: float = 0.2
    eval_every: int = 50
    patience: int = 3
    eval_max_side: int | None = 513
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, not {self.iterations}")
        if self.batch_size < 1 or self.accumulate < 1:
            raise ValueError("batch_size and accumulate must be at least 1")
        if self.crop < 16:
            raise ValueError(f"crop must be at least 16 pixels, not {self.crop}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if self.lr <= 0 or self.head_lr_mult <= 0:
            raise ValueError("lr and head_lr_mult must be positive")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), not {self.heldout_fraction}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("time_budget_s must be positive (or None)")

    def bn_frozen(self) -> bool:
        """Whether BatchNorm layers stay in eval mode with fixed affine parameters."""
        return self.batch_size < SMALL_BATCH if self.freeze_bn is None else bool(self.freeze_bn)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
