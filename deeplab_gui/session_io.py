"""Worker-side halves of the session: image loading, derived maps, ranking by uncertainty.

Everything here runs off the UI thread (through ``Session.run_task``) and touches no widget; what it
returns is handed to the session on the UI thread.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Loaded", "derived", "load_image", "most_uncertain", "read_for_display"]


@dataclass
class Loaded:
    """What the image loader hands back to the UI thread."""
    image_id: str
    image: np.ndarray | None          # H×W×3 uint8, None when unreadable
    mask: np.ndarray | None           # H×W uint8 from the store, None when there is none
    probs: np.ndarray | None          # C×H×W float32 cached probabilities
    raw: np.ndarray | None            # H×W uint8 argmax of probs
    unc: np.ndarray | None            # H×W float32 normalised entropy
    warning: str | None = None
    display: Any = None               # the image as a QImage in the screen's pixel format


def read_for_display(path: Any) -> tuple[np.ndarray, Any]:
    """Decode an image and convert it for the screen (both slow at 12 Mpx: worker thread only)."""
    from engine.imageio import read_image

    from .canvas import display_image
    image = read_image(path)
    return image, display_image(image)


def derived(probs: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(argmax labels H×W uint8, uncertainty H×W float32) of C×H×W probabilities; worker thread only."""
    if probs is None:
        return None, None
    from .uncertainty import uncertainty
    return probs.argmax(0).astype(np.uint8), uncertainty(probs)


def load_image(store: Any, image_id: str, model_id: str | None, ready: tuple | None, *,
               cancel: Callable[[], bool]) -> Loaded | None:
    """Everything the UI needs to show ``image_id``: pixels (unless ``ready`` has them), the stored
    mask, fresh cached probabilities and what derives from them.  None when cancelled."""
    from engine.imageio import ImageReadError
    from engine.storeformat import StoreError
    try:
        image, display = ready if ready is not None else read_for_display(store.image_path(image_id))
    except ImageReadError as exc:
        store.record_error(image_id, str(exc))
        return Loaded(image_id, None, None, None, None, None, f"cannot read {image_id}: {exc}")
    if store.error(image_id):
        store.record_error(image_id, None)
    if cancel():
        return None
    warning, mask = None, None
    try:
        mask = store.load_mask(image_id)
        if mask is not None and mask.shape != image.shape[:2]:
            warning, mask = f"the stored mask of {image_id} does not fit the image; starting empty", None
    except StoreError as exc:
        warning = str(exc)
    cached = store.load_probs(image_id, model_id)
    probs = cached.probs if cached is not None and cached.probs.shape[1:] == image.shape[:2] else None
    return Loaded(image_id, image, mask, probs, *derived(probs), warning, display)


def most_uncertain(store: Any, model_id: str | None, current: str | None, *,
                   cancel: Callable[[], bool]) -> str | None:
    """The unreviewed image (not ``current``) whose cached probabilities have the highest mean
    normalised entropy; None when none has any."""
    from engine.storeformat import Status

    from .uncertainty import mean_uncertainty
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
