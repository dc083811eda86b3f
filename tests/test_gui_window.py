"""The main window as a whole: fast first picture of a big JPEG, panels driven together, closing.

Offscreen with pytest-qt against a real Session and store; tiny images and a tiny random model.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QIcon  # noqa: E402
from PySide6.QtWidgets import QApplication, QDockWidget  # noqa: E402

import engine  # noqa: E402
from deeplab_gui.state import session as session_mod  # noqa: E402
from deeplab_gui.state.session import Session  # noqa: E402
from deeplab_gui.state.settings import Settings  # noqa: E402
from deeplab_gui.widgets.canvas.canvas import Canvas  # noqa: E402
from deeplab_gui.widgets.main_window import MainWindow  # noqa: E402
from deeplab_gui.widgets.panels.crf_panel import PARAM_SPECS  # noqa: E402
from deeplab_gui.widgets.panels.image_list import status_icon  # noqa: E402
from engine import Status  # noqa: E402
from engine.crf import DEEPLAB_V1  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work
W, H = 320, 240


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DEEPLAB_GUI_SETTINGS", str(tmp_path / "settings.ini"))


def _smooth(h: int, w: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x + shift) % 256, y * 255 // (h - 1), (x + y) % 256], axis=2).astype(np.uint8)


@pytest.fixture
def jpegs(tmp_path):
    """Two 320×240 JPEGs, the first with a stored mask (as after pre-labelling)."""
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(2):
        Image.fromarray(_smooth(H, W, 40 * i)).save(d / f"p{i}.jpg", quality=92)
    return d


@pytest.fixture
def held_full_decode(monkeypatch):
    """Make the full-resolution decode wait for ``gate`` so a test sees the preview stage."""
    gate = threading.Event()
    real = session_mod.read_for_display

    def slow(path):
        assert gate.wait(WAIT / 1000), "test never released the full decode"
        return real(path)
    monkeypatch.setattr(session_mod, "read_for_display", slow)
    yield gate
    gate.set()


def _session(tmp_path, preview_side=None) -> Session:
    s = Session(Settings(tmp_path / "settings.ini"))
    s.preview_side = preview_side
    return s


def test_big_jpeg_shows_a_reduced_decode_first_then_full_resolution(qtbot, tmp_path, jpegs, held_full_decode):
    s = _session(tmp_path, preview_side=64)
    canvas = Canvas(s)
    qtbot.addWidget(canvas)
    try:
        from engine import AnnotationStore
        store = AnnotationStore.open(jpegs)
        stored = np.full((H, W), 255, np.uint8)
        stored[50:150, 60:200] = 7
        store.save_mask("p0.jpg", stored, status=Status.PRELABELED)
        store.close()
        with qtbot.waitSignal(s.current_changed, timeout=WAIT):
            s.open_folder(jpegs)
        # Preview stage: 1/4-scale pixels stretched over the full-size scene; mask and document full size.
        assert s.image is None and s.image_size == (H, W)
        assert (s.display.width(), s.display.height()) == (W // 4, H // 4)
        assert s.document.shape == (H, W)
        np.testing.assert_array_equal(s.document.mask, stored)
        assert canvas.scene().sceneRect().size().toTuple() == (W, H)
        assert canvas.image_item.pixmap().width() == W // 4
        assert canvas.image_item.transform().m11() == pytest.approx(4.0)
        np.testing.assert_array_equal(canvas.overlay.buffer(), stored)
        # Painting works before the pixels arrive, and survives their arrival.
        s.document.polygon([(10, 10), (90, 10), (90, 60), (10, 60)], 3)
        edited = s.document.mask.copy()
        assert not np.array_equal(edited, stored)
        np.testing.assert_array_equal(canvas.overlay.buffer(), edited)
        with qtbot.waitSignal(s.image_ready, timeout=WAIT) as ready:
            held_full_decode.set()
        assert ready.args == ["p0.jpg"]
        assert s.image.shape == (H, W, 3)
        ref = np.asarray(Image.open(jpegs / "p0.jpg").convert("RGB"))
        np.testing.assert_array_equal(s.image, ref)
        assert canvas.image_item.pixmap().width() == W
        assert canvas.image_item.transform().isIdentity()
        np.testing.assert_array_equal(s.document.mask, edited)  # the same document, edits kept
    finally:
        held_full_decode.set()
        s.shutdown()


def test_a_full_decode_for_an_image_left_behind_is_dropped(qtbot, tmp_path, jpegs, held_full_decode):
    s = _session(tmp_path, preview_side=64)
    try:
        with qtbot.waitSignal(s.current_changed, timeout=WAIT):
            s.open_folder(jpegs)
        assert s.image_id == "p0.jpg" and s.image is None
        with qtbot.waitSignal(s.current_changed, timeout=WAIT):
            s.select("p1.jpg")
        assert s.image_id == "p1.jpg" and s.image_size == (H, W)
        with qtbot.waitSignal(s.image_ready, timeout=WAIT) as ready:
            held_full_decode.set()
        assert ready.args == ["p1.jpg"]
        qtbot.waitUntil(lambda: s.worker.active == 0, timeout=WAIT)
        ref = np.asarray(Image.open(jpegs / "p1.jpg").convert("RGB"))
        np.testing.assert_array_equal(s.image, ref)  # p0's late pixels never replaced p1's
    finally:
        held_full_decode.set()
        s.shutdown()


# ------------------------------------------------------------------------------ the whole window
@pytest.fixture
def noisy_ckpt(tmp_path):
    """A random deeplabv3plus_mobilenet_v2 whose last layer only lets classes 1 and 2 through: two
    regions with coarse boundaries (the decoder sees low-level features), which a dense CRF moves."""
    torch.manual_seed(0)
    model = engine.build_model("deeplabv3plus_mobilenet_v2", num_classes=21)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        bias = torch.full_like(last.bias, -20.0)
        bias[1:3] = 0.0
        last.bias.copy_(bias)
    path = tmp_path / "noisy.safetensors"
    engine.save_model(model, path)
    return path


@pytest.fixture
def window(qtbot, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    img = np.zeros((40, 56, 3), np.uint8)
    img[:, 28:] = 220
    img = np.clip(img.astype(int) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "a.png")
    win = MainWindow(Session(Settings(tmp_path / "settings.ini")))
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    with qtbot.waitSignal(win.session.current_changed, timeout=WAIT):
        win.session.open_folder(folder)
    yield win
    win.close()


def test_prelabel_crf_slider_apply_and_undo_in_the_main_window(qtbot, window, noisy_ckpt):
    s, canvas = window.session, window.canvas
    model_panel, crf_panel = window.panels["Model"], window.panels["CRF"]
    with qtbot.waitSignal(s.model_changed, timeout=WAIT):
        model_panel.load_weights(str(noisy_ckpt))
    qtbot.waitUntil(lambda: model_panel.task is None and model_panel.prelabel_button.isEnabled(), timeout=WAIT)
    crf_panel.set_params(DEEPLAB_V1.replace(iterations=0), submit=False)
    model_panel.prelabel_button.click()
    # The prediction lands in the document (one undo step) and the live CRF starts on its probabilities.
    qtbot.waitUntil(lambda: s.probs is not None and s.document.undo_depth == 1, timeout=WAIT)
    qtbot.waitUntil(lambda: crf_panel.last_result is not None
                    and crf_panel.last_result.params.iterations == 0, timeout=WAIT)
    prelabel = s.document.mask.copy()
    assert len(np.unique(prelabel)) > 1
    np.testing.assert_array_equal(canvas.overlay.buffer(), prelabel)
    # A slider move: the view switches to the CRF and the canvas overlay shows the refined labels.
    spec = next(p for p in PARAM_SPECS if p.field == "iterations")
    crf_panel.controls["iterations"].slider.setValue(spec.to_slider(10))
    qtbot.waitUntil(lambda: crf_panel.last_result.params.iterations == 10
                    and crf_panel.last_result.stage == "full", timeout=WAIT)
    qtbot.waitUntil(lambda: np.array_equal(canvas.overlay.buffer(), s.crf_labels), timeout=WAIT)
    assert s.view_mode == "crf"
    crf = s.crf_labels.copy()
    assert (crf != prelabel).mean() > 0.01
    # Apply: the mask becomes the CRF labels; Ctrl+Z in the window brings the pre-label back.
    assert crf_panel.apply_button.isEnabled()
    crf_panel.apply_button.click()
    np.testing.assert_array_equal(s.document.mask, crf)
    s.set_view_mode("mask")
    np.testing.assert_array_equal(canvas.overlay.buffer(), crf)
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(s.document.mask, prelabel)
    np.testing.assert_array_equal(canvas.overlay.buffer(), prelabel)


def test_closing_the_window_stops_the_live_crf(qtbot, window, monkeypatch):
    crf_panel = window.panels["CRF"]
    calls = []
    real = crf_panel.shutdown
    monkeypatch.setattr(crf_panel, "shutdown", lambda: (calls.append(1), real())[1])
    window.close()
    assert calls == [1]
    assert not window.session.crf.running and window.session.worker.active == 0


def _settle() -> None:
    """Deliver the posted layout requests (no timer involved: nothing to wait for beyond them)."""
    for _ in range(3):
        QApplication.sendPostedEvents()
        QApplication.processEvents()


def test_tool_options_take_no_spare_height(qtbot, window):
    # The four tool options are one row in the tool bar, not a dock of their own.
    assert not any(d.objectName() == "Tool_options" for d in window.findChildren(QDockWidget))
    opts = window.tool_options
    assert window.tool_bar.isAncestorOf(opts)
    # The model panel's banner comes and goes (weights missing, then loaded): the height it gives
    # back must not end up as a blank band around the tool options.
    banner = window.panels["Model"].banner
    banner.show()
    qtbot.waitUntil(lambda: banner.isVisible(), timeout=WAIT)
    _settle()
    banner.hide()
    _settle()
    assert opts.height() <= max(opts.layout().sizeHint().height(), window.tool_bar.iconSize().height() + 12)


def test_window_fits_a_laptop_screen_and_the_banner_shows_all_its_text(qtbot, window):
    # The right-hand docks together are taller than 768 pixels: the model and CRF panels scroll
    # instead of pushing the window off a laptop screen.
    assert window.minimumSizeHint().height() <= 700
    window.resize(1280, 720)
    panel = window.panels["Model"]
    panel.banner.show()
    _settle()
    text = panel.banner_text
    qtbot.waitUntil(lambda: text.height() >= text.heightForWidth(text.width()), timeout=WAIT)
    assert "3." in text.text() or "<li>" in text.text()


def test_status_icons_stay_visible_on_a_selected_row(qtbot):
    for status in ("unlabeled", "prelabeled", "edited", "reviewed"):
        img = status_icon(status).pixmap(16, 16, QIcon.Mode.Selected).toImage()
        opaque = [img.pixelColor(x, y) for y in range(16) for x in range(16) if img.pixelColor(x, y).alpha() > 200]
        assert opaque, status
        # Light glyphs on the (dark blue) selection highlight, whatever the status colour is.
        assert np.mean([c.lightness() for c in opaque]) > 200, status
