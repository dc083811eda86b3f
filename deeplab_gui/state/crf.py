"""The live CRF's state: the current parameters (saved per folder) and the refinement of the current image.

:class:`CRFState` (``session.crf``) owns what the CRF panel used to: the ``CRFParams`` every CRF user
reads (the panel's sliders, the CRF-snap brush), their persistence, and the live refinement of the
image on screen. Setting ``params`` sends a request at once; the answer comes as ``preview_ready`` (a
reduced-size result, tens of milliseconds) then ``full_ready``, and the labels land in
``session.crf_labels``. The work runs on the session's task runner: a ``LiveCRF`` is built in one task,
then each lane of :mod:`.crf_lanes` is a generator task whose yields arrive here through ``yielded``.

The engine (torch) is imported on first use, so creating a Session stays cheap.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QCoreApplication, QObject, QTimer, Signal

if TYPE_CHECKING:
    from engine.crf import CRFParams, LiveCRF, LiveResult

    from .crf_lanes import LiveLanes

__all__ = ["SAVE_DELAY_MS", "CRFState"]

log = logging.getLogger("deeplab_gui")

SAVE_DELAY_MS = 500  # settings write after the last change: a slider drag is written once, not per step


class CRFState(QObject):
    """See the module docstring. Create on the UI thread with the session it serves.

    Signals: ``params_changed(CRFParams)``, ``enabled_changed(bool)``, ``preview_ready(LiveResult)``,
    ``full_ready(LiveResult)`` (``session.crf_labels`` already holds the labels), ``status_changed(str)``
    (a line for a person: preparing, timings, why nothing is refined).

    ``enabled`` starts False: a session nobody shows the CRF of spends nothing on it; the CRF panel's
    "Live CRF" box (checked by default) turns it on.
    """

    params_changed = Signal(object)
    enabled_changed = Signal(bool)
    preview_ready = Signal(object)
    full_ready = Signal(object)
    status_changed = Signal(str)

    def __init__(self, session: Any, parent: QObject | None = None) -> None:
        super().__init__(parent if parent is not None else session)
        self.session = session
        self.last_result: LiveResult | None = None  # the newest result shown
        self.status = ""
        self._params: CRFParams | None = None  # None: the default preset, resolved on first use
        self._enabled = False
        self._lanes: LiveLanes | None = None
        self._building = None  # TaskHandle of the LiveCRF being built
        self._source: tuple | None = None  # (image, probs) arrays the live refinement was built for
        self._generation = 0
        self._unsaved: tuple[str, dict] | None = None  # (folder, params) not yet in the settings
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.flush_settings)
        session.current_changed.connect(self._restart)
        session.probs_changed.connect(self._restart)
        session.image_ready.connect(self._restart)  # a JPEG's full-resolution pixels follow its preview
        session.folder_opened.connect(self._on_folder)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.flush_settings)

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> CRFParams:
        """The parameters in use; assigning sets them (see :meth:`set_params`)."""
        if self._params is None:
            from engine.crf import DEEPLAB_V1
            self._params = DEEPLAB_V1
        return self._params

    @params.setter
    def params(self, params: CRFParams) -> None:
        self.set_params(params)

    def set_params(self, params: CRFParams, *, refine: bool = True, persist: bool = True) -> None:
        """Use ``params``: refine the current image with them (``refine``; the request goes out before
        anything else), remember them for the folder (``persist``) and emit ``params_changed``."""
        from engine.crf import CRFParams
        if not isinstance(params, CRFParams):
            raise TypeError(f"CRF parameters must be a CRFParams, not {type(params).__name__}")
        changed = params != self.params
        self._params = params
        if refine:
            self._submit()
        if persist:
            self._save_folder_params()
        if changed:
            self.params_changed.emit(params)

    def _folder_key(self) -> str | None:
        folder = getattr(self.session, "folder", None)
        return str(folder) if folder else None

    def _load_folder_params(self) -> None:
        from engine.crf import CRFParams
        key, settings = self._folder_key(), getattr(self.session, "settings", None)
        if key is None or settings is None:
            return
        try:
            stored = settings.crf_params(key)
            if stored:
                self.set_params(CRFParams(**stored), refine=False, persist=False)
        except (TypeError, ValueError) as exc:  # a hand-edited or old settings file: keep the parameters
            log.warning("ignoring stored CRF parameters for %s: %s", key, exc)

    def _save_folder_params(self) -> None:
        """Remember the parameters under the folder open now; written by :meth:`flush_settings` soon."""
        key = self._folder_key()
        if key is not None:
            self._unsaved = (key, asdict(self.params))
            self._save_timer.start()

    def flush_settings(self) -> None:
        """Write parameters not yet saved (the timer, a folder change, shutdown and quitting call this)."""
        self._save_timer.stop()
        pending, self._unsaved = self._unsaved, None
        settings = getattr(self.session, "settings", None)
        if pending is not None and settings is not None:
            settings.set_crf_params(*pending)

    def _on_folder(self) -> None:
        self.flush_settings()  # under the folder they were chosen for (its key was taken then)
        self._load_folder_params()

    # ------------------------------------------------------------------ on / off
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        on = bool(on)
        if on == self._enabled:
            return
        self._enabled = on
        if on:
            self._source = None
            self._restart()
        else:
            self._stop()
            self.last_result = None
            self.session.set_crf_labels(None)
            if self.session.view_mode == "crf":
                self.session.set_view_mode("mask")
            self._set_status("CRF off")
        self.enabled_changed.emit(on)

    @property
    def running(self) -> bool:
        """Whether a live refinement is built or being built for the current image."""
        return self._lanes is not None or self._building is not None

    # ------------------------------------------------------------------ live refinement
    def _set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    def _stop(self) -> None:
        self._generation += 1
        if self._building is not None:
            self._building.cancel()
            self._building = None
        if self._lanes is not None:
            # No waiting: a full-size iteration may be running; it stops at its next cancellation
            # check, and what it yields meanwhile belongs to closed lanes, so it is dropped.
            self._lanes.close()
            self._lanes = None

    def _restart(self, *_args) -> None:
        """The image or its probabilities changed: a new LiveCRF (built off the UI thread)."""
        s = self.session
        image, probs = s.image, s.probs
        src = self._source
        if src is not None and src[0] is image and src[1] is probs and self.running:
            return  # current_changed and probs_changed both fire on an image switch: build once
        self._source = (image, probs)
        self._stop()
        self.last_result = None
        s.set_crf_labels(None)
        if not self._enabled:
            return
        if image is None or probs is None:
            if probs is None:
                self._set_status("no model probabilities for this image yet: pre-label it first")
            return
        from engine import grid_fits
        if not grid_fits(probs.shape[1:], image.shape[:2]):  # a huge image's may be on a smaller grid
            self._set_status("cached probabilities do not match the image size; pre-label it again")
            return
        from .crf_lanes import build_live
        generation = self._generation
        self._set_status("preparing CRF…")
        self._building = s.run_task(build_live, image, probs, task_name="build live CRF",
                                    on_result=lambda live, g=generation: self._on_built(g, live),
                                    on_error=lambda msg, g=generation: self._on_build_error(g, msg))

    def _on_built(self, generation: int, live: LiveCRF) -> None:
        if generation != self._generation:
            return
        from .crf_lanes import LiveLanes
        self._building = None
        image = self.session.image
        self._lanes = LiveLanes(live, image.shape[:2] if image is not None else None, self._start_lane)
        self._submit()

    def _on_build_error(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self._building = None
            self._set_status(f"CRF unavailable: {message}")

    def _start_lane(self, lanes: LiveLanes, lane: str, token: int) -> None:
        """Run one lane task of ``lanes`` on the session's task runner (UI thread)."""
        if lanes is not self._lanes:
            return  # lanes of an image we have left take no more work
        handle = self.session.run_task(lanes.lane_task, lane, token, task_name=f"live CRF {lane}", quiet=True,
                                       on_yielded=lambda item, lanes=lanes: self._on_item(lanes, item))
        handle.finished.connect(lambda lanes=lanes, lane=lane, token=token: lanes.finished(lane, token))
        lanes.tasks[lane] = handle

    def _submit(self) -> None:
        if self._lanes is not None and self._enabled:
            self._lanes.request(self.params)

    def _on_item(self, lanes: LiveLanes, item: object) -> None:
        from .crf_lanes import Failure, Frame, Handoff
        if lanes is not self._lanes:
            return  # an image (or probabilities) we have left
        if isinstance(item, Handoff):
            lanes.hand_on(item.request_id, item.params)
        elif isinstance(item, Frame):
            self._show(item)
        elif isinstance(item, Failure):
            self._set_status(f"CRF failed: {item.message}")

    def _show(self, frame) -> None:
        result, last = frame.result, self.last_result
        if last is not None and (result.request_id, result.stage == "full") < (last.request_id, last.stage == "full"):
            return  # older than what is shown; newer previews still show during a continuous drag
        self.last_result = result
        self.session.set_crf_labels(frame.labels)
        (self.full_ready if result.stage == "full" else self.preview_ready).emit(result)
        what = "preview" if result.stage == "preview" else "full size"
        live = getattr(self._lanes, "live", None)
        if result.stage != "preview" and live is not None and getattr(live, "scale", 1.0) < 1.0:
            what = f"full, at {live.height * live.width / 1e6:.1f} MP"   # a large photo's reduced copy
        self._set_status(f"CRF {what}: {result.elapsed * 1000:.0f} ms")

    # ------------------------------------------------------------------ apply and shutdown
    def apply_to_mask(self) -> bool:
        """Commit the CRF labels shown to the document as one undo step; False if there is nothing."""
        s = self.session
        labels, doc = s.crf_labels, s.document
        if labels is None or doc is None or labels.shape != doc.shape:
            return False
        doc.apply_labels(labels, description="Apply CRF")
        s.message.emit("info", "CRF labels applied to the mask")
        return True

    def shutdown(self) -> None:
        """Save pending parameters and stop the live refinement (the main window calls this on close)."""
        self.flush_settings()
        self._stop()
