"""The click model of the session: which one, loading it, and each image's embedding ready before a click.

:class:`ClickModelState` (``session.click``) loads the chosen click model (a catalog entry, downloaded
if needed, or a weights file) and keeps the embeddings of the current image and its neighbours ready,
so a click only runs the prompt decoder (milliseconds).  All of it goes through the session's task
runner: loading, reading cached embeddings and running the encoder never happen on the UI thread.  One
embedding job runs at a time, the current image first, then its neighbours (those the prefetcher
decodes); a result for a model or folder no longer in use is dropped.  Every computed embedding goes to
the store's cache, so a second visit needs no encoder; in memory only a few are kept (``KEEP``).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from .click_work import (
    SUGGESTED,
    Embedded,
    LoadedClick,
    embed_image,
    is_click_catalog_id,
    load_click,
    missing_text,
)
from .tasks import TaskHandle

__all__ = ["CLICK_LANE", "KEEP", "NEIGHBOUR_QUIET_S", "ClickModelState"]

log = logging.getLogger("deeplab_gui")

KEEP = 3   # embeddings held in memory: the current image and its two neighbours

# The worker lane every encoder and decoder call of the click model runs on (one thread, so one
# OpenMP team: see Worker.run_task).
CLICK_LANE = "click"
# The lane's priorities: a click (and the rest of its logits) goes ahead of a guessed click, which
# goes ahead of the embeddings. Clicks and guesses are also answered at an encoder run's pauses
# (see _start); embeddings never run inside another.
CLICK_PRIORITY = 2
GUESS_PRIORITY = 1
# A neighbour's embedding (an encoder run: 1 s for MobileSAM, up to 18 s for SAM 2.1 large on a
# CPU) starts only once the current image's embedding has been ready, and the click tool unused, for
# this long; a click that comes during the run is decoded at its next pause between the encoder's
# blocks (ClickPredictor.set_image's ``between``), not after the whole run.
NEIGHBOUR_QUIET_S = 3.0


class ClickModelState(QObject):
    """Create with the session (``session.click``); see the module docstring.

    ``changed()``: a model was loaded or cleared; ``embedding_ready(image_id)``: :meth:`predictor`
    now answers for that image; ``status_changed(text)``: :attr:`status_text` changed;
    ``load_progress(done, total)``: kilobytes of a download ((0, 0) while unknown).
    ``encoder_calls`` counts the encoder runs (a cached embedding costs none)."""

    changed = Signal()
    embedding_ready = Signal(str)
    status_changed = Signal(str)
    load_progress = Signal(int, int)

    def __init__(self, session: Any, parent: QObject | None = None) -> None:
        super().__init__(parent if parent is not None else session)
        self.session = session
        self.model: Any = None
        self.model_id: str | None = None
        self.spec: str | None = None
        self._name: str | None = None
        self.error: str | None = None        # why the last load failed; cleared by the next
        self._embed_errors: dict[str, str] = {}   # image id -> why its embedding failed (this generation)
        self.encoder_calls = 0               # counted by the worker, under _calls_lock
        self._calls_lock = threading.Lock()
        self._last_status: str | None = None
        self.neighbours = True               # also prepare the images next to the current one
        self.neighbour_quiet_s = NEIGHBOUR_QUIET_S
        self._busy_at = float("-inf")            # when the current image got ready or was last clicked
        self.loading: TaskHandle | None = None
        self._loading_name: str | None = None
        self._download: tuple[int, int] | None = None
        self._ready: OrderedDict[str, Any] = OrderedDict()   # image id -> ClickPredictor
        self._job: tuple[int, str, TaskHandle] | None = None  # (generation, image id, handle)
        self._gen = 0                        # bumps whenever the model or the store changes
        self._store: Any = None
        self._need_pixels: set[str] = set()  # not cached; waits for the session's full decode
        self._autoloaded = False
        session.current_changed.connect(self._refresh)
        session.image_ready.connect(self._refresh)
        session.folder_opened.connect(self._on_folder)

    # ------------------------------------------------------------------ what widgets read
    @property
    def model_name(self) -> str | None:
        return self._name if self.model is not None else None

    @property
    def busy(self) -> bool:
        return self.loading is not None

    def computing(self, image_id: str | None = None) -> bool:
        """Whether an embedding job runs (for ``image_id``, when given)."""
        return self._job is not None and (image_id is None or self._job[1] == image_id)

    @property
    def status_text(self) -> str:
        if self.loading is not None:
            name = self._loading_name or "the click model"
            if self._download and self._download[1] > 0:
                done, total = self._download
                return f"downloading {name}… {done >> 10} of {total >> 10} MB"
            return f"loading {name}…"
        if self.model is None:
            return self.error or missing_text(SUGGESTED)
        cur = self.session.image_id
        if self.error:
            return f"{self.error}; still using {self._name}"
        if cur in self._embed_errors:
            return f"{self._name}: cannot prepare {cur} for clicks: {self._embed_errors[cur]}"
        if cur is not None and cur in self._ready:   # (its job may still be finishing)
            return f"{self._name}: ready"
        if cur is not None and self.computing(cur):
            return f"{self._name}: preparing {cur} for clicks…"
        return f"{self._name}"

    def predictor(self, image_id: str) -> Any:
        """A ClickPredictor holding ``image_id``'s embedding, or None while it is being prepared (asking
        starts it). Never runs the encoder here."""
        p = self._ready.get(image_id)
        if p is not None:
            self._ready.move_to_end(image_id)
            return p
        self._refresh()
        return None

    # ------------------------------------------------------------------ choosing a model
    def choose_catalog(self, name: str) -> TaskHandle | None:
        """Load catalog entry ``name`` (downloading it first when it is not on this machine)."""
        if not is_click_catalog_id(name):
            self._fail(f"{name} is not a click model of the catalog")
            return None
        return self._load(name, name)

    def choose_file(self, path: str) -> TaskHandle | None:
        """Load a click model's weights file (SAM, SAM 2.1, MobileSAM; recognised from its contents)."""
        return self._load(str(path), Path(path).name) if path else None

    def clear(self) -> None:
        """Use no click model."""
        self._cancel_load()
        self._set_model(None)
        self.session.settings.set_click_model(None)

    def _load(self, spec: str, name: str, *, allow_download: bool = True) -> TaskHandle:
        self._cancel_load()
        self.error = None
        self._loading_name, self._download = name, None
        # In the shared pool, not on the click lane: a change of model must not wait for the old
        # model's encoder run there, nor a download hold up the old model's clicks.
        handle = self.session.run_task(load_click, spec, allow_download=allow_download,
                                       on_progress=self._on_progress, task_name="load click model")
        self.loading = handle
        handle.result.connect(lambda loaded, h=handle: self._loaded(h, loaded))
        handle.error.connect(lambda text, h=handle: h is self.loading and self._fail(text))
        handle.finished.connect(lambda h=handle: self._load_finished(h))
        self._say()
        return handle

    def _cancel_load(self) -> None:
        if self.loading is not None:
            self.loading.cancel()   # a download stops; its result, if any, is ignored
            self.loading = None

    def _on_progress(self, done: int, total: int) -> None:
        self._download = (done, total)
        self.load_progress.emit(done, total)
        self._say()

    def _loaded(self, handle: TaskHandle, loaded: LoadedClick | None) -> None:
        if handle is not self.loading:
            return   # another choice came after this one
        self.loading = None
        if loaded is None:   # an autoload whose weights are not on this machine: nothing to do
            self._say()
            return
        self._set_model(loaded)
        self.session.settings.set_click_model(loaded.spec)

    def _load_finished(self, handle: TaskHandle) -> None:
        if handle is self.loading:
            self.loading = None
            self._say()

    def _fail(self, text: str) -> None:
        self.error = text
        self._say()
        # The panel's line has room for part of it: a failed download's message (the URL, and where
        # to put the file by hand) is read in full in the window's message box.
        self.session.message.emit("error", text)

    def _set_model(self, loaded: LoadedClick | None) -> None:
        self.model = loaded.model if loaded else None
        self.model_id = loaded.model_id if loaded else None
        self.spec = loaded.spec if loaded else None
        self._name = loaded.name if loaded else None
        self._forget()
        self.changed.emit()
        self._say()
        self._refresh()

    def _forget(self) -> None:
        """Drop what belongs to the previous model or folder: a running job's result, and the
        embeddings in memory."""
        self._gen += 1
        self._ready.clear()
        self._embed_errors.clear()
        self._need_pixels.clear()
        if self._job is not None:
            # Stops it if it has not started; a running encoder finishes (its result is dropped), and
            # the next job waits for it: never two encoder runs at once.
            self._job[2].cancel()

    def _on_folder(self) -> None:
        s = self.session
        if s.store is not self._store:
            self._store = s.store
            self._forget()
        if self.model is None and self.loading is None and not self._autoloaded:
            self._autoloaded = True   # the choice from last time, once, and only when on this machine
            spec = s.settings.click_model()
            if spec:
                self._load(spec, spec if is_click_catalog_id(spec) else Path(spec).name, allow_download=False)

    # ------------------------------------------------------------------ embeddings
    def _wanted(self) -> list[str]:
        s = self.session
        cur = s.image_id
        if cur is None:
            return []
        return [cur] + (s.prefetch.neighbours(cur) if self.neighbours else [])

    def _refresh(self, *_args) -> None:
        """Start the next embedding job, if none runs: the first wanted image not ready yet."""
        s = self.session
        if s.store is not self._store:
            self._store = s.store
            self._forget()
        if self.model is None or s.store is None or self._job is not None:
            self._say()
            return
        cur = s.image_id
        for image_id in self._wanted():
            if image_id in self._ready or image_id in self._embed_errors:
                continue
            if image_id == cur:
                pixels = s.image
                if pixels is None and image_id in self._need_pixels:
                    break   # image_ready calls again; the neighbours wait for the current image
                may_encode = pixels is not None
            else:
                wait = self.neighbour_quiet_s - (time.monotonic() - self._busy_at)
                if wait > 0:
                    QTimer.singleShot(int(wait * 1000) + 10, self._refresh)
                    break
                ready = s.prefetch.ready.get(image_id)
                pixels, may_encode = (ready[0] if ready else None), True
            self._start(image_id, pixels, may_encode)
            break
        self._say()

    def note_prompt(self) -> None:
        """The click tool was used: neighbours' embeddings wait (:data:`NEIGHBOUR_QUIET_S`)."""
        self._busy_at = time.monotonic()

    def _start(self, image_id: str, pixels: Any, may_encode: bool) -> None:
        gen = self._gen
        # Between the encoder's blocks, clicks and guesses waiting on the lane (on the current image,
        # during a neighbour's run) are decoded there and then (Worker.run_waiting).
        worker = getattr(self.session, "worker", None)
        between = None if worker is None else functools.partial(worker.run_waiting, CLICK_LANE, GUESS_PRIORITY)
        handle = self.session.run_task(embed_image, self._store, image_id, self.model, self.model_id, pixels,
                                       may_encode, counted=self._count, between=between,
                                       task_name="click embedding", lane=CLICK_LANE)
        self._job = (gen, image_id, handle)
        handle.result.connect(lambda e, g=gen: self._embedded(g, e))
        handle.error.connect(lambda text, g=gen, i=image_id: self._embed_failed(g, i, text))
        handle.finished.connect(lambda h=handle: self._job_finished(h))

    def _embedded(self, gen: int, result: Embedded) -> None:
        if gen != self._gen:
            return   # another model or folder since
        if result.predictor is None:
            self._need_pixels.add(result.image_id)
            return
        self._need_pixels.discard(result.image_id)
        if result.image_id not in self._wanted():
            return   # the person moved on; the store's cache has it for later
        self._ready[result.image_id] = result.predictor
        if result.image_id == self.session.image_id:
            self._busy_at = time.monotonic()   # clicks on it are likely now: neighbours wait
        self._trim()
        self.embedding_ready.emit(result.image_id)

    def _embed_failed(self, gen: int, image_id: str, text: str) -> None:
        if gen != self._gen:
            return
        self._embed_errors[image_id] = text
        self._say()
        log.warning("click embedding of %s failed: %s", image_id, text)

    def _job_finished(self, handle: TaskHandle) -> None:
        if self._job is not None and self._job[2] is handle:
            self._job = None
        self._refresh()

    def _count(self) -> None:
        with self._calls_lock:
            self.encoder_calls += 1

    def _trim(self) -> None:
        wanted = set(self._wanted())
        for image_id in [k for k in self._ready if k not in wanted]:
            if len(self._ready) <= KEEP:
                break
            del self._ready[image_id]
        while len(self._ready) > KEEP:
            self._ready.popitem(last=False)

    def _say(self) -> None:
        text = self.status_text
        if text != self._last_status:
            self._last_status = text
            self.status_changed.emit(text)
