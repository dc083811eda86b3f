"""Region tools: the superpixel brush and the weight-free CRF click (the click-model tool is in
:mod:`.click_tool`).

Both do their slow part (segmenting the image, the CRF) through the target's task runner and show
the result as a preview through the view; the UI thread only does numpy on a region's box.  Work is
queued one at a time with the newest request replacing an older waiting one (:class:`LatestQueue`),
so quick clicks or size steps never pile up workers.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, Qt

from ...editing.click import CRF_CLICK_DESCRIPTION, accept_region, crf_click_region
from ...editing.raster import bbox_of, capsule_mask
from ...editing.superpixels import SUPERPIXEL_DESCRIPTION, SuperpixelParams, Superpixels, segment
from .tool_base import Tool
from .toolview import RegionTarget

__all__ = ["CRFClickTool", "LatestQueue", "SuperpixelTool", "class_look", "show_mask"]

ACCEPT_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space)
BORDER_RGBA = (255, 255, 255, 140)   # superpixel borders: light, half transparent over any picture


class LatestQueue:
    """One job in flight; a job submitted meanwhile waits, and a newer one replaces it."""

    def __init__(self) -> None:
        self.busy = False
        self.pending: Callable[[], Any] | None = None

    def submit(self, start: Callable[[], Any]) -> None:
        """``start()`` launches the job; its completion (result or error) must call :meth:`done`."""
        if self.busy:
            self.pending = start
            return
        self.busy = True
        try:
            start()
        except Exception:
            self.busy = False
            raise

    def done(self) -> None:
        self.busy = False
        nxt, self.pending = self.pending, None
        if nxt is not None:
            self.submit(nxt)

    def drop_pending(self) -> None:
        self.pending = None


def class_look(target: Any, label: int) -> tuple[tuple[int, int, int, int], str]:
    """The preview colour (RGBA) and name of class ``label``."""
    colors, names = target.class_colors, getattr(target, "class_names", [])
    color = (*colors[label], 220) if 0 <= label < len(colors) else (255, 255, 255, 220)
    name = names[label] if 0 <= label < len(names) else f"class {label}"
    return color, name


def show_mask(view: Any, target: Any, mask: np.ndarray, label: int, text: str | None = None) -> bool:
    """Show the bool ``mask`` as the proposed region of class ``label``; False when it is empty.
    The mask covers the whole image: H×W, or a reduced size (a large photo's click candidate),
    drawn stretched over the image."""
    box = bbox_of(mask)
    if box is None:
        view.clear_region()
        return False
    y0, x0, y1, x1 = box
    color, name = class_look(target, label)
    doc = getattr(target, "document", None)
    h, w = doc.shape if doc is not None else mask.shape
    sy, sx = h / mask.shape[0], w / mask.shape[1]
    view.show_region(mask[y0:y1, x0:x1], (x0 * sx, y0 * sy), color, name if text is None else text,
                     scale=(sy, sx))
    return True


def _borders(seg: np.ndarray) -> np.ndarray:
    """H×W×4 RGBA: BORDER_RGBA where a pixel's right or lower neighbour is another superpixel."""
    edge = np.zeros(seg.shape, bool)
    edge[:, :-1] |= seg[:, 1:] != seg[:, :-1]
    edge[:-1, :] |= seg[1:, :] != seg[:-1, :]
    rgba = np.zeros((*seg.shape, 4), np.uint8)
    rgba[edge] = BORDER_RGBA
    return rgba


def _segment(image: np.ndarray, size: int) -> tuple[Superpixels, list, np.ndarray]:
    """Superpixels of ``image``, each one's box in image pixels and their borders' overlay (on the
    grid they were segmented at, drawn stretched over the image); for a worker."""
    sp = segment(image, SuperpixelParams(size=size))
    return sp, sp.boxes(), _borders(sp.seg)


class SuperpixelTool(Tool):
    """Paints whole superpixels: a click paints the one under the pointer, a drag every one it
    crosses (one undo step per drag).  ``size`` is the granularity, a superpixel's typical side in
    pixels ([ and ] change it); the image is segmented in the background, per image and size."""

    name = "superpixel"
    sized = True
    cursor = Qt.CursorShape.PointingHandCursor
    target: RegionTarget | None
    cache_entries = 2       # (image, size) segmentations kept: a full-size one is tens of megabytes
    _size = 16
    _active = False

    def __init__(self) -> None:
        super().__init__()
        self._size = SuperpixelParams().size   # the base set a brush radius
        self._cache: OrderedDict[tuple, tuple[Superpixels, list, np.ndarray]] = OrderedDict()
        self._queue = LatestQueue()
        self._asked: tuple | None = None     # the segmentation last asked for
        self._active = False
        self._ids: set[int] | None = None    # superpixels touched by the drag in progress
        self._last: tuple[float, float] | None = None

    @property
    def size(self) -> float:
        return float(self._size)

    @size.setter
    def size(self, value: float) -> None:
        size = int(min(max(round(float(value)), 2), 512))
        if size != self._size:
            self._size = size
            if self._active:
                self.ensure()

    # -------------------------------------------------------------- segmentation
    def _key(self) -> tuple | None:
        t = self.target
        doc = t.document if t is not None else None
        return None if doc is None else (t.image_key, doc.shape, self._size)

    def current(self) -> tuple[Superpixels, list, np.ndarray] | None:
        """The segmentation of the image on screen at the current size, if computed: the
        superpixels, each one's box and the borders' overlay."""
        key = self._key()
        return self._cache.get(key) if key is not None else None

    def ensure(self):
        """Show the current image's superpixel borders, segmenting it in the background first when
        needed; returns the task handle when it started one."""
        key, t = self._key(), self.target
        if key is None or self.view is None:
            return None
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
            self._show_borders(entry)
            return None
        self.view.clear_overlay()
        if self._asked == key:
            return None
        src = t.snap_input()
        if src is None:  # the full-resolution pixels are not in yet: the next pointer move asks again
            return None
        self._asked = key
        handle: list = []

        def done(entry) -> None:
            self._cache[key] = entry
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
            self._queue.done()
            if self._asked == key:
                self._asked = None
            if self._active and self._key() == key:
                self._show_borders(entry)

        def failed(text: str) -> None:
            self._asked = None
            self._queue.done()
            t.report_error(f"Superpixels failed: {text}")

        def start() -> None:
            handle.append(t.run_task(lambda: _segment(src.image, key[2]), on_result=done, on_error=failed,
                                     task_name="Superpixels"))

        self._queue.submit(start)
        return handle[0] if handle else None

    def _show_borders(self, entry) -> None:
        sp, _, borders = entry
        (h, w), (gh, gw) = sp.shape, sp.seg.shape
        self.view.show_overlay(borders, (0, 0), scale=(h / gh, w / gw))

    # -------------------------------------------------------------- events
    def activate(self, view, target) -> None:
        super().activate(view, target)
        self._active = True
        self.ensure()

    def deactivate(self) -> None:
        self._active = False
        if self.view is not None:
            self.view.clear_overlay()
        super().deactivate()

    def reset(self) -> None:
        self._ids, self._last = None, None
        # A dropped request must be asked again when it is wanted (a running one merely fills the cache).
        self._queue.drop_pending()
        self._asked = None
        if self.view is not None:
            self.view.clear_region()
            if self._active:
                self.ensure()

    def _touch(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        sp = self.current()[0]
        box, inside = capsule_mask(sp.shape, a, b, 0.5)
        if inside.size:
            self._ids.update(np.unique(sp.ids(box)[inside]).tolist())
        self._last = b

    def _region(self) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
        """The touched superpixels: their joint box and the bool mask within it."""
        sp, boxes, _ = self.current()
        got = [boxes[i] for i in self._ids if i < len(boxes) and boxes[i] is not None]
        if not got:
            return None
        box = (min(b[0] for b in got), min(b[1] for b in got), max(b[2] for b in got), max(b[3] for b in got))
        # A table lookup per pixel: np.isin sorts the box's ids on every pointer move (tens of ms over
        # a drag across a large photo).
        hit = np.zeros(len(boxes) + 1, bool)
        hit[np.fromiter(self._ids, dtype=np.int64)] = True
        return box, hit[sp.ids(box)]

    def _show(self) -> None:
        got = self._region()
        if got is None or self.view is None:
            return
        (y0, x0, _, _), inside = got
        color, name = class_look(self.target, self.target.current_label)
        self.view.show_region(inside, (x0, y0), color, name)

    def press(self, pos: QPointF, modifiers: Any) -> None:
        if self.current() is None:
            self.target.show_status("superpixels are still being computed for this image")
            self.ensure()
            return
        self._ids = set()
        self._touch((pos.x(), pos.y()), (pos.x(), pos.y()))
        self._show()

    def move(self, pos: QPointF, pressed: bool) -> None:
        if self._ids is None:
            if self.current() is None and self._asked is None:
                self.ensure()  # the full-resolution pixels may have arrived since
            return
        if pressed:
            self._touch(self._last, (pos.x(), pos.y()))
            self._show()

    def release(self, pos: QPointF) -> None:
        if self._ids is None:
            return
        self._touch(self._last, (pos.x(), pos.y()))
        got, doc, sp = self._region(), self.target.document, self.current()[0]
        self._ids = self._last = None
        if self.view is not None:
            self.view.clear_region()
        if got is None or doc is None or sp.shape != doc.shape:
            return
        box, inside = got   # whole superpixels already: painted within their box, not over the image
        doc.paint_region(inside, self.target.current_label, SUPERPIXEL_DESCRIPTION, box=box)


class CRFClickTool(Tool):
    """A click as a seed the dense CRF carries along image edges (no weights needed): the region it
    reaches is previewed; Enter or Space accepts it as one undo step, Escape drops it, another click
    replaces it."""

    name = "crfclick"
    cursor = Qt.CursorShape.CrossCursor
    double_click_presses = True   # a quick second click is a new seed, not lost
    target: RegionTarget | None

    def __init__(self) -> None:
        super().__init__()
        self._queue = LatestQueue()
        self._gen = 0                                   # bumped per click: older results are stale
        self.region: tuple[np.ndarray, int] | None = None   # (H×W bool, class) on preview

    def press(self, pos: QPointF, modifiers: Any) -> None:
        t = self.target
        src, doc = t.snap_input(), t.document
        if src is None:
            t.show_status("the CRF click needs the full-resolution image: it is still loading")
            return
        self._gen += 1
        gen, label, xy = self._gen, t.current_label, (pos.x(), pos.y())
        current = doc.mask.copy() if src.probs is None else None

        def job() -> np.ndarray:
            return crf_click_region(src.image, src.probs, xy, label, src.params, src.num_classes, current)

        def done(mask: np.ndarray) -> None:
            self._queue.done()
            if gen != self._gen or t.document is not doc or self.view is None:
                return
            self.region = (mask, label)
            if not show_mask(self.view, t, mask, label):
                self.region = None

        def failed(text: str) -> None:
            self._queue.done()
            t.report_error(f"CRF click failed: {text}")

        self._queue.submit(lambda: t.run_task(job, on_result=done, on_error=failed, task_name="CRF click"))

    def key(self, key: int) -> bool:
        if self.region is None:
            return False
        if key in ACCEPT_KEYS:
            mask, label = self.region
            doc = self.target.document
            self.reset()
            if doc is not None:
                accept_region(doc, mask, label, CRF_CLICK_DESCRIPTION)
            return True
        if key == Qt.Key.Key_Escape:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        self._gen += 1
        self.region = None
        self._queue.drop_pending()
        if self.view is not None:
            self.view.clear_region()
