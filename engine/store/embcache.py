"""Cached click-model embeddings: the encoder's output per image, so a second visit needs no encoder.

A click model's encoder takes from a second (MobileSAM) to a minute (SAM ViT-H) per image on a CPU;
its prompt decoder takes milliseconds.  So the embedding of every image the app encoded is kept in
the store, tagged with the model and the image it came from, and going back to an image restores it.

File format (one ``.npz`` per image under ``embeddings/``, written atomically, readable with
``np.load(allow_pickle=False)``):

- ``feat_<name>``: each of the encoder's outputs (``ClickEmbedding.features``) in **float16**, half
  the bytes of float32 (a SAM 2.1 embedding is ~20 MB in float32); the decoder's masks do not move
  at that precision.  An output whose values do not fit float16's range is kept in float32.
  Not compressed: encoder features are noise to deflate, and the read must be quick.
- ``meta``: a 0-d unicode array holding JSON: ``format`` (1), ``model_id`` (the caller's name for the
  weights), ``image`` = ``{"bytes", "mtime_ns"}`` of the image when it was encoded, ``original_size``,
  ``input_size``, ``model`` (the click model's name) and ``features`` (the output names, in order).

An entry is *stale* (a miss) when the image's size or mtime changed or it came from another model id;
a damaged or truncated file is a miss too, since the embedding can always be computed again.  The
index (table ``embeddings`` of the store's database) keeps the folder under a byte budget, dropping
the least recently used entries first, like :class:`~engine.store.probcache.ProbCache`.
"""
from __future__ import annotations

import dataclasses

import errno
import json
import os
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import atomic_output
from .format import check_id, sidecar_path, write_error
from .probcache import ImageSignature, evict_lru

if TYPE_CHECKING:
    from ..click import ClickEmbedding

__all__ = ["DEFAULT_EMBEDDINGS_BUDGET", "EMBEDDINGS_TABLE", "EmbeddingCache", "EmbeddingMethods", "as_stored",
           "read_embedding_file", "write_embedding_file"]

FORMAT = 1
DEFAULT_EMBEDDINGS_BUDGET = 2 << 30   # bytes of cached embeddings kept before the least recently used go
# Created by every writable open, so a database written before the table existed gains it; older
# versions of the app ignore it.
EMBEDDINGS_TABLE = ("CREATE TABLE IF NOT EXISTS embeddings(id TEXT PRIMARY KEY, model_id TEXT NOT NULL, "
                    "bytes INTEGER NOT NULL, used REAL NOT NULL)")
_PREFIX = "feat_"
_F16_MAX = float(np.finfo(np.float16).max)


def _on_disk(a: np.ndarray) -> np.ndarray:
    """float16 when every value fits its range (a larger one would become inf), else float32."""
    a = np.asarray(a)
    if a.size and np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a).all()
        if finite and float(np.abs(a).max()) <= _F16_MAX:
            return a.astype("<f2")
    return a.astype("<f4")


def as_stored(emb: ClickEmbedding) -> ClickEmbedding:
    """``emb`` with its features at the precision the cache keeps them (float16 where they fit), as
    float32: what reading its cache entry gives, so a first visit that uses it predicts exactly what
    every later visit will (with the encoder's float32 features a mask could differ by a pixel)."""
    return dataclasses.replace(emb, features={k: _on_disk(v).astype(np.float32) for k, v in emb.features.items()})


def write_embedding_file(path: str | os.PathLike, emb: ClickEmbedding, *, model_id: str,
                         signature: ImageSignature) -> int:
    """Write ``emb`` to ``path`` atomically (see the module docstring); returns the file's bytes."""
    names = list(emb.features)
    if not names:
        raise ValueError("the embedding holds no features")
    meta = {"format": FORMAT, "model_id": str(model_id), "image": signature.to_dict(),
            "original_size": [int(v) for v in emb.original_size], "input_size": [int(v) for v in emb.input_size],
            "model": str(emb.model), "features": names}
    arrays = {_PREFIX + n: _on_disk(emb.features[n]) for n in names}
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        size = os.path.getsize(tmp)
    return size


def read_embedding_file(path: str | os.PathLike) -> tuple[ClickEmbedding, dict]:
    """``(embedding with float32 features, meta)`` whatever its tags say; ValueError when damaged."""
    from ..click import ClickEmbedding
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"][()]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}")
            names = meta["features"]
            if not isinstance(names, list) or not names:
                raise ValueError("no feature names")
            features = {str(n): np.ascontiguousarray(npz[_PREFIX + str(n)], dtype=np.float32) for n in names}
            original = tuple(int(v) for v in meta["original_size"])
            size = tuple(int(v) for v in meta["input_size"])
            if len(original) != 2 or len(size) != 2:
                raise ValueError("sizes are not (h, w) pairs")
            emb = ClickEmbedding(features, original, size, str(meta["model"]))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: damaged embedding cache ({' '.join(str(exc).split())})") from None
    return emb, meta


class EmbeddingCache:
    """The store's ``embeddings/`` folder plus its index; ``db`` None: read-only use, no index updates.

    File reads and writes need no lock (each lands atomically); index updates are serialised by the
    store.
    """

    def __init__(self, folder: Path, db: sqlite3.Connection | None, budget: int) -> None:
        self.folder = folder
        self.db = db
        self.budget = budget
        if db is not None:
            db.execute(EMBEDDINGS_TABLE)

    def path(self, image_id: str) -> Path:
        return sidecar_path(self.folder, image_id, ".npz")

    def write(self, image_id: str, emb: ClickEmbedding, *, model_id: str, signature: ImageSignature) -> int:
        path = self.path(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_embedding_file(path, emb, model_id=model_id, signature=signature)

    def index(self, image_id: str, model_id: str, size: int) -> None:
        if self.db is None:
            return
        self.db.execute("INSERT OR REPLACE INTO embeddings VALUES(?, ?, ?, ?)",
                        (image_id, str(model_id), int(size), time.time()))
        self._evict(keep=image_id)

    def _evict(self, keep: str) -> None:
        evict_lru(self.db, "embeddings", self.budget, keep, self.path)

    def read(self, image_id: str, *, image_path: Path, model_id: str) -> ClickEmbedding | None:
        """The fresh entry of ``image_id`` for ``model_id``, else None (absent, stale or damaged)."""
        path = self.path(image_id)
        if not path.is_file():
            return None
        try:
            emb, meta = read_embedding_file(path)
            current = ImageSignature.of(image_path)
            sig = meta.get("image") or {}
            recorded = ImageSignature(int(sig.get("bytes", -1)), int(sig.get("mtime_ns", -1)))
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        if recorded != current or meta.get("model_id") != str(model_id):
            return None
        return emb

    def touch(self, image_id: str) -> None:
        if self.db is None:
            return
        try:
            self.db.execute("UPDATE embeddings SET used=? WHERE id=?", (time.time(), image_id))
        except sqlite3.Error:
            pass  # recency is only a hint; a failed update must not fail a read


class EmbeddingMethods:
    """The store's embedding methods (a mixin of :class:`~engine.store.store.AnnotationStore`, which
    provides ``_mutex``, ``_writable``, ``_embeddings`` and ``image_path``)."""

    def embedding_path(self, image_id: str) -> Path:
        return self._embeddings.path(check_id(image_id))

    def save_embedding(self, image_id: str, emb: ClickEmbedding, *, model_id: str,
                       signature: ImageSignature | None = None) -> None:
        """Cache a click model's embedding of ``image_id``; ``signature`` defaults to the image's stat
        now.  The file is written outside the store's lock (it takes a while and lands atomically), then
        indexed under it."""
        image_id = check_id(image_id)
        with self._mutex:
            self._writable()
        what = f"the click embedding of {image_id}"
        try:
            sig = signature or ImageSignature.of(self.image_path(image_id))
            size = self._embeddings.write(image_id, emb, model_id=model_id, signature=sig)
        except OSError as exc:
            raise write_error(exc, what) from exc
        with self._mutex:
            self._writable()
            try:
                self._embeddings.index(image_id, model_id, size)
            except sqlite3.Error as exc:
                raise write_error(OSError(errno.EIO, str(exc)), what) from exc

    def load_embedding(self, image_id: str, model_id: str) -> ClickEmbedding | None:
        """The cached embedding of ``image_id`` from ``model_id``, or None when absent, stale or damaged."""
        image_id = check_id(image_id)
        emb = self._embeddings.read(image_id, image_path=self.image_path(image_id), model_id=model_id)
        if emb is not None:
            with self._mutex:
                self._embeddings.touch(image_id)
        return emb
