"""The editing tools driven directly: a mask document, a plain target and a recording view; no canvas,
no session, no window (only the canvas test at the end needs a QApplication)."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from deeplab_gui.editing.document import MaskDocument
from deeplab_gui.widgets.canvas.tools import (
    BrushTool,
    EraserTool,
    FillTool,
    PickerTool,
    PolygonTool,
    SnapTool,
    make_tools,
)
from deeplab_gui.widgets.canvas.toolview import SnapInput
from engine import VOID
from engine.crf import DEEPLAB_V1

H, W = 30, 40
NO_MOD = Qt.KeyboardModifier.NoModifier
COLORS = [(0, 0, 0), (200, 0, 0), (0, 200, 0), (0, 0, 200)]


class FakeView:
    """Records the previews a tool asks for."""

    def __init__(self) -> None:
        self.path: dict | None = None
        self.shown = 0

    def show_path(self, points, *, closed=False, width=0.0, color=(255, 255, 0, 255)) -> None:
        self.path = {"points": list(points), "closed": closed, "width": width, "color": tuple(color)}
        self.shown += 1

    def clear_preview(self) -> None:
        self.path = None

    def show_outline(self, center, radius) -> None:
        self.outline = (tuple(center), radius)

    def clear_outline(self) -> None:
        self.outline = None


class FakeTarget:
    """What a tool edits, plus the CRF-snap input; ``run_task`` runs now, or later when ``deferred``."""

    def __init__(self, doc: MaskDocument | None, label: int = 1, image: np.ndarray | None = None) -> None:
        self.document = doc
        self.current_label = label
        self.class_colors = COLORS
        self.image = image
        self.deferred = False
        self.pending: list = []
        self.errors: list[str] = []

    def snap_input(self):
        if self.image is None:
            return None
        return SnapInput(self.image, None, DEEPLAB_V1, len(COLORS))

    def run_task(self, fn, *, on_result, on_error, task_name):
        job = (fn, on_result, on_error)
        if self.deferred:
            self.pending.append(job)
        else:
            self.finish(job)
        return task_name

    def finish(self, job) -> None:
        fn, on_result, on_error = job
        try:
            value = fn()
        except ValueError as e:
            on_error(str(e))
        else:
            on_result(value)

    def report_error(self, text: str) -> None:
        self.errors.append(text)


def _doc() -> MaskDocument:
    return MaskDocument(np.full((H, W), VOID, np.uint8))


def _tool(cls, target, view=None, size=2.0):
    tool = cls()
    tool.activate(view if view is not None else FakeView(), target)
    tool.size = size
    return tool


def _drag(tool, points, modifiers=NO_MOD) -> None:
    (x0, y0), rest = points[0], points[1:]
    tool.press(QPointF(x0, y0), modifiers)
    for x, y in rest:
        tool.move(QPointF(x, y), True)
    tool.release(QPointF(*points[-1]))


def _halves_image() -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[:, W // 2:] = 220
    return img


def test_brush_stroke_paints_the_current_class_as_one_undo_step():
    doc = _doc()
    tool = _tool(BrushTool, FakeTarget(doc, label=3))
    _drag(tool, [(5.5, 5.5), (15.5, 5.5), (25.5, 5.5)])
    assert doc.mask[5, 5] == 3 and doc.mask[5, 20] == 3 and doc.mask[20, 5] == VOID
    assert doc.undo_depth == 1 and not doc.in_stroke
    tool.move(QPointF(5.5, 20.5), False)  # hovering paints nothing
    assert doc.mask[20, 5] == VOID and doc.undo_depth == 1


def test_brush_reads_the_target_afresh_each_stroke():
    first, second = _doc(), _doc()
    target = FakeTarget(first, label=1)
    tool = _tool(BrushTool, target)
    _drag(tool, [(5.5, 5.5)])
    target.document, target.current_label = second, 2  # another image, another class
    _drag(tool, [(10.5, 10.5)])
    assert first.mask[5, 5] == 1 and first.mask[10, 10] == VOID
    assert second.mask[10, 10] == 2 and second.mask[5, 5] == VOID


def test_eraser_clears_to_void_and_with_shift_to_background():
    doc = MaskDocument(np.full((H, W), 4, np.uint8))
    tool = _tool(EraserTool, FakeTarget(doc, label=2))
    _drag(tool, [(5.5, 5.5)])
    _drag(tool, [(30.5, 20.5)], modifiers=Qt.KeyboardModifier.ShiftModifier)
    assert doc.mask[5, 5] == VOID and doc.mask[20, 30] == 0 and doc.mask[15, 15] == 4
    assert doc.undo_depth == 2


def test_deactivating_ends_a_stroke_in_progress():
    doc = _doc()
    tool = _tool(BrushTool, FakeTarget(doc, label=1))
    tool.press(QPointF(5.5, 5.5), NO_MOD)
    assert doc.in_stroke
    tool.deactivate()
    assert not doc.in_stroke and doc.undo_depth == 1 and tool.view is None


def test_fill_and_picker_use_and_set_the_current_class():
    mask = np.full((H, W), VOID, np.uint8)
    mask[:, :10] = 1
    doc = MaskDocument(mask)
    target = FakeTarget(doc, label=2)
    _tool(FillTool, target).press(QPointF(25.5, 15.5), NO_MOD)
    assert doc.mask[15, 25] == 2 and doc.mask[15, 5] == 1
    picker = _tool(PickerTool, target)
    picker.press(QPointF(5.5, 5.5), NO_MOD)
    assert target.current_label == 1
    doc.apply_labels(np.full((H, W), VOID, np.uint8))
    picker.press(QPointF(5.5, 5.5), NO_MOD)   # void picks nothing
    picker.press(QPointF(500.0, 5.5), NO_MOD)  # outside the image: nothing, no error
    assert target.current_label == 1


def test_polygon_shows_a_rubber_band_and_fills_on_enter():
    doc, view = _doc(), FakeView()
    tool = _tool(PolygonTool, FakeTarget(doc, label=3), view)
    for x, y in ((2, 2), (20, 2), (20, 20)):
        tool.press(QPointF(x, y), NO_MOD)
    tool.move(QPointF(2, 20), False)
    assert view.path["points"] == [(2, 2), (20, 2), (20, 20), (2, 20)] and view.path["closed"]
    assert view.path["width"] == 0  # a hairline at any zoom
    assert tool.key(Qt.Key.Key_Backspace) and view.path["points"] == [(2, 2), (20, 2)]
    tool.press(QPointF(20, 20), NO_MOD)
    assert tool.key(Qt.Key.Key_Return)
    assert view.path is None and tool.points == []
    assert doc.mask[3, 15] == 3 and doc.mask[15, 3] == VOID and doc.undo_depth == 1
    assert not tool.key(Qt.Key.Key_Return)  # nothing left to close


def test_polygon_escape_drops_points_and_double_click_closes():
    doc, view = _doc(), FakeView()
    tool = _tool(PolygonTool, FakeTarget(doc, label=2), view)
    for x, y in ((2, 2), (20, 2)):
        tool.press(QPointF(x, y), NO_MOD)
    assert tool.key(Qt.Key.Key_Escape) and view.path is None and tool.points == []
    for x, y in ((2, 2), (20, 2), (20, 20), (20, 20)):  # a double-click also delivers a press
        tool.press(QPointF(x, y), NO_MOD)
    tool.double_click(QPointF(20, 20))
    assert doc.mask[3, 15] == 2 and doc.undo_depth == 1


def test_snap_previews_the_stroke_and_applies_the_crf_result_as_one_undo_step():
    doc, view = _doc(), FakeView()
    target = FakeTarget(doc, label=2, image=_halves_image())
    tool = _tool(SnapTool, target, view)
    tool.press(QPointF(30.5, 10.5), NO_MOD)
    tool.move(QPointF(32.5, 12.5), True)
    assert view.path == {"points": [(30.5, 10.5), (32.5, 12.5)], "closed": False, "width": 4.0,
                         "color": (0, 200, 0, 200)}  # the class's colour, as wide as the brush
    tool.release(QPointF(32.5, 12.5))
    assert view.path is None
    assert doc.undo_depth == 1 and doc.undo_description == "CRF snap"
    assert doc.mask[11, 31] == 2
    assert target.errors == []


def test_snap_result_is_dropped_when_another_image_is_shown_meanwhile():
    doc = _doc()
    target = FakeTarget(doc, label=2, image=_halves_image())
    target.deferred = True
    tool = _tool(SnapTool, target)
    _drag(tool, [(30.5, 10.5), (32.5, 12.5)])
    assert len(target.pending) == 1 and doc.undo_depth == 0
    target.document = _doc()  # the person moved on before the CRF finished
    target.finish(target.pending.pop())
    assert doc.undo_depth == 0 and (doc.mask == VOID).all()
    assert target.document.undo_depth == 0


def test_snap_does_nothing_without_full_resolution_pixels_and_reports_failures():
    doc, view = _doc(), FakeView()
    target = FakeTarget(doc, label=2, image=None)
    tool = _tool(SnapTool, target, view)
    _drag(tool, [(30.5, 10.5)])
    assert tool.task is None and view.path is None and doc.undo_depth == 0
    target.image = np.zeros((H, W, 3), np.float32)  # pixels the CRF refuses
    _drag(tool, [(30.5, 10.5)])
    assert doc.undo_depth == 0 and len(target.errors) == 1
    assert target.errors[0].startswith("CRF snap failed: ")


def test_late_snap_result_leaves_the_next_tools_preview_alone():
    doc, view = _doc(), FakeView()
    target = FakeTarget(doc, label=2, image=_halves_image())
    target.deferred = True
    snap = _tool(SnapTool, target, view)
    _drag(snap, [(30.5, 10.5)])
    snap.deactivate()
    polygon = _tool(PolygonTool, target, view)
    polygon.press(QPointF(2, 2), NO_MOD)
    target.finish(target.pending.pop())
    assert view.path is not None and view.path["points"] == [(2, 2), (2, 2)]
    assert doc.undo_depth == 1  # the snap still lands: the image did not change


def test_make_tools_offers_every_tool_once():
    tools = make_tools()
    assert set(tools) == {"brush", "eraser", "polygon", "fill", "picker", "snap", "superpixel", "crfclick", "click"}
    assert all(t.name == name and t.view is None for name, t in tools.items())


def test_canvas_draws_and_clears_tool_previews(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from PySide6.QtWidgets import QGraphicsPathItem

    from deeplab_gui.state.session import Session
    from deeplab_gui.state.settings import Settings
    from deeplab_gui.widgets.canvas.canvas import Canvas

    session = Session(Settings(tmp_path / "settings.ini"))
    canvas = Canvas(session)
    qtbot.addWidget(canvas)

    def previews():
        return [i for i in canvas.scene().items() if isinstance(i, QGraphicsPathItem)]

    canvas.show_path([(1, 1), (5, 1), (5, 5)], closed=True)
    (item,) = previews()
    assert item.path().boundingRect().getRect() == (1, 1, 4, 4) and item.pen().isCosmetic()
    assert item.zValue() > canvas.overlay.zValue()
    canvas.show_path([(1, 1), (9, 1)], width=6.0, color=(0, 200, 0, 200))
    (item,) = previews()  # replaced, not added
    pen = item.pen()
    assert pen.widthF() == 6.0 and not pen.isCosmetic() and pen.color().getRgb() == (0, 200, 0, 200)
    canvas.clear_preview()
    assert previews() == []
    session.shutdown()
