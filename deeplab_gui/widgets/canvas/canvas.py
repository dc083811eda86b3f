"""The image view: the picture, the label overlay, zoom and pan; mouse events go to the active tool.

The canvas is the tools' :class:`~.toolview.ToolView` (their previews are one path item over the
overlay) and hands them the session as a :class:`~.session_target.SessionTarget`, so the tools know
neither the canvas nor the session.

The overlay is one ``QImage.Format_Indexed8`` the size of the image whose colour table carries the
class colours with alpha = opacity (index 255 fully transparent).  Document listeners report the
changed box and only that box is copied into the overlay and repainted, so a brush stroke costs in
proportion to the brush, not the image (benchmarks/bench_gui.py: one segment ≤ 8 ms on 4000×3000).
Scene coordinates are image pixel coordinates (the items sit at the origin, unscaled), the
convention of :mod:`deeplab_gui.editing.raster`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QCursor,
    QImage,
    QKeyEvent,
    QPainterPath,
    QPen,
    QPixmap,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
)

from engine import VOID

from ...state.session_io import display_image
from .outline import BrushOutline
from .overlay import (
    DIM_OFFSET,
    OverlayItem,
    dims_unconfirmed,
    heat_table,
    label_table,
    outline_labels,
)
from .region_view import RegionItems
from .session_target import SessionTarget
from .tools import Tool
from .toolview import RGBA

_REFRESH_BAND_PIXELS = 1 << 20   # overlay pixels refreshed at a time (see update_region)

__all__ = [
    "DIM_OFFSET",
    "Canvas",
    "OverlayItem",
    "dims_unconfirmed",
    "heat_table",
    "label_table",
    "outline_labels",
]


class Canvas(QGraphicsView):
    """Shows ``session``'s current image and overlay; forwards mouse and keys to ``tool``."""

    zoom_changed = Signal(float)
    hovered = Signal(int, int)  # image pixel (x, y) under the mouse; (-1, -1) off the image

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.setScene(QGraphicsScene(self))
        self.image_item = QGraphicsPixmapItem()
        self.overlay = OverlayItem()
        self.overlay.setZValue(1)
        self.scene().addItem(self.image_item)
        self.scene().addItem(self.overlay)
        self.tool: Tool | None = None
        self.target = SessionTarget(session)
        self._preview: QGraphicsPathItem | None = None
        self.outline_item = BrushOutline()
        self.outline_item.setVisible(False)
        self.scene().addItem(self.outline_item)
        self.regions = RegionItems(self.scene())  # the region tools' preview and overlay
        self._pan_from: QPointF | None = None
        self._space = False
        self._hover = (-1, -1)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        # Only the damaged rectangles are redrawn (the default already, stated because it matters).
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setBackgroundBrush(QColor(40, 40, 40))
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        session.current_changed.connect(self._on_current)
        if hasattr(session, "image_ready"):
            session.image_ready.connect(self._show_pixels)
        session.mask_changed.connect(self._on_mask_changed)
        session.view_changed.connect(self.refresh)
        session.probs_changed.connect(self._on_probs)
        session.classes_changed.connect(self.refresh)

    # ---------------------------------------------------------------- tools
    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        # A canvas closed on its own (not the main window's, which lives as long as the app): its
        # tool drops its work and stops its timers, so nothing it started reaches the closed view.
        self.set_tool(None)
        super().closeEvent(event)

    def set_tool(self, tool: Tool | None) -> None:
        if self.tool is not None:
            self.tool.deactivate()
        self.tool = tool
        if tool is not None:
            tool.activate(self, self.target)
            self.viewport().setCursor(tool.cursor)
            if self.underMouse() and self.session.document is not None:
                # Chosen by key with the pointer on the image: show its outline before the mouse moves.
                tool.move(self.mapToScene(self.viewport().mapFromGlobal(QCursor.pos())), False)

    # ---------------------------------------------------------------- tool previews (ToolView)
    def show_path(self, points: Sequence[tuple[float, float]], *, closed: bool = False,
                  width: float = 0.0, color: RGBA = (255, 255, 0, 255)) -> None:
        if self._preview is None:
            self._preview = QGraphicsPathItem()
            self._preview.setZValue(3)  # above the overlay
            self.scene().addItem(self._preview)
        path = QPainterPath()
        if points:
            path.moveTo(*points[0])
            for x, y in points[1:]:
                path.lineTo(x, y)
            if closed:
                path.closeSubpath()
        if width > 0:
            pen = QPen(QColor(*color), width, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                       Qt.PenJoinStyle.RoundJoin)
        else:
            pen = QPen(QColor(*color))
            pen.setCosmetic(True)  # one screen pixel wide at any zoom
        self._preview.setPen(pen)
        self._preview.setPath(path)

    def clear_preview(self) -> None:
        if self._preview is not None and self._preview.scene() is not None:
            self._preview.scene().removeItem(self._preview)
        self._preview = None

    def show_outline(self, center: tuple[float, float], radius: float) -> None:
        cx, cy = center
        r = max(float(radius), 0.0)
        item = self.outline_item
        item.setRect(QRectF(cx - r, cy - r, 2 * r, 2 * r))
        if not item.isVisible():
            item.setVisible(True)

    def clear_outline(self) -> None:
        if self.outline_item.isVisible():
            self.outline_item.setVisible(False)

    def show_region(self, mask_crop: np.ndarray, origin: tuple[float, float], color: RGBA,
                    label_text: str = "", scale: tuple[float, float] = (1.0, 1.0)) -> None:
        self.regions.show_region(mask_crop, origin, color, label_text, scale)

    def clear_region(self) -> None:
        self.regions.clear_region()

    def show_overlay(self, rgba_crop: np.ndarray, origin: tuple[float, float],
                     scale: tuple[float, float] = (1.0, 1.0)) -> None:
        self.regions.show_overlay(rgba_crop, origin, scale)

    def clear_overlay(self) -> None:
        self.regions.clear_overlay()

    # ---------------------------------------------------------------- content
    def _on_current(self, _image_id: str) -> None:
        size = getattr(self.session, "image_size", None)
        image = self.session.image
        if size is None and image is not None:
            size = image.shape[:2]
        if size is None:
            self.image_item.setPixmap(QPixmap())
            self.overlay.resize(0, 0)
            self.scene().setSceneRect(QRectF())
            return
        h, w = size
        self._show_pixels()
        self.overlay.resize(h, w)
        self.scene().setSceneRect(QRectF(0, 0, w, h))
        if self.tool is not None:
            self.tool.image_changed()
        self.refresh()
        self.fit()

    def _show_pixels(self, _image_id: str = "") -> None:
        """Put the session's display image on screen; a reduced preview is stretched over the full
        image's scene rectangle, so zoom, overlay and tools work in full-resolution pixels from the
        start and the full-resolution pixmap (``image_ready``) just replaces it."""
        s = self.session
        size = getattr(s, "image_size", None) or (s.image.shape[:2] if s.image is not None else None)
        if size is None:
            return
        h, w = size
        qimg = getattr(s, "display", None)
        if not isinstance(qimg, QImage) or qimg.isNull():
            if s.image is None:
                return
            qimg = display_image(s.image)
        elif s.image is not None and qimg.size().toTuple() != (w, h):
            qimg = display_image(s.image)
        self.image_item.setPixmap(QPixmap.fromImage(qimg))
        qw, qh = qimg.width(), qimg.height()
        self.image_item.setTransform(QTransform.fromScale(w / qw, h / qh) if (qw, qh) != (w, h) else QTransform())

    def _on_probs(self) -> None:
        if self.session.view_mode in ("raw", "uncertainty"):
            self.refresh()

    def _on_mask_changed(self, bbox: tuple) -> None:
        mode = self.session.view_mode
        if mode == "mask" or (mode == "crf" and self.session.crf_labels is None) or \
                (mode == "raw" and self.session.raw_labels is None):
            self.update_region(bbox)

    def refresh(self) -> None:
        """Rebuild the colour table and the whole overlay (view mode, opacity, classes changed)."""
        if self.overlay.qimage.isNull():
            return
        s = self.session
        heat = s.view_mode == "uncertainty" and s.uncertainty is not None
        self.overlay.qimage.setColorTable(heat_table(s.opacity) if heat else
                                          label_table(s.class_colors, s.opacity, dim=dims_unconfirmed(s)))
        h, w = self.overlay.qimage.height(), self.overlay.qimage.width()
        self.update_region((0, 0, h, w))

    def update_region(self, bbox: tuple) -> None:
        """Copy the labels of ``bbox`` (y0, x0, y1, x1) into the overlay and repaint just that box."""
        buf = self.overlay.buffer()
        if buf.size == 0:
            return
        h, w = buf.shape
        y0, x0, y1, x1 = (int(v) for v in bbox)
        s = self.session
        if s.outline:  # a pixel's outline status depends on its neighbours: widen the box by one
            y0, x0, y1, x1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, h), min(x1 + 1, w)
        if y0 >= y1 or x0 >= x1:
            return
        # In bands of rows: a whole 12-megapixel refresh (a view switched, a live CRF frame) made
        # several image-sized temporaries at once (up to 300 ms and 90 MB in the uncertainty view).
        step = max(1, _REFRESH_BAND_PIXELS // (x1 - x0))
        for r0 in range(y0, y1, step):
            self._fill_overlay(buf, (r0, x0, min(r0 + step, y1), x1))
        self.overlay.changed(x0, y0, x1 - x0, y1 - y0)

    def _fill_overlay(self, buf: np.ndarray, box: tuple[int, int, int, int]) -> None:
        """What the overlay shows in ``box`` (y0, x0, y1, x1), written into ``buf``."""
        h, w = buf.shape
        y0, x0, y1, x1 = box
        s = self.session
        if s.view_mode == "uncertainty" and s.uncertainty is not None and s.uncertainty.shape == (h, w):
            region = s.uncertainty[y0:y1, x0:x1]
            buf[y0:y1, x0:x1] = np.clip(region * 254.0 + 0.5, 0, 254).astype(np.uint8)
            return
        labels = s.overlay_labels()
        if labels is None or labels.shape != (h, w):
            buf[y0:y1, x0:x1] = VOID
        elif s.outline:
            cy0, cx0, cy1, cx1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, h), min(x1 + 1, w)
            out = outline_labels(labels[cy0:cy1, cx0:cx1])
            buf[y0:y1, x0:x1] = out[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        else:
            buf[y0:y1, x0:x1] = labels[y0:y1, x0:x1]
        if labels is not None and labels.shape == (h, w) and dims_unconfirmed(s):
            block = buf[y0:y1, x0:x1]
            dim = ~s.document.confirmed[y0:y1, x0:x1]
            dim &= block < DIM_OFFSET          # void (255) stays transparent
            block[dim] += DIM_OFFSET

    # ---------------------------------------------------------------- zoom
    @property
    def zoom(self) -> float:
        return float(self.transform().m11())

    def set_zoom(self, factor: float) -> None:
        factor = min(max(factor, 0.01), 64.0)
        self.scale(factor / self.zoom, factor / self.zoom)
        self.zoom_changed.emit(self.zoom)

    def fit(self) -> None:
        rect = self.scene().sceneRect()
        if not rect.isEmpty():
            self.fitInView(rect, Qt.AspectRatioMode.KeepAspectRatio)
            self.zoom_changed.emit(self.zoom)

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def wheelEvent(self, event: QWheelEvent) -> None:  # zoom around the cursor (AnchorUnderMouse)
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.set_zoom(self.zoom * (1.25 ** steps))
        event.accept()

    # ---------------------------------------------------------------- mouse and keys
    def image_pos(self, event) -> QPointF:
        return self.mapToScene(event.position().toPoint())

    def _panning(self, event) -> bool:
        return event.buttons() & Qt.MouseButton.MiddleButton or (self._space and event.buttons()
                                                                 & Qt.MouseButton.LeftButton)

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.MiddleButton or (self._space and event.button() == Qt.MouseButton.LeftButton):
            self._pan_from = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
        elif event.button() == Qt.MouseButton.LeftButton and self.tool is not None and self.session.document is not None:
            self.tool.press(self.image_pos(event), event.modifiers())
        elif event.button() == Qt.MouseButton.RightButton and self.tool is not None and self.session.document is not None:
            self.tool.right_press(self.image_pos(event), event.modifiers())
        event.accept()

    def _report_hover(self, x: int, y: int) -> None:
        rect = self.scene().sceneRect()  # the image's pixels
        xy = (x, y) if 0 <= x < rect.width() and 0 <= y < rect.height() else (-1, -1)
        if xy != self._hover:  # once per pixel crossed, not per mouse event
            self._hover = xy
            self.hovered.emit(*xy)

    def leaveEvent(self, event) -> None:
        self._report_hover(-1, -1)
        if self.tool is not None:
            self.tool.leave()
        super().leaveEvent(event)

    def mouseMoveEvent(self, event) -> None:
        pos = self.image_pos(event)
        self._report_hover(math.floor(pos.x()), math.floor(pos.y()))
        if self._pan_from is not None and self._panning(event):
            delta = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - int(delta.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - int(delta.y()))
        elif self.tool is not None and self.session.document is not None:
            self.tool.move(self.image_pos(event), bool(event.buttons() & Qt.MouseButton.LeftButton))
        event.accept()

    def mouseReleaseEvent(self, event) -> None:
        if self._pan_from is not None and event.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._pan_from = None
            self.viewport().setCursor(self.tool.cursor if self.tool else Qt.CursorShape.ArrowCursor)
        elif event.button() == Qt.MouseButton.LeftButton and self.tool is not None and self.session.document is not None:
            self.tool.release(self.image_pos(event))
        event.accept()

    def mouseDoubleClickEvent(self, event) -> None:
        # Qt sends a quick second press as a double click; a tool whose every click counts (each
        # a prompt or a seed) gets it as the press it is, or a fast second click would be lost.
        tool, button = self.tool, event.button()
        if tool is not None and self.session.document is not None:
            if tool.double_click_presses and button == Qt.MouseButton.LeftButton:
                tool.press(self.image_pos(event), event.modifiers())
            elif tool.double_click_presses and button == Qt.MouseButton.RightButton:
                tool.right_press(self.image_pos(event), event.modifiers())
            elif button == Qt.MouseButton.LeftButton:
                tool.double_click(self.image_pos(event))
        event.accept()

    def event(self, event) -> bool:
        # Tab would move the focus out of the view before keyPressEvent: a tool may want it (cycling).
        if event.type() == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Tab and \
                self.tool is not None and self.tool.key(Qt.Key.Key_Tab):
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # A tool with something to accept takes Space (accept) before panning does.
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat() and self.tool is not None \
                and self.tool.key(Qt.Key.Key_Space):
            event.accept()
        elif event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
        elif self.tool is not None and self.tool.key(event.key()):
            event.accept()
        else:
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self._pan_from = None
            self.viewport().setCursor(self.tool.cursor if self.tool else Qt.CursorShape.ArrowCursor)
        else:
            super().keyReleaseEvent(event)
