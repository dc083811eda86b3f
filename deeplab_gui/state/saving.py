"""Saving masks for the Session: writes on one background thread, failures kept in memory.

A 12-megapixel mask takes 30-50 ms to encode and write (PNG, fsync, rename). Autosaves happen on every
image switch, a few seconds after the last edit (see session.py) and every 30 s, so on the UI thread
they would add that to each A/D press. Here the UI
thread only copies the mask (a few ms) and a single writer thread saves the copies in submission order,
so two saves of one image can never land out of order. Results come back to the UI thread, where a
document is marked saved only if nobody painted on it since its copy was taken. Explicit saves
(Ctrl+S, export, fine-tune, mark reviewed, closing the folder) wait for every queued write and report
the outcome, as before. A failed write keeps the document in memory, also across image switches, and
the next autosave retries it.

What is not on disk (a read-only folder's edits, failed writes, writes still queued) is one query,
:meth:`SessionSaves.not_on_disk`, so that closing the window or the folder can ask before losing it.
"""
from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal

from engine import one_line

__all__ = ["READ_ONLY_WHY", "MaskWriter", "SessionSaves", "read_only_why"]

READ_ONLY_WHY = "the folder is open read-only (another deeplab-gui has it open)"


def read_only_why(store: Any, locked: bool) -> str:
    """Why edits in ``store`` (read-only) stay in memory: another instance holds its lock (``locked``),
    or the store itself chose read-only (a read-only mount), which its ``notice`` explains."""
    if locked:
        return READ_ONLY_WHY
    notice = one_line(getattr(store, "notice", None) or "")
    return f"the folder is open read-only: {notice}" if notice else "the folder is open read-only"


class MaskWriter(QObject):
    """Runs write jobs on one thread, in order; their completions run on the thread that owns this
    object (the UI thread), either through a queued signal or inside :meth:`flush`, exactly once.

    Its own single thread rather than the task runner's pool: writes of one mask must land in the
    order they were made (an older autosave must never overtake a newer one), and closing must be able
    to wait for every queued write from the UI thread (:meth:`flush`)."""

    _ready = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mask-save")
        self._futures: list[Future] = []
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._ready.connect(self.drain, Qt.ConnectionType.QueuedConnection)

    @property
    def pending(self) -> int:
        """Writes queued or running."""
        self._futures = [f for f in self._futures if not f.done()]
        return len(self._futures)

    def submit(self, write: Callable[[], None], on_done: Callable[[Exception | None], None]) -> None:
        def job() -> None:
            try:
                write()
                error = None
            except Exception as exc:  # noqa: BLE001  (reported to on_done on the UI thread)
                error = exc
            self._done.put((on_done, error))
            self._ready.emit()
        self._futures.append(self._pool.submit(job))

    def drain(self) -> None:
        """Run the completions that have arrived (UI thread)."""
        while True:
            try:
                on_done, error = self._done.get_nowait()
            except queue.Empty:
                return
            on_done(error)

    def flush(self) -> None:
        """Wait for every queued write, then run their completions here (UI thread)."""
        for future in self._futures:
            future.result()
        self._futures.clear()
        self.drain()

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)


def _confirmed(doc: Any) -> Any:
    """A copy of the document's map of the pixels a person set, taken with its mask's copy."""
    return doc.confirmed.copy()


class SessionSaves:
    """The saving half of :class:`~deeplab_gui.session.Session` (which delegates to it)."""

    def __init__(self, session: Any) -> None:
        self.s = session
        self.writer = MaskWriter(session)
        # id -> MaskDocument kept in memory: its save failed, or the folder is read-only
        self.unsaved: dict[str, Any] = {}
        self.errors: dict[str, str] = {}      # id -> why its last write failed (until one succeeds)
        self._queued: dict[str, tuple[Any, int]] = {}  # id -> (document, version) of its newest write
        self._said_read_only = False
        self._read_only_why = READ_ONLY_WHY

    def reset(self, read_only_why: str = READ_ONLY_WHY) -> None:
        """A new folder: forget the previous one's documents (close_folder saved them first).
        ``read_only_why``: what edits kept in memory are said to wait for, should the folder be read-only."""
        self.unsaved.clear()
        self.errors.clear()
        self._queued.clear()
        self._said_read_only = False
        self._read_only_why = read_only_why

    def in_memory(self, image_id: str) -> Any:
        """The document to show for ``image_id`` instead of its mask on disk: one whose save failed,
        or one whose write is still queued (the disk may still hold the older mask)."""
        doc = self.unsaved.get(image_id)
        if doc is None and image_id in self._queued:
            doc = self._queued[image_id][0]
        return doc

    def document(self, image_id: str) -> Any:
        """The in-memory document of ``image_id`` (the current one included), else None."""
        doc = self.in_memory(image_id)
        if doc is None and image_id == self.s.image_id:
            doc = self.s.document
        return doc

    def not_on_disk(self) -> list[tuple[str, str]]:
        """``(image id, why)`` for every image whose latest edits exist only in memory, in folder order:
        edits in a read-only folder, documents whose last write failed (why: its error), writes still
        queued, and the current document's edits not yet handed to the writer."""
        s = self.s
        if s.store is None:
            return []
        idle = self._read_only_why if s.read_only else "not saved yet"
        why: dict[str, str] = {}
        for image_id, doc in self.unsaved.items():
            if image_id in self.errors or doc.dirty:
                why[image_id] = self.errors.get(image_id, idle)
        if s.image_id is not None and s.document is not None and s.document.dirty:
            why.setdefault(s.image_id, self.errors.get(s.image_id, idle))
        for image_id in self._queued:
            why[image_id] = "still being written"
        order = {image_id: i for i, image_id in enumerate(s.ids)}
        return sorted(why.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))

    def may_let_go(self) -> bool:
        """Whether another folder may replace this one: nothing is only in memory, or the session's
        ``confirm_replace`` (the window's question) says so."""
        confirm = self.s.confirm_replace
        return confirm is None or not self.not_on_disk() or bool(confirm())

    def retry(self) -> bool:
        """Try again to put every unsaved document on disk, waiting for it; True when nothing is left
        only in memory. A read-only folder's edits go through a writable store of the same folder that
        this session is opening (:attr:`Session.incoming_store`: it holds the folder's lock), else
        through one opened just for this, which works once the other instance has let go of it."""
        s = self.s
        if s.store is None:
            return True
        if not s.read_only:
            self.save_all()
            return not self.not_on_disk()
        self.writer.flush()
        incoming = s.incoming_store
        if incoming is not None and not incoming.read_only and incoming.folder == s.store.folder:
            return self.write_through(incoming)
        self._write_through_own_store()
        return not self.not_on_disk()

    def _write_through_own_store(self) -> None:
        from engine import AnnotationStore, StoreError, StoreLockedError
        s = self.s
        try:
            store = AnnotationStore.open(s.store.folder, scan=False)
        except (StoreLockedError, StoreError, OSError) as exc:
            self._read_only_why = f"the folder is still open read-only: {one_line(exc)}"
            return
        try:
            if store.read_only:  # the folder itself cannot be written (a read-only mount)
                self._read_only_why = read_only_why(store, locked=False)
                return
            self.write_through(store)
        finally:
            store.close()

    def write_through(self, store: Any) -> bool:
        """Write every document that is only in memory through ``store``, a writable store of this
        session's folder that is not (yet) the session's own, and wait for it; True when nothing is
        left only in memory. A document that fails stays in memory with its error as the reason."""
        from engine import StoreError
        self.writer.flush()
        for image_id, _why in self.not_on_disk():
            doc = self.document(image_id)
            if doc is None:
                continue
            try:
                store.save_mask(image_id, doc.mask.copy(), confirmed=_confirmed(doc))
            except (StoreError, OSError, ValueError) as exc:
                self.unsaved[image_id] = doc
                self.errors[image_id] = one_line(exc) or "the write failed"
                continue
            doc.mark_saved()  # synchronous: nothing was painted since the copy
            self.unsaved.pop(image_id, None)
            self.errors.pop(image_id, None)
        self.s.saved.emit(not self.unsaved)
        return not self.not_on_disk()

    def discard(self) -> None:
        """The person chose to lose what is not on disk: forget it, so that letting go of the folder
        writes nothing more (writes already queued still land)."""
        self.writer.flush()
        for image_id, _why in self.not_on_disk():
            doc = self.document(image_id)
            if doc is not None:
                doc.mark_saved()
        self.unsaved.clear()
        self.errors.clear()

    def save_current(self, wait: bool = True) -> bool:
        """Save the current mask if it changed. ``wait=False`` (autosaves) only queues the write;
        ``wait=True`` also waits for all queued writes and returns whether the mask is on disk (False
        with a ``message`` saying why)."""
        s = self.s
        effort = getattr(s, "effort", None)
        if effort is not None:
            effort.flush()  # the meter's counts go with every save, autosave and image switch
        if s.document is None or s.image_id is None or s.store is None:
            return True
        if s.document.dirty:
            self.save(s.image_id, s.document)
        if wait:
            self.writer.flush()
        return s.image_id not in self.unsaved

    def save(self, image_id: str, doc: Any, status: Any = None) -> bool:
        """Queue a write of ``doc`` (False, keeping it in memory, when the folder is read-only)."""
        s = self.s
        if s.read_only:
            if not self._said_read_only:
                self._said_read_only = True
                s._say("warning", "this folder is open read-only: changes are kept in memory only")
            self.unsaved[image_id] = doc
            s.saved.emit(False)
            return False
        version = doc.version
        queued = self._queued.get(image_id)
        if status is None and queued is not None and queued[0] is doc and queued[1] == version:
            return True  # exactly this is already on its way
        mask, store = doc.mask.copy(), s.store
        self._queued[image_id] = (doc, version)
        kw = {"confirmed": _confirmed(doc)} if status is None else {"status": status}
        self.writer.submit(lambda: store.save_mask(image_id, mask, **kw),
                           lambda error: self._written(store, image_id, doc, version, error))
        return True

    def _written(self, store: Any, image_id: str, doc: Any, version: int, error: Exception | None) -> None:
        s = self.s
        queued = self._queued.get(image_id)
        if queued is not None and queued[0] is doc and queued[1] == version:
            del self._queued[image_id]
        if error is not None:
            why = one_line(error) or "the write failed"
            # Said once: the autosaves that retry it every few seconds fail the same way until the
            # disk or folder is fixed (the title's * and the question on closing still tell).
            repeated = store is s.store and self.errors.get(image_id) == why
            if store is s.store:
                self.unsaved[image_id] = doc
                self.errors[image_id] = why
            if not repeated:
                s._say("error", f"{error} (your changes are kept in memory)")
            s.saved.emit(False)
            return
        if doc.version == version:
            doc.mark_saved()
        if self.unsaved.get(image_id) is doc and not doc.dirty:
            del self.unsaved[image_id]
        if store is s.store and self.errors.pop(image_id, None) is not None:
            s._say("info", f"saved {image_id} (the earlier error is behind it)")
        s.saved.emit(True)
        s.statuses_changed.emit()

    def autosave(self) -> None:
        """Timer tick: queue the current mask if dirty and retry masks whose save failed."""
        if self.s.store is not None and not self.s.read_only:
            self._queue_all()

    def save_all(self) -> None:
        """Before the folder closes: write everything still in memory and wait for it (read-only: the
        current mask's changes are reported as kept in memory)."""
        self._queue_all()
        self.writer.flush()
        if getattr(self.s, "effort", None) is not None:
            self.s.effort.wait()  # the effort meter's records, handed over with the current mask

    def _queue_all(self) -> None:
        s = self.s
        self.save_current(wait=False)
        if not s.read_only:
            for image_id, doc in list(self.unsaved.items()):
                if image_id != s.image_id:  # the current one went with save_current
                    self.save(image_id, doc)

    def mark_reviewed(self) -> bool:
        s = self.s
        if s.document is None or s.image_id is None or s.read_only:
            return False
        from engine import Status
        self.save(s.image_id, s.document, status=Status.REVIEWED)
        self.writer.flush()
        return s.image_id not in self.unsaved
