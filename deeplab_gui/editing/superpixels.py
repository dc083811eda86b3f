"""Superpixels: the image cut into small regions of like colour, so a click or a drag paints whole
regions that follow the image's edges. Weight-free (no model needed). No Qt.

:func:`compute_superpixels` runs SLIC or Felzenszwalb's graph segmentation (scikit-image) at a
chosen granularity; it is the slow part (a fraction of a second for a photo) and belongs in a
worker. Memory is bounded: an image above ``max_pixels`` is segmented at a reduced size and kept
there (:func:`segment`: the ids on the reduced grid plus a row and a column map), so the work and
what is kept stay those of a ``max_pixels`` image; :func:`compute_superpixels` enlarges the ids to
an H×W int32 map (nearest neighbour) for callers that want one. :func:`touched` and :func:`paint_superpixels` turn a stroke's
footprint into whole superpixels and one undo step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .raster import BBox

__all__ = ["SUPERPIXEL_DESCRIPTION", "SuperpixelParams", "Superpixels", "compute_superpixels", "paint_superpixels",
           "segment", "touched"]

SUPERPIXEL_DESCRIPTION = "Superpixels"
# Segmented at no more pixels than this; larger images are reduced first. Felzenszwalb's time grows
# faster than the pixels: on the 2-core machine a 12-megapixel photo took 30 s at 4 MiP, 14 s at
# 2 MiP and 3.5 s at 1 MiP (SLIC 5.9 / 3.6 / 1.8 s); a superpixel of 16 photo pixels is still
# several reduced pixels wide there.
MAX_PIXELS = 2**20


@dataclass(frozen=True)
class SuperpixelParams:
    """``size``: a superpixel's typical side in image pixels (the granularity control).
    ``method``: "felzenszwalb" (regions that follow colour edges, of uneven sizes; the default: on
    textured, noisy scenes 99 % of pixels fall in a superpixel of their own class, SLIC's compact
    regions 91-95 %) or "slic" (even, compact regions). ``compactness``: SLIC's trade of colour
    against shape."""
    size: int = 16
    method: str = "felzenszwalb"
    compactness: float = 10.0

    def __post_init__(self) -> None:
        if self.method not in ("slic", "felzenszwalb"):
            raise ValueError(f"method must be 'slic' or 'felzenszwalb', not {self.method!r}")
        if not 2 <= int(self.size) <= 512:
            raise ValueError(f"size must be 2..512 pixels, not {self.size!r}")
        if not (math.isfinite(self.compactness) and self.compactness > 0):
            raise ValueError(f"compactness must be a finite number > 0, not {self.compactness!r}")


@dataclass(frozen=True)
class Superpixels:
    """An image's superpixels as segmented: ``seg`` (h×w int32 ids 0..n-1) on the grid it was
    segmented at (the image's own size, or reduced for a large image) and, per image row and column,
    the grid row and column it falls in (nearest). Kept at the grid's size: a full-size id map is
    four bytes an image pixel (48 MB for a 12-megapixel photo, 1 GB for 250 MP); what the tools
    need at full size (one box of ids, each superpixel's box) is made from it on demand."""
    seg: np.ndarray
    rows: np.ndarray     # H int64: grid row of each image row
    cols: np.ndarray     # W int64: grid column of each image column

    @property
    def shape(self) -> tuple[int, int]:
        """The image's (H, W)."""
        return len(self.rows), len(self.cols)

    @property
    def count(self) -> int:
        return int(self.seg.max()) + 1 if self.seg.size else 0

    def ids(self, box: BBox) -> np.ndarray:
        """The ids of the image pixels in ``box`` (y0, x0, y1, x1): (y1-y0)×(x1-x0) int32."""
        y0, x0, y1, x1 = box
        return self.seg[np.ix_(self.rows[y0:y1], self.cols[x0:x1])]

    def full(self) -> np.ndarray:
        """H×W int32 ids at the image's size (tests and small images; large ones use :meth:`ids`)."""
        return self.ids((0, 0, *self.shape))

    def boxes(self) -> list[BBox | None]:
        """Each superpixel's box in image pixels (None for an id with no pixel)."""
        from scipy import ndimage
        out: list[BBox | None] = []
        for sl in ndimage.find_objects(self.seg + 1):
            if sl is None:
                out.append(None)
                continue
            # Image rows whose grid row is within the slice: the rows map is sorted.
            y0, y1 = np.searchsorted(self.rows, sl[0].start), np.searchsorted(self.rows, sl[0].stop)
            x0, x1 = np.searchsorted(self.cols, sl[1].start), np.searchsorted(self.cols, sl[1].stop)
            out.append((int(y0), int(x0), int(y1), int(x1)) if y0 < y1 and x0 < x1 else None)
        return out


def segment(image: np.ndarray, params: SuperpixelParams = SuperpixelParams(),
            max_pixels: int = MAX_PIXELS) -> Superpixels:
    """The superpixels of an H×W×3 uint8 RGB image (see :class:`Superpixels`)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an H×W×3 uint8 RGB array, got {getattr(image, 'shape', type(image))}")
    h, w = image.shape[:2]
    scale = min(1.0, math.sqrt(max_pixels / (h * w)))
    small = image
    if scale < 1.0:
        from PIL import Image
        small = np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                         Image.Resampling.BILINEAR))
    size = max(2.0, params.size * scale)
    if params.method == "slic":
        from skimage.segmentation import slic
        n = max(1, round(small.shape[0] * small.shape[1] / size ** 2))
        seg = slic(small, n_segments=n, compactness=params.compactness, start_label=0, channel_axis=-1)
    else:
        from skimage.segmentation import felzenszwalb
        seg = felzenszwalb(small, scale=size ** 2, sigma=0.8, min_size=max(2, int(size ** 2 / 4)))
    seg = np.ascontiguousarray(seg.astype(np.int32, copy=False))
    # Nearest neighbour back to full size, as row and column maps.
    rows = np.minimum((np.arange(h) * small.shape[0]) // h, small.shape[0] - 1)
    cols = np.minimum((np.arange(w) * small.shape[1]) // w, small.shape[1] - 1)
    return Superpixels(seg, rows.astype(np.int64), cols.astype(np.int64))


def compute_superpixels(image: np.ndarray, params: SuperpixelParams = SuperpixelParams(),
                        max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """H×W int32 superpixel ids (0..n-1) of an H×W×3 uint8 RGB image."""
    return segment(image, params, max_pixels).full()


def touched(seg: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """H×W bool: every superpixel that ``footprint`` (H×W bool, e.g. a stroke's pixels) touches, whole."""
    if seg.shape != footprint.shape:
        raise ValueError(f"footprint {footprint.shape} does not match the superpixels {seg.shape}")
    hit = np.zeros(int(seg.max()) + 1, bool)
    hit[np.unique(seg[footprint])] = True
    return hit[seg]


def paint_superpixels(doc, seg: np.ndarray, footprint: np.ndarray, label: int,
                      description: str = SUPERPIXEL_DESCRIPTION) -> BBox | None:
    """Paint every superpixel ``footprint`` touches with ``label`` as one undo step of ``doc``."""
    return doc.paint_region(touched(seg, footprint), label, description)
