"""Accept and next, reopening a folder where the person stopped, and undo that survives image switches."""
from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt

from engine import Status

WAIT = 20_000
W, H = 24, 16


@pytest.fixture
def folder(grey_images):
    return grey_images(4, size=(H, W), step=40)


@pytest.fixture
def window(open_window, folder):
    return open_window(folder)


def _select(qtbot, s, image_id):
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.select(image_id)


def _paint(s, label, x, y):
    s.document.begin_stroke(label, 2.0)
    s.document.stroke_to(x, y)
    s.document.end_stroke()


def test_accept_and_next_marks_reviewed_saves_and_moves_within_the_filter(qtbot, window):
    s, panel = window.session, window.image_list
    _select(qtbot, s, "img1.png")
    s.document.apply_labels(np.full((H, W), 3, np.uint8))
    assert s.save_current()  # img1 edited: the "unlabeled" filter shows img0, img2, img3
    _select(qtbot, s, "img0.png")
    panel.set_filter("unlabeled")
    _paint(s, 2, 5, 5)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(window.canvas, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert s.image_id == "img2.png"  # the next image the filtered list shows, not img1
    assert s.store.status("img0.png") is Status.REVIEWED
    assert s.store.load_mask("img0.png")[5, 5] == 2  # saved with the stroke
    # img2 has no label at all: accepting it is refused, saying why, and nothing moves.
    qtbot.keyClick(window.canvas, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert s.image_id == "img2.png" and s.store.status("img2.png") is not Status.REVIEWED
    assert window.statusBar().currentMessage().startswith("img2.png has no labels yet")
    s.document.apply_labels(np.zeros((H, W), np.uint8))   # a fill with background: nothing in it
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        qtbot.keyClick(window.canvas, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert s.image_id == "img3.png" and s.store.status("img2.png") is Status.REVIEWED
    # Ctrl+R still only marks reviewed: it stays on the image.
    _paint(s, 1, 3, 3)
    qtbot.keyClick(window.canvas, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    assert s.image_id == "img3.png" and s.store.status("img3.png") is Status.REVIEWED


def test_accept_and_next_follows_the_uncertainty_queue(qtbot, sessions, folder):
    s = sessions(folder)
    sure = np.zeros((2, H, W), np.float32)
    sure[0] = 1.0
    for image_id, p in (("img1.png", sure), ("img3.png", np.full((2, H, W), 0.5, np.float32))):
        h = s.set_probs(image_id, p)
        qtbot.waitUntil(lambda h=h: h.done, timeout=WAIT)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.review.next_most_uncertain()
    assert s.image_id == "img3.png"
    _paint(s, 1, 3, 3)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        assert s.review.accept_and_next()
    assert s.image_id == "img1.png"  # the next most uncertain, not img0 (the next in the list's order)
    assert s.store.status("img3.png") is Status.REVIEWED


def test_reopening_a_folder_selects_the_last_image(qtbot, sessions, folder):
    s = sessions(folder)
    _select(qtbot, s, "img2.png")
    s.shutdown()
    s2 = sessions(folder)
    assert s2.image_id == "img2.png"
    s2.shutdown()
    (folder / "img2.png").unlink()  # gone: the first image again
    s3 = sessions(folder)
    assert s3.image_id == "img0.png"


def test_reopening_a_folder_paints_with_its_last_class(qtbot, sessions, folder, tmp_path):
    s = sessions(folder)
    assert s.current_label == 1   # a folder's first opening: the first class after background
    s.current_label = 3
    s.shutdown()
    s2 = sessions(folder)
    assert s2.current_label == 3
    s2.shutdown()
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((folder / "img0.png").read_bytes())
    s3 = sessions(other)
    assert s3.current_label == 1   # another folder keeps its own


def test_undo_after_switching_away_and_back_restores_the_earlier_stroke(qtbot, sessions, folder):
    s = sessions(folder)
    _paint(s, 4, 3, 3)
    _select(qtbot, s, "img1.png")
    qtbot.waitUntil(lambda: s.saves.writer.pending == 0, timeout=WAIT)  # on disk: reloaded from there
    _select(qtbot, s, "img0.png")
    assert s.document.mask[3, 3] == 4 and s.document.can_undo
    assert s.history.undo()
    assert s.document.mask[3, 3] == 255


def test_history_budget_drops_the_oldest_images_first(qtbot, sessions, folder):
    s = sessions(folder)
    s.history.budget = 3 * (H * W + 100)  # three masks with a small stroke each, not four
    for image_id in ("img0.png", "img1.png", "img2.png", "img3.png"):
        if s.image_id != image_id:
            _select(qtbot, s, image_id)
        _paint(s, 1, 4, 4)
    assert s.history.kept("img0.png") is None  # left longest ago: its history went first
    assert s.history.kept("img1.png") is not None and s.history.kept("img2.png") is not None
    assert s.history.kept("img3.png") is s.document and s.history.kept_bytes <= s.history.budget


def test_undo_action_greyed_out_and_status_names_the_step(qtbot, window):
    s = window.session
    assert not window.undo_action.isEnabled() and not window.redo_action.isEnabled()
    _paint(s, 5, 4, 4)
    assert window.undo_action.isEnabled() and not window.redo_action.isEnabled()
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert s.document.mask[4, 4] == 255
    assert window.statusBar().currentMessage() == "undid: brush stroke"
    assert not window.undo_action.isEnabled() and window.redo_action.isEnabled()
    qtbot.keyClick(window.canvas, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert window.statusBar().currentMessage() == "redid: brush stroke" and s.document.mask[4, 4] == 5
    _select(qtbot, s, "img1.png")  # a fresh image: nothing to undo there
    assert not window.undo_action.isEnabled()
