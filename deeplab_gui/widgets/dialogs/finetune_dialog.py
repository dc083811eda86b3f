"""The "Fine-tune on my labels" dialog: a few recipe knobs, a live loss/mIoU plot, cancel, and the swap.

The run itself, its result and what follows it (the swap, making a version current, the re-pre-label
offer) belong to a :class:`~deeplab_gui.state.training.TrainingState`; the dialog turns its knobs into
a recipe and shows what the state reports.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...state.training import TrainingState, count_labelled
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


# ---------------------------------------------------------------------- the dialog
class FineTuneDialog(QDialog):
    """Non-modal dialog; ``start()``, ``cancel()`` and ``reprelabel()`` are what its buttons call.

    ``training``: the :class:`TrainingState` it shows (the model panel passes the session's,
    ``session.models.training``); without one the dialog makes its own, with ``prelabel`` as the
    re-pre-label offer (None hides that offer).  ``base_recipe``: a :class:`trainer.Recipe` the knobs
    override (scripts and tests set batch size, device, validation size here).  ``ask(text) -> bool``
    asks the person whether to make a version current anyway (tests replace it).  ``run_finished(str)``
    carries "done", "cancelled" or "error"; ``result`` then holds the trainer's result (None after an
    error).
    """

    run_finished = Signal(str)

    def __init__(self, session, parent: QWidget | None = None, *, base_recipe=None,
                 prelabel: Callable[[], Any] | None = None, training: TrainingState | None = None) -> None:
        super().__init__(parent)
        from trainer.recipe import Recipe
        self.session = session
        self.training = training if training is not None else TrainingState(session, prelabel=prelabel, parent=self)
        self.base_recipe = base_recipe or Recipe()
        self.ask: Callable[[str], bool] = self._ask_box
        self.training.ask = lambda text: self.ask(text)
        self.setWindowTitle("Fine-tune on my labels")
        self._build_ui()
        t = self.training
        t.started.connect(self._on_started)
        t.event.connect(self._on_event)
        t.status_changed.connect(self.status_label.setText)
        t.running_changed.connect(self._on_running)
        t.offer_changed.connect(self._show_offer)
        t.run_finished.connect(self.run_finished.emit)
        self.status_label.setText(t.status)
        self._show_offer(t.offer)
        self.set_recipe(self.base_recipe)

    # The run's state, read from the training state (scripts and tests look here).
    @property
    def task(self):
        return self.training.task

    @property
    def run(self):
        return self.training.run

    @property
    def result(self):
        return self.training.result

    @property
    def events(self) -> int:
        return self.training.events

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
        fraction = self.base_recipe.heldout_fraction
        n, held = self.training.counts(fraction)
        if n == 0:
            text = "no edited or reviewed images yet: correct a few masks first"
        elif held == 0:
            why = ("the recipe holds none out" if fraction <= 0 else
                   "holding some out to measure needs 3 or more")
            if s.model is None:
                after = "with no model loaded, the new one is used when it finishes unless you decline"
            else:
                after = "so it cannot be compared with the current model: at the end you choose whether to use it"
            text = (f"{n} edited/reviewed image(s), all used for training ({why}). Measured: the training "
                    f"loss. Not measured: held-out mIoU; {after}.")
        else:
            text = (f"{n} edited/reviewed images: {n - held} to train on, {held} held out to measure mIoU "
                    "before and after training")
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
        return self.training.start(self.recipe(), new_arch=self.new_arch.currentText())

    def cancel(self) -> None:
        """Stop the run at its next step; nothing is written and the current model stays."""
        self.training.cancel()

    def _on_started(self, iterations: int) -> None:
        self.plot.clear(iterations)
        self.step_label.setText("–")

    def _on_running(self, on: bool) -> None:
        self._set_running(on)
        if not on:
            self.refresh_counts()

    def _on_event(self, ev) -> None:
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

    def _show_offer(self, n: int) -> None:
        if n:
            # Name both kinds: only the pre-labelled ones are re-pre-labelled; unlabelled ones get their first.
            unlabelled, prelabelled = self.training.offer_parts
            kinds = [f"{unlabelled} unlabelled" if unlabelled else "",
                     f"{prelabelled} pre-labelled by a model before" if prelabelled else ""]
            self.reprelabel_button.setText(f"Pre-label {n} image(s) nobody edited with the new model "
                                           f"({', '.join(k for k in kinds if k)})")
        self.reprelabel_button.setVisible(bool(n))

    def untouched(self) -> int:
        """Images whose mask no person edited or reviewed (unlabelled or pre-labelled)."""
        return self.training.untouched()

    def reprelabel(self):
        """Take the re-pre-label offer: the pre-label-all path with the new model (returns what it returns)."""
        return self.training.reprelabel()

    def _ask_box(self, text: str) -> bool:
        yes, no = QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.No
        answer = QMessageBox.question(self, "Fine-tune on my labels", text, yes | no,
                                      yes if self.training.keep_default else no)
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        if self.task is not None:  # closing the window while it trains means "stop"
            self.cancel()
        super().closeEvent(event)
