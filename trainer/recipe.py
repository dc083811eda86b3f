"""The fine-tuning recipe: every knob of a run in one dataclass (stored in each checkpoint).

Defaults follow the DeepLab papers and their peers: SGD momentum 0.9, poly 0.9
schedule, head learning rate ×10 the backbone's, weight decay 1e-4, random scale 0.5-2.0, crop
(padded with the ignore label), horizontal flip, BatchNorm frozen for small batches.  The GUI
exposes only ``iterations``, ``time_budget_s``, ``lr`` and ``crop``; the rest is for scripts.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["Recipe", "RecipeError", "SMALL_BATCH", "LIMITS", "check_value"]

SMALL_BATCH = 8  # BN statistics from fewer images per process are noise (DeepLab v3 §4.1 used 16)

# Every number of the recipe: (kind, low, high, low allowed, high allowed).  One table, so the command
# line's options and the dataclass (the app's fine-tune dialog builds one) refuse the same values.  A NaN
# learning rate, say, would turn every weight into NaN in one step and still be saved as a "better" model.
LIMITS: dict[str, tuple[type, float, float, bool, bool]] = {
    "iterations": (int, 1, 10_000_000, True, True),
    "time_budget_s": (float, 0.0, 30 * 86400.0, False, True),  # up to 30 days
    "lr": (float, 0.0, 1.0, False, True),
    "head_lr_mult": (float, 0.0, 1000.0, False, True),
    "momentum": (float, 0.0, 1.0, True, False),
    "weight_decay": (float, 0.0, 1.0, True, True),
    "poly_power": (float, 0.0, 10.0, True, True),
    "batch_size": (int, 1, 4096, True, True),
    "accumulate": (int, 1, 4096, True, True),
    "crop": (int, 16, 8192, True, True),
    "scale_min": (float, 0.05, 4.0, True, True),  # beyond 4x a photo's crop source outgrows memory
    "scale_max": (float, 0.05, 4.0, True, True),
    "aux_weight": (float, 0.0, 10.0, True, True),
    "heldout_fraction": (float, 0.0, 1.0, True, False),
    "eval_every": (int, 0, 10_000_000, True, True),
    "patience": (int, 0, 1_000_000, True, True),
    "eval_max_side": (int, 16, 65536, True, True),
    "num_workers": (int, 0, 256, True, True),
    "seed": (int, 0, 2**63 - 1, True, True),  # numpy's generators take no negative seed
}
_OPTIONAL = {"time_budget_s", "eval_max_side"}  # None: no time limit / validation at full size


class RecipeError(ValueError):
    """A recipe value out of range; ``field`` names it and ``reason`` says what is allowed."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field} {reason}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range_text(kind: type, lo: float, hi: float, lo_ok: bool, hi_ok: bool) -> str:
    if kind is int:
        return f"a whole number from {_num(lo)} to {_num(hi)}"
    return f"a finite number in {'[' if lo_ok else '('}{_num(lo)}, {_num(hi)}{']' if hi_ok else ')'}"


def check_value(field: str, value: Any) -> Any:
    """``value`` if it is allowed for recipe field ``field`` (see :data:`LIMITS`), else RecipeError."""
    if value is None and field in _OPTIONAL:
        return None
    kind, lo, hi, lo_ok, hi_ok = LIMITS[field]
    wanted = numbers.Integral if kind is int else numbers.Real
    ok = isinstance(value, wanted) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (lo <= v if lo_ok else lo < v) and (v <= hi if hi_ok else v < hi)
    if not ok:
        raise RecipeError(field, f"must be {_range_text(kind, lo, hi, lo_ok, hi_ok)}, not {value!r}")
    return value


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
        for name in LIMITS:
            check_value(name, getattr(self, name))
        if self.scale_min > self.scale_max:
            raise RecipeError("scale_min", f"must not exceed scale_max ({self.scale_max}), not {self.scale_min}")
        for name in ("flip", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise RecipeError(name, f"must be true or false, not {getattr(self, name)!r}")
        if self.freeze_bn is not None and not isinstance(self.freeze_bn, bool):
            raise RecipeError("freeze_bn", f"must be true, false or None, not {self.freeze_bn!r}")
        if not isinstance(self.device, str) or not self.device:
            raise RecipeError("device", f"must be auto, cpu, cuda or cuda:N, not {self.device!r}")

    def bn_frozen(self) -> bool:
        """Whether BatchNorm layers stay in eval mode with fixed affine parameters."""
        return self.batch_size < SMALL_BATCH if self.freeze_bn is None else bool(self.freeze_bn)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
