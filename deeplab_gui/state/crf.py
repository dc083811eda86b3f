"""The worker-thread half of the live CRF panel: building a LiveCRF and carrying its results to Qt.

Kept apart from the widgets in :mod:`.crf_panel`: nothing here touches a widget, everything runs on a
task-pool or ``LiveCRFWorker`` thread, and the only Qt in it is the queued signal that hands results
to the UI thread.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.crf import CRFParams, LiveCRF, LiveResult
from engine.probgrid import resize_image, resize_probs

__all__ = ["MAX_LIVE_PIXELS", "LiveAdapter", "ScaledLiveCRF", "build_live"]

# Above this many pixels the live CRF runs on a reduced copy (see build_live).
MAX_LIVE_PIXELS = 2_000_000


class LiveAdapter(QObject):
    """Carries LiveCRFWorker results (worker thread) to the UI thread as a queued signal.

    The upsampling to full-size labels happens here, on the worker thread, so the UI thread only
    swaps an array. ``generation`` lets the panel drop results of an image it has moved away from.
    """

    result = Signal(int, object, object)  # generation, LiveResult, HxW uint8 labels at the image's size

    def __init__(self, generation: int, image_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.generation = generation
        self.image_size = image_size  # the picture's (H, W) when the CRF runs on a reduced copy
        self._index: tuple[tuple, np.ndarray, np.ndarray] | None = None

    def on_result(self, res: LiveResult) -> None:  # runs on the LiveCRFWorker thread
        target = self.image_size or res.image_size
        if res.stage == "full" and target == res.image_size:
            labels = res.full_labels()
        else:
            labels = self._nearest(res.labels, target)
        self.result.emit(self.generation, res, labels)

    def _nearest(self, small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Labels scaled to ``size`` by nearest neighbour: a gather of H×W bytes (about 1 ms for
        500×375) instead of bilinear upsampling of every kept class (tens of ms), which would double
        the slider-to-screen latency; the full-size answer follows with exact boundaries."""
        h, w = size
        key = (small.shape, (h, w))
        if self._index is None or self._index[0] != key:
            rows = np.minimum(((np.arange(h) + 0.5) * small.shape[0] / h).astype(np.intp), small.shape[0] - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * small.shape[1] / w).astype(np.intp), small.shape[1] - 1)
            self._index = (key, rows, cols)
        _, rows, cols = self._index
        return small[rows[:, None], cols[None, :]]


def build_live(image: np.ndarray, probs: np.ndarray) -> LiveCRF:
    """Worker-thread part of a restart: unaries and the preview level of a new LiveCRF.

    Images above ``MAX_LIVE_PIXELS`` are refined on a reduced copy (spatial widths scaled with it): a
    full-size lattice costs about 250 bytes per pixel, 3 GB and minutes for 12 megapixels. ``probs``
    may be on a grid smaller than the image (a huge image's cache entry, see engine.probgrid); the CRF
    then runs at that grid or below, so it never needs full-size probabilities. The adapter scales
    the labels back to the picture's size.
    """
    h, w = image.shape[:2]
    size = (h, w)
    if h * w > MAX_LIVE_PIXELS:
        s = math.sqrt(MAX_LIVE_PIXELS / (h * w))
        size = (max(1, round(h * s)), max(1, round(w * s)))
    if probs.shape[1] * probs.shape[2] < size[0] * size[1]:
        size = (int(probs.shape[1]), int(probs.shape[2]))
    if size == (h, w):
        return LiveCRF(image, probs)
    # uint8 in, uint8 out: no float copy of a big picture; the probabilities only ever shrink here.
    small = resize_image(image, size)
    p = resize_probs(probs, size)
    return ScaledLiveCRF(small, p, math.sqrt(size[0] * size[1] / (h * w)))


class ScaledLiveCRF(LiveCRF):
    """A LiveCRF on a reduced copy: requests keep full-size widths, scaled here like the preview's."""

    def __init__(self, image: np.ndarray, probs: np.ndarray, scale: float) -> None:
        super().__init__(image, probs)
        self.scale = scale

    def run(self, params: CRFParams, **kw):
        for result in super().run(params.scaled(self.scale), **kw):
            yield dataclasses.replace(result, params=params)  # report what was asked for
