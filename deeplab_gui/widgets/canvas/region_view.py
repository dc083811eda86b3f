"""What the canvas draws for the region tools: a proposed region (translucent fill, outline and the
proposed class's name) and an image-sized overlay such as superpixel borders.

Each change builds one QImage bounded to the region's crop, so a preview costs in proportion to the
region, not the image; a crop of more than :data:`PREVIEW_MAX_PIXELS` is drawn from every s-th row
and column and the item scaled by s, so a region covering most of a 12-megapixel photo costs the UI
thread a few milliseconds, not a few hundred (a screen shows no more pixels than that anyway).
Items sit in image coordinates (scene = image pixels) at the crop's origin.
"""
from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QImage,
    QPainter,
    QPen,
    QPixmap,
    QTransform,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QStyleOptionGraphicsItem,
)

__all__ = ["PREVIEW_MAX_PIXELS", "RegionItems", "region_rgba"]

PREVIEW_MAX_PIXELS = 2_000_000   # a larger region's preview is drawn at a reduced resolution

FILL_ALPHA = 0.45      # share of the colour's alpha inside the region; the outline gets all of it
RING = (255, 255, 255, 200)   # the light line around the region's outside


def region_rgba(mask: np.ndarray, color: tuple[int, int, int, int]) -> np.ndarray:
    """(h+2)×(w+2)×4 uint8 for ``mask`` with a one-pixel margin: ``color`` at a fraction of its alpha
    inside, at full alpha on its outline (pixels with a 4-neighbour outside, the crop's border
    counting as outside), and a light ring just outside it, so a dark class (or a light one on a
    pale picture) still shows where the region ends.

    Built on the UI thread for every candidate shown: one byte per pixel says which of the four
    looks it gets (0 none, 1 ring, 2 fill, 3 outline), then one lookup of packed 32-bit pixels
    (a few milliseconds less than four masked RGBA assignments for a half-image region)."""
    r, g, b, a = (int(v) for v in color)
    pad = np.pad(np.asarray(mask, dtype=bool), 1, constant_values=False)
    near = np.zeros_like(pad)           # a 4-neighbour is in the region
    np.logical_or(near[1:], pad[:-1], out=near[1:])
    near[:-1] |= pad[1:]
    near[:, 1:] |= pad[:, :-1]
    near[:, :-1] |= pad[:, 1:]
    inner = pad.copy()                   # every 4-neighbour is in the region too
    inner[1:-1, 1:-1] &= pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    code = near.view(np.uint8).copy()    # 1 where a neighbour is in (the ring, unless in itself)
    code[pad] = 3                        # in the region: the outline ...
    code[inner] = 2                      # ... unless inner: the fill
    looks = np.array([(0, 0, 0, 0), RING, (r, g, b, round(a * FILL_ALPHA)), (r, g, b, a)], np.uint8)
    return looks.view(np.uint32).reshape(4)[code].view(np.uint8).reshape(*pad.shape, 4)


def _pixmap(rgba: np.ndarray) -> QPixmap:
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w = rgba.shape[:2]
    img = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return QPixmap.fromImage(img)  # a copy: the numpy buffer may go


class _CountingPixmap(QGraphicsPixmapItem):
    """A pixmap item that counts its paints (and calls ``on_paint`` after each, when set), so a
    benchmark can tell when a preview reached the screen without polling for it."""

    def __init__(self) -> None:
        super().__init__()
        self.paints = 0
        self.on_paint = None
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        super().paint(painter, option, widget)
        self.paints += 1
        if self.on_paint is not None:
            self.on_paint()


class RegionItems:
    """The region preview (z 3, over the label overlay) and the tool overlay (z 2) of one scene."""

    def __init__(self, scene: QGraphicsScene) -> None:
        self._scene = scene
        self.region = _CountingPixmap()
        self.region.setZValue(3)
        self.region.setVisible(False)
        self.label = QGraphicsSimpleTextItem()
        self.label.setZValue(5)
        # Readable at any zoom: the name keeps its screen size.
        self.label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        font = QFont()
        font.setBold(True)
        self.label.setFont(font)
        self.label.setBrush(QBrush(QColor(255, 255, 255)))
        self.label.setPen(QPen(QColor(0, 0, 0), 0.8))  # a dark rim: legible on light and dark pictures
        self.label.setVisible(False)
        self.overlay = QGraphicsPixmapItem()
        self.overlay.setZValue(2)
        self.overlay.setVisible(False)
        for item in (self.region, self.label, self.overlay):
            scene.addItem(item)

    def show_region(self, mask: np.ndarray, origin: tuple[float, float], color: tuple[int, int, int, int],
                    label_text: str = "", scale: tuple[float, float] = (1.0, 1.0)) -> None:
        """``mask`` (h×w bool) with its top-left pixel at ``origin`` (x, y image pixels), each of
        its pixels covering ``scale`` (sy, sx) image pixels."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or not mask.any():
            self.clear_region()
            return
        step = max(1, math.ceil(math.sqrt(mask.size / PREVIEW_MAX_PIXELS)))
        self.region.setPixmap(_pixmap(region_rgba(mask[::step, ::step], color)))
        # Each drawn pixel stands for step×step mask pixels, each mask pixel for sy×sx image pixels.
        sy, sx = (float(v) * step for v in scale)
        self.region.setTransform(QTransform.fromScale(sx, sy))
        x0, y0 = (float(v) for v in origin)
        self.region.setPos(QPointF(x0 - sx, y0 - sy))   # the image has a one-pixel margin for the ring
        self.region.setVisible(True)
        if label_text:
            # Above the region's first row, at the leftmost pixel of that row.
            top = int(mask.any(axis=1).argmax())
            left = int(mask[top].argmax())
            self.label.setText(label_text)
            # Just above the region (in screen pixels, whatever the zoom), not over what it covers.
            self.label.setTransform(QTransform.fromTranslate(0, -self.label.boundingRect().height()))
            self.label.setPos(QPointF(x0 + left * scale[1], y0 + top * scale[0]))
            self.label.setVisible(True)
        else:
            self.label.setVisible(False)

    def clear_region(self) -> None:
        self.region.setVisible(False)
        self.label.setVisible(False)

    def show_overlay(self, rgba: np.ndarray, origin: tuple[float, float],
                     scale: tuple[float, float] = (1.0, 1.0)) -> None:
        """``rgba`` (h×w×4) with its top-left pixel at ``origin``, each pixel covering ``scale`` (sy, sx)
        image pixels."""
        self.overlay.setPixmap(_pixmap(rgba))
        self.overlay.setTransform(QTransform.fromScale(float(scale[1]), float(scale[0])))
        self.overlay.setPos(QPointF(float(origin[0]), float(origin[1])))
        self.overlay.setVisible(True)

    def clear_overlay(self) -> None:
        if self.overlay.isVisible():
            self.overlay.setVisible(False)
            self.overlay.setPixmap(QPixmap())
