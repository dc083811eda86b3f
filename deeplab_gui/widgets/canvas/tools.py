"""Editing tools: each turns mouse events (image coordinates) into calls on the mask document.

A tool is handed what it edits and where it may draw when it becomes active (``activate(view,
target)``, see :mod:`.toolview`): the target gives the current document and class, the view shows
previews. Tools hold no pixels; the document owns them and its listeners repaint whatever shows it.
The UI thread only does cheap numpy on bounding boxes; the CRF-snap brush runs
``refine_with_scribbles`` through the target's task runner on a crop around the strokes and applies
the region the strokes reach (see :mod:`deeplab_gui.editing.snap`) as one undo step.  The region
tools (superpixels, CRF click, click model) live in :mod:`.region_tools` and :mod:`.click_tool`;
:func:`make_tools` offers them all.
"""
from __future__ import annotations

import weakref

from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, Qt

from engine import VOID

from ...editing.brush import ScribbleLayer
from ...editing.snap import prepare_snap, snap_margin
from .click_tool import ClickTool
from .region_tools import CRFClickTool, SuperpixelTool
from .tool_base import Tool
from .toolview import SnapTarget

__all__ = [
    "TOOL_KEYS",
    "BrushTool",
    "CRFClickTool",
    "ClickTool",
    "EraserTool",
    "FillTool",
    "PickerTool",
    "PolygonTool",
    "SnapTool",
    "SuperpixelTool",
    "Tool",
    "make_tools",
    "snap_margin",
]

TOOL_KEYS = {"brush": "B", "eraser": "E", "polygon": "P", "fill": "F", "picker": "I", "snap": "S",
             "superpixel": "X", "crfclick": "R", "click": "C"}


class BrushTool(Tool):
    """Paint the current class with a round brush; one stroke (press to release) is one undo step."""

    name = "brush"
    sized = True
    _at: tuple[float, float] | None = None   # the pointer (image pixels) while it is over the view
    _size = 8.0

    @property
    def size(self) -> float:
        """Brush radius in image pixels; a change redraws the outline at once (``[``, ``]``)."""
        return self._size

    @size.setter
    def size(self, value: float) -> None:
        self._size = float(value)
        self._draw_outline()

    def _track(self, pos: QPointF) -> None:
        self._at = (pos.x(), pos.y())
        self._draw_outline()

    def _draw_outline(self) -> None:
        if self.view is not None and self._at is not None:
            self.view.show_outline(self._at, self._size)

    def leave(self) -> None:
        self._at = None
        if self.view is not None:
            self.view.clear_outline()

    def deactivate(self) -> None:
        self.leave()
        super().deactivate()

    def _begin(self, doc, modifiers: Any) -> None:
        doc.begin_stroke(self.target.current_label, self.size)

    def press(self, pos: QPointF, modifiers: Any) -> None:
        doc = self.target.document
        self._begin(doc, modifiers)
        doc.stroke_to(pos.x(), pos.y())

    def move(self, pos: QPointF, pressed: bool) -> None:
        self._track(pos)
        doc = self.target.document
        if pressed and doc.in_stroke:
            doc.stroke_to(pos.x(), pos.y())

    def release(self, pos: QPointF) -> None:
        doc = self.target.document
        if doc.in_stroke:
            doc.stroke_to(pos.x(), pos.y())
            doc.end_stroke()

    def reset(self) -> None:
        t = self.target
        if t is not None and t.document is not None:
            t.document.end_stroke()


class EraserTool(BrushTool):
    """Erase to void (unlabelled); with Shift held, to background (class 0)."""

    name = "eraser"

    def _begin(self, doc, modifiers: Any) -> None:
        to_background = bool(modifiers & Qt.KeyboardModifier.ShiftModifier)
        doc.begin_stroke(0, self.size, erase_to=0 if to_background else VOID)


class FillTool(Tool):
    """Flood-fill the clicked 4-connected region with the current class."""

    name = "fill"
    cursor = Qt.CursorShape.PointingHandCursor

    def press(self, pos: QPointF, modifiers: Any) -> None:
        self.target.document.fill(pos.x(), pos.y(), self.target.current_label)


class PickerTool(Tool):
    """Make the clicked pixel's class the current one (void picks nothing)."""

    name = "picker"
    cursor = Qt.CursorShape.WhatsThisCursor

    def press(self, pos: QPointF, modifiers: Any) -> None:
        try:
            label = self.target.document.pick(pos.x(), pos.y())
        except ValueError:
            return  # outside the image
        if label != VOID:
            self.target.current_label = label


class PolygonTool(Tool):
    """Click vertices; double-click or Enter fills the polygon, Escape or Backspace undoes points.

    An unfinished polygon is kept with its image when the image or the tool changes (a stray A / D
    in the middle of forty careful clicks loses none of them): it is back, to be finished, when that
    image and this tool are. Escape drops it."""

    name = "polygon"
    rubber_band: tuple[int, int, int, int] = (255, 255, 0, 255)

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[float, float]] = []
        self._doc: Any = None      # the document the points were placed on
        # Unfinished polygons by document (an image's document lives while its history is kept).
        self._kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def activate(self, view, target) -> None:
        super().activate(view, target)
        self._take_kept()

    def deactivate(self) -> None:
        self._keep()
        super().deactivate()

    def image_changed(self) -> None:
        self._keep()
        self.reset()
        self._take_kept()

    def _keep(self) -> None:
        if self.points and self._doc is not None:
            self._kept[self._doc] = list(self.points)
        self.points, self._doc = [], None

    def _take_kept(self) -> None:
        doc = self.target.document if self.target is not None else None
        points = self._kept.pop(doc, None) if doc is not None else None
        if points:
            self.points, self._doc = points, doc
            self._draw(None)

    def press(self, pos: QPointF, modifiers: Any) -> None:
        if not self.points:
            self._doc = self.target.document if self.target is not None else None
        self.points.append((pos.x(), pos.y()))
        self._draw(pos)

    def move(self, pos: QPointF, pressed: bool) -> None:
        if self.points:
            self._draw(pos)

    def double_click(self, pos: QPointF) -> None:
        self.close()

    def key(self, key: int) -> bool:
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.points:
            self.close()
            return True
        if key == Qt.Key.Key_Escape and self.points:
            self.reset()
            return True
        if key == Qt.Key.Key_Backspace and self.points:
            self.points.pop()
            self._draw(None)
            return True
        return False

    def close(self) -> None:
        # A double-click also delivered a press at the same spot: drop repeated vertices.
        pts = [p for i, p in enumerate(self.points) if i == 0 or p != self.points[i - 1]]
        self.reset()
        doc = self.target.document if self.target is not None else None
        if len(pts) >= 3 and doc is not None:
            doc.polygon(pts, self.target.current_label)

    def reset(self) -> None:
        self.points, self._doc = [], None
        if self.view is not None:
            self.view.clear_preview()

    def _draw(self, cursor: QPointF | None) -> None:
        if self.view is None:
            return
        pts = self.points + ([(cursor.x(), cursor.y())] if cursor is not None else [])
        self.view.show_path(pts, closed=True, color=self.rubber_band)


class SnapTool(BrushTool):
    """CRF-snap brush: paint hints in a scribble layer; on release the dense CRF spreads them along
    image edges (in a worker, on a crop around the strokes) and the region it grows from the strokes
    becomes one undo step; the rest of the crop and a person's earlier labels stay as they are.

    Needs a :class:`~.toolview.SnapTarget`: it supplies the image, probabilities, CRF parameters
    and the task runner."""

    name = "snap"
    target: SnapTarget | None

    def __init__(self) -> None:
        super().__init__()
        self.layer: ScribbleLayer | None = None
        self._path: list[tuple[float, float]] = []
        self.task = None

    def press(self, pos: QPointF, modifiers: Any) -> None:
        t = self.target
        if self.layer is None or self.layer.shape != t.document.shape:
            self.layer = ScribbleLayer(t.document.shape)
        self.layer.begin_stroke(t.current_label, self.size)
        self.layer.stroke_to(pos.x(), pos.y())
        self._path = [(pos.x(), pos.y())]
        self._show_path()

    def move(self, pos: QPointF, pressed: bool) -> None:
        self._track(pos)
        if pressed and self.layer is not None and self.layer.in_stroke:
            self.layer.stroke_to(pos.x(), pos.y())
            self._path.append((pos.x(), pos.y()))
            self._show_path()

    def release(self, pos: QPointF) -> None:
        if self.layer is None or not self.layer.in_stroke:
            return
        self.layer.stroke_to(pos.x(), pos.y())
        self.layer.end_stroke()
        self.run()

    def run(self):
        """Start the refinement of the current scribbles; returns the task handle (None if nothing)."""
        t = self.target
        layer, self.layer = self.layer, None
        doc = t.document if t is not None else None
        src = t.snap_input() if layer is not None and layer.any() and doc is not None else None
        if src is None:
            self.reset()
            return None
        job = prepare_snap(layer.scribbles, layer.bbox, src.image, src.probs, src.params,
                           src.num_classes, self.size, doc.mask)

        def done(labels: np.ndarray) -> None:
            self.reset()
            # Documents are one per image: another document on the target means another image is shown.
            if t.document is not doc:
                return
            # Only the region the stroke reaches along edges changes, never a person's labels.
            job.apply(doc, labels)

        def failed(text: str) -> None:
            self.reset()
            t.report_error(f"CRF snap failed: {text}")

        self.task = t.run_task(job.labels, on_result=done, on_error=failed, task_name="CRF snap")
        return self.task

    def _show_path(self) -> None:
        if self.view is None:
            return
        color = (255, 255, 255, 160)
        colors, label = self.target.class_colors, self.target.current_label
        if 0 <= label < len(colors):
            color = (*colors[label], 200)
        self.view.show_path(self._path, width=2 * self.size, color=color)

    def reset(self) -> None:
        self._path = []
        if self.view is not None:
            self.view.clear_preview()


def make_tools() -> dict[str, Tool]:
    """One instance of each tool, keyed by name (see TOOL_KEYS for their shortcuts)."""
    return {t.name: t() for t in (BrushTool, EraserTool, PolygonTool, FillTool, PickerTool, SnapTool,
                                  SuperpixelTool, CRFClickTool, ClickTool)}
