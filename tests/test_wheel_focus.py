"""The side panels' value widgets leave the wheel to scrolling and the keyboard to the canvas.

Offscreen with pytest-qt against a real main window: a wheel over an unfocused combo scrolls its dock,
and single-key shortcuts work again after a number box is committed or abandoned.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QAbstractScrollArea, QApplication, QLineEdit  # noqa: E402

from deeplab_gui.state.session import Session  # noqa: E402
from deeplab_gui.state.settings import Settings  # noqa: E402
from deeplab_gui.widgets.main_window import MainWindow  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DEEPLAB_GUI_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture
def window(qtbot, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(folder / "a.png")
    win = MainWindow(Session(Settings(tmp_path / "settings.ini")))
    qtbot.addWidget(win)
    # Short enough that the right-hand panels must scroll, as on a small laptop screen.
    win.resize(1000, 420)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is win, timeout=WAIT)
    with qtbot.waitSignal(win.session.current_changed, timeout=WAIT):
        win.session.open_folder(folder)
    yield win
    win.close()


def _enclosing_area(w) -> QAbstractScrollArea:
    p = w.parentWidget()
    while not isinstance(p, QAbstractScrollArea):
        p = p.parentWidget()
    return p


def _wheel(widget, dy: int = -120) -> None:
    """One notch of the wheel (down for a negative dy) over the middle of ``widget``."""
    local = QPointF(widget.width() / 2, widget.height() / 2)
    glob = QPointF(widget.mapToGlobal(local.toPoint()))
    event = QWheelEvent(local, glob, QPoint(0, 0), QPoint(0, dy), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


def _key(qtbot, key) -> None:
    """A key press as the keyboard delivers it: to whichever widget has focus."""
    qtbot.keyClick(QApplication.focusWidget() or QApplication.activeWindow(), key)


def _crf_box(window):
    return window.panels["CRF"].controls["bilateral_weight"].box


def test_wheel_over_an_unfocused_model_combo_scrolls_the_dock_not_the_combo(qtbot, window):
    panel = window.panels["Model"]
    combo = panel.arch_combo
    assert combo.count() > 1
    area = _enclosing_area(combo)
    bar = area.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=WAIT)  # the dock really has to scroll
    bar.setValue(0)
    window.canvas.setFocus()
    index, weights = combo.currentIndex(), panel.weights_combo.currentIndex()

    _wheel(combo, -120)
    _wheel(panel.weights_combo, -120)

    assert combo.currentIndex() == index
    assert panel.weights_combo.currentIndex() == weights
    assert bar.value() > 0, "the wheel should have scrolled the dock"
    assert not combo.hasFocus()


def test_wheel_over_an_unfocused_crf_slider_or_number_box_leaves_the_value(qtbot, window):
    control = window.panels["CRF"].controls["bilateral_weight"]
    window.canvas.setFocus()
    before = window.session.crf.params
    slider_at, box_at = control.slider.value(), control.box.value()

    _wheel(control.slider, 120)
    _wheel(control.box.findChild(QLineEdit), 120)  # the text part of the box gets the wheel first
    _wheel(control.box, 120)

    assert (control.slider.value(), control.box.value()) == (slider_at, box_at)
    assert window.session.crf.params == before


def test_a_focused_combo_still_takes_the_wheel(qtbot, window):
    combo = window.tool_options.view
    combo.setFocus()
    qtbot.waitUntil(combo.hasFocus, timeout=WAIT)
    index = combo.currentIndex()
    _wheel(combo, -120)
    assert combo.currentIndex() != index


def test_after_enter_in_a_crf_number_box_single_keys_reach_the_canvas(qtbot, window):
    box = _crf_box(window)
    box.setFocus()
    qtbot.waitUntil(box.hasFocus, timeout=WAIT)
    label = window.session.current_label
    box.lineEdit().selectAll()
    _key(qtbot, Qt.Key.Key_7)  # digits go into the box while it has focus, not to the class shortcuts
    assert box.value() == 7
    assert window.session.current_label == label

    _key(qtbot, Qt.Key.Key_Return)
    assert window.canvas.hasFocus()
    assert window.session.crf.params.bilateral_weight == 7

    _key(qtbot, Qt.Key.Key_E)
    assert window.canvas.tool.name == "eraser"
    _key(qtbot, Qt.Key.Key_3)
    assert window.session.current_label == 3


def test_escape_in_a_crf_number_box_restores_its_value_and_returns_to_the_canvas(qtbot, window):
    box = _crf_box(window)
    window.canvas.setFocus()
    box.setFocus()
    qtbot.waitUntil(box.hasFocus, timeout=WAIT)
    before = box.value()
    box.lineEdit().selectAll()
    _key(qtbot, Qt.Key.Key_9)
    assert box.value() == 9 != before

    _key(qtbot, Qt.Key.Key_Escape)
    assert box.value() == before
    assert window.session.crf.params.bilateral_weight == before
    assert window.canvas.hasFocus()
    _key(qtbot, Qt.Key.Key_P)
    assert window.canvas.tool.name == "polygon"


def test_choosing_a_combo_entry_or_releasing_a_slider_returns_focus_to_the_canvas(qtbot, window):
    combo = window.panels["CRF"].preset_combo
    combo.setFocus()
    qtbot.waitUntil(combo.hasFocus, timeout=WAIT)
    combo.activated.emit(0)  # what choosing from the open list emits
    assert window.canvas.hasFocus()

    slider = window.panels["CRF"].controls["bilateral_weight"].slider
    qtbot.mouseClick(slider, Qt.MouseButton.LeftButton, pos=QPoint(slider.width() - 3, slider.height() // 2))
    assert window.canvas.hasFocus()
    _key(qtbot, Qt.Key.Key_F)
    assert window.canvas.tool.name == "fill"


def test_clicking_a_number_box_arrow_steps_it_and_returns_focus_to_the_canvas(qtbot, window):
    box = _crf_box(window)
    window.canvas.setFocus()
    before = box.value()
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(box.width() - 4, 3))  # the up arrow
    assert box.value() > before
    assert window.canvas.hasFocus()
    _key(qtbot, Qt.Key.Key_E)
    assert window.canvas.tool.name == "eraser"
