"""Superpixels: computed at any size within a bounded work area, painted whole as one undo step."""
from __future__ import annotations

import numpy as np
import pytest

from deeplab_gui.editing.document import MaskDocument
from deeplab_gui.editing.superpixels import (
    SuperpixelParams,
    compute_superpixels,
    paint_superpixels,
    touched,
)
from engine import VOID


def _two_colours(h=60, w=80):
    rng = np.random.default_rng(0)
    image = np.full((h, w, 3), (60, 70, 80), np.float64)
    image[:, w // 2:] = (200, 60, 40)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_superpixels_follow_the_colour_edge(method):
    image = _two_colours()
    seg = compute_superpixels(image, SuperpixelParams(size=10, method=method, compactness=20))
    assert seg.shape == (60, 80) and seg.dtype == np.int32 and seg.min() == 0
    assert seg.max() >= 1
    for k in np.unique(seg).tolist():   # no superpixel straddles the edge between the two colours
        cols = np.nonzero(seg == k)[1]
        assert cols.max() < 40 or cols.min() >= 40


def test_a_large_image_is_segmented_reduced_and_enlarged_back():
    image = np.repeat(np.repeat(_two_colours(30, 40), 4, 0), 4, 1)    # 120×160
    seg = compute_superpixels(image, SuperpixelParams(size=16), max_pixels=30 * 40)
    assert seg.shape == (120, 160)
    for k in np.unique(seg).tolist():
        cols = np.nonzero(seg == k)[1]
        assert cols.max() < 80 or cols.min() >= 80


def test_painting_takes_whole_superpixels_as_one_confirmed_step():
    seg = np.zeros((6, 8), np.int32)
    seg[:, 4:] = 1
    seg[4:, :] = 2
    doc = MaskDocument(np.full((6, 8), VOID, np.uint8))
    stroke = np.zeros((6, 8), bool)
    stroke[1, 1] = True                      # one pixel of superpixel 0
    assert np.array_equal(touched(seg, stroke), seg == 0)
    box = paint_superpixels(doc, seg, stroke, 3)
    assert box == (0, 0, 4, 4) and doc.undo_description == "Superpixels" and doc.undo_depth == 1
    assert np.array_equal(doc.mask == 3, seg == 0) and np.array_equal(doc.confirmed, seg == 0)
    doc.undo()
    assert (doc.mask == VOID).all() and not doc.confirmed.any()


def test_bad_parameters_and_images_are_refused():
    with pytest.raises(ValueError, match="method"):
        SuperpixelParams(method="watershed")
    with pytest.raises(ValueError, match="size"):
        SuperpixelParams(size=1)
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        compute_superpixels(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        touched(np.zeros((2, 2), np.int32), np.zeros((3, 3), bool))


def test_a_reduced_segmentation_gives_full_size_ids_and_boxes_on_demand():
    from deeplab_gui.editing.raster import bbox_of
    from deeplab_gui.editing.superpixels import segment
    image = np.repeat(np.repeat(_two_colours(30, 40), 4, 0), 4, 1)[:117, :155]    # not a multiple of the grid
    sp = segment(image, SuperpixelParams(size=16), max_pixels=30 * 40)
    assert sp.shape == (117, 155) and sp.seg.size <= 30 * 40
    full = sp.full()
    assert np.array_equal(full, compute_superpixels(image, SuperpixelParams(size=16), max_pixels=30 * 40))
    assert np.array_equal(sp.ids((10, 20, 50, 90)), full[10:50, 20:90])
    boxes = sp.boxes()
    assert len(boxes) == sp.count
    for k in range(sp.count):
        assert boxes[k] == bbox_of(full == k)
