"""Model versions of the open folder: a combo of every fine-tuned checkpoint, and "use this one".

Reading the version index and loading a checkpoint are disk work, so both run through
``session.run_task``; the widget only lists what comes back and hands the loaded model to
``session.set_model``.  Making a version current writes the store's ``versions.json`` (the trainer's
:class:`~trainer.versions.Versions`), so the choice survives a restart.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QWidget

__all__ = ["VersionEntry", "VersionsBox", "version_text"]

log = logging.getLogger("deeplab_gui")


@dataclass(frozen=True)
class VersionEntry:
    name: str
    text: str
    current: bool


def version_text(v: Any, current: bool) -> str:
    """"finetune-v002 · mIoU 0.412 → 0.571 · 300 steps · 21 Nov 11:05 (current)"."""
    def f(x):
        return "–" if x is None else f"{x:.3f}"
    stem = v.name.rsplit(".", 1)[0]
    when = time.strftime("%d %b %H:%M", time.localtime(v.created))
    return f"{stem} · mIoU {f(v.miou_before)} → {f(v.miou_after)} · {v.steps} steps · {when}" + \
        (" (current)" if current else "")


def _list_versions(store) -> tuple[list[VersionEntry], str | None]:
    """The versions, newest first, and the index's notice (a damaged ``versions.json`` was rebuilt)."""
    from engine.store.versions import Versions
    versions = Versions.of(store)
    cur = versions.current
    entries = [VersionEntry(v.name, version_text(v, cur is not None and v.name == cur.name),
                            cur is not None and v.name == cur.name) for v in reversed(versions.list())]
    return entries, versions.notice


def _use_version(store, name: str):
    """Load version ``name`` and make it current; returns (model, model_id).  Worker thread."""
    import engine
    from engine.store.versions import Versions

    versions = Versions.of(store)
    path = versions.path(name)
    model = engine.load_model(path)
    versions.set_current(name)
    return model, engine.checkpoint_id(path)


class VersionsBox(QWidget):
    """Combo of versions (newest first) and a "Use" button.  ``refresh()`` and ``use(name)`` return the
    TaskHandle; ``refreshed`` fires after the combo was filled, ``version_loaded(name)`` after a swap."""

    refreshed = Signal()
    version_loaded = Signal(str)

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.entries: list[VersionEntry] = []
        self.task = None
        self._said: str | None = None
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
        session.folder_opened.connect(self.refresh)
        session.model_changed.connect(self.refresh)  # a run that just ended added a version
        self._fill([])

    def _fill(self, entries: list[VersionEntry]) -> None:
        self.entries = list(entries)
        self.combo.clear()
        for e in entries:
            self.combo.addItem(e.text, e.name)
        if not entries:
            self.combo.addItem("no fine-tuned versions yet", None)
        self.combo.setEnabled(bool(entries))
        self.use_button.setEnabled(bool(entries) and self.task is None)

    def refresh(self):
        store = self.session.store
        if store is None:
            self._fill([])
            return None
        return self.session.run_task(_list_versions, store, on_result=self._on_listed,
                                     on_error=lambda t: log.warning("cannot list model versions: %s", t),
                                     task_name="list versions")

    def _on_listed(self, listed: tuple[list[VersionEntry], str | None]) -> None:
        entries, notice = listed
        if notice and notice != self._said:
            self._said = notice  # once per damage, not on every refresh
            self.session.message.emit("warning", notice)
        self._fill(entries)
        self.refreshed.emit()

    def use(self, name: str | None):
        """Load version ``name`` in a worker, make it current and swap it in."""
        store = self.session.store
        if not name or store is None or self.task is not None:
            return None
        self.use_button.setEnabled(False)

        def done(value: tuple) -> None:
            model, model_id = value
            self.session.set_model(model, model_id, name=name)
            self.version_loaded.emit(name)

        self.task = self.session.run_task(_use_version, store, name, on_result=done,
                                          on_error=lambda t: self.session.message.emit("error", t),
                                          task_name="use version")
        self.task.finished.connect(self._on_finished)
        return self.task

    def _on_finished(self) -> None:
        self.task = None
        self.use_button.setEnabled(bool(self.entries))
