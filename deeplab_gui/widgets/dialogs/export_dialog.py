"""Export the folder's masks as a PASCAL VOC dataset (engine.voc.export_voc in a worker).

The dialog's logic is callable without ``exec()``: set the fields (or ``set_options``), call
``start_export()`` and wait for ``export_finished(ExportReport)`` or ``export_failed(str)``; that is how
tests and the main window's smoke checks drive it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine import ExportReport, export_voc

from .formats_dialog import skipped_text

__all__ = ["ExportDialog", "ExportOptions"]


@dataclass(frozen=True)
class ExportOptions:
    """What ``engine.voc.export_voc`` is called with (besides the store)."""

    out: str
    include_prelabeled: bool = False
    void_border: int = 0
    val_fraction: float = 0.2
    seed: int = 0


class ExportDialog(QDialog):
    export_finished = Signal(object)  # engine.voc.ExportReport
    export_failed = Signal(str)

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.task = None
        self.report: ExportReport | None = None
        self.setWindowTitle("Export PASCAL VOC")
        layout = QVBoxLayout(self)
        form = QFormLayout()
        row = QHBoxLayout()
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output folder (created if missing)")
        self.out_edit.textChanged.connect(self._update_state)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.out_edit, 1)
        row.addWidget(browse)
        form.addRow("Output folder", row)
        self.prelabeled_box = QCheckBox("also export pre-labelled masks nobody has checked")
        form.addRow("", self.prelabeled_box)
        self.border_spin = QSpinBox()
        self.border_spin.setRange(0, 50)
        self.border_spin.setSuffix(" px")
        self.border_spin.setToolTip("mark a band of this width around object boundaries as void (255), as "
                                    "PASCAL VOC does; 0 = off")
        form.addRow("Void border", self.border_spin)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.0, 0.9)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.2)
        form.addRow("Validation fraction", self.val_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        form.addRow("Split seed", self.seed_spin)
        layout.addLayout(form)

        self.summary_label = QLabel(self._counts_text())
        self.summary_label.setWordWrap(True)
        layout.addWidget(self.summary_label)
        self.progress = QProgressBar()
        self.progress.hide()
        layout.addWidget(self.progress)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.result_label)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.export_button.clicked.connect(self.start_export)
        self.cancel_button.clicked.connect(self.cancel_export)
        self.close_button.clicked.connect(self.reject)
        layout.addWidget(self.buttons)
        self._update_state()

    # ------------------------------------------------------------------ options
    def options(self) -> ExportOptions:
        return ExportOptions(out=self.out_edit.text().strip(), include_prelabeled=self.prelabeled_box.isChecked(),
                             void_border=self.border_spin.value(), val_fraction=self.val_spin.value(),
                             seed=self.seed_spin.value())

    def set_options(self, opts: ExportOptions) -> None:
        self.out_edit.setText(opts.out)
        self.prelabeled_box.setChecked(opts.include_prelabeled)
        self.border_spin.setValue(opts.void_border)
        self.val_spin.setValue(opts.val_fraction)
        self.seed_spin.setValue(opts.seed)

    def _counts_text(self) -> str:
        store = self.session.store
        if store is None:
            return "No folder is open."
        counts = {status.value: n for status, n in store.counts().items()}
        parts = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        return f"Folder: {store.folder} ({parts or 'no images'}). Edited and reviewed masks are exported."

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export VOC into", self.out_edit.text())
        if path:
            self.out_edit.setText(path)

    def _update_state(self, *_args) -> None:
        busy = self.task is not None
        self.export_button.setEnabled(not busy and bool(self.out_edit.text().strip())
                                      and self.session.store is not None)
        self.cancel_button.setEnabled(busy)
        self.close_button.setEnabled(not busy)
        self.progress.setVisible(busy)

    # ------------------------------------------------------------------ export
    def start_export(self):
        """Start the export in a worker; returns its TaskHandle (None when not possible right now)."""
        opts = self.options()
        store = self.session.store
        if self.task is not None or store is None or not opts.out:
            return None
        # Masks edited in memory must reach the store before the exporter reads it.
        if getattr(self.session, "document", None) is not None and not self.session.save_current():
            self.export_failed.emit("the current image could not be saved; fix that first")
            return None
        self.report = None
        self.result_label.setText("exporting…")
        self.progress.setRange(0, 0)
        self.task = self.session.run_task(_export, store, opts, on_result=self._on_done,
                                          on_error=self._on_error, on_progress=self._on_progress)
        self.task.finished.connect(self._on_finished)
        self._update_state()
        return self.task

    def cancel_export(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)

    def _on_done(self, report: ExportReport) -> None:
        self.report = report
        text = f"Exported {len(report.exported)} images to {report.out} ({len(report.train)} train, " \
               f"{len(report.val)} val)."
        if report.cancelled:
            text = "Cancelled. " + text
        self.result_label.setText(text + skipped_text(report.skipped))
        self.export_finished.emit(report)

    def _on_error(self, message: str) -> None:
        self.result_label.setText(f"Export failed: {message}")
        self.export_failed.emit(message)

    def _on_finished(self) -> None:
        if self.task is not None and self.task.cancelled and self.report is None:
            self.result_label.setText("Export cancelled; the split files list only what was written.")
        self.task = None
        self._update_state()

    def reject(self) -> None:
        if self.task is None:  # closing mid-export would orphan the worker's progress
            super().reject()


def _export(store, opts: ExportOptions, *, progress, cancel) -> ExportReport:
    """Worker-thread part: ``engine.voc.export_voc`` into ``opts.out``."""
    return export_voc(store, Path(opts.out).expanduser(), include_prelabeled=opts.include_prelabeled,
                      void_border=opts.void_border, val_fraction=opts.val_fraction, seed=opts.seed,
                      progress=progress, cancel=cancel)
