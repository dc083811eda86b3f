"""Live CRF for slider dragging: cached lattices and unaries, class pruning, preview first, latest wins.

A ``LiveCRF`` session belongs to one image and its network probabilities. What does not change while a
person drags the CRF sliders is computed once: the unaries and pruning ratios per resolution, and one
lattice per (resolution, kernel, widths) in a small LRU cache, so moving a weight or the iteration count
costs only the mean-field iterations and moving one width rebuilds one lattice. Each request is answered
first at a reduced size (widths scaled with the image) and then at full size; a newer request, or the
caller's ``cancel`` check, stops older work between steps. ``LiveCRFWorker`` serves a session on two
plain background threads for callers without an event loop; the app runs the same two stages
(``run(preview=..., full=...)``) as tasks of its own task runner.

The preview has a cost ceiling, because a slider can move into widths where the lattice stops sharing
vertices between pixels (a few pixels of θα, or a θβ of one or two colour units: every pixel's simplex is
its own, M approaches (d+1)·N, and a build costs five times the usual): each preview lattice has a vertex
budget, and one over it is abandoned after its cheap first step (keys and their sort) for the next
coarser preview level, a verdict remembered for those widths. The mean-field iterations of a preview
stop once ``preview_seconds`` have passed (at least one runs). At such widths the kernels act below
the preview's pixel size anyway, so the coarser level loses nothing that could be seen; the full-size
answer that follows is exact.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import dense
from .backends import PRUNE_TOLERANCE
from .lattice import LatticeTooLarge
from .params import CRFParams, check_image, check_probs

__all__ = ["LiveCRF", "LiveResult", "LiveCRFWorker", "PREVIEW_PIXELS", "PREVIEW_ITERATIONS", "PREVIEW_LEVELS",
           "PREVIEW_LATTICE_BUDGET", "PREVIEW_SECONDS"]

# Preview resolution budget: about 200×150 pixels, small enough for a few tens of milliseconds per
# request on a 2-core CPU, large enough to show where boundaries go.
PREVIEW_PIXELS = 20_000
# Mean-field changes labels little after a few iterations; the preview stops at this many (the full
# result runs all of them).
PREVIEW_ITERATIONS = 5
# Coarser preview levels, each with half the pixels of the one before, for widths whose lattices exceed
# the budget below.
PREVIEW_LEVELS = 3
# Lattice entries (vertices × (d+1)) allowed per preview pixel and kernel, on all but the last level.
# Usual widths need 2-6 (DeepLab v1 preset on 500×375: bilateral 2.2, smoothness 3.6); degenerate
# lattices reach d+1 per dimension, 30-36 for the appearance kernel.
PREVIEW_LATTICE_BUDGET = 12
# Wall-clock budget for a preview's iterations, counted from the start of its stage (lattice builds
# included); at least one iteration always runs.
PREVIEW_SECONDS = 0.05


@dataclass(frozen=True)
class LiveResult:
    """One answer to a request.

    ``probs`` is C×h×w float32 at the resolution the CRF ran at: the image's own size for the "full"
    stage, ``scale`` times it for the "preview" stage (a GUI shows that scaled; ``full_labels()`` and
    ``full_probs()`` upsample when a full-size array is needed).
    """

    request_id: int
    stage: str  # "preview" or "full"
    params: CRFParams  # as requested (widths in full-size pixels)
    probs: np.ndarray
    scale: float
    image_size: tuple[int, int]  # (H, W) of the session's image
    elapsed: float  # seconds from submit() (or the start of run()) to this result
    kept_classes: tuple[int, ...] = field(default=())
    iterations: int | None = None  # mean-field iterations run (a preview may stop early, see module doc)

    @property
    def labels(self) -> np.ndarray:
        """h×w uint8 argmax labels at the result's own resolution."""
        return self.probs.argmax(0).astype(np.uint8)

    def full_probs(self) -> np.ndarray:
        """C×H×W float32 probabilities at the image's size (bilinear, align_corners=False)."""
        if self.probs.shape[1:] == self.image_size:
            return self.probs
        t = torch.from_numpy(self.probs)[None]
        return F.interpolate(t, size=self.image_size, mode="bilinear", align_corners=False)[0].numpy()

    def full_labels(self) -> np.ndarray:
        """H×W uint8 labels at the image's size; only classes that took part are upsampled."""
        if self.probs.shape[1:] == self.image_size:
            return self.labels
        kept = list(self.kept_classes) or list(range(self.probs.shape[0]))
        t = torch.from_numpy(self.probs[kept])[None]
        up = F.interpolate(t, size=self.image_size, mode="bilinear", align_corners=False)[0]
        return np.asarray(kept, dtype=np.uint8)[up.argmax(0).numpy()]


@dataclass
class _Level:
    scale: float
    height: int
    width: int
    image: torch.Tensor  # (h, w, 3) float32 RGB 0-255
    logp: torch.Tensor  # (h*w, C) float32
    ratios: torch.Tensor  # (C,) pruning input
    max_entries: int | None = None  # lattice budget (vertices × (d+1)) per kernel; None: unlimited


class _Cancelled(Exception):
    pass


class LiveCRF:
    """A refinement session for one image.

    Args:
        image: H×W×3 uint8 RGB.  probs: C×H×W float probabilities (validated like ``refine``).
        device: torch device; None/"auto" picks CUDA when available.
        preview_pixels: pixel budget of the preview; images within it get only the full answer.
        preview_iterations: cap on mean-field iterations for the preview.
        preview_levels: how many preview levels (halving the pixels each time) the lattice budget
            may fall back through; 1 turns the fallback off.
        preview_seconds: time budget of a preview's iterations (None: always ``preview_iterations``).
        cache_bytes: memory budget for cached lattices (least recently used evicted first; a
            full-size 5-d lattice costs roughly 250 bytes per pixel, a 2-d one about 100).
        prune_tolerance: see ``backends.PRUNE_TOLERANCE``; 0 disables pruning.

    Thread safety: ``submit``/``is_current`` may be called from any thread; ``run`` from one worker.
    """

    def __init__(self, image: np.ndarray, probs: np.ndarray, *, device=None, preview_pixels: int = PREVIEW_PIXELS,
                 preview_iterations: int = PREVIEW_ITERATIONS, cache_bytes: int = 1 << 30,
                 prune_tolerance: float = PRUNE_TOLERANCE, preview_levels: int = PREVIEW_LEVELS,
                 preview_seconds: float | None = PREVIEW_SECONDS):
        img = check_image(image)
        p = check_probs(probs, img.shape)
        self.device = dense.pick_device(device)
        self.num_classes, self.height, self.width = p.shape
        self.prune_tolerance = prune_tolerance
        self.preview_iterations = preview_iterations
        self.preview_seconds = preview_seconds
        self._too_large: set[tuple] = set()  # (scale, kernel, widths) over the level's lattice budget
        self._cache: OrderedDict[tuple, dense.Kernel] = OrderedDict()
        self._cache_bytes = int(cache_bytes)
        self._lock = threading.Lock()
        self._latest = 0
        self._submitted: dict[int, float] = {}
        with torch.inference_mode():
            # Read-only arrays (the app's image, np.asarray of a Pillow image) make torch warn; the
            # float conversion copies anyway, so go through numpy's cast instead.
            image_t = torch.from_numpy(img.astype(np.float32)).to(self.device)
            probs_t = torch.from_numpy(p).to(self.device)
            self._full = self._level(1.0, image_t, probs_t)
            # Preview levels, finest first; all but the last carry a lattice budget. Each is averaged
            # down from the one before: only the finest reads the full-size arrays (168 MB of
            # probabilities for 2 MP and 21 classes).
            self._previews: list[_Level] = []
            n = self.height * self.width
            pixels = preview_pixels
            src_img, src_p = image_t.permute(2, 0, 1)[None], probs_t[None]
            while n > pixels and len(self._previews) < max(1, preview_levels):
                s = math.sqrt(pixels / n)
                h, w = max(1, round(self.height * s)), max(1, round(self.width * s))
                if self._previews and h * w >= self._previews[-1].height * self._previews[-1].width:
                    break  # too small to get any coarser
                src_img = F.interpolate(src_img, size=(h, w), mode="area")
                src_p = F.interpolate(src_p, size=(h, w), mode="area")
                src_p = src_p / src_p.sum(1, keepdim=True)
                small_img, small_p = src_img[0], src_p[0]
                # Spatial widths scale with the mean of the two axes' actual factors.
                scale = 0.5 * (h / self.height + w / self.width)
                self._previews.append(self._level(scale, small_img.permute(1, 2, 0).contiguous(), small_p,
                                                  PREVIEW_LATTICE_BUDGET * h * w))
                pixels //= 2
            if self._previews:
                self._previews[-1].max_entries = None

    @staticmethod
    def _level(scale: float, image: torch.Tensor, probs: torch.Tensor, max_entries: int | None = None) -> _Level:
        logp = dense.log_unary(probs)
        return _Level(scale, image.shape[0], image.shape[1], image, logp, dense.class_ratios(logp), max_entries)

    # ------------------------------------------------------------------ requests
    def submit(self, params: CRFParams) -> int:
        """Register a new request (it supersedes all earlier ones); returns its id."""
        if not isinstance(params, CRFParams):
            raise ValueError(f"params must be a CRFParams, got {type(params).__name__}")
        with self._lock:
            self._latest += 1
            self._submitted = {self._latest: time.perf_counter()}
            return self._latest

    def is_current(self, request_id: int) -> bool:
        with self._lock:
            return request_id == self._latest

    # ------------------------------------------------------------------ work
    def run(self, params: CRFParams, *, request_id: int | None = None, cancel: Callable[[], bool] | None = None,
            preview: bool = True, full: bool = True) -> Iterator[LiveResult]:
        """Yield the preview (when the image exceeds the preview budget) then the full-size result.

        ``preview`` / ``full`` select the stages (LiveCRFWorker runs them on separate threads).

        A started preview runs to the end even if newer requests arrive (it is short, and cutting it
        would starve a continuous drag of any feedback); after it, a newer request or ``cancel()``
        abandons the full-size work between iterations. Zero iterations yield the input at once.
        """
        if request_id is None:
            request_id = self.submit(params)
        with self._lock:
            start = self._submitted.get(request_id, time.perf_counter())

        def cancelled() -> bool:
            return cancel is not None and bool(cancel())

        def stale() -> bool:
            return not self.is_current(request_id) or cancelled()

        if self._previews and preview:
            if stale():
                return
            try:
                level, probs, kept, ran = self._solve_preview(params, cancelled)
            except _Cancelled:
                return
            yield LiveResult(request_id, "preview", params, probs, level.scale, (self.height, self.width),
                             time.perf_counter() - start, kept, ran)
        if not full or stale():
            return
        try:
            probs, kept, ran = self._solve(self._full, params, stale, params.iterations)
        except _Cancelled:
            return
        yield LiveResult(request_id, "full", params, probs, 1.0, (self.height, self.width),
                         time.perf_counter() - start, kept, ran)

    def refine(self, params: CRFParams) -> np.ndarray:
        """Synchronous full-size refinement through the session's caches (no preview)."""
        rid = self.submit(params)
        for result in self.run(params, request_id=rid, preview=False):
            return result.probs
        raise RuntimeError("request superseded")  # only if another thread submitted meanwhile

    def _kernel(self, level: _Level, key: tuple, dim: int, build: Callable[[int | None], dense.Kernel],
                stale) -> dense.Kernel:
        full_key = (level.scale,) + key
        limit = None if level.max_entries is None else level.max_entries // (dim + 1)
        with self._lock:
            kernel = self._cache.get(full_key)
            if kernel is not None:
                self._cache.move_to_end(full_key)
                return kernel
            if limit is not None and full_key in self._too_large:
                raise LatticeTooLarge(-1, limit)
        if stale():
            raise _Cancelled
        try:
            kernel = build(limit)
        except LatticeTooLarge:
            with self._lock:
                if len(self._too_large) > 1024:
                    self._too_large.clear()
                self._too_large.add(full_key)
            raise
        with self._lock:
            self._cache[full_key] = kernel
            # Evict least recently used kernels over budget, but never the two newest (one request
            # needs up to two kernels at once).
            while len(self._cache) > 2 and sum(k.nbytes for k in self._cache.values()) > self._cache_bytes:
                self._cache.popitem(last=False)
        return kernel

    def _kernels(self, level: _Level, params: CRFParams, stale) -> list[tuple[dense.Kernel, float]]:
        """The (kernel, weight) pairs of ``params`` at ``level``; LatticeTooLarge over its budget."""
        p = params.scaled(level.scale) if level.scale != 1.0 else params
        kernels = []
        # The appearance kernel first: it is the one that can exceed a budget, and cheaply.
        if p.bilateral_weight > 0:
            k = self._kernel(level, ("bilateral", p.bilateral_xy, p.bilateral_rgb), 5,
                             lambda limit: dense.bilateral_kernel(level.image, p.bilateral_xy, p.bilateral_rgb,
                                                                  limit), stale)
            kernels.append((k, p.bilateral_weight))
        if p.gaussian_weight > 0:
            k = self._kernel(level, ("gaussian", p.gaussian_xy), 2,
                             lambda limit: dense.gaussian_kernel(level.height, level.width, p.gaussian_xy,
                                                                 self.device, limit), stale)
            kernels.insert(0, (k, p.gaussian_weight))  # smoothness then appearance, as always
        return kernels

    def _solve_preview(self, params: CRFParams, cancelled) -> tuple[_Level, np.ndarray, tuple[int, ...], int]:
        """The preview on the finest level whose lattices fit their budget, within the time budget."""
        t0 = time.perf_counter()
        enough = None
        if self.preview_seconds is not None:
            budget = self.preview_seconds
            enough = lambda: time.perf_counter() - t0 > budget  # noqa: E731
        for level in self._previews:
            try:
                probs, kept, ran = self._solve(level, params, cancelled, self.preview_iterations, enough)
                return level, probs, kept, ran
            except LatticeTooLarge:
                continue
        raise AssertionError("the last preview level has no lattice budget")

    def _solve(self, level: _Level, params: CRFParams, stale, iterations: int,
               enough: Callable[[], bool] | None = None) -> tuple[np.ndarray, tuple[int, ...], int]:
        c = self.num_classes
        with torch.inference_mode():
            iterations = min(iterations, params.iterations)
            ran = 0
            if iterations == 0:
                q = torch.exp(level.logp)
                q = q / q.sum(1, keepdim=True)
                kept = tuple(range(c))
            else:
                kernels = self._kernels(level, params, stale)
                keep = dense.prune(level.ratios, kernels, self.prune_tolerance)
                done, stopped = 0, False

                def stop() -> bool:  # asked before iterations 2, 3, ...: counts those that ran
                    nonlocal done, stopped
                    done += 1
                    stopped = enough()
                    return stopped

                q = dense.mean_field(level.logp, kernels, iterations, keep=keep, cancel=stale,
                                     enough=None if enough is None else stop)
                if q is None:
                    raise _Cancelled
                ran = done if stopped else iterations
                kept = tuple(keep.tolist()) if keep is not None else tuple(range(c))
            probs = q.t().reshape(c, level.height, level.width)
            return probs.cpu().numpy().copy(), kept, ran


class LiveCRFWorker:
    """Serve a ``LiveCRF`` on two daemon threads: ``request(params)`` from any thread, results to a callback.

    A preview lane answers the latest request's preview; a full lane then computes its full-size result.
    Two lanes because a full-size stage cannot always stop at once (building a new lattice after a
    width changed takes a while): on one thread, the next slider move's preview would wait behind it.
    Only the latest request is worked on; superseded ones are dropped between steps.  ``on_result`` runs
    on a worker thread; for one request the preview always comes
    before the full result.  ``close()`` stops and joins the threads.
    """

    def __init__(self, session: LiveCRF, on_result: Callable[[LiveResult], None], *, preview: bool = True):
        self.session = session
        self._on_result = on_result
        self._preview = preview
        self._cond = threading.Condition()
        self._pending: tuple[int, CRFParams] | None = None  # waiting for the preview lane
        self._pending_full: tuple[int, CRFParams] | None = None  # waiting for the full lane
        self._closed = False
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._preview_loop, name="LiveCRF-preview", daemon=True),
                         threading.Thread(target=self._full_loop, name="LiveCRF-full", daemon=True)]
        for t in self._threads:
            t.start()

    def request(self, params: CRFParams) -> int:
        rid = self.session.submit(params)
        with self._cond:
            if self._preview:
                self._pending = (rid, params)
            else:
                self._pending_full = (rid, params)
            self._cond.notify_all()
        return rid

    def close(self, timeout: float | None = None) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _take(self, attr: str) -> tuple[int, CRFParams] | None:
        with self._cond:
            while getattr(self, attr) is None and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            item = getattr(self, attr)
            setattr(self, attr, None)
            return item

    def _serve(self, rid: int, params: CRFParams, *, preview: bool) -> None:
        try:
            for result in self.session.run(params, request_id=rid, cancel=lambda: self._closed,
                                           preview=preview, full=not preview):
                self._on_result(result)
        except Exception as exc:  # keep serving later requests; the caller can inspect .errors
            self.errors.append(exc)

    def _preview_loop(self) -> None:
        while (item := self._take("_pending")) is not None:
            self._serve(*item, preview=True)
            with self._cond:  # hand the request on; a newer one replaces an older that was not started
                if self.session.is_current(item[0]):
                    self._pending_full = item
                    self._cond.notify_all()

    def _full_loop(self) -> None:
        while (item := self._take("_pending_full")) is not None:
            if self.session.is_current(item[0]):
                self._serve(*item, preview=False)
