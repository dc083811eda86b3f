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
    qRgba,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QStyleOptionGraphicsItem,
)

__all__ = ["PREVIEW_MAX_PIXELS", "RegionItems", "region_codes", "region_pixmap", "region_rgba"]

PREVIEW_MAX_PIXELS = 2_000_000   # a larger region's preview is drawn at a reduced resolution

FILL_ALPHA = 0.45      # share of the colour's alpha inside the region; the outline gets all of it
RING = (255, 255, 255, 200)   # the light line around the region's outside


def region_codes(mask: np.ndarray) -> np.ndarray:
    """(h+2)×(w+2) uint8 for ``mask`` with a one-pixel margin: which of the preview's four looks
    each pixel gets: 0 none, 1 the ring (outside, with a 4-neighbour inside), 2 the fill (inside,
    all four neighbours inside), 3 the outline (inside, on the border; the crop's border counts as
    outside). Whole-array bit operations on bytes: no boolean-mask assignment, which took several
    times as long (a 2-megapixel region: 5 ms -> 3)."""
    pad = np.pad(np.asarray(mask, dtype=bool), 1, constant_values=False)
    near = np.zeros_like(pad)           # a 4-neighbour is in the region
    np.logical_or(near[1:], pad[:-1], out=near[1:])
    near[:-1] |= pad[1:]
    near[:, 1:] |= pad[:, :-1]
    near[:, :-1] |= pad[:, 1:]
    inner = np.zeros_like(pad)          # in the region, and every 4-neighbour too
    core = inner[1:-1, 1:-1]
    np.logical_and(pad[:-2, 1:-1], pad[2:, 1:-1], out=core)
    core &= pad[1:-1, :-2]
    core &= pad[1:-1, 2:]
    core &= pad[1:-1, 1:-1]
    code = np.multiply(pad.view(np.uint8), 3, dtype=np.uint8)   # 3 in the region ...
    code ^= inner.view(np.uint8)                                 # ... 2 where inner
    near &= ~pad                                                 # the ring: a neighbour in, itself out
    code |= near.view(np.uint8)
    return code


def _looks(color: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """The RGBA of each :func:`region_codes` value for a region of ``color``."""
    r, g, b, a = (int(v) for v in color)
    return [(0, 0, 0, 0), RING, (r, g, b, round(a * FILL_ALPHA)), (r, g, b, a)]


def region_rgba(mask: np.ndarray, color: tuple[int, int, int, int]) -> np.ndarray:
    """(h+2)×(w+2)×4 uint8 for ``mask`` with a one-pixel margin: ``color`` at a fraction of its alpha
    inside, at full alpha on its outline (pixels with a 4-neighbour outside, the crop's border
    counting as outside), and a light ring just outside it, so a dark class (or a light one on a
    pale picture) still shows where the region ends (the looks of :func:`region_codes`)."""
    code = region_codes(mask)
    looks = np.array(_looks(color), np.uint8)
    return looks.view(np.uint32).reshape(4)[code].view(np.uint8).reshape(*code.shape, 4)


def region_pixmap(mask: np.ndarray, color: tuple[int, int, int, int]) -> QPixmap:
    """:func:`region_rgba` as a pixmap, built on the UI thread for every candidate shown: the codes
    as an 8-bit indexed image with a four-colour table, which Qt turns into the pixmap's pixels in
    one pass (no RGBA array made: a 2-megapixel region 8 ms -> 4.5, a 500×375 one 0.85 -> 0.5)."""
    code = region_codes(mask)
    h, w = code.shape
    img = QImage(code.data, w, h, w, QImage.Format.Format_Indexed8)
    img.setColorTable([qRgba(*look) for look in _looks(color)])
    return QPixmap.fromImage(img)   # a copy: the codes may go


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
        self.region.setPixmap(region_pixmap(mask[::step, ::step], color))
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
