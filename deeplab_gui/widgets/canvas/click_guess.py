"""Guessed clicks for the click-model tool: where the pointer rests on the image, a positive click
there is predicted before it is made, so a press on that pixel shows its candidates at once.

On a CPU a click's prediction takes tens of milliseconds, and a person rests the pointer on the spot
for about that long before pressing. :class:`GuessingClicks` (mixed into
:class:`~.click_tool.ClickTool`) starts the prediction when the pointer has rested :data:`REST_MS`
on one image pixel: in the click model's lane, below real clicks, on a copy of the tool's session
(:meth:`~deeplab_gui.editing.click.ClickSession.fork`), showing nothing. A press on that pixel
adopts it: its session copy replaces the tool's and its candidates show; if it is still running the
press claims it and it shows as it comes in. Anything that changes what the click would start from
(another prompt, Tab, the class, the probabilities, the model) makes the press predict afresh, and
a claimed guess that fails or went stale becomes a real prompt, so a click is never lost. A guess
dropped before it ran is cancelled; at most one runs at a time, and a new one starts no sooner
than :data:`GUESS_GAP_MS`, or :data:`GUESS_SHARE` times the last guess's own time (at most
:data:`GUESS_WAIT_MAX_MS`: one guess slowed by other work must not stop guessing for long), after the
last (a click on a 12-megapixel photo costs several times one on a small image), so a pointer
wandering over the image takes at most about a third of the click lane's time.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QPointF, QTimer

from ...editing.click import ClickSession, RegionClasses
from ...state.click_models import CLICK_LANE, GUESS_PRIORITY

__all__ = ["GUESS_GAP_MS", "GUESS_SHARE", "GUESS_WAIT_MAX_MS", "REST_MS", "GuessingClicks"]

# The pointer resting this long on one image pixel starts a guessed click there. Shorter wastes more
# predictions on a pointer that is only slowing down; a person who clicks usually rests longer.
REST_MS = 40
GUESS_GAP_MS = 150   # from one guess's start to the next's, at least
GUESS_SHARE = 3      # ... and at least this many times the last guess took
GUESS_WAIT_MAX_MS = 1000   # ... but never longer than this (one slow guess must not stop guessing)


@dataclass
class _Guess:
    """A positive click at (x, y) predicted before it was made. ``key``: what it was made from
    (:meth:`GuessingClicks._key`); ``probs``: the probabilities its classes came from; ``result``
    (session, candidates, classes, index) once in; ``claimed``: the press there came first, so the
    result is shown as it arrives; ``by_press``: claimed by the press still held."""
    x: float
    y: float
    key: tuple
    predictor: Any
    probs: Any
    handle: Any = None
    result: tuple | None = None
    claimed: bool = False
    by_press: bool = False
    ms: float = 0.0          # how long it took on the lane

    def at(self, x: float, y: float) -> bool:
        return (math.floor(self.x), math.floor(self.y)) == (math.floor(x), math.floor(y))


class GuessingClicks:
    """The guessing half of the click tool; the tool provides ``target``, ``session``, ``queue``,
    ``index``, ``cands``, ``classes``, ``_gen``, ``_round``, ``_polished``, ``_prompts``, ``_waiting``,
    ``_press``, ``_box_end``, ``show()``, ``prompt()``, ``_on_image()``, ``_note_click()``, ``_settle()`` and
    ``_stop_polish()``."""

    def _init_guessing(self) -> None:
        self.guess_clicks = True                 # predict where the pointer rests (see the module)
        self._guess: _Guess | None = None
        self._rest_xy: tuple[float, float] | None = None
        self._last_guess = -math.inf             # monotonic time the last guess started
        self._guess_ms = 0.0                     # how long the last guess took on the lane
        self._rest = QTimer()
        self._rest.setSingleShot(True)
        self._rest.setInterval(REST_MS)
        self._rest.timeout.connect(self._rested)

    def _drop_guess(self) -> _Guess | None:
        """Forget the guess (cancelled if it has not run yet); returns it."""
        guess, self._guess = self._guess, None
        if guess is not None and guess.handle is not None:
            guess.handle.cancel()
        return guess

    def _take_claimed(self) -> list[tuple]:
        """A claimed guess not in yet, as the real prompt it stands for (dropped as a guess)."""
        if self._guess is None or not self._guess.claimed:
            return []
        guess = self._drop_guess()
        return [("point", guess.x, guess.y, True)]

    def _key(self) -> tuple:
        """What a click's prediction starts from: the prompts' round, the candidate on screen (its
        logits go with the next prompt) and the class it would get."""
        return self._gen, self._round, self.index, self.target.current_label

    def _current_probs(self) -> Any:
        src = self.target.snap_input()
        return src.probs if src is not None else None

    def _starts_alike(self, guess: _Guess, predictor: Any) -> bool:
        """Whether ``guess`` started from what a click would start from now (prompts, shown
        candidate, class, probabilities, model)."""
        return guess.key == self._key() and guess.predictor is predictor and guess.probs is self._current_probs()

    def _guess_fits(self, guess: _Guess, predictor: Any) -> bool:
        """Whether ``guess`` is what a click on its pixel would predict now."""
        return (self._starts_alike(guess, predictor)
                and not self.queue.busy and not self._prompts and not self._waiting)

    def _press_guessed(self, x: float, y: float) -> bool:
        """A positive press on the image at (x, y): True when a guess there answers it (adopted, or
        claimed until it is in). A claimed guess of an earlier press stays, for :meth:`prompt`."""
        self._rest.stop()
        guess = self._guess
        if guess is None or guess.claimed:
            return False
        predictor = self.target.click_predictor()
        if not (guess.at(x, y) and self._guess_fits(guess, predictor)):
            self._drop_guess()
            return False
        self._note_click()
        if guess.result is not None:
            self._adopt(guess)
        else:
            guess.claimed = guess.by_press = True
        return True

    def _hover(self, pos: QPointF) -> None:
        if not (self.guess_clicks and self._on_image(pos)):
            self.leave()
            return
        old, self._rest_xy = self._rest_xy, (pos.x(), pos.y())
        if old is None or (math.floor(old[0]), math.floor(old[1])) != (math.floor(pos.x()), math.floor(pos.y())):
            self._rest.start(REST_MS)   # restarted on every new pixel: fires once the pointer rests on one

    def _rearm(self) -> None:
        """What a click would start from changed (new candidates, Tab): guess again where the pointer is."""
        if self._rest_xy is not None and self.guess_clicks and not self._rest.isActive():
            self._rest.start(REST_MS)

    def _rested(self) -> None:
        """The pointer rests at ``_rest_xy``: guess a positive click there, unless a prompt is
        running or waiting (it changes what the guess starts from), a guess runs (the next starts
        when it is in), or the last one started under :data:`GUESS_GAP_MS` ago (then later)."""
        xy, t = self._rest_xy, self.target
        if xy is None or t is None or t.document is None or self._press is not None or self._box_end is not None:
            return
        if self.queue.busy or self._prompts or self._waiting:
            return
        g = self._guess
        if g is not None and (g.result is None or g.claimed):
            return
        if t.click_status():
            return
        predictor = t.click_predictor()
        if predictor is None:
            return
        if g is not None and g.at(*xy) and self._guess_fits(g, predictor):
            return   # the one in hand is for this pixel
        spacing = max(GUESS_GAP_MS, min(GUESS_SHARE * self._guess_ms, GUESS_WAIT_MAX_MS))
        wait = spacing - (time.monotonic() - self._last_guess) * 1000
        if wait > 0:
            self._rest.start(int(wait) + 1)
            return
        doc = t.document
        if self.session is None or self.session.predictor is not predictor or self.session.shape != doc.shape:
            self.session = ClickSession(predictor, doc.shape)
        base, shown, default, probs = self.session, self.index, t.current_label, self._current_probs()
        self._drop_guess()
        guess = self._guess = _Guess(xy[0], xy[1], self._key(), predictor, probs)
        self._last_guess = time.monotonic()

        def job():
            start = time.perf_counter()
            session = base.fork()
            session.select(shown)
            cands = session.add_point(xy[0], xy[1], positive=True)
            # The shown one's class; the others when settling (see ClickTool._settle).
            classes = RegionClasses(probs, cands, default, shown=session.index)
            guess.ms = (time.perf_counter() - start) * 1000
            return session, cands, classes, session.index

        def failed(_text: str) -> None:   # silent, unless pressed: then the click runs (and reports) for real
            if self._guess is guess:
                self._guess = None
                if guess.claimed:
                    self.prompt(("point", guess.x, guess.y, True))

        # Quiet: a guess is not work the status bar shows.
        guess.handle = t.run_task(job, on_result=lambda result: self._guessed(guess, result), on_error=failed,
                                  task_name="Guessed click", lane=CLICK_LANE, priority=GUESS_PRIORITY, quiet=True)

    def _guessed(self, guess: _Guess, result: tuple) -> None:
        self._guess_ms = guess.ms
        if self._guess is not guess:
            return   # dropped: a press elsewhere, another prompt, another image
        guess.handle = None
        if not guess.claimed:
            guess.result = result
            if self._rest_xy is not None and not guess.at(*self._rest_xy):
                self._rearm()   # the pointer came to rest elsewhere while this one ran
            return
        predictor = self.target.click_predictor() if self.target is not None else None
        self._guess = None
        if self._starts_alike(guess, predictor):
            guess.result = result
            self._adopt(guess)
        else:   # Tab, another class, new probabilities since the press: it runs for real
            self.prompt(("point", guess.x, guess.y, True))

    def _adopt(self, guess: _Guess) -> None:
        """The press came where the guess was made: its session and candidates become the tool's."""
        session, cands, classes, index = guess.result
        self._guess = None
        self.session = session
        self.cands, self.classes, self.index = list(cands), classes, index
        self._round += 1
        self._polished = {}
        self._stop_polish()   # the candidates it polished are replaced
        self.show()
        self._settle(session, classes)

    def leave(self) -> None:
        self._rest.stop()
        self._rest_xy = None
