"""Importing labels from any format into a folder's annotation store: the part every reader shares.

A format's reader turns its source into an :class:`ImportSource` (the class list and one
:class:`SourceItem` per image) without writing anything; :func:`import_source` then checks and
writes the items one by one.  The contract a reader follows:

- ``SourceItem.image``: the image file to copy in (a path) or its bytes (an embedded image);
  ``image_id`` is where it goes inside the folder (a relative POSIX path, may have sub-folders).
- ``SourceItem.mask(height, width)``: called only after the image decoded, with its size (EXIF
  orientation applied); returns an H×W uint8 array of class indices into ``ImportSource.classes``,
  255 void.  It raises :class:`SkipItem` with one line ``"<file>: <problem>"`` to skip this image.
  A mask of another size or with an index beyond the class list is skipped here, naming
  ``SourceItem.origin`` (the mask's file) and ``ImportSource.classes_from``.
- ``SourceItem.problem``: a reason known while reading (a missing mask file, a bad name): the item is
  skipped with it before anything else is looked at.
- ``SourceItem.status``: None means the import's default (``reviewed``: a dataset's masks are ground
  truth).  ``prelabeled`` items are stored as predictions, the others as a person's masks with every
  pixel recorded as set by a person (so confirmed-only exports and fine-tuning keep them whole).

What refuses the whole import, before the folder is touched (a :class:`FormatError`): the folder is
a file or its store cannot be read, or it already holds masks drawn with a class list that the
source's does not extend (same names at the same indices, possibly more after).

What skips one image (listed in the report's ``skipped`` as ``(key, reason)``): the item's problem,
an invalid image id, a missing or unreadable image, the mask callable's :class:`SkipItem`, a mask of
the wrong size or with an unknown index, a different file of the same name already in the folder, a
person's mask already there (unless ``overwrite``).

What stops the import part way (a :class:`FormatError`): a failed write into the folder or its store
(disk full, read-only).  Every image imported until then is complete; the one being written is
rolled back.  The store is opened for writing (and its class list changed) only when the first image
is accepted, so an import that accepts nothing leaves the folder as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import one_line
from ..fileio import atomic_write_bytes
from ..imageio import read_image
from ..labels import LabelClass
from ..store.format import PROTECTED, MaskError, Status, StoreError, check_id
from ..store.store import AnnotationStore
from .common import FormatError, os_reason
from .voc_common import check_indices

__all__ = ["SourceItem", "SkipItem", "ImportSource", "ImportReport", "import_source", "FormatError",
           "class_clash"]

Progress = Callable[[int, int], None]


class SkipItem(Exception):
    """Raised by a mask callable (or a reader) to skip one image; ``str`` is ``"<file>: <problem>"``."""


@dataclass
class SourceItem:
    key: str                                   # the source's name for it, used in the report
    image_id: str                              # path of the image inside the target folder
    image: Path | bytes                        # the image file to copy in, or its bytes
    mask: Callable[[int, int], np.ndarray]     # (height, width) -> H×W uint8 indices, 255 void
    status: Status | None = None               # None: the import's default
    origin: Path | str | None = None           # the mask's file, for messages (None: the key)
    problem: str | None = None                 # a skip reason known while reading
    note: str | None = None                    # what of it is left out (the image still imports), naming the file


@dataclass
class ImportSource:
    root: Path
    classes: list[LabelClass]                  # the class list the masks index into
    classes_from: str                          # in words, where that list came from (for messages)
    items: Sequence[SourceItem]


@dataclass
class ImportReport:
    folder: Path
    imported: list[str] = field(default_factory=list)           # image ids given a mask
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source key, reason naming the file)
    notes: list[tuple[str, str]] = field(default_factory=list)    # (source key, what an imported one left out)
    cancelled: bool = False


@dataclass
class _Ready:
    item: SourceItem
    data: bytes | None                 # image bytes to copy; None when the folder already has them
    mask: np.ndarray
    status: Status


# ---------------------------------------------------------------------------- the destination
def class_clash(old: list[LabelClass], new: list[LabelClass]) -> str | None:
    """Why ``new`` cannot replace ``old`` under existing masks (None: it keeps every index's name)."""
    if len(new) < len(old):
        return f"has {len(new)} classes, fewer than the folder's {len(old)}"
    for i, (a, b) in enumerate(zip(old, new)):
        if a.name != b.name:
            return f"names class {i} {b.name!r} where the folder has {a.name!r}"
    return None


class _Target:
    """The folder's store: looked at read-only until the first image is accepted, then opened to write."""

    def __init__(self, folder: AnnotationStore | str | os.PathLike, nested: bool) -> None:
        self.given = folder if isinstance(folder, AnnotationStore) else None
        self.path = self.given.folder if self.given else Path(folder).expanduser().resolve()
        self.nested = nested
        self.store: AnnotationStore | None = self.given   # the writable store, once there is one
        self.view: AnnotationStore | None = self.given
        if self.given is not None and self.given.read_only:
            raise FormatError(f"{self.path}: the annotation store is open read-only; nothing can be imported")
        if self.given is None and (self.path.exists() or self.path.is_symlink()):
            if not self.path.is_dir():
                raise FormatError(f"{self.path}: not a folder")
            try:
                self.view = AnnotationStore.open(self.path, read_only=True, scan=False)
            except (StoreError, OSError) as exc:
                raise FormatError(f"{self.path}: cannot read its annotation store ({one_line(exc)})") from None

    def status(self, image_id: str) -> Status:
        return self.view.status(image_id) if self.view is not None else Status.UNLABELED

    def check_classes(self, source: ImportSource) -> None:
        if self.view is None or not self.view.known_ids():
            return
        why = class_clash(self.view.classes, source.classes)
        if why:
            raise FormatError(f"{self.path} already has masks drawn with its own {len(self.view.classes)}-class "
                              f"list; the dataset's class list ({source.classes_from}) {why}: import into a new "
                              f"folder instead")

    def writable(self, source: ImportSource) -> AnnotationStore:
        if self.store is None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FormatError(f"cannot create {self.path}: {os_reason(exc)}") from None
            if self.view is not None:
                self.view.close()
                self.view = None
            try:
                store = AnnotationStore.open(self.path, scan=False, recursive=True if self.nested else None)
            except (StoreError, OSError) as exc:  # StoreLockedError goes up as it is: it says who holds it
                raise FormatError(f"{self.path}: cannot open the annotation store ({one_line(exc)})") from None
            self.store = self.view = store
            self.check_classes(source)  # again: the store may have changed since it was looked at
        return self.store

    def close(self) -> None:
        if self.given is None:
            for st in {id(s): s for s in (self.view, self.store) if s is not None}.values():
                st.close()


# ---------------------------------------------------------------------------- one image
def _image_size(item: SourceItem) -> tuple[int, int]:
    """(H, W) of the item's image after a full decode (EXIF orientation applied), as the app reads it."""
    if isinstance(item.image, Path):
        src = item.image
        if not src.is_file():
            raise SkipItem(f"{src}: no image for this id")
        try:
            return read_image(src).shape[:2]
        except Exception as exc:
            raise SkipItem(one_line(exc) if str(src) in str(exc) else f"{src}: unreadable image "
                           f"({one_line(exc)})") from None
    # Embedded bytes go through the same decoder by way of a private temporary file.
    where = f"{item.origin or item.key} (embedded image)"
    suffix = os.path.splitext(item.image_id)[1] or ".png"
    with tempfile.TemporaryDirectory(prefix="deeplab-gui-import-") as tmp:
        path = Path(tmp) / f"image{suffix}"
        path.write_bytes(item.image)
        try:
            return read_image(path).shape[:2]
        except Exception as exc:
            reason = one_line(getattr(exc, "reason", "") or exc)
            raise SkipItem(f"{where}: unreadable image ({reason})") from None


def _prepare(source: ImportSource, item: SourceItem, target: _Target, default: Status,
             overwrite: bool) -> _Ready:
    """Every check of one image, nothing written; raises :class:`SkipItem` with the reason."""
    if item.problem:
        raise SkipItem(item.problem)
    try:
        check_id(item.image_id)
    except StoreError as exc:
        raise SkipItem(f"{item.origin or item.key}: {one_line(exc)}") from None
    dst = target.path / item.image_id
    if not overwrite and target.status(item.image_id) in PROTECTED:
        raise SkipItem(f"{dst}: already has an edited or reviewed mask (overwrite replaces it)")
    h, w = _image_size(item)
    origin = item.origin or item.key
    try:
        mask = item.mask(h, w)
    except SkipItem:
        raise
    except Exception as exc:  # a reader's unforeseen failure on one file must not end the import
        raise SkipItem(f"{origin}: unreadable mask ({one_line(exc) or 'corrupt file'})") from None
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        mask = mask.astype(np.uint8)
    if mask.shape != (h, w):
        mh, mw = (mask.shape + (0, 0))[:2]
        raise SkipItem(f"{origin}: mask is {mw}x{mh} but the image is {w}x{h}")
    try:
        check_indices(mask, len(source.classes))
    except ValueError as exc:
        raise SkipItem(f"{origin}: {exc} (class list: {source.classes_from})") from None
    src = item.image if isinstance(item.image, Path) else None
    try:
        data: bytes | None = src.read_bytes() if src is not None else item.image
        if dst.exists() or dst.is_symlink():
            if not dst.is_file():
                raise SkipItem(f"{dst}: something other than a file is in the way")
            if dst.stat().st_size != len(data) or dst.read_bytes() != data:
                raise SkipItem(f"{dst}: already exists in the folder with different content")
            data = None
    except OSError as exc:
        raise SkipItem(f"{exc.filename or src or dst}: cannot read ({os_reason(exc)})") from None
    return _Ready(item, data, mask, Status(item.status or default))


def _commit(target: _Target, ready: _Ready, source: ImportSource, done: int) -> str | None:
    """Write one checked image: copy, class list (first time), mask.  Returns a skip reason, or None.

    A failed write undoes this image's own steps and raises :class:`FormatError`: it would fail for
    every image after it too.
    """
    store = target.writable(source)
    item = ready.item
    dst = store.folder / item.image_id
    made: list[Path] = []
    old_classes = None
    try:
        try:
            if ready.data is not None:
                made = _make_parents(dst.parent)
                atomic_write_bytes(dst, ready.data)
        except OSError as exc:
            raise FormatError(f"could not write {dst}: {os_reason(exc)}") from None
        if store.classes != source.classes:
            old_classes = store.classes
            store.set_classes(source.classes, allow_shrink=not store.known_ids())
        if ready.status is Status.PRELABELED:
            store.save_prediction(item.image_id, ready.mask, overwrite=True)
        else:
            # Every pixel came from the source's person-made labels: say so explicitly, otherwise a
            # replaced edited mask would keep its old map of which pixels a person set.
            store.save_mask(item.image_id, ready.mask, status=ready.status,
                            confirmed=np.ones(ready.mask.shape, bool))
        return None
    except (FormatError, StoreError, OSError) as exc:
        _undo(store, dst if ready.data is not None else None, made, old_classes)
        if isinstance(exc, MaskError):  # the store saw a problem the checks above missed: this image only
            return f"{item.origin or item.key}: {one_line(exc)}"
        raise FormatError(f"{one_line(exc)}; the import stopped after {done} image(s), nothing of {item.key} "
                          f"was kept") from None


def _make_parents(folder: Path) -> list[Path]:
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing  # deepest first


def _undo(store: AnnotationStore, copied: Path | None, made: list[Path],
          old_classes: list[LabelClass] | None) -> None:
    """Take back one image's steps, as far as possible: the error that got here is what gets reported."""
    if copied is not None:
        with contextlib.suppress(OSError):
            copied.unlink(missing_ok=True)
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()
    if old_classes is not None:
        with contextlib.suppress(OSError, StoreError):
            store.set_classes(old_classes, allow_shrink=True)


# ---------------------------------------------------------------------------- import
def import_source(source: ImportSource, folder: str | os.PathLike | AnnotationStore, *,
                  status: Status | str | None = None, overwrite: bool = False,
                  progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> ImportReport:
    """Copy each item's image into ``folder`` and its mask into the folder's store.

    ``status``: the default for items that name none (``reviewed`` when None; never ``unlabeled``).
    ``overwrite``: replace an edited or reviewed mask already there (never a different image file).
    ``progress(done, total)`` after each item; ``cancel()`` returning True stops before the next.
    See the module docstring for what refuses, skips and stops.
    """
    default = Status(status or Status.REVIEWED)
    if default is Status.UNLABELED:
        raise ValueError("an imported mask's status must be prelabeled, edited or reviewed")
    items = source.items
    target = _Target(folder, nested=any("/" in it.image_id for it in items))
    try:
        target.check_classes(source)
        report = ImportReport(folder=target.path)
        for n, item in enumerate(items):
            if cancel is not None and cancel():
                report.cancelled = True
                break
            try:
                ready = _prepare(source, item, target, default, overwrite)
            except SkipItem as exc:
                report.skipped.append((item.key, str(exc)))
            else:
                reason = _commit(target, ready, source, len(report.imported))
                if reason is None:
                    report.imported.append(item.image_id)
                    if item.note:
                        report.notes.append((item.key, item.note))
                else:
                    report.skipped.append((item.key, reason))
            if progress:
                progress(n + 1, len(items))
        if target.store is not None and report.imported:
            report.folder = target.store.folder
            target.store.scan()
        return report
    finally:
        target.close()
