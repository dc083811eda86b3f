"""How much work each image took a person: active seconds, edit actions by tool, acceptance.

The store keeps one row per image in its database's ``effort`` table (see
:data:`engine.store.format.EFFORT_TABLE`); the app adds to it as the person works
(:meth:`EffortMethods.add_effort`), so the counts add up across sessions.  An image is *done* when
it was accepted (the first acceptance counts: that is when the person vouched for it), or, never
accepted, when it was edited (the last edit counts).  ``version`` is the fine-tuned model version
current when the image was done (None: the model the folder started with), so work can be compared
before and after a fine-tune (:func:`segments`, :func:`version_marks`).

A read-only store records nothing and reads what is there; a database from before the table
existed reads as no effort at all.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .format import StoreError, check_id, write_error

__all__ = ["Effort", "EffortMethods", "Segment", "done_efforts", "segments", "version_marks", "efforts_csv",
           "TOOL_ORDER"]

# Column order of the tools in tables and CSV files; tools not listed here follow, by name.
TOOL_ORDER = ("brush", "eraser", "polygon", "fill", "snap", "apply_crf", "labels", "undo", "redo")
_COLUMNS = "id, seconds, actions, accepted, version, edited, first, updated"


@dataclass(frozen=True)
class Effort:
    """The recorded work on one image; times are wall-clock seconds (``time.time()``)."""

    image_id: str
    seconds: float = 0.0
    actions: Mapping[str, int] = field(default_factory=dict)
    accepted_at: float | None = None
    version: str | None = None
    edited_at: float | None = None

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None

    @property
    def total_actions(self) -> int:
        return sum(self.actions.values())

    @property
    def done_at(self) -> float | None:
        """When the image was done: first accepted, else last edited; None when neither."""
        return self.accepted_at if self.accepted_at is not None else self.edited_at

    @classmethod
    def from_row(cls, row: Sequence) -> Effort:
        image_id, seconds, actions, accepted, version, edited = row[:6]
        return cls(str(image_id), float(seconds or 0.0), _parse_actions(actions),
                   None if accepted is None else float(accepted), version,
                   None if edited is None else float(edited))


def _parse_actions(text) -> dict[str, int]:
    """The ``actions`` column; anything that is not a JSON object of counts reads as no actions."""
    try:
        data = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}


def _check_counts(seconds: float, actions: Mapping[str, int] | None) -> tuple[float, dict[str, int]]:
    s = float(seconds)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    out: dict[str, int] = {}
    for tool, n in (actions or {}).items():
        if not isinstance(tool, str) or not tool or isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"actions must map tool names to counts >= 0, got {tool!r}: {n!r}")
        if n:
            out[tool] = int(n)
    return s, out


class EffortMethods:
    """The effort half of :class:`~engine.store.AnnotationStore` (a mixin, like its mask methods).

    It relies on the store's ``_db``, ``_mutex``, ``read_only`` and ``_writable()``.
    """

    def effort(self, image_id: str) -> Effort:
        """What was recorded for ``image_id`` (all zero when nothing was)."""
        check_id(image_id)
        with self._mutex:
            rows = self._effort_rows("WHERE id=?", (image_id,))
        return Effort.from_row(rows[0]) if rows else Effort(image_id)

    def efforts(self) -> list[Effort]:
        """Every image with anything recorded, in one read (the order of the table)."""
        with self._mutex:
            return [Effort.from_row(r) for r in self._effort_rows("", ())]

    def _effort_rows(self, where: str, args: tuple) -> list:
        if self._db is None:
            return []
        try:
            return self._db.execute(f"SELECT {_COLUMNS} FROM effort {where}", args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a read-only store written before the table existed
                return []
            raise StoreError(f"cannot read the effort records: {exc}") from None

    def add_effort(self, image_id: str, *, seconds: float = 0.0, actions: Mapping[str, int] | None = None,
                   accepted: bool = False, version: str | None = None, now: float | None = None) -> bool:
        """Add ``seconds`` of work and ``actions`` ({tool: count}) to ``image_id``'s record.

        ``accepted``: the person accepted the image now; the first acceptance is kept, with
        ``version`` (the model version current then).  Actions on an image never accepted also
        record ``version``, as the model the image was being done with.  Returns False, writing
        nothing, for a read-only store; raises :class:`StoreError` (a write error, the store
        closed) or ValueError (negative or non-finite counts).
        """
        check_id(image_id)
        seconds, actions = _check_counts(seconds, actions)
        if self.read_only:
            return False
        if not seconds and not actions and not accepted:
            return True
        now = time.time() if now is None else float(now)
        with self._mutex:
            db = self._writable()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    rows = db.execute(f"SELECT {_COLUMNS} FROM effort WHERE id=?", (image_id,)).fetchall()
                    old = Effort.from_row(rows[0]) if rows else Effort(image_id)
                    first = rows[0][6] if rows else now
                    merged = dict(old.actions)
                    for tool, n in actions.items():
                        merged[tool] = merged.get(tool, 0) + n
                    accepted_at, ver, edited = old.accepted_at, old.version, old.edited_at
                    if accepted and accepted_at is None:
                        accepted_at, ver = now, version
                    if actions:
                        edited = now
                        if accepted_at is None:
                            ver = version
                    db.execute(f"INSERT OR REPLACE INTO effort({_COLUMNS}) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                               (image_id, old.seconds + seconds, json.dumps(merged, sort_keys=True),
                                accepted_at, ver, edited, first, now))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise write_error(OSError(errno.ENOSPC if "full" in str(exc).lower() else errno.EIO, str(exc)),
                                  f"the effort record of {image_id}") from exc
        return True


# ---------------------------------------------------------------------------- reading the records
def done_efforts(efforts: Iterable[Effort]) -> list[Effort]:
    """The done images (accepted, or edited and never accepted), in the order they were done."""
    return sorted((e for e in efforts if e.done_at is not None), key=lambda e: (e.done_at, e.image_id))


@dataclass(frozen=True)
class Segment:
    """A run of done images (``start``..``stop``-1 in done order) done under one model ``version``."""

    version: str | None
    start: int
    stop: int
    mean_seconds: float
    mean_actions: float

    @property
    def count(self) -> int:
        return self.stop - self.start


def segments(done: Sequence[Effort]) -> list[Segment]:
    """Split the done images (:func:`done_efforts`' order) where the recorded model version changes,
    with each run's mean seconds and actions per image."""
    out: list[Segment] = []
    start = 0
    for i in range(1, len(done) + 1):
        if i == len(done) or done[i].version != done[start].version:
            run = done[start:i]
            out.append(Segment(done[start].version, start, i, sum(e.seconds for e in run) / len(run),
                               sum(e.total_actions for e in run) / len(run)))
            start = i
    return out


def version_marks(done: Sequence[Effort], versions: Iterable[tuple[str, float]]) -> list[tuple[int, str]]:
    """``(position, name)`` for each fine-tuned version: the index in ``done`` of the first image done
    under it, or, for a version no done image names, the number of images done before it was created.

    ``versions``: ``(name, created)`` pairs (e.g. from :class:`~engine.store.Versions`).
    """
    first: dict[str, int] = {}
    for i, e in enumerate(done):
        if e.version is not None:
            first.setdefault(e.version, i)
    marks = []
    for name, created in versions:
        pos = first.get(name)
        if pos is None:
            pos = sum(1 for e in done if e.done_at is not None and e.done_at < created)
        marks.append((pos, name))
    return sorted(marks)


def _tools(efforts: Iterable[Effort]) -> list[str]:
    seen = {t for e in efforts for t in e.actions}
    return [t for t in TOOL_ORDER if t in seen] + sorted(seen - set(TOOL_ORDER))


def efforts_csv(efforts: Sequence[Effort]) -> bytes:
    """CSV (UTF-8) of one row per image: the done ones in the order they were done, then the rest by id.

    Columns: image_id, seconds, actions, one ``actions_<tool>`` column per tool used, accepted (yes/no),
    done_at (local time, ISO 8601; empty when not done), model_version (empty: the starting model).
    """
    done = done_efforts(efforts)
    rest = sorted((e for e in efforts if e.done_at is None), key=lambda e: e.image_id)
    tools = _tools(efforts)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "seconds", "actions", *[f"actions_{t}" for t in tools], "accepted", "done_at",
                "model_version"])
    for e in [*done, *rest]:
        when = "" if e.done_at is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.done_at))
        w.writerow([e.image_id, f"{e.seconds:.1f}", e.total_actions, *[e.actions.get(t, 0) for t in tools],
                    "yes" if e.accepted else "no", when, e.version or ""])
    return buf.getvalue().encode("utf-8")
