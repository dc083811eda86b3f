"""The fine-tune dialog's rough edges, driven offscreen with pytest-qt: what a run with too few images
will not measure (said before it starts), keeping the first model by default, a status line that
follows the run's phase, a re-pre-label offer that names what it counts, and a loss curve inside its
frame.

Tiny runs: a 3-class deeplabv3plus_mobilenet_v2 on generated 48×56 images, 64-px crops, two or three
steps, so each test takes seconds on two shared cores.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

import engine  # noqa: E402
from deeplab_gui.widgets.dialogs.finetune_dialog import CurvePlot, FineTuneDialog  # noqa: E402
from engine import AnnotationStore, Status  # noqa: E402
from trainer import Progress, Recipe, Versions  # noqa: E402
from trainer.synthetic import CLASSES, make_folder  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work
ARCH = "deeplabv3plus_mobilenet_v2"
BASE = Recipe(iterations=2, crop=64, batch_size=2, eval_every=0, device="cpu", eval_max_side=None,
              heldout_fraction=0.2)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))


def _folder(tmp_path, edited: int, prelabelled: int = 0, unlabelled: int = 1):
    """``edited`` images a person corrected, then ``prelabelled`` a model labelled, then ``unlabelled``."""
    folder = tmp_path / "images"
    ids = make_folder(folder, edited + prelabelled, size=(48, 56), seed=3)
    with AnnotationStore.open(folder) as store:
        for i in ids[edited:]:
            store.set_status(i, Status.PRELABELED)
    for k in range(unlabelled):
        Image.fromarray(np.full((48, 56, 3), 90 + k, np.uint8)).save(folder / f"zz_unlabelled{k}.png")
    return folder


def _with_model(session):
    torch.manual_seed(0)
    session.set_model(engine.build_model(ARCH, num_classes=3, class_names=[c for c, _ in CLASSES]), "test:base")
    return session


def _dialog(qtbot, session, recipe=BASE) -> FineTuneDialog:
    # The session's own training state: the offer then takes the model panel's pre-label-all path.
    d = FineTuneDialog(session, base_recipe=recipe, training=session.models.training)
    qtbot.addWidget(d)
    return d


def _run(qtbot, d: FineTuneDialog) -> str:
    with qtbot.waitSignal(d.run_finished, timeout=WAIT) as blocker:
        assert d.start() is not None
    qtbot.waitUntil(lambda: d.task is None, timeout=WAIT)
    return blocker.args[0]


# ------------------------------------------------------------------------------ too few images
def test_too_few_images_says_before_starting_what_is_not_measured(qtbot, sessions, tmp_path):
    s = _with_model(sessions(_folder(tmp_path, edited=2)))
    d = _dialog(qtbot, s)
    text = d.data_label.text()
    assert d.start_button.isEnabled() and d.events == 0  # said before anything runs
    assert "2 edited/reviewed image(s), all used for training" in text
    assert "Measured: the training loss" in text and "Not measured: held-out mIoU" in text
    assert "choose whether to use it" in text  # a model is loaded: the person decides at the end
    # A recipe that holds nothing out says so as the reason.
    d.set_recipe(Recipe(**{**BASE.to_dict(), "heldout_fraction": 0.0}))
    assert "the recipe holds none out" in d.data_label.text()


def test_with_no_model_before_the_end_prompt_keeps_the_result_by_default(qtbot, sessions, tmp_path):
    s = sessions(_folder(tmp_path, edited=2))
    assert s.model is None
    d = _dialog(qtbot, s)
    assert "used when it finishes unless you decline" in d.data_label.text()
    statuses = []
    d.training.status_changed.connect(statuses.append)
    prompts = []

    def press_enter():
        # The real question box: Enter takes its default button, as a person hurrying on would.
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            prompts.append(box.text())
            QTest.keyClick(box, Qt.Key.Key_Return)
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(press_enter)
    timer.start()
    try:
        assert _run(qtbot, d) == "done"
    finally:
        timer.stop()
    res = d.result
    assert s.model is res.model and s.model_name == res.version.name
    assert len(prompts) == 1 and "No model was loaded before this run" in prompts[0]
    qtbot.waitUntil(lambda: Versions.of(s.store).current is not None, timeout=WAIT)
    assert Versions.of(s.store).current.name == res.version.name
    # Nothing was held out: the status line never claims a measurement.
    assert not any("measuring" in t for t in statuses)
    assert any("mIoU is not measured" in t for t in statuses)


# ------------------------------------------------------------------------------ the status line
def test_status_line_follows_the_phase(qtbot, sessions, tmp_path):
    s = _with_model(sessions(_folder(tmp_path, edited=5)))
    d = _dialog(qtbot, s, Recipe(**{**BASE.to_dict(), "iterations": 3}))
    d.ask = lambda text: False
    seen = []
    d.training.event.connect(lambda ev: seen.append((ev.phase, ev.step, d.status_label.text())))
    assert _run(qtbot, d) == "done"
    lines = {(phase, step): text for phase, step, text in seen}
    assert lines[("validate", 0)] == "measuring the model before training"
    assert [lines[("train", k)] for k in (1, 2, 3)] == [f"training: step {k} of 3" for k in (1, 2, 3)]
    assert lines[("validate", 3)] == "measuring the model after training"
    assert lines[("save", 3)] == "writing the new version"
    assert "→" in d.status_label.text()  # the outcome, once it is over


# ------------------------------------------------------------------------------ the re-pre-label offer
def test_reprelabel_offer_names_and_counts_what_it_will_pre_label(qtbot, sessions, tmp_path):
    s = _with_model(sessions(_folder(tmp_path, edited=3, prelabelled=2, unlabelled=1)))
    d = _dialog(qtbot, s, Recipe(**{**BASE.to_dict(), "heldout_fraction": 0.0}))
    d.ask = lambda text: True
    assert _run(qtbot, d) == "done"
    text = d.reprelabel_button.text()
    assert d.reprelabel_button.isVisibleTo(d)
    assert text == "Pre-label 3 image(s) nobody edited with the new model (1 unlabelled, 2 pre-labelled by a model before)"
    # The count is exactly what the pre-label path then covers; the edited images stay.
    with qtbot.waitSignal(s.models.prelabel_finished, timeout=WAIT) as blocker:
        assert d.reprelabel() is not None
    assert blocker.args[0]["total"] == 3
    qtbot.waitUntil(lambda: s.models.task is None, timeout=WAIT)
    assert [s.store.status(f"img{i:03d}.png") for i in range(3)] == [Status.EDITED] * 3


# ------------------------------------------------------------------------------ the plot
def _loss_rows(plot: CurvePlot) -> list[int]:
    """Rows holding the loss curve's blue in the right half of the frame (clear of legend and labels)."""
    area = plot.plot_area()
    img = plot.grab().toImage()
    x0, x1 = int(area.center().x()), int(area.right()) - 1
    rows = []
    for y in range(int(area.top()) - 4, int(area.bottom()) + 4):
        for x in range(x0, x1):
            c = img.pixelColor(x, y)
            if c.blue() - c.red() > 30:
                rows.append(y)
                break
    return rows


@pytest.mark.parametrize("peak", [5.0, 0.7])
def test_loss_curve_stays_inside_the_frame(qtbot, peak):
    plot = CurvePlot()
    qtbot.addWidget(plot)
    plot.resize(420, 200)
    plot.clear(10)
    # A late spike and a late dip: the highest and lowest points both sit in the frame's right half.
    for step, loss in [(1, 0.6), (2, 0.5), (6, 0.4), (8, peak), (9, 0.05), (10, 0.3)]:
        plot.add_event(Progress("train", step, 10, loss=loss))
    rows = _loss_rows(plot)
    area = plot.plot_area()
    assert rows, "the loss curve was drawn"
    # Scaled to the data with a margin: neither the peak nor the dip touches the frame's edges.
    assert min(rows) > area.top() + 1 and max(rows) < area.bottom() - 1
    lo, hi = plot.loss_range()
    assert lo <= 0.05 and hi > peak
