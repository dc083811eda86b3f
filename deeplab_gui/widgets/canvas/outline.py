"""The brush outline the canvas draws under the pointer for the sized tools (see ToolView.show_outline)."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QGraphicsEllipseItem, QStyleOptionGraphicsItem

__all__ = ["BrushOutline"]


class BrushOutline(QGraphicsEllipseItem):
    """The brush's circle: a dark line under a light dashed one, one screen pixel each at any zoom,
    so it shows on bright and dark pictures alike.  Moving it repaints only its old and new box."""

    def __init__(self) -> None:
        super().__init__()
        self.setZValue(4)  # above the overlay and a stroke preview
        self._under = QPen(QColor(0, 0, 0, 220))
        self._under.setCosmetic(True)
        over = QPen(QColor(255, 255, 255, 230), 0, Qt.PenStyle.DashLine)
        over.setCosmetic(True)
        self.setPen(over)  # QGraphicsEllipseItem sizes its bounding box by this pen
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.setAcceptHoverEvents(False)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(self._under)
        painter.drawEllipse(self.rect())
        painter.setPen(self.pen())
        painter.drawEllipse(self.rect())
