"""A lock file that tells a second deeplab-gui instance the folder is already open.

Two instances writing the same store would each autosave over the other's masks.  The lock is an
OS advisory lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) held on ``<store>/lock``
for as long as the store is open.  The kernel drops it when the holder dies, however it dies
(SIGKILL, power loss, crash), so a stale lock cannot block the user.  The file also records the
holder's pid, host and start time so the refusal can say who holds it.

Some network file systems refuse advisory locks (``ENOLCK``/``EOPNOTSUPP``).  There the fallback is an
exclusive-create lock file (``O_CREAT | O_EXCL``) with the same pid record; a record left by a
process that no longer runs on this host is stale and is taken over.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

__all__ = ["InstanceLock", "StoreLockedError"]

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


class StoreLockedError(RuntimeError):
    """The store is open in another instance; ``holder`` has its pid/host/started record if known."""

    def __init__(self, path: Path, holder: dict, label: str | None = None) -> None:
        self.path = path
        self.holder = holder
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
               f"{holder.get('started', '?')}") if holder else "another process"
        super().__init__(f"{label or path.parent} is already open in another deeplab-gui ({who}); close it there "
                         f"or open this folder read-only")


class InstanceLock:
    """Exclusive, non-blocking lock on ``path``; :meth:`acquire` raises :class:`StoreLockedError`."""

    def __init__(self, path: str | os.PathLike, label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label  # what the refusal message calls the locked thing (default: the folder)
        self._fd: int | None = None
        self._excl_path: Path | None = None  # set when the O_EXCL fallback is in use

    @property
    def held(self) -> bool:
        return self._fd is not None or self._excl_path is not None

    def acquire(self) -> None:
        if self.held:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except BlockingIOError:
            holder = _read_record(self.path)
            os.close(fd)
            raise StoreLockedError(self.path, holder, self.label) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                self._acquire_excl()
                return
            raise
        self._fd = fd
        record = json.dumps(_record()).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0) if hasattr(os, "pwrite") else os.write(fd, record)
        except OSError:
            pass  # the lock itself holds; the record is only for the message

    def _acquire_excl(self) -> None:
        path = self.path.with_name(self.path.name + ".pid")
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_record(path)
                if holder and _is_stale(holder):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    continue
                raise StoreLockedError(path, holder, self.label) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(_record(), fh)
            self._excl_path = path
            return
        raise StoreLockedError(path, _read_record(path), self.label)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing drops the flock
        if self._excl_path is not None:
            path, self._excl_path = self._excl_path, None
            try:
                os.unlink(path)
            except OSError:
                pass

    def __enter__(self) -> "InstanceLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError(errno.EAGAIN, "locked") from None


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_stale(holder: dict) -> bool:
    """A pid record is stale when it names this host and that pid no longer exists."""
    if holder.get("host") != socket.gethostname():
        return False  # cannot check another machine's processes: assume it is alive
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # exists, owned by someone else
    return False
