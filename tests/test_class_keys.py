"""Every class within reach of the keyboard: numbered rows, the type-to-search picker, and the status
bar's read-out of the class under the mouse.  Offscreen with pytest-qt against a real Session."""
from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QMouseEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from deeplab_gui.widgets.panels.class_panel import ClassPanel  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work
W, H = 40, 30


@pytest.fixture
def folder(grey_images):
    return grey_images(2, size=(H, W), step=60)


@pytest.fixture
def window(open_window, folder):
    return open_window(folder)


def _pickers(win):
    from deeplab_gui.widgets.dialogs.class_picker import ClassPicker
    return [p for p in win.findChildren(ClassPicker) if p.isVisible()]


def _open_picker(qtbot, win):
    win.canvas.setFocus()
    qtbot.keyClick(win.canvas, Qt.Key.Key_Slash)
    qtbot.waitUntil(lambda: len(_pickers(win)) == 1, timeout=WAIT)
    return _pickers(win)[0]


def _move(canvas, x: float, y: float) -> None:
    """A plain mouse move (no button) over image pixel (x, y)."""
    vp = canvas.viewport()
    local = QPointF(canvas.mapFromScene(QPointF(x, y)))
    ev = QMouseEvent(QEvent.Type.MouseMove, local, QPointF(vp.mapToGlobal(local.toPoint())),
                     Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp, ev)


def test_every_class_row_shows_its_index_also_after_adding_and_renaming(qtbot, sessions, folder):
    s = sessions(folder)
    panel = ClassPanel(s)
    qtbot.addWidget(panel)
    texts = [panel.list.item(r).text() for r in range(panel.list.count())]
    assert len(texts) == 21
    assert texts == [f"{i}: {name}" for i, name in enumerate(s.class_names)]
    assert texts[0] == "0: background" and texts[15] == "15: person" and texts[20] == "20: tvmonitor"
    assert panel.add_class("tree", (10, 200, 10))
    assert panel.list.item(21).text() == "21: tree"
    assert panel.rename_class(12, "hound")
    assert panel.list.item(12).text() == "12: hound"
    assert panel.list.item(21).text() == "21: tree"


def test_matching_classes_by_name_or_number():
    from deeplab_gui.widgets.dialogs.class_picker import matching_classes

    names = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
             "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
             "train", "tvmonitor"]
    assert matching_classes(names, "PER") == [15]
    assert matching_classes(names, "15") == [15]
    assert matching_classes(names, "  bi ") == [2, 3, 14]
    assert matching_classes(names, "5") == [5, 15]
    assert matching_classes(names, "2") == [2, 12, 20]
    assert matching_classes(names + ["2 wheels"], "2") == [2, 12, 20, 21]
    assert matching_classes(names, "") == list(range(21))
    assert matching_classes(names, "zebra") == []
    # An index typed exactly goes first, before a class whose name merely contains the digits.
    assert matching_classes(["a1", "b", "c"], "1") == [1, 0]


def test_picker_filters_moves_chooses_and_closes(qtbot, window):
    s = window.session
    qtbot.keyClick(window.canvas, Qt.Key.Key_7)  # the number keys still reach the first ten
    assert s.current_label == 7
    qtbot.keyClick(window.canvas, Qt.Key.Key_0)
    assert s.current_label == 0

    picker = _open_picker(qtbot, window)
    assert picker.shown() == list(range(21))
    qtbot.keyClicks(picker.filter, "per")
    assert picker.shown() == [15]
    assert picker.list.currentItem().text() == "15: person"
    qtbot.keyClick(picker.filter, Qt.Key.Key_Return)
    assert s.current_label == 15
    qtbot.waitUntil(lambda: not _pickers(window), timeout=WAIT)

    picker = _open_picker(qtbot, window)
    qtbot.keyClicks(picker.filter, "1")
    assert picker.shown()[:3] == [1, 10, 11]
    qtbot.keyClick(picker.filter, Qt.Key.Key_Down)
    qtbot.keyClick(picker.filter, Qt.Key.Key_Down)
    qtbot.keyClick(picker.filter, Qt.Key.Key_Up)
    assert picker.filter.text() == "1"  # arrows move the highlight, not the typing
    qtbot.keyClick(picker.filter, Qt.Key.Key_Enter)
    assert s.current_label == 10
    assert window.class_panel.list.currentRow() == 10
    qtbot.waitUntil(lambda: not _pickers(window), timeout=WAIT)

    picker = _open_picker(qtbot, window)
    qtbot.keyClicks(picker.filter, "zebra")
    assert picker.shown() == []
    qtbot.keyClick(picker.filter, Qt.Key.Key_Return)  # nothing to choose: stays open
    assert picker.isVisible() and s.current_label == 10
    qtbot.keyClick(picker.filter, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not _pickers(window), timeout=WAIT)
    assert s.current_label == 10


def test_status_bar_names_the_class_under_the_cursor(qtbot, window):
    s, canvas, readout = window.session, window.canvas, window.cursor_readout
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :10] = 15
    mask[:, 10:20] = 0
    s.document.apply_labels(mask)
    seen = []
    canvas.hovered.connect(lambda x, y: seen.append((x, y)))

    _move(canvas, 5.5, 4.5)
    assert readout.text() == "under cursor: 15 person"
    assert seen[-1] == (5, 4)
    _move(canvas, 5.6, 4.6)  # the same pixel: no new report
    assert seen == [(5, 4)]
    _move(canvas, 12.5, 4.5)
    assert readout.text() == "under cursor: 0 background"
    _move(canvas, 30.5, 20.5)
    assert readout.text() == "under cursor: void"

    # The read-out follows an edit and a rename under a still mouse.
    s.document.fill(30, 20, 15)
    assert readout.text() == "under cursor: 15 person"
    assert window.class_panel.rename_class(15, "human")
    assert readout.text() == "under cursor: 15 human"

    _move(canvas, -20.0, -20.0)  # off the image
    assert seen[-1] == (-1, -1)
    assert readout.text() == ""
