"""The file name of each image's mask when masks are written as plain PNG files outside the store. No Qt.

``deeplab-gui prelabel --out DIR`` and the app's "Save elsewhere…" (export_unsaved.py) lay masks out the
same way, so a folder written by either reads the same: ``<image stem>.png`` in the image's own
sub-folder. Two images with one stem (``a.jpg``, ``a.png``) must not write one file: the later keeps
its whole name (``a.png.png``), and so on until the name is free. Names are compared without case,
as the folder may be on a case-insensitive volume (a USB stick, macOS, Windows).

Only the standard library at import time, so the command line's ``--help`` stays instant.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

__all__ = ["mask_file_names"]


def mask_file_names(image_ids: Iterable[str]) -> dict[str, str]:
    """Image id (a relative POSIX path, ``sub/a.jpg``) -> relative mask name (``sub/a.png``), unique
    over all of ``image_ids``; earlier ids get the plain ``<stem>.png``."""
    from engine import fitted_name  # both callers have the engine loaded already

    names: dict[str, str] = {}
    taken: set[str] = set()
    for image_id in image_ids:
        rel = PurePosixPath(image_id)
        name, whole = rel.with_suffix(".png"), rel.name
        while str(name).casefold() in taken:
            whole = fitted_name(whole, ".png")  # shortened with a hash should it grow too long
            name = rel.with_name(whole)
        taken.add(str(name).casefold())
        names[image_id] = str(name)
    return names
