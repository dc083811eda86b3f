"""The progress window: how much work each image took, and whether fine-tuning made images cheaper.

Plots seconds and actions per image over the images done, in the order they were done ("done":
accepted, or edited and never accepted; see :mod:`engine.store.effort`), with a dashed line where
each fine-tuned version became current, and a table of the mean seconds and actions per image under
each model with the change from the model before.  "Export CSV…" writes one row per image.

The records are read off the UI thread (:meth:`EffortState.load_report`), so the window opens at
once however many images the folder holds and fills in when they arrive.
"""
from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine import atomic_write_bytes, one_line
from engine.store import done_efforts, efforts_csv, segments, version_marks

from ...state.effort import EffortReport, format_clock
from .curve_plot import CurvePlot

__all__ = ["ProgressDialog", "STARTING_MODEL", "format_change"]

STARTING_MODEL = "starting model"  # images done before any fine-tuned version was current
_COLUMNS = ("Model", "Images", "Time / image", "Actions / image", "Time vs before", "Actions vs before")


def format_change(before: float, after: float) -> str:
    """``-45%`` from ``before`` to ``after``; "–" when there is no before to compare with."""
    if before <= 0:
        return "–"
    pct = round((after - before) / before * 100)
    return f"{pct:+d}%" if pct else "±0%"


class _RowsTable(QTableWidget):
    """A table whose layout height is its rows': a scroll area's own minimum (room for a vertical
    scroll bar) would otherwise leave a blank band under a single row.  Squeezed smaller, it scrolls."""

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt naming)
        return QSize(super().minimumSizeHint().width(),
                     self.horizontalHeader().sizeHint().height() + 2 * self.frameWidth())


class ProgressDialog(QDialog):
    """See the module docstring.  ``report`` holds what is shown (None until the records arrive)."""

    def __init__(self, session: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setWindowTitle("Progress")
        self.report: EffortReport | None = None
        self.summary = QLabel("Reading the records…")
        self.summary.setWordWrap(True)
        self.plot = CurvePlot(left_name="seconds per image", right_name="actions per image", x_name="image",
                              right_range=None, left_format="{:.0f}", right_format="{:.0f}", start=1,
                              left_dots=True, left_from_zero=True)
        self.table = _RowsTable(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        # As tall as its rows (one per model, a handful), so every model shows without scrolling;
        # read-only, so no cell is picked out as if it had been selected.
        self.table.setSizeAdjustPolicy(QTableWidget.SizeAdjustPolicy.AdjustToContents)
        self.table.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_button = buttons.addButton("Export CSV…", QDialogButtonBox.ButtonRole.ActionRole)
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self.ask_export)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        self.resize(760, 560)  # the table's six columns fit without a scroll bar
        if not session.effort.load_report(self.show_report):
            self.summary.setText("Open a folder to see its progress.")

    # ------------------------------------------------------------------ showing
    def show_report(self, report: EffortReport) -> None:
        """Show ``report`` (called when the records arrive; tests may hand one in)."""
        self.report = report
        if report.error:
            self.summary.setText(f"Cannot read the effort records: {report.error}")
            return
        done = done_efforts(report.efforts)
        segs = segments(done)
        marks = version_marks(done, report.versions)
        # A version's line sits between the last image done before it and the first done under it.
        self.plot.set_series([(i + 1, e.seconds) for i, e in enumerate(done)],
                             [(i + 1, e.total_actions) for i, e in enumerate(done)], len(done),
                             [(pos + 0.5, name) for pos, name in marks])
        self.table.setRowCount(len(segs))
        for row, seg in enumerate(segs):
            prev = segs[row - 1] if row else None
            cells = (seg.version or STARTING_MODEL, f"{seg.start + 1}–{seg.stop}" if seg.count > 1 else f"{seg.stop}",
                     format_clock(seg.mean_seconds), f"{seg.mean_actions:.1f}",
                     format_change(prev.mean_seconds, seg.mean_seconds) if prev else "–",
                     format_change(prev.mean_actions, seg.mean_actions) if prev else "–")
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.summary.setText(self._summary(done))
        self.export_button.setEnabled(bool(report.efforts))

    @staticmethod
    def _summary(done: list) -> str:
        if not done:
            return ("No image is done yet: an image counts once it is accepted (Accept and next, Mark "
                    "reviewed) or edited.")
        seconds = sum(e.seconds for e in done) / len(done)
        actions = sum(e.total_actions for e in done) / len(done)
        accepted = sum(1 for e in done if e.accepted)
        return (f"{len(done)} image(s) done ({accepted} accepted), in the order they were done: on average "
                f"{format_clock(seconds)} of active time and {actions:.1f} actions per image.")

    def cell(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item is not None else ""

    # ------------------------------------------------------------------ export
    def ask_export(self) -> None:
        # Beside the image folder, not in it: the folder holds the images and their store.
        folder = self.session.folder
        start = (os.path.join(os.path.dirname(os.path.abspath(folder)), f"{os.path.basename(folder)}-effort.csv")
                 if folder else os.path.join(os.path.expanduser("~"), "effort.csv"))
        path, _ = QFileDialog.getSaveFileName(self, "Export effort as CSV", start, "CSV files (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | os.PathLike) -> bool:
        """Write one row per image to ``path`` (atomically); False, saying why in the window, on failure."""
        if self.report is None or self.report.error:
            return False
        try:
            atomic_write_bytes(path, efforts_csv(self.report.efforts))
        except OSError as exc:
            self.summary.setText(f"Could not write {path}: {one_line(exc.strerror or exc)}")
            return False
        self.summary.setText(self._summary(done_efforts(self.report.efforts)) + f" Exported to {path}.")
        return True
