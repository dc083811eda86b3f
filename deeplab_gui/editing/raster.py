"""Rasterisation for the mask document: round brush segments, filled polygons, flood-fill regions.

Plain numpy, no Qt, so the editing logic is testable without a display and runs in any thread.

Coordinates: ``x`` is the column and ``y`` the row, in image pixels; pixel ``(row, col)`` covers the
square ``[col, col+1) × [row, row+1)``, so its centre is ``(col + 0.5, row + 0.5)`` (the convention of
a QGraphicsView scene with the image item at the origin). A shape covers the pixels whose centres it
contains. Bounding boxes are half-open ``(y0, x0, y1, x1)`` tuples of ints, clipped to the image.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["BBox", "EMPTY_BBOX", "bbox_union", "bbox_of", "bbox_is_empty",
           "capsule_pieces", "capsule_mask", "polygon_mask", "flood_region"]

BBox = tuple[int, int, int, int]
EMPTY_BBOX: BBox = (0, 0, 0, 0)

# A long segment's bounding box is mostly empty (a diagonal 1000-px drag with a 10-px brush spans 10^6
# pixels but covers 2·10^4), so segments longer than this many radii are cut into pieces, each tested
# against its own box: the work stays proportional to the area actually painted.
_PIECE_RADII = 4.0
_MIN_PIECE = 32.0
TIE_SLACK = 1e-3   # added to r² in the brush's distance test (see capsule_mask)
# Cells of a polygon's rows rasterised together: bounds the (rows × edges) crossing table and the
# (rows × box width) winding sums (a lasso around most of a 12-megapixel photo took 200 MiB at once).
_POLY_CELLS = 1 << 21


def bbox_is_empty(b: BBox | None) -> bool:
    return b is None or b[0] >= b[2] or b[1] >= b[3]


def bbox_union(a: BBox | None, b: BBox | None) -> BBox | None:
    """Smallest box holding both; empty boxes and None are ignored (None when both are empty)."""
    if bbox_is_empty(a):
        return None if bbox_is_empty(b) else b
    if bbox_is_empty(b):
        return a
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def bbox_of(flags: np.ndarray, offset: tuple[int, int] = (0, 0)) -> BBox | None:
    """Tight half-open box of the True pixels of a 2-D bool array (None when none), shifted by offset."""
    rows = np.flatnonzero(flags.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(flags[rows[0]:rows[-1] + 1].any(axis=0))
    oy, ox = offset
    return (oy + int(rows[0]), ox + int(cols[0]), oy + int(rows[-1]) + 1, ox + int(cols[-1]) + 1)


def _clip_box(y0: float, x0: float, y1: float, x1: float, shape: tuple[int, int]) -> BBox:
    h, w = shape
    by0 = min(max(int(math.floor(y0)), 0), h)
    bx0 = min(max(int(math.floor(x0)), 0), w)
    by1 = min(max(int(math.ceil(y1)), by0), h)
    bx1 = min(max(int(math.ceil(x1)), bx0), w)
    return (by0, bx0, by1, bx1)


def capsule_mask(shape: tuple[int, int], a: tuple[float, float], b: tuple[float, float],
                 radius: float) -> tuple[BBox, np.ndarray]:
    """Pixels whose centres lie within ``radius`` of the segment a→b (points as (x, y)).

    The pixel containing each end point is always included, so a tiny brush still leaves a mark under
    the cursor. Returns ``(bbox, inside)``: the clipped box and an ``inside`` bool array of its size
    (possibly 0-sized when the capsule misses the image). Cost: O(box area); no full-image work.
    """
    (ax, ay), (bx, by) = a, b
    box = _clip_box(min(ay, by) - radius, min(ax, bx) - radius,
                    max(ay, by) + radius + 1, max(ax, bx) + radius + 1, shape)
    y0, x0, y1, x1 = box
    if y0 >= y1 or x0 >= x1:
        return box, np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
    # float32 is exact enough for pixel distances and halves the memory traffic of float64.
    u = (np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - ax))[None, :]
    v = (np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - ay))[:, None]
    dx, dy = np.float32(bx - ax), np.float32(by - ay)
    l2 = float(dx * dx + dy * dy)
    # Centres exactly at distance r are in; the slack keeps float32 rounding from deciding such ties.
    r2 = np.float32(radius * radius + TIE_SLACK)
    if l2 < 1e-12:
        inside = u * u + v * v <= r2
    else:
        t = np.clip((u * dx + v * dy) * np.float32(1.0 / l2), 0.0, 1.0)
        ex = u - t * dx
        ey = v - t * dy
        inside = ex * ex + ey * ey <= r2
    for px, py in ((ax, ay), (bx, by)):
        c, r = int(math.floor(px)) - x0, int(math.floor(py)) - y0
        if 0 <= r < inside.shape[0] and 0 <= c < inside.shape[1]:
            inside[r, c] = True
    return box, inside


def capsule_pieces(shape: tuple[int, int], a: tuple[float, float], b: tuple[float, float],
                   radius: float):
    """Yield ``(bbox, inside)`` for a segment cut into pieces of at most a few radii (see _PIECE_RADII).

    The union of the pieces equals :func:`capsule_mask` of the whole segment (a capsule is the union
    of the capsules of its sub-segments); only non-empty pieces are yielded.
    """
    (ax, ay), (bx, by) = a, b
    length = math.hypot(bx - ax, by - ay)
    n = max(1, int(math.ceil(length / max(_PIECE_RADII * radius, _MIN_PIECE))))
    for i in range(n):
        t0, t1 = i / n, (i + 1) / n
        pa = (ax + (bx - ax) * t0, ay + (by - ay) * t0)
        pb = (ax + (bx - ax) * t1, ay + (by - ay) * t1) if i + 1 < n else (bx, by)
        box, inside = capsule_mask(shape, pa, pb, radius)
        if inside.size:
            yield box, inside


def polygon_mask(shape: tuple[int, int], points: Sequence[tuple[float, float]]
                 ) -> tuple[BBox, np.ndarray] | None:
    """Fill a polygon (vertices as (x, y), implicitly closed) by the non-zero winding rule.

    Non-zero rather than even-odd so that a lasso crossing or touching itself fills every enclosed
    part, as a person expects. Pixels are in when their centre is (a centre exactly on a left edge is
    in, on a right edge out: shared edges of adjacent polygons cover each pixel once).
    Returns ``(bbox, inside)`` restricted to the clipped bounding box, or None when nothing is covered.
    Raises ValueError for fewer than 3 points or non-finite coordinates.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 3:
        raise ValueError(f"a polygon needs at least 3 (x, y) points, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("polygon points must be finite")
    h, w = shape
    box = _clip_box(pts[:, 1].min(), pts[:, 0].min(), pts[:, 1].max() + 1, pts[:, 0].max() + 1, shape)
    y0, x0, y1, x1 = box
    if y0 >= y1 or x0 >= x1:
        return None
    xa, ya = pts[:, 0], pts[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    keep = ya != yb                      # horizontal edges never cross a scanline
    xa, ya, xb, yb = xa[keep], ya[keep], xb[keep], yb[keep]
    direction = np.where(yb > ya, 1, -1).astype(np.int32)
    slope = (xb - xa) / np.where(keep[keep], yb - ya, 1.0)
    bw = x1 - x0
    inside = np.zeros((y1 - y0, bw), dtype=bool)
    step = max(1, _POLY_CELLS // max(1, xa.size, bw + 1))   # bounds the crossings and the row sums alike
    for r0 in range(y0, y1, step):
        r1 = min(r0 + step, y1)
        yc = (np.arange(r0, r1, dtype=np.float64) + 0.5)[:, None]
        crosses = (ya[None, :] <= yc) != (yb[None, :] <= yc)
        rows, edges = np.nonzero(crosses)
        xc = xa[edges] + (yc[rows, 0] - ya[edges]) * slope[edges]
        # First pixel whose centre is right of the crossing (a centre on the crossing counts as right):
        # the winding number changes there; a prefix sum along the row gives it for every pixel.
        col = np.clip(np.ceil(xc - 0.5).astype(np.int64) - x0, 0, bw)
        acc = np.zeros((r1 - r0, bw + 1), dtype=np.int32)
        np.add.at(acc, (rows, col), direction[edges])
        inside[r0 - y0:r1 - y0] = np.cumsum(acc[:, :bw], axis=1, dtype=np.int32) != 0
    tight = bbox_of(inside, (y0, x0))
    if tight is None:
        return None
    ty0, tx0, ty1, tx1 = tight
    return tight, inside[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0]


_RUN_BLOCK = 64   # rows whose runs are found in one vectorised pass (amortises numpy call overhead)


def _block_runs(mask: np.ndarray, r0: int, value: int) -> list[tuple[list[int], list[int]]]:
    """Runs of ``value`` in rows r0 .. r0+_RUN_BLOCK: per row, start and end (exclusive) columns."""
    block = mask[r0:r0 + _RUN_BLOCK]
    n, w = block.shape
    eq = np.zeros((n, w + 2), dtype=bool)
    np.equal(block, value, out=eq[:, 1:-1])
    rows, cols = np.nonzero(eq[:, 1:] != eq[:, :-1])
    # Transitions alternate start, end within each row; split them per row as Python lists because
    # the search below uses bisect, far cheaper than numpy calls on a handful of numbers.
    cuts = np.searchsorted(rows, np.arange(n + 1))
    cols = cols.tolist()
    out = []
    for i in range(n):
        c = cols[cuts[i]:cuts[i + 1]]
        out.append((c[0::2], c[1::2]))
    return out


def flood_region(mask: np.ndarray, x: int, y: int) -> tuple[BBox, np.ndarray]:
    """The 4-connected region of equal label containing pixel (row y, column x).

    Scanline search over runs: rows are compared in vectorised blocks, and Python only loops over the
    runs of the region itself (not its pixels). Returns ``(bbox, inside)``, ``inside`` restricted to
    the region's tight box.
    """
    h, w = mask.shape
    value = mask[y, x]
    runs: dict[int, tuple[list[int], list[int]]] = {}
    seen: set[tuple[int, int]] = set()
    found: list[tuple[int, int, int]] = []   # (row, start, end)

    def runs_of(r: int) -> tuple[list[int], list[int]]:
        if r not in runs:
            b0 = r - r % _RUN_BLOCK
            for i, rr in enumerate(_block_runs(mask, b0, value)):
                runs[b0 + i] = rr
        return runs[r]

    starts, ends = runs_of(y)
    k = bisect.bisect_right(ends, x)
    stack = [(y, k)]
    seen.add((y, k))
    while stack:
        r, k = stack.pop()
        s, e = runs[r][0][k], runs[r][1][k]
        found.append((r, s, e))
        for nr in (r - 1, r + 1):
            if not 0 <= nr < h:
                continue
            ns, ne = runs_of(nr)
            # Runs of the next row overlapping [s, e): those ending after s and starting before e.
            for j in range(bisect.bisect_right(ne, s), bisect.bisect_left(ns, e)):
                if (nr, j) not in seen:
                    seen.add((nr, j))
                    stack.append((nr, j))
    arr = np.array(found, dtype=np.int64)
    by0, by1 = int(arr[:, 0].min()), int(arr[:, 0].max()) + 1
    bx0, bx1 = int(arr[:, 1].min()), int(arr[:, 2].max())
    inside = np.zeros((by1 - by0, bx1 - bx0), dtype=bool)
    for r, s, e in found:   # one slice per run: cheaper than any full-box vectorised pass
        inside[r - by0, s - bx0:e - bx0] = True
    return (by0, bx0, by1, bx1), inside
