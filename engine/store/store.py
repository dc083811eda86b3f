"""The annotation store: class list, per-image status, user masks, cached probabilities and click
embeddings, checkpoints.

One store per image folder, in the sidecar folder ``<folder>/.deeplab-gui/`` (layout, formats and
guarantees are documented in the README's "Annotation store" section).  Rules it keeps:

- Every file write is atomic (temp file in the same folder, fsync, rename); a kill at any moment
  leaves each mask as a complete old or new version.
- A mask a person drew (status ``edited`` or ``reviewed``) is never replaced by a prediction unless
  the caller passes ``overwrite=True``.  For user saves the status is committed *before* the mask
  file is renamed into place, so no crash can leave a user's mask labelled as a prediction.
- One instance per folder (:class:`~engine.storelock.InstanceLock`); ``read_only=True`` opens a
  viewer that takes no lock and writes nothing.
- A folder that cannot be written keeps its store under the user data dir; ``store.notice`` says so.
"""
from __future__ import annotations

import errno
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import atomic_write_bytes
from .effort import EffortMethods
from .embcache import DEFAULT_EMBEDDINGS_BUDGET, EmbeddingCache, EmbeddingMethods
from .format import (
    PROTECTED,
    LabelClass,
    MaskError,
    Status,
    StoreError,
    StoreWriteError,
    check_classes,
    classes_to_json,
    default_classes,
    load_classes_file,
    locate_store,
    open_db,
    open_db_readonly,
    remove_orphan_temps,
    user_store_root,
)
from .format import check_id as _check_id
from .format import write_error as _write_error
from .lock import InstanceLock, StoreLockedError
from .masks import MaskMethods
from .probcache import CachedProbs, ImageSignature, ProbCache, encode_probs
from .repair import RepairMethods
from .scan import ScanResult, natural_key, scan_folder

__all__ = [
    "AnnotationStore", "Status", "LabelClass", "StoreError", "StoreWriteError", "MaskError",
    "StoreLockedError", "PROTECTED", "default_classes", "user_store_root",
]

DEFAULT_PROBS_BUDGET = 4 << 30  # bytes of cached probabilities kept before the least recently used go


class AnnotationStore(MaskMethods, RepairMethods, EffortMethods, EmbeddingMethods):
    """The annotations of one image folder.  Open with :meth:`open`; close (or ``with``) when done.

    Thread-safe: the GUI's autosave, a background pre-labelling worker and the UI may call it at once.
    """

    def __init__(self, folder: Path, root: Path, *, read_only: bool, notice: str | None,
                 recursive: bool, probs_budget: int, embeddings_budget: int = DEFAULT_EMBEDDINGS_BUDGET) -> None:
        self.folder = folder
        self.root = root
        self.read_only = read_only
        self.notice = notice
        self.recursive = recursive
        self.probs_budget = probs_budget
        self.embeddings_budget = embeddings_budget
        self._mutex = threading.RLock()
        self._lock = InstanceLock(root / "lock", label=str(folder))
        self._db: sqlite3.Connection | None = None
        self._status: dict[str, Status] = {}
        self._errors: dict[str, str] = {}
        self._classes: list[LabelClass] = default_classes()
        self._sizes: dict[str, tuple[int, int, int, int]] = {}  # id -> (bytes, mtime_ns, h, w)
        self._probs = ProbCache(root / "probs", None, probs_budget)
        self._embeddings = EmbeddingCache(root / "embeddings", None, embeddings_budget)
        self.scan_result: ScanResult | None = None
        self.masks_beyond_classes: dict[str, int] = {}  # id -> highest class index beyond the list

    # ------------------------------------------------------------------ opening and closing
    @classmethod
    def open(cls, folder: str | os.PathLike, *, read_only: bool = False, recursive: bool | None = None,
             scan: bool = True, probs_budget: int = DEFAULT_PROBS_BUDGET,
             embeddings_budget: int = DEFAULT_EMBEDDINGS_BUDGET) -> "AnnotationStore":
        """Open (creating if needed) the store of ``folder``.

        Raises :class:`StoreLockedError` when another instance has it open (``read_only=True`` still
        works then), ``NotADirectoryError``/``FileNotFoundError`` for a bad folder.
        ``recursive``: include sub-folders; None keeps what the store used last time (default False).
        ``scan``: list the folder's images now (else call :meth:`scan` later, e.g. off the UI thread).
        ``probs_budget``, ``embeddings_budget``: bytes of cached probabilities and click embeddings kept.
        """
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise (NotADirectoryError if folder.exists() else FileNotFoundError)(f"{folder}: not a folder")
        root, notice, read_only = locate_store(folder, read_only=read_only)
        store = cls(folder, root, read_only=read_only, notice=notice, recursive=bool(recursive),
                    probs_budget=probs_budget, embeddings_budget=embeddings_budget)
        try:
            store._open(recursive)
            if scan:
                store.scan()
        except BaseException:
            store.close()
            raise
        return store

    def _open(self, recursive: bool | None) -> None:
        if not self.read_only:
            for sub in ("masks", "probs", "checkpoints"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            origin = self.root / "folder.txt"
            if self.root.parent != self.folder and not origin.exists():
                atomic_write_bytes(origin, (str(self.folder) + "\n").encode())
            remove_orphan_temps(self.root)  # we hold the lock: any temp file is a dead writer's
        self._db, lost = self._connect()
        self._probs = ProbCache(self.root / "probs", None if self.read_only else self._db, self.probs_budget)
        self._embeddings = EmbeddingCache(self.root / "embeddings", None if self.read_only else self._db,
                                          self.embeddings_budget)
        rows = self._db.execute("SELECT id, status, error FROM images").fetchall() if self._db else []
        for image_id, status, error in rows:
            try:
                self._status[image_id] = Status(status)
            except ValueError:
                self._status[image_id] = Status.EDITED  # unknown value: protect it rather than drop it
            if error:
                self._errors[image_id] = error
        if not self.read_only:
            self._reconcile_masks(lost)
        self._classes, notice = load_classes_file(self.root / "classes.json", self._meta("classes"),
                                                  repair=not self.read_only)
        if notice:
            self._add_notice(notice)
        self._check_shrunk_classes()
        if not self.read_only and not (self.root / "classes.json").exists():
            self.set_classes(self._classes)  # so the file is there to read (and edit) from day one
        saved = self._meta("recursive")
        if recursive is None:
            self.recursive = saved == "1"
        elif not self.read_only and saved != ("1" if recursive else "0"):
            self._set_meta("recursive", "1" if recursive else "0")

    def _connect(self) -> tuple[sqlite3.Connection | None, str | None]:
        path = self.root / "store.db"
        if self.read_only:
            return open_db_readonly(path), None
        return open_db(path)

    def _add_notice(self, text: str) -> None:
        self.notice = ((self.notice + "; ") if self.notice else "") + text

    def close(self) -> None:
        with self._mutex:
            if self._db is not None:
                try:
                    self._db.close()
                finally:
                    self._db = None
            self._lock.release()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ small db helpers
    def _meta(self, key: str) -> str | None:
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, value), what="the store settings")

    def _writable(self) -> sqlite3.Connection:
        if self.read_only:
            raise StoreError(f"{self.folder} is open read-only; nothing can be saved")
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    def _exec(self, sql: str, args: tuple, *, what: str) -> None:
        db = self._writable()
        try:
            db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            full = "full" in str(exc).lower()
            raise _write_error(OSError(errno.ENOSPC if full else errno.EIO, str(exc)), what) from exc

    # ------------------------------------------------------------------ folder contents
    def scan(self, *, cancel=None) -> ScanResult:
        """(Re)list the folder's images (no decoding); ``ids()`` follows the result."""
        result = scan_folder(self.folder, recursive=self.recursive, cancel=cancel)
        self.scan_result = result
        return result

    def ids(self) -> list[str]:
        """Image ids of the last scan, in natural order."""
        return self.scan_result.ids() if self.scan_result is not None else []

    def image_path(self, image_id: str) -> Path:
        return self.folder / _check_id(image_id)

    def known_ids(self) -> list[str]:
        """Ids with a status other than unlabeled, including images no longer in the folder."""
        return sorted(self._status, key=natural_key)

    # ------------------------------------------------------------------ classes
    @property
    def classes(self) -> list[LabelClass]:
        return list(self._classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self._classes]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return [c.color for c in self._classes]

    def set_classes(self, classes: Sequence[LabelClass | tuple[str, Sequence[int]]], *,
                    allow_shrink: bool = False) -> None:
        """Replace the class list (names and colours, index order).

        Shrinking the list would leave masks holding indices with no class; it needs
        ``allow_shrink=True`` (those pixels then fail export until relabelled).
        """
        new = check_classes(classes)
        if len(new) < len(self._classes) and not allow_shrink:
            raise StoreError(f"the new list has {len(new)} classes, fewer than the {len(self._classes)} "
                             f"masks may use; pass allow_shrink=True to do it anyway")
        with self._mutex:
            self._writable()
            text = classes_to_json(new)
            try:
                atomic_write_bytes(self.root / "classes.json", text.encode("utf-8"))
            except OSError as exc:
                raise _write_error(exc, "the class list") from exc
            self._set_meta("classes", text)  # backup, used if classes.json gets damaged
            self._classes = new
            if not allow_shrink:  # a list that did not shrink puts no mask newly beyond it
                self.masks_beyond_classes = {k: v for k, v in self.masks_beyond_classes.items() if v >= len(new)}
                self._remember_classes_check(self._classes_signature())

    # ------------------------------------------------------------------ status
    def status(self, image_id: str) -> Status:
        return self._status.get(image_id, Status.UNLABELED)

    def statuses(self) -> dict[str, Status]:
        """Status of every scanned image (unlabeled included)."""
        return {i: self.status(i) for i in self.ids()}

    def counts(self) -> dict[Status, int]:
        out = {s: 0 for s in Status}
        for s in self.statuses().values():
            out[s] += 1
        return out

    def set_status(self, image_id: str, status: Status | str) -> None:
        status = Status(status)
        with self._mutex:
            self._put_status(_check_id(image_id), status)

    def _put_status(self, image_id: str, status: Status | None) -> None:
        if status is None or status is Status.UNLABELED:
            self._exec("DELETE FROM images WHERE id=?", (image_id,), what=f"the status of {image_id}")
            self._status.pop(image_id, None)
        else:
            self._exec("INSERT INTO images VALUES(?, ?, ?, NULL) ON CONFLICT(id) DO UPDATE SET "
                       "status=excluded.status, updated=excluded.updated",
                       (image_id, status.value, time.time()), what=f"the status of {image_id}")
            self._status[image_id] = status

    def error(self, image_id: str) -> str | None:
        """Why the image could not be read last time, if it could not."""
        return self._errors.get(image_id)

    def record_error(self, image_id: str, reason: str | None) -> None:
        """Remember (or with None, forget) why an image is unreadable, so lists can show it."""
        with self._mutex:
            if self.read_only:
                return
            if reason is None:
                self._errors.pop(image_id, None)
                self._exec("UPDATE images SET error=NULL WHERE id=?", (image_id,), what="an error note")
                return
            self._errors[image_id] = reason
            status = self.status(image_id)
            self._exec("INSERT INTO images VALUES(?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET error=?",
                       (image_id, status.value, time.time(), reason, reason), what="an error note")
            self._status.setdefault(image_id, status)

    # ------------------------------------------------------------------ probability cache
    def probs_path(self, image_id: str) -> Path:
        return self._probs.path(_check_id(image_id))

    def save_probs(self, image_id: str, probs: np.ndarray, *, model_id: str,
                   signature: ImageSignature | None = None) -> None:
        """Cache C×H×W probabilities for ``image_id``; ``signature`` defaults to the image's stat now.
        The file is made (float16, deflate: the slow part) before the store's lock is taken, so writers
        on several threads compress side by side."""
        self._writable()
        sig = signature or ImageSignature.of(self.image_path(image_id))
        self.save_probs_file(image_id, encode_probs(probs, model_id=model_id, signature=sig), model_id=model_id)

    def save_probs_file(self, image_id: str, data: bytes, *, model_id: str) -> None:
        """Cache a probability file already made by :func:`engine.store.probcache.encode_probs` for this
        image and ``model_id`` (e.g. by the process that predicted it); written atomically and indexed."""
        with self._mutex:
            self._writable()
            try:
                self._probs.save_encoded(image_id, data, model_id=model_id)
            except (OSError, sqlite3.OperationalError) as exc:
                err = exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc))
                raise _write_error(err, f"the probabilities of {image_id}") from exc

    def load_probs(self, image_id: str, model_id: str | None = None) -> CachedProbs | None:
        """Fresh cached probabilities (same image bytes/mtime, same model if given), else None."""
        with self._mutex:
            return self._probs.load(_check_id(image_id), image_path=self.image_path(image_id),
                                    model_id=model_id)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    def new_checkpoint_path(self, stem: str = "finetune", suffix: str = ".safetensors") -> Path:
        """A fresh, unused path ``checkpoints/<stem>-vNNN<suffix>`` (versions count up)."""
        stem = re.sub(r"[^\w.-]+", "_", stem) or "finetune"
        taken = [int(m.group(1)) for p in self.list_checkpoints()
                 if (m := re.fullmatch(re.escape(stem) + r"-v(\d+)", p.stem))]
        return self.checkpoints_dir / f"{stem}-v{max(taken, default=0) + 1:03d}{suffix}"

    def list_checkpoints(self) -> list[Path]:
        """Fine-tuned checkpoints (``*.safetensors``) in the store, oldest first."""
        d = self.checkpoints_dir
        if not d.is_dir():
            return []
        files = [p for p in d.iterdir()
                 if p.is_file() and not p.name.startswith(".") and p.suffix == ".safetensors"]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, natural_key(p.name)))


