"""Undo histories that outlive an image switch, bounded in bytes across images.

Each image's :class:`~deeplab_gui.editing.document.MaskDocument` (its mask and its undo/redo steps) is
kept in memory after the person moves on, so that coming back and pressing Undo takes back the stroke
made there before.  The documents kept, the current one included, may hold at most
:data:`HISTORY_BUDGET` bytes (256 MiB) of masks and undo patches together; when they hold more, the
images left longest ago lose their history first (the current image's never does).

A kept document is used again only while its mask is still what the folder holds for that image (a
pre-label run or another tool may have written a new mask meanwhile): then the history would undo
to pixels that are not the image's any more, so a fresh document from disk replaces it.

:class:`HistoryState` also owns Undo and Redo for the window: ``availability`` says whether each is
possible now, and each names the step it took back or redid in an info message ("undid: brush stroke").
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

__all__ = ["HISTORY_BUDGET", "HistoryState", "step_name"]

HISTORY_BUDGET = 256 * 2**20  # bytes of masks and undo steps kept across all images

# What the person did, in their words, for the document's step descriptions.
_NAMES = {"Paint": "brush stroke", "Erase": "eraser stroke", "Fill": "flood fill", "Polygon": "polygon",
          "Apply labels": "label change", "Apply CRF": "apply CRF", "pre-label": "pre-label"}


def step_name(description: str) -> str:
    """The status bar's name of an undo step described as ``description``."""
    return _NAMES.get(description, description or "edit")


def _cost(doc: Any) -> int:
    return int(doc.history_bytes) + int(doc.mask.nbytes)


class HistoryState(QObject):
    """Documents kept per image (see the module docstring), and Undo/Redo of the current one."""

    availability = Signal(bool, bool)  # (can undo, can redo) of the current document

    def __init__(self, session: Any, budget: int = HISTORY_BUDGET) -> None:
        super().__init__(session)
        self.s = session
        self.budget = int(budget)
        self._docs: OrderedDict[str, Any] = OrderedDict()  # image id -> document, least recent first
        self._store: Any = None
        self._last = (False, False)
        # Connected while the session is built, before any widget: the kept documents are up to date
        # when the window's slots run.
        session.current_changed.connect(self._on_current)
        session.mask_changed.connect(lambda _box: self.refresh())
        session.folder_opened.connect(self.refresh)

    # ------------------------------------------------------------------ kept documents
    def _same_store(self) -> None:
        if self._store is not self.s.store:  # another folder: its images are other images
            self._docs.clear()
            self._store = self.s.store

    def document(self, image_id: str, mask: np.ndarray, confirmed: np.ndarray | None = None) -> Any:
        """The document to edit ``image_id`` whose mask on disk is ``mask``: the one kept from an
        earlier visit, with its undo steps, when it still shows exactly that mask; else a new one,
        whose pixels a person set are ``confirmed`` (None: none of them)."""
        from ..editing.document import MaskDocument
        self._same_store()
        doc = self._docs.get(image_id)
        if doc is not None and not doc.in_stroke and doc.shape == mask.shape and np.array_equal(doc.mask, mask):
            return doc
        self._docs.pop(image_id, None)
        return MaskDocument(mask, confirmed=confirmed)

    def kept(self, image_id: str) -> Any:
        """The document kept for ``image_id`` (None when none is)."""
        return self._docs.get(image_id) if self._store is self.s.store else None

    @property
    def kept_bytes(self) -> int:
        """Memory held by the kept documents (masks and undo steps)."""
        return sum(_cost(d) for d in self._docs.values())

    def _on_current(self, image_id: str) -> None:
        self._same_store()
        doc = self.s.document
        if doc is not None and image_id:
            self._docs.pop(image_id, None)
            self._docs[image_id] = doc  # most recent last
        self.trim()
        self.refresh()

    def trim(self) -> None:
        """Drop the histories of the images left longest ago until the kept ones fit the budget."""
        total = self.kept_bytes
        for image_id in list(self._docs):
            if total <= self.budget:
                break
            doc = self._docs[image_id]
            if image_id == self.s.image_id or doc is self.s.document:
                continue
            total -= _cost(doc)
            del self._docs[image_id]
            # It may still be held as unsaved work: its labels stay, its steps go.
            doc.clear_history()

    # ------------------------------------------------------------------ undo / redo
    def refresh(self) -> None:
        """Tell listeners whether Undo and Redo can do anything now (only when that changed)."""
        doc = self.s.document
        now = (bool(doc is not None and doc.can_undo), bool(doc is not None and doc.can_redo))
        if now != self._last:
            self._last = now
            self.availability.emit(*now)

    @property
    def can_undo(self) -> bool:
        return self._last[0]

    @property
    def can_redo(self) -> bool:
        return self._last[1]

    def undo(self) -> bool:
        """Take back the current image's newest step and say which; False when there was none."""
        return self._step("undo")

    def redo(self) -> bool:
        """Redo the current image's newest undone step and say which; False when there was none."""
        return self._step("redo")

    def _step(self, which: str) -> bool:
        doc = self.s.document
        if doc is None:
            self.refresh()
            return False
        doc.end_stroke()  # an open stroke becomes the newest step first
        name = doc.undo_description if which == "undo" else doc.redo_description
        done = getattr(doc, which)() is not None
        self.refresh()
        if done:
            self.s._say("info", f"{'undid' if which == 'undo' else 'redid'}: {step_name(name)}")
        else:
            self.s._say("info", f"nothing to {which}")
        return done
