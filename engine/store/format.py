"""The store's on-disk formats and vocabulary: status values, class list JSON, the sqlite database.

Kept apart from :mod:`engine.store` (the behaviour) so the formats documented in the README's "Annotation store" section
can be read in one place.  Nothing here takes locks or decides policy.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sqlite3
from enum import Enum
from pathlib import Path
from typing import Sequence

from ..fileio import atomic_write_bytes, fitted_name, is_temp_name, set_aside
from ..labels import LabelClass, default_classes
from .scan import SIDECAR_NAME

__all__ = [
    "Status", "PROTECTED", "LabelClass", "default_classes", "check_classes", "classes_to_json",
    "classes_from_json", "StoreError", "StoreWriteError", "MaskError", "write_error", "check_id",
    "open_db", "open_db_readonly", "SCHEMA_VERSION", "locate_store", "user_store_root", "load_classes_file",
    "remove_orphan_temps", "sidecar_path", "sidecar_ids", "DB_MISSING", "DB_EMPTY", "EFFORT_TABLE", "PRELABELS_TABLE",
]

SCHEMA_VERSION = 1
# Per-image work a person put in (see engine.store.effort).  Created by every writable open, so a
# database written before the table existed gains it without touching anything else; older versions
# of the app simply ignore it.  ``actions``: JSON {tool: count}; ``accepted``/``edited``/``first``/
# ``updated``: wall-clock seconds (``accepted`` NULL while the image was never accepted).
EFFORT_TABLE = ("CREATE TABLE IF NOT EXISTS effort(id TEXT PRIMARY KEY, seconds REAL NOT NULL, "
                "actions TEXT NOT NULL, accepted REAL, version TEXT, edited REAL, first REAL NOT NULL, "
                "updated REAL NOT NULL)")

# What each pre-label was made from, so a rerun can tell it is done without the probability cache
# (whose byte budget evicts most entries of a large folder). ``tag``: JSON {"model_id", "variant"
# ("crf" when the CRF refined it, else ""), "image": the image file's size and mtime when the mask
# was written, "mask": the mask file's}; a mask rewritten since (a person's save, another model's
# run cut short) no longer matches.
PRELABELS_TABLE = "CREATE TABLE IF NOT EXISTS prelabels(id TEXT PRIMARY KEY, tag TEXT NOT NULL)"


class Status(str, Enum):
    UNLABELED = "unlabeled"
    PRELABELED = "prelabeled"   # mask came from a model (maybe CRF-refined); nobody touched it
    EDITED = "edited"           # a person changed the mask
    REVIEWED = "reviewed"       # a person accepted the mask as final


# Masks in these states are a person's work: predictions never replace them unless asked to.
PROTECTED = frozenset({Status.EDITED, Status.REVIEWED})


class StoreError(Exception):
    """Anything the store refuses or fails to do; ``str(err)`` is a sentence for the user."""


class StoreWriteError(StoreError, OSError):
    """A write failed (disk full, permissions, I/O error); the previous version on disk is intact."""


class MaskError(StoreError, ValueError):
    """A mask that does not fit its image or the class list; nothing was written."""


# errno -> (what went wrong, what the person can do about it)
_WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free some space and save again"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space and save again"),
    errno.EROFS: ("the disk is read-only", "save elsewhere or remount it writable"),
    errno.EACCES: ("permission denied", "fix the folder's permissions and save again"),
    errno.EPERM: ("permission denied", "fix the folder's permissions and save again"),
    errno.ENAMETOOLONG: ("the file name is too long for the file system", "rename the image to a shorter name"),
}


def write_error(exc: OSError, what: str) -> StoreWriteError:
    """Turn an OSError from a write into a :class:`StoreWriteError` a user can act on."""
    reason, advice = _WRITE_ERRORS.get(exc.errno, (exc.strerror or str(exc), "fix the problem and save again"))
    err = StoreWriteError(f"could not save {what}: {reason}; the previous version on disk is kept, {advice}")
    err.errno = exc.errno
    return err


def check_id(image_id: str) -> str:
    """An image id is a relative POSIX path inside the folder; refuse anything that could escape it."""
    parts = image_id.split("/") if isinstance(image_id, str) else [""]
    if (not image_id or image_id.startswith("/") or "\\" in image_id or "\0" in image_id
            or any(p in ("", ".", "..") for p in parts) or parts[0].startswith(".")):
        raise StoreError(f"invalid image id {image_id!r}: must be a relative path inside the folder")
    return image_id


# ---------------------------------------------------------------------------- class list
def check_classes(classes: Sequence[LabelClass | tuple[str, Sequence[int]]]) -> list[LabelClass]:
    """Normalise and validate a class list: 1..255 entries, unique non-empty names, RGB colours."""
    out = []
    for c in classes:
        name, color = (c.name, c.color) if isinstance(c, LabelClass) else (c[0], c[1])
        color = tuple(int(v) for v in color)
        if len(color) != 3 or not all(0 <= v <= 255 for v in color):
            raise StoreError(f"class {name!r}: a colour must be three values in 0..255, got {color}")
        out.append(LabelClass(str(name).strip(), color))
    if not 1 <= len(out) <= 255:
        raise StoreError(f"a class list needs 1 to 255 classes (index 255 is void), got {len(out)}")
    names = [c.name for c in out]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise StoreError("class names must be non-empty and unique")
    return out


def classes_to_json(classes: Sequence[LabelClass]) -> str:
    return json.dumps({"format": 1, "classes": [{"name": c.name, "color": list(c.color)} for c in classes]},
                      ensure_ascii=False, indent=1)


def classes_from_json(text: str) -> list[LabelClass]:
    """Parse ``classes.json``; raises ``ValueError`` (or KeyError/TypeError) when it is malformed."""
    data = json.loads(text)
    try:
        return check_classes([(c["name"], c["color"]) for c in data["classes"]])
    except StoreError as exc:
        raise ValueError(str(exc)) from None


def load_classes_file(path: Path, backup: str | None, *, repair: bool) -> tuple[list[LabelClass], str | None]:
    """Read ``classes.json``; returns ``(classes, notice or None)``.

    Missing: the database's backup copy, else VOC's 21.  Unreadable: the same fallback, and with
    ``repair`` the damaged file is kept as ``classes.json.damaged-<time>`` and the backup written back.
    """
    fallback = classes_from_json(backup) if backup else default_classes()
    try:
        return classes_from_json(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return fallback, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if repair:
            set_aside(path, "damaged")
            if backup:
                atomic_write_bytes(path, backup.encode("utf-8"))
        return fallback, (f"classes.json was unreadable ({exc}); " +
                          ("restored the last saved class list" if backup else "using the 21 VOC classes"))


# ---------------------------------------------------------------------------- masks and temp files
def sidecar_path(base: Path, image_id: str, suffix: str) -> Path:
    """Where the store keeps a per-image file (``masks/<id>.png``, ``probs/<id>.npz``) under ``base``.

    Sub-folders mirror the image folder's; the file name is the image's name plus ``suffix``,
    shortened with a hash when that would not fit in one file name (see :func:`engine.fileio.fitted_name`).
    """
    parts = check_id(image_id).split("/")
    return base.joinpath(*parts[:-1], fitted_name(parts[-1], suffix))


def sidecar_ids(base: Path, suffix: str, folder: Path) -> list[str]:
    """The image ids of every per-image file under ``base`` (the inverse of :func:`sidecar_path`).

    Plain names are read back directly; a shortened name is matched against the images of the
    corresponding folder (the hash cannot be reversed), listing each such folder once.
    """
    out = []
    for dirpath, _dirs, files in os.walk(base):
        rel = Path(dirpath).relative_to(base)
        prefix = "" if rel == Path(".") else rel.as_posix() + "/"
        shortened: dict[str, str] | None = None
        for f in files:
            if f.startswith(".") or not f.endswith(suffix):
                continue
            plain = f[:-len(suffix)]
            if not re.search(r"~[0-9a-f]{16}$", plain):
                out.append(prefix + plain)
                continue
            if shortened is None:
                try:
                    shortened = {fitted_name(e.name, suffix): e.name for e in os.scandir(folder / rel)}
                except OSError:
                    shortened = {}
            name = shortened.get(f, plain if (folder / rel / plain).exists() else None)
            if name is not None:
                out.append(prefix + name)
    return out


def remove_orphan_temps(root: Path) -> int:
    """Delete temp files (``.<name>.<random>.tmp``) a writer left when it died mid-write; returns how many.

    Only safe while holding the store's lock: no live writer of ours can own one then.
    """
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if is_temp_name(f):
                try:
                    os.unlink(os.path.join(dirpath, f))
                    n += 1
                except OSError:
                    pass
    return n


# ---------------------------------------------------------------------------- sqlite
def _has_schema(db: sqlite3.Connection) -> bool:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "images"} <= tables:
        return False
    return db.execute("SELECT 1 FROM meta WHERE key='schema'").fetchone() is not None


def _init_db(path: Path) -> tuple[sqlite3.Connection, bool]:
    """Open (creating if needed) the database; returns ``(connection, whether it had the schema)``."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        had_schema = _has_schema(db)  # also raises DatabaseError for a file that is not a database
        # WAL: a commit appends to the log and a crash mid-commit rolls back cleanly.  Some network
        # file systems refuse WAL; the classic rollback journal is then just as safe, only slower.
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA synchronous=FULL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("integrity check failed")
        db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS images(id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                   "updated REAL NOT NULL, error TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS probs(id TEXT PRIMARY KEY, model_id TEXT NOT NULL, "
                   "bytes INTEGER NOT NULL, used REAL NOT NULL)")
        db.execute(EFFORT_TABLE)
        db.execute(PRELABELS_TABLE)
        db.execute("INSERT OR IGNORE INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
    except BaseException:
        db.close()
        raise
    return db, had_schema


DB_MISSING, DB_EMPTY = "was missing", "was empty"  # what open_db says of a database that never held data


def open_db(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """Open or create the status database; returns ``(connection, lost)``.

    ``lost`` is None when the database held its schema (statuses can be trusted), else a phrase
    saying why it holds no statuses: missing, empty, without its tables, or damaged (a damaged or
    foreign file is kept as ``store.db.corrupt-<time>`` for inspection).  The caller then rebuilds the
    statuses from the masks on disk, marking every one ``edited``: without the database a
    prediction cannot be told from a drawing, so all are protected from being overwritten.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    try:
        db, had_schema = _init_db(path)
    except sqlite3.DatabaseError as exc:
        aside = set_aside(path, "corrupt", ("-wal", "-shm"))
        db, _ = _init_db(path)
        return db, f"was damaged ({exc}); it was kept as {aside}"
    if had_schema:
        return db, None
    if size is None:
        return db, DB_MISSING
    if size == 0:
        return db, DB_EMPTY
    db.close()
    aside = set_aside(path, "corrupt", ("-wal", "-shm"))
    db, _ = _init_db(path)
    return db, f"had no store tables; it was kept as {aside}"


def open_db_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection (None when there is no database yet)."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM images").fetchone()
    except sqlite3.DatabaseError:
        # WAL readers need the -shm file; on a read-only medium open the snapshot as immutable.
        db.close()
        db = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True, check_same_thread=False)
    return db


# ---------------------------------------------------------------------------- where the store lives
def user_store_root() -> Path:
    """Where stores of read-only folders live: ``$DEEPLAB_GUI_DATA_DIR/stores`` or the per-user data dir."""
    env = os.environ.get("DEEPLAB_GUI_DATA_DIR")
    if env:
        return Path(env) / "stores"
    import platformdirs
    return Path(platformdirs.user_data_dir("deeplab-gui", appauthor=False)) / "stores"


def _probe_writable(folder: Path) -> bool:
    """True when ``folder/.deeplab-gui`` exists or can be made, and a file can be created inside."""
    side = folder / SIDECAR_NAME
    probe = side / f".probe-{os.getpid()}.tmp"
    try:
        side.mkdir(exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        os.unlink(probe)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False
        raise


def _holds_store(root: Path) -> bool:
    """Whether ``root`` holds a store with anything in it (a database or a mask)."""
    if (root / "store.db").is_file():
        return True
    try:
        return any(True for _ in (root / "masks").iterdir())
    except OSError:
        return False


def locate_store(folder: Path, *, read_only: bool) -> tuple[Path, str | None, bool]:
    """``(store root, notice, read_only)`` for an absolute ``folder``.

    Normally ``folder/.deeplab-gui``.  When the folder cannot be written, a per-folder directory
    under :func:`user_store_root` named ``<folder name>-<sha1 of the path, 12 hex>``, with a notice
    saying so, unless the folder already holds a store of its own (a folder annotated elsewhere,
    then mounted read-only): that store is opened read-only, never hidden behind an empty one.
    A read-only viewer uses whichever of the two exists.
    """
    side = folder / SIDECAR_NAME
    name = re.sub(r"[^\w.-]+", "_", folder.name) or "root"
    fallback = user_store_root() / f"{name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:12]}"
    if read_only:
        root = fallback if (not side.exists() and fallback.exists()) else side
        return root, f"{folder} is open read-only; changes cannot be saved", True
    if _probe_writable(folder):
        return side, None, False
    if _holds_store(side) and not _holds_store(fallback):
        return side, (f"{folder} cannot be written; its existing annotations are shown read-only "
                      f"(copy the folder somewhere writable to edit them)"), True
    notice = f"{folder} is read-only; its annotations are kept in {fallback} instead"
    if _holds_store(side):
        notice += f" (the folder's own annotations in {side} are not shown)"
    return fallback, notice, False
