"""Editing tools: each turns canvas mouse events (image coordinates) into mask-document calls.

Tools hold no pixels; the document owns them and its listeners repaint the canvas.  The UI thread only
does cheap numpy on bounding boxes; the CRF-snap brush runs ``refine_with_scribbles`` in a worker on a
crop around the strokes and applies the result as one undo step.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QGraphicsPathItem, QGraphicsPolygonItem

if TYPE_CHECKING:
    from .canvas import Canvas

from engine.labels import VOID

__all__ = [
    "TOOL_KEYS",
    "BrushTool",
    "EraserTool",
    "FillTool",
    "PickerTool",
    "PolygonTool",
    "SnapTool",
    "Tool",
    "make_tools",
    "snap_margin",
]

TOOL_KEYS = {"brush": "B", "eraser": "E", "polygon": "P", "fill": "F", "picker": "I", "snap": "S"}


class Tool:
    """Base: ``press``/``move``/``release``/``double_click`` get image coordinates (QPointF)."""

    name = "tool"
    cursor: Any = Qt.CursorShape.CrossCursor
    sized = False          # whether [ and ] change this tool's size

    def __init__(self) -> None:
        self.canvas: Canvas | None = None
        self.size = 8.0    # brush radius in image pixels

    @property
    def session(self):
        return self.canvas.session if self.canvas is not None else None

    def activate(self, canvas: Canvas) -> None:
        self.canvas = canvas

    def deactivate(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Drop any half-done work (image switched, tool changed)."""

    def press(self, pos: QPointF, modifiers: Any) -> None: ...
    def move(self, pos: QPointF, pressed: bool) -> None: ...
    def release(self, pos: QPointF) -> None: ...
    def double_click(self, pos: QPointF) -> None: ...

    def key(self, key: int) -> bool:
        """Handle a key (Enter, Escape); True when used."""
        return False


class BrushTool(Tool):
    """Paint the current class with a round brush; one stroke (press to release) is one undo step."""

    name = "brush"
    sized = True

    def _begin(self, doc, modifiers: Any) -> None:
        doc.begin_stroke(self.session.current_label, self.size)

    def press(self, pos: QPointF, modifiers: Any) -> None:
        doc = self.session.document
        self._begin(doc, modifiers)
        doc.stroke_to(pos.x(), pos.y())

    def move(self, pos: QPointF, pressed: bool) -> None:
        doc = self.session.document
        if pressed and doc.in_stroke:
            doc.stroke_to(pos.x(), pos.y())

    def release(self, pos: QPointF) -> None:
        doc = self.session.document
        if doc.in_stroke:
            doc.stroke_to(pos.x(), pos.y())
            doc.end_stroke()

    def reset(self) -> None:
        s = self.session
        if s is not None and s.document is not None:
            s.document.end_stroke()


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
        self.session.document.fill(pos.x(), pos.y(), self.session.current_label)


class PickerTool(Tool):
    """Make the clicked pixel's class the current one (void picks nothing)."""

    name = "picker"
    cursor = Qt.CursorShape.WhatsThisCursor

    def press(self, pos: QPointF, modifiers: Any) -> None:
        try:
            label = self.session.document.pick(pos.x(), pos.y())
        except ValueError:
            return  # outside the image
        if label != VOID:
            self.session.current_label = label


class PolygonTool(Tool):
    """Click vertices; double-click or Enter fills the polygon, Escape or Backspace undoes points."""

    name = "polygon"

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[float, float]] = []
        self._item: QGraphicsPolygonItem | None = None

    def press(self, pos: QPointF, modifiers: Any) -> None:
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
        if len(pts) >= 3 and self.session.document is not None:
            self.session.document.polygon(pts, self.session.current_label)

    def reset(self) -> None:
        self.points = []
        if self._item is not None and self._item.scene() is not None:
            self._item.scene().removeItem(self._item)
        self._item = None

    def _draw(self, cursor: QPointF | None) -> None:
        if self.canvas is None:
            return
        if self._item is None:
            self._item = QGraphicsPolygonItem()
            pen = QPen(QColor(255, 255, 0))
            pen.setCosmetic(True)  # one screen pixel wide at any zoom
            self._item.setPen(pen)
            self._item.setZValue(3)
            self.canvas.scene().addItem(self._item)
        pts = [QPointF(x, y) for x, y in self.points] + ([cursor] if cursor is not None else [])
        self._item.setPolygon(QPolygonF(pts))


def snap_margin(radius: float) -> int:
    """Pixels around the strokes the CRF-snap result may change: far enough to follow an edge the
    strokes hint at, near enough that the rest of the mask stays as the person left it."""
    return int(max(32, math.ceil(6 * radius)))


class SnapTool(BrushTool):
    """CRF-snap brush: paint hints in a scribble layer; on release the dense CRF spreads them along
    image edges (in a worker, on a crop around the strokes) and the result becomes one undo step."""

    name = "snap"

    def __init__(self) -> None:
        super().__init__()
        self.layer = None
        self._path_item: QGraphicsPathItem | None = None
        self._path = QPainterPath()
        self.task = None

    def press(self, pos: QPointF, modifiers: Any) -> None:
        from ...editing.document import ScribbleLayer
        s = self.session
        if self.layer is None or self.layer.shape != s.document.shape:
            self.layer = ScribbleLayer(s.document.shape)
        self.layer.begin_stroke(s.current_label, self.size)
        self.layer.stroke_to(pos.x(), pos.y())
        self._path = QPainterPath(pos)
        self._show_path()

    def move(self, pos: QPointF, pressed: bool) -> None:
        if pressed and self.layer is not None and self.layer.in_stroke:
            self.layer.stroke_to(pos.x(), pos.y())
            self._path.lineTo(pos)
            self._show_path()

    def release(self, pos: QPointF) -> None:
        if self.layer is None or not self.layer.in_stroke:
            return
        self.layer.stroke_to(pos.x(), pos.y())
        self.layer.end_stroke()
        self.run()

    def run(self):
        """Start the refinement of the current scribbles; returns the task handle (None if nothing)."""
        s = self.session
        layer, self.layer = self.layer, None
        if layer is None or not layer.any() or s.image is None or s.document is None:
            self.reset()
            return None
        h, w = layer.shape
        m = snap_margin(self.size)
        y0, x0, y1, x1 = layer.bbox
        y0, x0, y1, x1 = max(y0 - m, 0), max(x0 - m, 0), min(y1 + m, h), min(x1 + m, w)
        image = s.image[y0:y1, x0:x1]
        probs = None
        if s.probs is not None:  # a huge image's probabilities may be on a smaller grid: enlarge the box only
            from engine.probgrid import crop_at
            probs = crop_at(s.probs, (h, w), (y0, x0, y1, x1))
        scrib = layer.scribbles[y0:y1, x0:x1].copy()
        params = _crf_params(s)
        n = len(s.class_names)
        doc, image_id = s.document, s.image_id

        def work():
            from engine.crf import refine_with_scribbles
            out = refine_with_scribbles(np.ascontiguousarray(image), probs, scrib, params,
                                        num_classes=None if probs is not None else n)
            return out.argmax(0).astype(np.uint8)

        def done(labels: np.ndarray) -> None:
            self.reset()
            if s.document is not doc or s.image_id != image_id:
                return  # the image changed meanwhile
            # Full-size arrays, but only a copy and a fill: the document diffs and stores the crop.
            full = np.zeros(doc.shape, dtype=bool)
            full[y0:y1, x0:x1] = True
            target = np.array(doc.mask)
            target[y0:y1, x0:x1] = labels
            doc.apply_labels(target, where=full, description="CRF snap")

        self.task = s.run_task(work, on_result=done, on_error=lambda t: (self.reset(), s.message.emit(
            "error", f"CRF snap failed: {t}")), task_name="CRF snap")
        return self.task

    def _show_path(self) -> None:
        if self.canvas is None:
            return
        if self._path_item is None:
            self._path_item = QGraphicsPathItem()
            self._path_item.setZValue(3)
            self.canvas.scene().addItem(self._path_item)
        color = QColor(255, 255, 255, 160)
        colors = self.session.class_colors
        if 0 <= self.session.current_label < len(colors):
            color = QColor(*colors[self.session.current_label], 200)
        pen = QPen(color, 2 * self.size, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                   Qt.PenJoinStyle.RoundJoin)
        self._path_item.setPen(pen)
        self._path_item.setPath(self._path)

    def reset(self) -> None:
        if self._path_item is not None and self._path_item.scene() is not None:
            self._path_item.scene().removeItem(self._path_item)
        self._path_item = None
        self._path = QPainterPath()


def _crf_params(session) -> Any:
    """The folder's CRF parameters from the settings (what the CRF panel saved), else DeepLab v1's."""
    import dataclasses

    from engine.crf import DEEPLAB_V1, CRFParams
    try:
        stored = session.settings.crf_params(str(session.folder)) if session.folder else {}
        fields = {k: v for k, v in stored.items() if k in CRFParams.__dataclass_fields__}
        return dataclasses.replace(DEEPLAB_V1, **fields) if fields else DEEPLAB_V1
    except (TypeError, ValueError, AttributeError):
        return DEEPLAB_V1


def make_tools() -> dict[str, Tool]:
    """One instance of each tool, keyed by name (see TOOL_KEYS for their shortcuts)."""
    return {t.name: t() for t in (BrushTool, EraserTool, PolygonTool, FillTool, PickerTool, SnapTool)}
