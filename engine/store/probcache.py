"""Cached model probabilities: compressed, tagged with the model and image they came from.

The CRF panel re-refines the same image many times while the user drags sliders; rerunning the
network for each move would take seconds.  So the Predictor's probabilities are cached per image, on
the capped grid of :mod:`engine.probgrid`: the image's own size up to 4 Mi pixels, scaled down (aspect
kept) beyond, so that neither the file nor anyone reading it ever holds C×H×W values of a huge image.

File format (one ``.npz`` per image, written atomically, readable with ``np.load(allow_pickle=False)``):

- ``probs``: C×h×w **float16** (half the bytes of float32; 3 significant digits is far more than a
  CRF unary needs, and unlike 8-bit quantisation it keeps small probabilities distinguishable, so
  ``-log p`` stays finite and ordered).  Compressed with zlib (deflate) inside the zip.  h×w is the
  grid, the image's H×W or less; readers compare it with :func:`engine.probgrid.grid_fits`.
- ``meta``: a 0-d unicode array holding JSON: ``format`` (1), ``model_id`` (any string the caller uses
  to name the weights, e.g. a checkpoint hash), ``image`` = ``{"bytes", "mtime_ns"}`` from ``stat`` of
  the image when it was predicted, ``shape`` (of ``probs``).

Both directions work one class at a time: writing converts a class to float16 and streams it into
the zip (no float16 copy of the whole map, no in-memory zip), reading converts into the float32
result (and shrinks an entry larger than the cap, e.g. from an older version, to the cap on the way).

A cache entry is *stale*, and :func:`load_probs` returns None for it, when the image's size or mtime
changed (the file was edited or replaced) or when it came from another model than the one asked for.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import one_line
from ..fileio import atomic_write_bytes
from ..probgrid import normalise_, probs_grid, resize_plane
from .format import sidecar_path

__all__ = ["CachedProbs", "ImageSignature", "ProbCache", "evict_lru", "save_probs", "load_probs", "read_probs_file"]

FORMAT = 1


@dataclass(frozen=True)
class ImageSignature:
    """What identifies an image file's content cheaply: byte size and modification time (ns)."""

    bytes: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "ImageSignature":
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns)

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class CachedProbs:
    probs: np.ndarray  # C×h×w float32 on the capped grid (the image's H×W when small), summing to ~1
    model_id: str
    signature: ImageSignature


def save_probs(path: str | os.PathLike, probs: np.ndarray, *, model_id: str,
               signature: ImageSignature, compress_level: int = 1, max_pixels: int | None = None) -> int:
    """Write ``probs`` (C×h×w float, any float dtype) as float16 to ``path`` atomically; returns bytes.
    See :func:`encode_probs`."""
    data = encode_probs(probs, model_id=model_id, signature=signature, compress_level=compress_level,
                        max_pixels=max_pixels)
    atomic_write_bytes(path, data)
    return len(data)


def encode_probs(probs: np.ndarray, *, model_id: str, signature: ImageSignature, compress_level: int = 1,
                 max_pixels: int | None = None) -> bytes:
    """The cache file's bytes for ``probs``: what :func:`save_probs` writes.  Pure (no store, no lock), so
    the costly part (float16 planes, deflate) can run anywhere, e.g. in the process that predicted.

    A map larger than ``max_pixels`` (default: :func:`engine.probgrid.probs_max_pixels`) is shrunk to
    its capped grid first.  ``compress_level`` 1: float16 noise bits compress about as well at level 1
    as at 9, at a fraction of the time, and the write happens while the user waits for the CRF preview.
    The bytes are at most the float16 grid's size plus a few hundred bytes.
    """
    p = probs if isinstance(probs, np.ndarray) else np.asarray(probs)
    if p.ndim != 3 or 0 in p.shape:
        raise ValueError(f"probabilities must be a non-empty CxHxW array, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"probabilities must be floating point, got {p.dtype}")
    grid = probs_grid(p.shape[1], p.shape[2], max_pixels)
    shape = (p.shape[0],) + grid
    meta = {"format": FORMAT, "model_id": str(model_id), "image": signature.to_dict(), "shape": list(shape)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compress_level) as zf:
        with zf.open("probs.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f2")), "fortran_order": False,
                     "shape": shape})
            for k in range(shape[0]):
                plane = p[k] if grid == p.shape[1:] else resize_plane(p[k], grid)
                # Bytes, not a 2-D view: the zip writer counts len(data) as the byte length.
                fh.write(memoryview(np.ascontiguousarray(plane, dtype="<f2")).cast("B"))
        with zf.open("meta.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array(json.dumps(meta)), allow_pickle=False)
    return buf.getvalue()


def _read_exact(fh, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise EOFError(f"probabilities end after {len(data)} of {n} bytes")
    return data


def _read_probs(zf: zipfile.ZipFile, max_pixels: int | None) -> np.ndarray:
    """The ``probs`` member as C×h×w float32, one class at a time, shrunk to the cap when larger."""
    with zf.open("probs.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if len(shape) != 3 or 0 in shape or fortran or dtype.kind != "f":
            raise ValueError(f"probabilities of shape {shape}, dtype {dtype}, fortran order {fortran}")
        c, h, w = shape
        grid = probs_grid(h, w, max_pixels)
        out = np.empty((c,) + grid, dtype=np.float32)
        for k in range(c):
            plane = np.frombuffer(_read_exact(fh, h * w * dtype.itemsize), dtype=dtype).reshape(h, w)
            out[k] = plane if grid == (h, w) else resize_plane(plane, grid)
    return out if grid == (h, w) else normalise_(out)


def read_probs_file(path: str | os.PathLike, *, max_pixels: int | None = None) -> CachedProbs:
    """Read a cache file whatever its tags say; raises ``ValueError`` for a damaged one.

    An entry larger than ``max_pixels`` (default :func:`engine.probgrid.probs_max_pixels`) comes back
    shrunk to its capped grid, read one class at a time.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            with zf.open("meta.npy") as fh:
                meta = json.loads(str(np.lib.format.read_array(fh, allow_pickle=False)[()]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: unknown probability cache format {meta.get('format')!r}")
            probs = _read_probs(zf, max_pixels)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile, EOFError) as exc:
        text = one_line(exc)
        if text.startswith(f"{path}: unknown"):
            raise ValueError(text) from None
        raise ValueError(f"{path}: damaged probability cache ({text})") from None
    sig = meta.get("image", {})
    return CachedProbs(probs, str(meta.get("model_id", "")),
                       ImageSignature(int(sig.get("bytes", -1)), int(sig.get("mtime_ns", -1))))


def load_probs(path: str | os.PathLike, *, image_path: str | os.PathLike,
               model_id: str | None = None) -> CachedProbs | None:
    """The cached probabilities in ``path`` if present, intact and fresh, else None.

    Fresh: the image at ``image_path`` still has the recorded size and mtime, and (when ``model_id``
    is given) the entry came from that model.  A damaged file counts as a miss, not an error: the
    cache can always be recomputed.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        cached = read_probs_file(path)
        current = ImageSignature.of(image_path)
    except (OSError, ValueError):
        return None
    if cached.signature != current:
        return None
    if model_id is not None and cached.model_id != str(model_id):
        return None
    return cached


def evict_lru(db: sqlite3.Connection, table: str, budget: int, keep: str, path_of) -> None:
    """Delete the least recently used entries of a cache ``table`` (rows ``id, model_id, bytes, used``)
    and their files (``path_of(id)``) until the total is within ``budget`` bytes; ``keep`` stays."""
    total = db.execute(f"SELECT coalesce(sum(bytes), 0) FROM {table}").fetchone()[0]
    if total <= budget:
        return
    for image_id, size in db.execute(f"SELECT id, bytes FROM {table} ORDER BY used").fetchall():
        if total <= budget:
            break
        if image_id == keep:
            continue
        try:
            path_of(image_id).unlink()
        except OSError:
            pass
        db.execute(f"DELETE FROM {table} WHERE id=?", (image_id,))
        total -= size


class ProbCache:
    """The store's ``probs/`` folder plus its index (the ``probs`` table of the store's database).

    The index records each entry's size and last use so the cache stays under ``budget`` bytes,
    dropping the least recently used entries first (10,000 images of full-size probabilities would
    otherwise fill a disk).  ``db`` None: read-only use, no index updates.  Not thread-safe by itself;
    the store serialises calls.
    """

    def __init__(self, folder: Path, db: sqlite3.Connection | None, budget: int) -> None:
        self.folder = folder
        self.db = db
        self.budget = budget

    def path(self, image_id: str) -> Path:
        return sidecar_path(self.folder, image_id, ".npz")

    def save(self, image_id: str, probs: np.ndarray, *, model_id: str, signature: ImageSignature) -> None:
        self.save_encoded(image_id, encode_probs(probs, model_id=model_id, signature=signature), model_id=model_id)

    def save_encoded(self, image_id: str, data: bytes, *, model_id: str) -> None:
        """Write a file :func:`encode_probs` made (for this image and ``model_id``) and index it."""
        path = self.path(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        size = len(data)
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO probs VALUES(?, ?, ?, ?)",
                            (image_id, str(model_id), size, time.time()))
            self._evict(keep=image_id)

    def _evict(self, keep: str) -> None:
        evict_lru(self.db, "probs", self.budget, keep, self.path)

    def load(self, image_id: str, *, image_path: Path, model_id: str | None) -> CachedProbs | None:
        cached = load_probs(self.path(image_id), image_path=image_path, model_id=model_id)
        if cached is not None and self.db is not None:
            try:
                self.db.execute("UPDATE probs SET used=? WHERE id=?", (time.time(), image_id))
            except sqlite3.Error:
                pass  # recency is only a hint; a failed update must not fail a read
        return cached
