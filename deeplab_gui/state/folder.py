"""The folder half of :class:`~deeplab_gui.state.session.Session`: opening a folder's store (read-only
when another instance holds it), rescanning the folder already open, and letting a store go.

A mixin, like :mod:`.predictions`; it relies on the session's ``store``, ``folder``, ``saves``,
``prefetch``, ``settings``, ``run_task``, ``select``, ``_say`` and its signals.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine import VOID

from .saving import read_only_why
from .tasks import TaskHandle

__all__ = ["FolderMethods"]


class FolderMethods:
    """Opening, rescanning and closing the session's folder (see the module docstring)."""

    # ------------------------------------------------------------------ folder
    def open_folder(self, path: str | os.PathLike) -> TaskHandle:
        """Open ``path``'s store and scan it in a worker; ``folder_opened`` then the first image.

        The folder already open (writable) is only rescanned: opening it again from this process would
        find its own lock taken and fall back to read-only."""
        if self.store is not None and not self.read_only and Path(path).expanduser().resolve() == self.folder:
            return self.run_task(self.store.scan, on_result=self._rescanned, task_name="rescan folder",
                                 on_error=lambda t: self._say("error", f"cannot rescan {path}: {t}"))

        def work(folder: str):
            from engine import AnnotationStore, StoreLockedError
            try:
                return AnnotationStore.open(folder), None
            except StoreLockedError as exc:
                return AnnotationStore.open(folder, read_only=True), f"{exc}; opened read-only"

        return self.run_task(work, str(path), on_result=self._folder_ready,
                             on_error=lambda t: self._say("error", f"cannot open {path}: {t}"),
                             task_name="open folder")

    def _folder_ready(self, value: tuple) -> None:
        store, note = value  # note: why it fell back to read-only (another instance holds the lock)
        if self.read_only and not store.read_only and store.folder == self.folder and self.unsaved():
            # This folder again, now writable (the other instance let go): what was kept in memory
            # goes through the new store, which holds the lock; asking first would only be in the way.
            if self.saves.write_through(store):
                self._say("info", f"saved the changes kept in memory while {store.folder} was read-only")
        self.incoming_store = store
        try:
            keep = not self.saves.may_let_go()
        finally:
            self.incoming_store = None
        if keep:
            return store.close()  # the person kept this folder's unsaved edits
        self.close_store()
        self.store, self.folder = store, store.folder
        self._ids = store.ids()
        self.saves.reset(read_only_why(store, locked=note is not None))
        self.prefetch.clear()
        self.settings.add_recent_folder(store.folder)
        for text in (note, store.notice):
            if text:
                self._say("warning", text)
        skipped = store.scan_result.skipped if store.scan_result is not None else []
        if skipped:
            names = ", ".join(f"{p} ({why})" for p, why in skipped[:3])
            self._say("warning", f"{len(skipped)} file(s) skipped: {names}" + (" ..." if len(skipped) > 3 else ""))
        remembered = self.settings.last_class(store.folder)   # the class this folder was painted with last
        if remembered is not None and (remembered == VOID or 0 <= remembered < len(store.class_names)):
            self._label = remembered
        if self._label >= len(store.class_names) and self._label != VOID:
            self._label = min(1, len(store.class_names) - 1)
        self.folder_opened.emit()
        self.classes_changed.emit()
        self.label_changed.emit(self._label)
        self.statuses_changed.emit()
        if self._ids:
            self.select(self.settings.last_image(store.folder, self._ids))  # where the person stopped
        else:
            self._say("info", f"{store.folder} holds no images")

    def rescan(self) -> TaskHandle | None:
        """Look for images added to (or removed from) the open folder since it was opened (File ▸
        Rescan folder): the same store, only its list of files read again (read-only folders too),
        so histories, embeddings, the model and the image on screen stay as they are."""
        store = self.store
        if store is None:
            return None
        return self.run_task(store.scan, on_result=self._rescanned, task_name="rescan folder",
                             on_error=lambda t: self._say("error", f"cannot rescan {self.folder}: {t}"))

    def _rescanned(self, _result) -> None:
        ids = self.store.ids() if self.store is not None else []
        added, gone = len(set(ids) - set(self._ids)), len(set(self._ids) - set(ids))
        if ids != self._ids:
            self._ids = ids
            self.images_changed.emit()
            self.statuses_changed.emit()
        change = ", ".join(f"{n} {what}" for n, what in ((added, "new"), (gone, "gone")) if n)
        self._say("info", f"{self.folder}: {len(ids)} images" + (f" ({change})" if change else ", none new"))

    def close_store(self) -> None:
        """Save, then let go of the current folder (also what quitting calls)."""
        if self.store is None:
            return
        self.end_stroke()
        self._idle_save.stop()
        self.saves.save_all()
        for task in (self._load, self._full):
            if task is not None:
                task.cancel()
        self.store.close()
        self.store, self.folder, self.image_id, self.image, self.document = None, None, None, None, None
        self.display = self.image_size = None
        self.prefetch.clear()
        self.probs = self.raw_labels = self.uncertainty = self.crf_labels = None
