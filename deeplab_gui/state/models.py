"""The session's models: which weights are on this machine, what loads by itself, loading, pre-labelling,
the folder's fine-tuned versions, and the way into fine-tuning.

:class:`ModelsState` (``session.models``) owns that state and its background work (the plain functions
of :mod:`.model_work`, run through the session's task runner) and tells widgets what happened through
signals; the model panel, the versions combo and the fine-tune dialog only show it.  Predictions go
through the session (``set_model``, ``apply_prediction``, ``set_probs``), which never lets one
overwrite a person's mask.  Probabilities land in the store's cache, so switching back to an image and
moving CRF sliders never reruns the network.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

import engine

from .model_work import (
    LoadedModel,
    VersionEntry,
    catalog_state,
    device_description,
    display_name,
    folder_default,
    is_catalog_id,
    list_versions,
    load_catalog,
    load_file,
    predict_batch,
    predict_one,
    use_version,
    version_text,
)
from .tasks import TaskHandle
from .training import TrainingState

__all__ = ["LoadedModel", "ModelsState", "VersionEntry", "catalog_state", "device_description", "display_name",
           "folder_default", "list_versions", "load_catalog", "load_file", "predict_batch", "predict_one",
           "use_version", "version_text"]

log = logging.getLogger("deeplab_gui")


class ModelsState(QObject):
    """Create with the session (``session.models``).  One load or pre-label run at a time (``task``,
    ``busy``); ``cancel()`` stops it and a fine-tune run of ``training``.

    The weights catalog is first checked when :meth:`refresh_catalog` is called (the model panel does,
    when it is built); from then on, opening a folder loads its current fine-tuned version, or, with no
    model, the weights used last time when they are on this machine (never a download)."""

    catalog_changed = Signal(dict)      # catalog id -> whether its weights are on this machine
    busy_changed = Signal(bool)         # a load or pre-label run started (True) or ended (False)
    status_changed = Signal(str)        # one line on the last load / pre-label ("" when none)
    load_progress = Signal(int, int)    # (done, total) kilobytes of a download; (0, 0) while unknown
    loaded = Signal(str)                # the loaded weights' model id
    load_failed = Signal(str)           # one line saying why (a download's names where to drop the file)
    prelabel_progress = Signal(int, int)  # (images done, images in the run)
    prelabel_finished = Signal(dict)    # {"done", "saved", "failed", "total"}
    versions_changed = Signal(list)     # the folder's fine-tuned versions ([VersionEntry], newest first)
    version_loaded = Signal(str)        # a version was loaded, made current and swapped in
    finetune_requested = Signal()       # show the fine-tune dialog (the request was accepted)

    def __init__(self, session: Any, parent: QObject | None = None) -> None:
        super().__init__(parent if parent is not None else session)
        self.session = session
        self.arch: str | None = None     # the architecture for a checkpoint whose keys do not say
        self.downloaded: dict[str, bool] | None = None  # None until the catalog check is back
        self.task: TaskHandle | None = None
        self.status = ""
        self.load_error: str | None = None  # why the last load failed; cleared when the next starts
        self.versions: list[VersionEntry] = []
        self.using: TaskHandle | None = None  # a version being loaded
        self._said: str | None = None     # the versions index notice already told
        self._autoload_again = False
        self._folder_version: str | None = None  # the folder's version being autoloaded
        self._current = [session.image_id]  # read live by the batch worker thread
        self.training = TrainingState(session, prelabel=lambda: self.prelabel_all(include_prelabelled=True),
                                      parent=self)
        session.current_changed.connect(self._on_current_changed)
        session.folder_opened.connect(self.autoload)

    @property
    def busy(self) -> bool:
        return self.task is not None

    def _set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    def _on_current_changed(self, _image_id: str = "") -> None:
        self._current[0] = self.session.image_id

    # ------------------------------------------------------------------ catalog and autoload
    @property
    def catalog_checked(self) -> bool:
        """Whether the check of downloaded catalog weights has come back (autoloading waits for it)."""
        return self.downloaded is not None

    def refresh_catalog(self) -> TaskHandle:
        """Check which catalog weights are downloaded (in a worker), then autoload as on opening a folder."""
        return self.session.run_task(catalog_state, on_result=self._on_catalog_state,
                                     on_error=lambda m: log.warning("catalog check failed: %s", m))

    def _on_catalog_state(self, state: dict) -> None:
        self._set_downloaded(state)
        self.autoload()

    def _set_downloaded(self, state: dict) -> None:
        self.downloaded = dict(state)
        self.catalog_changed.emit(dict(state))

    def autoload(self, *_args) -> None:
        """Load the folder's current fine-tuned version, or, with no model loaded, the weights used last
        time (never downloading).  Waits for the catalog check; while another load or pre-label runs,
        it is tried again when that one finishes."""
        s = self.session
        if self.downloaded is None:
            return
        if self.task is not None:
            self._autoload_again = True
            return
        self._autoload_again = False
        last, store = s.settings.last_weights(), s.store

        def chosen(choice) -> None:
            if choice is None or s.store is not store:
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
            elif self.load(spec) is not None and why == "folder":
                self._folder_version = spec
                self._set_status(f"loading this folder's fine-tuned model {Path(spec).name}…")
        s.run_task(folder_default, store, last, dict(self.downloaded), on_result=chosen,
                   on_error=lambda m: log.warning("choosing weights failed: %s", m))

    # ------------------------------------------------------------------ loading
    def load(self, spec: str | os.PathLike | None, arch: str | None = None) -> TaskHandle | None:
        """Load a catalog id (downloading it if needed) or a checkpoint file, in a worker; ``arch`` (else
        ``self.arch``) decides when a file's keys fit several architectures.  Returns the TaskHandle
        (None if busy or nothing given)."""
        if not spec or self.task is not None:
            return None
        spec = str(spec)
        self.load_error = None
        if is_catalog_id(spec):
            fn, args = load_catalog, (spec,)
            self._set_status(f"loading {spec}…")
        else:
            fn, args = load_file, (spec, arch or self.arch)
            self._set_status(f"loading {Path(spec).name}…")
        return self._start(fn, *args, on_result=self._on_loaded, on_error=self._on_load_error,
                           on_progress=self.load_progress.emit)

    def _on_loaded(self, loaded: LoadedModel) -> None:
        s = self.session
        name = display_name(loaded.spec)
        s.set_model(loaded.model, loaded.model_id, name=name)
        s.settings.set_last_weights(loaded.spec)
        folder = self._folder_version == loaded.spec
        self._folder_version = None
        self._set_status(f"loaded this folder's fine-tuned model {name}" if folder else f"loaded {name}")
        if is_catalog_id(loaded.spec):
            self._set_downloaded({**(self.downloaded or {}), loaded.spec: True})
        self.loaded.emit(loaded.model_id)

    def _on_load_error(self, message: str) -> None:
        self._set_status("")
        self.load_error = message
        self.load_failed.emit(message)
        self.session.message.emit("error", message)

    # ------------------------------------------------------------------ pre-labelling
    def prelabel_current(self) -> TaskHandle | None:
        """Predict the image on screen (worker); the session applies it unless a person edited it."""
        s = self.session
        if self.task is not None or s.predictor is None or s.image is None:
            return None
        image_id = s.image_id
        self._set_status(f"pre-labelling {image_id}…")
        return self._start(predict_one, s.predictor, s.image, image_id,
                           on_result=lambda r, i=image_id: self._on_current_result(i, *r),
                           on_progress=self.prelabel_progress.emit)

    def _on_current_result(self, image_id: str, labels: np.ndarray, probs: np.ndarray) -> None:
        self._apply(image_id, labels, probs)
        self._set_status(f"pre-labelled {image_id}")
        self.prelabel_finished.emit({"done": 1, "saved": 1, "failed": 0, "total": 1})

    def _apply(self, image_id: str, labels: np.ndarray, probs: np.ndarray) -> None:
        from engine import Status
        s = self.session
        status = s.store.status(image_id) if s.store is not None else None
        if status in (Status.EDITED, Status.REVIEWED):
            s.set_probs(image_id, probs)  # a person's mask stays; the CRF panel still gets probabilities
        else:
            s.apply_prediction(image_id, labels, probs)

    def prelabel_all(self, include_prelabelled: bool = False) -> TaskHandle | None:
        """Predict every unlabelled image of the folder (worker, progress, cancel); with
        ``include_prelabelled`` also those a model labelled but nobody touched (after fine-tuning).
        The image on screen comes back to the UI thread and is applied like :meth:`prelabel_current`."""
        from engine import Status
        s = self.session
        if self.task is not None or s.predictor is None or s.store is None:
            return None
        wanted = (Status.UNLABELED, Status.PRELABELED) if include_prelabelled else (Status.UNLABELED,)
        ids = [i for i in s.store.ids() if s.store.status(i) in wanted]
        if not ids:
            self._set_status("no unlabelled images")
            return None
        self._current[0] = s.image_id
        self._set_status(f"pre-labelling {len(ids)} images…")
        return self._start(predict_batch, s.predictor, s.store, ids, s.model_id or "", self._current,
                           on_yielded=lambda shown: self._apply(*shown), on_result=self._on_batch_done,
                           on_progress=self.prelabel_progress.emit)

    def _on_batch_done(self, summary: dict) -> None:
        text = f"pre-labelled {summary['saved']} of {summary['total']}"
        if summary["failed"]:
            text += f"; {summary['failed']} could not be read"
        self._set_status(text)
        self.prelabel_finished.emit(summary)

    # ------------------------------------------------------------------ versions
    def refresh_versions(self) -> TaskHandle | None:
        """Re-read the folder's fine-tuned versions (worker); ``versions_changed`` when they are back."""
        store = self.session.store
        if store is None:
            self._set_versions([])
            return None
        return self.session.run_task(list_versions, store, on_result=self._on_versions_listed,
                                     on_error=lambda t: log.warning("cannot list model versions: %s", t),
                                     task_name="list versions")

    def _on_versions_listed(self, listed: tuple[list[VersionEntry], str | None]) -> None:
        entries, notice = listed
        if notice and notice != self._said:
            self._said = notice  # once per damage, not on every refresh
            self.session.message.emit("warning", notice)
        self._set_versions(entries)

    def _set_versions(self, entries: list[VersionEntry]) -> None:
        self.versions = list(entries)
        self.versions_changed.emit(list(entries))

    def use_version(self, name: str | None) -> TaskHandle | None:
        """Load version ``name`` in a worker, make it the folder's current one and swap it in."""
        store = self.session.store
        if not name or store is None or self.using is not None:
            return None

        def done(value: tuple) -> None:
            model, model_id = value
            self.session.set_model(model, model_id, name=name)
            self.version_loaded.emit(name)

        self.using = self.session.run_task(use_version, store, name, on_result=done,
                                           on_error=lambda t: self.session.message.emit("error", t),
                                           task_name="use version")
        self.using.finished.connect(self._on_used)
        return self.using

    def _on_used(self) -> None:
        self.using = None

    # ------------------------------------------------------------------ fine-tuning
    def finetune_refusal(self) -> str | None:
        """Why fine-tuning cannot be opened now (None: it can; with no model, the run starts a new one)."""
        s = self.session
        if s.store is None:
            return "open a folder first"
        if s.read_only:
            return f"{s.folder} is open read-only: fine-tuning writes a new model version into it"
        return None

    def request_finetune(self) -> bool:
        """What the Model menu entry and the panel's button both do: ``finetune_requested`` (the panel
        shows its dialog), or a message saying why not."""
        why = self.finetune_refusal()
        if why is not None:
            self.session.message.emit("info", why)
            return False
        self.finetune_requested.emit()
        return True

    # ------------------------------------------------------------------ task plumbing
    def _start(self, fn, *args, on_result, on_progress, on_error=None, on_yielded=None) -> TaskHandle:
        handle = self.session.run_task(fn, *args, on_result=on_result, on_error=on_error or self._on_task_error,
                                       on_progress=on_progress, on_yielded=on_yielded)
        self.task = handle
        handle.finished.connect(lambda h=handle: self._on_finished(h))
        self.busy_changed.emit(True)
        return handle

    def _on_task_error(self, message: str) -> None:
        self._set_status(message)
        self.session.message.emit("error", message)

    def _on_finished(self, handle: TaskHandle) -> None:
        if handle is not self.task:
            return
        if handle.cancelled:
            self._set_status("cancelled")
        self.task = None
        self.busy_changed.emit(False)
        self.session.statuses_changed.emit()  # batch saves happened behind the session's back
        if self._autoload_again:
            self.autoload()

    def cancel(self) -> None:
        """Stop the running load or pre-label and a fine-tune run (also what quitting calls)."""
        if self.task is not None:
            self.task.cancel()
        self.training.cancel()
