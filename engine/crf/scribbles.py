"""Scribble-driven refinement: a few user strokes, propagated by the CRF along image edges."""
from __future__ import annotations

import numpy as np

from ..labels import VOID
from .backends import refine
from .params import DEEPLAB_V1, PROB_EPS, CRFParams, check_image, check_probs

__all__ = ["CLAMP_PROB", "refine_with_scribbles", "stroke_prior"]

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


# stroke_prior: colours within about this many of the strokes' standard deviations count as "like the
# stroke"; the deviation has a floor so a flat-coloured stroke still accepts sensor noise.
_LIKE_SIGMAS = 2.0
_SIGMA_FLOOR = 6.0


def stroke_prior(image: np.ndarray, scribbles: np.ndarray, current: np.ndarray | None,
                 num_classes: int, probs: np.ndarray | None = None) -> np.ndarray:
    """Probabilities to refine strokes with when no model gave any: a colour model of the strokes.

    Without a model, a uniform prior lets a stroke's class win every pixel (nothing competes), and a
    prior that trusts the current labels lets it win none. Instead each stroked class gets a Gaussian
    colour model from the pixels under its strokes (mean and per-channel deviation). A pixel's
    probability of the stroke class it looks most like follows that likeness (from 5 % to 95 %); the
    rest goes to the other classes, mostly to the pixel's current label (evenly where that label is
    the stroke's class). A pixel with no label (none given, or ``VOID``) gives that share to one
    class no stroke has, standing for "something else": spread evenly over twenty classes, the 95 %
    a stroke leaves would give none of them more than the stroke's 5 %, and a stroke on an image
    nobody has labelled yet would flood its whole crop. The CRF then grows the strokes over pixels
    that look like them and stops at edges.

    With a model's ``probs`` the two are blended by that likeness: a pixel that looks like the stroke
    follows the stroke's colour model, one that does not keeps the model's probabilities. A stroke
    says the model is wrong around it; this lets it win over a confidently wrong model where the
    image agrees with the stroke, and nowhere else.

    Args:
        image: h×w×3 uint8 RGB. scribbles: h×w uint8 (``VOID`` unmarked). current: h×w uint8 labels
        now (``VOID`` = none), or None. num_classes: C. probs: C×h×w model probabilities, or None.
    Returns: C×h×w float32, summing to 1 per pixel.
    """
    img = check_image(image).astype(np.float32)
    h, w = img.shape[:2]
    c = int(num_classes)
    marked = scribbles != VOID
    stroked = np.unique(scribbles[marked]).tolist()
    like = np.zeros((h, w), np.float32)
    best = np.full((h, w), stroked[0] if stroked else 0, np.int64)
    for k in stroked:
        if k >= c:
            raise ValueError(f"scribble class {k} is out of range for {c} classes")
        colours = img[scribbles == k]
        mu = colours.mean(0)
        sd = np.maximum(colours.std(0), _SIGMA_FLOOR) * _LIKE_SIGMAS
        z2 = (((img - mu) / sd) ** 2).sum(-1)
        s = np.exp(-0.5 * z2)
        better = s > like
        like[better], best[better] = s[better], k
    if probs is not None:
        p = check_probs(probs, img.shape)
        if p.shape[0] != c:
            raise ValueError(f"num_classes={c} but probabilities have {p.shape[0]} classes")
        stroke = np.full((c, h, w), 0.05 / max(c - 1, 1), dtype=np.float32)
        np.put_along_axis(stroke, best[None], 0.95, 0)
        return like[None] * stroke + (1.0 - like[None]) * p
    # The other classes share what the stroke class leaves: the current label most of it.
    rest = np.full((c, h, w), 1.0, dtype=np.float32)
    unlabelled = np.ones((h, w), bool)
    if current is not None:
        cur = np.asarray(current).astype(np.int64)
        unlabelled = cur >= c
        ys, xs = np.nonzero(~unlabelled)
        rest[cur[ys, xs], ys, xs] += 9.0 * max(c - 1, 1)
    spare = next((k for k in range(c) if k not in stroked), None)
    if spare is not None:   # (every class stroked: the strokes compete among themselves)
        rest[spare][unlabelled] += 9.0 * max(c - 1, 1)
    if c > 1:
        np.put_along_axis(rest, best[None], 0.0, 0)
    rest /= rest.sum(0, keepdims=True)
    mine = 0.05 + 0.9 * like
    out = rest * (1.0 - mine)[None]
    np.put_along_axis(out, best[None], np.take_along_axis(out, best[None], 0) + mine[None], 0)
    return out / out.sum(0, keepdims=True)
