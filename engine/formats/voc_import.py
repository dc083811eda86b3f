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

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import one_line
from ..store.format import Status
from ..store.store import AnnotationStore
from .importer import FormatError, ImportReport, ImportSource, SkipItem, SourceItem, import_source
from .voc_common import VOCError, rgb_mask_to_indices
from .voc_dataset import VOCDataset, read_voc_dataset

__all__ = ["ImportReport", "import_voc", "voc_source"]

Progress = Callable[[int, int], None]


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
                    raise SkipItem(f"{path}: 16-bit mask with values up to {int(a.max())}; class indices are "
                                   f"0..254 and 255 void")
                return a.astype(np.uint8)
            if im.mode not in ("RGB", "RGBA"):
                raise SkipItem(f"{path}: mask mode {im.mode} is neither class indices (P, L) nor colours (RGB)")
            rgb = np.asarray(im.convert("RGB"))
    except SkipItem:
        raise
    except Exception as exc:  # whatever the decoder says about one broken file, the rest goes on
        raise SkipItem(f"{path}: unreadable mask ({one_line(exc) or 'corrupt file'})") from None
    try:
        return rgb_mask_to_indices(rgb, colors)
    except ValueError as exc:
        raise SkipItem(f"{path}: {exc}") from None


def _item(ds: VOCDataset, vid: str) -> SourceItem:
    entry = ds.images.get(vid, {})
    src = ds.root / "JPEGImages" / f"{vid}.jpg"
    mask_path = ds.root / "SegmentationClass" / f"{vid}.png"
    colors = [c.color for c in ds.classes]
    problem = _vid_problem(vid)
    if problem:
        problem = f"{ds.listed_in[vid]}: the id {vid!r} {problem}"
    elif not src.is_file():
        problem = f"{src}: no image for this id"
    elif not mask_path.is_file():
        problem = f"{mask_path}: no mask for this id"
    status = Status(entry["status"]) if entry.get("status") else None
    return SourceItem(key=vid, image_id=entry.get("id") or f"{vid}.jpg", image=src,
                      mask=lambda h, w: _read_mask(mask_path, colors), status=status, origin=mask_path,
                      problem=problem)


def voc_source(voc_root: str | os.PathLike, *, split: str | None = None) -> ImportSource:
    """A VOC dataset as an :class:`ImportSource` (refusals as :func:`import_voc`); nothing is written."""
    ds = read_voc_dataset(Path(voc_root), split)
    return ImportSource(root=ds.root, classes=ds.classes, classes_from=ds.classes_from,
                        items=[_item(ds, vid) for vid in ds.ids])


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
    if Status(status or Status.REVIEWED) is Status.UNLABELED:
        raise ValueError("an imported mask's status must be prelabeled, edited or reviewed")
    source = voc_source(voc_root, split=split)
    try:
        return import_source(source, folder, status=status, overwrite=overwrite, progress=progress,
                             cancel=cancel)
    except VOCError:
        raise
    except FormatError as exc:  # the shared importer's refusals keep the VOC error type callers expect
        raise VOCError(str(exc)) from None
