"""Click to correct, without Qt: click-model sessions, a region's class, CRF edge polish, CRF clicks.

:class:`ClickSession` keeps one object's prompts (positive and negative points, a box) and asks a
click predictor (``engine.ClickPredictor`` or anything with its ``predict``) for candidate masks after
each one, feeding the shown candidate's low-resolution logits back as the next round's mask input.
:func:`region_class` proposes the region's class from the segmentation model's probabilities,
:func:`polish_edges` lets the dense CRF move the region's border a few pixels onto image edges,
:func:`crf_click_region` is the weight-free click (a small seed carried by the CRF along image edges)
and :func:`accept_region` writes a region into the document as one undo step of a person's labels.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from engine import VOID

from .raster import BBox, bbox_of
from .reduce import Reduction, cell_counts
from .snap import SnapJob, grow_from

__all__ = ["CANDIDATE_PIXELS", "CLICK_DESCRIPTION", "CRF_CLICK_DESCRIPTION", "Candidate", "ClickSession",
           "RegionClasses", "accept_region", "crf_click_region", "polish_edges", "region_class"]

CLICK_DESCRIPTION = "Click region"
CRF_CLICK_DESCRIPTION = "CRF click"
SEED_RADIUS = 6          # px: the disc a CRF click marks as the clicked class (its colours are the seed's model)
_PROB_FLOOR = 1e-8       # log-probabilities are taken of at least this (a class ruled out stays finite)
# A region's class weighs at most this many cells of the probability grid: a larger region's cells are
# taken in square blocks, each at its middle cell (21 classes: a few MiB and milliseconds, where every
# cell of a 4-megapixel grid took 0.7 GB and seconds).
CLASS_CELLS = 16_384
# A photo over this many pixels gets its click candidates at about this many first (see Candidate).
CANDIDATE_PIXELS = 1 << 20
POLISH_MAX_PIXELS = 500_000   # an edge polish's CRF sees at most this many pixels (a larger crop is reduced)
# An edge polish's CRF spans the pixels within this many of the region's border (inside and out, within
# its crop) when they are under POLISH_RING_SHARE of the crop: a large region's polish then costs its
# border, not its box (500×375, a region of 300×380 px: 447 -> 208 ms on one thread), and moves its edge
# as the whole crop's CRF does (17 of 140 000 pixels differed; the farther pixels add little to the
# messages near the edge).
POLISH_REACH = 20
POLISH_RING_SHARE = 0.6


class Candidate:
    """One mask the click model proposes and its predicted IoU (``score``).

    ``mask`` is H×W bool at the image's size. On a photo over :data:`CANDIDATE_PIXELS` the model's
    masks are first made at about that many pixels (``preview``: what the click tool shows and
    weighs the class by; at the model's own resolution, 1024 pixels a side, nothing is lost) and
    ``mask`` is made from the same logits when first asked for (tens of milliseconds on a
    12-megapixel photo, where making all three candidates at full size took 100-200 ms a click).
    Elsewhere ``preview`` is ``mask``. Either may be made when first read (``make``; ``preview``
    may be a callable that makes it): a click's candidates other than the one shown first are
    made after the preview is painted (ClickSession.settle) or when Tab shows them.
    """
    __slots__ = ("score", "_preview", "_mask", "_make")

    def __init__(self, mask: np.ndarray | None, score: float, *,
                 preview: np.ndarray | Callable[[], np.ndarray] | None = None,
                 make: Callable[[], np.ndarray] | None = None) -> None:
        if mask is None and make is None:
            raise ValueError("a candidate needs its mask or a way to make it")
        self.score = float(score)
        self._mask, self._make, self._preview = mask, make, preview

    @property
    def mask(self) -> np.ndarray:
        mask = self._mask
        if mask is None:   # two threads may both make it: the same bits either way
            mask = self._mask = np.asarray(self._make(), dtype=bool)
        return mask

    @property
    def preview(self) -> np.ndarray:
        preview = self._preview
        if preview is None:
            return self.mask
        if callable(preview):
            preview = self._preview = np.asarray(preview(), dtype=bool)
        return preview

    @property
    def ready(self) -> bool:
        """Whether ``mask`` is made (reading it then costs nothing)."""
        return self._mask is not None


class ClickSession:
    """The prompts for one object and the candidates they give.

    ``predictor``: has ``predict(points, labels, box, mask_input, multimask)`` returning masks K×H×W,
    scores K and low_res_logits K×256×256 (``engine.ClickPredictor`` after ``set_image``). One
    with ``predicts_lazily`` takes ``lazy=True`` and hands back ``mask(k)`` instead of all the masks:
    only the candidate shown first is made before the preview, the others in :meth:`settle` (or
    when Tab shows them first).
    ``shape``: the image's (H, W). One call at a time (the app runs it in its worker queue).

    The first prompt, a single point, is ambiguous (a part or the whole?), so it asks for three
    candidates as the model's authors advise; once there are more prompts (or a box, which is not
    ambiguous) one mask is asked for. Candidates are shown best score first; :meth:`cycle` steps.
    """

    def __init__(self, predictor: Any, shape: tuple[int, int]) -> None:
        self.predictor = predictor
        self.shape = (int(shape[0]), int(shape[1]))
        self.clear()

    def fork(self) -> ClickSession:
        """A copy to try a prompt on without changing this session (a guessed click); the arrays
        are shared, which is safe because a session replaces them and never writes into them."""
        other = object.__new__(ClickSession)
        other.__dict__.update(self.__dict__)
        other._points, other._labels = list(self._points), list(self._labels)
        other._candidates = list(self._candidates)
        return other

    def clear(self) -> None:
        """Forget every prompt and candidate (a new object)."""
        self._points: list[tuple[float, float]] = []
        self._labels: list[int] = []
        self._box: tuple[float, float, float, float] | None = None
        self._candidates: list[Candidate] = []
        self._logits: _Logits | None = None        # K×256×256, in the candidates' order
        self._index = 0
        self._before_point: tuple | None = None    # (candidates, logits, index) before the last point

    @property
    def points(self) -> np.ndarray:
        """N×2 float (x, y) of the clicks so far."""
        return np.array(self._points, dtype=np.float64).reshape(-1, 2)

    @property
    def labels(self) -> np.ndarray:
        """N int: 1 for a positive click, 0 for a negative one."""
        return np.array(self._labels, dtype=np.int64)

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        return self._box

    @property
    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    @property
    def index(self) -> int:
        return self._index

    @property
    def current(self) -> Candidate | None:
        return self._candidates[self._index] if self._candidates else None

    def _check_xy(self, x: float, y: float) -> tuple[float, float]:
        h, w = self.shape
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w and 0 <= y < h):
            raise ValueError(f"point ({x}, {y}) is outside the {w}x{h} image")
        return float(x), float(y)

    def add_point(self, x: float, y: float, positive: bool = True) -> list[Candidate]:
        """Add a click at image pixel (x, y) and re-predict with every prompt so far."""
        self._before_point = None
        xy = self._check_xy(x, y)
        self._before_point = (self._candidates, self._logits, self._index)
        self._points.append(xy)
        self._labels.append(1 if positive else 0)
        return self._predict()

    def retract_point(self, xy: tuple[float, float] | None = None) -> list[Candidate]:
        """Take the last point back (a press that turned into a box drag): the prompts, candidates
        and shown one are again what they were before it, without predicting. Only the last point
        can be taken back, once, and with ``xy`` only if it is that point; otherwise nothing
        changes."""
        if xy is not None and self._points and self._points[-1] != tuple(float(v) for v in xy):
            return list(self._candidates)
        if self._points and self._before_point is not None:
            self._points.pop()
            self._labels.pop()
            self._candidates, self._logits, self._index = self._before_point
            self._before_point = None
        return list(self._candidates)

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> list[Candidate]:
        """Set (or replace) the box around the object and re-predict."""
        h, w = self.shape
        xa, xb = sorted((float(np.clip(x0, 0, w)), float(np.clip(x1, 0, w))))
        ya, yb = sorted((float(np.clip(y0, 0, h)), float(np.clip(y1, 0, h))))
        if xb - xa < 1 or yb - ya < 1:
            raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) is empty within the {w}x{h} image")
        self._box = (xa, ya, xb, yb)
        self._before_point = None
        return self._predict()

    def select(self, index: int) -> None:
        """Make candidate ``index`` the shown one (its logits feed the next prompt)."""
        if self._candidates:
            self._index = int(index) % len(self._candidates)

    def cycle(self) -> int:
        """Show the next candidate (Tab); returns its index (0 when there is none)."""
        if self._candidates:
            self._index = (self._index + 1) % len(self._candidates)
        return self._index

    def settle(self) -> None:
        """Have the shown candidates' low-resolution logits made now (the next prompt's mask input;
        a predictor may hand its masks back before all of them are made, see
        ``engine.ClickPrediction``). The app calls it in the worker after showing a click's
        candidates, so the next click does not wait for them."""
        if self._logits is not None:
            self._logits.array  # noqa: B018
        for cand in self._candidates:   # the candidates Tab shows next (made when first read)
            cand.preview  # noqa: B018

    def preview_size(self) -> tuple[int, int] | None:
        """The size the candidates are first made at, or None for the image's own size."""
        h, w = self.shape
        if h * w <= CANDIDATE_PIXELS or not getattr(self.predictor, "predicts_at_size", False):
            return None
        s = math.sqrt(CANDIDATE_PIXELS / (h * w))
        return max(1, int(h * s)), max(1, int(w * s))

    def _predict(self) -> list[Candidate]:
        single_point = len(self._points) == 1 and self._box is None
        shown = None if self._logits is None else self._logits[self._index][None]
        size = self.preview_size()
        # Only the candidate shown first is made at once where the predictor can (the others after
        # the preview is painted, see settle).
        lazy = bool(getattr(self.predictor, "predicts_lazily", False))
        pred = self.predictor.predict(points=self.points if self._points else None,
                                      labels=self.labels if self._points else None, box=self._box,
                                      mask_input=shown, multimask=single_point,
                                      **({} if size is None else {"size": size}), **({"lazy": True} if lazy else {}))
        scores = np.asarray(pred.scores, dtype=np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable").tolist()
        if lazy:
            if scores.size < 1:
                raise ValueError("the click model returned no candidates")
            made = functools.partial(_checked_mask, pred, size or self.shape)
            masks = [made(order[0]) if i == 0 else functools.partial(made, k) for i, k in enumerate(order)]
        else:
            got = np.asarray(pred.masks, dtype=bool)
            if got.ndim != 3 or got.shape[1:] != (size or self.shape) or len(scores) != got.shape[0]:
                raise ValueError(f"the click model returned masks {got.shape} for a {self.shape} image")
            masks = [got[k] for k in order]
        if size is None:
            self._candidates = [Candidate(m, scores[k]) if not callable(m) else Candidate(None, scores[k], make=m)
                                for k, m in zip(order, masks)]
        else:
            self._candidates = [Candidate(None, scores[k], preview=m, make=functools.partial(pred.full, k))
                                for k, m in zip(order, masks)]
        self._logits = _Logits(pred, order)
        self._index = 0
        return list(self._candidates)


def _checked_mask(pred: Any, shape: tuple[int, int], k: int) -> np.ndarray:
    """Candidate ``k`` of a lazy prediction, checked to be an H×W mask of ``shape``."""
    mask = np.asarray(pred.mask(k), dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"the click model returned a mask {mask.shape} for a {shape} image")
    return mask


class _Logits:
    """A prediction's low-resolution logits in the candidates' order, read from it when first
    needed (a session's forks share it: the same array either way)."""
    __slots__ = ("_pred", "_order", "_array")

    def __init__(self, pred: Any, order: list[int]) -> None:
        self._pred, self._order, self._array = pred, order, None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.asarray(self._pred.low_res_logits, dtype=np.float32)[self._order]
        return self._array

    def __getitem__(self, index: int) -> np.ndarray:
        return self.array[index]


def region_class(probs: np.ndarray | None, mask: np.ndarray, default: int) -> int:
    """The class whose summed log-probability over ``mask`` (bool over the whole image, at its size
    or reduced: a large photo's click preview) is largest.

    ``probs``: C×h×w, the image's size or a coarser grid (each pixel counts at the grid cell it falls
    in, so no full-size probabilities are made; a region over more than :data:`CLASS_CELLS` cells
    is weighed in blocks of cells). ``default`` when there are none or the mask is empty.
    """
    if probs is None or mask is None:
        return int(default)
    probs = np.asarray(probs)
    got = cell_counts(np.asarray(mask, dtype=bool), probs.shape[1:], CLASS_CELLS)
    if got is None:
        return int(default)
    counts, rows, cols = got
    # Only the cells the region touches: their log-probabilities in float32 (a fresh gathered copy,
    # taken in place), summed with their counts in float64.
    r, k = np.nonzero(counts)
    cells = probs[:, rows[r], cols[k]].astype(np.float32, copy=False)   # C × cells touched
    logs = np.log(np.maximum(cells, np.float32(_PROB_FLOOR), out=cells), out=cells)
    score = logs.astype(np.float64) @ counts[r, k].astype(np.float64)
    return int(np.argmax(score))


class RegionClasses:
    """The class each candidate would get (:func:`region_class` of its preview), each weighed when
    first asked for: a click's job weighs the candidate it shows, the others are weighed while the
    person looks at it (:meth:`fill`, in a worker) or when Tab reaches them, whichever comes first
    (about 2 ms each at 500×375, 4-7 ms for a large photo's preview: the three at once delayed
    every preview). Without probabilities every entry is None (the current class applies).
    Either thread may weigh an entry: both get the same class. ``shown``: weigh that one now."""
    __slots__ = ("_probs", "_cands", "_default", "_got")

    def __init__(self, probs: np.ndarray | None, candidates: list[Candidate], default: int,
                 shown: int | None = None) -> None:
        self._probs, self._cands, self._default = probs, list(candidates), int(default)
        self._got: list[int | None] = [None] * len(self._cands)
        if shown is not None and self._cands:
            self[shown]

    def __len__(self) -> int:
        return len(self._cands)

    def __getitem__(self, index: int) -> int | None:
        if self._probs is None:
            return None
        got = self._got[index]
        if got is None:
            got = self._got[index] = region_class(self._probs, self._cands[index].preview, self._default)
        return got

    def fill(self) -> None:
        """Weigh every candidate not weighed yet."""
        for i in range(len(self)):
            self[i]


def _box_around(mask: np.ndarray, margin: int) -> BBox | None:
    box = bbox_of(mask)
    if box is None:
        return None
    h, w = mask.shape
    y0, x0, y1, x1 = box
    return max(y0 - margin, 0), max(x0 - margin, 0), min(y1 + margin, h), min(x1 + margin, w)


def _crop_probs(probs: Any, size: tuple[int, int], box: BBox) -> np.ndarray | None:
    if probs is None:
        return None
    from engine import crop_at
    return crop_at(probs, size, box)


def _polish_prior(inside: np.ndarray, model: np.ndarray | None) -> np.ndarray:
    """2×h×w probabilities ("not label", "label") of an edge polish: ``inside`` (the region's share
    of each pixel, 0..1) is a strong prior for the label (85 %), times the model's probability of
    it (``model``) where given: the model may move the edge where it is sure, not elsewhere."""
    prior = (0.15 + 0.7 * inside).astype(np.float32)
    if model is not None:
        q = np.clip(model, 0.02, 0.98)
        yes, no = prior * q, (1 - prior) * (1 - q)
        prior = yes / (yes + no)
    return np.stack([1 - prior, prior]).astype(np.float32)


def _border_zone(inside: np.ndarray, band: int) -> np.ndarray:
    """Pixels within ``band`` of the border: inside ones near an outside pixel, outside ones near an inside one."""
    return _border_zones(inside, band)[0]


def _border_zones(inside: np.ndarray, *bands: int) -> list[np.ndarray]:
    """:func:`_border_zone` for each of ``bands`` (one pair of distance transforms for all)."""
    from scipy import ndimage
    to_out = ndimage.distance_transform_edt(inside)
    to_in = ndimage.distance_transform_edt(~inside)
    return [np.where(inside, to_out <= b, to_in <= b) for b in bands]


def _polish_ring(zone_reach: np.ndarray) -> np.ndarray | None:
    """The pixels an edge polish's CRF spans (see POLISH_REACH), or None for the whole crop."""
    return zone_reach if zone_reach.sum() < POLISH_RING_SHARE * zone_reach.size else None


def polish_edges(image: np.ndarray, probs: Any, mask: np.ndarray, label: int, params: Any,
                 num_classes: int, band: int = 3, max_pixels: int = POLISH_MAX_PIXELS,
                 cancel: Callable[[], bool] | None = None) -> np.ndarray | None:
    """The region ``mask`` (H×W bool) with its border moved onto image edges by the dense CRF.

    Over a crop around the region the CRF decides "this class or not": the region is a strong prior
    for ``label`` (85 %) and the rest for the other classes, combined with the model's probability of
    ``label`` where ``probs`` (C×h×w, any grid) are given. Its answer is kept only within ``band`` px
    of the region's border, inside and outside: a polish moves an edge, it never adds or removes
    anything farther away. Where the pixels within :data:`POLISH_REACH` of the border are a small
    share of the crop (a large region), the CRF spans those alone. Returns a new H×W bool array.

    A crop of more than ``max_pixels`` (a large region of a large photo) is polished on a copy
    reduced by s to that size: its CRF widths and ``band`` are the reduced copy's, so the band is
    ``band``/s px of the photo, and the answer is enlarged bilinearly. Memory: the CRF of at most
    ``max_pixels`` (about 500 bytes a pixel) plus about one byte a pixel of the crop; a 12-megapixel
    region took minutes and 12 GB at full size.

    ``cancel``: the CRF asks it between its steps; True stops the polish, which returns None (the
    click tool's polish is background work that a new click makes useless).
    """
    region = np.asarray(mask, dtype=bool)
    if not 0 <= int(label) < int(num_classes):
        raise ValueError(f"class {label} is out of range for {num_classes} classes")
    band = int(band)
    box = _box_around(region, band + max(8, 2 * band))
    if box is None or band < 1:
        return region.copy()
    y0, x0, y1, x1 = box
    inside = region[y0:y1, x0:x1]
    plane = None if probs is None else probs[int(label):int(label) + 1]   # the label's probabilities alone
    out = region.copy()
    cut = Reduction.fit(box, region.shape, max_pixels)
    if cut is not None:
        return out if _polish_reduced(out, image, plane, cut, band, params, cancel) else None
    from engine.crf import refine
    model = _crop_probs(plane, region.shape, box)
    p = _polish_prior(inside, None if model is None else model[0])
    zone, reach = _border_zones(inside, band, max(band, POLISH_REACH))
    refined = refine(np.ascontiguousarray(image[y0:y1, x0:x1]), p, params, cancel=cancel, where=_polish_ring(reach))
    if refined is None:
        return None
    out[y0:y1, x0:x1] = np.where(zone, refined.argmax(0).astype(bool), inside)
    return out


def _polish_reduced(out: np.ndarray, image: np.ndarray, plane: Any, cut: Reduction, band: int, params: Any,
                    cancel: Callable[[], bool] | None = None) -> bool:
    """:func:`polish_edges` of the crop ``cut.box`` of ``out`` (the region, changed in place) on the
    reduced copy ``cut``; False (``out`` unchanged) when ``cancel`` stopped it."""
    from engine.crf import refine
    y0, x0, y1, x1 = cut.box
    share = cut.share(out[y0:y1, x0:x1])                     # the region's share of each reduced pixel
    model = None if plane is None else cut.probs(plane)[0]
    split = (share > 0) & (share < 1)                        # split pixels are on the border
    zone, reach = _border_zones(share >= 0.5, band, max(band, POLISH_REACH))
    zone |= split
    refined = refine(cut.image(image), _polish_prior(share, model), params.scaled(cut.scale), cancel=cancel,
                     where=_polish_ring(reach | split))
    if refined is None:
        return False
    yes = refined[1:]
    # Back at the photo's size: the zone by the reduced pixel each photo pixel falls in, the answer bilinearly.
    cell_row, cell_col = cut.cells()
    for r0, r1, answer in cut.enlarged(yes):
        where = zone[cell_row[r0:r1]][:, cell_col]
        rows = out[y0 + r0:y0 + r1, x0:x1]
        rows[where] = answer[0][where] > 0.5
    return True


def crf_click_region(image: np.ndarray, probs: Any, seed_xy: tuple[float, float], label: int, params: Any,
                     num_classes: int, current: np.ndarray | None, radius: int = 40) -> np.ndarray:
    """The region a click at ``seed_xy`` (x, y) for class ``label`` reaches: H×W bool.

    The click marks a small disc as ``label``; the dense CRF carries it along image edges over the
    window of ``radius`` px around the click (the strokes' colour prior of CRF snap, the model's
    ``probs`` where given, else the ``current`` H×W labels), and the region is what the CRF gave
    ``label`` that is 4-connected to the disc. Weight-free: no click model needed.
    """
    h, w = image.shape[:2]
    x, y = float(seed_xy[0]), float(seed_xy[1])
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"click ({x}, {y}) is outside the {w}x{h} image")
    if not 0 <= int(label) < int(num_classes) or int(label) == VOID:
        raise ValueError(f"class {label} is out of range for {num_classes} classes")
    r = max(int(radius), SEED_RADIUS + 1)
    cx, cy = int(x), int(y)
    box = (max(cy - r, 0), max(cx - r, 0), min(cy + r + 1, h), min(cx + r + 1, w))
    y0, x0, y1, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= SEED_RADIUS ** 2
    scribbles = np.where(disc, np.uint8(label), np.uint8(VOID))
    crop = _crop_probs(probs, (h, w), box)
    # (without probabilities the colour prior reads the current labels; unlabelled pixels compete as
    # one "something else" class there, see engine.crf.stroke_prior)
    cur = None if crop is not None or current is None else np.array(current[y0:y1, x0:x1], dtype=np.uint8)
    job = SnapJob(box, np.ascontiguousarray(image[y0:y1, x0:x1]), crop, scribbles, params, int(num_classes), cur)
    labels = job.labels()
    reached = grow_from((labels == int(label)) | disc, disc)
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = reached
    return out


def accept_region(doc, mask: np.ndarray, label: int, description: str = CLICK_DESCRIPTION) -> BBox | None:
    """Write ``label`` on every pixel of ``mask`` (H×W bool) as one undo step of ``doc``; the pixels
    become a person's labels (confirmed). Nothing outside ``mask`` changes. Returns the changed box,
    or None when the mask is empty."""
    return doc.paint_region(np.asarray(mask, dtype=bool), int(label), description)
