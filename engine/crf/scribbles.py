"""Scribble-driven refinement: a few user strokes, propagated by the CRF along image edges."""
from __future__ import annotations

import numpy as np

from ..labels import VOID
from .backends import refine
from .params import DEEPLAB_V1, PROB_EPS, CRFParams, check_image, check_probs

__all__ = ["CLAMP_PROB", "refine_with_scribbles"]

# A marked pixel's other classes get the smallest probability the backends distinguish (PROB_EPS):
# unary -log(1e-8) ≈ 18.4 exceeds the largest message the presets can send (about w1 + w2 per class), so
# marked pixels keep their class in every iteration. This clamps through the unary, which both backends
# support; with kernel weights summing above ~18 the clamp softens.
CLAMP_PROB = PROB_EPS


def refine_with_scribbles(image: np.ndarray, probs: np.ndarray | None, scribbles: np.ndarray,
                          params: CRFParams = DEEPLAB_V1, *, num_classes: int | None = None,
                          backend: str = "auto", device=None) -> np.ndarray:
    """Refine with user strokes as hard evidence.

    Args:
        image: H×W×3 uint8 RGB.
        probs: C×H×W network probabilities, or None to use the strokes alone (uniform elsewhere).
        scribbles: H×W uint8 class index per marked pixel, ``VOID`` (255) elsewhere.
        params: CRF settings; long-range propagation wants the appearance kernel (w1, θα) on.
        num_classes: C when ``probs`` is None (default: highest scribbled class + 1).
    Returns:
        C×H×W float32 probabilities; marked pixels are (numerically) one-hot on their class.
    Raises:
        ValueError: malformed inputs, shape mismatch, scribble class >= C, no strokes without probs.
    """
    img = check_image(image)
    if not isinstance(scribbles, np.ndarray) or scribbles.shape != img.shape[:2]:
        shape = getattr(scribbles, "shape", None)
        raise ValueError(f"scribbles must be an H×W array matching the image {img.shape[:2]}, got {shape}")
    if scribbles.dtype != np.uint8:
        raise ValueError(f"scribbles must be uint8 (255 = unmarked), got {scribbles.dtype}")
    marked = scribbles != VOID
    if probs is None:
        if not marked.any():
            raise ValueError("no scribbles and no probabilities: nothing to propagate")
        c = num_classes if num_classes is not None else int(scribbles[marked].max()) + 1
        p = np.full((c,) + img.shape[:2], 1.0 / c, dtype=np.float32)
    else:
        p = check_probs(probs, img.shape).copy()
        c = p.shape[0]
        if num_classes is not None and num_classes != c:
            raise ValueError(f"num_classes={num_classes} but probabilities have {c} classes")
    if marked.any() and int(scribbles[marked].max()) >= c:
        raise ValueError(f"scribble class {int(scribbles[marked].max())} is out of range for {c} classes")

    ys, xs = np.nonzero(marked)
    cls = scribbles[ys, xs].astype(np.int64)
    p[:, ys, xs] = CLAMP_PROB
    p[cls, ys, xs] = 1.0 - CLAMP_PROB * (c - 1)
    return refine(img, p, params, backend=backend, device=device)
