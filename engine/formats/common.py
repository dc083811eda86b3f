"""What every label format shares: the error that stops an import or export, and file-error reasons.

Kept apart from the readers and writers so that each of them can use these without importing another.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

from ..errors import one_line
from ..store.format import StoreError

__all__ = ["FormatError", "os_reason", "read_json"]


class FormatError(StoreError):
    """An import or export that cannot go on; ``str(err)`` is one line naming the file and the problem."""


def os_reason(exc: BaseException) -> str:
    """A short, user-facing reason for a failed file operation (no errno numbers, no class names)."""
    if isinstance(exc, OSError):
        known = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the disk is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.ENOENT: "no such file or folder",
                 errno.ENOTDIR: "a part of the path is a file, not a folder",
                 errno.EEXIST: "a file of that name is in the way",
                 errno.EISDIR: "it is a folder, not a file", errno.ENAMETOOLONG: "the name is too long"}
        if exc.errno in known:
            return known[exc.errno]
        if exc.strerror:
            return exc.strerror[:1].lower() + exc.strerror[1:]
    return one_line(exc) or "unknown error"


def read_json(path: Path, error: type[Exception] = FormatError) -> Any:
    """The JSON document in ``path``; ``error`` (one line naming the file) when it cannot be read, is
    empty or is not JSON."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read ({os_reason(exc)})") from None
    if not data.strip():
        raise error(f"{path}: the file is empty")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({one_line(exc)})") from None
