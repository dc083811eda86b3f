"""Geometry a simulated person needs to act on a region: where to click, the path a stroke follows
along its skeleton, the order a drag visits points, lengths and segment counts. No Qt."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["interior_point", "length", "nearest_order", "segments", "shoelace", "skeleton_paths"]


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """(row, col) of the region pixel farthest from its border."""
    from scipy import ndimage
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(r), int(c)


def nearest_order(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The points in the order a drag visits them: from the first, always to the nearest left."""
    left, path = list(points[1:]), [points[0]]
    while left:
        i = min(range(len(left)), key=lambda j: math.dist(path[-1], left[j]))
        path.append(left.pop(i))
    return path


def shoelace(contour: np.ndarray) -> float:
    y, x = contour[:, 0], contour[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def length(pts: Sequence[tuple[float, float]]) -> float:
    return float(sum(math.dist(a, b) for a, b in itertools.pairwise(pts)))


def segments(path: list[tuple[int, int]]) -> int:
    """Straight segments a person would draw the path as (Douglas-Peucker at 2 px)."""
    if len(path) < 3:
        return 1
    from skimage.measure import approximate_polygon
    return max(1, len(approximate_polygon(np.array(path, float), tolerance=2.0)) - 1)


def skeleton_paths(region: np.ndarray, min_len: int = 3) -> list[list[tuple[int, int]]]:
    """The region's skeleton as stroke paths ((row, col) lists), longest branches first: walk from an
    end point along unvisited 8-neighbours until stuck, repeat. Spurs shorter than ``min_len`` are
    dropped unless nothing else is left."""
    from skimage.morphology import skeletonize
    skel = skeletonize(region)
    left = {(int(r), int(c)) for r, c in zip(*np.nonzero(skel))}
    if not left:
        return []
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]

    def degree(p):
        return sum((p[0] + dr, p[1] + dc) in left for dr, dc in steps)

    paths = []
    while left:
        start = min(left, key=lambda p: (degree(p), p))
        path, p = [start], start
        left.discard(start)
        while True:
            nxt = next(((p[0] + dr, p[1] + dc) for dr, dc in steps if (p[0] + dr, p[1] + dc) in left), None)
            if nxt is None:
                break
            path.append(nxt)
            left.discard(nxt)
            p = nxt
        paths.append(path)
    paths.sort(key=len, reverse=True)
    return [p for p in paths if len(p) >= min_len] or paths[:1]
