"""Exporting a folder's annotation store to any format: the part every writer shares.

- :func:`export_ids`: which images an export writes (edited and reviewed, plus pre-labeled ones on
  request), every labelled image the store knows (not only those of the last scan), natural order.
- :func:`load_export_mask`: one image's mask as an export writes it, checked against the class list,
  with confirmed-only semantics: in an edited mask the pixels no person set (a pre-label's untouched
  ones) become void (255) so that training on the export does not learn the model's own guesses.
  Reviewed masks are always whole.  Problems with this image raise :class:`ExportSkip`.
- :func:`export_items`: both in one sequential iterator, each item carrying either its mask or the
  reason it is skipped (the mask's size checked against the image's header).
- :func:`run_export`: the loop a sequential writer needs (progress, cancel, skips, a write failure
  stopping the export with how far it got).
- :func:`check_out` / :func:`prepare_out`: refuse an output folder inside the image folder or its
  store (exported files would become images of the folder), create OUT's sub-folders and prove a
  file can be written there, before any image is read.  Both raise :class:`FormatError`.

A writer opens the store read-only when it is given a folder (so an export works while the app has it
open), writes every file atomically and returns an :class:`ExportReport`.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import one_line
from ..fileio import atomic_write_bytes, temp_path
from ..imageio import image_size, read_image
from ..labels import VOID
from ..store.format import Status
from ..store.store import AnnotationStore
from .common import FormatError, os_reason
from .voc_common import check_indices

__all__ = ["ExportItem", "ExportReport", "ExportSkip", "export_ids", "load_export_mask", "export_items",
           "check_out", "prepare_out", "open_source", "image_bytes", "write_file",
           "run_export"]

Progress = Callable[[int, int], None]


class ExportSkip(Exception):
    """One image cannot be exported; ``str`` is the reason (shown next to the image id)."""


@dataclass
class ExportReport:
    out: Path
    exported: list[str] = field(default_factory=list)             # the exported names (format's own ids)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image id, reason)
    cancelled: bool = False


@dataclass
class ExportItem:
    image_id: str
    status: Status
    image_path: Path
    mask: np.ndarray | None      # H×W uint8, confirmed-only applied; None when skipped
    skip: str | None = None      # why this image is not exported


def export_ids(store: AnnotationStore, *, include_prelabeled: bool = False) -> list[str]:
    """The image ids an export writes: edited and reviewed (plus pre-labeled on request)."""
    wanted = {Status.EDITED, Status.REVIEWED} | ({Status.PRELABELED} if include_prelabeled else set())
    # Every labelled image the store knows, not only those of the last scan (a sub-folder image stays
    # exportable when recursion is off); images deleted since are skipped with a reason.
    return [i for i in store.known_ids() if store.status(i) in wanted]


def load_export_mask(store: AnnotationStore, image_id: str, *, confirmed_only: bool = True,
                     size: tuple[int, int] | None = None) -> np.ndarray:
    """The mask of ``image_id`` as an export writes it; ``size``: the image's (H, W) to check against.

    Raises :class:`ExportSkip` when there is no mask, it does not fit the image, or it uses a class
    index beyond the class list.
    """
    try:
        mask = store.load_mask(image_id)
    except Exception as exc:  # any decoder failure of one file must not end an export of thousands
        raise ExportSkip(one_line(exc) or "unreadable mask") from None
    if mask is None:
        raise ExportSkip("no mask on disk")
    if size is not None and mask.shape != tuple(size):
        h, w = size
        raise ExportSkip(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")
    try:
        check_indices(mask, len(store.classes))
    except ValueError as exc:
        raise ExportSkip(str(exc)) from None
    if confirmed_only and store.status(image_id) is Status.EDITED:
        confirmed = store.load_confirmed(image_id)
        if confirmed is not None and confirmed.shape == mask.shape:
            mask = mask.copy()
            mask[~confirmed] = VOID
    return mask


def export_items(store: AnnotationStore, *, include_prelabeled: bool = False, confirmed_only: bool = True,
                 ids: Sequence[str] | None = None) -> Iterator[ExportItem]:
    """Each image to export (``ids``, default :func:`export_ids`) with its mask or its skip reason."""
    for image_id in (export_ids(store, include_prelabeled=include_prelabeled) if ids is None else ids):
        path = store.image_path(image_id)
        status = store.status(image_id)
        try:
            try:
                w, h = image_size(path)
            except Exception as exc:
                raise ExportSkip(one_line(exc) or f"{path}: unreadable image") from None
            mask = load_export_mask(store, image_id, confirmed_only=confirmed_only, size=(h, w))
        except ExportSkip as exc:
            yield ExportItem(image_id, status, path, None, str(exc))
        else:
            yield ExportItem(image_id, status, path, mask)


def open_source(source: AnnotationStore | str | os.PathLike) -> AnnotationStore:
    """The store to export: ``source`` itself, or the folder's store opened read-only (caller closes)."""
    return source if isinstance(source, AnnotationStore) else AnnotationStore.open(source, read_only=True)


def check_out(store: AnnotationStore, out: Path, writes: Sequence[str] = ()) -> None:
    """Refuse ``out`` inside the image folder or its store, or the image folder inside ``out/<writes>``."""
    real = Path(out).resolve()
    root = store.root.resolve()
    if real == root or real.is_relative_to(root):
        raise FormatError(f"cannot export into {out}: it is inside the image folder's store {root}; "
                          f"choose a folder outside the image folder")
    if real == store.folder or real.is_relative_to(store.folder):
        # Exported images and masks would become images of the folder itself.
        raise FormatError(f"cannot export into {out}: it is inside the image folder {store.folder}; "
                          f"choose a folder outside it")
    for sub in writes:
        if store.folder.is_relative_to(real / sub):
            raise FormatError(f"cannot export into {out}: the image folder {store.folder} is inside "
                              f"{real / sub}, where the export writes; choose another folder")


def prepare_out(out: Path, subdirs: Sequence[str] = ()) -> None:
    """Create OUT and its ``subdirs`` and prove a file can be written there, before any image is read."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FormatError(f"cannot export into {out}: it is a file, not a folder")
    for sub in (*subdirs, "") if subdirs else ("",):
        try:
            (out / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FormatError(f"cannot export into {out}: cannot create {out / sub} ({os_reason(exc)})") from None
    probe_dir = out / subdirs[0] if subdirs else out
    probe = temp_path(probe_dir / "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(probe)
    except OSError as exc:
        raise FormatError(f"cannot export into {out}: cannot write in {probe.parent} ({os_reason(exc)})") from None


_PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".bmp": "BMP",
                ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM", ".pnm": "PPM"}


def image_bytes(path: Path, suffix: str | None = None) -> bytes:
    """The bytes to write for the image at ``path`` as a file ending in ``suffix`` (default: its own).

    The file itself when any loader reads it as the mask was drawn on: the same format and no EXIF
    rotation (loaders differ on applying it).  Otherwise the decoded pixels (EXIF applied, as the app
    shows them), re-encoded: PNG losslessly, JPEG at quality 95.  Errors name the file (one line).
    """
    path = Path(path)
    want = (suffix or path.suffix).lower()
    fmt = _PIL_FORMATS.get(want, "PNG")
    try:
        with Image.open(path) as im:
            same = im.format == fmt and im.getexif().get(0x0112, 1) in (1, None)
    except Exception:  # unreadable here is decided (and reported) by the full decode below
        same = False
    if same:
        return path.read_bytes()
    rgb = read_image(path)
    buf = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(rgb).save(buf, format=fmt, **options)
    return buf.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically, creating parent folders; a failure raises :class:`FormatError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise FormatError(f"could not write {path}: {os_reason(exc)}") from None


def run_export(store: AnnotationStore, out: Path, write_one: Callable[[ExportItem], str], *,
               include_prelabeled: bool = False, confirmed_only: bool = True,
               progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
               ids: Sequence[str] | None = None) -> ExportReport:
    """Call ``write_one(item)`` for each image to export; it returns the name it exported as.

    ``write_one`` raises :class:`ExportSkip` to skip its image (with the reason) and
    :class:`FormatError` to stop (a write that failed would fail for every image after it).
    """
    todo = export_ids(store, include_prelabeled=include_prelabeled) if ids is None else list(ids)
    report = ExportReport(out=Path(out))
    for n, item in enumerate(export_items(store, confirmed_only=confirmed_only, ids=todo)):
        if cancel is not None and cancel():
            report.cancelled = True
            break
        if item.skip is not None:
            report.skipped.append((item.image_id, item.skip))
        else:
            try:
                report.exported.append(write_one(item))
            except ExportSkip as exc:
                report.skipped.append((item.image_id, str(exc)))
            except FormatError as exc:
                raise FormatError(f"{exc}; the export stopped after {len(report.exported)} image(s) and {out} "
                                  f"is incomplete") from None
        if progress:
            progress(n + 1, len(todo))
    return report
