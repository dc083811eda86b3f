"""Class probabilities on a capped grid, and reading them back at the image's size band by band.

The annotation store caches each image's class probabilities for the CRF panel.  At the image's own
size they cost C×H×W values (21 classes of a 12000×9000 scan: 2.3 billion, 9 GB as float32) and
carry no more information than the network's output, which is at most ``max_side²`` pixels anyway.
So the cache holds them on a *grid* of at most :func:`probs_max_pixels` pixels (default 4 Mi, e.g.
2048×2048) with the image's aspect ratio: an image up to that size keeps its own size (nothing
changes for it), a larger one is scaled down.  Whoever needs a full-size map derives it in row bands
(:func:`upsample_bands`, :func:`labels_at`, :func:`crop_at`); full-size probabilities never exist.

Torch is imported inside the functions that resize, so the store can import this module cheaply.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterator

import numpy as np

__all__ = ["DEFAULT_PROBS_MAX_PIXELS", "PROBS_MAX_PIXELS_ENV", "DEFAULT_TILE_ELEMENTS", "probs_max_pixels",
           "probs_grid", "grid_fits", "upsample_bands", "labels_at", "crop_at", "sample_at", "resize_probs", "resize_plane",
           "resize_image", "normalise_", "argmax0_u8"]

DEFAULT_PROBS_MAX_PIXELS = 4 * 1024 * 1024
# Lowers (or raises) the cap for a whole process: tests, or a machine with little memory.
PROBS_MAX_PIXELS_ENV = "DEEPLAB_GUI_PROBS_MAX_PIXELS"
# Values per band when a full-size map is produced from a smaller grid: 4 Mi float32 = 16 MiB a buffer.
DEFAULT_TILE_ELEMENTS = 4 * 1024 * 1024


def probs_max_pixels() -> int:
    """The cap on cached probability pixels: ``$DEEPLAB_GUI_PROBS_MAX_PIXELS`` if set (>= 1), else 4 Mi."""
    raw = os.environ.get(PROBS_MAX_PIXELS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value >= 1:
            return value
    return DEFAULT_PROBS_MAX_PIXELS


def probs_grid(height: int, width: int, max_pixels: int | None = None) -> tuple[int, int]:
    """The (h, w) probabilities of a height×width image are cached at: its own size up to
    ``max_pixels`` (default :func:`probs_max_pixels`), else scaled down with the aspect ratio kept
    and h×w <= ``max_pixels``."""
    cap = probs_max_pixels() if max_pixels is None else max(1, int(max_pixels))
    if height * width <= cap:
        return int(height), int(width)
    s = math.sqrt(cap / (height * width))
    h, w = max(1, math.floor(height * s)), max(1, math.floor(width * s))
    while h * w > cap:  # only reachable when one side was raised to 1
        if h >= w:
            h -= 1
        else:
            w -= 1
    return h, w


def grid_fits(grid: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether probabilities on ``grid`` (h, w) can belong to an image of ``size`` (H, W): the same
    size, or no larger with the same aspect ratio (up to the rounding of :func:`probs_grid`)."""
    (gh, gw), (H, W) = tuple(grid[-2:]), tuple(size[:2])
    if (gh, gw) == (H, W):
        return True
    return 0 < gh <= H and 0 < gw <= W and abs(gh * W - gw * H) <= max(H, W)


class _Bilinear1D:
    """Source indices and weights of a 1-D bilinear resize, align_corners=False, as F.interpolate."""

    def __init__(self, n_in: int, n_out: int) -> None:
        import torch
        scale = n_in / n_out
        src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5
        src = src.clamp_(min=0.0)
        i0 = src.floor().long().clamp_(max=n_in - 1)
        self.i0 = i0
        self.i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
        self.w = (src - i0).to(torch.float32)


def _from_numpy(arr: np.ndarray) -> Any:
    import torch
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    # Pillow and np.load can hand out read-only arrays; nothing here writes to its input, so torch's
    # warning about it is noise (a copy would double the memory of a big map).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr)


def _as_tensor(probs: Any) -> Any:
    """C×h×w float32 CPU tensor sharing memory with ``probs`` when it already is float32."""
    import torch
    if isinstance(probs, torch.Tensor):
        return probs.float()
    return _from_numpy(np.ascontiguousarray(probs, dtype=np.float32))


def upsample_bands(probs: Any, height: int, width: int, tile_elements: int = DEFAULT_TILE_ELEMENTS,
                   ) -> Iterator[tuple[int, Any]]:
    """Bilinear (align_corners=False) resize of C×h×w probabilities to C×height×width, in row bands.

    Yields ``(first_row, C×b×width float32 tensor)``.  Rows use the source-index formula of
    ``F.interpolate`` (so bands join seamlessly), columns ``F.interpolate(mode="linear")``, the same
    separable formula; one band's buffers (about ``tile_elements`` values) exist at a time.  Meant
    for enlarging; shrinking a lot this way would alias (see :func:`resize_probs`).
    """
    import torch
    import torch.nn.functional as F
    low = _as_tensor(probs)
    c, h, w = low.shape
    rows = _Bilinear1D(h, height)
    band_rows = max(1, int(tile_elements) // max(1, c * width))
    with torch.inference_mode():
        for y0 in range(0, height, band_rows):
            y1 = min(height, y0 + band_rows)
            top = low.index_select(1, rows.i0[y0:y1])
            mid = torch.lerp(top, low.index_select(1, rows.i1[y0:y1]), rows.w[y0:y1].view(1, -1, 1))
            del top
            if w == width:
                yield y0, mid
            else:
                band = F.interpolate(mid.reshape(1, c * (y1 - y0), w), size=width, mode="linear",
                                     align_corners=False)
                del mid
                yield y0, band.view(c, y1 - y0, width)


def argmax0_u8(probs: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = probs.argmax(0)`` for C×b×W float32 into b×W uint8, ties to the lower index.

    A running maximum over the (few) classes: several times faster than argmax over a leading axis,
    which walks memory with a C×b×W stride.
    """
    best = probs[0].copy()
    out[...] = 0
    mask = np.empty(best.shape, dtype=bool)
    for k in range(1, probs.shape[0]):
        np.greater(probs[k], best, out=mask)
        out[mask] = k
        np.maximum(best, probs[k], out=best)


def labels_at(probs: Any, size: tuple[int, int], tile_elements: int = DEFAULT_TILE_ELEMENTS) -> np.ndarray:
    """H×W uint8 argmax of ``probs`` bilinearly resized to ``size``: H×W bytes plus one band."""
    height, width = int(size[0]), int(size[1])
    if probs.shape[0] > 255:
        raise ValueError(f"{probs.shape[0]} classes do not fit a uint8 label map beside void (255)")
    out = np.empty((height, width), dtype=np.uint8)
    if tuple(probs.shape[1:]) == (height, width):
        step = max(1, int(tile_elements) // max(1, probs.shape[0] * width))
        for y0 in range(0, height, step):  # banded too: a float16 cache entry converts one band at a time
            argmax0_u8(np.asarray(probs[:, y0:y0 + step], dtype=np.float32), out[y0:y0 + step])
        return out
    for y0, band in upsample_bands(probs, height, width, tile_elements):
        argmax0_u8(band.numpy(), out[y0:y0 + band.shape[1]])
    return out


def crop_at(probs: Any, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The ``box`` (y0, x0, y1, x1, half-open, in full-size pixels) of ``probs`` resized to ``size``:
    C×(y1-y0)×(x1-x0) float32, the very values the full bilinear resize has there, computed for the box
    alone."""
    y0, x0, y1, x1 = (int(v) for v in box)
    if tuple(probs.shape[1:]) == tuple(size):
        return np.ascontiguousarray(probs[:, y0:y1, x0:x1], dtype=np.float32)
    return sample_at(probs, size, np.arange(y0, y1), np.arange(x0, x1))


def sample_at(probs: Any, size: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """C×len(rows)×len(cols) float32: the values the bilinear resize of ``probs`` to ``size`` has at
    those full-size pixel rows and columns, computed for them alone."""
    import torch
    rows, cols = (torch.as_tensor(np.asarray(v, dtype=np.int64)) for v in (rows, cols))
    if not len(rows) or not len(cols):
        return np.zeros((probs.shape[0], len(rows), len(cols)), np.float32)
    if tuple(probs.shape[1:]) == tuple(size):
        r0, c0 = int(rows.min()), int(cols.min())
        low = _as_tensor(probs[:, r0:int(rows.max()) + 1, c0:int(cols.max()) + 1])
        return low.index_select(1, rows - r0).index_select(2, cols - c0).numpy()
    r1, c1 = _Bilinear1D(probs.shape[1], int(size[0])), _Bilinear1D(probs.shape[2], int(size[1]))
    ri0, ri1, ci0, ci1 = r1.i0[rows], r1.i1[rows], c1.i0[cols], c1.i1[cols]
    # Only the grid cells these pixels read, converted: the intermediate then holds C × rows × the
    # window's columns, not C × rows × the whole grid's width (a tall crop of a 4-megapixel grid
    # took gigabytes), and a float16 grid is never converted whole.
    r0, c0 = int(ri0.min()), int(ci0.min())
    low = _as_tensor(probs[:, r0:int(ri1.max()) + 1, c0:int(ci1.max()) + 1])
    with torch.inference_mode():
        r = torch.lerp(low.index_select(1, ri0 - r0), low.index_select(1, ri1 - r0), r1.w[rows].view(1, -1, 1))
        out = torch.lerp(r.index_select(2, ci0 - c0), r.index_select(2, ci1 - c0), c1.w[cols].view(1, 1, -1))
    return out.numpy()


def resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One H×W float map resized to ``size`` -> float32 (antialiased bilinear: an area average when
    shrinking, plain bilinear when enlarging)."""
    import torch
    import torch.nn.functional as F
    if tuple(plane.shape) == tuple(size):
        return np.ascontiguousarray(plane, dtype=np.float32)
    t = _from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    with torch.inference_mode():
        return F.interpolate(t, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False,
                             antialias=True)[0, 0].numpy()


def normalise_(probs: np.ndarray) -> np.ndarray:
    """Rescale C×h×w float32 ``probs`` in place so each pixel sums to 1 again; returns it."""
    total = probs.sum(0)
    np.maximum(total, np.float32(1e-12), out=total)
    probs /= total
    return probs


def resize_probs(probs: Any, size: tuple[int, int], tile_elements: int = DEFAULT_TILE_ELEMENTS) -> np.ndarray:
    """C×h×w probabilities resized to ``size`` -> C×H×W float32, still summing to 1 per pixel.

    Enlarging is bilinear (as :func:`upsample_bands`); shrinking averages over each output pixel's
    footprint (antialiased), one class at a time, so the temporaries stay at one channel of the input.
    """
    height, width = int(size[0]), int(size[1])
    c, h, w = probs.shape
    if (h, w) == (height, width):
        return np.ascontiguousarray(probs, dtype=np.float32)
    out = np.empty((c, height, width), dtype=np.float32)
    if height >= h and width >= w:
        for y0, band in upsample_bands(probs, height, width, tile_elements):
            out[:, y0:y0 + band.shape[1]] = band.numpy()
        return out
    for k in range(c):
        out[k] = resize_plane(np.asarray(probs[k]), (height, width))
    return normalise_(out)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H×W×3 uint8 resized to ``size`` (antialiased bilinear), without a float copy of the input."""
    import torch
    import torch.nn.functional as F
    if tuple(image.shape[:2]) == tuple(size):
        return image
    src = _from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)  # channels_last view
    with torch.inference_mode():
        out = F.interpolate(src, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False,
                            antialias=True)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())
