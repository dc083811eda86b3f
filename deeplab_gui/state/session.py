"""The app's state with no widgets: folder, store, current image and its mask document, model, views.

Widgets read attributes and call methods here; they learn about changes only through the signals, so
several panels stay in step without knowing each other (napari's layer/model split).  All
slow work (folder scan, image decoding, probability-cache IO, entropy) goes through :meth:`run_task`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from engine import VOID

from .click_models import ClickModelState
from .crf import CRFState
from .effort import EffortState
from .models import ModelsState
from .folder import FolderMethods
from .history import HistoryState
from .predictions import PredictionMethods
from .prefetch import Prefetcher
from .review import ReviewState
from .saving import SessionSaves
from .session_io import Loaded, load_image, read_for_display
from .settings import Settings
from .tasks import TaskHandle, Worker

__all__ = ["AUTOSAVE_MS", "IDLE_SAVE_MS", "PREVIEW_SIDE", "UNSAVED_MAX_MS", "VIEW_MODES", "Session"]

log = logging.getLogger("deeplab_gui")

VIEW_MODES = ("mask", "raw", "crf", "uncertainty")
AUTOSAVE_MS = 30_000     # saves and retries of failed saves, whatever happens
# A crash or kill loses at most about this much work: the current mask is saved this long after the
# last edit, and at the latest this long after the first edit not yet saved, while edits keep coming.
IDLE_SAVE_MS = 3_000
UNSAVED_MAX_MS = 10_000
# Longer side (px) of the reduced JPEG decode shown while the full one runs: a 4000×3000 photo decodes
# at 1/4 (1000×750, ~40 ms instead of ~170 ms), about what a fitted view shows of it anyway.
PREVIEW_SIDE = 960


class Session(QObject, FolderMethods, PredictionMethods):
    """Everything the app knows; see the module docstring.  Create on the UI thread."""

    folder_opened = Signal()
    images_changed = Signal()   # a rescan of the open folder found images added or gone (same store)
    current_changed = Signal(str)      # id; ``image`` may still be None while a preview is shown
    image_ready = Signal(str)          # id: ``image`` now holds the full-resolution pixels
    mask_changed = Signal(tuple)       # (y0, x0, y1, x1), half-open
    probs_changed = Signal()
    view_changed = Signal()
    statuses_changed = Signal()
    model_changed = Signal()
    classes_changed = Signal()
    model_classes_changed = Signal()   # the loaded model's class list fits the folder's, or not (class_map)
    label_changed = Signal(int)
    busy = Signal(str)                 # "" when idle
    message = Signal(str, str)         # level ("info" | "warning" | "error"), text
    saved = Signal(bool)

    def __init__(self, settings: Settings | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or Settings()
        # Six threads: an image load and its prefetch, a pre-label run, a fine-tune and the live CRF's
        # two lanes can all be in flight without one waiting for another.
        self.worker = Worker(self, max_threads=6)
        self.worker.busy_changed.connect(lambda n: self.busy.emit(self.worker.busy_text()))
        self.store: Any = None
        self.folder: Path | None = None
        self.image_id: str | None = None
        self.image: np.ndarray | None = None
        self.image_size: tuple[int, int] | None = None   # full-resolution (H, W) of the current image
        self.display: Any = None            # QImage for the screen: ``image``, or a reduced preview
        self.preview_side: int | None = PREVIEW_SIDE     # None: always decode at full size first
        self.document: Any = None
        self.probs: np.ndarray | None = None
        self.raw_labels: np.ndarray | None = None
        self.uncertainty: np.ndarray | None = None
        self.crf_labels: np.ndarray | None = None
        self.model: Any = None
        self.model_id: str | None = None
        self.model_name: str | None = None
        self.predictor: Any = None
        self.class_map: Any = None   # engine.ClassMap when the model's classes are not the folder's
        self.view_mode = "mask"
        self.opacity = 0.5
        self.outline = False
        self.show_unconfirmed = False   # dim the labels no person has set (the model's guesses)
        self._label = 1
        self._ids: list[str] = []
        self._load: TaskHandle | None = None
        self._full: TaskHandle | None = None  # full-resolution decode after a preview
        self._pending: str | None = None
        self._pending_doc: Any = None  # the in-memory document of the image being loaded, if any
        self.saves = SessionSaves(self)
        self.confirm_replace: Callable[[], bool] | None = None  # False: keep unsaved edits, not a new folder
        # The store being opened while confirm_replace asks about the current one: when it is this same
        # folder, writable, it holds the folder's lock, so Retry must write through it, not open another.
        self.incoming_store: Any = None
        self.prefetch = Prefetcher(self)  # decoded neighbours of the current image, so A/D show them at once
        self.crf = CRFState(self)  # CRF parameters (saved per folder) and the live refinement of the image
        self.models = ModelsState(self)  # weights, loading, pre-labelling, versions, fine-tuning
        self.history = HistoryState(self)  # undo steps kept per image across switches; Undo/Redo
        self.review = ReviewState(self)  # accept and next; the image each folder reopens on
        self.effort = EffortState(self)  # active seconds and actions per image, kept in the store
        self.click = ClickModelState(self)  # the click model and each image's embedding, made ahead
        self.folder_opened.connect(self.fit_model_classes)
        self.classes_changed.connect(self.fit_model_classes)
        self._timer = QTimer(self)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.autosave)
        self._timer.start()
        self._idle_save = QTimer(self)
        self._idle_save.setSingleShot(True)
        self._idle_save.timeout.connect(self._idle_saved)
        self._unsaved_since: float | None = None   # monotonic time of the first edit since the last save

    # ------------------------------------------------------------------ small properties
    @property
    def class_names(self) -> list[str]:
        return self.store.class_names if self.store is not None else []

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return self.store.class_colors if self.store is not None else []

    @property
    def current_label(self) -> int:
        return self._label

    @current_label.setter
    def current_label(self, label: int) -> None:
        n = len(self.class_names)
        label = int(label)
        if label == VOID or 0 <= label < max(n, 1):
            self._label = label
            if self.folder is not None:   # the next start paints with it again
                self.settings.set_last_class(self.folder, label)
            self.label_changed.emit(label)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def read_only(self) -> bool:
        return bool(self.store is not None and self.store.read_only)

    @property
    def dirty(self) -> bool:
        return bool(self.document is not None and self.document.dirty)

    def statuses(self) -> dict[str, Any]:
        return self.store.statuses() if self.store is not None else {}

    def run_task(self, fn: Callable, *args: Any, **kw: Any) -> TaskHandle:
        """Run ``fn`` off the UI thread (see :meth:`Worker.run_task`)."""
        return self.worker.run_task(fn, *args, **kw)

    def _say(self, level: str, text: str) -> None:
        getattr(log, "error" if level == "error" else level if level == "warning" else "info")(text)
        self.message.emit(level, text)

    def shutdown(self, timeout_ms: int = 5000) -> None:
        self._timer.stop()
        self._idle_save.stop()
        self.crf.shutdown()  # writes parameters still waiting for their debounce, stops the lanes
        self.close_store()
        self.saves.writer.close()
        self.effort.close()
        self.worker.cancel_all()
        self.worker.wait(timeout_ms)

    # ------------------------------------------------------------------ image switching
    def select(self, image_id: str) -> TaskHandle | None:
        """Autosave the current image, then load ``image_id`` in a worker (``current_changed`` after)."""
        if self.store is None or image_id not in self._ids:
            return None
        self.end_stroke()
        self.saves.save_current(wait=False)  # queued: the switch does not wait for the disk
        self._idle_save.stop()
        self._unsaved_since = None
        for task in (self._load, self._full):
            if task is not None:
                task.cancel()  # latest wins
        self._pending = image_id
        # A write of this image still queued now may land before or after the load reads the disk:
        # its document, not the file, is what the image looks like.
        self._pending_doc = self.saves.in_memory(image_id)
        store, model_id = self.store, self.model_id
        ready = self.prefetch.ready.get(image_id)
        # Without decoded pixels at hand, a reduced decode goes first (even when a prefetch of this
        # image is under way: it may have only just started); _fetch_full then waits for that prefetch
        # rather than decode the image twice.
        self._load = self.run_task(load_image, store, image_id, model_id, ready, self.preview_side,
                                   on_result=self._install, on_error=lambda t: self._say("error", t),
                                   task_name="load image")
        return self._load

    def _install(self, loaded: Loaded | None) -> None:
        if loaded is None or loaded.image_id != self._pending or self.store is None:
            return  # a newer selection superseded this one
        self.end_stroke()
        self.saves.save_current(wait=False)  # edits made while the new image was loading
        if self.document is not None:
            self.document.remove_listener(self._on_doc_change)
        self.image_id, self.image, self.display = loaded.image_id, loaded.image, loaded.display
        self.image_size = loaded.size
        self.probs, self.raw_labels, self.uncertainty = loaded.probs, loaded.raw, loaded.unc
        self.crf_labels = None
        if loaded.size is None:
            self.document = None
        elif (doc := self._memory_doc(loaded.image_id)) is not None:
            self.document = doc
        else:
            # The document is full resolution from the start, even under a reduced preview: painting
            # needs the mask, not the pixels.
            mask = loaded.mask if loaded.mask is not None else np.full(loaded.size, VOID, np.uint8)
            self.document = self.history.document(loaded.image_id, mask, loaded.confirmed)  # with its earlier undo steps
        if self.document is not None:
            self.document.add_listener(self._on_doc_change)
        if loaded.warning:
            self._say("warning", loaded.warning)
        self.current_changed.emit(loaded.image_id)
        self.probs_changed.emit()
        if loaded.preview:
            self._fetch_full(loaded.image_id)
        else:
            if loaded.image is not None:
                self.image_ready.emit(loaded.image_id)
            self.prefetch.around(loaded.image_id)

    def end_stroke(self) -> None:
        """Finish a stroke still being dragged on the current image (the image is about to change or
        the folder to close): it becomes an undo step of a person's pixels, as when the button comes
        up. Left open, its pixels would be saved unconfirmed and its image's history dropped."""
        if self.document is not None and self.document.in_stroke:
            self.document.end_stroke()

    def _memory_doc(self, image_id: str) -> Any:
        """The in-memory document noted when ``image_id`` was selected, else one that has since become
        the only copy (a write failed meanwhile)."""
        doc, self._pending_doc = self._pending_doc, None
        return doc if doc is not None else self.saves.in_memory(image_id)

    def _fetch_full(self, image_id: str) -> None:
        """Decode the full-resolution pixels of the image shown as a preview (``image_ready`` after)."""
        if image_id in self.prefetch.ready:
            self._full_ready(image_id, self.prefetch.ready[image_id])
            return
        inflight = self.prefetch.inflight(image_id)
        if inflight is not None:
            # Its result callback hands the pixels over; should it fail, decode here after all.
            inflight.finished.connect(lambda: image_id == self.image_id and self.image is None
                                      and self._fetch_full(image_id))
            return
        store = self.store

        def failed(text: str) -> None:
            if self.store is store and image_id == self.image_id:
                store.record_error(image_id, text)
                self._say("error", f"cannot read {image_id} at full resolution: {text}")
        self._full = self.run_task(read_for_display, store.image_path(image_id),
                                   on_result=lambda value: self._full_ready(image_id, value),
                                   on_error=failed, task_name="full-resolution decode")

    def _full_ready(self, image_id: str, value: tuple) -> None:
        image, display = value
        if image_id != self.image_id or self.image is not None or self.store is None:
            return  # moved on, or already shown
        if image.shape[:2] != self.image_size:  # the file changed between the two decodes
            self._say("warning", f"{image_id} changed on disk while loading; select it again")
            return
        self.image, self.display = image, display
        self.image_ready.emit(image_id)
        self.prefetch.around(image_id)

    def _on_doc_change(self, bbox: tuple) -> None:
        self.mask_changed.emit(tuple(int(v) for v in bbox))
        self._save_soon()

    def _save_soon(self) -> None:
        """An edit: save IDLE_SAVE_MS after the last one, but no later than UNSAVED_MAX_MS after the
        first one since the last save (a person painting without pause still has it saved)."""
        now = time.monotonic()
        if self._unsaved_since is None:
            self._unsaved_since = now
        left = UNSAVED_MAX_MS - (now - self._unsaved_since) * 1000.0
        self._idle_save.start(max(0, int(min(IDLE_SAVE_MS, left))))

    def _idle_saved(self) -> None:
        if self.document is not None and self.document.in_stroke:
            # Not in the middle of a drag (the copy would be a hitch under the pointer): again once
            # the button is up (ending a stroke may tell no listener).
            self._idle_save.start(IDLE_SAVE_MS)
            return
        self._unsaved_since = None
        if self.store is not None and not self.read_only:
            # Only the current image: retrying failed saves of others (a full disk) stays with the
            # 30 s timer, not every pause in editing.
            self.saves.save_current(wait=False)

    def _step(self, delta: int) -> None:
        if not self._ids:
            return
        cur = self._pending or self.image_id
        i = self._ids.index(cur) if cur in self._ids else -1
        j = min(max(i + delta, 0), len(self._ids) - 1)
        if self._ids[j] != cur:
            self.select(self._ids[j])

    def next_image(self) -> None:
        self._step(+1)

    def prev_image(self) -> None:
        self._step(-1)

    # ------------------------------------------------------------------ saving (see saving.py)
    def unsaved(self) -> list[tuple[str, str]]:
        """``(image id, why)`` for every image whose latest edits are not on disk, in folder order."""
        return self.saves.not_on_disk()

    def save_current(self, wait: bool = True) -> bool:
        """Save the current mask if it changed; with ``wait``, wait for the disk and return False (with
        a ``message`` saying why) on failure, keeping the document in memory (see saving.py)."""
        return self.saves.save_current(wait)

    def autosave(self) -> None:
        """Timer tick: queue the current mask if dirty and retry masks whose save failed."""
        self.saves.autosave()

    def mark_reviewed(self) -> bool:
        """Save the current mask with the status "reviewed"."""
        return self.saves.mark_reviewed()

    # ------------------------------------------------------------------ view
    def set_crf_labels(self, labels: np.ndarray | None) -> None:
        self.crf_labels = labels
        if self.view_mode == "crf":
            self.view_changed.emit()

    def set_view_mode(self, mode: str) -> None:
        if mode not in VIEW_MODES:
            raise ValueError(f"view mode must be one of {VIEW_MODES}, not {mode!r}")
        if mode != self.view_mode:
            self.view_mode = mode
            self.view_changed.emit()

    def set_opacity(self, value: float) -> None:
        self.opacity = float(min(max(value, 0.0), 1.0))
        self.view_changed.emit()

    def set_outline(self, on: bool) -> None:
        self.outline = bool(on)
        self.view_changed.emit()

    def set_show_unconfirmed(self, on: bool) -> None:
        self.show_unconfirmed = bool(on)
        self.view_changed.emit()

    def overlay_labels(self) -> np.ndarray | None:
        """H×W uint8 labels to draw for the view mode (the user mask when the view has nothing)."""
        if self.view_mode == "raw" and self.raw_labels is not None:
            return self.raw_labels
        if self.view_mode == "crf" and self.crf_labels is not None:
            return self.crf_labels
        return self.document.mask if self.document is not None else None

    # ------------------------------------------------------------------ classes
    def set_classes(self, classes: list[tuple[str, tuple[int, int, int]]]) -> bool:
        """Replace the class list (names, colours); a shorter list is refused by the store."""
        if self.store is None:
            return False
        try:
            self.store.set_classes(classes)
        except Exception as exc:  # noqa: BLE001  (StoreError, bad names/colours: tell the user)
            self._say("error", str(exc))
            return False
        self.classes_changed.emit()
        return True
