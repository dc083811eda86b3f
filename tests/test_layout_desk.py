"""The main window at 1280×800: the panels' buttons fit without scrolling, docks keep their width.

Offscreen with pytest-qt against the real window, a tiny image folder and a small random model saved
under a long file name (the kind a fine-tuning run writes).
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QApplication, QDockWidget  # noqa: E402

import engine  # noqa: E402

WAIT = 20_000
LONG_NAME = "my_project_deeplabv3_mobilenet_v2_finetuned_on_forty_two_images_2026_11_29_v17.safetensors"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DEEPLAB_GUI_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(d / "a.png")
    return d


@pytest.fixture
def long_ckpt(tmp_path):
    path = tmp_path / LONG_NAME
    engine.save_model(engine.build_model("deeplabv3_mobilenet_v2", num_classes=21), path)
    return path


def _settle() -> None:
    for _ in range(5):
        QApplication.sendPostedEvents()
        QApplication.processEvents()


def _right_dock(win) -> QDockWidget:
    return next(d for d in win.findChildren(QDockWidget) if d.objectName() == "Model")


def _load(qtbot, win, path) -> None:
    panel = win.panels["Model"]
    with qtbot.waitSignal(win.session.model_changed, timeout=WAIT):
        assert panel.load_weights(str(path)) is not None
    qtbot.waitUntil(lambda: panel.task is None, timeout=WAIT)
    _settle()


def _fully_visible(widget) -> bool:
    """Shown whole: the part of it not clipped by its scroll area's viewport is all of it."""
    return widget.isVisible() and widget.visibleRegion().boundingRect().size() == widget.size()


@pytest.fixture
def window(open_window, folder):
    win = open_window(folder)
    win.resize(1280, 800)
    _settle()
    return win


def test_prelabel_and_crf_buttons_fit_1280x800_without_scrolling(qtbot, window, long_ckpt):
    _load(qtbot, window, long_ckpt)
    model, crf = window.panels["Model"], window.panels["CRF"]
    for w in (model.prelabel_button, model.prelabel_all_button, model.finetune_button,
              crf.apply_button, *crf.view_buttons.values()):
        assert _fully_visible(w), w.text()
    assert window.tool_bar.isVisible() and not window.tool_bar.visibleRegion().isEmpty()
    # The brush options sit in the tool bar, still all reachable.
    opts = window.tool_options
    for w in (opts.size, opts.opacity, opts.outline, opts.view):
        assert window.tool_bar.isAncestorOf(w) and _fully_visible(w)


def test_right_dock_keeps_its_width_when_a_long_named_checkpoint_loads(qtbot, window, long_ckpt):
    dock = _right_dock(window)
    before = dock.width()
    _load(qtbot, window, long_ckpt)
    assert dock.width() == before
    # The name is shown whole somewhere: the elided model line's tooltip.
    assert LONG_NAME in window.panels["Model"].model_label.toolTip()


def test_weights_combo_names_the_loaded_file(qtbot, window, long_ckpt):
    panel = window.panels["Model"]
    _load(qtbot, window, long_ckpt)
    assert LONG_NAME in panel.weights_combo.currentText()
    assert panel.weights_combo.currentText().startswith("file: ")
    # Load with that entry chosen loads the same file again, not catalog weights.
    assert panel.weights_combo.currentData() == str(long_ckpt)


def test_crf_status_line_shows_its_whole_text(qtbot, window):
    crf = window.panels["CRF"]
    text = "no model probabilities for this image yet: pre-label it first, then move a slider " * 2
    crf.status_label.setText(text)
    _settle()
    label = crf.status_label
    assert label.height() >= label.heightForWidth(label.width())  # every wrapped line gets its height
    assert label.toolTip() == text
    assert _right_dock(window).width() <= window.width() // 2


def test_view_menu_toggles_the_tool_bar(qtbot, window):
    toggle = window.tool_bar.toggleViewAction()
    assert toggle in window.view_menu.actions()
    toggle.trigger()
    assert window.tool_bar.isHidden()
    toggle.trigger()
    assert not window.tool_bar.isHidden()
