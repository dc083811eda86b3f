"""Worker-side halves of the session: image loading, derived maps, ranking by uncertainty.

Everything here runs off the UI thread (through ``Session.run_task``) and touches no widget; what it
returns is handed to the session on the UI thread.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PySide6.QtGui import QImage

from .tasks import alongside

__all__ = ["Loaded", "derived", "display_image", "load_image", "most_uncertain", "read_for_display", "read_preview"]


@dataclass
class Loaded:
    """What the image loader hands back to the UI thread."""
    image_id: str
    image: np.ndarray | None          # H×W×3 uint8, None when unreadable
    mask: np.ndarray | None           # H×W uint8 from the store, None when there is none
    probs: np.ndarray | None          # C×h×w float32 cached probabilities: H×W, or a huge image's capped grid
    raw: np.ndarray | None            # H×W uint8 argmax of probs
    unc: np.ndarray | None            # H×W float32 normalised entropy
    warning: str | None = None
    display: Any = None               # the image as a QImage in the screen's pixel format
    size: tuple[int, int] | None = None  # full-resolution (H, W); None when unreadable
    # True when ``image`` is None but ``display`` holds a reduced decode (a JPEG seen at 1/2..1/8
    # scale): the session then decodes the full pixels in a second task.
    preview: bool = False
    # H×W bool: the stored mask's pixels a person set (None without a mask; see engine.store.provenance)
    confirmed: np.ndarray | None = None


def display_image(image: np.ndarray) -> QImage:
    """H×W×3 uint8 RGB -> a QImage in the screen's 32-bit format, owning its pixels.

    QImage is safe off the UI thread, so loaders call this in a worker: at 12 Mpx the RGB888 ->
    RGB32 conversion costs ~0.1 s that would otherwise stall the switch to the image.
    """
    h, w = image.shape[:2]
    img = np.ascontiguousarray(image)
    qimg = QImage(img.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return qimg.convertToFormat(QImage.Format.Format_RGB32)  # a deep copy, in the native format


def read_for_display(path: Any) -> tuple[np.ndarray, Any]:
    """Decode an image and convert it for the screen (both slow at 12 Mpx: worker thread only)."""
    from engine import read_image

    image = read_image(path)
    return image, display_image(image)


def read_preview(path: Any, max_side: int) -> tuple[np.ndarray | None, Any, tuple[int, int]]:
    """(full image or None, QImage to show, full (H, W)): a reduced JPEG decode when there is one,
    so the picture reaches the screen in a fraction of the full decode's time; worker thread only."""
    from engine import read_image_preview

    image, size = read_image_preview(path, max_side)
    return (image if image.shape[:2] == size else None), display_image(image), size


def derived(probs: np.ndarray | None, size: tuple[int, int] | None = None,
            ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(argmax labels H×W uint8, uncertainty H×W float32) of probabilities for an image of ``size``;
    worker thread only.  Probabilities on a smaller grid (a huge image's cache entry, see
    engine.probgrid) are enlarged band by band, so only the two H×W maps are ever full size."""
    if probs is None:
        return None, None
    from ..editing.uncertainty import uncertainty
    if size is None or tuple(probs.shape[1:]) == tuple(size):
        return probs.argmax(0).astype(np.uint8), uncertainty(probs)
    from engine import argmax0_u8, upsample_bands
    labels, unc = np.empty(size, np.uint8), np.empty(size, np.float32)
    for y0, band in upsample_bands(probs, *size):
        b = band.numpy()
        argmax0_u8(b, labels[y0:y0 + b.shape[1]])
        unc[y0:y0 + b.shape[1]] = uncertainty(b)
    return labels, unc


def load_image(store: Any, image_id: str, model_id: str | None, ready: tuple | None,
               preview_side: int | None = None, *, cancel: Callable[[], bool]) -> Loaded | None:
    """Everything the UI needs to show ``image_id``: pixels (unless ``ready`` has them), the stored
    mask, fresh cached probabilities and what derives from them.  None when cancelled.

    With ``preview_side``, a JPEG larger than that comes back as a reduced ``display`` only
    (``preview=True``, ``image`` None); mask and probabilities are always at full resolution.
    """
    from engine import ImageReadError, grid_fits
    path = store.image_path(image_id)
    # The mask and probabilities are read while the pixels decode: both mostly run in C with the GIL
    # released (zlib, libjpeg), so on two cores the switch costs the longer of the two, not the sum.
    annotations = alongside(_read_annotations, store, image_id, model_id)
    try:
        if ready is not None:
            image, display = ready
            size = image.shape[:2]
        elif preview_side is not None:
            image, display, size = read_preview(path, preview_side)
        else:
            image, display = read_for_display(path)
            size = image.shape[:2]
    except ImageReadError as exc:
        annotations.cancel()
        store.record_error(image_id, str(exc))
        return Loaded(image_id, None, None, None, None, None, f"cannot read {image_id}: {exc}")
    if store.error(image_id):
        store.record_error(image_id, None)
    mask, confirmed, probs, warning = annotations.result()
    if cancel():
        return None
    size = (int(size[0]), int(size[1]))
    if mask is not None and mask.shape != size:
        warning, mask = f"the stored mask of {image_id} does not fit the image; starting empty", None
    if mask is None or confirmed is None or confirmed.shape != mask.shape:
        confirmed = None
    if probs is not None and not grid_fits(probs.shape[1:], size):
        probs = None
    return Loaded(image_id, image, mask, probs, *derived(probs, size), warning, display, size, image is None,
                  confirmed)


def _read_annotations(store: Any, image_id: str, model_id: str | None) -> tuple:
    """(stored mask or None, its confirmed pixels or None, cached probabilities or None, warning or
    None) of ``image_id``."""
    from engine import StoreError
    warning, mask, confirmed = None, None, None
    try:
        mask = store.load_mask(image_id)
    except StoreError as exc:
        warning = str(exc)
    if mask is not None:
        confirmed = store.load_confirmed(image_id)
    cached = store.load_probs(image_id, model_id)
    return mask, confirmed, (cached.probs if cached is not None else None), warning


def most_uncertain(store: Any, model_id: str | None, current: str | None, *,
                   cancel: Callable[[], bool]) -> str | None:
    """The unreviewed image (not ``current``) whose cached probabilities have the highest mean
    normalised entropy; None when none has any."""
    from engine import Status

    from ..editing.uncertainty import mean_uncertainty
    best, best_u = None, -1.0
    for image_id in store.ids():
        if cancel():
            return None
        if image_id == current or store.status(image_id) is Status.REVIEWED:
            continue
        cached = store.load_probs(image_id, model_id)
        if cached is not None:
            u = mean_uncertainty(cached.probs)
            if u > best_u:
                best, best_u = image_id, u
    return best
