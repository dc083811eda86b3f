"""Model panel: architecture and weights, device, the click model, and pre-labelling with progress and cancel.

The panel only shows :class:`~deeplab_gui.state.models.ModelsState` (``session.models``), which owns
the catalog state, loading, autoloading, pre-labelling and the way into fine-tuning; its buttons call
that state and its labels follow the state's signals.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

import engine
from engine.weights import catalog

from ...state.model_work import is_catalog_id
from ...state.models import LoadedModel, device_description
from .labels import ElidedLabel, WrappedLabel

__all__ = ["FILE_PREFIX", "NO_WEIGHTS_TEXT", "LoadedModel", "ModelPanel", "WrappedLabel", "device_description"]

log = logging.getLogger(__name__)
FILE_PREFIX = "file: "  # the weights combo's entry for a loaded checkpoint file
HEADER_ROLE = Qt.ItemDataRole.UserRole + 1  # marks the weights combo's data-set headings (not choosable)

NO_WEIGHTS_TEXT = (
    "<b>No model weights on this machine yet.</b> Three ways forward:"
    "<ol style='margin-left:-20px'>"
    "<li><b>Download</b> the selected public weights (offline, the message says where to drop the file).</li>"
    "<li><b>Load a checkpoint file</b> you have: torchvision, VainF, kazuto1011 or native "
    "<code>.safetensors</code>, detected from its contents.</li>"
    "<li><b>Label a few images</b> with the brush and polygon, then <b>Fine-tune on my labels</b>.</li>"
    "</ol>")


# ---------------------------------------------------------------------- widget
class ModelPanel(QWidget):
    """Dock contents: weights, device, pre-label buttons. Test hooks: ``load_weights(spec)`` (catalog id
    or path; returns the TaskHandle), ``prelabel_current()``, ``prelabel_unlabelled()``, ``cancel()``,
    ``task`` (the running TaskHandle or None), ``banner``, and ``prelabel_finished(dict)``."""

    prelabel_finished = Signal(dict)
    model_loaded = Signal(str)

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.models = m = session.models
        self.finetune_dialog = None
        self._build_ui()
        m.arch = self.arch_combo.currentText()
        self.arch_combo.currentTextChanged.connect(lambda text: setattr(m, "arch", text))
        m.catalog_changed.connect(self._show_catalog_state)
        m.busy_changed.connect(self._on_busy)
        m.status_changed.connect(self.status_label.setText)
        m.load_progress.connect(self._on_progress)
        m.prelabel_progress.connect(self._on_progress)
        m.load_failed.connect(self._on_load_failed)
        m.loaded.connect(self._show_loaded_weights)  # the file's path is known by now
        m.loaded.connect(self.model_loaded.emit)
        m.prelabel_finished.connect(self.prelabel_finished.emit)
        m.finetune_requested.connect(self._show_finetune)
        session.model_changed.connect(self._update_state)
        session.model_classes_changed.connect(self._show_class_fit)
        session.statuses_changed.connect(self._show_class_fit)
        session.model_changed.connect(self._show_loaded_weights)
        session.current_changed.connect(self._update_state)
        session.probs_changed.connect(self._update_state)
        session.folder_opened.connect(self._update_state)
        session.image_ready.connect(self._update_state)  # pre-label needs the full-resolution pixels
        self.status_label.setText(m.status)
        if m.load_error is not None:
            self._on_load_failed(m.load_error)
        if m.downloaded is not None:
            self._show_catalog_state(m.downloaded)
        self.refresh_catalog()
        self._update_state()
        self._show_class_fit()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.banner = QFrame()
        self.banner.setFrameShape(QFrame.Shape.StyledPanel)
        self.banner.setObjectName("noWeightsBanner")
        self.banner.setStyleSheet("#noWeightsBanner { background: #fff4d6; border: 1px solid #d9a400; }")
        b = QVBoxLayout(self.banner)
        self.banner_text = WrappedLabel(NO_WEIGHTS_TEXT)
        self.banner_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner_error = WrappedLabel(fixed_width=True)  # paths: cut, never a wider dock
        self.banner_error.setStyleSheet("color: #a00000;")
        self.banner_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner_error.hide()
        row = QHBoxLayout()
        self.banner_download = QPushButton("Download")
        self.banner_download.clicked.connect(lambda: self.load_weights(self.weights_combo.currentData()))
        self.banner_file = QPushButton("Load checkpoint file…")
        self.banner_file.clicked.connect(self.choose_checkpoint)
        row.addWidget(self.banner_download)
        row.addWidget(self.banner_file)
        b.addWidget(self.banner_text)
        b.addWidget(self.banner_error)
        b.addLayout(row)
        self.banner.hide()
        layout.addWidget(self.banner)

        form = QFormLayout()
        self.arch_combo = QComboBox()
        self.arch_combo.addItems(engine.list_models())
        self.arch_combo.setToolTip("used when a checkpoint's keys do not say which architecture it is")
        form.addRow("Architecture", self.arch_combo)
        self.weights_combo = QComboBox()
        # Long entries (a checkpoint's file name) are cut, not a reason to widen the dock.
        self.weights_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.weights_combo.setMinimumContentsLength(16)
        self._fill_weights_combo()
        self.weights_combo.currentIndexChanged.connect(self._on_weights_selected)
        form.addRow("Weights", self.weights_combo)
        buttons = QHBoxLayout()
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(lambda: self.load_weights(self.weights_combo.currentData()))
        self.file_button = QPushButton("Checkpoint file…")
        self.file_button.clicked.connect(self.choose_checkpoint)
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.file_button)
        form.addRow("", buttons)
        self.model_label = ElidedLabel("none")  # one line: a long file name must not widen the dock
        form.addRow("Model", self.model_label)
        # Device and class count share a line: the height goes to the buttons below.
        facts = QHBoxLayout()
        self.device_label = QLabel(device_description())
        self.classes_label = QLabel("–")
        facts.addWidget(self.device_label)
        facts.addStretch(1)
        facts.addWidget(QLabel("Classes"))
        facts.addWidget(self.classes_label)
        form.addRow("Device", facts)
        # When the model's class list is not the folder's: what happens to its classes, and the way to
        # give an unlabelled folder the model's list instead.
        self.class_fit = QFrame()
        self.class_fit.setObjectName("classFit")
        self.class_fit.setStyleSheet("#classFit { background: #eef4ff; border: 1px solid #8aa8d8; }")
        cf = QVBoxLayout(self.class_fit)
        cf.setContentsMargins(6, 4, 6, 4)
        self.class_fit_text = WrappedLabel(fixed_width=True)
        self.adopt_button = QPushButton("Use the model's classes")
        self.adopt_button.setToolTip("give this folder the model's class list (only while nothing in it is labelled)")
        self.adopt_button.clicked.connect(self.session.adopt_model_classes)
        cf.addWidget(self.class_fit_text)
        cf.addWidget(self.adopt_button)
        self.class_fit.hide()
        form.addRow(self.class_fit)
        from .versions_panel import VersionsBox
        self.versions = VersionsBox(self.session)
        form.addRow("Version", self.versions)
        from .click_model_box import ClickModelBox
        self.click_box = ClickModelBox(self.session)
        form.addRow("Click model", self.click_box)
        layout.addLayout(form)

        self.prelabel_button = QPushButton("Pre-label this image")
        self.prelabel_button.clicked.connect(self.prelabel_current)
        self.prelabel_all_button = QPushButton("Pre-label all unlabelled")
        self.prelabel_all_button.clicked.connect(self.prelabel_unlabelled)
        pre = QHBoxLayout()
        pre.addWidget(self.prelabel_button)
        pre.addWidget(self.prelabel_all_button)
        layout.addLayout(pre)
        self.finetune_button = QPushButton("Fine-tune on my labels…")
        self.finetune_button.setToolTip("train the model on the masks you edited or reviewed")
        # The same request as the Model menu's entry: one rule for when fine-tuning can open.
        self.finetune_button.clicked.connect(self.session.models.request_finetune)
        layout.addWidget(self.finetune_button)
        prow = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        layout.addLayout(prow)
        self.status_label = WrappedLabel(fixed_width=True)
        layout.addWidget(self.status_label)
        # Take only the height the controls need, so docks below (classes, CRF) get the rest.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self._show_progress(False)

    def _fill_weights_combo(self) -> None:
        """Catalog weights grouped by the data set they were trained on, under a heading per data set."""
        groups: dict[str, list] = {}
        for e in catalog.list_weights("segmentation"):
            groups.setdefault(getattr(e, "dataset", "") or "Other", []).append(e)
        combo = self.weights_combo
        for name, entries in groups.items():
            if len(groups) > 1:
                combo.addItem(f"— {name} —")
                i = combo.count() - 1
                combo.setItemData(i, True, HEADER_ROLE)
                item = combo.model().item(i)
                item.setEnabled(False)
            for e in entries:
                combo.addItem(e.id, e.id)
        first = next((i for i in range(combo.count()) if is_catalog_id(combo.itemData(i))), -1)
        if first >= 0:
            combo.setCurrentIndex(first)

    def _show_class_fit(self, *_args) -> None:
        m = self.session.class_map
        self.class_fit.setVisible(m is not None)
        if m is None:
            return
        self.class_fit_text.setText(f"This model's classes are not this folder's: {m.describe()}.")
        self.adopt_button.setVisible(self.session.can_adopt_model_classes())

    def _show_progress(self, on: bool) -> None:
        self.progress.setVisible(on)
        self.cancel_button.setVisible(on)

    def _on_weights_selected(self, _index: int = 0) -> None:
        entry_id = self.weights_combo.currentData()
        if is_catalog_id(entry_id):
            arch = catalog.get_weights(entry_id).arch
            i = self.arch_combo.findText(arch)
            if i >= 0:
                self.arch_combo.setCurrentIndex(i)
            there = (self.models.downloaded or {}).get(entry_id)
            self.load_button.setText("Load" if there else "Download and load")
            self.banner_download.setText(f"Download {entry_id}")

    def _update_state(self, *_args) -> None:
        s, m = self.session, self.models
        model = s.model
        busy = m.busy
        if model is not None:
            meta = model.meta
            self.model_label.setText(f"{s.model_name or meta.arch} ({meta.arch})")
            self.model_label.setToolTip("\n".join(filter(None, (self.model_label.text(), s.model_id))))
            self.classes_label.setText(str(meta.num_classes))
            i = self.arch_combo.findText(meta.arch)
            if i >= 0:
                self.arch_combo.setCurrentIndex(i)
            self.banner.hide()
        else:
            self.model_label.setText("none")
            self.classes_label.setText("–")
            # Banner once we know nothing is on disk (the catalog check runs in a worker), or after a
            # failed load, whose message says what to do.
            nothing = bool(m.downloaded) and not any(m.downloaded.values())
            self.banner.setVisible(nothing or m.load_error is not None)
        ready = model is not None and not busy
        self.prelabel_button.setEnabled(ready and s.image is not None)
        self.prelabel_all_button.setEnabled(ready and s.store is not None)
        # No model is fine too: the dialog then starts one (the banner's third way forward).
        self.finetune_button.setEnabled(m.finetune_refusal() is None)
        for w in (self.load_button, self.file_button, self.banner_download, self.banner_file, self.weights_combo):
            w.setEnabled(not busy)
        self._show_progress(busy)

    def _show_loaded_weights(self, *_args) -> None:
        """Select what is loaded in the weights combo: its catalog entry, or a "file: <name>" entry, so
        the combo never names catalog weights while a checkpoint file is in use."""
        combo, name = self.weights_combo, self.session.model_name or ""
        if self.session.model is None or not name:
            return
        file_row = next((i for i in range(combo.count()) if not is_catalog_id(combo.itemData(i))
                         and not combo.itemData(i, HEADER_ROLE)), -1)
        if is_catalog_id(name):
            row = combo.findData(name)
        else:
            last = self.session.settings.last_weights() or ""
            path = last if last and os.path.basename(last) == name else None
            if file_row < 0:
                combo.addItem("", None)
                file_row = combo.count() - 1
            combo.setItemText(file_row, FILE_PREFIX + name)
            combo.setItemData(file_row, path)
            combo.setItemData(file_row, path or name, Qt.ItemDataRole.ToolTipRole)
            row = file_row
        if row >= 0 and row != combo.currentIndex():
            combo.blockSignals(True)  # showing what is loaded, not a choice: no architecture change
            combo.setCurrentIndex(row)
            combo.blockSignals(False)
            self.load_button.setText("Load")

    def _show_catalog_state(self, state: dict) -> None:
        for i in range(self.weights_combo.count()):
            eid = self.weights_combo.itemData(i)
            if not is_catalog_id(eid):
                continue  # the loaded file's entry keeps its name
            mark = "downloaded" if state.get(eid) else "not downloaded"
            self.weights_combo.setItemText(i, f"{eid} ({mark})")
        self._on_weights_selected()
        self._update_state()

    def _on_busy(self, on: bool) -> None:
        if on:
            self.progress.setRange(0, 0)  # busy indicator until the first progress report
            # A new load clears the last one's error.
            self.banner_error.setVisible(self.models.load_error is not None)
        self._update_state()

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)

    def _on_load_failed(self, message: str) -> None:
        # The download error names the exact path to drop the file at; keep it visible and selectable.
        self.banner_error.setText(message)
        self.banner_error.show()
        self._update_state()

    # ------------------------------------------------------------------ what the buttons call
    @property
    def task(self):
        """The running load or pre-label TaskHandle, or None."""
        return self.models.task

    @property
    def catalog_checked(self) -> bool:
        """Whether the check of downloaded catalog weights has come back (autoloading waits for it)."""
        return self.models.catalog_checked

    def refresh_catalog(self):
        """Re-check which catalog weights are downloaded (in a worker), then autoload."""
        return self.models.refresh_catalog()

    def checkpoint_folder(self) -> str:
        """Where "Load checkpoint" opens: the folder of the checkpoint file used last, else this
        folder's fine-tuned versions, else the dialog's own default ("")."""
        s = self.session
        last = s.settings.last_weights()
        if last and not is_catalog_id(last) and Path(last).is_file():
            return str(Path(last).resolve().parent)
        store = s.store
        if store is not None and store.checkpoints_dir.is_dir():
            return str(store.checkpoints_dir)
        return ""

    def choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load checkpoint", self.checkpoint_folder(),
                                              "Checkpoints (*.pth *.pt *.safetensors *.bin *.ckpt);;All files (*)")
        if path:
            self.load_weights(path)

    def load_weights(self, spec: str | os.PathLike | None):
        """Load a catalog id (downloading it if needed) or a checkpoint file, in a worker. Returns the
        TaskHandle (None if busy or nothing given)."""
        return self.models.load(spec, arch=self.arch_combo.currentText())

    def prelabel_current(self):
        """Predict the image on screen (worker); the session applies it unless a person edited it."""
        return self.models.prelabel_current()

    def prelabel_unlabelled(self, include_prelabelled: bool = False):
        """Predict every unlabelled image of the folder (worker, progress, cancel)."""
        return self.models.prelabel_all(include_prelabelled)

    def open_finetune(self):
        """Ask for the "Fine-tune on my labels" dialog as the button and the Model menu do; returns the
        dialog (one per panel), or None when it cannot be used now (a message says why)."""
        return self.finetune_dialog if self.models.request_finetune() else None

    def _show_finetune(self) -> None:
        from ..dialogs.finetune_dialog import FineTuneDialog
        if self.finetune_dialog is None:
            self.finetune_dialog = FineTuneDialog(self.session, self.window(), training=self.models.training)
        self.finetune_dialog.refresh_counts()
        self.finetune_dialog.show()
        self.finetune_dialog.raise_()

    def cancel(self) -> None:
        """Stop the running load or pre-label, and a fine-tune run."""
        self.models.cancel()
