"""Edits that are not on disk are never dropped without asking: a read-only folder, a full disk.

Closing the window, quitting from the menu and opening another folder ask "Save elsewhere… / Retry /
Discard / Cancel" when some edits exist only in memory, and ask nothing when everything is saved. The
question is answered through ``unsaved_dialog.ask`` (and the folder picker through ``ask_folder``).
"""
from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from deeplab_gui.editing.export_unsaved import CLASSES_FILE, ExportError, ExportRefused, export_masks, mask_file_names
from deeplab_gui.state.session import Session
from deeplab_gui.state.settings import Settings
from deeplab_gui.widgets.dialogs import unsaved_dialog
from deeplab_gui.widgets.dialogs.unsaved_dialog import CANCEL, DISCARD, RETRY, SAVE_ELSEWHERE, UnsavedDialog
from deeplab_gui.widgets.main_window import MainWindow
from engine import AnnotationStore
from engine.store import format as storeformat
from engine.store.format import write_error

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work
W, H = 40, 30


def _images(d, n=3):
    d.mkdir()
    for i in range(n):
        arr = np.zeros((H, W, 3), np.uint8)
        arr[:, W // 2:] = 200 + i
        Image.fromarray(arr).save(d / f"img{i}.png")
    return d


@pytest.fixture
def folder(tmp_path):
    return _images(tmp_path / "images")


class Answers:
    """Stands in for the person: each question takes the next answer; every question is recorded."""

    def __init__(self) -> None:
        self.queue: list[str] = []
        self.asked: list[tuple[list[tuple[str, str]], str]] = []
        self.folder = ""
        self.on_ask = lambda: None  # what the person does before answering (e.g. frees disk space)

    def ask(self, parent, unsaved, action) -> str:
        self.asked.append((list(unsaved), action))
        self.on_ask()
        return self.queue.pop(0) if self.queue else CANCEL

    def ids(self, i: int = -1) -> list[str]:
        return [image_id for image_id, _ in self.asked[i][0]]

    def reasons(self, i: int = -1) -> list[str]:
        return [why for _, why in self.asked[i][0]]


@pytest.fixture
def answers(monkeypatch):
    a = Answers()
    monkeypatch.setattr(unsaved_dialog, "ask", a.ask)
    monkeypatch.setattr(unsaved_dialog, "ask_folder", lambda parent, start: a.folder)
    return a


@pytest.fixture
def windows(qtbot):
    """``windows(folder)``: a shown main window with ``folder`` open and its first image current."""
    def make(path):
        win = MainWindow(Session(Settings(os.environ["DEEPLAB_GUI_SETTINGS"])))
        # pytest-qt closes the window before fixtures end: let go of the folder first, or closing a
        # window a test left with unsaved edits would ask (and wait for an answer).
        qtbot.addWidget(win, before_close_func=lambda w: w.session.shutdown())
        win.show()
        qtbot.waitExposed(win)
        with qtbot.waitSignal(win.session.current_changed, timeout=WAIT):
            win.session.open_folder(path)
        return win
    return make


def _select(qtbot, s: Session, image_id: str) -> None:
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.select(image_id)


def _paint(s: Session, label: int) -> None:
    s.document.apply_labels(np.full((H, W), label, np.uint8))


def _closed(win) -> bool:
    return not win.isVisible() and win.session.store is None


@pytest.fixture
def read_only(qtbot, sessions, windows, folder):
    """A window on ``folder`` opened read-only (another instance holds it) with img0 painted 2 and
    img1 painted 3; returns (window, the other instance)."""
    holder = sessions(folder)
    win = windows(folder)
    s = win.session
    assert s.read_only
    _paint(s, 2)
    _select(qtbot, s, "img1.png")
    _paint(s, 3)
    return win, holder


class FullDisk:
    """The store's mask writes fail with "the disk is full" while ``full`` is set."""

    def __init__(self, store) -> None:
        self.full = True
        self._real = store.save_mask

    def save_mask(self, image_id, mask, **kw):
        if self.full:
            raise write_error(OSError(errno.ENOSPC, "No space left on device"), f"the mask of {image_id}")
        return self._real(image_id, mask, **kw)


@pytest.fixture
def full_disk(qtbot, windows, folder, monkeypatch):
    """A writable window whose store cannot write, with img0 painted 2 (its write failed) and img1
    painted 3 (not yet written); returns (window, the FullDisk switch)."""
    win = windows(folder)
    s = win.session
    disk = FullDisk(s.store)
    monkeypatch.setattr(s.store, "save_mask", disk.save_mask)
    _paint(s, 2)
    _select(qtbot, s, "img1.png")  # the switch's autosave fails in the background
    qtbot.waitUntil(lambda: "img0.png" in s.saves.errors, timeout=WAIT)
    _paint(s, 3)
    return win, disk


def _stored(folder, image_id):
    with AnnotationStore.open(folder, read_only=True, scan=False) as store:
        return store.load_mask(image_id)


# ---------------------------------------------------------------------------- read-only window
def test_read_only_window_keeps_every_edit_across_switches(qtbot, read_only):
    win, _holder = read_only
    s = win.session
    assert s.unsaved() == [("img0.png", s.unsaved()[0][1]), ("img1.png", s.unsaved()[1][1])]
    assert all("read-only" in why for _, why in s.unsaved())
    _select(qtbot, s, "img2.png")
    _select(qtbot, s, "img0.png")
    assert (s.document.mask == 2).all() and s.dirty
    _select(qtbot, s, "img1.png")
    assert (s.document.mask == 3).all() and s.dirty


def test_read_only_close_asks_and_cancel_keeps_the_window_and_the_edits(qtbot, read_only, answers):
    win, _holder = read_only
    s = win.session
    answers.queue = [CANCEL]
    assert win.close() is False
    assert len(answers.asked) == 1 and answers.ids() == ["img0.png", "img1.png"]
    assert all("read-only" in why for why in answers.reasons())
    assert win.isVisible() and s.store is not None and s.read_only
    assert (s.document.mask == 3).all()
    _select(qtbot, s, "img0.png")
    assert (s.document.mask == 2).all()
    assert [i for i, _ in s.unsaved()] == ["img0.png", "img1.png"]


def test_quit_from_the_menu_asks_too(read_only, answers):
    win, _holder = read_only
    quit_action = next(a for a in win.actions() if a.text() == "&Quit")
    quit_action.trigger()
    assert len(answers.asked) == 1 and win.isVisible()  # the default answer here is Cancel


def test_read_only_retry_saves_once_the_other_instance_lets_go(qtbot, read_only, answers, folder):
    win, holder = read_only
    answers.queue = [RETRY]
    assert win.close() is False  # still locked by the other instance: nothing is on disk yet
    assert win.isVisible() and len(win.session.unsaved()) == 2
    assert "still open read-only" in win.session.unsaved()[0][1]
    assert win.messages[-1][0] == "error" and "still not on disk" in win.messages[-1][1]
    holder.shutdown()
    answers.queue = [RETRY]
    assert win.close() is True and _closed(win)
    assert len(answers.asked) == 2
    assert (_stored(folder, "img0.png") == 2).all() and (_stored(folder, "img1.png") == 3).all()


def test_read_only_save_elsewhere_writes_the_masks_and_closes(read_only, answers, folder, tmp_path):
    win, _holder = read_only
    names, colors = win.session.class_names, win.session.class_colors
    answers.queue, answers.folder = [SAVE_ELSEWHERE], str(tmp_path / "rescued")
    assert win.close() is True and _closed(win)
    for image_id, label in (("img0.png", 2), ("img1.png", 3)):
        im = Image.open(tmp_path / "rescued" / image_id)
        assert im.mode == "P" and im.size == (W, H)
        assert (np.asarray(im) == label).all()
        assert tuple(im.getpalette()[3 * label:3 * label + 3]) == tuple(colors[label])
    assert (tmp_path / "rescued" / CLASSES_FILE).read_text().splitlines() == names
    assert _stored(folder, "img0.png") is None  # the store itself was never written


def test_save_elsewhere_that_fails_says_so_and_stays_open(read_only, answers, tmp_path):
    win, _holder = read_only
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    answers.queue, answers.folder = [SAVE_ELSEWHERE], str(blocker / "rescued")
    assert win.close() is False
    assert win.isVisible() and len(win.session.unsaved()) == 2
    level, text = win.messages[-1]
    assert level == "error" and "rescued" in text and "Error" not in text


def test_save_elsewhere_with_no_folder_picked_stays_open(read_only, answers):
    win, _holder = read_only
    answers.queue, answers.folder = [SAVE_ELSEWHERE], ""
    assert win.close() is False and win.isVisible() and len(win.session.unsaved()) == 2


def _files(root):
    """Every file's name under ``root``, with its bytes outside the store (whose database may change)."""
    return {p.relative_to(root).as_posix(): None if ".deeplab-gui" in p.parts else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["the image folder", "a folder inside it", "the store"])
def test_save_elsewhere_refuses_the_image_folder_and_writes_nothing(read_only, answers, folder, where):
    win, _holder = read_only
    s = win.session
    target = {"the image folder": folder, "a folder inside it": folder / "rescued",
              "the store": s.store.root / "rescued"}[where]
    before = _files(folder)
    answers.queue, answers.folder = [SAVE_ELSEWHERE], str(target)
    assert win.close() is False and win.isVisible()
    level, text = win.messages[-1]
    assert level == "error" and "\n" not in text and "image folder" in text and "nothing was written" in text
    assert _files(folder) == before
    assert target == folder or not target.exists()
    with Image.open(folder / "img0.png") as im:
        assert im.mode == "RGB"  # the photo, not a mask
    assert not (folder / CLASSES_FILE).exists()
    assert [i for i, _ in s.unsaved()] == ["img0.png", "img1.png"]


def test_save_elsewhere_never_replaces_a_file_already_there(read_only, answers, tmp_path):
    win, _holder = read_only
    photos = _images(tmp_path / "photos", 1)  # img0.png: a photo of the same size as the mask
    (photos / "notes.txt").write_text("mine")
    before = _files(photos)
    answers.queue, answers.folder = [SAVE_ELSEWHERE], str(photos)
    assert win.close() is False and win.isVisible()
    level, text = win.messages[-1]
    assert level == "error" and str(photos / "img0.png") in text and "already exists" in text
    assert _files(photos) == before  # neither img0.png replaced nor img1.png / class_names.txt added
    assert len(win.session.unsaved()) == 2
    answers.queue, answers.folder = [SAVE_ELSEWHERE], str(tmp_path / "new")
    assert win.close() is True and (np.asarray(Image.open(tmp_path / "new" / "img1.png")) == 3).all()


def test_read_only_discard_closes(read_only, answers, folder):
    win, _holder = read_only
    answers.queue = [DISCARD]
    assert win.close() is True and _closed(win)
    assert len(answers.asked) == 1 and _stored(folder, "img0.png") is None


# ---------------------------------------------------------------------------- full disk
def test_full_disk_close_asks_and_cancel_keeps_the_edits(qtbot, full_disk, answers):
    win, _disk = full_disk
    s = win.session
    answers.queue = [CANCEL]
    assert win.close() is False
    assert answers.ids() == ["img0.png", "img1.png"]
    assert all("disk is full" in why for why in answers.reasons())
    assert win.isVisible() and s.dirty and (s.document.mask == 3).all()
    _select(qtbot, s, "img0.png")
    assert (s.document.mask == 2).all() and s.dirty


def test_full_disk_retry_after_space_frees_saves_and_closes(full_disk, answers, folder):
    win, disk = full_disk
    answers.queue = [RETRY]
    assert win.close() is False and win.isVisible()  # still full
    assert [i for i, _ in win.session.unsaved()] == ["img0.png", "img1.png"]
    disk.full = False
    answers.queue = [RETRY]
    assert win.close() is True and _closed(win)
    assert (_stored(folder, "img0.png") == 2).all() and (_stored(folder, "img1.png") == 3).all()


def test_full_disk_save_elsewhere_writes_the_masks_and_closes(full_disk, answers, tmp_path):
    win, _disk = full_disk
    answers.queue, answers.folder = [SAVE_ELSEWHERE], str(tmp_path / "rescued")
    assert win.close() is True and _closed(win)
    assert (np.asarray(Image.open(tmp_path / "rescued" / "img0.png")) == 2).all()
    assert (np.asarray(Image.open(tmp_path / "rescued" / "img1.png")) == 3).all()


def test_full_disk_discard_closes(full_disk, answers, folder):
    win, _disk = full_disk
    answers.queue = [DISCARD]
    assert win.close() is True and _closed(win)
    assert len(answers.asked) == 1 and _stored(folder, "img0.png") is None


# ---------------------------------------------------------------------------- nothing unsaved
def test_nothing_unsaved_closes_at_once(windows, answers, folder):
    win = windows(folder)
    _paint(win.session, 4)  # a writable folder: closing writes it, no question
    assert win.close() is True and _closed(win)
    assert answers.asked == [] and (_stored(folder, "img0.png") == 4).all()


def test_writes_still_queued_count_as_unsaved_and_closing_waits_for_them(qtbot, windows, answers, folder,
                                                                         monkeypatch):
    win = windows(folder)
    s = win.session
    gate, real = threading.Event(), s.store.save_mask

    def slow(*a, **k):
        assert gate.wait(30)
        return real(*a, **k)
    monkeypatch.setattr(s.store, "save_mask", slow)
    _paint(s, 5)
    assert s.unsaved() == [("img0.png", "not saved yet")]
    s.autosave()
    assert s.unsaved() == [("img0.png", "still being written")]
    threading.Timer(0.3, gate.set).start()  # the disk catches up while closing waits
    assert win.close() is True and _closed(win) and answers.asked == []
    assert (_stored(folder, "img0.png") == 5).all()


def test_a_read_only_window_without_edits_closes_at_once(sessions, windows, answers, folder):
    sessions(folder)
    win = windows(folder)
    assert win.session.read_only and win.session.unsaved() == []
    assert win.close() is True and answers.asked == []


# ---------------------------------------------------------------------------- switching folders
def test_opening_another_folder_asks_the_same(qtbot, read_only, answers, tmp_path, sessions):
    win, _holder = read_only
    s, first = win.session, win.session.folder
    other = _images(tmp_path / "other", 1)
    answers.queue = [CANCEL]
    s.open_folder(other)
    qtbot.waitUntil(lambda: len(answers.asked) == 1, timeout=WAIT)
    assert answers.asked[0][1] == "opening another folder"
    assert s.folder == first and s.read_only and [i for i, _ in s.unsaved()] == ["img0.png", "img1.png"]
    assert sessions(other).read_only is False  # the refused folder was let go of
    answers.queue = [DISCARD]
    with qtbot.waitSignal(s.folder_opened, timeout=WAIT):
        s.open_folder(first)  # still locked by the other instance: read-only again
    assert len(answers.asked) == 2 and s.unsaved() == []


def test_the_recent_folders_menu_asks_the_same(qtbot, full_disk, answers, tmp_path):
    win, _disk = full_disk
    s = win.session
    other = _images(tmp_path / "other", 1)
    s.settings.add_recent_folder(other)
    win._fill_recent()
    action = next(a for a in win.recent_menu.actions() if a.text() == str(other))
    answers.queue = [DISCARD]
    with qtbot.waitSignal(s.folder_opened, timeout=WAIT):
        action.trigger()
    assert len(answers.asked) == 1 and answers.ids() == ["img0.png", "img1.png"]
    assert s.folder == other.resolve() and s.unsaved() == []


# ---------------------------------------------------------------------------- the dialog itself
def test_the_dialog_names_the_images_and_why_and_offers_four_answers(qtbot):
    unsaved = [(f"img{i}.png", "the folder is open read-only") for i in range(7)]
    dlg = UnsavedDialog(unsaved, "closing the window")
    qtbot.addWidget(dlg)
    assert "7 images" in dlg.text() and "img0.png, img1.png" in dlg.text() and "2 more" in dlg.text()
    assert "img6.png" not in dlg.text() and "img6.png" in dlg.detailedText()
    assert "read-only" in dlg.informativeText()
    texts = [dlg.choice_buttons[c].text() for c in (SAVE_ELSEWHERE, RETRY, DISCARD, CANCEL)]
    assert texts == ["Save elsewhere…", "Retry", "Discard", "Cancel"]
    assert dlg.choice() == CANCEL  # closed without an answer
    dlg.choice_buttons[RETRY].click()
    assert dlg.choice() == RETRY


# ---------------------------------------------------------------------------- the writer, no Qt
def test_export_names_never_collide():
    assert mask_file_names(["a.jpg", "a.png", "sub/b.tif"]) == {
        "a.jpg": "a.png", "a.png": "a.png.png", "sub/b.tif": "sub/b.png"}
    # the whole-name fallback can itself be taken; and a case-insensitive volume has one A.png
    names = mask_file_names(["a.jpg", "a.png.png", "a.png", "A.tif"])
    assert names == {"a.jpg": "a.png", "a.png.png": "a.png.png", "a.png": "a.png.png.png", "A.tif": "A.tif.png"}
    long = mask_file_names(["x" * 250 + ".jpg", "x" * 250 + ".png"])  # the fallback grows past 255 bytes
    assert len(set(long.values())) == 2 and all(len(n.encode()) <= 255 for n in long.values())


def test_export_writes_palette_pngs_and_reports_one_line(tmp_path):
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 1:4] = 1
    mask[0, 0] = 255
    written = export_masks(tmp_path / "out", {"sub/x.jpg": mask}, ["bg", "cat"], [(0, 0, 0), (10, 20, 30)])
    assert written == [tmp_path / "out" / "sub" / "x.png"]
    im = Image.open(written[0])
    assert im.mode == "P" and (np.asarray(im) == mask).all() and im.getpalette()[3:6] == [10, 20, 30]
    assert (tmp_path / "out" / CLASSES_FILE).read_text() == "bg\ncat\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError) as err:
        export_masks(tmp_path / "file" / "out", {"x.png": mask}, ["bg", "cat"], [(0, 0, 0), (1, 1, 1)])
    assert "\n" not in str(err.value) and str(tmp_path / "file" / "out") in str(err.value)


def test_export_keeps_out_of_the_store_and_replaces_no_file(tmp_path):
    mask = np.ones((4, 5), np.uint8)
    images, store = _images(tmp_path / "images", 1), tmp_path / "userdata" / "stores" / "images-1"
    keep_out = [(images, "the image folder"), (store, "its annotation store")]
    with pytest.raises(ExportRefused, match="annotation store") as err:
        export_masks(store / "masks", {"img0.png": mask}, ["bg", "a"], [(0, 0, 0), (1, 1, 1)], keep_out=keep_out)
    assert not store.exists() and "\n" not in str(err.value)

    out = tmp_path / "out"
    out.mkdir()
    (out / CLASSES_FILE).write_text("bg\nsomething else\n")
    with pytest.raises(ExportRefused, match=CLASSES_FILE):
        export_masks(out, {"img0.png": mask}, ["bg", "a"], [(0, 0, 0), (1, 1, 1)], keep_out=keep_out)
    assert sorted(p.name for p in out.iterdir()) == [CLASSES_FILE]
    (out / CLASSES_FILE).write_text("bg\na\n")  # the same names: kept as they are, masks beside them
    assert export_masks(out, {"img0.png": mask}, ["bg", "a"], [(0, 0, 0), (1, 1, 1)]) == [out / "img0.png"]
    (out / "sub").write_text("a file where a sub-folder would go")
    with pytest.raises(ExportRefused, match="sub"):
        export_masks(out, {"a.png": mask, "sub/b.png": mask}, ["bg", "a"], [(0, 0, 0), (1, 1, 1)])
    assert not (out / "a.png").exists()  # refused before the first write


# ---------------------------------------------------------------------------- the same folder again
def test_reopening_the_folder_after_the_other_instance_lets_go_saves_without_asking(qtbot, read_only, answers,
                                                                                  folder):
    win, holder = read_only
    s = win.session
    holder.shutdown()
    s.open_folder(folder)
    qtbot.waitUntil(lambda: bool(answers.asked) or (s.store is not None and not s.store.read_only), timeout=WAIT)
    assert answers.asked == [] and s.unsaved() == []
    assert (_stored(folder, "img0.png") == 2).all() and (_stored(folder, "img1.png") == 3).all()
    assert any("saved the changes kept in memory" in text for _, text in win.messages)


def test_reopening_when_that_write_fails_asks_and_retry_writes_through_the_new_store(qtbot, read_only, answers,
                                                                                    folder, monkeypatch):
    win, holder = read_only
    s = win.session
    holder.shutdown()
    real, disk = AnnotationStore.save_mask, {"full": True}

    def save_mask(store, image_id, mask, **kw):
        if disk["full"]:
            raise write_error(OSError(errno.ENOSPC, "No space left on device"), f"the mask of {image_id}")
        return real(store, image_id, mask, **kw)
    monkeypatch.setattr(AnnotationStore, "save_mask", save_mask)
    answers.queue, answers.on_ask = [RETRY], lambda: disk.update(full=False)
    s.open_folder(folder)
    qtbot.waitUntil(lambda: bool(answers.asked) and s.store is not None and not s.store.read_only, timeout=WAIT)
    assert len(answers.asked) == 1 and all("disk is full" in why for why in answers.reasons())
    assert s.unsaved() == []
    assert (_stored(folder, "img0.png") == 2).all() and (_stored(folder, "img1.png") == 3).all()


# ---------------------------------------------------------------------------- a read-only mount
def test_a_read_only_mount_is_the_reason_given_not_another_instance(qtbot, windows, answers, folder, tmp_path,
                                                                    monkeypatch):
    AnnotationStore.open(folder, scan=False).close()  # annotated elsewhere, then mounted read-only
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    monkeypatch.setattr(storeformat, "_probe_writable", lambda f: False)
    win = windows(folder)
    s = win.session
    assert s.read_only
    _paint(s, 2)
    assert [i for i, _ in s.unsaved()] == ["img0.png"]
    assert "cannot be written" in s.unsaved()[0][1] and "another deeplab-gui" not in s.unsaved()[0][1]
    answers.queue = [RETRY]
    assert win.close() is False
    assert "cannot be written" in answers.reasons()[0]
    why = s.unsaved()[0][1]  # retrying finds the same reason, not "still open read-only" by someone else
    assert "cannot be written" in why and "another deeplab-gui" not in why


def test_opening_the_folder_already_open_rescans_it_and_stays_writable(qtbot, sessions, folder):
    s = sessions(folder)
    store = s.store
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "new.png")
    with qtbot.waitSignal(s.images_changed, timeout=WAIT):   # the same store: only its list changes
        s.open_folder(folder)
    assert s.store is store and not s.read_only and "new.png" in s.ids
