"""session.crf (CRFState): parameters kept per folder, read fresh by the CRF-snap brush, and live results
that arrive through the session's task runner (no threads of its own)."""
from __future__ import annotations

import inspect
import threading
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, Qt

import deeplab_gui.state.crf as crf_state
import engine.crf
from deeplab_gui.state.crf_lanes import Frame
from engine.crf import CONVCRF, DEEPLAB_V1, DEEPLAB_V2
from engine.crf.synthetic import make_scene

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))


@pytest.fixture
def slow_saves(monkeypatch):
    """Parameters reach the settings only on a folder switch or shutdown: the timer never fires in a test."""
    monkeypatch.setattr(crf_state, "SAVE_DELAY_MS", 600_000)


def _scene_folder(tmp_path, name="scene", height=40, width=60):
    scene = make_scene(height, width, 21, active_classes=2, seed=3, shapes=1, coarse=8, prob_noise=1.5)
    folder = tmp_path / name
    folder.mkdir()
    Image.fromarray(scene.image).save(folder / f"{name}.png")
    return folder, scene


def _open(qtbot, s, folder):
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.open_folder(folder)


def test_parameters_are_kept_per_folder(qtbot, tmp_path, sessions, slow_saves):
    a, _ = _scene_folder(tmp_path, "a")
    b, _ = _scene_folder(tmp_path, "b")
    s = sessions(a)
    assert s.crf.params == DEEPLAB_V1  # nothing stored yet: the default preset
    with qtbot.waitSignal(s.crf.params_changed, timeout=WAIT) as changed:
        s.crf.params = DEEPLAB_V2
    assert changed.args == [DEEPLAB_V2]
    assert s.settings.crf_params(s.folder) == {}  # a drag is written once it pauses, not per step
    _open(qtbot, s, b)
    # Written under the folder they were chosen for; a folder with none keeps the ones in use.
    assert s.settings.crf_params(a.resolve()) == asdict(DEEPLAB_V2)
    assert s.crf.params == DEEPLAB_V2
    s.crf.params = CONVCRF
    _open(qtbot, s, a)
    assert s.crf.params == DEEPLAB_V2
    assert s.settings.crf_params(b.resolve()) == asdict(CONVCRF)
    s.crf.params = DEEPLAB_V2.replace(iterations=4)
    s.shutdown()
    s.crf.shutdown()  # what closing the window does: pending parameters are written
    # The next session over the same settings finds each folder's own.
    again = sessions(b)
    assert again.crf.params == CONVCRF
    _open(qtbot, again, a)
    assert again.crf.params == DEEPLAB_V2.replace(iterations=4)


def test_snap_brush_refines_with_the_parameters_set_a_moment_ago(qtbot, tmp_path, sessions, slow_saves,
                                                                 monkeypatch):
    from deeplab_gui.widgets.canvas.canvas import Canvas
    from deeplab_gui.widgets.canvas.tools import SnapTool

    folder, _ = _scene_folder(tmp_path)
    s = sessions(folder)
    canvas = Canvas(s)
    qtbot.addWidget(canvas)
    tool = SnapTool()
    canvas.set_tool(tool)
    tool.size = 2.0
    used = []
    real = engine.crf.refine_with_scribbles

    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        used.append(bound.arguments.get("params", DEEPLAB_V1))
        return real(*args, **kwargs)
    monkeypatch.setattr(engine.crf, "refine_with_scribbles", spy)

    wanted = DEEPLAB_V1.replace(iterations=3, bilateral_xy=20.0)
    s.crf.params = wanted  # not in the settings yet (see slow_saves)
    s.current_label = 1
    tool.press(QPointF(10.5, 10.5), Qt.KeyboardModifier.NoModifier)
    tool.move(QPointF(14.5, 12.5), True)
    with qtbot.waitSignal(s.mask_changed, timeout=WAIT):
        tool.release(QPointF(14.5, 12.5))
    assert used == [wanted]
    assert s.document.undo_description == "CRF snap" and s.document.undo_depth == 1


def test_live_results_arrive_through_the_task_runner(qtbot, tmp_path, sessions):
    folder, scene = _scene_folder(tmp_path, height=150, width=200)  # above the preview's pixel budget
    s = sessions(folder)
    started, arrived = [], []
    real_run_task = s.run_task

    def spy(fn, *args, **kwargs):
        handle = real_run_task(fn, *args, **kwargs)
        started.append(handle.name)
        handle.yielded.connect(arrived.append)
        return handle
    s.run_task = spy
    s.crf.params = DEEPLAB_V1.replace(iterations=0)
    assert not s.crf.running  # off until a view turns it on
    s.crf.enabled = True
    with qtbot.waitSignal(s.crf.full_ready, timeout=WAIT):
        s.set_probs(s.image_id, scene.probs)
    previews, fulls = [], []
    s.crf.preview_ready.connect(previews.append)
    s.crf.full_ready.connect(fulls.append)
    wanted = DEEPLAB_V1.replace(iterations=5)
    s.crf.params = wanted
    qtbot.waitUntil(lambda: bool(fulls) and fulls[-1].params == wanted, timeout=WAIT)
    assert [p.params for p in previews] == [wanted] and previews[0].stage == "preview"
    frames = [v for v in arrived if isinstance(v, Frame)]
    assert any(f.result is previews[0] for f in frames) and any(f.result is fulls[-1] for f in frames)
    assert {"live CRF preview", "live CRF full"} <= set(started)
    np.testing.assert_array_equal(s.crf_labels, next(f.labels for f in frames if f.result is fulls[-1]))
    assert not [t.name for t in threading.enumerate() if t.name.startswith("LiveCRF")]
    # Idle lanes give their pool threads back; the refinement stays ready for the next request.
    qtbot.waitUntil(lambda: s.worker.active == 0, timeout=WAIT)
    assert s.crf.running
    # Latest wins: of requests sent in one go, only the last one's full-size stage runs.
    del fulls[:]
    burst = [DEEPLAB_V1.replace(iterations=i) for i in (6, 7, 8, 9)]
    for p in burst:
        s.crf.params = p
    qtbot.waitUntil(lambda: bool(fulls) and fulls[-1].params == burst[-1], timeout=WAIT)
    assert [f.params for f in fulls] == [burst[-1]]
    # Apply to mask: one undo step; switching off drops the labels and the refinement.
    depth = s.document.undo_depth
    assert s.crf.apply_to_mask()
    np.testing.assert_array_equal(s.document.mask, s.crf_labels)
    assert s.document.undo_depth == depth + 1
    s.crf.enabled = False
    assert s.crf_labels is None and not s.crf.running and s.crf.status == "CRF off"


def test_results_for_an_image_left_behind_never_show(qtbot, tmp_path, sessions, monkeypatch):
    from engine.crf import LiveCRF

    folder, scene = _scene_folder(tmp_path, "a", height=150, width=200)  # with a preview stage
    Image.fromarray(scene.image).save(folder / "b.png")
    s = sessions(folder)
    s.crf.enabled = True
    entered, gate = threading.Event(), threading.Event()
    real_run = LiveCRF.run

    def held(self, params, **kwargs):  # the first refinement waits until the image has changed
        entered.set()
        gate.wait(WAIT / 1000)
        yield from real_run(self, params, **kwargs)
    monkeypatch.setattr(LiveCRF, "run", held)
    shown = []
    s.crf.preview_ready.connect(shown.append)
    s.crf.full_ready.connect(shown.append)
    s.set_probs(s.image_id, scene.probs)
    qtbot.waitUntil(entered.is_set, timeout=WAIT)
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.select("b.png")
    gate.set()
    qtbot.waitUntil(lambda: s.worker.active == 0, timeout=WAIT)
    assert shown == [] and s.crf_labels is None and not s.crf.running
    assert s.crf.status.startswith("no model probabilities")  # b.png was never pre-labelled


def test_the_panel_shows_what_the_state_holds(qtbot, tmp_path, sessions):
    from deeplab_gui.widgets.panels.crf_panel import CRFPanel

    folder, _ = _scene_folder(tmp_path)
    s = sessions(folder)
    panel = CRFPanel(s)
    qtbot.addWidget(panel)
    assert s.crf.enabled  # the panel's Live CRF box starts checked
    s.crf.params = DEEPLAB_V2
    assert panel.controls["gaussian_xy"].box.value() == 1.0 and panel.preset_combo.currentData() == "deeplab_v2"
    s.crf.enabled = False
    assert not panel.enable_box.isChecked() and panel.status_label.text() == "CRF off"
    panel.enable_box.setChecked(True)
    assert s.crf.enabled
    panel.shutdown()
