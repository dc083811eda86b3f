"""One "Fine-tune on my labels" run at a time: start it with a recipe, follow its progress, cancel it,
and act on its result (swap the new model in, make a version current, offer to re-pre-label).

The run is :class:`trainer.FineTune`, a generator of progress events; it is iterated on the session's
task runner and each event reaches the UI thread through the runner's ``yielded``, so the window keeps
painting while it trains.  The caller's model is never modified (the trainer works on a copy): cancel
leaves ``session.model`` and the store's versions exactly as they were.  On success the new model is
swapped in with a new ``model_id`` (the probability cache's key) without restarting.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from .tasks import TaskHandle

__all__ = ["TrainingState", "count_labelled", "make_current", "phase_status", "train"]

log = logging.getLogger("deeplab_gui")


def count_labelled(statuses: dict[str, Any], heldout_fraction: float) -> tuple[int, int]:
    """(images a run learns from, of which held out): edited/reviewed statuses, the trainer's split rule."""
    from engine import Status
    from trainer.dataset import Sample, split_heldout
    ids = [i for i, st in statuses.items() if st in (Status.EDITED, Status.REVIEWED)]
    # split_heldout only counts and ranks ids; the paths are never opened here.
    _train, held = split_heldout([Sample(i, None, None) for i in ids], heldout_fraction)  # type: ignore[arg-type]
    return len(ids), len(held)


def phase_status(ev: Any, measured: bool) -> str | None:
    """The status line for one trainer event, following the run's phase; None keeps the line as it is.

    ``measured``: whether the run holds images out to measure mIoU.  Without them the trainer still
    announces its measurements (and skips them at once): the line then says nothing is measured.
    """
    if ev.phase == "train":
        return f"training: step {ev.step} of {ev.total}"
    if ev.phase == "validate":
        if not measured:
            before = ev.loss is None and ev.step == 0
            return "no images held out: mIoU is not measured; starting to train" if before else None
        if ev.loss is not None:  # a mid-run measurement: training goes on after it
            return f"training: step {ev.step} of {ev.total}, {ev.message}"
        return ev.message or None
    return ev.message or None


def train(run, *, emit: Callable[[Any], None], cancel: Callable[[], bool]) -> tuple[Any, str | None]:
    """Iterate ``run`` (a trainer.FineTune) on a worker thread, handing each event to ``emit``; returns
    (result, new model id).

    ``cancel`` is the task handle's flag (set when the app quits): it stops the run the same way the
    dialog's Cancel does.  The result is always returned, so a run that finished just as Cancel was
    pressed is still reported (its version was already written).
    """
    import engine
    for ev in run:
        emit(ev)
        if cancel():
            run.cancel()
    res = run.result
    model_id = engine.checkpoint_id(res.checkpoint) if res is not None and res.checkpoint else None
    return res, model_id


def make_current(store, name: str) -> None:
    from engine import Versions
    Versions.of(store).set_current(name)


class TrainingState(QObject):
    """A session's fine-tune run.  ``start(recipe)`` returns the TaskHandle (``task`` while it runs);
    ``result`` then holds the trainer's result (None after an error or before the first run).

    ``prelabel``: pre-labels the images nobody edited (unlabelled and pre-labelled) with the new model
    (the pre-label-all path); None means no such offer.  ``ask(text) -> bool`` asks the person whether
    to make a version current anyway; ``keep_default`` is the answer a dialog should preselect (yes
    when no model was loaded before the run: anything beats nothing), and without a dialog to ask it
    is the answer.
    """

    started = Signal(int)            # a run began: its planned iterations
    event = Signal(object)           # each trainer.Progress of the run, in order
    status_changed = Signal(str)     # one line on the run: its phase as it goes, cancelling, its outcome
    running_changed = Signal(bool)
    run_finished = Signal(str)       # "done", "cancelled" or "error"
    offer_changed = Signal(int)      # images a re-pre-label would cover (0: no offer); see offer_parts

    def __init__(self, session: Any, *, prelabel: Callable[[], Any] | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.prelabel = prelabel
        self.ask: Callable[[str], bool] = lambda _text: self.keep_default
        self.keep_default = False
        self.had_model = True
        self.measured = False
        self.run = None
        self.task: TaskHandle | None = None
        self.result = None
        self.events = 0
        self.status = ""
        self.offer = 0
        self.offer_parts = (0, 0)  # (unlabelled, pre-labelled) images the offer covers

    @property
    def running(self) -> bool:
        return self.task is not None

    def _set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    def _set_offer(self, n: int) -> None:
        self.offer = n
        self.offer_changed.emit(n)

    def counts(self, heldout_fraction: float) -> tuple[int, int]:
        """(images a run would learn from, of which held out to measure mIoU)."""
        s = self.session
        return count_labelled(s.statuses(), heldout_fraction) if s.store is not None else (0, 0)

    def untouched(self) -> int:
        """Images whose mask no person edited or reviewed (unlabelled or pre-labelled)."""
        return sum(self.untouched_parts())

    def untouched_parts(self) -> tuple[int, int]:
        """(unlabelled, pre-labelled) images nobody edited or reviewed: what a re-pre-label covers."""
        from engine import Status
        statuses = list(self.session.statuses().values())
        return statuses.count(Status.UNLABELED), statuses.count(Status.PRELABELED)

    # ------------------------------------------------------------------ running
    def start(self, recipe, *, new_arch: str | None = None) -> TaskHandle | None:
        """Start a run with ``recipe`` (a :class:`trainer.Recipe`); with no model loaded it starts a new
        ``new_arch`` model with the folder's classes.  None when it cannot start."""
        s = self.session
        if self.task is not None or s.store is None:
            return None
        from functools import partial

        from trainer.loop import FineTune
        from trainer.start import NEW_MODEL_ARCHS, new_model
        s.save_current()  # the mask being drawn counts too
        self.had_model, self.keep_default = s.model is not None, False
        self.measured = self.counts(recipe.heldout_fraction)[1] > 0
        # No model: the run builds the folder's first one on the worker thread.
        model = s.model if s.model is not None else partial(
            new_model, new_arch or NEW_MODEL_ARCHS[0], s.store.class_names, s.store.class_colors)
        # parent=None: the trainer names the lineage from the model's own metadata (file, catalog id, version).
        self.run = FineTune(s.store, model, recipe, confirm=False)
        self.result, self.events = None, 0
        self.offer_parts = (0, 0)
        self._set_offer(0)
        self.started.emit(recipe.iterations)
        self._set_status("starting…")
        self.task = s.run_task(train, self.run, on_yielded=self._on_event, on_result=self._on_result,
                               on_error=self._on_error, task_name="fine-tune")
        self.task.finished.connect(self._on_task_finished)
        self.running_changed.emit(True)
        return self.task

    def cancel(self) -> None:
        """Stop the run at its next step; nothing is written and the current model stays."""
        if self.run is not None and self.task is not None:
            self.run.cancel()
            self._set_status("cancelling…")

    def _on_event(self, ev) -> None:
        self.events += 1
        text = phase_status(ev, self.measured)
        if text is not None:  # first, so the event's listeners see the line that goes with it
            self._set_status(text)
        self.event.emit(ev)

    def _on_error(self, text: str) -> None:
        self._set_status(text)
        self.run_finished.emit("error")

    def _on_task_finished(self) -> None:
        self.task = None
        self.running_changed.emit(False)

    def _on_result(self, value: tuple) -> None:
        res, model_id = value
        self.result = res
        if res is None or res.status != "done":
            self._set_status("Cancelled: the current model and its versions are unchanged.")
            self.run_finished.emit("cancelled")
            return

        def f(v):
            return "not measured" if v is None else f"{v:.3f}"
        text = f"Held-out mIoU {f(res.miou_before)} → {f(res.miou_after)} after {res.steps} steps ({res.stop_reason})."
        if res.promoted:
            self._swap(res, model_id)
            self._set_status(f"{text} {res.version.name} is now the current model.")
        else:
            dropped = res.version is not None and res.version.improved is False
            why = "Held-out mIoU dropped." if dropped else "There were no held-out images to measure it."
            name = res.version.name if res.version is not None else "the new version"
            # With no model before the run, declining would leave the person with nothing: keep it by default.
            self.keep_default = not self.had_model
            question = (f"No model was loaded before this run. Use {name} now?" if not self.had_model
                        else f"Make {name} the current model anyway?")
            if res.version is not None and self.ask(f"{text}\n{why} {question}"):
                s = self.session
                s.run_task(make_current, s.store, res.version.name,
                           on_error=lambda t: s.message.emit("error", t), task_name="make version current")
                self._swap(res, model_id)
                self._set_status(f"{text} {res.version.name} is now the current model.")
            elif self.had_model:
                self._set_status(f"{text} Kept the current model; {name} stays in the versions list.")
            else:
                self._set_status(f"{text} Not used; {name} stays in the versions list.")
        self.run_finished.emit("done")

    def _swap(self, res, model_id: str | None) -> None:
        """Use the trained model at once (no restart); offer to re-pre-label the untouched images."""
        self.session.set_model(res.model, model_id or f"version:{res.version.name}", name=res.version.name)
        self.session.message.emit("info", f"now using {res.version.name}")
        self.offer_parts = self.untouched_parts()
        n = sum(self.offer_parts)
        if self.prelabel is not None and n:
            self._set_offer(n)

    def reprelabel(self):
        """Take the re-pre-label offer: start the pre-label path with the new model (returns what it
        returns; None without an offer to take)."""
        if self.prelabel is None:
            return None
        self._set_offer(0)
        return self.prelabel()
