"""PASCAL VOC import into an annotation store (the layout is described in :mod:`engine.voc`).

What refuses the whole import, before anything in the folder is touched (a :class:`VOCError`
naming the file and the problem):

- VOCROOT is no VOC dataset (no ``SegmentationClass`` folder);
- the class list cannot be used: ``deeplab-gui.json`` or ``class_names.txt`` unreadable, not UTF-8
  or malformed, no classes or more than 255, a class without a name, a malformed colour, a name twice;
- the split files cannot be read (not UTF-8, the ``split`` asked for is missing) or list nothing;
- the folder already holds masks drawn with a class list that the dataset's does not extend.

What skips one image with a reason naming the file, while the rest is imported: an id that cannot be a
file name, a missing image or mask, an unreadable image or mask, a mask of the wrong size or mode, a
class index beyond the class list, a colour that is no class colour, a different file of the same
name already in the folder, a person's mask already there (unless ``overwrite``).

What stops the import part way: a failed write into the folder or its store (disk full, read-only).
Every image imported until then is complete; the one being written is rolled back.

Nothing is half-done: an image is copied into the folder only after its mask passed every check, and
the folder's store is opened for writing (and its class list changed) only when the first image is
accepted, so an import that accepts nothing leaves the folder as it was.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import one_line
from ..fileio import atomic_write_bytes
from ..imageio import read_image
from ..store.format import PROTECTED, LabelClass, MaskError, Status, StoreError
from ..store.store import AnnotationStore
from .voc_common import VOCError, check_indices, os_reason, rgb_mask_to_indices
from .voc_dataset import VOCDataset, read_voc_dataset

__all__ = ["ImportReport", "import_voc"]

Progress = Callable[[int, int], None]


@dataclass
class ImportReport:
    folder: Path
    imported: list[str] = field(default_factory=list)           # image ids given a mask
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (VOC id, reason naming the file)
    cancelled: bool = False


@dataclass
class _Item:
    vid: str
    image_id: str
    data: bytes | None                 # image bytes to copy; None when the folder already has them
    mask: np.ndarray
    status: Status


# ---------------------------------------------------------------------------- the destination
def _class_clash(old: list[LabelClass], new: list[LabelClass]) -> str | None:
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
            raise VOCError(f"{self.path}: the annotation store is open read-only; nothing can be imported")
        if self.given is None and (self.path.exists() or self.path.is_symlink()):
            if not self.path.is_dir():
                raise VOCError(f"{self.path}: not a folder")
            try:
                self.view = AnnotationStore.open(self.path, read_only=True, scan=False)
            except (StoreError, OSError) as exc:
                raise VOCError(f"{self.path}: cannot read its annotation store ({one_line(exc)})") from None

    def status(self, image_id: str) -> Status:
        return self.view.status(image_id) if self.view is not None else Status.UNLABELED

    def check_classes(self, ds: VOCDataset) -> None:
        if self.view is None or not self.view.known_ids():
            return
        why = _class_clash(self.view.classes, ds.classes)
        if why:
            raise VOCError(f"{self.path} already has masks drawn with its own {len(self.view.classes)}-class "
                           f"list; the dataset's class list ({ds.classes_from}) {why}: import into a new "
                           f"folder instead")

    def writable(self, ds: VOCDataset) -> AnnotationStore:
        if self.store is None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VOCError(f"cannot create {self.path}: {os_reason(exc)}") from None
            if self.view is not None:
                self.view.close()
                self.view = None
            try:
                store = AnnotationStore.open(self.path, scan=False, recursive=True if self.nested else None)
            except (StoreError, OSError) as exc:  # StoreLockedError goes up as it is: it says who holds it
                raise VOCError(f"{self.path}: cannot open the annotation store ({one_line(exc)})") from None
            self.store = self.view = store
            self.check_classes(ds)  # again: the store may have changed since it was looked at
        return self.store

    def close(self) -> None:
        if self.given is None:
            for st in {id(s): s for s in (self.view, self.store) if s is not None}.values():
                st.close()


# ---------------------------------------------------------------------------- one image
class _Skip(Exception):
    pass


def _vid_problem(vid: str) -> str | None:
    if "/" in vid or "\\" in vid:
        return "contains a path separator"
    if vid.startswith("."):
        return "starts with a dot (the image would be a hidden file)"
    if any(ord(ch) < 32 for ch in vid):
        return "contains control characters"
    try:
        vid.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is no valid text: the folder scan would not list it
        return "is not valid text"
    return None


def _read_mask(path: Path, colors: list[tuple[int, int, int]]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if im.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit greyscale indices, as some tools write
                a = np.array(im)
                if a.size and (a.min() < 0 or a.max() > 255):
                    raise _Skip(f"{path}: 16-bit mask with values up to {int(a.max())}; class indices are "
                                f"0..254 and 255 void")
                return a.astype(np.uint8)
            if im.mode not in ("RGB", "RGBA"):
                raise _Skip(f"{path}: mask mode {im.mode} is neither class indices (P, L) nor colours (RGB)")
            rgb = np.asarray(im.convert("RGB"))
    except _Skip:
        raise
    except Exception as exc:  # whatever the decoder says about one broken file, the rest goes on
        raise _Skip(f"{path}: unreadable mask ({one_line(exc) or 'corrupt file'})") from None
    try:
        return rgb_mask_to_indices(rgb, colors)
    except ValueError as exc:
        raise _Skip(f"{path}: {exc}") from None


def _prepare(ds: VOCDataset, vid: str, target: _Target, default: Status, overwrite: bool) -> _Item:
    """Every check of one image, nothing written; raises :class:`_Skip` with the reason."""
    problem = _vid_problem(vid)
    if problem:
        raise _Skip(f"{ds.listed_in[vid]}: the id {vid!r} {problem}")
    entry = ds.images.get(vid, {})
    image_id = entry.get("id") or f"{vid}.jpg"
    src = ds.root / "JPEGImages" / f"{vid}.jpg"
    mask_path = ds.root / "SegmentationClass" / f"{vid}.png"
    if not src.is_file():
        raise _Skip(f"{src}: no image for this id")
    if not mask_path.is_file():
        raise _Skip(f"{mask_path}: no mask for this id")
    dst = target.path / image_id
    if not overwrite and target.status(image_id) in PROTECTED:
        raise _Skip(f"{dst}: already has an edited or reviewed mask (overwrite replaces it)")
    mask = _read_mask(mask_path, [c.color for c in ds.classes])
    try:  # a full decode: an image that cannot be read must not be imported
        h, w = read_image(src).shape[:2]
    except Exception as exc:
        raise _Skip(one_line(exc) if str(src) in str(exc) else f"{src}: unreadable image ({one_line(exc)})") \
            from None
    if mask.shape != (h, w):
        raise _Skip(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")
    try:
        check_indices(mask, len(ds.classes))
    except ValueError as exc:
        raise _Skip(f"{mask_path}: {exc} (class list: {ds.classes_from})") from None
    try:
        data: bytes | None = src.read_bytes()
        if dst.exists() or dst.is_symlink():
            if not dst.is_file():
                raise _Skip(f"{dst}: something other than a file is in the way")
            if dst.stat().st_size != len(data) or dst.read_bytes() != data:
                raise _Skip(f"{dst}: already exists in the folder with different content")
            data = None
    except OSError as exc:
        raise _Skip(f"{exc.filename or src}: cannot read ({os_reason(exc)})") from None
    return _Item(vid, image_id, data, mask, Status(entry.get("status") or default))


def _commit(target: _Target, item: _Item, ds: VOCDataset, done: int) -> str | None:
    """Write one checked image: copy, class list (first time), mask.  Returns a skip reason, or None.

    A failed write undoes this image's own steps and raises :class:`VOCError`: it would fail for every
    image after it too.
    """
    store = target.writable(ds)
    dst = store.folder / item.image_id
    made: list[Path] = []
    old_classes = None
    try:
        try:
            if item.data is not None:
                made = _make_parents(dst.parent)
                atomic_write_bytes(dst, item.data)
        except OSError as exc:
            raise VOCError(f"could not write {dst}: {os_reason(exc)}") from None
        if store.classes != ds.classes:
            old_classes = store.classes
            store.set_classes(ds.classes, allow_shrink=not store.known_ids())
        if item.status is Status.PRELABELED:
            store.save_prediction(item.image_id, item.mask, overwrite=True)
        else:
            store.save_mask(item.image_id, item.mask, status=item.status)
        return None
    except (VOCError, StoreError, OSError) as exc:
        _undo(store, dst if item.data is not None else None, made, old_classes)
        if isinstance(exc, MaskError):  # the store saw a problem the checks above missed: this image only
            return f"{ds.root / 'SegmentationClass' / (item.vid + '.png')}: {one_line(exc)}"
        raise VOCError(f"{one_line(exc)}; the import stopped after {done} image(s), nothing of {item.vid} "
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
def import_voc(voc_root: str | os.PathLike, folder: str | os.PathLike | AnnotationStore, *,
               split: str | None = None, status: Status | str | None = None, overwrite: bool = False,
               progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> ImportReport:
    """Import a VOC-layout dataset: copy images into ``folder`` and masks into its store.

    Ids come from ``ImageSets/Segmentation/<split>.txt`` (all split files when ``split`` is None, all
    ``SegmentationClass/*.png`` when there are none).  Masks may be P-mode/greyscale indices or
    RGB colour-coded (mapped through the class colours; VOC void colour and white become 255).
    Classes come from ``deeplab-gui.json``, else ``class_names.txt``, else VOC's 21.  Status: from
    ``deeplab-gui.json``, else ``status`` (default ``reviewed``: a dataset's masks are ground truth).
    An image whose store mask is edited/reviewed is skipped unless ``overwrite``; an image file of
    the same name with different content is never replaced.  See the module docstring for what
    refuses the import (:class:`VOCError`, nothing touched), what skips one image (listed in the
    report's ``skipped``) and what stops it part way (:class:`VOCError`).
    """
    default = Status(status or Status.REVIEWED)
    if default is Status.UNLABELED:
        raise ValueError("an imported mask's status must be prelabeled, edited or reviewed")
    ds = read_voc_dataset(Path(voc_root), split)
    target = _Target(folder, nested=any("/" in meta["id"] for meta in ds.images.values()))
    try:
        target.check_classes(ds)
        report = ImportReport(folder=target.path)
        for n, vid in enumerate(ds.ids):
            if cancel is not None and cancel():
                report.cancelled = True
                break
            try:
                item = _prepare(ds, vid, target, default, overwrite)
            except _Skip as exc:
                report.skipped.append((vid, str(exc)))
            else:
                reason = _commit(target, item, ds, len(report.imported))
                if reason is None:
                    report.imported.append(item.image_id)
                else:
                    report.skipped.append((vid, reason))
            if progress:
                progress(n + 1, len(ds.ids))
        if target.store is not None and report.imported:
            report.folder = target.store.folder
            target.store.scan()
        return report
    finally:
        target.close()
