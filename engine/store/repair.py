"""The repairs :class:`~engine.store.store.AnnotationStore` makes when it opens: statuses rebuilt after the
database was lost, and masks named that hold class indices beyond a hand-shortened class list.

A mixin (like :mod:`engine.store.masks`) relying on the store's ``root``, ``folder``, ``read_only``,
``_classes``, ``_status``, ``_meta``/``_set_meta``, ``_writable``, ``load_mask`` and ``_add_notice``.
"""
from __future__ import annotations

import errno
import json
import sqlite3
import time

import numpy as np

from ..labels import VOID
from .format import DB_EMPTY, DB_MISSING, Status, StoreError, sidecar_ids, write_error
from .scan import natural_key

__all__ = ["RepairMethods"]


class RepairMethods:
    """Repairs on opening (see the module docstring)."""

    def _mask_ids_on_disk(self) -> list[str]:
        return sidecar_ids(self.root / "masks", ".png", self.folder)

    def _reconcile_masks(self, lost: str | None) -> None:
        """After the database lost its statuses, mark every mask on disk ``edited``: a prediction can no
        longer be told from a person's drawing, so all are protected.  A healthy database is trusted
        (both kinds of save commit the status before the file); a mask it has no row for stays
        protected anyway (``needs_prelabel``)."""
        if lost is None:
            return
        on_disk = self._mask_ids_on_disk()
        self._put_statuses(on_disk, Status.EDITED)
        if on_disk or lost not in (DB_MISSING, DB_EMPTY):
            self._add_notice(f"the status database {lost}; rebuilt from the masks on disk: "
                             f"{len(on_disk)} images with masks are marked edited")

    def _classes_signature(self) -> str:
        try:
            st = (self.root / "classes.json").stat()
            return f"{st.st_size}:{st.st_mtime_ns}:{len(self._classes)}"
        except OSError:
            return f"none:{len(self._classes)}"

    def _check_shrunk_classes(self) -> None:
        """Name the masks holding class indices beyond the class list (``classes.json`` shortened by
        hand).  Those masks are left exactly as they are; saving one refuses until the classes are
        added back or the pixels relabelled.  Every mask is decoded only when ``classes.json`` changed
        outside the store since the last check; the answer is kept in the database."""
        n = len(self._classes)
        sig = self._classes_signature()
        cached = self._meta("classes_beyond")
        if self._meta("classes_checked") == sig and cached is not None:
            self.masks_beyond_classes = {k: int(v) for k, v in json.loads(cached).items()}
        else:
            self.masks_beyond_classes = {}
            for image_id in (self._mask_ids_on_disk() if n < VOID else []):
                try:
                    m = self.load_mask(image_id)
                except StoreError:
                    continue
                if m is None:
                    continue
                beyond = np.flatnonzero(np.bincount(m.ravel(), minlength=256)[n:VOID])
                if beyond.size:
                    self.masks_beyond_classes[image_id] = int(beyond.max()) + n
            if not self.read_only:
                self._remember_classes_check(sig)
        if self.masks_beyond_classes:
            items = sorted(self.masks_beyond_classes.items(), key=lambda kv: natural_key(kv[0]))
            named = ", ".join(f"{i} (index {k})" for i, k in items[:3])
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            self._add_notice(f"classes.json lists {n} classes, fewer than the masks use: {named}{more} "
                             f"keep those pixels as they are; add the classes back or relabel them")

    def _remember_classes_check(self, sig: str) -> None:
        self._set_meta("classes_beyond", json.dumps(self.masks_beyond_classes))
        self._set_meta("classes_checked", sig)

    def _put_statuses(self, ids: list[str], status: Status) -> None:
        """One transaction for many statuses (a rebuild of 10,000 masks is one commit, not 10,000)."""
        if not ids:
            return
        db = self._writable()
        now = time.time()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO images VALUES(?, ?, ?, NULL) ON CONFLICT(id) DO UPDATE SET "
                           "status=excluded.status, updated=excluded.updated",
                           [(i, status.value, now) for i in ids])
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            full = "full" in str(exc).lower()
            raise write_error(OSError(errno.ENOSPC if full else errno.EIO, str(exc)), "the rebuilt statuses") from exc
        for i in ids:
            self._status[i] = status
