"""The effort meter: active seconds and actions per image, recorded in the store across sessions."""
from __future__ import annotations

import csv
import io
import sqlite3

import numpy as np
import pytest

from engine import AnnotationStore
from engine.store import Effort, done_efforts, efforts_csv, segments, version_marks

WAIT = 20_000
W, H = 24, 16


@pytest.fixture
def folder(grey_images):
    return grey_images(3, size=(H, W), step=60)


# ---------------------------------------------------------------------------- the store's table
def test_store_adds_counts_up_and_keeps_the_first_acceptance(folder):
    with AnnotationStore.open(folder) as store:
        assert store.effort("img0.png") == Effort("img0.png")
        store.add_effort("img0.png", seconds=12.5, actions={"brush": 2}, version=None, now=100.0)
        store.add_effort("img0.png", seconds=3, actions={"brush": 1, "undo": 1}, accepted=True, version="v1",
                         now=200.0)
        store.add_effort("img0.png", seconds=1, accepted=True, version="v2", now=300.0)  # accepted again
        e = store.effort("img0.png")
    assert e.seconds == 16.5 and dict(e.actions) == {"brush": 3, "undo": 1} and e.total_actions == 4
    assert (e.accepted, e.accepted_at, e.version, e.done_at) == (True, 200.0, "v1", 200.0)
    with AnnotationStore.open(folder) as store:  # reopened: still there, and it adds up
        store.add_effort("img0.png", seconds=0.5, now=400.0)
        assert store.effort("img0.png").seconds == 17.0
        with pytest.raises(ValueError):
            store.add_effort("img0.png", seconds=-1)
        with pytest.raises(ValueError):
            store.add_effort("img0.png", actions={"brush": -2})


def test_an_old_store_without_the_table_gains_it_and_keeps_its_statuses(folder):
    with AnnotationStore.open(folder) as store:
        store.save_mask("img1.png", np.full((H, W), 2, np.uint8))
    db = sqlite3.connect(folder / ".deeplab-gui" / "store.db")
    db.execute("DROP TABLE effort")  # what an older version of the app wrote
    db.commit()
    db.close()
    with AnnotationStore.open(folder, read_only=True) as viewer:  # read-only: nothing to read, no error
        assert viewer.efforts() == [] and viewer.effort("img1.png").seconds == 0
        assert viewer.add_effort("img1.png", seconds=5) is False
    with AnnotationStore.open(folder) as store:
        assert store.status("img1.png").value == "edited" and (store.load_mask("img1.png") == 2).all()
        assert store.notice is None  # nothing was repaired or set aside
        store.add_effort("img1.png", seconds=5, actions={"fill": 1})
        assert store.effort("img1.png").seconds == 5


def test_done_order_segments_marks_and_csv():
    rows = [
        Effort("c.png", 40.0, {"brush": 4}, accepted_at=30.0, version="v1"),
        Effort("a.png", 100.0, {"brush": 8, "undo": 2}, accepted_at=10.0, version=None),
        Effort("b.png", 80.0, {"polygon": 2}, edited_at=20.0, version=None),  # edited, never accepted
        Effort("d.png", 20.0, {"fill": 1, "brush": 1}, accepted_at=40.0, version="v1"),
        Effort("e.png", 5.0, {}),  # looked at only: not done
    ]
    done = done_efforts(rows)
    assert [e.image_id for e in done] == ["a.png", "b.png", "c.png", "d.png"]
    segs = segments(done)
    assert [(g.version, g.start, g.stop) for g in segs] == [(None, 0, 2), ("v1", 2, 4)]
    assert (segs[0].mean_seconds, segs[0].mean_actions) == (90.0, 6.0)
    assert (segs[1].mean_seconds, segs[1].mean_actions) == (30.0, 3.0)
    # v1 at its first image; v2 (no image done under it yet) after the images done before it was made.
    assert version_marks(done, [("v1", 25.0), ("v2", 35.0)]) == [(2, "v1"), (3, "v2")]
    table = list(csv.reader(io.StringIO(efforts_csv(rows).decode("utf-8"))))
    assert table[0] == ["image_id", "seconds", "actions", "actions_brush", "actions_polygon", "actions_fill",
                        "actions_undo", "accepted", "done_at", "model_version"]
    assert [r[0] for r in table[1:]] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert table[1][1:8] == ["100.0", "10", "8", "0", "0", "2", "yes"] and table[1][9] == ""
    assert table[2][7] == "no" and table[2][8] and table[3][9] == "v1"
    assert table[5][7:] == ["no", "", ""]


# ---------------------------------------------------------------------------- the session's meter
pytest.importorskip("pytestqt")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clocked(sessions):
    def make(path):
        s = sessions(path)
        clock = Clock()
        s.effort.clock = clock
        return s, clock
    return make


def _select(qtbot, s, image_id):
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.select(image_id)


def _stroke(doc, label=2, erase_to=None):
    doc.begin_stroke(label, 2.0, erase_to=erase_to)
    doc.stroke_to(4, 4)
    doc.stroke_to(8, 6)
    doc.end_stroke()


def _recorded(s, image_id):
    s.effort.flush()
    s.effort.wait()
    return s.store.effort(image_id)


def test_time_counts_for_30_s_after_an_input_then_stops(qtbot, clocked, folder):
    s, clock = clocked(folder)
    assert s.effort.seconds == 0 and not s.effort.running
    clock.t += 50
    assert s.effort.seconds == 0  # the image is open, but nobody touched anything
    s.effort.note_input()
    clock.t += 10
    assert s.effort.seconds == pytest.approx(10) and s.effort.running
    clock.t += 90  # nothing until 100 s after the input
    assert s.effort.seconds == pytest.approx(30) and not s.effort.running
    assert _recorded(s, "img0.png").seconds == pytest.approx(30)
    assert s.effort.seconds == pytest.approx(30)  # recorded and shown agree; nothing counted twice


def test_steady_input_counts_every_second(qtbot, clocked, folder):
    s, clock = clocked(folder)
    for _ in range(13):  # at 0, 5, ..., 60 s
        s.effort.note_input()
        if _ < 12:
            clock.t += 5
    assert s.effort.seconds == pytest.approx(60)
    s.effort.flush()  # an autosave in the middle changes nothing
    clock.t += 100
    assert s.effort.seconds == pytest.approx(90)  # the last input's 30 s, no more
    assert _recorded(s, "img0.png").seconds == pytest.approx(90)


def test_switching_images_splits_the_time(qtbot, clocked, folder):
    s, clock = clocked(folder)
    s.effort.note_input()
    clock.t += 10
    _select(qtbot, s, "img1.png")  # the switch cuts img0's clock at 10 s
    clock.t += 2
    assert s.effort.seconds == 0
    s.effort.note_input()
    clock.t += 100
    assert s.effort.seconds == pytest.approx(30)
    assert _recorded(s, "img0.png").seconds == pytest.approx(10)
    assert _recorded(s, "img1.png").seconds == pytest.approx(30)


def test_actions_count_by_tool_and_prelabels_do_not(qtbot, clocked, folder):
    from deeplab_gui.editing.document import PRELABEL
    s, _clock = clocked(folder)
    doc = s.document
    doc.apply_labels(np.full((H, W), 1, np.uint8), description=PRELABEL)  # the model's step
    assert s.effort.actions == 0
    with qtbot.waitSignal(s.effort.changed, timeout=WAIT):
        _stroke(doc)
    _stroke(doc, erase_to=255)
    doc.fill(20, 12, 3)
    doc.polygon([(0, 0), (6, 0), (6, 6)], 4)
    assert doc.undo_description == "Polygon"
    assert s.history.undo() and s.history.redo() and s.history.undo()
    assert s.effort.actions_by_tool == {"brush": 1, "eraser": 1, "fill": 1, "polygon": 1, "undo": 2, "redo": 1}
    assert s.effort.text() == "⏱ 0:00 · 7 actions"
    e = _recorded(s, "img0.png")
    assert dict(e.actions) == {"brush": 1, "eraser": 1, "fill": 1, "polygon": 1, "undo": 2, "redo": 1}
    assert e.edited_at is not None and not e.accepted
    _select(qtbot, s, "img1.png")
    _stroke(doc)  # the image left behind is no longer listened to
    assert s.effort.actions == 0 and dict(_recorded(s, "img0.png").actions)["brush"] == 1


def test_region_tools_count_under_their_tool_names():
    from deeplab_gui.editing.click import CLICK_DESCRIPTION, CRF_CLICK_DESCRIPTION
    from deeplab_gui.editing.superpixels import SUPERPIXEL_DESCRIPTION
    from deeplab_gui.state.effort import tool_of
    assert [tool_of(d) for d in (SUPERPIXEL_DESCRIPTION, CRF_CLICK_DESCRIPTION, CLICK_DESCRIPTION)] == \
        ["superpixel", "crfclick", "click"]


def test_accepting_records_when_and_under_which_version(qtbot, clocked, folder):
    s, clock = clocked(folder)
    _stroke(s.document)
    s.effort.note_input()
    clock.t += 4
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        assert s.review.accept_and_next()
    e = _recorded(s, "img0.png")
    assert e.accepted and e.version is None and e.seconds == pytest.approx(4) and e.total_actions == 1


def test_counts_survive_closing_and_reopening_the_folder(qtbot, sessions, folder):
    s = sessions(folder)
    clock = Clock()
    s.effort.clock = clock
    s.effort.note_input()
    _stroke(s.document)
    clock.t += 20
    s.shutdown()  # closing the window: counts handed over and waited for
    s2 = sessions(folder)
    s2.effort.clock = clock
    qtbot.waitUntil(lambda: s2.effort.seconds == pytest.approx(20), timeout=WAIT)  # read off the UI thread
    assert s2.effort.actions == 1
    s2.effort.note_input()
    _stroke(s2.document, label=3)
    clock.t += 5
    assert s2.effort.seconds == pytest.approx(25) and s2.effort.actions == 2
    s2.close_store()
    with AnnotationStore.open(folder) as store:
        e = store.effort("img0.png")
    assert e.seconds == pytest.approx(25) and dict(e.actions) == {"brush": 2}


def test_a_read_only_folder_shows_the_meter_but_records_nothing(qtbot, sessions, folder):
    holder = AnnotationStore.open(folder)  # another instance has the folder: this one opens read-only
    try:
        s = sessions(folder)
        assert s.read_only
        said = []
        s.message.connect(lambda level, text: said.append(level))
        clock = Clock()
        s.effort.clock = clock
        s.effort.note_input()
        _stroke(s.document)
        clock.t += 7
        s.save_current()
        s.effort.wait()
        assert s.effort.seconds == pytest.approx(7) and s.effort.actions == 1
        assert holder.efforts() == [] and "error" not in said
    finally:
        holder.close()


def test_counts_reach_the_store_every_few_seconds_of_work(qtbot, clocked, folder):
    s, clock = clocked(folder)
    s.effort.note_input()
    clock.t += 12  # the meter's once-a-second tick finds 12 s unrecorded: a crash would lose no more
    qtbot.waitUntil(lambda: s.store.effort("img0.png").seconds == pytest.approx(12), timeout=WAIT)


def test_a_failed_record_is_logged_and_the_mask_is_still_saved(qtbot, clocked, folder, monkeypatch, caplog):
    from engine import StoreWriteError
    s, clock = clocked(folder)

    def broken(*a, **k):
        raise StoreWriteError("could not save the effort record of img0.png: the disk is full")
    monkeypatch.setattr(s.store, "add_effort", broken)
    said = []
    s.message.connect(lambda level, text: said.append(level))
    _stroke(s.document)
    s.effort.note_input()
    clock.t += 3
    assert s.save_current()
    s.effort.wait()
    assert (s.store.load_mask("img0.png") == 2).any() and not s.dirty
    assert "error" not in said and "could not record the work on img0.png" in caplog.text


def test_the_clock_stops_when_the_window_loses_the_focus(qtbot, clocked, folder):
    s, clock = clocked(folder)
    s.effort.note_input()
    clock.t += 5
    s.effort.note_idle()     # a dialog or another application took the focus
    assert not s.effort.running
    clock.t += 60
    assert s.effort.seconds == pytest.approx(5)
    s.effort.note_input()    # back at work
    clock.t += 2
    assert s.effort.seconds == pytest.approx(7) and s.effort.running
