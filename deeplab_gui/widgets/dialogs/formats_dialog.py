"""Import labels into the open folder, or export its masks, in any registered label format
(engine.formats.registry: VOC, COCO, labelme / X-AnyLabeling, mask folders, Cityscapes), in a worker.

The form is built from the chosen format's options, the same ones the command line's ``import FORMAT`` /
``export FORMAT`` offers.  Like the VOC export dialog, it is drivable without ``exec()``: set ``fmt`` and
``path`` (``set_format``, ``path_edit``), call ``start()`` and wait for ``finished_report(report)`` or
``failed(str)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["LabelsDialog", "notes_text", "skipped_text"]


class LabelsDialog(QDialog):
    finished_report = Signal(object)   # engine.formats ImportReport / ExportReport
    failed = Signal(str)

    def __init__(self, session, mode: str = "import", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        if mode not in ("import", "export"):
            raise ValueError(f"mode must be 'import' or 'export', not {mode!r}")
        from engine.formats.registry import LABEL_FORMATS
        self.session, self.mode = session, mode
        self.task = None
        self.report: Any = None
        self.formats = {name: f for name, f in LABEL_FORMATS.items()
                        if (f.read if mode == "import" else f.write) is not None}
        self.setWindowTitle("Import labels" if mode == "import" else "Export labels")
        layout = QVBoxLayout(self)
        top = QFormLayout()
        self.format_combo = QComboBox()
        for name, f in self.formats.items():
            self.format_combo.addItem(name, name)
            self.format_combo.setItemData(self.format_combo.count() - 1, f.summary, Qt.ItemDataRole.ToolTipRole)
        self.format_combo.currentIndexChanged.connect(self._build_options)
        top.addRow("Format", self.format_combo)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        top.addRow("", self.summary)
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("the dataset to import (folder or file)" if mode == "import"
                                          else "output folder (created if missing)")
        self.path_edit.textChanged.connect(self._update_state)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.path_edit, 1)
        row.addWidget(browse)
        top.addRow("From" if mode == "import" else "Into", row)
        if mode == "import":
            self.overwrite_box = QCheckBox("replace masks a person edited or reviewed")
            top.addRow("", self.overwrite_box)
        else:
            self.prelabeled_box = QCheckBox("also export pre-labelled masks nobody has checked")
            top.addRow("", self.prelabeled_box)
        layout.addLayout(top)
        self.options_form = QFormLayout()
        layout.addLayout(self.options_form)
        self.option_widgets: dict[str, QWidget] = {}
        self.progress = QProgressBar()
        self.progress.hide()
        layout.addWidget(self.progress)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.result_label)
        self.buttons = QDialogButtonBox()
        self.start_button = self.buttons.addButton("Import" if mode == "import" else "Export",
                                                   QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.reject)
        layout.addWidget(self.buttons)
        self._build_options()

    # ------------------------------------------------------------------ the chosen format's options
    @property
    def fmt(self):
        return self.formats.get(self.format_combo.currentData())

    def set_format(self, name: str) -> None:
        i = self.format_combo.findData(name)
        if i < 0:
            raise KeyError(f"no {self.mode} for label format {name!r}")
        self.format_combo.setCurrentIndex(i)

    def _build_options(self, *_args) -> None:
        while self.options_form.rowCount():
            self.options_form.removeRow(0)
        self.option_widgets = {}
        fmt = self.fmt
        if fmt is None:
            return
        self.summary.setText(fmt.summary)
        opts = fmt.import_options() if self.mode == "import" else fmt.export_options()
        for o in opts:
            if o.type is None:
                w: QWidget = QCheckBox(o.help)
                w.setChecked(bool(o.default))
                self.options_form.addRow("", w)
            elif o.choices:
                w = QComboBox()
                for c in o.choices:
                    w.addItem(str(c), c)
                if o.default is not None:
                    w.setCurrentIndex(max(0, w.findData(o.default)))
                w.setToolTip(o.help)
                self.options_form.addRow(o.name.replace("_", " "), w)
            else:
                w = QLineEdit("" if o.default is None else str(o.default))
                w.setToolTip(o.help)
                w.setPlaceholderText(o.help[:60])
                self.options_form.addRow(o.name.replace("_", " "), w)
            self.option_widgets[o.name] = w
        self._update_state()

    def option_values(self) -> dict[str, Any]:
        """The options as keyword arguments: only those set (an empty field keeps the format's default)."""
        fmt, out = self.fmt, {}
        opts = fmt.import_options() if self.mode == "import" else fmt.export_options()
        for o in opts:
            w = self.option_widgets[o.name]
            if isinstance(w, QCheckBox):
                out[o.name] = w.isChecked()
            elif isinstance(w, QComboBox):
                out[o.name] = w.currentData()
            else:
                text = w.text().strip()
                if text:
                    out[o.name] = o.type(text)   # a bad value: ValueError, reported by start()
        return out

    # ------------------------------------------------------------------ running
    def _browse(self) -> None:
        if self.mode == "import":
            path = QFileDialog.getExistingDirectory(self, "Import labels from", self.path_edit.text())
        else:
            path = QFileDialog.getExistingDirectory(self, "Export labels into", self.path_edit.text())
        if path:
            self.path_edit.setText(path)

    def _update_state(self, *_args) -> None:
        busy = self.task is not None
        writable = self.session.store is not None and (self.mode == "export" or not self.session.store.read_only)
        self.start_button.setEnabled(not busy and writable and bool(self.path_edit.text().strip())
                                     and self.fmt is not None)
        self.cancel_button.setEnabled(busy)
        self.close_button.setEnabled(not busy)
        self.progress.setVisible(busy)

    def start(self):
        """Start the import or export in a worker; returns its TaskHandle (None when not possible now)."""
        s, fmt, path = self.session, self.fmt, self.path_edit.text().strip()
        if self.task is not None or s.store is None or fmt is None or not path:
            return None
        try:
            options = self.option_values()
        except (TypeError, ValueError) as exc:
            self._fail(f"a bad option value: {exc}")
            return None
        # What is drawn in memory reaches the store first: the exporter reads it, the importer must see it.
        if getattr(s, "document", None) is not None and not s.save_current():
            self._fail("the current image could not be saved; fix that first")
            return None
        self.report = None
        self.result_label.setText("importing…" if self.mode == "import" else "exporting…")
        self.progress.setRange(0, 0)
        if self.mode == "import":
            self.task = s.run_task(_import, fmt, Path(path).expanduser(), s.store, options,
                                   self.overwrite_box.isChecked(), on_result=self._on_done,
                                   on_error=self._fail, on_progress=self._on_progress, task_name="import labels")
        else:
            self.task = s.run_task(_export, fmt, s.store, Path(path).expanduser(), options,
                                   self.prelabeled_box.isChecked(), on_result=self._on_done,
                                   on_error=self._fail, on_progress=self._on_progress, task_name="export labels")
        self.task.finished.connect(self._on_finished)
        self._update_state()
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)

    def _on_done(self, report: Any) -> None:
        self.report = report
        if self.mode == "import":
            text = f"Imported {len(report.imported)} image(s) into {report.folder}."
            s = self.session
            s.open_folder(s.folder)    # the same folder: a rescan, new images join the list
            s.statuses_changed.emit()
            if s.image_id in report.imported:
                s.select(s.image_id)   # show the imported mask
        else:
            text = f"Exported {len(report.exported)} image(s) to {report.out}."
        if report.cancelled:
            text = "Cancelled. " + text
        self.result_label.setText(text + skipped_text(report.skipped) + notes_text(getattr(report, "notes", [])))
        self.finished_report.emit(report)

    def _fail(self, message: str) -> None:
        self.result_label.setText(f"{'Import' if self.mode == 'import' else 'Export'} failed: {message}")
        self.failed.emit(message)

    def _on_finished(self) -> None:
        self.task = None
        self._update_state()

    def reject(self) -> None:
        if self.task is None:  # closing mid-run would orphan the worker's progress
            super().reject()


def skipped_text(skipped: list[tuple[str, str]], shown: int = 5) -> str:
    """" Skipped N: id: reason; ... and M more." for a report's skips ("" when none)."""
    if not skipped:
        return ""
    reasons = "; ".join(f"{k}: {why}" for k, why in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f" Skipped {len(skipped)}: {reasons}{more}."


def notes_text(notes: list[tuple[str, str]], shown: int = 3) -> str:
    """" Partly imported (N): note; ... and M more." for what imported images left out ("" when none)."""
    if not notes:
        return ""
    more = f" and {len(notes) - shown} more" if len(notes) > shown else ""
    return f" Partly imported ({len(notes)}): {'; '.join(why for _k, why in notes[:shown])}{more}."


def _import(fmt, src: Path, store, options: dict, overwrite: bool, *, progress, cancel):
    """Worker-thread part: read the source with the folder's class list, then write it into the store."""
    from engine.formats.importer import import_source
    source = fmt.read(src, classes=list(store.classes), **options)
    return import_source(source, store, overwrite=overwrite, progress=progress, cancel=cancel)


def _export(fmt, store, out: Path, options: dict, include_prelabeled: bool, *, progress, cancel):
    return fmt.write(store, out, progress=progress, cancel=cancel, include_prelabeled=include_prelabeled,
                     **options)
