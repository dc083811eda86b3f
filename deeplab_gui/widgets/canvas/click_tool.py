"""The click-model tool: clicks and boxes become a proposed region from a SAM-family model.

A left click adds a positive point, a right click (or Shift+click) a negative one, a drag draws a
box; each prompt re-predicts in a worker (one in flight, the newest waiting one replacing older
ones) through a :class:`~deeplab_gui.editing.click.ClickSession` on the target's click predictor.
A left press predicts at once, before the button comes up (a click is held down for about a tenth
of a second, longer than the decoder takes on a GPU and much of what it takes on a CPU, so the
preview is often there on release); if the press turns into a drag, that point is taken back and
the box replaces it.
Where the pointer rests on the image, the tool predicts a positive click there before it is made
(:mod:`.click_guess`), so a press on that pixel shows its candidates at once.
The best candidate is previewed with the class it would get: with "auto class" on and the
segmentation model's probabilities at hand, the class they favour inside the region, else the
current class.  With "edge polish" on and probabilities at hand, the CRF then moves the shown
candidate's border onto image edges in a worker and the preview is replaced by the polished region
(the unpolished one shows at once, so a click answers within the decoder's time).  Tab shows the
next candidate, Enter or Space accepts what is shown, exactly, as one undo step; Escape drops it;
another image or tool drops the prompts.  Without a click model a click only
says, in the status bar, how to get one.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, Qt, QTimer

from ...editing.click import (
    CLICK_DESCRIPTION,
    ClickSession,
    RegionClasses,
    accept_region,
    polish_edges,
)
from ...state.click_models import CLICK_LANE, CLICK_PRIORITY
from ...state.tasks import BACKGROUND_LANE, one_line_error
from .click_guess import GuessingClicks
from .region_tools import ACCEPT_KEYS, LatestQueue, class_look, show_mask
from .tool_base import Tool
from .toolview import RegionTarget

__all__ = ["ClickTool"]

BOX_COLOR = (255, 255, 0, 255)
WAITING = "the click model is still computing this image's embedding: the click will follow"
# From a preview shown to the making of the rest of its logits (see ClickTool._settle). A person's
# next click comes hundreds of milliseconds later; the paint needs the cores now. Measured in
# bench_gui: show -> painted 7.1-7.4 ms (p50) with the settle at once, 3.6-3.7 ms with it 40 ms later.
SETTLE_AFTER_MS = 40


class ClickTool(GuessingClicks, Tool):
    """See the module docstring.  ``auto_class`` and ``edge_polish`` are the tool bar's toggles."""

    name = "click"
    cursor = Qt.CursorShape.CrossCursor
    double_click_presses = True   # two quick clicks are two prompts
    target: RegionTarget | None

    def __init__(self) -> None:
        super().__init__()
        self.auto_class = True
        self.edge_polish = True
        self.session: ClickSession | None = None   # the worker's while a prompt runs
        # What the UI shows, copied from the session when a prediction comes back (so nothing here
        # reads the session while the worker changes it): the candidates, the shown one, and per
        # candidate the probabilities' class, if any.
        self.cands: list = []
        self.index = 0
        self.classes: RegionClasses | list[int | None] = []   # per candidate, weighed when first read
        self.queue = LatestQueue()           # prompts: one in flight, the newest waiting
        self.polish_queue = LatestQueue()    # edge polish of what is shown: never displaces a prompt
        self._polishing = None                  # the polish task running, if any
        self._full_ahead = None                 # the last task making a candidate at full size
        self._gen = 0                           # bumped when the prompts are dropped
        self._press: tuple[float, float, bool] | None = None
        self._box_end: tuple[float, float] | None = None
        self._sent = False                       # the pressed point went to the worker on press
        self._early = False                      # ... and may still be taken back for a box
        self._waiting: list[tuple] = []          # prompts held until the embedding is ready
        self._prompts: list[tuple] = []          # prompts not yet handed to the worker, in order
        self._polished: dict[int, tuple[int, np.ndarray]] = {}  # candidate index -> (label, polished mask)
        self._round = 0                          # bumped by every new set of candidates
        self._settle_timer = QTimer()            # see _settle
        self._settle_timer.setSingleShot(True)
        self._settle_timer.setInterval(SETTLE_AFTER_MS)
        self._settle_timer.timeout.connect(self._settle_now)
        self._to_settle: tuple[ClickSession, RegionClasses | None] | None = None
        self._init_guessing()

    # -------------------------------------------------------------- life cycle
    def activate(self, view, target) -> None:
        super().activate(view, target)
        hook = getattr(target, "on_embedding_ready", None)
        if hook is not None:
            hook(self._embedding_ready)

    def deactivate(self) -> None:
        hook = getattr(self.target, "on_embedding_ready", None)
        if hook is not None:
            hook(None)
        super().deactivate()

    def reset(self) -> None:
        self._settle_timer.stop()
        self._to_settle = None
        self._gen += 1
        self._round += 1
        self._polished = {}
        self.session, self.cands, self.index, self.classes = None, [], 0, []
        self._press = self._box_end = None
        self._sent = self._early = False
        self._waiting, self._prompts = [], []
        self._drop_guess()
        self.leave()
        self.queue.drop_pending()
        self._stop_polish()
        if self.view is not None:
            self.view.clear_region()
            self.view.clear_preview()

    def _embedding_ready(self, key: str) -> None:
        if self._waiting and self.target is not None and key == self.target.image_key:
            waiting, self._waiting = _without_retracted(self._waiting), []
            for prompt in waiting:
                self.prompt(prompt)

    # -------------------------------------------------------------- mouse
    def _usable(self) -> bool:
        status = self.target.click_status()
        if status:
            self.target.show_status(status)
            return False
        return True

    def press(self, pos: QPointF, modifiers: Any) -> None:
        if not self._usable():
            return
        negative = bool(modifiers & Qt.KeyboardModifier.ShiftModifier)
        self._press, self._box_end = (pos.x(), pos.y(), not negative), None
        # Predicted now, not on release, when on the image (a box may start in the margin around
        # it); a negative press cannot become a box, so it is final.
        self._sent = self._on_image(pos)
        self._early = self._sent and not negative
        if self._early and self._press_guessed(pos.x(), pos.y()):
            return
        if self._sent:
            self.prompt(("point", pos.x(), pos.y(), not negative))

    def right_press(self, pos: QPointF, modifiers: Any) -> None:
        if self._on_image(pos) and self._usable():
            self.prompt(("point", pos.x(), pos.y(), False))

    def _on_image(self, pos: QPointF) -> bool:
        doc = self.target.document
        h, w = doc.shape if doc is not None else (0, 0)
        return 0 <= pos.x() < w and 0 <= pos.y() < h

    def _drag_threshold(self) -> float:
        h, w = self.target.document.shape
        return max(4.0, 0.005 * max(h, w))   # image pixels: a shaky click stays a click

    def move(self, pos: QPointF, pressed: bool) -> None:
        p = self._press
        if not pressed and p is None:
            self._hover(pos)
            return
        if not pressed or p is None or not p[2]:
            return
        if self._box_end is None and math.hypot(pos.x() - p[0], pos.y() - p[1]) < self._drag_threshold():
            return
        if self._box_end is None and self._early:   # a drag after all: the pressed point goes again
            self._early = False
            if self._guess is not None and self._guess.by_press:
                self._drop_guess()   # guessed, not in yet: it never became a prompt
            else:
                self.prompt(("retract", p[0], p[1]))
            if self.view is not None:
                self.view.clear_region()
        self._box_end = (pos.x(), pos.y())
        x0, y0, (x1, y1) = p[0], p[1], self._box_end
        if self.view is not None:
            self.view.show_path([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], closed=True, color=BOX_COLOR)

    def release(self, pos: QPointF) -> None:
        p, self._press = self._press, None
        if self._guess is not None:
            self._guess.by_press = False
        self._sent = self._early = False
        if p is None:
            return
        if self._box_end is not None:
            self._box_end = None
            if self.view is not None:
                self.view.clear_preview()
            self.prompt(("box", p[0], p[1], pos.x(), pos.y()))
        # A press in the margin around the image that did not become a box: nothing to segment.

    # -------------------------------------------------------------- prediction
    def prompt(self, prompt: tuple):
        """Run one prompt, ``("point", x, y, positive)``, ``("box", x0, y0, x1, y1)`` or
        ``("retract", x, y)`` (take the point at x, y back, if it is the last). Prompts made while a
        prediction runs are kept, in order, and go to the worker together next."""
        t = self.target
        doc = t.document
        if doc is None:
            return
        # A click pressed on a guess not in yet goes first, for real; any other guess is dropped.
        prompts = self._take_claimed() + [prompt]
        self._drop_guess()
        predictor = t.click_predictor()
        if predictor is None:
            self._waiting += prompts
            t.show_status(WAITING)
            return
        self._prompts += prompts
        self._note_click()
        self._stop_polish()   # for the candidates these prompts replace
        self.queue.submit(lambda: self._run_prompts(predictor, doc))

    def _note_click(self) -> None:
        note = getattr(self.target, "note_click", None)
        if note is not None:
            note()

    def _run_prompts(self, predictor, doc):
        """Hand every prompt not yet run to the worker as one job (the queue's start function)."""
        t = self.target
        prompts, self._prompts = _without_retracted(self._prompts), []
        if not prompts or t is None or t.document is not doc:
            self.queue.done()   # an earlier start took them, or the image changed
            return None
        if self.session is None or self.session.predictor is not predictor or self.session.shape != doc.shape:
            self.session = ClickSession(predictor, doc.shape)
        session, gen, default, shown = self.session, self._gen, t.current_label, self.index
        src = t.snap_input()
        probs = src.probs if src is not None else None

        def job():
            session.select(shown)   # the candidate on screen feeds its logits to the next prompt
            for prompt in prompts:
                if prompt[0] == "box":
                    cands = session.set_box(*prompt[1:])
                elif prompt[0] == "retract":
                    cands = session.retract_point(prompt[1:])
                else:
                    cands = session.add_point(prompt[1], prompt[2], positive=prompt[3])
            # The shown candidate's class now, the others later (see _settle).
            return cands, RegionClasses(probs, cands, default, shown=session.index), session.index

        def done(result) -> None:
            newer = self.queue.pending is not None   # these candidates are about to be replaced
            self.queue.done()
            if gen != self._gen or t.document is not doc:
                return
            self.cands, self.classes = list(result[0]), result[1]
            self.index = result[2]   # 0 for new candidates; a retracted point's earlier choice
            self._round += 1
            self._polished = {}
            self.show(polish=not newer)
            if not newer:
                self._settle(session, result[1])

        def failed(text: str) -> None:
            if gen == self._gen and t.document is doc:
                # The job may have run some prompts (a retraction before a failed box): show what
                # the session now holds. Read before the queue starts the next job.
                self.cands, self.index = session.candidates, session.index
                self.classes = RegionClasses(probs, self.cands, default)
                self._round += 1
                self._polished = {}
            self.queue.done()
            if gen == self._gen:
                t.report_error(f"Click model failed: {text}")
                # What shows gets its class and its polish again (the prompt stopped the polish of it).
                self.show()

        # The click model's lane: its encoder and decoder always run on one thread (see
        # Worker.run_task); a click goes ahead of neighbours' embeddings waiting there.
        return t.run_task(job, on_result=done, on_error=failed, task_name="Click region",
                          lane=CLICK_LANE, priority=CLICK_PRIORITY)

    def _settle(self, session: ClickSession, classes: RegionClasses | None = None) -> None:
        """While the person looks at the candidates, have the rest of their logits made in the click
        lane (the next click's mask input; see ClickSession.settle), ahead of neighbours' embeddings,
        and the other candidates' classes weighed (``classes``). It starts SETTLE_AFTER_MS later,
        once the preview is painted: started at once, its two threads took the cores the paint
        needed. A click before then reads the logits itself; Tab weighs the class it shows."""
        self._to_settle = (session, classes)
        self._settle_timer.start()

    def _settle_now(self) -> None:
        t, pending, self._to_settle = self.target, self._to_settle, None
        if t is not None and pending is not None:
            session, classes = pending

            def settle() -> None:
                session.settle()
                if classes is not None:
                    classes.fill()
            t.run_task(settle, on_result=lambda _: None, on_error=lambda _: None,
                       task_name="Click region", lane=CLICK_LANE, priority=CLICK_PRIORITY, quiet=True)

    @property
    def current(self):
        """The candidate on screen (a :class:`~deeplab_gui.editing.click.Candidate`), or None."""
        return self.cands[self.index] if self.cands else None

    def label(self) -> int:
        """The class the shown candidate would get."""
        i = self.index
        auto = self.classes[i] if self.auto_class and i < len(self.classes) else None
        return self.target.current_label if auto is None else int(auto)

    def shown_mask(self, preview: bool = False) -> np.ndarray | None:
        """What Enter writes (H×W bool): the current candidate, polished when its polish (for the
        class it now gets) is in. ``preview``: what the preview shows, which on a large photo is
        the candidate at a reduced size until it is polished (see editing.click.Candidate)."""
        cand = self.current
        if cand is None:
            return None
        got = self._polished.get(self.index) if self.edge_polish else None
        if got is not None and got[0] == self.label():
            return got[1]
        return cand.preview if preview else cand.mask

    def show(self, polish: bool = True) -> None:
        """Preview the current candidate with its class (also after the toggles change), and start
        its edge polish when that applies and ``polish``, else (on a large photo) the making of its
        full-size mask, so Enter finds it made. A click where the pointer rests would now start
        from what is shown: it is guessed again."""
        self._rearm()
        try:   # (a candidate Tab shows first is made here, from the model's logits)
            mask = self.shown_mask(preview=True)
        except Exception as exc:  # noqa: BLE001 - the app keeps running; the tool says what failed
            target = self.target
            self.reset()   # the object's prompts and candidates go: the next click starts afresh
            if target is not None:
                target.report_error(f"Click model failed: {one_line_error(exc)}")
            return
        if self.view is None or self._box_end is not None:   # not while a box is being drawn
            return
        if mask is None or not show_mask(self.view, self.target, mask, self.label()):
            self.view.clear_region()
            return
        if not (polish and self._polish_shown() is not None):
            self._make_full_ahead()

    def _make_full_ahead(self) -> None:
        cand, t = self.current, self.target
        if cand is None or cand.ready or t is None:
            return
        # Work ahead that nobody waits on yet: on the background lane (one thread, low priority), so
        # it takes no cores from the next click's decoder (see Worker.run_task). One
        # for another candidate that has not started is dropped (Tab through a large photo's three).
        if self._full_ahead is not None and not self._full_ahead.done:
            self._full_ahead.cancel()
        self._full_ahead = t.run_task(lambda: cand.mask, on_result=lambda _: None, on_error=lambda _: None,
                                      task_name="Click region at full size", lane=BACKGROUND_LANE)

    def _polish_shown(self):
        """Polish the shown candidate's border in a worker (once per candidate and class); returns
        the task handle when one started. A new prompt (or Escape, Enter, another image) stops it:
        its answer would be for candidates no longer shown, and its CRF would slow the next click."""
        t, cand = self.target, self.current
        src = t.snap_input() if t is not None else None
        if not (self.edge_polish and cand is not None and src is not None and src.probs is not None):
            return None
        index, label, doc, rnd = self.index, self.label(), t.document, self._round
        if self._polished.get(index, (None,))[0] == label:
            return None

        def polish(cancel) -> np.ndarray | None:
            # (a large photo's candidate is made at full size here, not on the UI thread)
            return polish_edges(src.image, src.probs, cand.mask, label, src.params, src.num_classes, cancel=cancel)

        def done(polished: np.ndarray | None) -> None:
            if polished is None or rnd != self._round or t.document is not doc:
                return   # stopped, or other candidates (or none) by now
            self._polished[index] = (label, polished)
            if self.index == index:
                self.show()

        def failed(text: str) -> None:
            if rnd == self._round:
                t.report_error(f"Edge polish failed (the region stays as the model gave it): {text}")

        def start() -> None:
            # As the full-size candidate: the background lane (the next click comes first).
            h = t.run_task(polish, on_result=done, on_error=failed, task_name="Edge polish", lane=BACKGROUND_LANE)
            self._polishing = h
            # Finished comes after the result or error, and also when stopped before either.
            h.finished.connect(self.polish_queue.done)
            handle.append(h)

        handle: list = []
        self.polish_queue.submit(start)
        return handle[0] if handle else None

    def _stop_polish(self) -> None:
        """Stop the polish running (the queue starts the next one, if any, once it has stopped) and
        drop the one waiting."""
        self.polish_queue.drop_pending()
        running, self._polishing = self._polishing, None
        if running is not None and not running.done:
            running.cancel()

    # -------------------------------------------------------------- keys
    def key(self, key: int) -> bool:
        if not self.cands:
            return False
        if key == Qt.Key.Key_Tab:
            self.index = (self.index + 1) % len(self.cands)
            self.show()
            if not self.cands:   # the candidate could not be made (show reported it)
                return True
            self.target.show_status(f"candidate {self.index + 1} of {len(self.cands)} "
                                    f"(the model's own score {self.cands[self.index].score:.2f}); Enter accepts it")
            return True
        if key in ACCEPT_KEYS:
            self.accept()
            return True
        if key == Qt.Key.Key_Escape:
            self.reset()
            return True
        return False

    def accept(self) -> None:
        """Write what the preview shows, with its class, as one undo step."""
        doc, mask = self.target.document, self.shown_mask()
        if mask is None or doc is None:
            return
        label = self.label()
        self.reset()
        accept_region(doc, mask, label, CLICK_DESCRIPTION)
        self.target.show_status(f"{int(np.count_nonzero(mask))} pixels set to {class_look(self.target, label)[1]} "
                                "(Ctrl+Z undoes)")


def _without_retracted(prompts: list[tuple]) -> list[tuple]:
    """``prompts`` without each point that the "retract" right after it takes back (neither goes to
    the model); a "retract" of a point that already ran stays."""
    out: list[tuple] = []
    for prompt in prompts:
        if prompt[0] == "retract" and out and out[-1][:3] == ("point", *prompt[1:]):
            out.pop()
        else:
            out.append(prompt)
    return out
