"""Strokes confirm every pixel they cover, and the overlay can dim the pixels no person has set."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtGui import QColor

from deeplab_gui.editing.document import PRELABEL, MaskDocument

pytest.importorskip("pytestqt")

W, H = 40, 30


def _prelabelled() -> MaskDocument:
    doc = MaskDocument(np.full((H, W), 255, np.uint8))
    model = np.full((H, W), 255, np.uint8)
    model[5:25, 5:35] = 3
    doc.apply_labels(model, description=PRELABEL)
    return doc


def test_same_label_stroke_confirms_its_footprint_and_undo_unconfirms_it():
    doc = _prelabelled()
    before = doc.mask.copy()
    assert not doc.confirmed.any()
    doc.begin_stroke(3, 2.0)
    doc.stroke_to(10.5, 15.5)
    doc.stroke_to(25.5, 15.5)
    doc.end_stroke()
    assert (doc.mask == before).all()                       # no label changed...
    assert doc.confirmed[15, 10:26].all() and doc.confirmed[14, 18]   # ...but the footprint is a person's
    assert not doc.confirmed[15, 30] and not doc.confirmed[5, 5]
    assert doc.undo_depth == 2
    doc.undo()
    assert not doc.confirmed.any() and (doc.mask == before).all()
    doc.redo()
    assert doc.confirmed[15, 10:26].all() and not doc.confirmed[15, 30]


def test_stroke_restores_mixed_confirmed_bits_on_undo():
    doc = _prelabelled()
    doc.polygon([(8, 8), (12, 8), (12, 20), (8, 20)], 3)      # a person confirms a patch of it
    conf_before = doc.confirmed.copy()
    assert conf_before.any() and not conf_before.all()
    doc.begin_stroke(5, 3.0)                                  # a different label over both kinds
    doc.stroke_to(4.5, 14.5)
    doc.stroke_to(20.5, 14.5)
    doc.end_stroke()
    assert doc.confirmed[14, 4:21].all()
    doc.undo()
    assert (doc.confirmed == conf_before).all()


def test_view_option_dims_exactly_the_unconfirmed_pixels(qtbot, open_window, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(d / "a.png")
    window = open_window(d)
    s, canvas = window.session, window.canvas
    model = np.full((H, W), 255, np.uint8)
    model[5:25, 5:35] = 3
    s.document.apply_labels(model, description=PRELABEL)
    s.document.begin_stroke(3, 2.0)
    s.document.stroke_to(10.5, 15.5)
    s.document.end_stroke()
    s.set_opacity(1.0)

    def alpha(x, y):
        img = canvas.overlay.qimage
        return QColor.fromRgba(img.pixel(x, y)).alpha(), QColor.fromRgba(img.pixel(x, y)).rgb() & 0xFFFFFF

    assert not window.unconfirmed_action.isChecked()
    assert alpha(10, 15)[0] == alpha(30, 20)[0] == 255          # off: both at full opacity
    window.unconfirmed_action.trigger()
    assert s.show_unconfirmed
    (a_conf, c_conf), (a_unc, c_unc) = alpha(10, 15), alpha(30, 20)
    assert a_conf == 255 and 0 < a_unc < 128 and c_conf == c_unc   # same colour, dimmed
    assert alpha(0, 0)[0] == 0                                   # void stays clear
    s.document.begin_stroke(3, 2.0)                              # confirming repaints the stroke's box
    s.document.stroke_to(30.5, 20.5)
    s.document.end_stroke()
    assert alpha(30, 20)[0] == 255 and 0 < alpha(20, 10)[0] < 128
    s.document.undo()
    assert 0 < alpha(30, 20)[0] < 128
    window.unconfirmed_action.trigger()
    assert alpha(30, 20)[0] == 255
