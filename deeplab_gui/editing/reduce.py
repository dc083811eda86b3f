"""A crop of a large photo worked on at a reduced size, and the answer brought back. No Qt.

The dense CRF needs about 500 bytes a pixel and a few microseconds a pixel on a CPU: an edge polish
or a CRF snap over most of a 12-megapixel photo took minutes and 12 GB. Over a pixel budget those
tools work on a reduced copy of their crop (:class:`Reduction`), with the CRF's spatial widths scaled
to it, and enlarge the answer bilinearly in bands of rows, so nothing of the crop's size is made in
floats.

Each photo pixel belongs to the reduced pixel its centre falls in, the way a bilinear reduction
places it (:func:`cell_groups`); a reduced pixel's values are taken at its middle photo pixel.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine import VOID

from .raster import BBox, bbox_of

__all__ = ["BAND_VALUES", "Reduction", "cell_counts", "cell_groups"]

BAND_VALUES = 1 << 20   # float values per band when a reduced answer is enlarged back to the photo


def cell_groups(n: int, cells: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``start:stop`` of an axis of ``n`` pixels split over ``cells`` grid cells (a pixel belongs
    to the cell its centre lands in, as the bilinear resize places it): the first pixel of each run
    of pixels sharing a cell (relative to ``start``) and that cell."""
    cell = np.minimum(((np.arange(start, stop) + 0.5) * cells / n).astype(np.int64), cells - 1)
    first = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    return first, cell[first]


def cell_counts(mask: np.ndarray, grid: tuple[int, int], max_cells: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """How many of the mask's pixels fall in each ``grid`` cell, over the mask's bounding box: the
    counts (rows × columns of cells) and the cells' row and column indices; None for an empty mask.
    ``max_cells``: where the box spans more cells, they are taken in square blocks of cells (the
    fewest that keep the count within it), each block's count of pixels listed at its middle cell.

    Which cell a pixel falls in depends on its row and its column apart, so the counts are two
    sums of runs (rows of each cell row, then columns of each cell column): about 15 ms for a
    12-megapixel mask, where listing its pixels and counting them per cell took a third of a second.
    Blocks are summed the same way, as longer runs, without the counts per cell first.
    """
    box = bbox_of(mask)
    if box is None:
        return None
    (H, W), (h, w) = mask.shape, grid
    y0, x0, y1, x1 = box
    row_first, rows = cell_groups(H, h, y0, y1)
    col_first, cols = cell_groups(W, w, x0, x1)
    step = 1 if max_cells is None else max(1, math.ceil(math.sqrt(len(rows) * len(cols) / max_cells)))
    while step > 1 and -(-len(rows) // step) * -(-len(cols) // step) > max_cells:
        step += 1   # a partial block at an edge counts as one
    if step > 1:
        row_first, rows = _blocks(row_first, rows, step)
        col_first, cols = _blocks(col_first, cols, step)
    per_row = _row_sums(mask[y0:y1, x0:x1], row_first)
    return np.add.reduceat(per_row, col_first, axis=1, dtype=np.int64), rows, cols


def _blocks(first: np.ndarray, cells: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of ``step`` cells as one: each block's first pixel and its middle cell."""
    starts = np.arange(0, len(cells), step)
    return first[starts], cells[np.minimum(starts + step // 2, len(cells) - 1)]


def _row_sums(block: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Column sums of each run of rows of a bool array (runs starting at rows ``first``).

    numpy sums runs of bool rows one byte at a time, converting each (60 ms for 12 megapixels);
    eight columns' bytes summed as one 64-bit word give the same bytes when no run is longer than
    255 rows (a byte never carries into its neighbour), eight times faster."""
    r, c = block.shape
    if np.diff(np.r_[first, r]).max() > 255:
        return np.add.reduceat(block, first, axis=0, dtype=np.int64)
    packed = np.zeros((r, -(-c // 8) * 8), dtype=np.uint8)
    packed[:, :c] = block
    return np.add.reduceat(packed.view(np.uint64), first, axis=0).view(np.uint8)[:, :c]


@dataclass(frozen=True)
class Reduction:
    """The crop ``box`` (y0, x0, y1, x1) of an image of ``shape`` (H, W) reduced to ``size`` (h, w)."""
    box: BBox
    shape: tuple[int, int]
    size: tuple[int, int]

    @classmethod
    def fit(cls, box: BBox, shape: tuple[int, int], max_pixels: int) -> Reduction | None:
        """The reduction of ``box`` to at most ``max_pixels`` (same aspect), or None when it fits."""
        y0, x0, y1, x1 = box
        ch, cw = y1 - y0, x1 - x0
        if ch * cw <= max_pixels:
            return None
        s = math.sqrt(max_pixels / (ch * cw))
        return cls(tuple(int(v) for v in box), (int(shape[0]), int(shape[1])),
                   (max(1, min(ch, int(ch * s))), max(1, min(cw, int(cw * s)))))

    @property
    def crop(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.box
        return y1 - y0, x1 - x0

    @property
    def scale(self) -> float:
        """The linear factor of the reduction (for the CRF's spatial widths)."""
        (ch, cw), (h, w) = self.crop, self.size
        return math.sqrt(h * w / (ch * cw))

    def _axis(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        first, _ = cell_groups(self.crop[i], self.size[i], 0, self.crop[i])
        return first, np.diff(np.r_[first, self.crop[i]])   # first crop pixel and count, per reduced pixel

    def middles(self) -> tuple[np.ndarray, np.ndarray]:
        """The image rows and columns of each reduced pixel's middle photo pixel."""
        (rf, rn), (cf, cn) = self._axis(0), self._axis(1)
        return self.box[0] + rf + rn // 2, self.box[1] + cf + cn // 2

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """For each crop row and column, the reduced pixel it falls in."""
        (_, rn), (_, cn) = self._axis(0), self._axis(1)
        return np.repeat(np.arange(self.size[0]), rn), np.repeat(np.arange(self.size[1]), cn)

    def share(self, mask: np.ndarray) -> np.ndarray:
        """h×w float: the share of each reduced pixel that ``mask`` (crop-sized bool) covers."""
        counts = np.zeros(self.size, np.float64)
        got = cell_counts(mask, self.size)
        if got is not None:
            counts[np.ix_(got[1], got[2])] = got[0]
        return counts / np.outer(self._axis(0)[1], self._axis(1)[1])

    def marks(self, scribbles: np.ndarray) -> np.ndarray:
        """h×w uint8 strokes (crop-sized uint8 class per marked pixel, ``VOID`` elsewhere) on the
        reduced grid: a reduced pixel with any marked photo pixel is marked (with the highest class
        among them), so a stroke thinner than a reduced pixel still counts."""
        out = np.full(self.size, VOID, np.uint8)
        marked = scribbles != VOID
        box = bbox_of(marked)
        if box is None:
            return out
        y0, x0, y1, x1 = box
        (ch, cw), (h, w) = self.crop, self.size
        row_first, rows = cell_groups(ch, h, y0, y1)
        col_first, cols = cell_groups(cw, w, x0, x1)
        coded = np.where(marked[y0:y1, x0:x1], scribbles[y0:y1, x0:x1] + 1, 0).astype(np.uint8)   # 0: none
        top = np.maximum.reduceat(np.maximum.reduceat(coded, row_first, axis=0), col_first, axis=1)
        out[np.ix_(rows, cols)] = np.where(top > 0, top - 1, VOID)
        return out

    def image(self, image: np.ndarray) -> np.ndarray:
        """h×w×3 uint8: the crop of ``image`` (H×W×3 uint8) reduced (antialiased bilinear), without
        a copy of the crop."""
        import torch
        import torch.nn.functional as F
        y0, x0, y1, x1 = self.box
        with warnings.catch_warnings():   # a read-only image (Pillow's) is only read here
            warnings.filterwarnings("ignore", message=".*not writable.*")
            src = torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1).unsqueeze(0)
        with torch.inference_mode():
            out = F.interpolate(src, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())

    def probs(self, probs) -> np.ndarray:
        """C×h×w float32: the image's probabilities (C×h'×w', any grid) at each reduced pixel's middle."""
        from engine import sample_at
        rows, cols = self.middles()
        return sample_at(probs, self.shape, rows, cols)

    def enlarged(self, small: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """``small`` (C×h×w float) enlarged bilinearly to the crop, in bands of rows: yields (first
        row, end row, C×rows×crop-width float32), crop rows relative to the box, about
        :data:`BAND_VALUES` values at a time."""
        from engine import crop_at
        ch, cw = self.crop
        step = max(1, BAND_VALUES // (cw * small.shape[0]))
        for r0 in range(0, ch, step):
            r1 = min(ch, r0 + step)
            yield r0, r1, crop_at(small, (ch, cw), (r0, 0, r1, cw))
