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
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QCursor,
    QImage,
    QKeyEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QTransform,
    QWheelEvent,
    qRgba,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QStyleOptionGraphicsItem,
)

from engine import VOID

from ...state.session_io import display_image
from .outline import BrushOutline
from .session_target import SessionTarget
from .tools import Tool
from .toolview import RGBA

__all__ = ["Canvas", "OverlayItem", "DIM_OFFSET", "dims_unconfirmed", "heat_table", "label_table",
           "outline_labels"]


# Unconfirmed pixels of class c are drawn with index c + DIM_OFFSET, whose entry has this share of
# the opacity: one Indexed8 image still holds both, so a stroke repaints its box and nothing more.
DIM_OFFSET = 128
DIM_ALPHA = 0.3


def label_table(colors: list[tuple[int, int, int]], opacity: float, *, dim: bool = False) -> list[int]:
    """256-entry ARGB colour table: class colours at ``opacity``, everything else (255) transparent.

    ``dim`` (only with fewer than 128 classes): entries 128.. repeat the colours at a fraction of
    the opacity, for the pixels no person has confirmed."""
    a = round(255 * min(max(opacity, 0.0), 1.0))
    table = [qRgba(0, 0, 0, 0)] * 256
    for i, (r, g, b) in enumerate(colors[:255]):
        table[i] = qRgba(int(r), int(g), int(b), a)
    if dim and len(colors) <= DIM_OFFSET:
        for i, (r, g, b) in enumerate(colors):
            table[i + DIM_OFFSET] = qRgba(int(r), int(g), int(b), round(a * DIM_ALPHA))
    return table


def dims_unconfirmed(session) -> bool:
    """True when the overlay shows the document's labels with unconfirmed pixels dimmed."""
    s = session
    return bool(getattr(s, "show_unconfirmed", False)) and s.document is not None and \
        len(s.class_colors) <= DIM_OFFSET and s.overlay_labels() is s.document.mask


def heat_table(opacity: float) -> list[int]:
    """Colour table for uncertainty 0..254: dark blue (sure) over yellow to red (unsure); 255 clear."""
    a = round(255 * min(max(opacity, 0.0), 1.0))
    table = []
    for i in range(255):
        t = i / 254.0
        r = int(255 * min(1.0, 2 * t))
        g = int(255 * (1 - abs(2 * t - 1)))
        b = int(255 * max(0.0, 1 - 2 * t))
        table.append(qRgba(r, g, b, a))
    return table + [qRgba(0, 0, 0, 0)]


def outline_labels(labels: np.ndarray) -> np.ndarray:
    """Keep only pixels on a class boundary (4-neighbour differs); others become 255.  H×W uint8."""
    edge = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return np.where(edge, labels, np.uint8(VOID)).astype(np.uint8)


class OverlayItem(QGraphicsItem):
    """An Indexed8 image drawn over the picture; :meth:`buffer` is a writable numpy view of it."""

    def __init__(self) -> None:
        super().__init__()
        self.qimage = QImage()
        # exposedRect lets paint() convert and draw only the damaged part of a big overlay.
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)

    def resize(self, height: int, width: int) -> None:
        self.prepareGeometryChange()
        self.qimage = QImage(width, height, QImage.Format.Format_Indexed8)
        self.qimage.setColorTable([qRgba(0, 0, 0, 0)] * 256)
        self.qimage.fill(VOID)

    def buffer(self) -> np.ndarray:
        """H×W uint8 view of the pixels (rows padded to 4 bytes by Qt are sliced off)."""
        img = self.qimage
        if img.isNull():
            return np.zeros((0, 0), np.uint8)
        flat = np.frombuffer(img.bits(), dtype=np.uint8)  # bits() detaches: the view is ours alone
        return flat.reshape(img.height(), img.bytesPerLine())[:, :img.width()]

    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, self.qimage.width(), self.qimage.height())

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        if self.qimage.isNull():
            return
        r = option.exposedRect.intersected(self.boundingRect()).toAlignedRect()
        if not r.isEmpty():
            painter.drawImage(r, self.qimage, r)


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
            self.tool.reset()
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
        if s.view_mode == "uncertainty" and s.uncertainty is not None and s.uncertainty.shape == (h, w):
            region = s.uncertainty[y0:y1, x0:x1]
            buf[y0:y1, x0:x1] = np.clip(region * 254.0 + 0.5, 0, 254).astype(np.uint8)
        else:
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
        self.overlay.update(QRectF(x0, y0, x1 - x0, y1 - y0))

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
        if event.button() == Qt.MouseButton.LeftButton and self.tool is not None and self.session.document is not None:
            self.tool.double_click(self.image_pos(event))
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
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
