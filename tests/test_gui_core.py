"""The app core offscreen with pytest-qt: session, image list, canvas and tools, shortcuts, saving."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from deeplab_gui.state.session import Session
from deeplab_gui.state.settings import Settings
from engine import Status, StoreWriteError

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work
ROOT = Path(__file__).resolve().parent.parent
W, H = 40, 30


@pytest.fixture
def folder(tmp_path):
    """Three 40×30 PNGs (left half dark, right half bright) and one corrupt file."""
    d = tmp_path / "images"
    d.mkdir()
    for i in range(3):
        arr = np.zeros((H, W, 3), np.uint8)
        arr[:, W // 2:] = 200 + i
        Image.fromarray(arr).save(d / f"img{i}.png")
    (d / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return d


@pytest.fixture
def window(open_window, folder):
    return open_window(folder)


def _select(qtbot, s: Session, image_id: str) -> None:
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.select(image_id)


def _mouse(canvas, kind, x, y, buttons=Qt.MouseButton.LeftButton, button=Qt.MouseButton.LeftButton,
           modifiers=Qt.KeyboardModifier.NoModifier):
    """Send a mouse event to the canvas viewport at image coordinates (x, y)."""
    vp = canvas.viewport()
    local = QPointF(canvas.mapFromScene(QPointF(x, y)))
    ev = QMouseEvent(kind, local, QPointF(vp.mapToGlobal(local.toPoint())), button, buttons, modifiers)
    QApplication.sendEvent(vp, ev)


def _stroke(canvas, points, modifiers=Qt.KeyboardModifier.NoModifier):
    (x0, y0), rest = points[0], points[1:]
    _mouse(canvas, QEvent.Type.MouseButtonPress, x0, y0, modifiers=modifiers)
    for x, y in rest:
        _mouse(canvas, QEvent.Type.MouseMove, x, y, button=Qt.MouseButton.NoButton, modifiers=modifiers)
    x, y = points[-1]
    _mouse(canvas, QEvent.Type.MouseButtonRelease, x, y, buttons=Qt.MouseButton.NoButton, modifiers=modifiers)


# ---------------------------------------------------------------------------- session
def test_open_folder_and_corrupt_image(qtbot, sessions, folder):
    s = sessions(folder)
    assert s.ids == ["img0.png", "img1.png", "img2.png", "zz_bad.png"]
    assert s.image_id == "img0.png" and s.image.shape == (H, W, 3)
    assert s.document.mask.shape == (H, W) and (s.document.mask == 255).all()  # unlabelled: all void
    with qtbot.waitSignal(s.message, timeout=WAIT,
                          check_params_cb=lambda level, text: level == "warning" and "zz_bad.png" in text):
        s.select("zz_bad.png")
    qtbot.waitUntil(lambda: s.image_id == "zz_bad.png")
    assert s.image is None and s.document is None and s.store.error("zz_bad.png")
    _select(qtbot, s, "img1.png")  # the rest still works
    assert s.image.shape == (H, W, 3) and s.document is not None


def test_second_instance_is_read_only(qtbot, sessions, folder):
    sessions(folder)
    msgs = []
    s2 = Session(Settings(folder.parent / "other.ini"))
    s2.message.connect(lambda level, text: msgs.append((level, text)))
    try:
        with qtbot.waitSignal(s2.current_changed, timeout=WAIT):
            s2.open_folder(folder)
        assert s2.read_only and any("read-only" in t for _, t in msgs)
        s2.document.apply_labels(np.zeros((H, W), np.uint8))
        assert s2.save_current() is False and s2.dirty  # kept in memory, nothing written
    finally:
        s2.shutdown()


def test_save_reopen_same_mask(qtbot, sessions, folder):
    s = sessions(folder)
    s.document.begin_stroke(3, 4.0)
    s.document.stroke_to(10, 10)
    s.document.stroke_to(30, 20)
    s.document.end_stroke()
    expected = s.document.mask.copy()
    assert s.dirty and s.save_current() and not s.dirty
    assert s.store.status("img0.png") is Status.EDITED
    s.shutdown()
    s2 = sessions(folder)
    assert s2.image_id == "img0.png"
    np.testing.assert_array_equal(s2.document.mask, expected)


def test_failed_save_keeps_work_and_says_why(qtbot, window, monkeypatch):
    s = window.session

    def refuse(*a, **k):
        raise StoreWriteError("could not save the mask of img0.png: the disk is full; the previous "
                              "version on disk is kept")
    monkeypatch.setattr(s.store, "save_mask", refuse)
    s.document.apply_labels(np.full((H, W), 2, np.uint8))
    with qtbot.waitSignal(s.message, timeout=WAIT, check_params_cb=lambda lv, t: lv == "error" and "disk is full" in t):
        assert s.save_current() is False
    assert s.dirty and window.windowTitle().endswith("img0.png *")
    assert ("error" in {lv for lv, _ in window.messages})
    _select(qtbot, s, "img1.png")       # switching: the failed document stays in memory
    _select(qtbot, s, "img0.png")
    assert (s.document.mask == 2).all() and s.dirty
    for _ in range(3):                  # the retries fail the same way: said once, one line in the box
        s.autosave()
        s.saves.writer.flush()
    errors = [t for lv, t in window.messages if lv == "error"]
    assert len(errors) == 1, errors
    window.show_message("error", errors[0])
    assert window._box.text().count("disk is full") == 1
    monkeypatch.undo()
    s.autosave()  # queued on the writer thread; the document is marked saved when it lands
    qtbot.waitUntil(lambda: not s.dirty, timeout=WAIT)
    assert (s.store.load_mask("img0.png") == 2).all()
    qtbot.waitUntil(lambda: any(lv == "info" and "saved img0.png" in t for lv, t in window.messages), timeout=WAIT)


def _hold_saves(monkeypatch, store):
    """Make the store's mask writes wait for the returned gate (a slow or stalled disk)."""
    gate, started = threading.Event(), threading.Event()
    real = store.save_mask

    def slow(*a, **k):
        started.set()
        assert gate.wait(30)
        return real(*a, **k)
    monkeypatch.setattr(store, "save_mask", slow)
    return gate, started


def test_switching_images_does_not_wait_for_the_disk(qtbot, sessions, folder, monkeypatch):
    s = sessions(folder)
    gate, started = _hold_saves(monkeypatch, s.store)
    s.document.apply_labels(np.full((H, W), 3, np.uint8))
    _select(qtbot, s, "img1.png")  # the autosave on switching is queued, the switch goes on
    assert started.wait(WAIT / 1000) and not gate.is_set()
    assert s.image_id == "img1.png" and s.saves.writer.pending == 1
    assert s.store.status("img0.png") is Status.UNLABELED  # not on disk yet
    gate.set()
    # The store commits the status before it renames the mask into place: wait for the whole write.
    qtbot.waitUntil(lambda: s.saves.writer.pending == 0, timeout=WAIT)
    assert s.store.status("img0.png") is Status.EDITED
    assert (s.store.load_mask("img0.png") == 3).all()


def test_switching_back_before_the_write_lands_shows_the_strokes(qtbot, sessions, folder, monkeypatch):
    s = sessions(folder)
    gate, started = _hold_saves(monkeypatch, s.store)
    doc = s.document
    s.document.apply_labels(np.full((H, W), 4, np.uint8))
    _select(qtbot, s, "img1.png")
    assert started.wait(WAIT / 1000)
    _select(qtbot, s, "img0.png")  # the disk still holds the old (empty) mask
    assert s.document is doc and (s.document.mask == 4).all() and s.document.can_undo
    gate.set()
    qtbot.waitUntil(lambda: s.saves.writer.pending == 0, timeout=WAIT)
    qtbot.waitUntil(lambda: not s.dirty, timeout=WAIT)
    assert (s.store.load_mask("img0.png") == 4).all()


def test_switching_image_in_the_middle_of_a_stroke_keeps_it_as_a_persons_undo_step(qtbot, sessions, folder):
    """A / D pressed while the brush is still down: the part painted so far is the person's (saved
    as confirmed, so training and export count it), one undo step, and the image's earlier steps
    stay for when the person comes back."""
    s = sessions(folder)
    doc = s.document
    doc.begin_stroke(2, 3)
    doc.stroke_to(5, 5)
    doc.stroke_to(15, 5)
    doc.end_stroke()
    doc.begin_stroke(5, 3)
    doc.stroke_to(5, 20)
    doc.stroke_to(15, 20)                      # the button is still down
    painted = doc.mask == 5
    assert painted.any() and doc.undo_depth == 1
    _select(qtbot, s, "img1.png")
    assert not doc.in_stroke and doc.undo_depth == 2 and doc.confirmed[painted].all()
    qtbot.waitUntil(lambda: s.saves.writer.pending == 0, timeout=WAIT)
    assert s.store.load_confirmed("img0.png")[painted].all()
    _select(qtbot, s, "img0.png")
    assert s.document is doc and s.document.can_undo
    s.history.undo()
    assert not (s.document.mask == 5).any() and (s.document.mask == 2).any()


def test_an_edit_is_on_disk_seconds_later_without_a_save_or_a_switch(qtbot, sessions, folder, monkeypatch):
    """A kill loses at most a few seconds: the mask is saved a moment after the last edit, and while
    edits keep coming, no later than a bound after the first unsaved one; not while a stroke is open."""
    import deeplab_gui.state.session as session_module
    monkeypatch.setattr(session_module, "IDLE_SAVE_MS", 60)
    monkeypatch.setattr(session_module, "UNSAVED_MAX_MS", 400)
    monkeypatch.setattr(session_module, "AUTOSAVE_MS", 10**9)
    s = sessions(folder)
    s._timer.stop()   # only the saves after edits
    s.document.apply_labels(np.full((H, W), 3, np.uint8))
    qtbot.waitUntil(lambda: s.store.status("img0.png") is Status.EDITED and not s.dirty, timeout=WAIT)
    assert (s.store.load_mask("img0.png") == 3).all()
    # Edits that keep coming: only the bound on the first unsaved one can save them (the wait after
    # the last edit is made longer than the test).
    monkeypatch.setattr(session_module, "IDLE_SAVE_MS", 10**9)
    doc, start, saved = s.document, time.monotonic(), []
    s.saved.connect(lambda ok: saved.append(time.monotonic()))
    while not saved and time.monotonic() - start < WAIT / 1000:
        doc.apply_labels(np.full((H, W), 4 if (doc.mask == 5).all() else 5, np.uint8))
        qtbot.wait(20)
    assert saved and doc.undo_depth >= 3   # edits were still coming
    # A stroke still being dragged waits for the button to come up.
    monkeypatch.setattr(session_module, "IDLE_SAVE_MS", 60)
    qtbot.waitUntil(lambda: not s.dirty, timeout=WAIT)
    saved.clear()
    doc.begin_stroke(7, 2)
    doc.stroke_to(3, 3)
    qtbot.wait(300)
    assert not saved and s.dirty
    doc.end_stroke()
    qtbot.waitUntil(lambda: bool(saved) and not s.dirty, timeout=WAIT)
    assert (s.store.load_mask("img0.png") == 7).any()


def test_rescan_lists_images_added_since_the_folder_opened(qtbot, sessions, folder):
    s = sessions(folder)
    _select(qtbot, s, "img1.png")
    s.document.apply_labels(np.full((H, W), 2, np.uint8))
    doc, said = s.document, []
    s.message.connect(lambda level, text: said.append(text))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "new_one.png")
    opened = []
    s.folder_opened.connect(lambda: opened.append(1))
    with qtbot.waitSignal(s.images_changed, timeout=WAIT):
        s.rescan()
    assert not opened   # the same folder: nothing reloads (model, histories, embeddings)
    assert "new_one.png" in s.store.ids()
    assert s.image_id == "img1.png" and s.document is doc and doc.can_undo   # the person stays where they were
    qtbot.waitUntil(lambda: any("1 new" in t for t in said), timeout=WAIT)


def test_a_read_only_folder_rescans_too_keeping_its_edits(qtbot, sessions, folder):
    first = sessions(folder)                      # holds the folder
    s = sessions(folder)
    assert s.read_only and not first.read_only
    s.document.apply_labels(np.full((H, W), 3, np.uint8))   # in memory only
    doc = s.document
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "late.png")
    with qtbot.waitSignal(s.images_changed, timeout=WAIT):
        s.rescan()
    assert "late.png" in s.store.ids() and s.read_only and s.document is doc and (doc.mask == 3).all()


def test_f5_rescans_and_the_list_keeps_the_image_on_screen_selected(qtbot, window, folder):
    s = window.session
    _select(qtbot, s, "img2.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "aa_first.png")
    with qtbot.waitSignal(s.images_changed, timeout=WAIT):
        qtbot.keyClick(window, Qt.Key.Key_F5)
    lst = window.image_list
    assert lst.model.row_of("aa_first.png") >= 0
    assert lst.view.currentIndex().row() == lst.model.row_of("img2.png")


def test_strokes_made_while_a_save_is_running_stay_unsaved_until_saved(qtbot, sessions, folder, monkeypatch):
    s = sessions(folder)
    gate, started = _hold_saves(monkeypatch, s.store)
    s.document.apply_labels(np.full((H, W), 3, np.uint8))
    s.autosave()
    assert started.wait(WAIT / 1000)
    s.document.apply_labels(np.full((H, W), 5, np.uint8))  # painted after the copy was taken
    gate.set()
    qtbot.waitUntil(lambda: s.saves.writer.pending == 0, timeout=WAIT)
    qtbot.waitUntil(lambda: s.store.status("img0.png") is Status.EDITED, timeout=WAIT)
    assert s.dirty and (s.store.load_mask("img0.png") == 3).all()
    assert s.save_current() and not s.dirty and (s.store.load_mask("img0.png") == 5).all()


def test_closing_the_folder_waits_for_queued_saves(qtbot, sessions, folder, monkeypatch):
    s = sessions(folder)
    store = s.store
    gate, started = _hold_saves(monkeypatch, store)
    s.document.apply_labels(np.full((H, W), 6, np.uint8))
    s.autosave()
    threading.Timer(0.3, gate.set).start()  # the disk catches up while close_store waits
    s.close_store()
    assert gate.is_set() and s.store is None
    monkeypatch.undo()
    s2 = sessions(folder)
    assert (s2.document.mask == 6).all() and s2.store.status("img0.png") is Status.EDITED


def test_apply_prediction_never_replaces_edits(qtbot, sessions, folder):
    s = sessions(folder)
    labels = np.ones((H, W), np.uint8)
    probs = np.zeros((21, H, W), np.float32)
    probs[1] = 1.0
    with qtbot.waitSignal(s.probs_changed, timeout=WAIT):
        s.apply_prediction("img0.png", labels, probs)
    assert (s.document.mask == 1).all() and not s.dirty and s.document.can_undo
    assert s.store.status("img0.png") is Status.PRELABELED
    assert s.raw_labels is not None and (s.raw_labels == 1).all()
    s.document.apply_labels(np.full((H, W), 4, np.uint8))
    s.save_current()
    h = s.apply_prediction("img0.png", np.zeros((H, W), np.uint8), None)
    qtbot.waitUntil(lambda: h.done, timeout=WAIT)
    assert (s.document.mask == 4).all() and (s.store.load_mask("img0.png") == 4).all()


def test_next_most_uncertain(qtbot, sessions, folder):
    s = sessions(folder)
    sure = np.zeros((2, H, W), np.float32)
    sure[0] = 1.0
    unsure = np.full((2, H, W), 0.5, np.float32)
    for image_id, p in (("img1.png", sure), ("img2.png", unsure)):
        h = s.set_probs(image_id, p)
        qtbot.waitUntil(lambda h=h: h.done, timeout=WAIT)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.next_most_uncertain()
    assert s.image_id == "img2.png" and s.uncertainty is not None and s.uncertainty.max() > 0.9


# ---------------------------------------------------------------------------- window, canvas, tools
def test_mouse_stroke_changes_mask_and_shortcut_undo_redo(qtbot, window):
    s, canvas = window.session, window.canvas
    s.current_label = 5
    window.set_tool("brush")
    window.tool_options.size.setValue(2.0)
    _stroke(canvas, [(5.5, 5.5), (15.5, 5.5), (25.5, 5.5)])
    mask = s.document.mask
    assert mask[5, 5] == 5 and mask[5, 20] == 5 and mask[25, 5] == 255
    assert s.document.undo_depth == 1 and window.windowTitle().endswith("*")
    assert (window.canvas.overlay.buffer()[5, 5:26] == 5).all()  # the overlay repainted the stroke
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert (s.document.mask == 255).all()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert s.document.mask[5, 20] == 5


def test_eraser_polygon_fill_picker_keys(qtbot, window):
    s, canvas = window.session, window.canvas
    qtbot.keyClick(canvas, Qt.Key.Key_3)
    assert s.current_label == 3
    qtbot.keyClick(canvas, Qt.Key.Key_P)
    assert canvas.tool.name == "polygon"
    for x, y in ((2, 2), (20, 2), (20, 20)):
        _mouse(canvas, QEvent.Type.MouseButtonPress, x, y)
        _mouse(canvas, QEvent.Type.MouseButtonRelease, x, y, buttons=Qt.MouseButton.NoButton)
    qtbot.keyClick(canvas, Qt.Key.Key_Return)
    assert s.document.mask[3, 15] == 3 and s.document.mask[15, 3] == 255
    qtbot.keyClick(canvas, Qt.Key.Key_F)
    qtbot.keyClick(canvas, Qt.Key.Key_7)
    _mouse(canvas, QEvent.Type.MouseButtonPress, 35.5, 25.5)  # fill the void region
    assert s.document.mask[25, 35] == 7 and s.document.mask[3, 15] == 3
    qtbot.keyClick(canvas, Qt.Key.Key_I)
    _mouse(canvas, QEvent.Type.MouseButtonPress, 15.5, 3.5)
    assert s.current_label == 3
    qtbot.keyClick(canvas, Qt.Key.Key_E)
    size = canvas.tool.size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.tool.size > size
    _stroke(canvas, [(35.5, 25.5)])                                        # eraser: to void
    assert s.document.mask[25, 35] == 255
    _stroke(canvas, [(35.5, 5.5)], modifiers=Qt.KeyboardModifier.ShiftModifier)  # shift: to background
    assert s.document.mask[5, 35] == 0


def test_an_unfinished_polygon_waits_with_its_image_through_a_switch_and_a_tool_change(qtbot, window):
    s, canvas = window.session, window.canvas
    qtbot.keyClick(canvas, Qt.Key.Key_4)
    qtbot.keyClick(canvas, Qt.Key.Key_P)

    def click(x, y):
        _mouse(canvas, QEvent.Type.MouseButtonPress, x, y)
        _mouse(canvas, QEvent.Type.MouseButtonRelease, x, y, buttons=Qt.MouseButton.NoButton)
    for x, y in ((2, 2), (20, 2)):
        click(x, y)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(canvas, Qt.Key.Key_D)          # a stray "next image"
    assert canvas.tool.points == []                    # none on the other image
    click(30, 25)                                      # that image's own polygon
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(canvas, Qt.Key.Key_A)
    assert canvas.tool.points == [(2, 2), (20, 2)]     # back with its image
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    qtbot.keyClick(canvas, Qt.Key.Key_P)               # a tool change and back
    assert canvas.tool.points == [(2, 2), (20, 2)]
    click(20, 20)
    qtbot.keyClick(canvas, Qt.Key.Key_Return)
    assert s.image_id == "img0.png" and s.document.mask[3, 15] == 4
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(canvas, Qt.Key.Key_D)
    assert canvas.tool.points == [(30, 25)]
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)          # Escape drops it for good
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(canvas, Qt.Key.Key_A)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(canvas, Qt.Key.Key_D)
    assert canvas.tool.points == []


def test_switch_autosaves_and_keyboard_navigation(qtbot, window):
    s = window.session
    s.document.apply_labels(np.full((H, W), 2, np.uint8))
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(window.canvas, Qt.Key.Key_D)
    assert s.image_id == "img1.png"
    qtbot.waitUntil(lambda: s.saves.writer.pending == 0, timeout=WAIT)  # written in the background
    assert s.store.status("img0.png") is Status.EDITED
    assert (s.store.load_mask("img0.png") == 2).all()
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(window.canvas, Qt.Key.Key_A)
    assert s.image_id == "img0.png" and (s.document.mask == 2).all()
    view = window.image_list.view
    view.setFocus()
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(view, Qt.Key.Key_Down)
    assert s.image_id == "img1.png"
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(view, Qt.Key.Key_End)
    assert s.image_id == "zz_bad.png"


def test_filter_by_status_and_counts(qtbot, window):
    s, panel = window.session, window.image_list
    s.document.apply_labels(np.full((H, W), 2, np.uint8))
    assert s.save_current()
    panel.set_filter("edited")
    assert panel.model.rowCount() == 1 and panel.model.image_id(0) == "img0.png"
    panel.set_filter("unlabeled")
    assert [panel.model.image_id(r) for r in range(panel.model.rowCount())] == ["img1.png", "img2.png", "zz_bad.png"]
    assert "Edited (1)" in [panel.filter_box.itemText(i) for i in range(panel.filter_box.count())]
    assert s.mark_reviewed()
    panel.set_filter("reviewed")
    assert panel.model.rowCount() == 1
    panel.set_filter(None)
    assert panel.model.rowCount() == 4


def test_view_modes_outline_and_uncertainty(qtbot, window):
    s, canvas = window.session, window.canvas
    labels = np.ones((H, W), np.uint8)
    labels[10:20, 10:20] = 4
    s.document.apply_labels(labels)
    buf = canvas.overlay.buffer()
    assert buf[15, 15] == 4
    s.set_outline(True)
    assert buf[15, 15] == 255 and buf[10, 15] == 4  # interior hidden, boundary kept
    s.set_outline(False)
    probs = np.full((2, H, W), 0.5, np.float32)
    probs[:, :, :10] = [[[1.0]], [[0.0]]]
    h = s.set_probs("img0.png", probs)
    qtbot.waitUntil(lambda: h.done, timeout=WAIT)
    s.set_view_mode("raw")
    assert canvas.overlay.buffer()[15, 15] == 0
    s.set_view_mode("uncertainty")
    assert canvas.overlay.buffer()[5, 5] < 10 and canvas.overlay.buffer()[5, 30] > 240
    s.set_crf_labels(np.full((H, W), 6, np.uint8))
    s.set_view_mode("crf")
    assert canvas.overlay.buffer()[0, 0] == 6


def test_crf_snap_brush_applies_one_undo_step(qtbot, window):
    s, canvas = window.session, window.canvas
    s.current_label = 2
    qtbot.keyClick(canvas, Qt.Key.Key_S)
    assert canvas.tool.name == "snap"
    canvas.tool.size = 2.0
    with qtbot.waitSignal(s.mask_changed, timeout=WAIT):
        _stroke(canvas, [(30.5, 10.5), (32.5, 12.5)])
    assert s.document.undo_depth == 1 and s.document.mask[11, 31] == 2
    assert s.document.undo_description == "CRF snap"


def test_class_panel_edits_and_settings(qtbot, window, tmp_path):
    s, panel = window.session, window.class_panel
    n = len(s.class_names)
    assert panel.add_class("road", (10, 20, 30)) and s.class_names[-1] == "road"
    assert panel.rename_class(1, "plane") and s.class_names[1] == "plane"
    assert panel.recolor_class(1, (1, 2, 3)) and s.class_colors[1] == (1, 2, 3)
    assert panel.list.count() == n + 1
    window.set_tool("brush")
    window.tool_options.size.setValue(13.0)
    assert Settings(os.environ["DEEPLAB_GUI_SETTINGS"]).tool_size("brush", 0) == 13.0
    assert str(s.folder) in s.settings.recent_folders()


def test_cli_runs_the_app_and_exits_by_itself(folder, tmp_path):
    """What tests/test_cli.py::test_gui_default_command can assert now that the app exists."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", DEEPLAB_GUI_EXIT_AFTER_MS="50")
    r = subprocess.run([sys.executable, "-m", "deeplab_gui", str(folder)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert (folder / ".deeplab-gui" / "store.db").exists()
    assert "deeplab-gui started" in (tmp_path / "log" / "deeplab-gui.log").read_text()


def _idle(pid: int) -> bool:
    """Whether process ``pid``'s main thread is asleep (Qt's loop waiting in C++); True where /proc
    is missing."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "S"
    except OSError:
        return True


def test_sigterm_closes_the_app_as_a_person_would(folder, tmp_path):
    """``kill``, a service manager, logout: the app closes its window (saving, releasing the store)
    instead of just ending; the signal reaches Python while Qt's loop waits in C++."""
    # (faulthandler: should the app not end, SIGABRT makes it print every thread's stack, for the failure)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONFAULTHANDLER="1")
    env.pop("DEEPLAB_GUI_EXIT_AFTER_MS", None)
    log = tmp_path / "log" / "deeplab-gui.log"
    proc = subprocess.Popen([sys.executable, "-m", "deeplab_gui", str(folder)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, ready = time.monotonic() + 120, False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            try:   # the app's start-up has no other signal to wait on: its end, or 0.1 s, then look again
                proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
            ready = ((folder / ".deeplab-gui" / "store.db").exists() and log.exists()
                     and "started" in log.read_text() and _idle(proc.pid))
        assert ready, "the app never went idle (its event loop spins?)"
        proc.send_signal(__import__("signal").SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(__import__("signal").SIGABRT)
            out, err = proc.communicate(timeout=30)
            raise AssertionError("the app did not end within 60 s of SIGTERM; its threads then:\n"
                                 f"{err[-8000:]}\nits log:\n{log.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "closing on SIGTERM" in log.read_text()
    from engine import AnnotationStore
    with AnnotationStore.open(folder) as st:   # the lock was let go: it opens writable
        assert not st.read_only


def test_a_quit_signal_closes_the_window_which_saves_the_edits(qtbot, window, folder):
    import signal

    from deeplab_gui.app import install_quit_signals
    s = window.session
    s.document.apply_labels(np.full((H, W), 6, np.uint8))
    assert s.dirty
    guard = signal.signal(signal.SIGTERM, lambda *_: None)   # had nothing been installed: not the test run's end
    restore = install_quit_signals(window, QApplication.instance())
    try:
        signal.raise_signal(signal.SIGTERM)
        qtbot.waitUntil(lambda: not window.isVisible(), timeout=WAIT)
    finally:
        restore()
        signal.signal(signal.SIGTERM, guard)
    from engine import AnnotationStore
    with AnnotationStore.open(folder) as st:
        assert (st.load_mask("img0.png") == 6).all()


def test_neighbours_are_prefetched_and_shown_from_memory(qtbot, sessions, folder, monkeypatch):
    s = sessions(folder)
    qtbot.waitUntil(lambda: "img1.png" in s.prefetch.ready and not s.prefetch.running, timeout=WAIT)
    import deeplab_gui.state.session_io as sio

    def no_disk(path):
        raise AssertionError(f"{path} should come from the prefetch cache")
    monkeypatch.setattr(sio, "read_for_display", no_disk)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.next_image()
    assert s.image_id == "img1.png" and s.image.shape == (H, W, 3)
    assert s.display.width() == W and s.display.height() == H
    assert set(s.prefetch.ready) <= {"img0.png", "img2.png"}  # bounded: the new neighbours only


def test_a_refresh_in_bands_of_rows_draws_what_a_whole_one_does(qtbot, window, monkeypatch):
    """The overlay is refreshed a band of rows at a time (bounded temporaries on large photos): in
    every view, with outlines and dimmed pixels, tiny bands draw exactly what one band does."""
    import deeplab_gui.widgets.canvas.canvas as canvas_mod
    s, canvas = window.session, window.canvas
    rng = np.random.default_rng(0)
    s.document.apply_labels(rng.integers(0, 4, (H, W)).astype(np.uint8), description="pre-label")
    s.document.polygon([(3, 3), (20, 4), (9, 17)], 2)
    probs = rng.dirichlet(np.ones(3), size=(H, W)).transpose(2, 0, 1).astype(np.float32)
    h = s.set_probs("img0.png", probs)
    qtbot.waitUntil(lambda: h.done, timeout=WAIT)
    for mode, outline, dim in (("mask", False, True), ("mask", True, True), ("raw", True, False),
                               ("uncertainty", False, False)):
        s.set_view_mode(mode)
        s.set_outline(outline)
        monkeypatch.setattr(s, "show_unconfirmed", dim, raising=False)
        views = []
        for band in (1 << 20, 7):
            monkeypatch.setattr(canvas_mod, "_REFRESH_BAND_PIXELS", band)
            canvas.refresh()
            views.append(canvas.overlay.buffer().copy())
        assert np.array_equal(views[0], views[1]), (mode, outline)
