"""The tool bar (an icon per tool, the active one checked) and the brush outline under the pointer."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication, QToolButton

from deeplab_gui.state.session import Session
from deeplab_gui.state.settings import Settings
from deeplab_gui.widgets.canvas.tools import TOOL_KEYS
from deeplab_gui.widgets.main_window import MainWindow

WAIT = 20_000  # ms; generous for a loaded 2-core machine
H, W = 30, 40


@pytest.fixture
def window(qtbot, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    arr = np.zeros((H, W, 3), np.uint8)
    arr[:, W // 2:] = 200
    Image.fromarray(arr).save(d / "a.png")
    win = MainWindow(Session(Settings(os.environ["DEEPLAB_GUI_SETTINGS"])))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    with qtbot.waitSignal(win.session.current_changed, timeout=WAIT):
        win.session.open_folder(d)
    win.canvas.setFocus()
    yield win
    win.session.shutdown()


def _hover(canvas, x: float, y: float) -> None:
    """Move the pointer, no button held, to image pixel coordinates (x, y)."""
    vp = canvas.viewport()
    local = QPointF(canvas.mapFromScene(QPointF(x, y)))
    ev = QMouseEvent(QEvent.Type.MouseMove, local, QPointF(vp.mapToGlobal(local.toPoint())),
                     Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp, ev)


def test_brush_outline_is_its_radius_at_any_zoom_and_follows_the_size_keys(qtbot, window):
    canvas = window.canvas
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    r = canvas.tool.size
    for zoom in (2.0, 5.0):
        canvas.set_zoom(zoom)
        _hover(canvas, 20.5, 15.5)
        item = canvas.outline_item
        assert item.isVisible()
        rect = item.rect()
        # Centred on the pointer (which the view reads to a whole screen pixel).
        assert rect.center().x() == pytest.approx(20.5, abs=1 / zoom)
        assert rect.center().y() == pytest.approx(15.5, abs=1 / zoom)
        assert rect.width() == pytest.approx(2 * r)
        # On screen the circle grows with the zoom: the painted disc's size, not a fixed cursor.
        assert canvas.mapFromScene(rect).boundingRect().width() == pytest.approx(2 * r * zoom, abs=2)

    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.tool.size > r
    assert canvas.outline_item.rect().width() == pytest.approx(2 * canvas.tool.size)
    assert canvas.outline_item.rect().center().x() == pytest.approx(20.5, abs=0.2)
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.outline_item.rect().width() == pytest.approx(2 * canvas.tool.size)
    assert canvas.tool.size < r

    QApplication.sendEvent(canvas, QEvent(QEvent.Type.Leave))  # the pointer leaves the canvas
    assert not canvas.outline_item.isVisible()
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)             # a size change off the canvas: still hidden
    assert not canvas.outline_item.isVisible()

    qtbot.keyClick(canvas, Qt.Key.Key_E)                        # the eraser has one too
    _hover(canvas, 10.5, 5.5)
    assert canvas.outline_item.isVisible()
    assert canvas.outline_item.rect().width() == pytest.approx(2 * canvas.tool.size)
    qtbot.keyClick(canvas, Qt.Key.Key_P)                        # the polygon has none
    assert not canvas.outline_item.isVisible()
    _hover(canvas, 12.5, 8.5)
    assert not canvas.outline_item.isVisible()


def test_tool_keys_check_the_tool_bar_and_its_buttons_choose_the_tool(qtbot, window):
    canvas, bar = window.canvas, window.tool_bar
    buttons = {}
    for name, key in TOOL_KEYS.items():
        act = window.tool_actions[name]
        assert act in bar.actions()
        assert not act.icon().isNull()
        assert act.toolTip().endswith(f"({key})")
        button = bar.widgetForAction(act)
        assert isinstance(button, QToolButton)
        buttons[name] = button

    for name, key in TOOL_KEYS.items():                         # by key: the bar shows which tool
        qtbot.keyClick(canvas, getattr(Qt.Key, f"Key_{key}"))
        assert canvas.tool.name == name
        assert [n for n, b in buttons.items() if b.isChecked()] == [name]

    for name in ("polygon", "snap", "eraser", "fill", "brush"):  # by click on the bar
        qtbot.mouseClick(buttons[name], Qt.MouseButton.LeftButton)
        assert canvas.tool.name == name
        assert [n for n, b in buttons.items() if b.isChecked()] == [name]


def test_tool_bar_undoes_and_steps_the_brush_size(qtbot, window):
    canvas, bar, doc = window.canvas, window.tool_bar, window.session.document
    by_tip = {a.toolTip(): a for a in bar.actions() if a.toolTip()}
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    r = canvas.tool.size
    by_tip["Larger brush (])"].trigger()
    assert canvas.tool.size > r
    by_tip["Smaller brush ([)"].trigger()
    assert canvas.tool.size == pytest.approx(r)
    qtbot.keyClick(canvas, Qt.Key.Key_F)  # the fill has no size: the steps say so
    assert not by_tip["Larger brush (])"].isEnabled()

    doc.fill(1, 1, 3)
    assert doc.mask[1, 1] == 3
    next(a for t, a in by_tip.items() if t.startswith("Undo")).trigger()
    assert doc.mask[1, 1] != 3
    next(a for t, a in by_tip.items() if t.startswith("Redo")).trigger()
    assert doc.mask[1, 1] == 3
