"""Listing the images of a folder fast, without decoding any of them.

A user's folder may hold tens of thousands of files, some not images at all.  The scan only looks at
names and ``stat`` data (one ``os.scandir`` pass per directory), so 10,000 files take well under a
second; decoding problems surface later, per image, when :func:`engine.imageio.read_image` is called.

Image ids are the path relative to the folder, with ``/`` separators on every OS and the extension
kept (``"street/photo 12.jpg"``): unique (``a.jpg`` and ``a.png`` can sit side by side), stable across
machines, and readable.  Order is *natural* (``img2`` before ``img10``), case-insensitive.
"""
from __future__ import annotations

import os
import re
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..imageio import IMAGE_EXTENSIONS

__all__ = ["ImageEntry", "ScanResult", "scan_folder", "natural_key", "SIDECAR_NAME"]

# The annotation store's sidecar folder; hidden, so the scan skips it like every dot-folder.
SIDECAR_NAME = ".deeplab-gui"

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key: digit runs compare as numbers, the rest case-insensitively (``a2`` < ``A10``).

    Ties (``a01`` vs ``a1``, ``A`` vs ``a``) are broken by the raw text so the order is total.
    """
    parts = _DIGITS.split(text.casefold())
    # Even indices are text, odd are digit runs; (0, int) vs (1, str) would never compare across kinds
    # because the split always alternates, so each position holds one kind in every key.
    key = tuple(int(p) if i % 2 else p for i, p in enumerate(parts))
    return (key, text)


@dataclass(frozen=True)
class ImageEntry:
    """One image file found by a scan: its id, path and the ``stat`` data that signs its content."""

    id: str          # relative POSIX path with extension, e.g. "sub dir/img 1.jpg"
    path: Path       # absolute path
    size: int        # bytes
    mtime_ns: int


@dataclass
class ScanResult:
    """``images`` in natural order; ``skipped`` lists ``(relative path, reason)`` for files left out."""

    folder: Path
    images: list[ImageEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [e.id for e in self.images]

    def by_id(self) -> dict[str, ImageEntry]:
        return {e.id: e for e in self.images}


def scan_folder(folder: str | os.PathLike, *, recursive: bool = False,
                extensions: Iterable[str] = IMAGE_EXTENSIONS,
                cancel: Callable[[], bool] | None = None) -> ScanResult:
    """Find image files in ``folder`` by extension (case-insensitive), without opening them.

    Hidden files and folders (name starting with ``.``, which includes the store's ``.deeplab-gui``)
    are skipped.  Symlinked folders are followed when ``recursive`` but each real directory is visited
    once, so a link loop cannot hang the scan.  Empty files and names that are not valid text on this
    OS (undecodable bytes) go to ``skipped`` with a reason instead of the image list.
    ``cancel``: polled once per directory; when it returns True the partial result is returned.
    Raises ``NotADirectoryError``/``FileNotFoundError`` only for ``folder`` itself.
    """
    root = Path(folder).absolute()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    result = ScanResult(folder=root)
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(str(root), "")]  # (absolute dir, relative prefix with "/")
    while stack:
        if cancel is not None and cancel():
            break
        abs_dir, prefix = stack.pop()
        try:
            st = os.stat(abs_dir)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as exc:
            if prefix == "":
                raise
            result.skipped.append((prefix.rstrip("/"), f"folder not readable ({exc.strerror})"))
            continue
        for de in entries:
            name = de.name
            if name.startswith("."):
                continue
            rel = prefix + name
            try:
                if de.is_dir():  # follows symlinks; loops are cut by seen_dirs
                    if recursive:
                        stack.append((de.path, rel + "/"))
                    continue
                if os.path.splitext(name)[1].lower() not in exts:
                    continue
                st = de.stat()
            except OSError as exc:  # dangling symlink, permission, file vanished mid-scan
                if os.path.splitext(name)[1].lower() in exts:
                    result.skipped.append((_printable(rel), f"cannot stat ({exc.strerror})"))
                continue
            if not stat_mod.S_ISREG(st.st_mode):
                continue
            if not _is_text(rel):
                result.skipped.append((_printable(rel), "file name is not valid text on this system"))
                continue
            if st.st_size == 0:
                result.skipped.append((rel, "empty file (0 bytes)"))
                continue
            result.images.append(ImageEntry(rel, Path(de.path), st.st_size, st.st_mtime_ns))
    result.images.sort(key=lambda e: natural_key(e.id))
    result.skipped.sort(key=lambda s: natural_key(s[0]))
    return result


def _is_text(name: str) -> bool:
    # On POSIX, undecodable bytes arrive as lone surrogates (PEP 383); such ids cannot be stored as
    # UTF-8 text in the store or written into a VOC split file.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
