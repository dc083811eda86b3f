"""The "Fine-tune on my labels" dialog: a few recipe knobs, a live loss/mIoU plot, cancel, and the swap.

The run is :class:`trainer.FineTune`, a generator of progress events; it is iterated on the session's
worker pool and each event is handed to the UI thread through a queued signal, so the window keeps
painting while it trains.  The caller's model is never modified (the trainer works on a copy): cancel
leaves ``session.model`` and the store's versions exactly as they were.  On success the new model is
swapped in with a new ``model_id`` (the probability cache's key) without restarting.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDoubleSpinBox, QFormLayout, QHBoxLayout,
                               QLabel, QMessageBox, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from .curve_plot import CurvePlot

__all__ = ["CurvePlot", "FineTuneDialog", "count_labelled", "format_eta"]

log = logging.getLogger("deeplab_gui")

_BN_CHOICES = (("auto (frozen for small batches once learned)", None), ("frozen", True), ("trained", False))


def format_eta(seconds: float | None) -> str:
    """"1 h 02 min", "3 min 05 s", "42 s"; "–" when unknown."""
    if seconds is None:
        return "–"
    s = max(int(round(seconds)), 0)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def count_labelled(statuses: dict[str, Any], heldout_fraction: float) -> tuple[int, int]:
    """(images a run learns from, of which held out): edited/reviewed statuses, the trainer's split rule."""
    from engine.store.format import Status
    from trainer.dataset import Sample, split_heldout
    ids = [i for i, st in statuses.items() if st in (Status.EDITED, Status.REVIEWED)]
    # split_heldout only counts and ranks ids; the paths are never opened here.
    _train, held = split_heldout([Sample(i, None, None) for i in ids], heldout_fraction)  # type: ignore[arg-type]
    return len(ids), len(held)


# ---------------------------------------------------------------------- worker side
class _EventRelay(QObject):
    """Carries progress events from the training thread to the UI thread (queued connection)."""

    event = Signal(object)


def _train(run, relay: _EventRelay, *, cancel: Callable[[], bool]) -> tuple[Any, str | None]:
    """Iterate ``run`` (a trainer.FineTune) on a worker thread; returns (result, new model id).

    ``cancel`` is the task handle's flag (set when the app quits): it stops the run the same way the
    dialog's Cancel does.  The result is always returned, so a run that finished just as Cancel was
    pressed is still reported (its version was already written).
    """
    import engine
    for ev in run:
        relay.event.emit(ev)
        if cancel():
            run.cancel()
    res = run.result
    model_id = engine.checkpoint_id(res.checkpoint) if res is not None and res.checkpoint else None
    return res, model_id


def _make_current(store, name: str) -> None:
    from engine.store.versions import Versions
    Versions.of(store).set_current(name)


# ---------------------------------------------------------------------- the dialog
class FineTuneDialog(QDialog):
    """Non-modal dialog; ``start()``, ``cancel()`` and ``reprelabel()`` are what its buttons call.

    ``base_recipe``: a :class:`trainer.Recipe` the knobs override (scripts and tests set batch size,
    device, validation size here).  ``prelabel``: callable that re-pre-labels the images nobody edited
    (the model panel's pre-label-all path); None hides that offer.  ``ask(text) -> bool`` asks the
    person whether to make a version current anyway (tests replace it).  ``run_finished(str)`` carries
    "done", "cancelled" or "error"; ``result`` then holds the trainer's result (None after an error).
    """

    run_finished = Signal(str)

    def __init__(self, session, parent: QWidget | None = None, *, base_recipe=None,
                 prelabel: Callable[[], Any] | None = None) -> None:
        super().__init__(parent)
        from trainer.recipe import Recipe
        self.session = session
        self.base_recipe = base_recipe or Recipe()
        self.prelabel = prelabel
        self.ask: Callable[[str], bool] = self._ask_box
        self.run = None
        self.task = None
        self.result = None
        self.events = 0
        self._relay = _EventRelay()
        self._relay.event.connect(self._on_event, Qt.ConnectionType.QueuedConnection)
        self.setWindowTitle("Fine-tune on my labels")
        self._build_ui()
        self.set_recipe(self.base_recipe)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        form = QFormLayout()
        self.data_label = QLabel()
        self.data_label.setWordWrap(True)
        form.addRow("Data", self.data_label)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 1_000_000)
        form.addRow("Iterations", self.iterations)
        budget = QHBoxLayout()
        self.use_budget = QCheckBox("stop after")
        self.budget_min = QDoubleSpinBox()
        self.budget_min.setRange(0.1, 24 * 60)
        self.budget_min.setDecimals(1)
        self.budget_min.setSuffix(" min")
        self.use_budget.toggled.connect(self.budget_min.setEnabled)
        budget.addWidget(self.use_budget)
        budget.addWidget(self.budget_min, 1)
        form.addRow("Time budget", budget)
        self.crop = QSpinBox()
        self.crop.setRange(16, 2049)
        self.crop.setSingleStep(32)
        self.crop.setSuffix(" px")
        form.addRow("Crop size", self.crop)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(0.0005)
        self.lr.setToolTip("backbone learning rate; the head learns 10× faster (poly schedule)")
        form.addRow("Learning rate", self.lr)
        self.freeze_bn = QComboBox()
        for text, value in _BN_CHOICES:
            self.freeze_bn.addItem(text, value)
        form.addRow("BatchNorm", self.freeze_bn)
        # With no model loaded, the run starts a new one (the banner's third way forward).
        from trainer.start import NEW_MODEL_ARCHS
        self.new_arch = QComboBox()
        self.new_arch.addItems(NEW_MODEL_ARCHS)
        self.new_arch.setToolTip("no model is loaded: the run starts this architecture with the folder's "
                                 "classes, its backbone from ImageNet weights when they are on this machine, "
                                 "else from scratch")
        form.addRow("New model", self.new_arch)
        self._form = form

        self.plot = CurvePlot()
        self.step_label = QLabel("–")
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QHBoxLayout()
        self.reprelabel_button = QPushButton()
        self.reprelabel_button.clicked.connect(self.reprelabel)
        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        buttons.addWidget(self.reprelabel_button)
        buttons.addStretch(1)
        for b in (self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.step_label)
        layout.addWidget(self.status_label)
        layout.addLayout(buttons)
        self.reprelabel_button.hide()

    def set_recipe(self, recipe) -> None:
        """Use ``recipe`` as the base and show its values in the knobs."""
        self.base_recipe = recipe
        self.iterations.setValue(recipe.iterations)
        self.use_budget.setChecked(recipe.time_budget_s is not None)
        self.budget_min.setValue((recipe.time_budget_s or 600) / 60)
        self.crop.setValue(recipe.crop)
        self.lr.setValue(recipe.lr)
        self.freeze_bn.setCurrentIndex([v for _, v in _BN_CHOICES].index(recipe.freeze_bn))
        self._set_running(self.task is not None)
        self.refresh_counts()

    def _set_running(self, on: bool) -> None:
        for w in (self.iterations, self.use_budget, self.crop, self.lr, self.freeze_bn, self.new_arch,
                  self.start_button):
            w.setEnabled(not on)
        self.budget_min.setEnabled(not on and self.use_budget.isChecked())
        self.cancel_button.setEnabled(on)
        self.close_button.setEnabled(not on)

    def refresh_counts(self) -> tuple[int, int]:
        """Show (and return) how many images the run learns from and how many it holds out."""
        s = self.session
        n, held = count_labelled(s.statuses(), self.base_recipe.heldout_fraction) if s.store is not None else (0, 0)
        if n == 0:
            text = "no edited or reviewed images yet: correct a few masks first"
        elif held == 0:
            text = f"{n} edited/reviewed image(s), all used for training (mIoU needs 3 or more)"
        else:
            text = f"{n} edited/reviewed images: {n - held} to train on, {held} held out to measure mIoU"
        self.data_label.setText(text)
        self._form.setRowVisible(self.new_arch, s.model is None)
        self.start_button.setEnabled(n > 0 and self.task is None and s.store is not None)
        return n, held

    def recipe(self):
        """The :class:`trainer.Recipe` the knobs describe (over ``base_recipe``)."""
        return dataclasses.replace(
            self.base_recipe, iterations=self.iterations.value(), crop=self.crop.value(), lr=self.lr.value(),
            time_budget_s=self.budget_min.value() * 60 if self.use_budget.isChecked() else None,
            freeze_bn=self.freeze_bn.currentData())

    # ------------------------------------------------------------------ running
    def start(self):
        """Start a run on the session's worker; returns its TaskHandle (None when it cannot start)."""
        s = self.session
        if self.task is not None or s.store is None:
            return None
        from functools import partial

        from trainer.loop import FineTune

        from trainer.start import new_model
        s.save_current()  # the mask being drawn counts too
        recipe = self.recipe()
        # No model: the run builds the folder's first one on the worker thread.
        model = s.model if s.model is not None else partial(
            new_model, self.new_arch.currentText(), s.store.class_names, s.store.class_colors)
        # parent=None: the trainer names the lineage from the model's own metadata (file, catalog id, version).
        self.run = FineTune(s.store, model, recipe, confirm=False)
        self.result, self.events = None, 0
        self.plot.clear(recipe.iterations)
        self.reprelabel_button.hide()
        self.status_label.setText("starting…")
        self.step_label.setText("–")
        self._set_running(True)
        self.task = s.run_task(_train, self.run, self._relay, on_result=self._on_result,
                               on_error=self._on_error, task_name="fine-tune")
        self.task.finished.connect(self._on_task_finished)
        return self.task

    def cancel(self) -> None:
        """Stop the run at its next step; nothing is written and the current model stays."""
        if self.run is not None and self.task is not None:
            self.run.cancel()
            self.status_label.setText("cancelling…")

    @Slot(object)
    def _on_event(self, ev) -> None:
        self.events += 1
        self.plot.add_event(ev)
        if ev.phase == "train":
            parts = [f"step {ev.step} / {ev.total}"]
            if ev.loss is not None:
                parts.append(f"loss {ev.loss:.4f}")
            if ev.miou is not None:
                parts.append(f"mIoU {ev.miou:.3f}")
            parts.append(f"ETA {format_eta(ev.eta_s)}")
            if ev.images_per_s:
                parts.append(f"{ev.images_per_s:.1f} images/s")
            self.step_label.setText("  ·  ".join(parts))
        elif ev.message:
            self.status_label.setText(ev.message)

    def _on_error(self, text: str) -> None:
        self.status_label.setText(text)
        self.run_finished.emit("error")

    def _on_task_finished(self) -> None:
        self.task = None
        self._set_running(False)
        self.refresh_counts()

    def _on_result(self, value: tuple) -> None:
        res, model_id = value
        self.result = res
        if res is None or res.status != "done":
            self.status_label.setText("Cancelled: the current model and its versions are unchanged.")
            self.run_finished.emit("cancelled")
            return

        def f(v):
            return "not measured" if v is None else f"{v:.3f}"
        text = f"Held-out mIoU {f(res.miou_before)} → {f(res.miou_after)} after {res.steps} steps ({res.stop_reason})."
        if res.promoted:
            self._swap(res, model_id)
            self.status_label.setText(f"{text} {res.version.name} is now the current model.")
        else:
            dropped = res.version is not None and res.version.improved is False
            why = "Held-out mIoU dropped." if dropped else "There were no held-out images to measure it."
            if res.version is not None and self.ask(f"{text}\n{why} Make {res.version.name} the current model anyway?"):
                self.session.run_task(_make_current, self.session.store, res.version.name,
                                      on_error=lambda t: self.session.message.emit("error", t),
                                      task_name="make version current")
                self._swap(res, model_id)
                self.status_label.setText(f"{text} {res.version.name} is now the current model.")
            else:
                name = res.version.name if res.version is not None else "the new version"
                self.status_label.setText(f"{text} Kept the current model; {name} stays in the versions list.")
        self.run_finished.emit("done")

    def _swap(self, res, model_id: str | None) -> None:
        """Use the trained model at once (no restart); offer to re-pre-label the untouched images."""
        self.session.set_model(res.model, model_id or f"version:{res.version.name}", name=res.version.name)
        self.session.message.emit("info", f"now using {res.version.name}")
        n = self.untouched()
        if self.prelabel is not None and n:
            self.reprelabel_button.setText(f"Re-pre-label {n} image(s) nobody edited")
            self.reprelabel_button.show()

    def untouched(self) -> int:
        """Images whose mask no person edited or reviewed (unlabelled or pre-labelled)."""
        from engine.store.format import PROTECTED
        return sum(st not in PROTECTED for st in self.session.statuses().values())

    def reprelabel(self):
        """Start the model panel's pre-label-all path with the new model (returns what it returns)."""
        if self.prelabel is None:
            return None
        self.reprelabel_button.hide()
        return self.prelabel()

    def _ask_box(self, text: str) -> bool:
        answer = QMessageBox.question(self, "Fine-tune on my labels", text,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        if self.task is not None:  # closing the window while it trains means "stop"
            self.cancel()
        super().closeEvent(event)
