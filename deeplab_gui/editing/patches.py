"""Undo steps of the mask document: a patch is the box of changed pixels with their old and new
values (and confirmed bits), zlib-compressed when large; a group is one step of several patches
(a long stroke, tile by tile). No Qt."""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field

import numpy as np

from .raster import BBox, bbox_union

__all__ = ["Patch", "PatchGroup", "wait_for_compression"]

# Patches whose raw old+new pixels exceed this are compressed; below it zlib's overhead is not worth it.
_COMPRESS_ABOVE = 8192
# Patches whose raw old+new pixels exceed this are compressed by a background thread (see Patch).
_DEFER_ABOVE = 4 << 20
_tokens = itertools.count(1)
_compressing: list = []


def _compressor():
    """The one thread that compresses large patches, made when first needed."""
    if not _compressing:
        from concurrent.futures import ThreadPoolExecutor
        _compressing.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="patch-zlib"))
    return _compressing[0]


def wait_for_compression() -> None:
    """Return once every large patch made so far is compressed (tests, and a budget check)."""
    if _compressing:
        _compressing[0].submit(lambda: None).result()


class Patch:
    """One undo step: the pixels of ``bbox`` before (``old``) and after (``new``) the edit.

    ``old``/``new`` are stored raw (``bytes`` of a C-order uint8 block) or zlib-compressed;
    ``nbytes`` is what the patch costs in memory. ``token`` names the document state after the edit.
    ``confirms``: what the step made the confirmed bit of each pixel it changed (True for a person's
    edit, False for a pre-label; None: the step leaves the confirmed map alone). ``conf_old`` holds
    those pixels' bits before the step: a bool when they were all the same (the usual case, so a
    step costs no more memory than its labels), else the box's bits packed. ``foot``: the edit's
    footprint within ``bbox``, packed bits (None: only the changed pixels); a stroke confirms every
    pixel it covered, relabelled or not, so undo must give those their bits back too.

    A large patch (over :data:`_DEFER_ABOVE` raw bytes: an accepted region, a fill or an applied CRF
    over much of a large photo) is made raw and compressed by a background thread (zlib lets go of
    the GIL), which swaps the compressed bytes in at once: the UI thread spent about half of such a
    step's 90 ms compressing it. Readers take the stored bytes in one read, raw or compressed.
    """

    def __init__(self, bbox: BBox, old: bytes, new: bytes, compressed: bool, description: str = "",
                 token: int | None = None, confirms: bool | None = None, conf_old: bytes | bool = False,
                 foot: bytes | None = None) -> None:
        self.bbox = bbox
        self.description = description
        self.token = next(_tokens) if token is None else token
        self.confirms = confirms
        self._blob = (old, new, foot, conf_old, compressed)   # replaced whole, never in part

    old = property(lambda self: self._blob[0])
    new = property(lambda self: self._blob[1])
    foot = property(lambda self: self._blob[2])
    conf_old = property(lambda self: self._blob[3])
    compressed = property(lambda self: self._blob[4])

    @classmethod
    def make(cls, bbox: BBox, old: np.ndarray, new: np.ndarray, description: str = "",
             confirms: bool | None = None, conf_old: np.ndarray | None = None,
             foot: np.ndarray | None = None, changed: np.ndarray | None = None) -> "Patch":
        """``changed``: ``old != new`` (or'ed with ``foot``) when the caller has it already."""
        o, n = np.ascontiguousarray(old), np.ascontiguousarray(new)
        raw = o.nbytes + n.nbytes
        squeeze, later = raw > _COMPRESS_ABOVE, raw > _DEFER_ABOVE
        now = squeeze and not later
        pack = (lambda b: zlib.compress(b, 1)) if now else (lambda b: b)
        if conf_old is None:
            changed = None
        elif changed is None:
            changed = o != n if foot is None else (o != n) | foot
        fb = None
        if foot is not None and changed is not None:
            fb = pack(np.packbits(foot, axis=None).tobytes())
        # zlib reads the arrays' buffers directly: no intermediate bytes copy of a large block.
        o, n = (zlib.compress(o, 1), zlib.compress(n, 1)) if now else (o.tobytes(), n.tobytes())
        co: bytes | bool = False
        if changed is not None:
            # All the changed pixels' bits alike (the usual case): one bool; else all of them packed.
            on = bool(np.logical_and(conf_old, changed).any())
            off = bool(np.logical_and(changed, np.logical_not(conf_old)).any())
            co = pack(np.packbits(conf_old, axis=None).tobytes()) if on and off else on
        patch = cls(bbox, o, n, now, description, confirms=confirms, conf_old=co, foot=fb)
        if later:
            _compressor().submit(patch._squeeze)
        return patch

    def _squeeze(self) -> None:
        """Compress the raw bytes (background thread) and swap them in."""
        old, new, foot, conf_old, compressed = self._blob
        if compressed:
            return
        z = lambda b: zlib.compress(b, 1)   # noqa: E731
        self._blob = (z(old), z(new), None if foot is None else z(foot),
                      conf_old if isinstance(conf_old, bool) else z(conf_old), True)

    @property
    def nbytes(self) -> int:
        # The labels only: the packed confirmed bits, when a step holds any, are one bit per pixel
        # against the labels' sixteen (old and new), so the history budget stays within a sixteenth.
        old, new = self._blob[:2]
        return len(old) + len(new)

    @staticmethod
    def _bits(data: bytes, compressed: bool, shape: tuple[int, int]) -> np.ndarray:
        data = zlib.decompress(data) if compressed else data
        return np.unpackbits(np.frombuffer(data, np.uint8), count=shape[0] * shape[1]).astype(bool).reshape(shape)

    def restore_confirmed(self, conf: np.ndarray, which: str) -> None:
        """Set the changed pixels' bits in ``conf`` (this box's block) to their ``old``/``new`` state."""
        if self.confirms is None:
            return
        old, new, foot, conf_old, compressed = blob = self._blob
        changed = self._block(blob, 0) != self._block(blob, 1)
        if foot is not None:
            changed |= self._bits(foot, compressed, conf.shape)
        if which == "new":
            conf[changed] = self.confirms
        elif isinstance(conf_old, bool):
            conf[changed] = conf_old
        else:
            conf[changed] = self._bits(conf_old, compressed, conf.shape)[changed]

    def pixels(self, which: str) -> np.ndarray:
        """The ``old`` or ``new`` block as an (y1-y0)×(x1-x0) uint8 array."""
        return self._block(self._blob, 0 if which == "old" else 1)

    def _block(self, blob: tuple, i: int) -> np.ndarray:
        data = zlib.decompress(blob[i]) if blob[4] else blob[i]
        y0, x0, y1, x1 = self.bbox
        return np.frombuffer(data, dtype=np.uint8).reshape(y1 - y0, x1 - x0)


@dataclass
class PatchGroup:
    """One undo step made of several patches over separate boxes (a long stroke, recorded tile by
    tile: see :mod:`.stroke_tiles`). ``bbox`` is their joint box."""
    parts: list[Patch]
    description: str = ""
    token: int = field(default_factory=lambda: next(_tokens))

    @property
    def bbox(self) -> BBox:
        box = None
        for p in self.parts:
            box = bbox_union(box, p.bbox)
        return box

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)
