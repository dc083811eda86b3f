"""Save masks that could not reach the store into a folder the person picks. No Qt.

When the store refuses to write (a read-only folder, a full disk), closing the window must not be the
end of the work: the masks go to another folder, laid out like ``deeplab-gui prelabel --out`` writes
them (``<image stem>.png``, P-mode, class indices, the folder's colours, 255 void) plus
``class_names.txt`` (one name per line, in index order, as the VOC export writes it), so they can be
imported or copied back later. Every file is written atomically: a failure leaves old files or none.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from engine.fileio import atomic_write_bytes
from engine.labels import save_mask_png

__all__ = ["CLASSES_FILE", "ExportError", "export_masks", "mask_file_names"]

CLASSES_FILE = "class_names.txt"


class ExportError(OSError):
    """The masks could not all be written; ``str(err)`` is one line naming the file and the problem."""


def mask_file_names(image_ids: Sequence[str]) -> dict[str, str]:
    """Image id -> relative output name: ``<stem>.png``, beside the sub-folders of ids that have them.
    Two ids with one stem (``a.jpg``, ``a.png``) must not overwrite each other: the later keeps its
    whole file name (``a.png.png``)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for image_id in image_ids:
        rel = PurePosixPath(image_id)
        name = str(rel.with_suffix(".png"))
        if os.path.normcase(name) in taken:
            name = str(rel.with_name(rel.name + ".png"))
        taken.add(os.path.normcase(name))
        names[image_id] = name
    return names


def _reason(exc: OSError) -> str:
    return " ".join((exc.strerror or str(exc)).split())


def export_masks(folder: str | os.PathLike, masks: Mapping[str, np.ndarray], class_names: Sequence[str],
                 class_colors: Sequence[Sequence[int]]) -> list[Path]:
    """Write each ``masks[image_id]`` (H×W uint8) under ``folder`` and the class names beside them;
    returns the mask paths. Raises :class:`ExportError` at the first file that cannot be written."""
    root = Path(folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{root}: cannot create the folder ({_reason(exc)})") from None
    colors = [tuple(int(v) for v in c) for c in class_colors][:255]
    written: list[Path] = []
    for image_id, name in mask_file_names(list(masks)).items():
        path = root / name
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
        atomic_write_bytes(path, "".join(f"{n}\n" for n in class_names).encode("utf-8"))
    except OSError as exc:
        raise ExportError(f"{path}: cannot write the class names ({_reason(exc)})") from None
    return written
