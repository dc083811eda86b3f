"""The effort meter: how long a person actively works on the current image, and how many edits it takes.

Active time: an instant while an image is current counts when some input (a mouse press, move or
wheel, a key press in the main window; the window's event filter calls :meth:`EffortState.note_input`)
happened within the :data:`IDLE_AFTER_S` seconds before it.  So each input credits up to that much,
cut short by the next input, by switching images, or by letting go of the folder.  Actions: every
history step a person makes on the current image's document counts one under its tool (a brush
stroke, a fill, ...), and so does each undo and redo; the model's pre-label steps are not a person's.

The counts not yet recorded are added to the store's effort table (:mod:`engine.store.effort`) on a
writer thread of their own (a :class:`~deeplab_gui.state.saving.MaskWriter`, apart from the masks'
so that a stalled mask write never holds them up, nor they a mask), so the disk never holds up the
UI: at every image switch and every save or autosave (the saving code calls
:meth:`EffortState.flush`, and waits for them before the folder closes), and every
:data:`FLUSH_EVERY_S` seconds of work, so a crash loses at most that much.  A failed write is logged
and dropped: it never touches the person's masks.  A read-only folder records nothing (the meter
still shows this session's counts).
"""
from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from engine import one_line

from .saving import MaskWriter

__all__ = ["IDLE_AFTER_S", "FLUSH_EVERY_S", "EffortState", "EffortReport", "tool_of", "format_clock",
           "format_effort"]

log = logging.getLogger("deeplab_gui")

IDLE_AFTER_S = 30.0   # an input keeps the clock running this long
FLUSH_EVERY_S = 10.0  # while working, counts reach the store at least every this many active seconds
_TICK_MS = 1000       # how often the shown time moves on while the clock runs

# History step descriptions (editing/document.py, snap.py, click.py, superpixels.py, crf.py) -> the tool
# a person used (the names the simulated annotator's tool sets use).
_TOOLS = {"Paint": "brush", "Erase": "eraser", "Fill": "fill", "Polygon": "polygon", "CRF snap": "snap",
          "Apply CRF": "apply_crf", "Apply labels": "labels", "Superpixels": "superpixel",
          "CRF click": "crfclick", "Click region": "click"}
_MODEL_STEPS = {"pre-label"}  # steps the model makes: not a person's work


def tool_of(description: str) -> str | None:
    """The tool name an undo step described as ``description`` counts under; None for a model's step."""
    if description in _MODEL_STEPS:
        return None
    if description in _TOOLS:
        return _TOOLS[description]
    return re.sub(r"[^\w-]+", "_", description.strip().lower()).strip("_") or "edit"


def format_clock(seconds: float) -> str:
    """``1:42`` (minutes and seconds, whole seconds dropped), ``1:02:03`` from an hour on."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_effort(seconds: float, actions: int) -> str:
    """The status bar's words: ``⏱ 1:42 · 17 actions``."""
    return f"⏱ {format_clock(seconds)} · {actions} action{'' if actions == 1 else 's'}"


@dataclass
class EffortReport:
    """What the progress window shows: every effort record, and the fine-tuned versions as
    ``(name, created)`` oldest first; ``error`` says why the records could not be read."""

    efforts: list = field(default_factory=list)
    versions: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def _current_version(store: Any) -> str | None:
    from engine.store.versions import Versions
    try:
        current = Versions.of(store).current
    except (OSError, ValueError) as exc:
        log.warning("could not read the model versions of %s: %s", store.folder, one_line(exc))
        return None
    return current.name if current is not None else None


class EffortState(QObject):
    """The current image's active time and actions (see the module docstring).

    ``clock``: monotonic seconds (``time.monotonic``; tests pass their own to move time by hand).
    """

    changed = Signal()  # the current image's figures changed (time: at most once a second)

    def __init__(self, session: Any, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(session)
        self.s = session
        self.clock = clock
        self._image_id: str | None = None
        self._store: Any = None
        self._doc: Any = None
        self._last: float | None = None      # time of the newest input on this image
        self._credited: float | None = None  # time up to which the newest input's window is counted
        self._seconds = 0.0                  # credited, not yet handed to the store
        self._actions: Counter[str] = Counter()
        self._accepted = False
        # Per image, what the store held when the folder opened (read off the UI thread) and what was
        # handed to it since: what the meter adds this visit's counts to.
        self._recorded: dict[str, tuple[float, Counter[str]]] = {}
        self._handed: dict[str, tuple[float, Counter[str]]] = {}
        self.writer = MaskWriter(self)  # effort records and reads, in order, off the UI thread
        self._timer = QTimer(self)
        self._timer.setInterval(_TICK_MS)
        self._timer.timeout.connect(self._tick)
        session.current_changed.connect(self._on_current)
        session.folder_opened.connect(self._on_folder)

    # ------------------------------------------------------------------ what the meter shows
    @property
    def image_id(self) -> str | None:
        return self._image_id

    @property
    def running(self) -> bool:
        """Whether the clock runs now (an input came less than IDLE_AFTER_S ago)."""
        return self._last is not None and self.clock() - self._last < IDLE_AFTER_S

    @property
    def seconds(self) -> float:
        """Active seconds on the current image: recorded before, and this visit's up to now."""
        if self._image_id is None:
            return 0.0
        live = 0.0
        if self._last is not None:
            live = max(0.0, min(self.clock(), self._last + IDLE_AFTER_S) - self._credited)
        return self._total()[0] + self._seconds + live

    @property
    def actions_by_tool(self) -> dict[str, int]:
        """Actions on the current image per tool, recorded and not yet recorded together."""
        if self._image_id is None:
            return {}
        return dict(self._total()[1] + self._actions)

    @property
    def actions(self) -> int:
        return sum(self.actions_by_tool.values())

    def text(self) -> str:
        return format_effort(self.seconds, self.actions) if self._image_id is not None else ""

    def _total(self) -> tuple[float, Counter[str]]:
        zero = (0.0, Counter())
        (s0, a0), (s1, a1) = self._recorded.get(self._image_id, zero), self._handed.get(self._image_id, zero)
        return s0 + s1, a0 + a1

    # ------------------------------------------------------------------ what feeds it
    def note_input(self) -> None:
        """A person touched the mouse or the keyboard in the main window."""
        if self._image_id is None:
            return
        now = self.clock()
        self._credit(now)
        idle = self._last is None or now - self._last >= IDLE_AFTER_S
        self._last = self._credited = now
        if idle:
            self._timer.start()
            self.changed.emit()

    def note_idle(self) -> None:
        """The person turned away (the window lost focus, a dialog of its own took it): the clock stops
        now instead of running out its 30 s."""
        if self._last is None:
            return
        now = self.clock()
        self._credit(now)
        self._last = self._credited = None
        self._timer.stop()
        self.changed.emit()

    def note_accepted(self, image_id: str) -> None:
        """The person accepted ``image_id`` (marked it reviewed): record that now, with the model
        version current now."""
        if image_id == self._image_id:
            self._accepted = True
            self.flush()
        else:
            self._submit(self.s.store, image_id, 0.0, {}, True)

    def _on_step(self, kind: str, description: str) -> None:
        tool = kind if kind in ("undo", "redo") else tool_of(description)
        if tool is None:
            return
        self._actions[tool] += 1
        self.changed.emit()

    def _credit(self, now: float) -> None:
        if self._last is None:
            return
        end = min(now, self._last + IDLE_AFTER_S)
        if end > self._credited:
            self._seconds += end - self._credited
            self._credited = end

    def _tick(self) -> None:
        now = self.clock()
        self._credit(now)
        if self._seconds >= FLUSH_EVERY_S:  # the actions made meanwhile go with it
            self.flush()
        if self._last is None or now - self._last >= IDLE_AFTER_S:
            self._timer.stop()
        self.changed.emit()

    def _on_current(self, image_id: str) -> None:
        self.flush()  # the switch ends the old image's clock
        if self._doc is not None:
            self._doc.remove_step_listener(self._on_step)
        doc = self.s.document
        self._doc = doc if image_id else None
        self._image_id = image_id if (image_id and doc is not None) else None
        self._store = self.s.store
        self._last = self._credited = None
        self._timer.stop()
        if self._doc is not None:
            self._doc.add_step_listener(self._on_step)
        self.changed.emit()

    def _on_folder(self) -> None:
        """Another store: read what it holds on the writer's thread, ahead of anything this session
        hands it, so that the two add up."""
        self._recorded, self._handed = {}, {}
        store, recorded = self.s.store, {}

        def read() -> None:
            recorded.update({e.image_id: (e.seconds, Counter(e.actions)) for e in store.efforts()})

        def done(error: Exception | None) -> None:
            if error is not None:
                log.warning("could not read the effort records of %s: %s", store.folder, one_line(error))
            elif store is self.s.store:
                self._recorded = recorded
                self.changed.emit()
        if store is not None:
            self.writer.submit(read, done)

    # ------------------------------------------------------------------ recording
    def flush(self) -> None:
        """Hand what was counted on the current image so far to the store's writer (nothing to do when
        nothing was counted).  The clock keeps running: only the time up to now is handed over."""
        now = self.clock()
        self._credit(now)
        if self._image_id is None or not (self._seconds or self._actions or self._accepted):
            return
        image_id, store = self._image_id, self._store
        seconds, actions, accepted = self._seconds, dict(self._actions), self._accepted
        handed = self._handed.get(image_id, (0.0, Counter()))
        self._handed[image_id] = (handed[0] + seconds, handed[1] + Counter(actions))
        self._seconds, self._actions, self._accepted = 0.0, Counter(), False
        if store is None or store is not self.s.store or store.read_only:
            return  # the folder went away, or cannot be written: nothing is recorded
        self._submit(store, image_id, seconds, actions, accepted)

    def _submit(self, store: Any, image_id: str, seconds: float, actions: dict[str, int], accepted: bool) -> None:
        if store is None or store.read_only:
            return

        def write() -> None:
            version = _current_version(store) if (accepted or actions) else None
            store.add_effort(image_id, seconds=seconds, actions=actions, accepted=accepted, version=version)

        def done(error: Exception | None) -> None:
            if error is not None:
                log.warning("could not record the work on %s (the masks are not affected): %s", image_id,
                            one_line(error))
        self.writer.submit(write, done)

    def wait(self) -> None:
        """Wait for every record handed over so far to land (before the folder closes)."""
        self.writer.flush()

    def close(self) -> None:
        """Hand over what is counted, wait for it, and stop the writer thread (the session is ending)."""
        self.flush()
        self._timer.stop()
        self.writer.close()

    def load_report(self, on_ready: Callable[[EffortReport], None]) -> bool:
        """Read every effort record and the model versions off the UI thread (after the counts handed
        over so far have landed) and call ``on_ready(report)`` on the UI thread; False when no folder
        is open."""
        store = self.s.store
        if store is None:
            return False
        self.flush()
        report = EffortReport()

        def read() -> None:
            from dataclasses import replace

            from engine import PROTECTED
            from engine.store.versions import Versions
            statuses = store.statuses()
            # Edited counts as done only while the mask is still a person's (an edit undone to the
            # model's pre-label, or to nothing, leaves the image as it was: not done).
            report.efforts = [e if e.accepted or e.edited_at is None or statuses.get(e.image_id) in PROTECTED
                              else replace(e, edited_at=None) for e in store.efforts()]
            report.versions = [(v.name, float(v.created)) for v in Versions.of(store).list()]

        def done(error: Exception | None) -> None:
            if error is not None:
                report.error = one_line(error) or "the records could not be read"
            on_ready(report)
        self.writer.submit(read, done)
        return True
