"""Shared test setup: CPU only, few threads, offscreen Qt, deterministic seeds."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch

# Tests run on 2-core machines, often two pytest workers at once: oversubscribing threads only slows them.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test keeps the app's settings file and log folder in its own temporary folder."""
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DEEPLAB_GUI_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def _no_idle_saves(monkeypatch) -> None:
    """Sessions in tests save when the test says so: the app's save a few seconds after an edit
    would otherwise land in the middle of tests that check what is not yet on disk (the idle save
    has its own test, which sets these back)."""
    import deeplab_gui.state.session as session_module
    monkeypatch.setattr(session_module, "IDLE_SAVE_MS", 10**9)
    monkeypatch.setattr(session_module, "UNSAVED_MAX_MS", 10**9)


@pytest.fixture
def sessions(qtbot, tmp_path, monkeypatch):
    """``sessions(folder)``: a deeplab_gui Session with its own settings file, the folder open and its
    first image current; every one made is shut down after the test."""
    from deeplab_gui.state.session import Session
    from deeplab_gui.state.settings import Settings
    _no_idle_saves(monkeypatch)

    made = []

    def make(path):
        s = Session(Settings(tmp_path / "settings.ini"))
        made.append(s)
        with qtbot.waitSignal(s.current_changed, timeout=20_000):
            s.open_folder(path)
        return s
    yield make
    for s in made:
        s.shutdown()


@pytest.fixture(autouse=True)
def _no_unanswered_unsaved_question(monkeypatch):
    """A window closed with unsaved edits asks a question; a test that did not expect one must fail, not hang."""
    import sys
    unsaved_dialog = sys.modules.get("deeplab_gui.widgets.dialogs.unsaved_dialog")
    if unsaved_dialog is None:  # no window in this test process: nothing can ask (and Qt stays unloaded)
        yield
        return

    def unexpected(*args, **kwargs):
        raise AssertionError("the unsaved-work question was asked but this test does not answer it")
    monkeypatch.setattr(unsaved_dialog, "ask", unexpected)
    yield


@pytest.fixture
def open_window(qtbot, tmp_path, monkeypatch):
    """``open_window(folder)``: the real main window (its own settings file) shown and active, the folder
    open, its first image current and the canvas focused; every session made is shut down after the test."""
    from deeplab_gui.state.session import Session
    from deeplab_gui.state.settings import Settings
    from deeplab_gui.widgets.main_window import MainWindow
    _no_idle_saves(monkeypatch)

    made = []

    def make(folder):
        win = MainWindow(Session(Settings(os.environ.get("DEEPLAB_GUI_SETTINGS") or tmp_path / "settings.ini")))
        qtbot.addWidget(win)
        made.append(win)
        win.show()
        qtbot.waitExposed(win)
        win.activateWindow()
        with qtbot.waitSignal(win.session.current_changed, timeout=20_000):
            win.session.open_folder(folder)
        win.canvas.setFocus()
        return win
    yield make
    for win in made:
        win.session.shutdown()


@pytest.fixture
def grey_images(tmp_path):
    """``grey_images(n, size=(16, 24), step=50)``: a folder ``tmp_path/images`` of ``n`` flat grey PNGs
    ``img0.png``… (image i has shade ``step * i``), returned as a Path."""
    from PIL import Image

    def make(n: int = 4, size: tuple[int, int] = (16, 24), step: int = 50):
        d = tmp_path / "images"
        d.mkdir()
        for i in range(n):
            Image.fromarray(np.full((*size, 3), step * i % 256, np.uint8)).save(d / f"img{i}.png")
        return d
    return make
