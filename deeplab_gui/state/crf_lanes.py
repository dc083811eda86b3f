"""The worker-thread half of the live CRF: building a LiveCRF and serving it in two lanes.

Nothing here touches Qt. :class:`~.crf.CRFState` runs each lane as a generator task on the app's task
runner; what a lane yields (a :class:`Frame` to show, a :class:`Handoff` to the full lane, a
:class:`Failure`) reaches the UI thread, in order, through the runner's ``yielded`` signal.

Two lanes because a full-size stage cannot always stop at once (building a new lattice after a width
changed takes a while): on one lane, the next slider move's preview would wait behind it. Each lane has
a one-slot mailbox (a newer request replaces one not yet started: latest wins) and runs only while its
mailbox has work, so it holds a pool thread only while it refines.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from engine import one_line, resize_image, resize_probs
from engine.crf import CRFParams, LiveCRF, LiveResult

__all__ = ["LANES", "MAX_LIVE_PIXELS", "Failure", "Frame", "Handoff", "LabelScaler", "LiveLanes", "ScaledLiveCRF",
           "build_live"]

log = logging.getLogger("deeplab_gui")

# Above this many pixels the live CRF runs on a reduced copy (see build_live).
MAX_LIVE_PIXELS = 2_000_000
LANES = ("preview", "full")


@dataclass(frozen=True)
class Frame:
    """One answer for the screen: the engine's result and its labels at the picture's size."""

    result: LiveResult
    labels: np.ndarray  # H×W uint8


@dataclass(frozen=True)
class Handoff:
    """The preview lane is done with a request; the full lane takes it if it is still the latest."""

    request_id: int
    params: CRFParams


@dataclass(frozen=True)
class Failure:
    """A request failed (logged with its traceback); later requests are still served."""

    message: str


class LabelScaler:
    """Labels of a result at the picture's size, computed on the lane's thread so the UI thread only
    swaps an array. ``image_size``: the picture's (H, W) when the CRF runs on a reduced copy."""

    def __init__(self, image_size: tuple[int, int] | None = None) -> None:
        self.image_size = image_size
        self._index: tuple[tuple, np.ndarray, np.ndarray] | None = None

    def __call__(self, res: LiveResult) -> np.ndarray:
        target = self.image_size or res.image_size
        if res.stage == "full" and target == res.image_size:
            return res.full_labels()
        return self._nearest(res.labels, target)

    def _nearest(self, small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Labels scaled to ``size`` by nearest neighbour: a gather of H×W bytes (about 1 ms for
        500×375) instead of bilinear upsampling of every kept class (tens of ms), which would double
        the slider-to-screen latency; the full-size answer follows with exact boundaries."""
        h, w = size
        key = (small.shape, (h, w))
        index = self._index  # both lanes call this: read the cache once, replace it whole
        if index is None or index[0] != key:
            rows = np.minimum(((np.arange(h) + 0.5) * small.shape[0] / h).astype(np.intp), small.shape[0] - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * small.shape[1] / w).astype(np.intp), small.shape[1] - 1)
            index = self._index = (key, rows, cols)
        _, rows, cols = index
        return small[rows[:, None], cols[None, :]]


class LiveLanes:
    """A preview lane and a full lane over one ``LiveCRF``.

    ``start(lanes, lane, token)`` is called (on the thread that calls :meth:`request`, :meth:`hand_on`
    or :meth:`finished`: the UI thread) whenever an idle lane gets work; it must run
    ``lanes.lane_task(lane, token, cancel=...)`` as a task and call ``lanes.finished(lane, token)`` when
    that task ends. A lane task serves its mailbox until it is empty and then returns.
    """

    def __init__(self, live: LiveCRF, image_size: tuple[int, int] | None,
                 start: Callable[[LiveLanes, str, int], None]) -> None:
        self.live = live
        self.scaler = LabelScaler(image_size)
        self._start = start
        self._lock = threading.Lock()
        self._mail: dict[str, tuple[int, CRFParams] | None] = {lane: None for lane in LANES}
        self._running: dict[str, int | None] = {lane: None for lane in LANES}  # token of the lane's task
        self._tokens = 0
        self._closed = False
        self.tasks: dict[str, object] = {}  # lane -> the handle of its newest task (anything with cancel())

    @property
    def closed(self) -> bool:
        return self._closed

    def request(self, params: CRFParams) -> int:
        """A new request (it supersedes all earlier ones): preview first, then full size."""
        rid = self.live.submit(params)
        self._post("preview", (rid, params))
        return rid

    def hand_on(self, request_id: int, params: CRFParams) -> None:
        """After the preview of ``request_id``: its full-size stage, unless a newer request came."""
        if self.live.is_current(request_id):
            self._post("full", (request_id, params))

    def finished(self, lane: str, token: int) -> None:
        """A lane task ended. One that ended without emptying its mailbox (cancelled before it ran,
        or it failed) is replaced, so a lane is never left marked busy with work waiting."""
        with self._lock:
            if self._running[lane] != token:
                return
            self._running[lane] = None
            again = self._mail[lane] is not None and not self._closed
        if again:
            self._kick(lane)

    def close(self) -> None:
        """Stop serving: queued work is dropped and running stages stop at their next check."""
        with self._lock:
            self._closed = True
            self._mail = {lane: None for lane in LANES}
        for handle in self.tasks.values():
            handle.cancel()

    def _post(self, lane: str, item: tuple[int, CRFParams]) -> None:
        with self._lock:
            if self._closed:
                return
            self._mail[lane] = item
        self._kick(lane)

    def _kick(self, lane: str) -> None:
        with self._lock:
            if self._running[lane] is not None or self._closed:
                return
            self._tokens += 1
            token = self._running[lane] = self._tokens
        self._start(self, lane, token)

    def lane_task(self, lane: str, token: int, *, cancel: Callable[[], bool]) -> Iterator[object]:
        """The body of one lane task (a generator for the task runner; runs on a pool thread)."""
        preview = lane == "preview"

        def stop() -> bool:
            return self._closed or cancel()

        while True:
            with self._lock:
                item, self._mail[lane] = self._mail[lane], None
                if item is None or self._closed:
                    if self._running[lane] == token:
                        self._running[lane] = None
                    return
            rid, params = item
            if not preview and not self.live.is_current(rid):
                continue
            try:
                for res in self.live.run(params, request_id=rid, cancel=stop, preview=preview, full=not preview):
                    yield Frame(res, self.scaler(res))
            except Exception as exc:  # keep serving later requests; the person sees one line
                log.error("live CRF %s stage failed", lane, exc_info=exc)
                yield Failure(one_line(exc, 300) or "unexpected error (see the log)")
            if preview:
                yield Handoff(rid, params)


def build_live(image: np.ndarray, probs: np.ndarray) -> LiveCRF:
    """Worker-thread part of a restart: unaries and the preview level of a new LiveCRF.

    Images above ``MAX_LIVE_PIXELS`` are refined on a reduced copy (spatial widths scaled with it): a
    full-size lattice costs about 250 bytes per pixel, 3 GB and minutes for 12 megapixels. ``probs``
    may be on a grid smaller than the image (a huge image's cache entry, see engine.probgrid); the CRF
    then runs at that grid or below, so it never needs full-size probabilities. The lanes' LabelScaler
    scales the labels back to the picture's size.
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
