"""Fetching one weights file over HTTP(S): streamed, hash-checked, atomic, cancellable.

The file is streamed to ``<name>.part`` next to its destination, checked (byte count against
Content-Length, SHA-256 against the expected prefix), fsynced and only then renamed into place; on
any failure the ``.part`` is removed.  So a file under its final name is always a complete one,
and an interrupted or corrupted transfer can never be mistaken for a good file later.
Progress goes to a plain ``callback(done_bytes, total_bytes_or_None)``; no UI here.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from ..cancel import cancel_check
from ..fileio import fsync_dir, sha256_of

__all__ = [
    "WeightsError",
    "WeightsUnavailable",
    "WeightsHashMismatch",
    "DownloadCancelled",
    "ProgressFn",
    "download_file",
    "sha256_of",
    "TqdmProgress",
]

ProgressFn = Callable[[int, "int | None"], None]
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """Base of every weights download / lookup failure."""


class WeightsUnavailable(WeightsError):
    """The file could not be fetched (offline, host unreachable, HTTP error, transfer cut short).
    The message says where to put the file by hand."""


class WeightsHashMismatch(WeightsError):
    """The bytes received (or found in place) do not have the expected SHA-256."""


class DownloadCancelled(WeightsError):
    """``cancel`` was set during the transfer; nothing was left behind."""


def download_file(url: str, dest: str | os.PathLike, *, sha256_prefix: str | None = None,
                  progress: ProgressFn | None = None, cancel: Any = None, timeout: float = 30.0,
                  chunk_size: int = _CHUNK, manual_hint: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest``.

    ``progress(done, total)``: called once before the first byte (done 0) and after every chunk;
    ``total`` is None when the server sends no Content-Length.  ``cancel``: a ``threading.Event``
    or a zero-argument callable, checked between chunks.  ``sha256_prefix``: the hex digest must
    start with it (torchvision's ``-<hex>.pth`` convention).  ``manual_hint`` is appended to
    :class:`WeightsUnavailable` messages.
    Raises WeightsUnavailable, WeightsHashMismatch or DownloadCancelled; ``dest`` is then
    untouched and no ``.part`` file remains.
    """
    dest = Path(dest)
    is_cancelled = cancel_check(cancel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hint = f" {manual_hint}" if manual_hint else ""

    def unavailable(reason: str) -> WeightsUnavailable:
        return WeightsUnavailable(f"could not download {url}: {reason}.{hint}")

    request = urllib.request.Request(url, headers={"User-Agent": "deeplab-gui"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise unavailable(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise unavailable(f"{e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise unavailable(f"{e}") from None

    ok = False
    try:
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest = hashlib.sha256()
            done = 0
            if progress:
                progress(0, total)
            with open(part, "wb") as out:
                while True:
                    if is_cancelled():
                        raise DownloadCancelled(f"download of {url} cancelled")
                    try:
                        block = response.read(chunk_size)
                    except (OSError, http.client.HTTPException, socket.timeout) as e:
                        # http.client raises IncompleteRead when the peer closes early
                        raise unavailable(f"transfer interrupted after {done} bytes ({type(e).__name__})") \
                            from None
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
                if total is not None and done != total:
                    raise unavailable(f"transfer interrupted: got {done} of {total} bytes")
                if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix.lower()):
                    raise WeightsHashMismatch(
                        f"{url}: downloaded file has SHA-256 {digest.hexdigest()[:16]}..., expected it to "
                        f"start with {sha256_prefix}; the file was discarded.{hint}")
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, dest)
            fsync_dir(dest.parent)
            ok = True
    finally:
        if not ok:
            part.unlink(missing_ok=True)
    return dest


class TqdmProgress:
    """A ``progress`` callback drawing a tqdm bar on stderr, for the CLI.  Call ``close()`` after."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self._bar = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
