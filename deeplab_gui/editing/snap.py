"""Which pixels a CRF-snap stroke may change, and applying that as one undo step. No Qt.

The dense CRF labels a whole crop around the strokes, but most of that crop is not what the person
pointed at: a snap changes only the region its stroke reaches along image edges, i.e. the pixels
the CRF gave the stroke's class that are 4-connected to the stroke through pixels of that class,
plus the stroke's own pixels. Everything else in the crop keeps its label, so there are no
rectangular seams and no far-away pixels relabelled to whatever the CRF guessed there.

A pixel a person set is never changed unless the stroke itself covers it, and the region does not
grow through it (a hand-drawn boundary stops the snap) unless it already has the stroke's class.
"Person-set" is the document's provenance (:func:`person_set`), which the store keeps with the mask,
so it holds across sessions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import VOID

from .raster import BBox, flood_region
from .reduce import Reduction

__all__ = ["SNAP_DESCRIPTION", "SNAP_MAX_PIXELS", "ReducedSnapJob", "SnapJob", "apply_snap", "grow_from", "person_set", "prepare_snap",
           "snap_margin", "snap_region"]

SNAP_DESCRIPTION = "CRF snap"
SNAP_MAX_PIXELS = 1_000_000   # a snap's CRF sees at most this many pixels (a larger crop is reduced)


def snap_margin(radius: float) -> int:
    """Pixels around the strokes the CRF-snap refines: far enough to follow an edge the strokes hint
    at; within it, only the region connected to the strokes changes."""
    return int(max(32, math.ceil(6 * radius)))


@dataclass(frozen=True)
class SnapJob:
    """One CRF snap, cut out of the image: everything :meth:`labels` needs, so it can run in a worker
    while the document stays with its owner. ``box``: the crop (y0, x0, y1, x1) in image pixels.
    The crop's probabilities are either given (``probs``) or read in the worker from the image's
    own (``grid``: C×h'×w' on any grid, for an image of ``shape``), so the UI thread never makes them."""
    box: BBox
    image: np.ndarray        # h×w×3 uint8, the crop
    probs: np.ndarray | None  # C×h×w float32 over the crop, or None (strokes alone, or from ``grid``)
    scribbles: np.ndarray    # h×w uint8 stroke class per marked pixel, VOID elsewhere
    params: Any              # engine.CRFParams
    num_classes: int
    current: np.ndarray | None = None   # h×w labels the document has now (used without probabilities)
    grid: Any = None                    # the image's probabilities (read-only), when ``probs`` is None
    shape: tuple[int, int] | None = None   # the image's (H, W), with ``grid``

    def crop_probs(self) -> np.ndarray | None:
        """C×h×w probabilities over the crop (from ``grid`` when not given)."""
        if self.probs is not None or self.grid is None:
            return self.probs
        from engine import crop_at
        return crop_at(self.grid, self.shape, self.box)

    def labels(self) -> np.ndarray:
        """The dense CRF's labels over the crop with the strokes as hard evidence (the slow part).

        The strokes' colours shape the prior (engine.crf.stroke_prior): the stroke's class spreads
        over what looks like it; elsewhere the model's probabilities hold, or without a model the
        current labels."""
        return _refine(self.image, self.crop_probs(), self.scribbles, self.current, self.params,
                       self.num_classes).argmax(0).astype(np.uint8)

    def apply(self, doc, labels: np.ndarray) -> BBox | None:
        """Apply :meth:`labels`' result to ``doc`` as one undo step (see :func:`apply_snap`)."""
        return apply_snap(doc, self.box, labels, self.scribbles)


def _refine(image: np.ndarray, probs: np.ndarray | None, scribbles: np.ndarray, current: np.ndarray | None,
            params: Any, num_classes: int) -> np.ndarray:
    from engine.crf import refine_with_scribbles, stroke_prior
    n = probs.shape[0] if probs is not None else num_classes
    prior = stroke_prior(image, scribbles, current, n, probs)
    return refine_with_scribbles(image, prior, scribbles, params)


@dataclass(frozen=True)
class ReducedSnapJob(SnapJob):
    """A snap whose crop is over :data:`SNAP_MAX_PIXELS` (a long stroke across a large photo): the
    CRF runs on the crop reduced to that size, its spatial widths scaled with it, and its answer is
    enlarged bilinearly back to the crop. Here ``image`` is the whole image's (the worker reduces it
    and reads ``grid``; the UI thread only copies the crop's strokes and labels), ``cut`` the reduction.
    Memory: the CRF of SNAP_MAX_PIXELS plus about two bytes a crop pixel (the labels, the strokes).
    """
    cut: Reduction | None = None

    def labels(self) -> np.ndarray:
        cut = self.cut
        y0, x0, y1, x1 = cut.box
        rows, cols = cut.middles()
        current = None if self.current is None else self.current[rows - y0][:, cols - x0]
        probs = None if self.grid is None else cut.probs(self.grid)
        q = _refine(cut.image(self.image), probs, cut.marks(self.scribbles), current, self.params.scaled(cut.scale),
                    self.num_classes)
        out = np.empty(cut.crop, np.uint8)
        for r0, r1, band in cut.enlarged(q):
            out[r0:r1] = band.argmax(0)
        return out


def prepare_snap(scribbles: np.ndarray, bbox: BBox, image: np.ndarray, probs: Any, params: Any,
                 num_classes: int, radius: float, current: np.ndarray | None = None) -> SnapJob:
    """The crop a snap of strokes ``scribbles`` (H×W, within ``bbox``) drawn at ``radius`` refines.

    ``probs``: the image's C×h×w probabilities, at full size or on a smaller grid (a huge image's are),
    or None. ``current``: the document's H×W labels (the prior's fallback without probs).
    Cheap (slicing and copies of the crop's strokes and labels): the probabilities over the crop are
    read in the worker (:meth:`SnapJob.labels`), and a crop over :data:`SNAP_MAX_PIXELS` is reduced there.
    """
    h, w = scribbles.shape
    m = snap_margin(radius)
    y0, x0, y1, x1 = bbox
    box = max(y0 - m, 0), max(x0 - m, 0), min(y1 + m, h), min(x1 + m, w)
    y0, x0, y1, x1 = box
    cur = None if current is None or probs is not None else np.array(current[y0:y1, x0:x1])
    strokes = scribbles[y0:y1, x0:x1].copy()
    cut = Reduction.fit(box, (h, w), SNAP_MAX_PIXELS)
    if cut is not None:
        return ReducedSnapJob(box, image, None, strokes, params, int(num_classes), cur, probs, (h, w), cut)
    return SnapJob(box, np.ascontiguousarray(image[y0:y1, x0:x1]), None, strokes, params, int(num_classes), cur,
                   probs, (h, w))


def _intersect(a: BBox, b: BBox) -> BBox | None:
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def person_set(doc, box: BBox) -> np.ndarray:
    """Bool array over ``box`` of the document: True where a person set the pixel to a class.

    The document's provenance (``doc.confirmed``, kept with the mask in the store) says which pixels a
    person set; a pixel a person erased to void is theirs too, but holds no class to protect.
    """
    by0, bx0, by1, bx1 = box
    return doc.confirmed[by0:by1, bx0:bx1] & (doc.mask[by0:by1, bx0:bx1] != VOID)


def grow_from(passable: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Bool mask of the ``passable`` pixels 4-connected to a seed (seeds must be passable)."""
    grid = passable.astype(np.uint8)
    region = np.zeros(passable.shape, dtype=bool)
    left = seeds & passable
    while True:
        ys, xs = np.nonzero(left)
        if not len(ys):
            return region
        (y0, x0, y1, x1), inside = flood_region(grid, int(xs[0]), int(ys[0]))
        region[y0:y1, x0:x1] |= inside
        left &= ~region


def snap_region(labels: np.ndarray, scribbles: np.ndarray, current: np.ndarray,
                protected: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pixels a snap changes, over one crop.

    Args:
        labels: h×w refined class per pixel (the CRF's argmax).
        scribbles: h×w uint8 stroke class per marked pixel, ``VOID`` elsewhere.
        current: h×w uint8 labels the document has now.
        protected: h×w bool, pixels a person set (kept unless a stroke covers them); None = none.
    Returns:
        ``(new, where)``: h×w uint8 labels and the h×w bool mask of pixels to take them from.
    """
    marked = scribbles != VOID
    free = ~protected if protected is not None else np.ones(labels.shape, dtype=bool)
    new = np.array(current, dtype=np.uint8, copy=True)
    where = np.zeros(labels.shape, dtype=bool)
    for c in np.unique(scribbles[marked]).tolist():
        stroke = scribbles == c
        # Grow through the CRF's pixels of this class, but not through a person's labels of another.
        passable = ((labels == c) & ~marked & (free | (current == c))) | stroke
        region = grow_from(passable, stroke) & (free | stroke)
        new[region] = c
        where |= region
    return new, where


def apply_snap(doc, box: BBox, labels: np.ndarray, scribbles: np.ndarray,
               description: str = SNAP_DESCRIPTION) -> BBox | None:
    """Apply a snap's CRF ``labels`` and ``scribbles`` (both over ``box`` of ``doc``) as one undo step.

    Returns the changed box, or None when nothing changed.
    """
    y0, x0, y1, x1 = box
    current = doc.mask[y0:y1, x0:x1]
    new, where = snap_region(labels, scribbles, current, person_set(doc, box))
    return doc.apply_labels(new, where=where, description=description, box=box)   # the crop's cost only
