"""A simulated annotator: corrects a mask towards a ground truth with the app's own editing operations.

Interactive segmentation is measured with a simulated person (NoC@85/90: clicks until the mask
reaches 85 / 90 % IoU, each correction placed in the largest remaining error). This module does that
for this app's tools, calling exactly what the tools call — :class:`MaskDocument`'s ``fill``,
``polygon`` and brush strokes, and CRF snap's :func:`prepare_snap` / :class:`SnapJob` — so the
figures measure the real operations, nothing re-implemented. No Qt.

Policy, one *step* at a time:

1. Errors are the pixels whose label differs from the truth (the truth's void pixels ignored).
   Split them by their true class and into 4-connected regions; take the largest region not given up,
   except that an unlabelled region of the image's most common class (its background) waits while
   an unlabelled region of another class at least a fiftieth its size remains: a person draws the
   objects first and fills the background around them last.
2. Fix it with the tool set's natural action, for the region's true class:
   - any tool set: a **fill** click at the region's interior point (the pixel farthest from its border,
     as the NoC protocol places clicks) when the region is *closed*: the area the fill floods holds
     no pixel that is right now and under 2 % of another true class (its outline is right already);
   - ``manual``: a **brush** stroke per skeleton branch when the region is thin (no wider than twice
     ``thin_radius``), the brush as wide as the region; otherwise a **polygon** along the region's
     outline simplified to ``simplify_px`` (Douglas-Peucker), each vertex one click;
   - ``snap``: one **CRF-snap stroke** along the middle of the region's longest skeleton path, at
     most ``snap_stroke_px`` long (a hint, not a tracing; brush radius up to the app's default,
     within the region); the CRF carries it along image edges. A snap that does not
     lower the error is undone (one keystroke) and the region gets the ``manual`` action instead.
   - ``superpixel``: one **drag** per connected group of the superpixels (computed once per image,
     the tool's default granularity) that belong mostly to the region's class and meet the region,
     through their interior points (only they are painted, whole); ``manual`` where that does not help.
   - ``crfclick`` (weight-free) and ``click`` (a click model's session, the NoC protocol): see
     :mod:`.sim_clicks`; ``manual`` where they do not help.
   A person sees where an action would land before making it, so a polygon or brush is only made when
   it lowers the error (its footprint is known from the same rasterisers the document uses); a
   region with no such action is given up and the next largest is taken.
   A step that leaves the error where it was (every attempt undone or dismissed) gives the region up.
3. Repeat until the image's mIoU (over the classes in the truth or the mask) reaches the highest
   target, the action budget runs out, or no region is left to try.

Every action records its clicks, keystrokes, drag length and estimated seconds (:mod:`.klm`). A step
never raises the error: each action lowers it, and a snap that did not is undone within its step.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine import VOID

from .brush import ScribbleLayer
from .document import MaskDocument
from .klm import action_seconds
from .raster import capsule_mask, flood_region, polygon_mask
from .sim_clicks import ClickActions
from .snap import prepare_snap
from .superpixels import SuperpixelParams, compute_superpixels, paint_superpixels
from .trace import (
    interior_point,
    length,
    nearest_order,
    segments,
    shoelace,
    skeleton_paths,
)

__all__ = ["TOOL_SETS", "Action", "Annotator", "SimConfig", "SimResult", "error_count", "image_miou"]

TOOL_SETS = ("manual", "snap", "superpixel", "crfclick", "click")


def error_count(mask: np.ndarray, truth: np.ndarray) -> int:
    """Pixels whose label differs from the truth, the truth's void pixels ignored."""
    return int(((mask != truth) & (truth != VOID)).sum())


def image_miou(mask: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the mask, on the truth's non-void pixels
    (a void pixel in the mask is wrong for every class). 1.0 when the truth is all void."""
    valid = truth != VOID
    t, m = truth[valid], mask[valid]
    classes = np.union1d(np.unique(t), np.unique(m[m != VOID]))
    if not classes.size:
        return 1.0
    ious = [np.sum((t == c) & (m == c)) / max(np.sum((t == c) | (m == c)), 1) for c in classes.tolist()]
    return float(np.mean(ious))


@dataclass
class Action:
    """One edit a person makes (one undo step, or an undo)."""
    tool: str            # "fill", "polygon", "brush", "snap", "superpixel", "crfclick", "click", "undo", "cancel"
    label: int
    clicks: int
    keys: int
    drag_px: float
    seconds: float
    error_after: int
    miou_after: float


@dataclass
class SimConfig:
    tools: str = "manual"
    targets: tuple[float, ...] = (0.85, 0.9)
    max_actions: int = 40
    simplify_px: float = 2.0     # polygon outline tolerance, px
    thin_radius: float = 3.0     # regions no wider than twice this are brushed, not outlined
    brush_radius: float = 8.0    # the app's default brush radius, px (snap strokes)
    snap_stroke_px: int = 40     # a snap stroke is a hint: at most this long, across the region's middle
    crf_click_radius: int = 40   # px around a CRF click that its region may reach (the tool's default)
    predictor: Any = None        # the ``click`` tool set's click predictor (engine.ClickPredictor)
    clicks_per_region: int = 4   # ``click``: clicks on one object before accepting what it shows
    click_iou: float = 0.9       # ``click``: stop clicking once the candidate covers the object this well

    def __post_init__(self) -> None:
        if self.tools not in TOOL_SETS:
            raise ValueError(f"unknown tool set {self.tools!r}; choose from {', '.join(TOOL_SETS)}")
        if not self.targets or not all(0 < t <= 1 for t in self.targets):
            raise ValueError("targets must be mIoU values in (0, 1]")
        if self.max_actions < 0:
            raise ValueError("max_actions must be >= 0")
        if self.tools == "click" and self.predictor is None:
            raise ValueError("the click tool set needs a click predictor (engine.ClickPredictor)")
        if self.clicks_per_region < 1 or self.crf_click_radius < 1:
            raise ValueError("clicks_per_region and crf_click_radius must be >= 1")


@dataclass
class SimResult:
    start_miou: float
    final_miou: float
    actions: list[Action] = field(default_factory=list)
    noc: dict[float, int | None] = field(default_factory=dict)       # clicks until each target (None: never)
    seconds_to: dict[float, float | None] = field(default_factory=dict)

    @property
    def clicks(self) -> int:
        return sum(a.clicks for a in self.actions)

    @property
    def seconds(self) -> float:
        return sum(a.seconds for a in self.actions)

    def as_json(self) -> dict[str, Any]:
        return {"start_miou": self.start_miou, "final_miou": self.final_miou, "clicks": self.clicks,
                "seconds": round(self.seconds, 2), "actions": len(self.actions),
                "noc": {f"{t:g}": n for t, n in self.noc.items()},
                "seconds_to": {f"{t:g}": s for t, s in self.seconds_to.items()},
                "steps": [asdict(a) for a in self.actions]}


class Annotator(ClickActions):
    """Corrects ``start`` towards ``truth`` on ``image`` with one tool set (see the module docstring).

    ``probs`` (C×H×W, or a reduced grid) and ``crf_params`` feed CRF snap as in the app; without
    probabilities the snap uses the strokes alone over ``num_classes`` classes.
    """

    def __init__(self, image: np.ndarray, truth: np.ndarray, start: np.ndarray, config: SimConfig | None = None,
                 *, probs: Any = None, crf_params: Any = None, num_classes: int | None = None) -> None:
        if truth.shape != start.shape or image.shape[:2] != truth.shape:
            raise ValueError(f"image {image.shape[:2]}, truth {truth.shape} and start {start.shape} differ in size")
        self.image, self.truth, self.probs = image, truth, probs
        self.config = config or SimConfig()
        if crf_params is None:
            from engine.crf import CRFParams
            crf_params = CRFParams()
        self.crf_params = crf_params
        present = np.concatenate([np.unique(truth[truth != VOID]), np.unique(start[start != VOID])])
        self.num_classes = int(num_classes or (int(present.max()) + 1 if present.size else 1))
        self.doc = MaskDocument(start)
        valid = truth[truth != VOID]
        self._dominant = int(np.bincount(valid).argmax()) if valid.size else -1
        self._given_up = np.zeros(truth.shape, bool)
        self._seg = compute_superpixels(image, SuperpixelParams()) if self.config.tools == "superpixel" else None
        self._last: tuple[str, int | None] | None = None
        if self.config.tools == "click":
            self.config.predictor.set_image(image)     # the encoder, once per image

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        cfg, doc = self.config, self.doc
        goal = max(cfg.targets)
        miou = image_miou(doc.mask, self.truth)
        result = SimResult(start_miou=miou, final_miou=miou)
        clicks, seconds = 0, 0.0
        for t in cfg.targets:
            result.noc[t] = 0 if miou >= t else None
            result.seconds_to[t] = 0.0 if miou >= t else None
        while miou < goal and len(result.actions) < cfg.max_actions:
            region = self._largest_region()
            if region is None:
                break
            before = error_count(self.doc.mask, self.truth)
            done = self.step(*region)
            if not done or error_count(self.doc.mask, self.truth) >= before:
                self._given_up |= region[0]
            if not done:
                continue
            for a in done:
                result.actions.append(a)
                clicks += a.clicks
                seconds += a.seconds
            miou = done[-1].miou_after
            for t in cfg.targets:
                if result.noc[t] is None and miou >= t:
                    result.noc[t], result.seconds_to[t] = clicks, seconds
        result.final_miou = miou
        return result

    def _largest_region(self) -> tuple[np.ndarray, int] | None:
        """The largest error region not given up, as (bool mask, true class); unlabelled (void)
        regions of the image's most common class wait until no other region is left: a person
        draws the objects first and fills the background around them last."""
        from scipy import ndimage
        wrong = (self.doc.mask != self.truth) & (self.truth != VOID) & ~self._given_up
        found = []   # (area, class, unlabelled, component index, components)
        for c in np.unique(self.truth[wrong]).tolist():
            comps, _n = ndimage.label(wrong & (self.truth == c))
            areas = np.bincount(comps.ravel())[1:]
            unlabelled = np.bincount(comps.ravel(), weights=(self.doc.mask == VOID).ravel())[1:]
            for i in np.argsort(-areas)[:8].tolist():
                found.append((int(areas[i]), int(c), unlabelled[i] * 2 > areas[i], i + 1, comps))
        if not found:
            return None
        found.sort(key=lambda f: -f[0])
        pick = found[0]
        if pick[1] == self._dominant and pick[2]:
            # Background waits while an unlabelled region of another class a fiftieth its size remains.
            waiting = [f for f in found if f[1] != self._dominant and f[2] and f[0] * 50 >= pick[0]]
            pick = waiting[0] if waiting else pick
        return pick[4] == pick[3], pick[1]

    def step(self, region: np.ndarray, label: int) -> list[Action]:
        """Fix one error ``region`` of true class ``label``; returns the actions made ([] = given up)."""
        done = self._fill(region, label)
        if done:
            return done
        if self.config.tools == "superpixel":
            return self._superpixels(region, label) or self._manual(region, label)
        tried = {"snap": self._snap, "crfclick": self._crf_click, "click": self._model_click}.get(self.config.tools)
        if tried is not None:
            first = tried(region, label)
            if first and first[-1].tool not in ("undo", "cancel"):
                return first
            return first + self._manual(region, label)
        return self._manual(region, label)

    def _manual(self, region: np.ndarray, label: int) -> list[Action]:
        from scipy import ndimage
        dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        if dist.max() <= self.config.thin_radius:
            return self._brush(region, label, dist)
        return self._polygon(region, label) or self._brush(region, label, dist)

    # --- actions -----------------------------------------------------------------------------------
    def _record(self, tool: str, label: int, *, clicks: int, keys: int = 0, drag_px: float = 0.0,
                segments: int = 0, dragged: bool = True) -> Action:
        """``drag_px``: the path's length; ``dragged``: whether it was drawn (a stroke) or only
        clicked along (a polygon's outline: its time is in the vertex clicks)."""
        # Choosing another tool or class is a keystroke (the tool and class number keys).
        if tool != "undo":
            if self._last is None or self._last[0] != tool:
                keys += 1
            if self._last is None or self._last[1] != label:
                keys += 1
            self._last = (tool, label)
        return self._action(tool, label, clicks=clicks, keys=keys, drag_px=drag_px, segments=segments,
                            dragged=dragged)

    def _action(self, tool: str, label: int, *, clicks: int, keys: int, drag_px: float = 0.0,
                segments: int = 0, dragged: bool = True) -> Action:
        """The action as charged, with the document's error after it."""
        return Action(tool, label, clicks, keys, round(drag_px, 1),
                      round(action_seconds(clicks=clicks, keys=keys, drag_px=drag_px if dragged else 0.0,
                                           segments=segments if dragged else 0), 3),
                      error_count(self.doc.mask, self.truth), image_miou(self.doc.mask, self.truth))

    def _gain(self, box, inside: np.ndarray, label: int) -> int:
        """Error removed minus error added if ``label`` were painted where ``inside`` (over ``box``)."""
        y0, x0, y1, x1 = box
        t, m = self.truth[y0:y1, x0:x1], self.doc.mask[y0:y1, x0:x1]
        valid = inside & (t != VOID) & (m != label)
        return int(np.sum(valid & (t == label))) - int(np.sum(valid & (m == t)))

    def _fill(self, region: np.ndarray, label: int) -> list[Action]:
        """A fill where the region is closed: the area it floods has the true outline already (it
        holds no right pixel, and nearly nothing (under 2 %) of another true class)."""
        y, x = interior_point(region)
        box, inside = flood_region(self.doc.mask, x, y)
        y0, x0, y1, x1 = box
        t, m = self.truth[y0:y1, x0:x1][inside], self.doc.mask[y0:y1, x0:x1][inside]
        if np.any(m == t) or np.sum((t != label) & (t != VOID)) > 0.02 * t.size:
            return []
        self.doc.fill(x, y, label)
        return [self._record("fill", label, clicks=1)]

    def _polygon(self, region: np.ndarray, label: int) -> list[Action]:
        from skimage.measure import approximate_polygon, find_contours
        # Trace at twice the resolution, so the traced outline cuts a corner pixel by a quarter pixel
        # (not half: its centre stays inside), then simplify as a person clicking along it would.
        fine = np.pad(region, 1).repeat(2, 0).repeat(2, 1).astype(np.float32)
        contours = find_contours(fine, 0.5)
        if not contours:
            return []
        outer = max(contours, key=lambda c: abs(shoelace(c)))
        ring = approximate_polygon(outer, tolerance=2 * self.config.simplify_px)
        # A contour point at index (r, c) of the fine grid is the image point (c + 0.5) / 2 - 1 across
        # and (r + 0.5) / 2 - 1 down (pixel edges fall on whole numbers).
        pts = [((float(c) + 0.5) / 2 - 1, (float(r) + 0.5) / 2 - 1) for r, c in ring[:-1]]
        if len(pts) < 3:
            return []
        hit = polygon_mask(self.doc.shape, pts)
        if hit is None or self._gain(hit[0], hit[1], label) <= 0:
            return []
        self.doc.polygon(pts, label)
        perimeter = sum(math.dist(pts[i], pts[i - 1]) for i in range(len(pts)))
        # Each vertex a click; Enter closes the polygon.
        return [self._record("polygon", label, clicks=len(pts), keys=1, drag_px=perimeter, dragged=False)]

    def _brush(self, region: np.ndarray, label: int, dist: np.ndarray) -> list[Action]:
        out: list[Action] = []
        for path in skeleton_paths(region):
            radius = max(0.5, float(dist[tuple(np.array(path).T)].max()) - 0.5)
            pts = [(c + 0.5, r + 0.5) for r, c in path]
            best = None
            for r in (radius, radius + 0.5):
                gain = self._stroke_gain(pts, r, label)
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, r)
            if best is None or len(out) >= self.config.max_actions:
                continue
            self.doc.begin_stroke(label, best[1])
            for x, y in pts:
                self.doc.stroke_to(x, y)
            self.doc.end_stroke()
            out.append(self._record("brush", label, clicks=1, drag_px=length(pts), segments=segments(path)))
        return out

    def _stroke_gain(self, pts: Sequence[tuple[float, float]], radius: float, label: int) -> int:
        foot = np.zeros(self.doc.shape, bool)
        for a, b in zip(pts, pts[1:] or pts):
            (y0, x0, y1, x1), inside = capsule_mask(self.doc.shape, a, b, radius)
            foot[y0:y1, x0:x1] |= inside
        return self._gain((0, 0) + self.doc.shape, foot, label)

    def _superpixels(self, region: np.ndarray, label: int) -> list[Action]:
        from scipy import ndimage
        seg, truth = self._seg, self.truth
        ids = np.unique(seg[region])
        n = int(seg.max()) + 1
        valid = truth != VOID
        total = np.bincount(seg[valid], minlength=n)
        mine = np.bincount(seg[valid & (truth == label)], minlength=n)
        chosen = ids[mine[ids] * 2 > total[ids]]
        if not chosen.size:
            return []
        pick = np.zeros(n, bool)
        pick[chosen] = True
        area = pick[seg]
        if self._gain((0, 0) + self.doc.shape, area, label) <= 0:
            return []
        out = []
        groups, count = ndimage.label(area)
        for g in range(1, count + 1):
            if len(out) >= self.config.max_actions:
                break
            points = [interior_point(seg == k) for k in np.unique(seg[groups == g]).tolist()]
            path = nearest_order(points)
            foot = np.zeros(self.doc.shape, bool)
            foot[tuple(np.array(path).T)] = True
            if paint_superpixels(self.doc, seg, foot, label) is None:
                continue
            pts = [(c + 0.5, r + 0.5) for r, c in path]
            out.append(self._record("superpixel", label, clicks=1, drag_px=length(pts),
                                    segments=max(1, len(path) - 1)))
        return out

    def _snap(self, region: np.ndarray, label: int) -> list[Action]:
        from scipy import ndimage
        paths = skeleton_paths(region)
        if not paths:
            return []
        path = max(paths, key=len)
        if len(path) > self.config.snap_stroke_px:
            first = (len(path) - self.config.snap_stroke_px) // 2
            path = path[first:first + self.config.snap_stroke_px]
        dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        along = dist[tuple(np.array(path).T)]
        radius = float(min(self.config.brush_radius, max(1.0, np.median(along) / 2)))
        pts = [(c + 0.5, r + 0.5) for r, c in path]
        layer = ScribbleLayer(self.doc.shape)
        layer.begin_stroke(label, radius)
        for x, y in pts:
            layer.stroke_to(x, y)
        layer.end_stroke()
        before = error_count(self.doc.mask, self.truth)
        job = prepare_snap(layer.scribbles, layer.bbox, self.image, self.probs, self.crf_params,
                           self.num_classes, radius, self.doc.mask)
        if job.apply(self.doc, job.labels()) is None:
            return []
        snap = self._record("snap", label, clicks=1, drag_px=length(pts), segments=segments(path))
        if snap.error_after < before:
            return [snap]
        self.doc.undo()
        return [snap, self._record("undo", label, clicks=0, keys=1)]
