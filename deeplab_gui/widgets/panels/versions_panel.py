"""Model versions of the open folder: a combo of every fine-tuned checkpoint, and "use this one".

The list and the swap belong to ``session.models`` (:class:`~deeplab_gui.state.models.ModelsState`),
which reads the version index and loads a checkpoint off the UI thread and makes the chosen version the
folder's current one in ``versions.json``, so the choice survives a restart.  The widget asks for the
list when the folder opens or the model changes (a run that just ended added a version) and shows it.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QWidget

from ...state.models import VersionEntry, version_text

__all__ = ["VersionEntry", "VersionsBox", "version_text"]

log = logging.getLogger("deeplab_gui")


class VersionsBox(QWidget):
    """Combo of versions (newest first) and a "Use" button.  ``refresh()`` and ``use(name)`` return the
    TaskHandle; ``refreshed`` fires after the combo was filled, ``version_loaded(name)`` after a swap."""

    refreshed = Signal()
    version_loaded = Signal(str)

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.models = session.models
        self.entries: list[VersionEntry] = []
        self.combo = QComboBox()
        self.combo.setToolTip("fine-tuned versions of the model for this folder, newest first")
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(12)
        self.use_button = QPushButton("Use")
        self.use_button.setToolTip("load this version and make it the folder's current model")
        self.use_button.clicked.connect(lambda: self.use(self.combo.currentData()))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.use_button)
        self.models.versions_changed.connect(self._on_listed)
        self.models.version_loaded.connect(self.version_loaded.emit)
        session.folder_opened.connect(self.refresh)
        session.model_changed.connect(self.refresh)  # a run that just ended added a version
        self._fill(self.models.versions)

    def _fill(self, entries: list[VersionEntry]) -> None:
        self.entries = list(entries)
        self.combo.clear()
        for e in entries:
            self.combo.addItem(e.text, e.name)
        if not entries:
            self.combo.addItem("no fine-tuned versions yet", None)
        self.combo.setEnabled(bool(entries))
        self.use_button.setEnabled(bool(entries) and self.models.using is None)

    def refresh(self):
        """Ask for the folder's versions again (None when no folder is open)."""
        return self.models.refresh_versions()

    def _on_listed(self, entries: list[VersionEntry]) -> None:
        self._fill(entries)
        self.refreshed.emit()

    def use(self, name: str | None):
        """Load version ``name`` in a worker, make it current and swap it in."""
        handle = self.models.use_version(name)
        if handle is not None:
            self.use_button.setEnabled(False)
            handle.finished.connect(lambda: self.use_button.setEnabled(bool(self.entries)))
        return handle
