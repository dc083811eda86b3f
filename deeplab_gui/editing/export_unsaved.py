"""Save masks that could not reach the store into a folder the person picks. No Qt.

When the store refuses to write (a read-only folder, a full disk), closing the window must not be the
end of the work: the masks go to another folder, laid out like ``deeplab-gui prelabel --out`` writes
them (``<image stem>.png``, P-mode, class indices, the folder's colours, 255 void; names from
:mod:`~deeplab_gui.mask_names`) plus ``class_names.txt`` (one name per line, in index order, as the VOC
export writes it), so they can be imported or copied back later.

A rescue must never cost the person other files: the folder picked is refused when it is the image
folder, lies inside it or inside the annotation store, and nothing already in it is ever replaced (a
``class_names.txt`` holding exactly these names is left as it is). Every check runs before the first
write, so a refusal writes nothing; every file is written atomically, so a failure leaves old files
or none.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engine import atomic_write_bytes, one_line, save_mask_png

from .mask_names import mask_file_names

__all__ = ["CLASSES_FILE", "ExportError", "ExportRefused", "export_masks", "mask_file_names"]

CLASSES_FILE = "class_names.txt"


class ExportError(OSError):
    """The masks could not all be written; ``str(err)`` is one line naming the file and the problem."""


class ExportRefused(ExportError):
    """The folder was refused before anything was written (it would put other files at risk)."""


def _reason(exc: OSError) -> str:
    return one_line(exc.strerror or exc)


def _key(path: Path) -> Path:
    return Path(os.path.normcase(str(path)))


def _within(path: Path, folder: Path) -> bool:
    p, f = _key(path), _key(folder)
    return p == f or f in p.parents


def _check(root: Path, paths: Sequence[Path], classes_text: bytes,
           keep_out: Sequence[tuple[str | os.PathLike, str]]) -> bool:
    """Raise :class:`ExportRefused` when writing ``paths`` (masks, then the class names) under ``root``
    would touch a protected folder or replace a file; returns whether the class names need writing."""
    for folder, what in keep_out:
        f = Path(folder).resolve()
        if _within(root, f):
            where = f"is {what}" if _key(root) == _key(f) else f"is inside {what} ({f})"
            raise ExportRefused(f"{root}: {where}; pick a folder outside it (nothing was written)")
        clash = next((p for p in paths if _within(p.resolve(), f)), None)  # sub-folders may be links
        if clash is not None:
            raise ExportRefused(f"{clash}: would be inside {what} ({f}); pick another folder (nothing was written)")
    for path in paths[:-1]:
        rel = path.relative_to(root)
        for sub in reversed(rel.parents[:-1]):  # the mask's sub-folders, outermost first
            if os.path.lexists(root / sub) and not (root / sub).is_dir():
                raise ExportRefused(f"{root / sub}: is a file, not a folder for the masks; pick an empty or "
                                    f"new folder (nothing was written)")
        if os.path.lexists(path):
            raise ExportRefused(f"{path}: already exists, and Save elsewhere never replaces a file; pick an "
                                f"empty or new folder (nothing was written)")
    names = paths[-1]
    if not os.path.lexists(names):
        return True
    try:
        same = names.is_file() and names.read_bytes() == classes_text
    except OSError:
        same = False
    if not same:
        raise ExportRefused(f"{names}: already exists with other class names; pick an empty or new folder "
                            f"(nothing was written)")
    return False


def export_masks(folder: str | os.PathLike, masks: Mapping[str, np.ndarray], class_names: Sequence[str],
                 class_colors: Sequence[Sequence[int]], *,
                 keep_out: Sequence[tuple[str | os.PathLike, str]] = ()) -> list[Path]:
    """Write each ``masks[image_id]`` (H×W uint8) under ``folder`` and the class names beside them;
    returns the mask paths. ``keep_out``: ``(folder, what it is)`` pairs the masks must stay out of
    (the image folder, its store). Raises :class:`ExportRefused` before writing anything when the
    folder is refused or a file would be replaced, :class:`ExportError` at the first file that cannot
    be written."""
    root = Path(folder).expanduser().resolve()
    names = mask_file_names(list(masks))
    targets = {image_id: root / name for image_id, name in names.items()}
    classes_text = "".join(f"{n}\n" for n in class_names).encode("utf-8")
    write_classes = _check(root, [*targets.values(), root / CLASSES_FILE], classes_text, keep_out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{root}: cannot create the folder ({_reason(exc)})") from None
    colors = [tuple(int(v) for v in c) for c in class_colors][:255]
    written: list[Path] = []
    for image_id, path in targets.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_mask_png(path, masks[image_id], colors)
        except OSError as exc:
            raise ExportError(f"{path}: cannot write the mask ({_reason(exc)})") from None
        except ValueError as exc:
            raise ExportError(f"{path}: cannot write the mask ({exc})") from None
        written.append(path)
    path = root / CLASSES_FILE
    try:
        if write_classes:
            atomic_write_bytes(path, classes_text)
    except OSError as exc:
        raise ExportError(f"{path}: cannot write the class names ({_reason(exc)})") from None
    return written
