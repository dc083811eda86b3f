"""Learning-rate schedule: DeepLab's "poly" policy as a pure function (nanoGPT style)."""
from __future__ import annotations

__all__ = ["poly_lr", "progress_fraction"]


def poly_lr(base_lr: float, progress: float, power: float = 0.9) -> float:
    """``base_lr * (1 - progress) ** power`` with ``progress`` in [0, 1] (clamped).

    DeepLab v2 §4: lr = base × (1 − iter/max_iter)^0.9.  Reaches exactly 0 at the end.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return float(base_lr) * (1.0 - p) ** float(power)


def progress_fraction(step: int, max_steps: int, elapsed_s: float = 0.0,
                      time_budget_s: float | None = None) -> float:
    """How far a run is, in [0, 1]: by steps, or by time when a time budget runs out sooner.

    Taking the larger of the two makes the learning rate decay to zero whichever budget ends the run.
    """
    frac = step / max(1, max_steps)
    if time_budget_s:
        frac = max(frac, elapsed_s / time_budget_s)
    return min(max(frac, 0.0), 1.0)
