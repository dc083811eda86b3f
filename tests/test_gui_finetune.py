"""The "Fine-tune on my labels" dialog and the versions combo, driven offscreen with pytest-qt.

Tiny runs: a 3-class deeplabv3plus_mobilenet_v2 on five generated 48×56 images, 64-px crops, a few
steps, so each test takes seconds on two shared cores.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QTimer  # noqa: E402

import engine  # noqa: E402
from deeplab_gui.state.session import Session  # noqa: E402
from deeplab_gui.state.settings import Settings  # noqa: E402
from deeplab_gui.widgets.dialogs.finetune_dialog import CurvePlot, FineTuneDialog, count_labelled, format_eta  # noqa: E402
from deeplab_gui.widgets.panels.model_panel import ModelPanel  # noqa: E402
from deeplab_gui.widgets.panels.versions_panel import VersionsBox  # noqa: E402
from engine import Status  # noqa: E402
from trainer import Recipe, Versions  # noqa: E402
from trainer.synthetic import CLASSES, make_folder  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work
ARCH = "deeplabv3plus_mobilenet_v2"
BASE = Recipe(iterations=4, crop=64, batch_size=2, eval_every=0, device="cpu", eval_max_side=None,
              heldout_fraction=0.2)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))


@pytest.fixture
def session(qtbot, tmp_path):
    """A session on five labelled images plus one unlabelled, with a small 3-class model loaded."""
    folder = tmp_path / "images"
    make_folder(folder, 5, size=(48, 56), seed=3)
    Image.fromarray(np.full((48, 56, 3), 90, np.uint8)).save(folder / "zz_unlabelled.png")
    s = Session(Settings(tmp_path / "settings.ini"))
    with qtbot.waitSignal(s.current_changed, timeout=WAIT):
        s.open_folder(folder)
    torch.manual_seed(0)
    s.set_model(engine.build_model(ARCH, num_classes=3, class_names=[c for c, _ in CLASSES]), "test:base")
    yield s
    s.shutdown()


def _dialog(qtbot, session, **kw) -> FineTuneDialog:
    d = FineTuneDialog(session, base_recipe=kw.pop("base_recipe", BASE), **kw)
    qtbot.addWidget(d)
    return d


def _run(qtbot, d: FineTuneDialog) -> str:
    with qtbot.waitSignal(d.run_finished, timeout=WAIT) as blocker:
        assert d.start() is not None
    qtbot.waitUntil(lambda: d.task is None, timeout=WAIT)
    return blocker.args[0]


# ------------------------------------------------------------------------------ small pieces
def test_format_eta_and_counts():
    assert format_eta(None) == "–"
    assert format_eta(42.4) == "42 s"
    assert format_eta(185) == "3 min 05 s"
    assert format_eta(3720) == "1 h 02 min"
    st = {f"i{k}": Status.EDITED for k in range(4)} | {"r": Status.REVIEWED, "p": Status.PRELABELED,
                                                      "u": Status.UNLABELED}
    assert count_labelled(st, 0.2) == (5, 1)
    assert count_labelled({"a": Status.EDITED, "b": Status.REVIEWED}, 0.2) == (2, 0)  # too few to spare one


def test_knobs_make_the_recipe(qtbot, session):
    d = _dialog(qtbot, session)
    assert "5 edited/reviewed images: 4 to train on, 1 held out" in d.data_label.text()
    assert d.start_button.isEnabled()
    d.iterations.setValue(7)
    d.crop.setValue(96)
    d.lr.setValue(0.002)
    d.freeze_bn.setCurrentIndex(2)  # trained
    d.use_budget.setChecked(True)
    d.budget_min.setValue(1.5)
    r = d.recipe()
    assert (r.iterations, r.crop, r.lr, r.freeze_bn, r.time_budget_s) == (7, 96, 0.002, False, 90.0)
    assert (r.batch_size, r.device) == (2, "cpu")  # the rest comes from the base recipe
    d.use_budget.setChecked(False)
    assert d.recipe().time_budget_s is None


def test_plot_keeps_loss_and_one_point_per_miou_measurement(qtbot):
    from trainer import Progress
    plot = CurvePlot()
    qtbot.addWidget(plot)
    plot.clear(10)
    plot.add_event(Progress("validate", 0, 10))  # "measuring before": no value yet
    for k in (1, 2, 3):
        plot.add_event(Progress("train", k, 10, loss=1.0 / k, miou=0.2))  # the value measured before
    plot.add_event(Progress("validate", 3, 10, miou=0.3))  # a mid-run measurement
    plot.add_event(Progress("train", 4, 10, loss=0.2, miou=0.3))
    plot.add_event(Progress("save", 4, 10, miou=0.4))
    plot.add_event(Progress("done", 4, 10, miou=0.4))
    assert plot.loss == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.2)]
    assert plot.miou == [(0, 0.2), (3, 0.3), (4, 0.4)]
    plot.resize(300, 160)
    plot.grab()  # paints without error at a real size


# ------------------------------------------------------------------------------ whole runs
def test_success_swaps_the_model_while_the_ui_keeps_ticking(qtbot, session):
    old = session.model
    d = _dialog(qtbot, session, prelabel=lambda: "prelabel-called")
    asked = []
    d.ask = lambda text: asked.append(text) or True
    ticks, during = [0], []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    timer.start()
    d.training.event.connect(lambda ev: during.append((ev.phase, ticks[0])))
    assert _run(qtbot, d) == "done"
    timer.stop()
    res = d.result
    assert res.status == "done" and res.version is not None
    # The UI thread's timer kept firing between the run's first and last events.
    assert during[0][0] == "prepare" and during[-1][0] == "done"
    assert during[-1][1] > during[0][1]
    # Progress events reached the plot: one loss point per step, mIoU before and after.
    assert [s for s, _ in d.plot.loss] == [1, 2, 3, 4]
    assert d.plot.miou == [(0, res.miou_before), (4, res.miou_after)]
    assert "step 4 / 4" in d.step_label.text() and "images/s" in d.step_label.text()
    # Swapped in without a restart, under a new model id; the version is recorded and current.
    assert session.model is res.model and session.model is not old
    assert session.model_id == engine.checkpoint_id(res.checkpoint) and session.model_name == res.version.name
    qtbot.waitUntil(lambda: Versions.of(session.store).current is not None, timeout=WAIT)
    versions = Versions.of(session.store)
    assert [v.name for v in versions.list()] == [res.version.name]
    assert versions.current.name == res.version.name
    assert bool(asked) == (not res.promoted)  # asked only when the trainer did not promote it itself
    assert "→" in d.status_label.text()
    # Offer to re-pre-label the one image nobody edited.
    assert d.reprelabel_button.isVisibleTo(d) and "1 image" in d.reprelabel_button.text()
    assert d.reprelabel() == "prelabel-called"


def test_cancel_leaves_model_and_versions_alone(qtbot, session):
    old, old_id = session.model, session.model_id
    d = _dialog(qtbot, session, base_recipe=Recipe(**{**BASE.to_dict(), "iterations": 10_000}))
    seen = []

    def on_event(ev):
        seen.append(ev.phase)
        if ev.phase == "train" and ev.step == 2:
            d.cancel_button.click()
    d.training.event.connect(on_event)
    assert _run(qtbot, d) == "cancelled"
    assert seen[-1] == "cancelled" and "done" not in seen
    assert session.model is old and session.model_id == old_id
    assert Versions.of(session.store).list() == [] and not any(session.store.checkpoints_dir.glob("*.safetensors"))
    assert "unchanged" in d.status_label.text()
    assert d.start_button.isEnabled() and not d.cancel_button.isEnabled()


def test_unmeasured_run_asks_and_no_keeps_the_current_model(qtbot, session):
    # Without held-out images the trainer cannot tell whether it helped: it does not promote, we ask.
    old = session.model
    d = _dialog(qtbot, session, base_recipe=Recipe(**{**BASE.to_dict(), "iterations": 2, "heldout_fraction": 0.0}))
    asked = []
    d.ask = lambda text: asked.append(text) or False
    assert _run(qtbot, d) == "done"
    assert len(asked) == 1 and "anyway" in asked[0]
    assert session.model is old
    versions = Versions.of(session.store)
    assert len(versions.list()) == 1 and versions.current is None
    assert not d.reprelabel_button.isVisibleTo(d)


def test_training_error_is_reported(qtbot, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    s = Session(Settings(tmp_path / "settings.ini"))
    try:
        with qtbot.waitSignal(s.current_changed, timeout=WAIT):
            s.open_folder(folder)
        s.set_model(engine.build_model(ARCH, num_classes=3), "test:base")
        d = _dialog(qtbot, s)
        assert not d.start_button.isEnabled() and "no edited" in d.data_label.text()
        assert _run(qtbot, d) == "error"  # start() leaves that check to the trainer, whose message says why
        assert "no images with edited or reviewed masks" in d.status_label.text()
    finally:
        s.shutdown()


# ------------------------------------------------------------------------------ panel and versions
def test_with_no_model_the_run_starts_a_new_one(qtbot, session):
    session.set_model(None, None)  # no weights on this machine: the banner's third way forward
    panel = ModelPanel(session)
    qtbot.addWidget(panel)
    assert panel.finetune_button.isEnabled()
    d = panel.open_finetune()
    d.set_recipe(Recipe(**{**BASE.to_dict(), "iterations": 3}))
    assert d._form.isRowVisible(d.new_arch) and d.new_arch.currentText() == ARCH
    assert d.start_button.isEnabled()
    d.ask = lambda text: True
    assert _run(qtbot, d) == "done"
    res = d.result
    assert session.model is not None and session.model.meta.arch == ARCH
    assert session.model.meta.num_classes == 3 and session.model.meta.extra["start"] == "scratch"
    # "Make it current" is written by a task queued when the run ended.
    qtbot.waitUntil(lambda: (Versions.of(session.store).current or res.version).name == res.version.name
                    and Versions.of(session.store).current is not None, timeout=WAIT)
    assert not d._form.isRowVisible(d.new_arch)  # a model now: the next run fine-tunes it


def test_opening_a_folder_loads_its_current_version(qtbot, session, tmp_path):
    d = _dialog(qtbot, session)
    d.ask = lambda text: True
    assert _run(qtbot, d) == "done"
    current = Versions.of(session.store).current_path()
    folder = session.folder
    session.shutdown()
    s2 = Session(Settings(tmp_path / "fresh.ini"))  # a new start: no weights remembered
    try:
        panel = ModelPanel(s2)
        qtbot.addWidget(panel)
        with qtbot.waitSignal(s2.current_changed, timeout=WAIT):
            s2.open_folder(folder)
        qtbot.waitUntil(lambda: s2.model is not None and panel.task is None, timeout=WAIT)
        assert s2.model_id == engine.checkpoint_id(current)
        assert panel.status_label.text() == f"loaded this folder's fine-tuned model {current.name}"
    finally:
        s2.shutdown()


def test_model_panel_button_and_versions_combo(qtbot, session):
    panel = ModelPanel(session)
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: panel.catalog_checked, timeout=WAIT)  # its autoload has looked and found nothing
    assert panel.finetune_button.isEnabled()
    d = panel.open_finetune()
    assert d is panel.open_finetune()  # one dialog per panel
    d.set_recipe(Recipe(**{**BASE.to_dict(), "iterations": 2}))
    d.ask = lambda text: True
    first_model = session.model
    assert _run(qtbot, d) == "done"
    first = d.result.version.name
    assert _run(qtbot, d) == "done"
    second = d.result.version.name
    box: VersionsBox = panel.versions
    qtbot.waitUntil(lambda: len(box.entries) == 2, timeout=WAIT)
    assert [e.name for e in box.entries] == [second, first]  # newest first
    assert box.entries[0].current and "(current)" in box.combo.itemText(0)
    # Make the first version current again: loaded from its checkpoint, swapped in, recorded.
    with qtbot.waitSignal(box.version_loaded, timeout=WAIT):
        assert box.use(first) is not None
    assert session.model is not first_model and session.model_name == first
    assert Versions.of(session.store).current.name == first
    qtbot.waitUntil(lambda: box.entries and box.entries[1].current, timeout=WAIT)
    # The re-pre-label offer goes through the panel's pre-label-all path, pre-labelled images included.
    with qtbot.waitSignal(panel.prelabel_finished, timeout=WAIT) as blocker:
        assert d.reprelabel() is not None
    assert blocker.args[0]["total"] == 1
    qtbot.waitUntil(lambda: panel.task is None, timeout=WAIT)
    assert session.store.status("zz_unlabelled.png") is Status.PRELABELED
    assert all(session.store.status(f"img{i:03d}.png") is Status.EDITED for i in range(5))


def test_main_window_menu_opens_the_panel_dialog(qtbot, session):
    from deeplab_gui.widgets.main_window import MainWindow
    win = MainWindow(session)
    qtbot.addWidget(win)
    assert win.finetune_action.text().startswith("&Fine-tune")
    win.finetune_action.trigger()
    d = win.panels["Model"].finetune_dialog
    assert isinstance(d, FineTuneDialog) and d.isVisible()
    assert d.start_button.isEnabled() and "4 to train on" in d.data_label.text()
    d.close()
    # With no model the menu opens the same dialog as the panel's button, offering a new model.
    session.set_model(None, None)
    assert win.open_finetune() is d and d.isVisible() and d._form.isRowVisible(d.new_arch)
    d.close()
    session.close_store()
    assert win.open_finetune() is None and "open a folder" in win.messages[-1][1]


def test_a_damaged_versions_index_is_reported_in_the_app(qtbot, session):
    index = session.store.checkpoints_dir / "versions.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text("[1, 2")
    messages = []
    session.message.connect(lambda level, text: messages.append((level, text)))
    box = VersionsBox(session)
    qtbot.addWidget(box)
    with qtbot.waitSignal(box.refreshed, timeout=WAIT):
        box.refresh()
    assert any(level == "warning" and "versions.json" in text and "damaged" in text for level, text in messages)
