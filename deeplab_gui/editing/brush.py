"""Round-brush painting on an H×W uint8 layer, and the CRF-snap scribble layer. No Qt.

:class:`BrushCanvas` holds what the mask document and the scribble layer share: the array, a
read-only view of it, repaint listeners, a version counter and the begin/stroke_to/end stroke protocol.
Coordinates and boxes follow :mod:`deeplab_gui.raster` (``x`` column, ``y`` row, half-open boxes).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from engine import VOID

from .raster import EMPTY_BBOX, BBox, bbox_union, capsule_pieces

__all__ = ["Listener", "BrushCanvas", "ScribbleLayer", "check_label", "check_point"]

Listener = Callable[[BBox], None]


def check_label(label, name: str = "label") -> int:
    """``label`` as an int in 0..255 (numpy ints accepted; bool, float, str rejected) or ValueError."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"{name} must be an int in 0..255, got {label!r}")
    if not 0 <= int(label) <= 255:
        raise ValueError(f"{name} must be in 0..255, got {label}")
    return int(label)


def check_point(x, y) -> tuple[float, float]:
    """(x, y) as finite floats or ValueError."""
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        raise ValueError(f"point must be two numbers, got ({x!r}, {y!r})") from None
    if not (math.isfinite(fx) and math.isfinite(fy)):
        raise ValueError(f"point must be finite, got ({x}, {y})")
    return fx, fy


class BrushCanvas:
    """An H×W uint8 layer painted with a round brush, plus repaint listeners. Base of both layers.

    Painting writes straight into the array (the view reads it to repaint); subclasses decide what a
    finished stroke leaves behind (an undo step, or nothing).
    """

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self._view = data.view()
        self._view.flags.writeable = False   # the outside reads, never writes, the layer
        self._listeners: list[Listener] = []
        self._version = 0
        self._stroke: dict | None = None

    # --- observation ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self._data.shape  # type: ignore[return-value]

    @property
    def version(self) -> int:
        """Increases on every change of the pixels (paint, fill, undo, ...)."""
        return self._version

    @property
    def in_stroke(self) -> bool:
        return self._stroke is not None

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(bbox)`` after each change with the half-open box that changed."""
        if fn not in self._listeners:
            self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _changed(self, bbox: BBox) -> None:
        self._version += 1
        for fn in list(self._listeners):
            fn(bbox)

    def pick(self, x: float, y: float) -> int:
        """The value of the pixel containing (x, y). Raises ValueError outside the image."""
        fx, fy = check_point(x, y)
        c, r = int(math.floor(fx)), int(math.floor(fy))
        h, w = self.shape
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"point ({x}, {y}) is outside the {w}×{h} image")
        return int(self._data[r, c])

    # --- brush ------------------------------------------------------------------------------------
    def begin_stroke(self, label: int, radius: float, *, erase_to: int | None = None) -> None:
        """Start a stroke painting ``label`` (or, when ``erase_to`` is given, an eraser writing
        ``erase_to``, e.g. 255 void or 0 background, whatever the label). ``radius`` in pixels (> 0).
        A stroke still open is finished first."""
        value = check_label(label) if erase_to is None else check_label(erase_to, "erase_to")
        r = float(radius)
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"radius must be a positive number, got {radius!r}")
        self.end_stroke()
        self._stroke = {"value": value, "radius": r, "last": None, "bbox": None, "saved": [],
                        "foot": [] if self._track_footprint else None, "erase": erase_to is not None}

    def stroke_to(self, x: float, y: float) -> BBox:
        """Paint the brush from the previous point to (x, y) (the first call paints a dot).

        Only the segment's bounding box is touched. Points may lie outside the image (clipped).
        Returns the painted box (empty, y0 == y1 or x0 == x1, when the segment misses the image).
        Raises RuntimeError outside a stroke, ValueError for non-finite points.
        """
        st = self._stroke
        if st is None:
            raise RuntimeError("stroke_to() needs begin_stroke() first")
        p = check_point(x, y)
        a = st["last"] if st["last"] is not None else p
        st["last"] = p
        value, painted, changed = st["value"], None, None
        for box, inside in capsule_pieces(self.shape, a, p, st["radius"]):
            y0, x0, y1, x1 = box
            region = self._data[y0:y1, x0:x1]
            painted = bbox_union(painted, box)
            if st["foot"] is not None:
                st["foot"].append((box, inside))   # covered pixels, relabelled or not
            if not (inside & (region != value)).any():
                continue
            st["saved"].append((box, region.copy()))   # old pixels, restored in reverse at the end
            region[inside] = value
            changed = bbox_union(changed, box)
        if changed is not None:
            st["bbox"] = bbox_union(st["bbox"], changed)
            self._changed(changed)
        return painted if painted is not None else EMPTY_BBOX

    def end_stroke(self) -> None:
        """Finish the current stroke (no-op when none is open)."""
        st, self._stroke = self._stroke, None
        if st is not None and (st["bbox"] is not None or st["foot"]):
            self._stroke_done(st["bbox"], st["saved"], st["foot"], erase=st["erase"])

    def cancel_stroke(self) -> BBox | None:
        """Abandon the current stroke (e.g. Escape while dragging): its pixels go back to what they
        were and no history step is left. Returns the restored box (listeners hear it) or None."""
        st, self._stroke = self._stroke, None
        if st is None or st["bbox"] is None:
            return None
        # Blocks were saved before each piece painted; the earliest holds a pixel's original value,
        # so restoring newest first leaves the original everywhere.
        for (y0, x0, y1, x1), block in reversed(st["saved"]):
            self._data[y0:y1, x0:x1] = block
        self._changed(st["bbox"])
        return st["bbox"]

    # Subclasses that set this get every painted piece's (box, inside) in ``_stroke_done``'s ``foot``.
    _track_footprint = False

    def _stroke_done(self, bbox: BBox | None, saved: list[tuple[BBox, np.ndarray]],
                     foot: list[tuple[BBox, np.ndarray]] | None = None, erase: bool = False) -> None:
        """Hook: a stroke changed pixels within ``bbox`` (None: none); ``saved`` holds the
        pre-stroke blocks, ``foot`` the painted pieces when tracked; ``erase``: it was an eraser's."""


class ScribbleLayer(BrushCanvas):
    """Strokes for the CRF-snap brush: H×W uint8 class per marked pixel, 255 = unmarked.

    Painted like the document (``begin_stroke``/``stroke_to``/``end_stroke``; ``erase_to=255`` rubs
    marks out) but with no history: the app feeds :attr:`scribbles` to
    ``engine.crf.refine_with_scribbles`` in a worker and applies the result to the document.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        h, w = (int(s) for s in shape)
        if h <= 0 or w <= 0:
            raise ValueError(f"shape must be positive (H, W), got {shape}")
        super().__init__(np.full((h, w), VOID, dtype=np.uint8))
        self._bbox: BBox | None = None

    @property
    def scribbles(self) -> np.ndarray:
        """Read-only H×W uint8 view: class index where marked, 255 elsewhere."""
        return self._view

    @property
    def bbox(self) -> BBox | None:
        """A box holding every mark (may be loose after erasing), None when never marked."""
        return self._bbox

    def stroke_to(self, x: float, y: float) -> BBox:
        box = super().stroke_to(x, y)
        if self._stroke is not None and self._stroke["value"] != VOID:
            self._bbox = bbox_union(self._bbox, box)
        return box

    def _stroke_done(self, bbox, saved, foot=None, erase=False) -> None:
        pass   # nothing to keep: scribbles are throw-away hints

    def any(self) -> bool:
        """True when at least one pixel is marked."""
        if self._bbox is None:
            return False
        y0, x0, y1, x1 = self._bbox
        return bool((self._data[y0:y1, x0:x1] != VOID).any())

    def clear(self) -> None:
        """Unmark everything (listeners hear the box that held marks)."""
        self.end_stroke()
        box, self._bbox = self._bbox, None
        if box is not None:
            y0, x0, y1, x1 = box
            self._data[y0:y1, x0:x1] = VOID
            self._changed(box)

    def near(self, margin: int) -> np.ndarray:
        """H×W bool: pixels within ``margin`` pixels (square neighbourhood) of a mark.

        The ``where`` to pass to :meth:`MaskDocument.apply_labels` so a CRF-snap only changes the
        neighbourhood of the strokes. O(H·W) with integral images; call it from the worker.
        """
        m = int(margin)
        if m < 0:
            raise ValueError("margin must be >= 0")
        marked = self._data != VOID
        if m == 0 or not marked.any():
            return marked
        h, w = self.shape
        # Box dilation = "any marked pixel in the (2m+1)² window": a 2-D prefix-sum window count > 0.
        integral = np.zeros((h + 1, w + 1), dtype=np.int32)
        np.cumsum(np.cumsum(marked, axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
        ys, xs = np.arange(h), np.arange(w)
        r0, r1 = np.clip(ys - m, 0, h), np.clip(ys + m + 1, 0, h)
        c0, c1 = np.clip(xs - m, 0, w), np.clip(xs + m + 1, 0, w)
        count = (integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0])
        return count > 0
