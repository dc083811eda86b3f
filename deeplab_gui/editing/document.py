"""The editable mask of one image, as plain Python: painting, fill, polygon, undo/redo. No Qt.

napari's split: this document owns the pixels and the history; the Qt canvas only translates mouse
events into calls here and repaints the rectangles the listeners report. Everything is testable
without a QApplication.

History is a stack of *patches*: the tight box of the changed pixels with their old and new values,
so an undo step costs memory in proportion to what it touched, not to the image. Large patches are
zlib-compressed (label masks compress tens of times), which keeps a full-image "apply CRF" step to a
few hundred KiB.

Beside the labels the document keeps ``confirmed``, an H×W bool of the pixels a person set: every
edit (stroke, fill, polygon, applied CRF, snap) confirms the pixels it changed, and a stroke or
polygon every pixel it covered, relabelled or not (painting a class over the model's same class is a
person agreeing with it), while a "pre-label"
step leaves the pixels it changed unconfirmed (they are the model's). The patches carry the
confirmed bits of their box too, so undo and redo restore them with the labels. The store keeps the
map with the mask, so that export and fine-tuning can leave out the model's untouched pixels. Coordinates and boxes follow :mod:`deeplab_gui.raster`: ``x`` column, ``y`` row,
boxes half-open ``(y0, x0, y1, x1)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from engine import VOID

from .brush import BrushCanvas, Listener, ScribbleLayer, check_label, check_point
from .patches import Patch, PatchGroup, wait_for_compression
from .raster import BBox, bbox_of, bbox_union, flood_region, polygon_mask
from .stroke_tiles import stroke_blocks

__all__ = ["VOID", "PRELABEL", "BBox", "Listener", "StepListener", "Patch", "PatchGroup", "MaskDocument",
           "wait_for_compression", "ScribbleLayer",
           "BrushCanvas"]

# apply_labels steps with this description write the model's labels: their pixels are not a person's.
PRELABEL = "pre-label"
# ``fn(kind, description)`` after a step is made ("do"), undone ("undo") or redone ("redo").
StepListener = Callable[[str, str], None]
def _check_mask(mask, name: str = "mask") -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"{name} must be a non-empty H×W numpy array, got {getattr(mask, 'shape', type(mask))}")
    if mask.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 class indices (255 = void), got {mask.dtype}")
    return mask


class MaskDocument(BrushCanvas):
    """The editable mask of one image. ``mask``: H×W uint8 class indices, 255 = void.

    Every edit (a whole stroke, a fill, a polygon, an apply) is one undo step. The history keeps as
    many steps as fit in ``max_history_bytes`` (oldest dropped first; the newest is always kept), and
    a new edit after an undo drops the redo branch.
    """

    def __init__(self, mask: np.ndarray, *, confirmed: np.ndarray | None = None,
                 max_history_bytes: int = 256 * 2**20) -> None:
        data = np.array(_check_mask(mask), dtype=np.uint8, order="C", copy=True)
        super().__init__(data)
        if confirmed is None:
            self._confirmed = np.zeros(data.shape, bool)
        else:
            if not isinstance(confirmed, np.ndarray) or confirmed.shape != data.shape:
                raise ValueError(f"confirmed must be an H×W bool array of shape {data.shape}")
            self._confirmed = np.array(confirmed, dtype=bool, order="C", copy=True)
        self._confirmed_view = self._confirmed.view()
        self._confirmed_view.flags.writeable = False
        if max_history_bytes < 0:
            raise ValueError("max_history_bytes must be >= 0")
        self.max_history_bytes = int(max_history_bytes)
        self._undo: list[Patch | PatchGroup] = []
        self._redo: list[Patch | PatchGroup] = []
        self._base_token = 0      # state token below the oldest kept step (changes when one is dropped)
        self._saved_token = 0
        self._step_listeners: list[StepListener] = []

    # --- observation ------------------------------------------------------------------------------
    @property
    def mask(self) -> np.ndarray:
        """Read-only H×W uint8 view of the current labels (shared with the document: no copy)."""
        return self._view

    @property
    def confirmed(self) -> np.ndarray:
        """Read-only H×W bool view: the pixels a person set (see the module docstring)."""
        return self._confirmed_view

    def add_step_listener(self, fn: StepListener) -> None:
        """Call ``fn(kind, description)`` after each history step: ``kind`` is "do" for a new step
        (a whole stroke, a fill, ...), "undo" or "redo"; ``description`` names the step."""
        if fn not in self._step_listeners:
            self._step_listeners.append(fn)

    def remove_step_listener(self, fn: StepListener) -> None:
        if fn in self._step_listeners:
            self._step_listeners.remove(fn)

    def _stepped(self, kind: str, description: str) -> None:
        for fn in list(self._step_listeners):
            fn(kind, description)

    @property
    def _token(self) -> int:
        return self._undo[-1].token if self._undo else self._base_token

    @property
    def dirty(self) -> bool:
        """True when the labels differ from the last :meth:`mark_saved` state (undo back to it clears)."""
        return self.in_stroke and self._stroke["bbox"] is not None or self._token != self._saved_token

    def mark_saved(self) -> None:
        """Record the current state as saved.

        An autosave may land while the mouse is down: the open stroke is left open (ending it would
        break the drag), and the document stays dirty, since the stroke's final state was not saved.
        """
        painting = self.in_stroke and self._stroke["bbox"] is not None
        self._saved_token = -1 if painting else self._token

    @property
    def can_undo(self) -> bool:
        return bool(self._undo) or (self.in_stroke and self._stroke["bbox"] is not None)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_depth(self) -> int:
        return len(self._undo)

    @property
    def redo_depth(self) -> int:
        return len(self._redo)

    @property
    def history_bytes(self) -> int:
        """Memory held by the undo and redo patches."""
        return sum(p.nbytes for p in self._undo) + sum(p.nbytes for p in self._redo)

    @property
    def undo_description(self) -> str:
        return self._undo[-1].description if self._undo else ""

    @property
    def redo_description(self) -> str:
        return self._redo[-1].description if self._redo else ""

    # --- history ----------------------------------------------------------------------------------
    def _push(self, patch: Patch | PatchGroup) -> None:
        self._redo.clear()
        self._undo.append(patch)
        # Summed afresh: a large patch shrinks once the background thread has compressed it.
        total = self.history_bytes
        while total > self.max_history_bytes and len(self._undo) > 1:
            old = self._undo.pop(0)
            total -= old.nbytes
            self._base_token = old.token
        self._stepped("do", patch.description)

    def _commit(self, bbox: BBox, old: np.ndarray, new: np.ndarray, description: str,
                foot: np.ndarray | None = None) -> BBox | None:
        """Record old→new of ``bbox`` (already written) trimmed to the pixels that really changed,
        and mark those pixels confirmed (unconfirmed for a pre-label step). ``foot`` (bool over
        ``bbox``): every pixel the edit covered, confirmed even where its label stayed."""
        patch = self._record(bbox, old, new, description, foot)
        if patch is None:
            return None
        self._push(patch)
        return patch.bbox

    def _record(self, bbox: BBox, old: np.ndarray, new: np.ndarray, description: str,
                foot: np.ndarray | None = None) -> Patch | None:
        """:meth:`_commit` without making it a history step: the patch (None when nothing changed)."""
        y0, x0, y1, x1 = bbox
        changed = old != new
        if foot is not None:
            foot = foot & ~self._confirmed[y0:y1, x0:x1]   # already a person's: nothing to record
            if not foot.any():
                foot = None
        tight = bbox_of(changed if foot is None else changed | foot, (y0, x0))
        if tight is None:
            return None
        ty0, tx0, ty1, tx1 = tight
        sl = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
        conf = self._confirmed[ty0:ty1, tx0:tx1]
        fs = None if foot is None else np.ascontiguousarray(foot[sl])
        ch = changed[sl]
        patch = Patch.make(tight, old[sl], new[sl], description, description != PRELABEL, conf, fs,
                           changed=ch if fs is None else ch | fs)
        # (in place, whole-array operations: a boolean-mask assignment over a region of a large
        # photo took several times as long)
        if patch.confirms:
            np.logical_or(conf, ch, out=conf)
        else:
            np.logical_and(conf, np.logical_not(ch), out=conf)
        if fs is not None:
            np.logical_or(conf, fs, out=conf)
        return patch

    def _write(self, bbox: BBox, inside: np.ndarray, value: int, description: str) -> BBox | None:
        """Set ``value`` where ``inside`` within ``bbox`` as one step; listeners hear the tight box."""
        y0, x0, y1, x1 = bbox
        region = self._data[y0:y1, x0:x1]
        old = region.copy()
        # ``value`` where ``inside``, as a xor blend: a third of np.copyto's time with a mask (a region
        # over most of a 12-megapixel photo: about 1.3 ms against 3.5 per 6 megapixels).
        flip = np.bitwise_xor(old, np.uint8(value))
        flip *= np.asarray(inside, dtype=bool).view(np.uint8)
        np.bitwise_xor(region, flip, out=region)
        tight = self._commit(bbox, old, region, description, inside)
        if tight is not None:
            self._changed(tight)
        return tight

    _track_footprint = True

    def _stroke_done(self, bbox: BBox | None, saved: list[tuple[BBox, np.ndarray]],
                     foot: list[tuple[BBox, np.ndarray]] | None = None, erase: bool = False) -> None:
        for box, _ in foot or ():
            bbox = bbox_union(bbox, box)
        if bbox is None:
            return
        description = "Erase" if erase else "Paint"
        parts = []
        for box, old, new, covered in stroke_blocks(self._data, bbox, saved, foot):
            y0, x0, y1, x1 = box
            # Relabelled pixels were repainted live; ones confirmed without a new label were not.
            unseen = covered is not None and bool((covered & (old == new) & ~self._confirmed[y0:y1, x0:x1]).any())
            patch = self._record(box, old, new, description, covered)
            if patch is not None:
                parts.append(patch)
                if unseen:
                    self._changed(patch.bbox)
        if parts:
            self._push(parts[0] if len(parts) == 1 else PatchGroup(parts, description))

    def _apply(self, patch: Patch | PatchGroup, which: str) -> BBox:
        for part in patch.parts if isinstance(patch, PatchGroup) else (patch,):
            y0, x0, y1, x1 = part.bbox
            self._data[y0:y1, x0:x1] = part.pixels(which)
            part.restore_confirmed(self._confirmed[y0:y1, x0:x1], which)
            self._changed(part.bbox)   # each part's box: a long stroke's joint box is most of the image
        return patch.bbox

    def undo(self) -> BBox | None:
        """Revert the newest step (finishing an open stroke first); returns its box or None."""
        self.end_stroke()
        if not self._undo:
            return None
        patch = self._undo.pop()
        self._redo.append(patch)
        box = self._apply(patch, "old")
        self._stepped("undo", patch.description)
        return box

    def redo(self) -> BBox | None:
        """Re-apply the newest undone step; returns its box or None."""
        self.end_stroke()
        if not self._redo:
            return None
        patch = self._redo.pop()
        self._undo.append(patch)
        box = self._apply(patch, "new")
        self._stepped("redo", patch.description)
        return box

    def clear_history(self) -> None:
        """Forget every undo/redo step (the labels stay as they are)."""
        self.end_stroke()
        self._base_token = self._token
        self._undo.clear()
        self._redo.clear()

    # --- edits ------------------------------------------------------------------------------------
    def fill(self, x: int, y: int, label: int) -> BBox | None:
        """Flood-fill the 4-connected region of the label at pixel (column x, row y) with ``label``.

        Filling a region that already has ``label`` changes no label but confirms the region: a
        person filling the model's region with its own class accepts it (a step when any of its
        pixels was not yet a person's). Returns the changed box, or None (no step) when (x, y) is
        outside the image or nothing changed.
        """
        value = check_label(label)
        fx, fy = check_point(x, y)
        c, r = int(math.floor(fx)), int(math.floor(fy))
        h, w = self.shape
        self.end_stroke()
        if not (0 <= r < h and 0 <= c < w):
            return None
        bbox, inside = flood_region(self._data, c, r)
        return self._write(bbox, inside, value, "Fill")

    def polygon(self, points: Sequence[tuple[float, float]], label: int) -> BBox | None:
        """Fill the polygon with vertices ``points`` ((x, y), implicitly closed; non-zero winding).

        Vertices may lie outside the image (clipped). Returns the changed box or None when nothing
        changed. Raises ValueError for fewer than 3 points, non-finite points or a bad label.
        """
        value = check_label(label)
        self.end_stroke()
        hit = polygon_mask(self.shape, points)
        if hit is None:
            return None
        return self._write(hit[0], hit[1], value, "Polygon")

    def paint_region(self, region: np.ndarray, label: int, description: str = "Paint region",
                     box: BBox | None = None) -> BBox | None:
        """Set ``label`` on every pixel of the H×W bool ``region`` as one undo step (whole superpixels,
        a selected region); every pixel of it is confirmed, relabelled or not, as a stroke's are.
        ``box``: ``region`` covers only that box (y0, x0, y1, x1) of the image, so a small region of
        a large photo costs its box, not the image. Returns the changed box or None when nothing changed."""
        value = check_label(label)
        h, w = self.shape
        if box is not None:
            y0, x0, y1, x1 = (int(v) for v in box)
            if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
                raise ValueError(f"box {box} is outside the {w}x{h} image")
            shape = (y1 - y0, x1 - x0)
        else:
            y0, x0, shape = 0, 0, self.shape
        if not isinstance(region, np.ndarray) or region.shape != shape or region.dtype != np.bool_:
            raise ValueError(f"region must be a bool array of shape {shape}")
        self.end_stroke()
        bbox = bbox_of(region, (y0, x0))
        if bbox is None:
            return None
        by0, bx0, by1, bx1 = bbox
        return self._write(bbox, region[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0], value, description)

    def apply_labels(self, new_mask: np.ndarray, where: np.ndarray | None = None,
                     description: str = "", box: BBox | None = None) -> BBox | None:
        """Replace the labels by ``new_mask`` (everywhere, or where the H×W bool ``where`` is True) as
        one undo step; only the changed pixels' box is stored. Used for "apply CRF", pre-labelling
        this image and CRF-snap results.

        ``new_mask``: H×W integer array with values in 0..255 (e.g. an int64 argmax is fine).
        ``box``: ``new_mask`` and ``where`` cover only that box (y0, x0, y1, x1) of the image (a
        snap's crop: the step then costs the crop, not the image).
        Returns the changed box or None when nothing changed. Raises ValueError for a wrong
        shape/dtype/range.
        """
        h, w = self.shape
        if box is not None:
            by0, bx0, by1, bx1 = (int(v) for v in box)
            if not (0 <= by0 <= by1 <= h and 0 <= bx0 <= bx1 <= w):
                raise ValueError(f"box {box} is outside the {w}x{h} image")
        else:
            by0, bx0, by1, bx1 = 0, 0, h, w
        shape = (by1 - by0, bx1 - bx0)
        if not isinstance(new_mask, np.ndarray) or new_mask.shape != shape:
            raise ValueError(f"new_mask must be an array of shape {shape}, "
                             f"got {getattr(new_mask, 'shape', type(new_mask))}")
        if new_mask.dtype != np.uint8:
            if not np.issubdtype(new_mask.dtype, np.integer) or new_mask.dtype == np.bool_:
                raise ValueError(f"new_mask must hold integer class indices, got {new_mask.dtype}")
            if new_mask.size and (new_mask.min() < 0 or new_mask.max() > 255):
                raise ValueError("new_mask values must be in 0..255")
            new_mask = new_mask.astype(np.uint8)
        if where is not None:
            if not isinstance(where, np.ndarray) or where.shape != shape or where.dtype != np.bool_:
                raise ValueError(f"where must be a bool array of shape {shape}")
        self.end_stroke()
        diff = self._data[by0:by1, bx0:bx1] != new_mask
        if where is not None:
            diff &= where
        bbox = bbox_of(diff, (by0, bx0))
        if bbox is None:
            return None
        y0, x0, y1, x1 = bbox
        sl = (slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0))
        region = self._data[y0:y1, x0:x1]
        old = region.copy()
        np.copyto(region, new_mask[sl], where=diff[sl])
        self._commit(bbox, old, region, description or "Apply labels")
        self._changed(bbox)
        return bbox
