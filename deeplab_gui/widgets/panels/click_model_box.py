"""The model panel's "Click model" row: the catalog's click models and "From file…", and where things stand.

Only shows :class:`~deeplab_gui.state.click_models.ClickModelState` (``session.click``), which loads the
model and prepares each image's embedding in the background; the line under the combo is its
``status_text`` (loading, a download's progress, "ready", or without a model how to get one).
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ...state.click_work import click_catalog, on_this_machine
from .labels import ElidedLabel

__all__ = ["FROM_FILE", "ClickModelBox"]

FROM_FILE = "__file__"   # the combo's data for "From file…"


class ClickModelBox(QWidget):
    """Combo (catalog entries, marked when on this machine; "From file…"), a button, and the status.
    Test hooks: ``use()`` (what the button does; returns the TaskHandle or None), ``combo``, ``status``."""

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.click = c = session.click
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(16)
        self.combo.setToolTip("the model behind click-to-correct: a click or a box selects a region")
        self.button = QPushButton("Use")
        self.button.clicked.connect(self.use)
        # One line (the tooltip and the click tool's status-bar message hold all of it): the row must
        # not push the CRF panel's buttons off a 1280×800 screen.
        self.status = ElidedLabel()
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.button)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(row)
        col.addWidget(self.status)
        self.fill()
        self.combo.currentIndexChanged.connect(self._update_button)
        self.combo.activated.connect(self._picked)
        c.status_changed.connect(self.status.setText)
        c.changed.connect(self._show_loaded)
        c.changed.connect(self.fill)   # a download has put a file on this machine
        self.status.setText(c.status_text)
        self._update_button()

    def fill(self) -> None:
        """(Re)list the catalog's click models, each marked by whether its file is on this machine."""
        current = self.click.spec or self.combo.currentData()
        self.combo.blockSignals(True)
        self.combo.clear()
        for e in click_catalog():
            mark = "on this machine" if on_this_machine(e.id) else f"{e.approx_mb} MB download"
            self.combo.addItem(f"{e.id} ({mark})", e.id)
            self.combo.setItemData(self.combo.count() - 1, e.description, Qt.ItemDataRole.ToolTipRole)
        self.combo.addItem("From file…", FROM_FILE)
        self.combo.blockSignals(False)
        self._select(current)

    def _select(self, spec: str | None) -> None:
        i = self.combo.findData(spec) if spec else -1
        if i < 0 and spec and self.click.spec == spec:   # a loaded file: shown on its own entry
            i = self.combo.count()
            self.combo.addItem(f"file: {self.click.model_name}", spec)
            self.combo.setItemData(i, spec, Qt.ItemDataRole.ToolTipRole)
        if i < 0:
            i = self.combo.findData("mobile_sam")
        self.combo.setCurrentIndex(max(i, 0))
        self._update_button()

    def _show_loaded(self) -> None:
        if self.click.spec:
            self._select(self.click.spec)

    def _update_button(self, *_args) -> None:
        data = self.combo.currentData()
        if data == FROM_FILE:
            self.button.setText("Choose…")
        elif data == self.click.spec and self.click.model is not None:
            self.button.setText("In use")
        elif isinstance(data, str) and any(e.id == data for e in click_catalog()) and not on_this_machine(data):
            self.button.setText("Download")
        else:
            self.button.setText("Use")
        self.button.setEnabled(not (data == self.click.spec and self.click.model is not None))

    def _picked(self, index: int) -> None:
        """A person picked an entry: "From file…" asks for the file at once (a second click on
        "Choose…" would be a step for nothing)."""
        if self.combo.itemData(index) == FROM_FILE:
            self.use()

    def use(self):
        """Load the selected entry (downloading it when needed) or, for "From file…", ask for a file
        (starting in the folder of the file in use, if any)."""
        data = self.combo.currentData()
        if data == FROM_FILE:
            spec = self.click.spec or ""
            start = str(Path(spec).parent) if spec and Path(spec).is_file() else ""
            path, _ = QFileDialog.getOpenFileName(self, "Click model weights", start,
                                                  "Weights (*.pt *.pth *.safetensors *.bin *.ckpt);;All files (*)")
            return self.click.choose_file(path) if path else None
        if any(e.id == data for e in click_catalog()):
            return self.click.choose_catalog(data)
        return self.click.choose_file(data) if data else None
