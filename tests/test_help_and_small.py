"""The Help menu (shortcut cheat sheet, log folder, About), the image list's counts, Ctrl+S feedback and
a new class's colour.  Offscreen pytest-qt against a real Session and store with tiny images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtGui import QColor, QKeySequence  # noqa: E402

from deeplab_gui.state.session import Session  # noqa: E402
from deeplab_gui.state.settings import Settings  # noqa: E402
from deeplab_gui.widgets.canvas.tools import TOOL_KEYS  # noqa: E402
from deeplab_gui.widgets.main_window import MainWindow  # noqa: E402
from engine import Status  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded machine, never reached when things work


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DEEPLAB_GUI_SETTINGS", str(tmp_path / "settings.ini"))


def _folder(tmp_path, n: int = 2):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((12, 16, 3), 40 * i, np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture
def window(qtbot, tmp_path):
    win = MainWindow(Session(Settings(tmp_path / "settings.ini")))
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(win.session.current_changed, timeout=WAIT):
        win.session.open_folder(_folder(tmp_path))
    yield win
    win.close()


def _help_action(win, prefix: str):
    menus = {m.title().replace("&", ""): m for m in (a.menu() for a in win.menuBar().actions()) if m is not None}
    assert "Help" in menus, f"no Help menu among {sorted(menus)}"
    for act in menus["Help"].actions():
        if act.text().replace("&", "").startswith(prefix):
            return act
    raise AssertionError(f"no Help entry starting with {prefix!r}")


def test_shortcut_sheet_lists_every_action_shortcut_and_tool_key(qtbot, window):
    _help_action(window, "Keyboard shortcuts").trigger()
    sheet = window.help_dialogs["shortcuts"]
    assert sheet.isVisible()
    rows = sheet.rows()
    keys = {k for row in rows for k in row[0].split(" or ")}
    native = QKeySequence.SequenceFormat.NativeText
    for act in window.actions():
        for seq in act.shortcuts():
            if seq.isEmpty():  # a standard key this platform leaves unbound (Quit, offscreen)
                continue
            assert seq.toString(native) in keys, f"{act.text()}: {seq.toString(native)} missing from the sheet"
    for name, key in TOOL_KEYS.items():
        assert QKeySequence(key).toString(native) in keys, f"tool {name}'s key {key} missing"
    assert ("Ctrl+S", "Save") in rows
    assert any(k == "B" and "Brush" in what for k, what in rows)


def test_open_log_folder_opens_the_log_directory(qtbot, window, monkeypatch, tmp_path):
    from PySide6.QtGui import QDesktopServices
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    _help_action(window, "Open log folder").trigger()
    assert [u.toLocalFile() for u in opened] == [str(tmp_path / "log")]
    assert (tmp_path / "log").is_dir()


def test_about_names_versions_and_device(qtbot, window):
    import platform

    import torch
    from PySide6.QtCore import qVersion
    _help_action(window, "About").trigger()
    text = window.help_dialogs["about"].label.text()
    for part in ("deeplab-gui", platform.python_version(), torch.__version__, qVersion()):
        assert part in text
    expected = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    assert f"Device: {'CUDA: ' if torch.cuda.is_available() else ''}{expected}" in text


def test_image_counter_names_what_it_counts(qtbot, window):
    s = window.session
    mask = np.zeros((12, 16), np.uint8)
    with qtbot.waitSignal(window.image_list.session.statuses_changed, timeout=WAIT, raising=False):
        for image_id in s.ids:
            s.store.save_mask(image_id, mask, status=Status.PRELABELED)
        s.statuses_changed.emit()
    assert window.image_list.counts_label.text() == "2 pre-labelled · 0 edited · 0 reviewed of 2"


def _press_ctrl_s(window) -> None:
    (act,) = [a for a in window.actions() if QKeySequence("Ctrl+S") in a.shortcuts()]
    act.trigger()


def test_ctrl_s_says_saved_and_why_not(qtbot, window, monkeypatch):
    s = window.session
    _press_ctrl_s(window)
    assert window.messages[-1] == ("info", f"saved {s.image_id}")
    s.document.fill(0, 0, 1)

    def full(*_a, **_k):
        raise OSError("disk full")
    monkeypatch.setattr(s.store, "save_mask", full)
    _press_ctrl_s(window)
    assert window.messages[-1] == ("info", f"not saved: {s.image_id}: disk full (kept in memory)")
    monkeypatch.undo()
    s.saves.discard()  # closing must not ask about the edit this test made


def test_a_new_class_gets_an_unused_distinct_colour(qtbot, window, monkeypatch):
    from PySide6.QtWidgets import QColorDialog, QInputDialog
    panel = window.class_panel
    before = [tuple(c) for c in window.session.class_colors]
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("kite", True))

    def accept_default(initial=None, *a, **k):  # the person just presses OK (Qt's default: white)
        return QColor("white") if initial is None else QColor(initial)
    monkeypatch.setattr(QColorDialog, "getColor", accept_default)
    panel._ask_add()
    colors = [tuple(c) for c in window.session.class_colors]
    assert window.session.class_names[-1] == "kite"
    new = colors[-1]
    assert new != (255, 255, 255)
    assert new not in before


def test_startup_objects_are_kept_out_of_the_collectors_walks(qtbot, window):
    """A full collection walks every object the start-up made (the window, the modules) unless they
    are frozen; the app freezes them once its window is up (a 100 ms+ freeze every few minutes
    otherwise)."""
    import gc

    from deeplab_gui.app import freeze_startup_objects
    try:
        frozen = freeze_startup_objects()
        assert frozen > 10_000 and gc.get_freeze_count() == frozen
        assert len(gc.get_objects()) < frozen // 10   # what a full collection still walks
        window.session.settings.recent_folders()      # the app goes on working
    finally:
        gc.unfreeze()
