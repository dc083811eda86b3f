"""The click preview's picture: fill inside, full-alpha outline on the region's border, a light ring
just outside, nothing elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")

from deeplab_gui.widgets.canvas.region_view import FILL_ALPHA, RING, region_rgba


def test_region_rgba_fills_outlines_and_rings_a_region():
    mask = np.zeros((5, 6), bool)
    mask[1:4, 1:5] = True                    # a 3×4 block
    mask[0, 0] = True                        # a lone pixel at the crop's corner
    color = (200, 30, 40, 240)
    out = region_rgba(mask, color)
    assert out.shape == (7, 8, 4) and out.dtype == np.uint8
    at = lambda y, x: tuple(int(v) for v in out[y + 1, x + 1])   # noqa: E731  (mask coordinates)
    fill, edge = (200, 30, 40, round(240 * FILL_ALPHA)), color
    assert at(2, 2) == fill and at(2, 3) == fill                # interior of the block
    assert at(1, 1) == edge and at(3, 4) == edge and at(2, 1) == edge
    assert at(0, 0) == edge                                     # a lone pixel is all outline
    assert at(4, 2) == RING and at(2, 5) == RING and at(0, 2) == RING   # 4-neighbours outside
    assert at(4, 0) == (0, 0, 0, 0) and at(4, 5) == (0, 0, 0, 0)        # diagonal only: nothing
    assert at(-1, 0) == RING                                   # the margin holds the ring too
    assert tuple(out[0, 0]) == (0, 0, 0, 0)


def test_region_rgba_of_a_full_crop_has_its_outline_on_the_crop_border():
    out = region_rgba(np.ones((4, 4), bool), (10, 20, 30, 200))
    inner = out[1:-1, 1:-1]
    assert (inner[0] == (10, 20, 30, 200)).all() and (inner[:, -1] == (10, 20, 30, 200)).all()
    assert (inner[1:3, 1:3] == (10, 20, 30, round(200 * FILL_ALPHA))).all()
    assert (out[0, 1:-1] == RING).all() and (out[1:-1, 0] == RING).all()


def test_the_preview_pixmap_shows_what_region_rgba_describes(qtbot):
    """The pixmap is made from the looks' codes through an indexed image (not from an RGBA array):
    its pixels are region_rgba's, for odd widths (rows not a multiple of four bytes) and for a
    strided view (every s-th pixel of a large region)."""
    from PySide6.QtGui import QImage

    from deeplab_gui.widgets.canvas.region_view import _pixmap, region_codes, region_pixmap
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:37, :53]
    masks = [rng.random((5, 7)) < 0.5, (yy - 18) ** 2 + (xx - 26) ** 2 < 15 ** 2, np.ones((3, 3), bool),
             (rng.random((40, 61)) < 0.7)[::2, ::3]]
    for mask in masks:
        color = (int(rng.integers(256)), 30, 200, int(rng.integers(1, 256)))
        rgba = region_rgba(mask, color)
        # (both pixmaps hold premultiplied pixels: compared as they are drawn)
        want, got = (p.toImage().convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
                     for p in (_pixmap(rgba), region_pixmap(mask, color)))
        assert (got.width(), got.height()) == (rgba.shape[1], rgba.shape[0])
        assert got == want
        assert np.abs(np.frombuffer(got.constBits(), np.uint8).reshape(got.height(), -1)[:, :4 * got.width()]
                      .reshape(got.height(), got.width(), 4)[..., 3].astype(int) - rgba[..., 3]).max() == 0
        assert set(np.unique(region_codes(mask))) <= {0, 1, 2, 3}


def test_a_large_region_is_previewed_at_a_reduced_resolution_over_the_same_place(qtbot):
    """A region of many megapixels is drawn from every s-th pixel and scaled by s (the UI thread
    would spend hundreds of milliseconds on the full one); a small one stays exact."""
    from PySide6.QtWidgets import QGraphicsScene

    from deeplab_gui.widgets.canvas.region_view import PREVIEW_MAX_PIXELS, RegionItems
    items = RegionItems(QGraphicsScene())
    big = np.ones((1500, 2100), bool)                      # 3.15 MP: every 2nd pixel
    items.show_region(big, (40, 30), (200, 30, 30, 220))
    pix, item = items.region.pixmap(), items.region
    assert item.transform().m11() == 2 and pix.width() * pix.height() <= PREVIEW_MAX_PIXELS * 1.01
    rect = item.sceneBoundingRect()                        # the region, with its ring's margin
    assert abs(rect.left() - 38) <= 2 and abs(rect.top() - 28) <= 2
    assert abs(rect.right() - (40 + 2100)) <= 4 and abs(rect.bottom() - (30 + 1500)) <= 4
    small = np.ones((20, 30), bool)
    items.show_region(small, (5, 6), (200, 30, 30, 220))
    assert item.transform().m11() == 1 and (item.pixmap().width(), item.pixmap().height()) == (32, 22)
    assert (item.pos().x(), item.pos().y()) == (4, 5)
    # A reduced mask of a large photo (each of its pixels 3.5 × 2.5 image pixels) lies over the
    # image pixels it stands for.
    items.show_region(small, (35.0, 15.0), (200, 30, 30, 220), scale=(3.5, 2.5))
    rect = item.sceneBoundingRect()
    assert abs(rect.left() - (35 - 2.5)) < 1e-6 and abs(rect.top() - (15 - 3.5)) < 1e-6
    assert abs(rect.width() - 32 * 2.5) < 1e-6 and abs(rect.height() - 22 * 3.5) < 1e-6
