"""The spool through which the ranks of a distributed pre-label run hand their results to rank 0.

Why files and not ``torch.distributed`` send/recv: rank 0 is the store's only writer and also predicts
its own share; with files it picks results up between its own images instead of blocking in a
collective, a result that was handed over survives a kill (the next run ingests it instead of
predicting the image again), and the bound on memory is simply a count of files.  The price is that
every rank must see the spool's folder, which sits beside the store: on several machines the image
folder (which every rank reads anyway) has to be on shared storage.

Layout of the spool folder (``<store>/prelabel-spool/`` or ``<out>/.prelabel-spool/``):

- ``r<rank>-<seq>.npz``: one image's result, written atomically (temp file, fsync, rename), so a
  reader never sees half of one.  Members: ``labels`` H×W uint8 (absent for a failure), ``probs``
  C×h×w float16 on the store's grid (the precision the store keeps: ingesting it writes the same
  cache bytes as predicting in place), ``meta`` JSON: image id, model id, image signature (size and
  mtime when it was read), and for a failure its one-line message and the reason the store keeps.
- ``r<rank>.end``: the rank went through its whole share; ``r<rank>.failed``: it stopped, the text
  says why; ``stop``: rank 0 is gone (finished or cancelled), the others stop too.

A rank holding ``limit`` results not yet taken waits, so memory and disk stay bounded whatever the
speed of rank 0.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import atomic_write_bytes

__all__ = ["SPOOL_NAME", "Spool", "SpoolResult"]

SPOOL_NAME = "prelabel-spool"


@dataclass
class SpoolResult:
    image_id: str
    model_id: str
    signature: dict | None          # {"bytes", "mtime_ns"} of the image when it was read
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    message: str | None = None      # one line, for a failure
    reason: str | None = None       # what the store keeps about an unreadable or too small image
    probs_file: bytes | None = None  # the probabilities' cache file, made by the predicting rank

    @property
    def failed(self) -> bool:
        return self.labels is None


class Spool:
    """One folder of results; ``rank`` names the files this process writes."""

    def __init__(self, folder: Path, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.rank = rank
        self._seq = 0

    # ----------------------------------------------------------------- writers (ranks > 0)
    def put(self, result: SpoolResult) -> None:
        meta = {"id": result.image_id, "model_id": result.model_id, "image": result.signature,
                "message": result.message, "reason": result.reason}
        arrays = {"meta": np.array(json.dumps(meta))}
        if result.labels is not None:
            arrays["labels"] = np.ascontiguousarray(result.labels, dtype=np.uint8)
        if result.probs is not None:
            arrays["probs"] = np.asarray(result.probs, dtype=np.float16)
        if result.probs_file is not None:
            arrays["probs_file"] = np.frombuffer(result.probs_file, dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # uncompressed: the store compresses once, on ingest
        self._seq += 1
        atomic_write_bytes(self.folder / f"r{self.rank}-{self._seq:08d}.npz", buf.getvalue())

    def pending(self) -> int:
        """How many of this rank's results rank 0 has not taken yet."""
        return sum(1 for _ in self.folder.glob(f"r{self.rank}-*.npz"))

    def mark(self, name: str, text: str = "") -> None:
        atomic_write_bytes(self.folder / name, text.encode())

    def has(self, name: str) -> bool:
        return (self.folder / name).exists()

    def note(self, name: str) -> str | None:
        try:
            return (self.folder / name).read_text(errors="replace")
        except OSError:
            return None

    # ----------------------------------------------------------------- reader (rank 0)
    def ready(self) -> list[Path]:
        """Results waiting, in the order each rank wrote them (temp files never match)."""
        def key(p: Path) -> tuple[int, int]:
            r, _, s = p.stem[1:].partition("-")
            return (int(s), int(r)) if r.isdigit() and s.isdigit() else (1 << 62, 0)
        return sorted(self.folder.glob("r*-*.npz"), key=key)

    @staticmethod
    def read(path: Path) -> SpoolResult | None:
        """The result in ``path``; None for a file that cannot be read (it is dropped)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"][()]))
                labels = z["labels"] if "labels" in z.files else None
                probs = z["probs"] if "probs" in z.files else None
                probs_file = z["probs_file"].tobytes() if "probs_file" in z.files else None
            return SpoolResult(str(meta["id"]), str(meta.get("model_id", "")), meta.get("image"),
                               labels, probs, meta.get("message"), meta.get("reason"), probs_file)
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def reset(self) -> None:
        """Before a run: create the folder and forget the markers a previous run left."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for p in self.folder.iterdir():
            if p.name == "stop" or p.suffix in (".end", ".failed"):
                _unlink(p)

    def discard_results(self) -> None:
        for p in self.ready():
            _unlink(p)

    def remove_if_empty(self) -> None:
        for p in list(self.folder.iterdir()) if self.folder.is_dir() else []:
            if p.name == "stop" or p.suffix in (".end", ".failed"):
                _unlink(p)
        try:
            os.rmdir(self.folder)
        except OSError:
            pass  # results still there (a rank outlived rank 0): the next run ingests them


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass
