"""The effort meter in the window: the status bar's clock and actions, and the progress window."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QPalette
from PySide6.QtWidgets import QApplication

from deeplab_gui.state.effort import EffortReport
from engine import AnnotationStore
from engine.store import Effort

WAIT = 20_000
W, H = 24, 16


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.full((H, W, 3), 50 * i, np.uint8)).save(d / f"img{i}.png")
    return d


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def _mouse(canvas, kind, x, y, buttons=Qt.MouseButton.LeftButton, button=Qt.MouseButton.LeftButton):
    vp = canvas.viewport()
    local = QPointF(canvas.mapFromScene(QPointF(x, y)))
    ev = QMouseEvent(kind, local, QPointF(vp.mapToGlobal(local.toPoint())), button, buttons,
                     Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp, ev)


def test_status_bar_clock_runs_with_input_and_counts_a_brush_stroke(qtbot, open_window, folder):
    win = open_window(folder)
    s, clock = win.session, Clock()
    s.effort.clock = clock
    win.set_tool("brush")
    assert win.effort_label.text() == "⏱ 0:00 · 0 actions"
    _mouse(win.canvas, QEvent.Type.MouseButtonPress, 5, 5)  # the window's filter feeds the meter
    assert win.effort_label.foregroundRole() == QPalette.ColorRole.WindowText  # the clock runs
    clock.t += 3
    _mouse(win.canvas, QEvent.Type.MouseMove, 10, 8, button=Qt.MouseButton.NoButton)
    clock.t += 2
    _mouse(win.canvas, QEvent.Type.MouseButtonRelease, 10, 8, buttons=Qt.MouseButton.NoButton)
    assert s.effort.actions_by_tool == {"brush": 1}
    assert win.effort_label.text() == "⏱ 0:05 · 1 action"  # an action shows at once
    clock.t += 100  # the release is no input: the clock runs 30 s from the last move, at 3 s
    qtbot.waitUntil(lambda: win.effort_label.text() == "⏱ 0:33 · 1 action", timeout=WAIT)  # the tick
    assert not s.effort.running
    clock.t += 100  # idle: the clock stands still, and the label says so by its colour
    s.effort.changed.emit()
    assert win.effort_label.text() == "⏱ 0:33 · 1 action"
    assert win.effort_label.foregroundRole() == QPalette.ColorRole.PlaceholderText
    qtbot.keyClick(win.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # a shortcut is input too
    clock.t += 4
    s.effort.changed.emit()
    assert win.effort_label.text() == "⏱ 0:37 · 2 actions"
    assert win.effort_label.foregroundRole() == QPalette.ColorRole.WindowText  # running again
    assert s.effort.actions_by_tool == {"brush": 1, "undo": 1}


def _seed(folder, rows, edited=()):
    with AnnotationStore.open(folder) as store:
        for image_id, seconds, actions, accepted, when in rows:
            store.add_effort(image_id, seconds=seconds, actions=actions, accepted=accepted, now=when)
        for image_id in edited:
            store.set_status(image_id, "edited")


def test_progress_window_reads_the_store_and_exports_csv(qtbot, open_window, folder, tmp_path):
    _seed(folder, [("img2.png", 60.0, {"brush": 6}, True, 100.0),
                   ("img0.png", 30.0, {"fill": 1, "undo": 1}, False, 200.0),
                   ("img3.png", 5.0, {}, False, 300.0),   # looked at, never edited: not done
                   ("img1.png", 9.0, {"brush": 1, "undo": 1}, False, 250.0)],  # its edit undone: not done
          edited=["img0.png"])
    win = open_window(folder)
    dialog = win.open_progress()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=WAIT)
    assert dialog.plot.left == [(1, 60.0), (2, 30.0)] and dialog.plot.right == [(1, 6), (2, 2)]
    assert dialog.table.rowCount() == 1
    assert [dialog.cell(0, c) for c in range(4)] == ["starting model", "1–2", "0:45", "4.0"]
    assert "2 image(s) done (1 accepted)" in dialog.summary.text()
    out = tmp_path / "effort.csv"
    assert dialog.export_csv(out)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["image_id"] for r in rows] == ["img2.png", "img0.png", "img1.png", "img3.png"]
    assert (rows[0]["seconds"], rows[0]["actions"], rows[0]["actions_brush"], rows[0]["accepted"]) == \
        ("60.0", "6", "6", "yes")
    assert (rows[1]["actions_fill"], rows[1]["actions_undo"], rows[1]["accepted"]) == ("1", "1", "no")
    assert rows[2]["done_at"] == "" and rows[3]["done_at"] == "" and rows[3]["seconds"] == "5.0"
    assert not dialog.export_csv(tmp_path / "missing-folder" / "x.csv")  # said in the window, no exception
    assert "Could not write" in dialog.summary.text()


def test_progress_window_averages_before_and_after_a_version(qtbot, open_window, folder):
    win = open_window(folder)
    dialog = win.open_progress()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=WAIT)
    efforts = [Effort("a.png", 120.0, {"brush": 10}, accepted_at=1.0),
               Effort("b.png", 80.0, {"brush": 6}, accepted_at=2.0),
               Effort("c.png", 50.0, {"brush": 3}, accepted_at=4.0, version="finetune-v001.safetensors"),
               Effort("d.png", 30.0, {"brush": 1}, accepted_at=5.0, version="finetune-v001.safetensors")]
    dialog.show_report(EffortReport(efforts, [("finetune-v001.safetensors", 3.0)]))
    assert dialog.table.rowCount() == 2
    assert [dialog.cell(0, c) for c in range(6)] == ["starting model", "1–2", "1:40", "8.0", "–", "–"]
    assert [dialog.cell(1, c) for c in range(6)] == ["finetune-v001.safetensors", "3–4", "0:40", "2.0",
                                                    "-60%", "-75%"]
    assert dialog.plot.markers == [(2.5, "finetune-v001.safetensors")]  # between the 2nd and 3rd image
    dialog.resize(640, 520)
    dialog.plot.grab()  # paints, marker and all, without error
    assert dialog.plot.x_at(1) < dialog.plot.x_at(2.5) < dialog.plot.x_at(4)


def test_a_long_series_is_thinned_to_each_pixel_column_s_extremes():
    from deeplab_gui.widgets.dialogs.curve_plot import _thinned
    rng = np.random.default_rng(0)
    points = [QPointF(10 + i * 0.05, float(y)) for i, y in enumerate(rng.uniform(0, 300, 4000))]
    thin = _thinned(points)
    columns = [int(q.x()) for q in thin]
    assert len(thin) <= 2 * (len(set(columns)) + 1) < len(points)
    assert min(q.y() for q in thin) == min(q.y() for q in points)
    assert max(q.y() for q in thin) == max(q.y() for q in points)
    assert columns == sorted(columns)  # still left to right
    assert _thinned(points[:50:10]) == points[:50:10]  # a short one is left alone


def test_progress_plot_counts_seconds_from_zero_and_keeps_a_late_version_s_name_in_the_frame(qtbot):
    from deeplab_gui.widgets.dialogs.curve_plot import _MARK_COLOUR, CurvePlot
    plot = CurvePlot(left_name="seconds per image", right_name="actions per image", x_name="image",
                     right_range=None, start=1, left_dots=True, left_from_zero=True)
    qtbot.addWidget(plot)
    plot.resize(400, 200)
    name = "finetune-v001.safetensors"
    plot.set_series([(1, 120.0), (2, 100.0), (3, 60.0)], [(1, 9), (2, 7), (3, 2)], 3, [(2.9, name)])
    assert plot.loss_range()[0] == 0.0  # 120 -> 60 halves the height, as it halves the time
    loss_plot = CurvePlot()  # the fine-tune dialog's loss keeps its axis fitted to the data
    loss_plot.set_series([(0, 1.2), (1, 1.0)], [], 1)
    assert loss_plot.loss_range()[0] > 0.5
    image = plot.grab().toImage()
    area = plot.plot_area()
    line_x = round(plot.x_at(2.9))
    label_row = range(int(area.top()) + 2, int(area.top()) + plot.fontMetrics().height() + 2)
    green = {x for x in range(int(area.left()), int(area.right()))
             for y in label_row if image.pixelColor(x, y) == _MARK_COLOUR}
    # The version's name, too wide to fit right of its line, is drawn left of it in full.
    assert green and min(green) < line_x - plot.fontMetrics().horizontalAdvance(name) // 2


def test_progress_window_shows_every_model_s_averages_without_a_scroll_bar(qtbot, open_window, folder):
    win = open_window(folder)
    dialog = win.open_progress()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=WAIT)
    names = [None, *(f"finetune-v00{i}.safetensors" for i in (1, 2, 3))]  # three fine-tunes so far
    efforts = [Effort(f"{i}.png", 100.0 - 10 * i, {"brush": 9 - i}, accepted_at=float(i), version=names[i // 2])
               for i in range(8)]
    dialog.show_report(EffortReport(efforts, [(n, 2.0 * k - 0.5) for k, n in enumerate(names) if n]))
    assert dialog.table.rowCount() == 4
    dialog.show()
    qtbot.waitExposed(dialog)
    table = dialog.table
    # The table grows to its rows once the layout has had its turn: all four show, and no scroll bar.
    qtbot.waitUntil(lambda: table.viewport().height() >= table.rowViewportPosition(3) + table.rowHeight(3),
                    timeout=WAIT)
    assert not table.horizontalScrollBar().isVisible() and not table.verticalScrollBar().isVisible()
    dialog.show_report(EffortReport(efforts[:2], []))  # one model, one row: no blank band under it
    one_row = table.horizontalHeader().height() + table.rowHeight(0) + 2 * table.frameWidth()
    qtbot.waitUntil(lambda: table.rowCount() == 1 and table.height() <= one_row + 2, timeout=WAIT)


def test_the_window_losing_the_focus_stops_the_clock(qtbot, open_window, folder):
    win = open_window(folder)
    s, clock = win.session, Clock()
    s.effort.clock = clock
    _mouse(win.canvas, QEvent.Type.MouseMove, 5, 5, button=Qt.MouseButton.NoButton)  # hovering the image
    clock.t += 4
    assert s.effort.running
    QApplication.sendEvent(win, QEvent(QEvent.Type.WindowDeactivate))
    assert not s.effort.running and win.effort_label.foregroundRole() == QPalette.ColorRole.PlaceholderText
    clock.t += 100
    assert s.effort.seconds == pytest.approx(4)
