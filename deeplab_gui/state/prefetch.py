"""Decoding the current image's neighbours in the background, so that A/D show them at once.

Part of :class:`~deeplab_gui.session.Session` (which owns one ``Prefetcher``): the next and previous
images are decoded through the session's task pool as soon as the current one is on screen, and only
those two are kept, so memory stays bounded however long a person pages through a folder.
"""
from __future__ import annotations

from typing import Any

from .session_io import read_for_display

__all__ = ["Prefetcher"]


class Prefetcher:
    """``ready``: id -> (image, display) decoded; ``running``: id -> TaskHandle of a decode under way."""

    def __init__(self, session: Any) -> None:
        self.s = session
        self.ready: dict[str, tuple[Any, Any]] = {}
        self.running: dict[str, Any] = {}

    def clear(self) -> None:
        self.ready.clear()

    def inflight(self, image_id: str) -> Any:
        """The decode of ``image_id`` still running, if any."""
        handle = self.running.get(image_id)
        return handle if handle is not None and not handle.done else None

    def neighbours(self, image_id: str | None) -> list[str]:
        ids = self.s._ids
        i = ids.index(image_id) if image_id in ids else -10
        return [ids[j] for j in (i + 1, i - 1) if 0 <= j < len(ids)]

    def around(self, image_id: str) -> None:
        """Decode the next and previous images of ``image_id``; forget any others."""
        s = self.s
        keep = self.neighbours(image_id)
        for k in [k for k in self.ready if k not in keep]:
            del self.ready[k]
        store = s.store
        for k in keep:
            if k in self.ready or k in self.running or store.error(k):
                continue

            def done(value: tuple, k: str = k) -> None:
                if s.store is not store:
                    return
                if k == s.image_id:  # selected while it was being decoded: finish the switch
                    s._full_ready(k, value)
                elif k in self.neighbours(s.image_id):
                    self.ready[k] = value
            h = s.run_task(read_for_display, store.image_path(k), on_result=done,
                           on_error=lambda _t: None, task_name="prefetch")  # select() reports it
            self.running[k] = h
            h.finished.connect(lambda k=k: self.running.pop(k, None))
