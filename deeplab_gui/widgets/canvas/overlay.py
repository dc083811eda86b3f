"""The label overlay: one ``QImage.Format_Indexed8`` the size of the image whose colour table carries
the class colours with alpha = opacity (index 255 fully transparent), and the tables and outline
helper that fill it.  The canvas copies only a changed box into it (see :mod:`.canvas`).

Qt converts an indexed image to premultiplied ARGB on every paint, several times the cost of drawing
one already converted (2.9 ms against 0.7 for 500×375 at 2× zoom), and the overlay is repainted far
more often than it changes (under every click preview, pan and zoom). So images up to
:data:`CACHE_MAX_PIXELS` also keep a converted copy, refreshed for each changed box: 4 bytes a pixel
more (at most 16 MB); larger ones convert the exposed part at each paint, as before."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect, QRectF, Qt
from PySide6.QtGui import QImage, QPainter, qRgba
from PySide6.QtWidgets import QGraphicsItem, QStyleOptionGraphicsItem

from engine import VOID

__all__ = ["CACHE_MAX_PIXELS", "DIM_ALPHA", "DIM_OFFSET", "OverlayItem", "dims_unconfirmed", "heat_table", "label_table",
           "outline_labels"]


# Unconfirmed pixels of class c are drawn with index c + DIM_OFFSET, whose entry has this share of
# the opacity: one Indexed8 image still holds both, so a stroke repaints its box and nothing more.
DIM_OFFSET = 128
DIM_ALPHA = 0.3
# Overlays up to this many pixels keep a converted (premultiplied ARGB) copy for painting.
CACHE_MAX_PIXELS = 4_000_000


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
    """An Indexed8 image drawn over the picture; :meth:`buffer` is a writable numpy view of it.
    Whoever writes into it (or changes its colour table) calls :meth:`changed` with the box."""

    def __init__(self) -> None:
        super().__init__()
        self.qimage = QImage()
        self._drawn = QImage()   # the converted copy (null above CACHE_MAX_PIXELS)
        # exposedRect lets paint() convert and draw only the damaged part of a big overlay.
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)

    def resize(self, height: int, width: int) -> None:
        self.prepareGeometryChange()
        self.qimage = QImage(width, height, QImage.Format.Format_Indexed8)
        self.qimage.setColorTable([qRgba(0, 0, 0, 0)] * 256)
        self.qimage.fill(VOID)
        self._drawn = QImage()
        if 0 < height * width <= CACHE_MAX_PIXELS:
            self._drawn = QImage(width, height, QImage.Format.Format_ARGB32_Premultiplied)
            self._drawn.fill(Qt.GlobalColor.transparent)

    def changed(self, x: int, y: int, width: int, height: int) -> None:
        """The pixels (or colours) of this box changed: refresh the converted copy there and repaint."""
        if not self._drawn.isNull():
            box = QRect(x, y, width, height)
            painter = QPainter(self._drawn)
            painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
            painter.drawImage(box, self.qimage, box)
            painter.end()
        self.update(QRectF(x, y, width, height))

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
            painter.drawImage(r, self.qimage if self._drawn.isNull() else self._drawn, r)
