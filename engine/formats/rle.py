"""COCO run-length encoding and polygon rasterisation, without pycocotools.

A COCO RLE describes one binary H×W mask in column-major (Fortran) order as alternating run lengths,
always starting with a run of 0s (of length 0 when the first pixel is set).  ``counts`` is either a
list of ints ("uncompressed", as COCO writes for crowd annotations) or a string: each count, from the
fourth on taken as the difference to the count two before, written LEB128-like in 6-bit groups as the
characters 48..111 -- exactly what pycocotools' ``encode`` produces, so files we write byte-compare
with files it writes.

Polygons are rasterised with pycocotools' own rule (``frPyObjects`` + ``decode``): the outline is
walked on a grid 5× finer, and in each pixel column the pixels between consecutive crossings are set
(even-odd).  The port below is exact, quirks included (a vertex below the image toggles the top of the
next column; a crossing at ``y = h`` clips), so a COCO file's polygons decode here to the masks
pycocotools gives; the tests compare both on many random polygons and require equality.  Several
polygons of one annotation are merged as their union, as ``COCO.annToRLE`` does.

``area`` and ``bbox`` are what pycocotools' ``area``/``toBbox`` return: the pixel count and the tight
box ``[x, y, width, height]`` of the set pixels (all zero for an empty mask).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["RLEError", "encode", "decode", "decode_counts", "counts_to_string", "string_to_counts",
           "polygon_mask", "polygons_mask", "area", "bbox"]


class RLEError(ValueError):
    """A segmentation that cannot be decoded; the message says why in words (no file name)."""


# ---------------------------------------------------------------------------- counts <-> mask
def _runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' compressed form of a list of run lengths."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end on x == -1
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def string_to_counts(s: str | bytes) -> list[int]:
    """Run lengths from pycocotools' compressed string; :class:`RLEError` if it is malformed."""
    if isinstance(s, bytes):
        try:
            s = s.decode("ascii")
        except UnicodeDecodeError:
            raise RLEError("compressed RLE counts hold characters outside 48..111") from None
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise RLEError("compressed RLE counts end in the middle of a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise RLEError(f"compressed RLE counts hold the character {s[p]!r} (only 48..111 are used)")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> dict:
    """Binary H×W mask -> ``{"size": [h, w], "counts": str}`` as pycocotools' ``encode`` (decoded to str)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {m.shape}")
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts_to_string(_runs(m))}


def decode_counts(counts: Sequence[int], h: int, w: int) -> np.ndarray:
    """Run lengths (starting with 0s) -> H×W bool; :class:`RLEError` unless they cover exactly h*w pixels."""
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 1:
        raise RLEError("RLE counts must be a flat list of run lengths")
    if c.size and c.min() < 0:
        raise RLEError("RLE counts hold a negative run length")
    total = int(c.sum())
    if total != h * w:
        raise RLEError(f"RLE counts cover {total} pixels but the size {w}x{h} has {h * w}")
    values = np.zeros(c.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, c)
    return flat.reshape((w, h)).T.copy()


def decode(rle: dict, h: int | None = None, w: int | None = None) -> np.ndarray:
    """``{"size": [h, w], "counts": str | bytes | list}`` -> H×W bool.

    ``h``/``w``, when given, must match ``size`` (an RLE made for another image size is refused).
    """
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise RLEError("an RLE segmentation needs 'size' and 'counts'")
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
        raise RLEError(f"RLE 'size' must be [height, width], got {size!r}")
    rh, rw = size
    if h is not None and w is not None and (rh, rw) != (h, w):
        raise RLEError(f"RLE size is {rw}x{rh} but the image is {w}x{h}")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    elif isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise RLEError("uncompressed RLE counts must be whole numbers")
    else:
        raise RLEError("RLE 'counts' must be a string or a list of numbers")
    return decode_counts(counts, rh, rw)


# ---------------------------------------------------------------------------- polygons
def polygon_mask(xy: Sequence[float], h: int, w: int) -> np.ndarray:
    """One polygon ``[x0, y0, x1, y1, ...]`` -> H×W bool, pixel for pixel as pycocotools rasterises it."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1)
    if pts.size % 2 or not np.all(np.isfinite(pts)):
        raise RLEError("a polygon must be an even number of finite coordinates")
    k = pts.size // 2
    out = np.zeros((h, w), dtype=bool)
    if k == 0 or h == 0 or w == 0:
        return out
    scale = 5.0
    # C's (int)(v + .5) truncates toward zero, negative coordinates included.
    x = np.trunc(scale * pts[0::2] + 0.5).astype(np.int64)
    y = np.trunc(scale * pts[1::2] + 0.5).astype(np.int64)
    x = np.append(x, x[0])
    y = np.append(y, y[0])
    us, vs = [], []
    for j in range(k):  # every point of the fine-grid outline, segment by segment
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            d = np.arange(dx + 1)
            t = dx - d if flip else d
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            d = np.arange(dy + 1)
            t = dy - d if flip else d
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u = np.concatenate(us)
    v = np.concatenate(vs)
    # Where the outline crosses a pixel column's centre line, that column toggles at the next row.
    ch = np.flatnonzero(u[1:] != u[:-1]) + 1
    uj, up = u[ch], u[ch - 1]
    vj, vp = v[ch], v[ch - 1]
    xd = (np.where(uj < up, uj, uj - 1) + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = (np.where(vj < vp, vj, vp) + 0.5) / scale - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    pos = xd[keep].astype(np.int64) * h + yd[keep].astype(np.int64)
    toggles = np.zeros(h * w + 1, dtype=np.int64)
    np.add.at(toggles, pos, 1)
    flat = (np.cumsum(toggles)[: h * w] & 1).astype(bool)
    return flat.reshape((w, h)).T.copy()


def polygons_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """The union of several polygons (one COCO annotation's ``segmentation`` list) -> H×W bool."""
    out = np.zeros((h, w), dtype=bool)
    for poly in polygons:
        out |= polygon_mask(poly, h, w)
    return out


# ---------------------------------------------------------------------------- measures
def area(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def bbox(mask: np.ndarray) -> list[float]:
    m = np.asarray(mask, dtype=bool)
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    rows = np.flatnonzero(m.any(axis=1))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
