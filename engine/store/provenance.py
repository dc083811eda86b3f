"""Which pixels of a stored mask a person set: the "confirmed" map kept beside each edited mask.

A pre-label followed by one brush stroke used to turn the whole model mask into a person's label.
The store now keeps, per image, a 1-bit PNG ``confirmed/<id>.png`` (same size as the mask, white =
a person set this pixel) so that export and fine-tuning can treat the untouched model pixels as
unknown.  Reading it follows the status:

* ``reviewed``: every pixel is confirmed (accepting a mask vouches for all of it);
* ``edited``: the file, or every pixel when there is none (a store written before the file existed,
  or a mask saved without provenance: that is what ``edited`` meant then);
* ``prelabeled``/``unlabeled``: no pixel (a stale file from before a prediction replaced the mask
  is ignored);
* a file that cannot be read or does not fit the mask: no pixel (claiming too little only costs
  training data; claiming too much teaches the model its own guesses).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write_bytes

__all__ = ["mask_png_size", "read_confirmed_png", "write_confirmed_png"]


def write_confirmed_png(path: Path, confirmed: np.ndarray) -> None:
    """Write an H×W bool map as a 1-bit PNG, atomically (parent folders are created)."""
    c = np.ascontiguousarray(confirmed, dtype=bool)
    h, w = c.shape
    im = Image.frombytes("1", (w, h), np.packbits(c, axis=1).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def read_confirmed_png(path: Path, shape: tuple[int, int] | None) -> np.ndarray | None:
    """The H×W bool map in ``path``; None when it is missing; all False when it is unreadable or
    its size is not ``shape``."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.array(im.convert("1"), dtype=bool)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, Image.DecompressionBombError):
        return np.zeros(shape, bool) if shape else None
    if shape is not None and arr.shape != tuple(shape):
        return np.zeros(shape, bool)
    return arr


def mask_png_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of a mask PNG from its header only; None when missing or unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return (h, w)
