"""The label overlay paints from a converted copy for images up to CACHE_MAX_PIXELS: what reaches the
screen must be what painting the indexed image gives, after edits and colour changes alike."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QImage, QPainter
from PySide6.QtWidgets import QGraphicsScene

from deeplab_gui.widgets.canvas import overlay as ov


def _render(item: ov.OverlayItem, h: int, w: int) -> np.ndarray:
    scene = QGraphicsScene()
    scene.addItem(item)
    out = QImage(w, h, QImage.Format.Format_ARGB32_Premultiplied)
    out.fill(Qt.GlobalColor.white)
    painter = QPainter(out)
    scene.render(painter, QRectF(0, 0, w, h), QRectF(0, 0, w, h))
    painter.end()
    scene.removeItem(item)
    return np.frombuffer(out.constBits(), np.uint8).reshape(h, out.bytesPerLine())[:, :4 * w].copy()


def _edit(item: ov.OverlayItem, labels: np.ndarray, box: tuple[int, int, int, int]) -> None:
    y0, x0, y1, x1 = box
    item.buffer()[y0:y1, x0:x1] = labels[y0:y1, x0:x1]
    item.changed(x0, y0, x1 - x0, y1 - y0)


def test_cached_overlay_paints_what_the_indexed_image_paints(qtbot, monkeypatch):
    h, w = 30, 40
    rng = np.random.default_rng(0)
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(5)]
    cached, plain = ov.OverlayItem(), ov.OverlayItem()
    cached.resize(h, w)
    monkeypatch.setattr(ov, "CACHE_MAX_PIXELS", 0)
    plain.resize(h, w)
    assert not cached._drawn.isNull() and plain._drawn.isNull()
    labels = rng.integers(0, 5, (h, w)).astype(np.uint8)
    labels[:5] = ov.VOID
    for item in (cached, plain):
        item.qimage.setColorTable(ov.label_table(colors, 0.6))
        _edit(item, labels, (0, 0, h, w))
    first = _render(cached, h, w)
    np.testing.assert_array_equal(first, _render(plain, h, w))
    # A stroke's box, then new colours (the opacity slider): both reach the screen.
    labels[10:20, 5:15] = 2
    for item in (cached, plain):
        _edit(item, labels, (10, 5, 20, 15))
    second = _render(cached, h, w)
    np.testing.assert_array_equal(second, _render(plain, h, w))
    assert not np.array_equal(first, second)
    for item in (cached, plain):
        item.qimage.setColorTable(ov.label_table(colors, 0.2))
        item.changed(0, 0, w, h)
    third = _render(cached, h, w)
    np.testing.assert_array_equal(third, _render(plain, h, w))
    assert not np.array_equal(second, third)
