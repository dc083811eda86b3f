"""Model panel: architecture and weights, device, and pre-labelling with progress and cancel.

Qt only translates here: loading, downloading and prediction are plain functions (bottom of the file)
run through ``session.run_task`` off the UI thread. Results go through the session
(``set_model``, ``apply_prediction``, ``set_probs``), which never lets a prediction overwrite a person's
mask. Probabilities land in the store's cache, so switching back to an image and moving CRF sliders
never reruns the network.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QFrame, QHBoxLayout, QLabel, QProgressBar,
                               QPushButton, QSizePolicy, QVBoxLayout, QWidget)

import engine
from engine.weights import catalog
from engine.store.format import Status

from ...state.models import (BatchRelay, LoadedModel, catalog_state, device_description,
                          display_name, folder_default, load_catalog, load_file, predict_batch, predict_one)

__all__ = ["ModelPanel", "device_description", "LoadedModel", "NO_WEIGHTS_TEXT"]

log = logging.getLogger(__name__)

NO_WEIGHTS_TEXT = (
    "<b>No model weights on this machine yet.</b> Three ways forward:"
    "<ol style='margin-left:-20px'>"
    "<li><b>Download</b> the selected public weights (offline, the message says where to drop the file).</li>"
    "<li><b>Load a checkpoint file</b> you have: torchvision, VainF, kazuto1011 or native "
    "<code>.safetensors</code>, detected from its contents.</li>"
    "<li><b>Label a few images</b> with the brush and polygon, then <b>Fine-tune on my labels</b>.</li>"
    "</ol>")


class WrappedLabel(QLabel):
    """A word-wrapped label that claims the height its text needs at its current width. Dock layouts
    ignore heightForWidth, so a plain wrapped label got the height of its one-line size hint and the
    banner's text was cut off in narrow windows."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)

    def setText(self, text: str) -> None:  # noqa: N802  (Qt's name)
        super().setText(text)
        self._claim()  # a new text needs another height at the same width

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._claim()

    def _claim(self) -> None:
        need = self.heightForWidth(self.width())
        if need > 0 and need != self.minimumHeight():
            self.setMinimumHeight(need)


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
        self.task = None
        self._downloaded: dict[str, bool] | None = None  # None until the catalog check is back
        self._autoload_again = False
        self._folder_version: str | None = None  # the folder's version being autoloaded
        self._current = [getattr(session, "image_id", None)]  # read by the batch worker thread
        self._relay = BatchRelay()
        self._relay.current_done.connect(self._on_batch_current, Qt.ConnectionType.QueuedConnection)
        self._build_ui()
        session.model_changed.connect(self._update_state)
        session.current_changed.connect(self._on_current_changed)
        session.probs_changed.connect(self._update_state)
        session.folder_opened.connect(self._update_state)
        session.folder_opened.connect(self._autoload)
        session.image_ready.connect(self._update_state)  # pre-label needs the full-resolution pixels
        self.refresh_catalog()
        self._update_state()

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
        self.banner_error = WrappedLabel()
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
        for e in catalog.list_weights("segmentation"):
            self.weights_combo.addItem(e.id, e.id)
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
        self.device_label = QLabel(device_description())
        form.addRow("Device", self.device_label)
        self.model_label = QLabel("none")
        self.model_label.setWordWrap(True)
        form.addRow("Model", self.model_label)
        self.classes_label = QLabel("–")
        form.addRow("Classes", self.classes_label)
        from .versions_panel import VersionsBox
        self.versions = VersionsBox(self.session)
        form.addRow("Version", self.versions)
        layout.addLayout(form)

        self.prelabel_button = QPushButton("Pre-label this image")
        self.prelabel_button.clicked.connect(self.prelabel_current)
        self.prelabel_all_button = QPushButton("Pre-label all unlabelled")
        self.prelabel_all_button.clicked.connect(self.prelabel_unlabelled)
        layout.addWidget(self.prelabel_button)
        layout.addWidget(self.prelabel_all_button)
        self.finetune_button = QPushButton("Fine-tune on my labels…")
        self.finetune_button.setToolTip("train the model on the masks you edited or reviewed")
        self.finetune_button.clicked.connect(self.open_finetune)
        layout.addWidget(self.finetune_button)
        self.finetune_dialog = None
        prow = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        layout.addLayout(prow)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        # Take only the height the controls need, so docks below (classes, CRF) get the rest.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self._show_progress(False)

    def _show_progress(self, on: bool) -> None:
        self.progress.setVisible(on)
        self.cancel_button.setVisible(on)

    def _on_weights_selected(self, _index: int = 0) -> None:
        entry_id = self.weights_combo.currentData()
        if entry_id:
            arch = catalog.get_weights(entry_id).arch
            i = self.arch_combo.findText(arch)
            if i >= 0:
                self.arch_combo.setCurrentIndex(i)
            there = (self._downloaded or {}).get(entry_id)
            self.load_button.setText("Load" if there else "Download and load")
            self.banner_download.setText(f"Download {entry_id}")

    def _update_state(self, *_args) -> None:
        s = self.session
        model = s.model
        busy = self.task is not None
        if model is not None:
            meta = model.meta
            self.model_label.setText(f"{s.model_name or meta.arch}\n({meta.arch})")
            self.model_label.setToolTip(s.model_id or "")
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
            nothing = bool(self._downloaded) and not any(self._downloaded.values())
            self.banner.setVisible(nothing or not self.banner_error.isHidden())
        ready = model is not None and not busy
        self.prelabel_button.setEnabled(ready and s.image is not None)
        self.prelabel_all_button.setEnabled(ready and s.store is not None)
        # No model is fine too: the dialog then starts one (the banner's third way forward).
        self.finetune_button.setEnabled(s.store is not None and not s.read_only)
        for w in (self.load_button, self.file_button, self.banner_download, self.banner_file, self.weights_combo):
            w.setEnabled(not busy)
        self._show_progress(busy)

    def _on_current_changed(self, image_id: str = "") -> None:
        self._current[0] = self.session.image_id
        self._update_state()

    # ------------------------------------------------------------------ catalog and loading
    @property
    def catalog_checked(self) -> bool:
        """Whether the check of downloaded catalog weights has come back (autoloading waits for it)."""
        return self._downloaded is not None

    def refresh_catalog(self):
        """Re-check which catalog weights are downloaded (in a worker); updates labels and the banner."""
        return self.session.run_task(catalog_state, on_result=self._on_catalog_state,
                                     on_error=lambda m: log.warning("catalog check failed: %s", m))

    def _on_catalog_state(self, state: dict) -> None:
        first = self._downloaded is None
        self._show_catalog_state(state)
        if first:
            self._autoload()

    def _show_catalog_state(self, state: dict) -> None:
        self._downloaded = dict(state)
        for i in range(self.weights_combo.count()):
            eid = self.weights_combo.itemData(i)
            mark = "downloaded" if state.get(eid) else "not downloaded"
            self.weights_combo.setItemText(i, f"{eid} ({mark})")
        self._on_weights_selected()
        self._update_state()

    def _autoload(self, *_args) -> None:
        """Once the catalog check is back and whenever a folder opens: load the folder's current
        fine-tuned version, or, with no model loaded, the weights used last time (never downloading).
        While another load runs, it is tried again when that one finishes."""
        s = self.session
        if self._downloaded is None:
            return
        if self.task is not None:
            self._autoload_again = True
            return
        self._autoload_again = False
        settings = getattr(s, "settings", None)
        last = settings.last_weights() if settings is not None and hasattr(settings, "last_weights") else None
        store = getattr(s, "store", None)

        def chosen(choice) -> None:
            if choice is None or getattr(s, "store", None) is not store:
                return
            spec, why = choice
            if why == "last" and s.model is not None:
                return
            if why == "folder":
                try:
                    if s.model_id == engine.checkpoint_id(spec):
                        return  # already in use
                except OSError:
                    return
            if self.task is not None:
                self._autoload_again = True
            elif self.load_weights(spec) is not None and why == "folder":
                self._folder_version = spec
                self.status_label.setText(f"loading this folder's fine-tuned model {Path(spec).name}…")
        s.run_task(folder_default, store, last, dict(self._downloaded), on_result=chosen,
                   on_error=lambda m: log.warning("choosing weights failed: %s", m))

    def choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load checkpoint", "",
                                              "Checkpoints (*.pth *.pt *.safetensors *.bin *.ckpt);;All files (*)")
        if path:
            self.load_weights(path)

    def load_weights(self, spec: str | os.PathLike | None):
        """Load a catalog id (downloading it if needed) or a checkpoint file, in a worker. Returns the
        TaskHandle (None if busy or nothing given)."""
        if not spec or self.task is not None:
            return None
        spec = str(spec)
        self.banner_error.hide()
        if spec in catalog.CATALOG:
            fn, args = load_catalog, (spec,)
            self.status_label.setText(f"loading {spec}…")
        else:
            fn, args = load_file, (spec, self.arch_combo.currentText())
            self.status_label.setText(f"loading {Path(spec).name}…")
        return self._start(fn, *args, on_result=self._on_loaded, on_error=self._on_load_error)

    def _on_loaded(self, loaded: LoadedModel) -> None:
        self.session.set_model(loaded.model, loaded.model_id, name=display_name(loaded.spec))
        settings = getattr(self.session, "settings", None)
        if settings is not None and hasattr(settings, "set_last_weights"):
            settings.set_last_weights(loaded.spec)
        name = display_name(loaded.spec)
        folder = self._folder_version == loaded.spec
        self._folder_version = None
        self.status_label.setText(f"loaded this folder's fine-tuned model {name}" if folder else f"loaded {name}")
        if loaded.spec in catalog.CATALOG:
            self._show_catalog_state({**(self._downloaded or {}), loaded.spec: True})
        self.model_loaded.emit(loaded.model_id)

    def _on_load_error(self, message: str) -> None:
        self.status_label.setText("")
        # The download error names the exact path to drop the file at; keep it visible and selectable.
        self.banner_error.setText(message)
        self.banner_error.show()
        self._update_state()
        self.session.message.emit("error", message)

    # ------------------------------------------------------------------ pre-labelling
    def prelabel_current(self):
        """Predict the image on screen (worker); the session applies it unless a person edited it."""
        s = self.session
        if self.task is not None or s.predictor is None or s.image is None:
            return None
        image_id = s.image_id
        self.status_label.setText(f"pre-labelling {image_id}…")
        return self._start(predict_one, s.predictor, s.image, image_id,
                           on_result=lambda r, i=image_id: self._on_current_result(i, *r))

    def _on_current_result(self, image_id: str, labels: np.ndarray, probs: np.ndarray) -> None:
        self._apply(image_id, labels, probs)
        self.status_label.setText(f"pre-labelled {image_id}")
        self.prelabel_finished.emit({"done": 1, "saved": 1, "failed": 0, "total": 1})

    def _apply(self, image_id: str, labels: np.ndarray, probs: np.ndarray) -> None:
        s = self.session
        status = s.store.status(image_id) if s.store is not None else None
        if status in (Status.EDITED, Status.REVIEWED):
            s.set_probs(image_id, probs)  # a person's mask stays; the CRF panel still gets probabilities
        else:
            s.apply_prediction(image_id, labels, probs)

    @Slot(str, object, object)
    def _on_batch_current(self, image_id: str, labels: np.ndarray, probs: np.ndarray) -> None:
        self._apply(image_id, labels, probs)

    def prelabel_unlabelled(self, include_prelabelled: bool = False):
        """Predict every unlabelled image of the folder (worker, progress, cancel); with
        ``include_prelabelled`` also those a model labelled but nobody touched (after fine-tuning)."""
        s = self.session
        if self.task is not None or s.predictor is None or s.store is None:
            return None
        wanted = (Status.UNLABELED, Status.PRELABELED) if include_prelabelled else (Status.UNLABELED,)
        ids = [i for i in s.store.ids() if s.store.status(i) in wanted]
        if not ids:
            self.status_label.setText("no unlabelled images")
            return None
        self._current[0] = s.image_id
        self.status_label.setText(f"pre-labelling {len(ids)} images…")
        return self._start(predict_batch, s.predictor, s.store, ids, s.model_id or "", self._current,
                           self._relay, on_result=self._on_batch_done)

    def _on_batch_done(self, summary: dict) -> None:
        text = f"pre-labelled {summary['saved']} of {summary['total']}"
        if summary["failed"]:
            text += f"; {summary['failed']} could not be read"
        self.status_label.setText(text)
        self.prelabel_finished.emit(summary)

    def open_finetune(self):
        """Show the "Fine-tune on my labels" dialog (non-modal, one per panel); returns it."""
        from ..dialogs.finetune_dialog import FineTuneDialog
        if self.finetune_dialog is None:
            self.finetune_dialog = FineTuneDialog(
                self.session, self.window(), prelabel=lambda: self.prelabel_unlabelled(include_prelabelled=True))
        self.finetune_dialog.refresh_counts()
        self.finetune_dialog.show()
        self.finetune_dialog.raise_()
        return self.finetune_dialog

    # ------------------------------------------------------------------ task plumbing
    def _start(self, fn, *args, on_result, on_error=None):
        handle = self.session.run_task(fn, *args, on_result=on_result,
                                       on_error=on_error or self._on_task_error, on_progress=self._on_progress)
        self.task = handle
        self.progress.setRange(0, 0)  # busy indicator until the first progress report
        handle.finished.connect(lambda h=handle: self._on_finished(h))
        self._update_state()
        return handle

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)

    def _on_task_error(self, message: str) -> None:
        self.status_label.setText(message)
        self.session.message.emit("error", message)

    def _on_finished(self, handle) -> None:
        if handle is self.task:
            if handle.cancelled:
                self.status_label.setText("cancelled")
            self.task = None
            self._update_state()
            if hasattr(self.session, "statuses_changed"):
                self.session.statuses_changed.emit()  # batch saves happened behind the session's back
            if self._autoload_again:
                self._autoload()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.finetune_dialog is not None:
            self.finetune_dialog.cancel()
