"""Per-pixel model uncertainty: normalised entropy of the class probabilities. Plain numpy, no Qt.

Used for the uncertainty overlay and for "next most uncertain image" (rank images by
:func:`mean_uncertainty` of their cached probabilities). Run it off the UI thread for large images.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["uncertainty", "mean_uncertainty"]

# Rows processed at once: bounds the float32 temporaries to about C × this × W values, so a
# 21×3000×4000 probability map (1 GiB) never needs a second GiB of scratch.
_ROW_CELLS = 1 << 22


def _check(probs: np.ndarray) -> np.ndarray:
    if not isinstance(probs, np.ndarray) or probs.ndim != 3 or 0 in probs.shape:
        raise ValueError(f"probs must be a non-empty C×H×W array, got {getattr(probs, 'shape', type(probs))}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point, got {probs.dtype}")
    return probs


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """Normalised entropy ``-Σ p·log p / log C`` per pixel.

    Args:
        probs: C×H×W probabilities (float; each pixel sums to 1).
    Returns:
        H×W float32 in [0, 1]: 0 where one class has all the mass, 1 where all C are equally likely
        (all zeros when C == 1).
    """
    p = _check(probs)
    c, h, w = p.shape
    out = np.zeros((h, w), dtype=np.float32)
    if c == 1:
        return out
    step = max(1, _ROW_CELLS // max(1, c * w))
    scale = np.float32(1.0 / math.log(c))
    for r0 in range(0, h, step):
        block = np.asarray(p[:, r0:r0 + step], dtype=np.float32)
        # 0·log 0 = 0: clipping below at a tiny value gives exactly that limit and no warnings.
        ent = -(block * np.log(np.clip(block, 1e-12, None))).sum(axis=0)
        out[r0:r0 + step] = np.clip(ent * scale, 0.0, 1.0)
    return out


def mean_uncertainty(probs: np.ndarray) -> float:
    """Mean of :func:`uncertainty` over the image: a float in [0, 1] to rank images by."""
    return float(uncertainty(probs).mean(dtype=np.float64))
