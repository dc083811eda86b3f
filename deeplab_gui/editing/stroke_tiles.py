"""A finished brush stroke's before and after, tile by tile. No Qt.

While painting, the document keeps each piece of the stroke (a few brush radii of it) as the box it
touched, that box's pixels before the piece was painted, and the pixels the brush covered. When the
stroke ends, its undo step is made from these. Over the stroke's whole bounding box that costs the
box: a thin diagonal stroke across a 12-megapixel photo took about 100 ms and 60-90 MiB on the UI
thread (copies, comparisons and compression of 12 million pixels), and a 250-megapixel one
gigabytes. :func:`stroke_blocks` instead yields the stroke tile by tile, only the tiles its pieces
touch, so the cost follows the painted area.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .raster import BBox

__all__ = ["STROKE_TILE", "stroke_blocks"]

STROKE_TILE = 256   # px: a stroke whose box is over four tiles is recorded tile by tile


def _intersect(a: BBox, b: BBox) -> BBox | None:
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _tiles(bbox: BBox, tile: int) -> list[BBox]:
    y0, x0, y1, x1 = bbox
    return [(ty, tx, min(ty + tile, y1), min(tx + tile, x1))
            for ty in range(y0, y1, tile) for tx in range(x0, x1, tile)]


def stroke_blocks(data: np.ndarray, bbox: BBox, saved: list[tuple[BBox, np.ndarray]],
                  foot: list[tuple[BBox, np.ndarray]] | None, tile: int = STROKE_TILE
                  ) -> Iterator[tuple[BBox, np.ndarray, np.ndarray, np.ndarray | None]]:
    """``(box, old, new, covered)`` for each tile of ``bbox`` a piece of the stroke touched (the whole
    ``bbox`` when it is at most four tiles): the labels before the stroke and now (``data``, the
    layer, already painted), and the pixels the brush covered (None when ``foot`` is None).

    ``saved``: the pieces' boxes and their pixels before each was painted, in painting order (the
    earliest holds a pixel's original value, so they are laid newest first). ``foot``: the pieces'
    boxes and the pixels each covered.
    """
    y0, x0, y1, x1 = bbox
    if (y1 - y0) * (x1 - x0) <= 4 * tile * tile:
        boxes = [bbox]
    else:   # tile grid anchored at the box's corner; each piece goes to the tiles it meets
        boxes = _tiles(bbox, tile)
    cols = -(-(x1 - x0) // tile) if len(boxes) > 1 else 1
    saved_at: dict[int, list[int]] = {}
    foot_at: dict[int, list[int]] = {}
    for pieces, at in ((saved, saved_at), (foot or (), foot_at)):
        for i, ((py0, px0, py1, px1), _) in enumerate(pieces):
            if len(boxes) == 1:
                at.setdefault(0, []).append(i)
                continue
            for ty in range((max(py0, y0) - y0) // tile, (min(py1, y1) - 1 - y0) // tile + 1):
                for tx in range((max(px0, x0) - x0) // tile, (min(px1, x1) - 1 - x0) // tile + 1):
                    at.setdefault(ty * cols + tx, []).append(i)
    for k in sorted(set(saved_at) | set(foot_at)):
        box = boxes[k]
        by0, bx0, by1, bx1 = box
        new = data[by0:by1, bx0:bx1].copy()
        old = new.copy()
        for i in reversed(saved_at.get(k, ())):
            piece, block = saved[i]
            cut = _intersect(piece, box)
            if cut is not None:
                cy0, cx0, cy1, cx1 = cut
                old[cy0 - by0:cy1 - by0, cx0 - bx0:cx1 - bx0] = block[cy0 - piece[0]:cy1 - piece[0],
                                                                      cx0 - piece[1]:cx1 - piece[1]]
        covered = None
        if foot is not None:
            covered = np.zeros(new.shape, bool)
            for i in foot_at.get(k, ()):
                piece, inside = foot[i]
                cut = _intersect(piece, box)
                if cut is not None:
                    cy0, cx0, cy1, cx1 = cut
                    covered[cy0 - by0:cy1 - by0, cx0 - bx0:cx1 - bx0] |= inside[cy0 - piece[0]:cy1 - piece[0],
                                                                                cx0 - piece[1]:cx1 - piece[1]]
        yield box, old, new, covered
