"""What VOC export and import share: VOC ids, the train/val split, colours, mask checks, errors.

Kept apart from :mod:`engine.voc` (export) and :mod:`engine.voc_import` (import) so that neither
imports the other; :mod:`engine.voc` re-exports every public name here.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from ..labels import VOID, VOID_COLOR
from ..meta import voc_colormap
from ..store.format import LabelClass
from ..store.scan import natural_key
from .common import FormatError, os_reason

__all__ = ["VOCError", "VOC_NUM_STANDARD", "voc_ids", "split_ids", "add_void_border", "export_colors",
           "rgb_mask_to_indices", "check_indices", "copyable_jpeg", "os_reason"]

VOC_NUM_STANDARD = 21


class VOCError(FormatError):
    """A VOC export or import that cannot go on; ``str(err)`` is one line naming the file and the problem."""


def voc_ids(image_ids: Iterable[str]) -> dict[str, str]:
    """image id -> VOC id (flat, no extension), unique; see :mod:`engine.voc`'s docstring."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for image_id in sorted(image_ids, key=natural_key):
        stem, ext = os.path.splitext(image_id)
        vid = stem.replace("/", "__")
        if vid in used:
            vid = f"{vid}_{ext.lstrip('.').lower()}"
            n = 2
            while vid in used:
                vid, n = f"{stem.replace('/', '__')}_{ext.lstrip('.').lower()}{n}", n + 1
        used.add(vid)
        out[image_id] = vid
    return out


def split_ids(ids: Sequence[str], *, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic seeded train/val split; both lists sorted naturally."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ranked = sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    n_val = int(round(val_fraction * len(ranked)))
    if val_fraction > 0 and len(ranked) >= 2:
        n_val = min(max(n_val, 1), len(ranked) - 1)
    val = set(ranked[:n_val])
    return (sorted((i for i in ids if i not in val), key=natural_key), sorted(val, key=natural_key))


def add_void_border(mask: np.ndarray, width: int) -> np.ndarray:
    """Mark as void (255) every labelled pixel within ``width`` px (square neighbourhood) of a pixel
    of another class, as VOC's annotators did around object outlines.  Void pixels stay void and a
    class next to void gains no border.  Returns a new H×W uint8 array."""
    m = np.asarray(mask, dtype=np.uint8)
    if width <= 0:
        return m.copy()
    # All in bytes (a few bytes a pixel, not a dozen): void (255) is above every class, so it never
    # lowers a neighbour's minimum; for the maximum the classes move up by one and void becomes 0.
    void = m == VOID
    up = m + np.uint8(1)            # classes 0..254 -> 1..255; void wraps to 0
    hi = _window(_window(up, width, 0, np.maximum), width, 1, np.maximum)
    border = hi > up
    del hi
    lo = _window(_window(m, width, 0, np.minimum), width, 1, np.minimum)
    border |= lo < m
    del lo
    out = m.copy()
    out[border & ~void] = VOID
    return out


def _window(a: np.ndarray, r: int, axis: int, op) -> np.ndarray:
    """Sliding max/min of radius ``r`` along ``axis`` (edges use what lies inside the array)."""
    out = a.copy()
    n = a.shape[axis]
    for d in range(1, min(r, n - 1) + 1):
        lead = [slice(None)] * 2
        trail = [slice(None)] * 2
        lead[axis], trail[axis] = slice(0, n - d), slice(d, n)
        op(out[tuple(lead)], a[tuple(trail)], out=out[tuple(lead)])
        op(out[tuple(trail)], a[tuple(lead)], out=out[tuple(trail)])
    return out


def export_colors(classes: Sequence[LabelClass]) -> list[tuple[int, int, int]]:
    """Palette colours for export: the VOC colour map for the first 21 indices, the store's after."""
    voc = voc_colormap(VOC_NUM_STANDARD)
    return [voc[i] if i < VOC_NUM_STANDARD else tuple(c.color) for i, c in enumerate(classes)]


def rgb_mask_to_indices(rgb: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """H×W×3 colour-coded mask -> H×W uint8 indices (VOC void colour and white -> 255).

    Raises ``ValueError`` naming a colour that is no class colour (guessing would mislabel pixels).
    """
    a = np.asarray(rgb, dtype=np.uint8)[:, :, :3].astype(np.uint32)
    packed = (a[:, :, 0] << 16) | (a[:, :, 1] << 8) | a[:, :, 2]
    table = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(colors)}
    for void in (VOID_COLOR, (255, 255, 255)):
        table.setdefault((void[0] << 16) | (void[1] << 8) | void[2], VOID)
    uniq, inverse = np.unique(packed, return_inverse=True)
    lut = np.empty(len(uniq), dtype=np.uint8)
    for k, v in enumerate(uniq.tolist()):
        if v not in table:
            count = int((inverse == k).sum())
            raise ValueError(f"colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) on {count} pixels is no "
                             f"class colour")
        lut[k] = table[v]
    return lut[inverse.reshape(packed.shape)]


def check_indices(mask: np.ndarray, n: int) -> None:
    """Raise ``ValueError`` when ``mask`` uses a class index ``>= n`` other than void (255)."""
    bad = np.unique(mask[(mask >= n) & (mask != VOID)])
    if bad.size:
        raise ValueError(f"class index {int(bad[0])} is beyond the {n}-class list")


def copyable_jpeg(path: os.PathLike | str) -> bool:
    """Whether a VOC loader reads ``path`` exactly as we do: a JPEG, RGB or grey, no EXIF rotation."""
    try:
        with Image.open(path) as im:
            return (im.format == "JPEG" and im.mode in ("RGB", "L")
                    and im.getexif().get(0x0112, 1) in (1, None))
    except Exception:  # unreadable here is decided (and reported) by the full decode instead
        return False
