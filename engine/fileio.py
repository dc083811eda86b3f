"""Durable file writes: temp file in the same folder, fsync, rename, fsync the folder.

A crash, kill or power cut at any moment leaves the old or the new version of a file, never half
of one.  Every writer of the engine (masks, store, checkpoints, downloads, VOC export) uses these.

Names: a file system allows at most :data:`NAME_MAX` bytes per name, and a person's image may already
use most of them.  Temporary names are shortened to fit (:func:`temp_path`), and files the store keeps
per image use :func:`fitted_name`, which keeps short names as they are and turns long ones into a
readable prefix plus a hash of the whole name.

Permissions: new files get ``0666`` minus the process umask, as any other program's files would; a
file that is replaced keeps its mode.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write_bytes", "atomic_output", "fsync_dir", "temp_path", "fitted_name", "NAME_MAX",
           "TEMP_SUFFIX", "is_temp_name", "sha256_of", "set_aside"]

NAME_MAX = 255          # bytes per file name on ext4, XFS, btrfs, APFS, NTFS (as UTF-16 units) ...
TEMP_SUFFIX = ".tmp"    # temp names are ".<name or its prefix>.<8 hex>.tmp"
_HASH_LEN = 16


def _fit_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``limit`` bytes (never splits a character)."""
    raw = os.fsencode(text)
    if len(raw) <= limit:
        return text
    return raw[:max(limit, 0)].decode("utf-8", errors="ignore")


def fitted_name(name: str, suffix: str = "") -> str:
    """``name + suffix`` when it fits in one file name, else a shortened prefix, ``~``, a hash, ``suffix``.

    Deterministic (the same name always maps to the same file); every name that fits is kept as it
    is, so files written before shortening existed are found again.  ``name`` is one path component.
    """
    full = name + suffix
    if len(os.fsencode(full)) <= NAME_MAX:
        return full
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:_HASH_LEN]
    room = NAME_MAX - len(os.fsencode(suffix)) - 1 - _HASH_LEN
    return f"{_fit_bytes(name, room)}~{digest}{suffix}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` looks like a temp file of :func:`temp_path` (safe to delete under the store lock)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp file name next to ``path`` that fits in :data:`NAME_MAX` bytes."""
    path = Path(path)
    tail = f".{secrets.token_hex(4)}{TEMP_SUFFIX}"
    head = _fit_bytes(path.name, NAME_MAX - 1 - len(tail))
    return path.with_name(f".{head}{tail}")


def _existing_mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create and open (write-only, exclusive) a temp file next to ``path``.

    Created ``0o666`` through the umask, as a file created directly would be; the final mode is set
    only after writing (a read-only original would otherwise make the temp file unwritable).
    """
    for _ in range(100):
        tmp = temp_path(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a temporary file")


def _discard(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on normal exit fsync it and rename it to ``path``.

    For writers that need a file name rather than bytes (safetensors, zip).  On any error the temp
    file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        mode = _existing_mode(path)
        if mode is None:
            mode = os.fstat(fd).st_mode & 0o7777
    finally:
        os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # fsync needs no write access
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)  # also undoes writers that replace the file with one of their own (safetensors: 0600)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then ``os.replace``.

    A replaced file keeps its mode; a new one gets ``0o666`` minus the umask.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        mode = _existing_mode(path)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    fsync_dir(path.parent)


def set_aside(path: str | os.PathLike, tag: str, companions: tuple[str, ...] = ()) -> str:
    """Rename a damaged file to ``<name>.<tag>-<time>`` (``-2``, ``-3``... within the same second), kept
    for inspection; files named ``<name><companion>`` move alongside.  Returns the new name."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = f"{path.name}.{tag}-{stamp}", 1
    while any(path.with_name(aside + c).exists() for c in ("", *companions)):
        n += 1
        aside = f"{path.name}.{tag}-{stamp}-{n}"
    for c in ("", *companions):
        p = Path(str(path) + c)
        if p.exists():
            os.replace(p, path.with_name(aside + c))
    return aside


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
