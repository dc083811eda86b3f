"""labelme shapes <-> masks: rasterising shapes as labelme does, and polygons from a mask.

Rasterising follows labelme's ``shape_to_mask`` (Pillow's ImageDraw, outline and fill, so a point list
means the same pixels here as in labelme's own ``labelme_json_to_dataset``): polygons, rectangles
(two corners; four or more points are drawn as a polygon, as X-AnyLabeling writes rotated boxes),
circles (centre and a point on the rim) and masks (``points`` is the box's top-left and bottom-right
pixel, ``mask`` a base64 PNG of that box).  Points, lines and line strips cover no area and are not
drawn; other shape types (X-AnyLabeling's ``rotation``, ``quadrilateral``, ...) are drawn as polygons
when they carry three or more points.

Polygons from a mask (:func:`mask_shapes`): each 8-connected region of one class becomes a polygon
through the centres of its boundary pixels (traced with marching squares, vertices snapped to the
pixel inside, straight runs merged), and each hole in it a polygon marked as a hole (``flags.hole``
true and ``description`` "hole") that the importer draws as void.  Regions go out largest first, so a
region inside another one's hole is drawn after that hole.  Pillow's polygon rule does not always give
back the traced pixels exactly (thin diagonal parts); the shapes are therefore drawn back here and
every pixel that comes out differently is added as a ``mask`` shape (label ``__ignore__`` for void),
so that importing the file gives the mask exactly.  ``simplify`` > 0 thins the polygons with
Douglas-Peucker at that tolerance in pixels and skips that correction (the polygons then are approximate).
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from ..labels import VOID

__all__ = ["IGNORE_LABEL", "AREA_TYPES", "NO_AREA_TYPES", "DrawError", "shape_region", "is_hole",
           "mask_shapes", "encode_mask_png", "decode_mask_png"]

IGNORE_LABEL = "__ignore__"  # labelme's examples' name for void
AREA_TYPES = ("polygon", "rectangle", "circle", "mask")
NO_AREA_TYPES = ("point", "points", "line", "linestrip")
_OUTSIDE = 1.0  # px a point may lie beyond the image (rounding in other tools); more means a wrong image
_EIGHT = np.ones((3, 3), bool)


class DrawError(ValueError):
    """A shape that cannot be drawn; the message says why (the caller adds the file and shape)."""


def is_hole(shape: dict) -> bool:
    flags = shape.get("flags")
    desc = shape.get("description")
    return bool((isinstance(flags, dict) and flags.get("hole") is True)
                or (isinstance(desc, str) and desc.strip().lower() == "hole"))


def decode_mask_png(text: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=False))) as im:
            im.load()
            return np.asarray(im.convert("L")) > 0 if im.mode not in ("1", "L", "P") else np.asarray(im) > 0
    except Exception:
        raise DrawError("its mask is no base64 PNG") from None


def encode_mask_png(region: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(region, dtype=bool)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _points(shape: dict) -> np.ndarray:
    pts = shape.get("points")
    if not isinstance(pts, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
            for p in pts):
        raise DrawError("its points are not a list of [x, y] numbers")
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def shape_region(shape: dict, h: int, w: int) -> np.ndarray | None:
    """The H×W bool pixels ``shape`` covers as labelme draws it; None for a shape without area."""
    kind = shape.get("shape_type") or "polygon"
    if not isinstance(kind, str):
        raise DrawError(f"shape_type {kind!r} is not a name")
    if kind in NO_AREA_TYPES:
        return None
    pts = _points(shape)
    if kind != "mask" and len(pts) and (pts.min() < -_OUTSIDE or pts[:, 0].max() > w - 1 + _OUTSIDE
                                        or pts[:, 1].max() > h - 1 + _OUTSIDE):
        raise DrawError(f"its points reach outside the {w}x{h} image (x {pts[:, 0].min():g}..{pts[:, 0].max():g}, "
                        f"y {pts[:, 1].min():g}..{pts[:, 1].max():g})")
    if kind == "mask":
        return _mask_region(shape, pts, h, w)
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    xy = [tuple(p) for p in pts.tolist()]
    if kind == "circle":
        if len(xy) != 2:
            raise DrawError(f"a circle needs 2 points (centre, rim), it has {len(xy)}")
        (cx, cy), (px, py) = xy
        d = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind == "rectangle" and len(xy) == 2:
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    else:  # polygon, a rectangle given by its corners, or another tool's shape carrying an outline
        if len(xy) < 3:
            if kind in ("polygon", "rectangle"):
                raise DrawError(f"a {kind} needs at least 3 points, it has {len(xy)}")
            return None
        draw.polygon(xy, outline=1, fill=1)
    return np.asarray(im, dtype=bool)


def _mask_region(shape: dict, pts: np.ndarray, h: int, w: int) -> np.ndarray:
    if len(pts) != 2:
        raise DrawError(f"a mask shape needs 2 points (its box), it has {len(pts)}")
    data = shape.get("mask")
    if not isinstance(data, str):
        raise DrawError("a mask shape has no mask (base64 PNG)")
    box = decode_mask_png(data)
    (x1, y1), (x2, y2) = pts.astype(int).tolist()
    bh, bw = box.shape
    if (x2 - x1 + 1, y2 - y1 + 1) != (bw, bh):
        raise DrawError(f"its mask is {bw}x{bh} but its box ({x1}, {y1})-({x2}, {y2}) is "
                        f"{x2 - x1 + 1}x{y2 - y1 + 1}")
    if x1 < 0 or y1 < 0 or x2 >= w or y2 >= h:
        raise DrawError(f"its mask's box ({x1}, {y1})-({x2}, {y2}) reaches outside the {w}x{h} image")
    out = np.zeros((h, w), bool)
    out[y1:y2 + 1, x1:x2 + 1] = box
    return out


# ---------------------------------------------------------------------------- mask -> shapes
@dataclass
class _Region:
    value: int
    filled_area: int
    order: tuple
    outer: np.ndarray               # N×2 (x, y)
    holes: list[np.ndarray]


def _trace(region: np.ndarray, connected: str = "high") -> np.ndarray:
    """Boundary pixel centres (x, y) in order around a hole-free ``region`` (padded by 1); ``connected``:
    "high" for an 8-connected region, "low" for a 4-connected one (a hole)."""
    contours = find_contours(region.astype(np.float32), 0.5, fully_connected=connected)
    c = max(contours, key=len)
    r, k = c[:, 0], c[:, 1]
    r_half = r != np.round(r)
    lo_r, hi_r = np.floor(r).astype(int), np.ceil(r).astype(int)
    lo_c, hi_c = np.floor(k).astype(int), np.ceil(k).astype(int)
    rr = np.where(r_half, np.where(region[lo_r, np.round(k).astype(int)], lo_r, hi_r), np.round(r).astype(int))
    cc = np.where(~r_half, np.where(region[np.round(r).astype(int), lo_c], lo_c, hi_c), np.round(k).astype(int))
    pts = np.stack([cc, rr], axis=1)
    keep = np.ones(len(pts), bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(pts) > 2:  # drop a vertex that continues its neighbours' straight run
        step_in = pts - np.roll(pts, 1, axis=0)
        step_out = np.roll(pts, -1, axis=0) - pts
        pts = pts[np.any(step_in != step_out, axis=1)]
    return pts


def _closed(pts: np.ndarray) -> np.ndarray:
    if len(pts) >= 3:
        return pts
    return np.concatenate([pts, pts[::-1], pts])[:3]  # a dot or a stroke still needs 3 points in labelme


def _regions(mask: np.ndarray, simplify: float) -> list[_Region]:
    out: list[_Region] = []
    for value in np.unique(mask).tolist():
        if value == VOID:
            continue
        lab, _ = ndimage.label(mask == value, structure=_EIGHT)
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            comp = np.pad(lab[sl] == i, 1)
            filled = ndimage.binary_fill_holes(comp)  # background 4-connected, region 8-connected
            offset = np.array([sl[1].start - 1, sl[0].start - 1])
            outer = _trace(filled) + offset
            holes = []
            hl, hn = ndimage.label(filled & ~comp)
            for j in range(1, hn + 1):
                # A hole is 4-connected: what it encloses is found with 8-connected background.
                holes.append(_trace(ndimage.binary_fill_holes(hl == j, structure=_EIGHT), "low") + offset)
            if simplify > 0:
                outer = approximate_polygon(outer, simplify).round().astype(int)
                holes = [approximate_polygon(hp, simplify).round().astype(int) for hp in holes]
            out.append(_Region(value, int(filled.sum()), (sl[0].start, sl[1].start, value),
                               outer, holes))
    out.sort(key=lambda r: (-r.filled_area, r.order))
    return out


def _shape(label: str, pts: np.ndarray, group: int | None, hole: bool = False) -> dict:
    return {"label": label, "points": [[float(x), float(y)] for x, y in _closed(pts).tolist()],
            "group_id": group, "description": "hole" if hole else "", "shape_type": "polygon",
            "flags": {"hole": True} if hole else {}, "mask": None}


def draw_shapes(shapes: Sequence[dict], h: int, w: int, to_value: dict[str, int]) -> np.ndarray:
    """Draw shapes in order (holes void) into an H×W uint8 mask starting void; labels via ``to_value``."""
    out = np.full((h, w), VOID, np.uint8)
    for shape in shapes:
        region = shape_region(shape, h, w)
        if region is not None:
            out[region] = VOID if is_hole(shape) else to_value[shape["label"]]
    return out


def mask_shapes(mask: np.ndarray, names: Sequence[str], *, simplify: float = 0.0) -> list[dict]:
    """labelme shapes (polygons, holes, and exact corrections) that draw back to ``mask``."""
    m = np.asarray(mask, dtype=np.uint8)
    h, w = m.shape
    shapes: list[dict] = []
    for g, reg in enumerate(_regions(m, simplify)):
        group = g + 1 if reg.holes else None
        shapes.append(_shape(names[reg.value], reg.outer, group))
        shapes += [_shape(names[reg.value], hp, group, hole=True) for hp in reg.holes]
    if simplify > 0:
        return shapes
    to_value = {n: i for i, n in enumerate(names)}
    drawn = draw_shapes(shapes, h, w, to_value)
    for value in np.unique(m[drawn != m]).tolist():
        fix = (drawn != m) & (m == value)
        ys, xs = np.nonzero(fix)
        y1, y2, x1, x2 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        shapes.append({"label": IGNORE_LABEL if value == VOID else names[value],
                       "points": [[float(x1), float(y1)], [float(x2), float(y2)]], "group_id": None,
                       "description": "", "shape_type": "mask", "flags": {},
                       "mask": encode_mask_png(fix[y1:y2 + 1, x1:x2 + 1])})
    return shapes
