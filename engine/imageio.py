"""Reading images into the one form the rest of the engine uses: H×W×3 uint8 RGB.

Every Pillow mode a user's folder is likely to hold is normalised here, so the Predictor, the CRF and
the GUI never see grey, palette, alpha, 16-bit or CMYK data:

- EXIF orientation is applied (phone photos are stored sideways with a rotate flag).
- ``L``/``1``/``P`` expand to RGB; palette transparency is treated as alpha.
- Alpha (``LA``, ``PA``, ``RGBA``, palette transparency) is composited onto **black** by default
  (``alpha_background="white"`` is the alternative); transparent pixels carry no label information,
  and black is what a network sees for zero-padded regions anyway.
- ``I;16*``, ``I`` and ``F`` (16-bit, 32-bit integer and float greyscale) are scaled linearly from the
  image's own min..max to 0..255; a constant image becomes 0.  NaN/inf count as 0.
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` go through Pillow's conversion to RGB.
- Multi-frame files (GIF, TIFF) give their first frame.

Size: Pillow's own decompression-bomb guard (a warning at ~89 Mpx, an error at ~179 Mpx) is replaced by
``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`), checked from the header before any pixel is
decoded, so a 12000×9000 scan reads fine and a 50000×50000 one gets a clear message instead.
Unreadable, truncated and non-image files raise :class:`ImageReadError` with a one-line reason.
"""
from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import one_line

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "read_image_preview",
    "to_rgb_uint8",
    "image_size",
    "list_images",
]

# 250 Mpx: a 20000×12500 scan (750 MB as RGB uint8) still reads; beyond that a typo'd or hostile file
# is far more likely than a real photo.
DEFAULT_MAX_PIXELS = 250_000_000

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm",
})

# Pillow's bomb limit is a module global; it is lifted only while *we* open a file (header read), and
# the lock keeps two of our threads from restoring each other's value out of order.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageReadError(Exception):
    """An image could not be read; ``str(err)`` is one line: ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = one_line(reason)  # whatever Pillow said
        super().__init__(f"{self.path}: {self.reason}")


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Image files (by extension, case-insensitive) in ``folder``, sorted; hidden files skipped."""
    root = Path(folder)
    it = root.rglob("*") if recursive else root.iterdir()
    found = [p for p in it if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found)


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own check below replaces Pillow's
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageReadError(path, f"image is {w}x{h} ({w * h / 1e6:.0f} Mpx), above the limit of "
                                   f"{max_pixels / 1e6:.0f} Mpx (raise max_pixels to read it)")
    return im


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the header, after EXIF orientation, without decoding pixels."""
    path = Path(path)
    try:
        im = _open(path, None)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, _reason(exc)) from None
    with im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block must not hide the image size
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               alpha_background: str = "black") -> np.ndarray:
    """Read ``path`` as an H×W×3 uint8 RGB array (C-contiguous), EXIF orientation applied.

    ``max_pixels``: refuse images with more pixels (checked before decoding); None for no limit.
    ``alpha_background``: ``"black"`` (default) or ``"white"``, what transparent pixels become.
    Raises :class:`ImageReadError` for a missing, unreadable, truncated, corrupt or oversized file.
    """
    return _read(path, max_pixels, alpha_background, None)[0]


def read_image_preview(path: str | os.PathLike, max_side: int = 1024, *,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       alpha_background: str = "black") -> tuple[np.ndarray, tuple[int, int]]:
    """A quick, possibly reduced decode for showing an image before its full decode is done.

    Returns ``(image, (height, width))``: ``image`` is h×w×3 uint8 RGB (EXIF orientation applied) and
    ``(height, width)`` the full-resolution size after orientation, what :func:`read_image` would give.
    JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``), the largest reduction
    whose longer side is still at least ``max_side``: a 12 Mpx photo decodes in about a quarter of the
    time.  Other formats have no reduced decode, so their image comes back at full size; callers
    compare ``image.shape[:2]`` with the size to know whether a full decode is still needed.
    Errors as :func:`read_image`.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    return _read(path, max_pixels, alpha_background, int(max_side))


def _read(path: str | os.PathLike, max_pixels: int | None, alpha_background: str,
          draft_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    path = Path(path)
    if alpha_background not in ("black", "white"):
        raise ValueError(f"alpha_background must be 'black' or 'white', not {alpha_background!r}")
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image")
    try:
        im = _open(path, max_pixels)
    except ImageReadError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, _reason(exc)) from None
    try:
        with im:
            im.seek(0)
            w, h = im.size
            if draft_side is not None and im.format == "JPEG" and max(w, h) > draft_side:
                s = draft_side / max(w, h)
                # draft() keeps both sides >= the request: the longer side stays >= draft_side.
                im.draft(im.mode, (max(1, int(np.ceil(w * s))), max(1, int(np.ceil(h * s)))))
            # Feed the decoder in one block rather than Pillow's 64 KiB: each block is a Python-level
            # read that needs the GIL, and with a busy UI thread a 3 MB JPEG's 50 blocks tripled the
            # decode time in the app's worker thread.
            im.decodermaxblock = max(im.decodermaxblock, min(_file_size(path), _MAX_BLOCK))
            im.load()  # decode now so truncation surfaces here, not inside a conversion
            try:  # after load(): PNG's getexif() would decode (and swallow a corrupt stream's error)
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block must not hide the pixels
                orientation = 1
            full = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
            if orientation != 1:
                # Only when there is something to rotate: exif_transpose copies the whole image
                # otherwise (~36 MB and tens of ms at 12 Mpx, for nothing).
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # a malformed EXIF block: keep the pixels, skip the rotation
                    full = (h, w)
            return _pil_to_rgb(im, alpha_background), full
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, _reason(exc)) from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode this image") from None


_MAX_BLOCK = 64 << 20


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can read (unknown or corrupt format)"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated image file ({text})"
    return f"corrupt or unreadable image ({text})"


def _pil_to_rgb(im: Image.Image, background: str) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        # Palette transparency (GIF/PNG tRNS) becomes a real alpha channel before compositing.
        im = im.convert("RGBA") if (mode == "PA" or "transparency" in im.info) else im.convert("RGB")
        mode = im.mode
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
        mode = "LA"
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGB",):
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if mode in ("1", "L"):
        return _grey_to_rgb(np.asarray(im.convert("L"), dtype=np.uint8))
    if mode in ("LA", "La", "RGBA", "RGBa"):
        arr = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return _composite(arr, background)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _grey_to_rgb(_scale_to_uint8(np.asarray(im)))
    # CMYK, YCbCr, LAB, HSV and anything else Pillow knows how to turn into RGB.
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255 of any numeric H×W array (non-finite values count as 0)."""
    a = np.asarray(a)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    f = a.astype(np.float32, copy=False)
    if not np.isfinite(f).all():
        f = np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = (f - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _composite(rgba: np.ndarray, background: str) -> np.ndarray:
    """H×W×4 uint8 -> H×W×3 uint8 composited over black or white, row bands to bound temporaries."""
    h, w = rgba.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    bg = 255.0 if background == "white" else 0.0
    band = max(1, 4_000_000 // max(w, 1))
    for y in range(0, h, band):
        blk = rgba[y:y + band].astype(np.float32)
        alpha = blk[:, :, 3:4] / 255.0
        out[y:y + band] = np.rint(blk[:, :, :3] * alpha + bg * (1.0 - alpha)).astype(np.uint8)
    return out


def to_rgb_uint8(array: np.ndarray, *, alpha_background: str = "black") -> np.ndarray:
    """Normalise a numpy image to H×W×3 uint8 RGB (no copy when it already is, C-contiguous).

    Accepts H×W, H×W×1, H×W×3 and H×W×4 (alpha composited like :func:`read_image`) of dtype:
    uint8 (as is); bool (0/255); float with all finite values in [0, 1] (×255, rounded); any other
    float or integer dtype, uint16 included (linear min..max -> 0..255, as 16-bit files are read).
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape[:2]:
        raise ValueError(f"expected an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        vals = a[finite] if not finite.all() else a
        if vals.size and float(vals.min()) >= 0.0 and float(vals.max()) <= 1.0:
            u8 = np.clip(np.rint(np.where(finite, a, 0.0) * 255.0), 0, 255).astype(np.uint8)
        else:
            u8 = _scale_channels(a)
    elif np.issubdtype(a.dtype, np.integer):
        u8 = _scale_channels(a)
    else:
        raise ValueError(f"unsupported image dtype {a.dtype}")
    if u8.ndim == 2:
        return _grey_to_rgb(u8)
    if u8.shape[2] == 4:
        if alpha_background not in ("black", "white"):
            raise ValueError(f"alpha_background must be 'black' or 'white', not {alpha_background!r}")
        return _composite(u8, alpha_background)
    return np.ascontiguousarray(u8)


def _scale_channels(a: np.ndarray) -> np.ndarray:
    """Range-scale colour and grey data; an integer alpha channel is scaled by its dtype's maximum
    (65535 is opaque in uint16), a float one by its own range."""
    if a.ndim == 3 and a.shape[2] == 4:
        colour = _scale_to_uint8(a[:, :, :3])
        if np.issubdtype(a.dtype, np.integer):
            top = float(np.iinfo(a.dtype).max)
            alpha = np.clip(np.rint(a[:, :, 3].astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
        else:
            alpha = _scale_to_uint8(a[:, :, 3])
            if not alpha.any():  # constant float alpha out of [0, 1]: treat as opaque
                alpha[:] = 255
        return np.concatenate([colour, alpha[:, :, None]], axis=2)
    return _scale_to_uint8(a)
