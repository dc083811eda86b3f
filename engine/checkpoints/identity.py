"""The one identity of a weights file: what the probability cache, the app, the CLI and the trainer use
to tell whether two things came from the same weights.

It is the file's content (SHA-256), not its name or time stamp, so the same weights under another name
or copied to another machine share cached probabilities, and a file retrained under the same name
does not serve stale ones.  Hashing reads the whole file once per process; later calls for an
unchanged file (same path, size and modification time) are answered from memory.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from ..fileio import sha256_of

__all__ = ["checkpoint_id"]

_MEMO: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def checkpoint_id(path: str | os.PathLike) -> str:
    """``"sha256:<16 hex digits>"`` of the file's bytes.  Raises ``OSError`` when it cannot be read."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _LOCK:
        hit = _MEMO.get(key)
    if hit is not None:
        return hit
    ident = "sha256:" + sha256_of(p)[:16]
    with _LOCK:
        _MEMO[key] = ident
    return ident
