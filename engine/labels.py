"""Labels: the void index, class lists, and masks on disk (palette PNGs of class indices, as VOC stores them).

A mask is an H×W uint8 array of class indices, 255 = void/unlabeled.  The PNG stores the indices
themselves; the palette only makes them viewable.  Index 255 keeps VOC's void colour (224, 224, 192),
which is what the standard VOC colour map gives for 255.  Writes are atomic: a crash mid-write leaves
the previous file (or none), never a half-written PNG that would later read as a corrupt mask.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import one_line
from .fileio import atomic_write_bytes
from .imageio import DEFAULT_MAX_PIXELS, ImageReadError, _open
from .meta import VOC_CLASSES, voc_colormap

__all__ = ["VOID", "VOID_COLOR", "LabelClass", "default_classes", "mask_palette", "save_mask_png", "load_mask_png"]

VOID = 255  # void / unlabelled: no class, no loss, no metric; every mask, scribble and target uses it
VOID_COLOR = (224, 224, 192)


@dataclass(frozen=True)
class LabelClass:
    name: str
    color: tuple[int, int, int]


def default_classes() -> list[LabelClass]:
    """PASCAL VOC's 21 classes with the standard VOC colour map."""
    return [LabelClass(n, c) for n, c in zip(VOC_CLASSES, voc_colormap(len(VOC_CLASSES)))]


def mask_palette(colors: Sequence[Sequence[int]] | None = None) -> list[int]:
    """A 768-entry flat RGB palette: VOC colours, overridden by ``colors`` for the first indices.

    Index 255 is always the VOC void colour, even when ``colors`` has 256 entries, so void stays
    recognisable in every viewer.
    """
    table = [tuple(c) for c in voc_colormap(256)]
    if colors is not None:
        colors = list(colors)
        if len(colors) > 255:
            raise ValueError(f"at most 255 class colours fit beside void, got {len(colors)}")
        for i, c in enumerate(colors):
            rgb = tuple(int(v) for v in c)
            if len(rgb) != 3 or any(not 0 <= v <= 255 for v in rgb):
                raise ValueError(f"colour {i} must be three values in 0..255, got {c!r}")
            table[i] = rgb
    table[VOID] = VOID_COLOR
    return [v for rgb in table for v in rgb]


def save_mask_png(path: str | os.PathLike, mask: np.ndarray,
                  colors: Sequence[Sequence[int]] | None = None, *, compress_level: int = 6) -> None:
    """Write an H×W uint8 class-index mask as a P-mode PNG with the VOC palette, atomically.

    ``colors``: optional RGB per class index (e.g. ``model.meta.class_colors``); other indices keep
    the VOC colour map and 255 the void colour.  Parent directories must exist.
    ``compress_level``: zlib level; 6 for files that are kept (exports), 1 for autosave of full-size
    masks (about 40 ms instead of 95 ms at 4000×3000, for a file about twice as large).
    """
    m = np.asarray(mask)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"mask must be a non-empty HxW array, got shape {m.shape}")
    if m.dtype != np.uint8:
        if not np.issubdtype(m.dtype, np.integer) or (m.size and (m.min() < 0 or m.max() > 255)):
            raise ValueError(f"mask must hold class indices 0..255 (uint8), got {m.dtype}")
        m = m.astype(np.uint8)
    im = _as_palette(m)
    im.putpalette(mask_palette(colors))
    buf = io.BytesIO()
    # Masks are mostly flat regions: levels above 6 cost time for a few bytes.
    im.save(buf, format="PNG", compress_level=compress_level)
    atomic_write_bytes(path, buf.getvalue())


def _as_palette(m: np.ndarray) -> Image.Image:
    # Image.fromarray(..., "P") would go through a quantising conversion; building from raw bytes
    # keeps the indices exactly.
    h, w = m.shape
    return Image.frombuffer("P", (w, h), np.ascontiguousarray(m).tobytes(), "raw", "P", 0, 1)


def load_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index mask PNG -> H×W uint8 (C-contiguous).

    Accepts P-mode (indices, as VOC ``SegmentationClass`` stores them) and 8-bit greyscale ``L``
    (some tools save raw indices that way).  RGB/RGBA colour masks are rejected: colours are not
    indices, and guessing a colour->class mapping would silently mislabel pixels.
    """
    path = Path(path)
    try:
        # Masks are as large as their images: the images' pixel limit, not Pillow's bomb check.
        with _open(path, DEFAULT_MAX_PIXELS) as im:
            mode = im.mode
            if mode not in ("P", "L"):
                raise ValueError(
                    f"{path}: mask must be a palette (P) or 8-bit greyscale PNG of class indices, "
                    f"not mode {mode}; convert colour masks to indices first")
            im.load()
            arr = np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such mask file") from None
    except ValueError:
        raise
    except ImageReadError as exc:
        raise ValueError(f"{path}: unreadable mask PNG ({exc.reason})") from None
    except OSError as exc:
        raise ValueError(f"{path}: unreadable mask PNG ({one_line(exc)})") from None
    return np.ascontiguousarray(arr)
