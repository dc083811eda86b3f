"""The simulated annotator's click tools: a CRF click (weight-free) and a click model's session.

Mixed into :class:`deeplab_gui.editing.simulate.Annotator`; every action goes through what the app's
tools call (:func:`crf_click_region`, :class:`ClickSession`, :func:`region_class`,
:func:`accept_region`), so the figures measure the real operations. No Qt.

- ``crfclick``: one click at the error region's interior point for its true class; the CRF carries
  it along image edges (:func:`crf_click_region`) and the result is written at once. A click that does
  not lower the error is undone (one keystroke) and the region gets the ``manual`` action.
- ``click``: the NoC protocol with a click model. A positive click at the region's interior point
  starts a session on the *target object* (the 4-connected part of the truth's class under that
  point); the person picks the best of the first three candidates with Tab, then clicks again at
  the interior point of the largest error between the shown candidate and the target, positive where
  the candidate misses the object and negative where it spills over, until the candidate covers
  the object at ``click_iou`` or ``clicks_per_region`` clicks are spent. Enter accepts (one key)
  when the candidate covers the object at IoU 0.5 or more and lowers the error.
  The class: with the model's probabilities, :func:`region_class` proposes it and a wrong proposal
  costs a click on the class list; without them the class list is clicked when the class differs
  from the previous one. A candidate whose acceptance would not lower the error is dismissed
  (Escape, one key) and the region gets the ``manual`` action.
"""
from __future__ import annotations

import numpy as np

from engine import VOID

from .click import (
    CRF_CLICK_DESCRIPTION,
    ClickSession,
    accept_region,
    crf_click_region,
    region_class,
)
from .trace import interior_point

__all__ = ["ACCEPT_IOU", "ClickActions"]

# A person accepts what the click model shows only when it is recognisably the object (and lowers the
# error): on an empty mask almost any region containing some of the object would lower the error.
ACCEPT_IOU = 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _largest(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 4-connected component of ``mask`` and its area (an empty mask: itself, 0)."""
    from scipy import ndimage
    comps, n = ndimage.label(mask)
    if not n:
        return mask, 0
    areas = np.bincount(comps.ravel())[1:]
    k = int(areas.argmax())
    return comps == k + 1, int(areas[k])


class ClickActions:
    """The ``crfclick`` and ``click`` actions of the simulated annotator (see the module docstring).
    Uses the annotator's ``doc``, ``image``, ``truth``, ``probs``, ``crf_params``, ``num_classes``,
    ``config``, ``_record``, ``_action``, ``_gain`` and ``_last``."""

    def _crf_click(self, region: np.ndarray, label: int) -> list:
        y, x = interior_point(region)
        before = int(((self.doc.mask != self.truth) & (self.truth != VOID)).sum())   # the simulator's error
        reached = crf_click_region(self.image, self.probs, (x, y), label, self.crf_params, self.num_classes,
                                   self.doc.mask, radius=self.config.crf_click_radius)
        if accept_region(self.doc, reached, label, CRF_CLICK_DESCRIPTION) is None:
            return []
        done = self._record("crfclick", label, clicks=1)
        if done.error_after < before:
            return [done]
        self.doc.undo()
        return [done, self._record("undo", label, clicks=0, keys=1)]

    def _target(self, region: np.ndarray, label: int, at: tuple[int, int]) -> np.ndarray:
        """The object a click at ``at`` (row, col) in ``region`` means: its class's connected part."""
        from scipy import ndimage
        comps, _n = ndimage.label(self.truth == label)
        k = comps[at]
        return comps == k if k else region

    def _model_click(self, region: np.ndarray, label: int) -> list:
        cfg = self.config
        y, x = interior_point(region)
        target = self._target(region, label, (y, x))
        counted = self.truth != VOID
        session = ClickSession(cfg.predictor, self.doc.shape)
        cands = session.add_point(x, y, positive=True)
        clicks, keys = 1, 0
        best = max(range(len(cands)), key=lambda i: (_iou(cands[i].mask, target), -i))
        for _ in range(best):       # Tab to the candidate that fits best
            session.cycle()
            keys += 1
        while clicks < cfg.clicks_per_region and _iou(session.current.mask, target) < cfg.click_iou:
            shown = session.current.mask
            miss, miss_area = _largest(target & ~shown)
            spill, spill_area = _largest(shown & ~target & counted)
            if not miss_area and not spill_area:
                break
            where, positive = (miss, True) if miss_area >= spill_area else (spill, False)
            y, x = interior_point(where)
            session.add_point(x, y, positive=positive)
            clicks += 1
        shown = session.current.mask
        # Choosing the click tool is a key; the class is settled below.
        keys += int(self._last is None or self._last[0] != "click")
        previous = self._last[1] if self._last is not None else None
        if _iou(shown, target) < ACCEPT_IOU or self._gain((0, 0) + self.doc.shape, shown, label) <= 0:
            # Escape dismisses the candidate: the clicks were spent, the document is unchanged.
            self._last = ("click", previous)
            return [self._action("cancel", label, clicks=clicks, keys=keys + 1)]
        if self.probs is not None:
            proposed = region_class(self.probs, shown, label if previous is None else previous)
            class_clicks = int(proposed != label)
        else:
            class_clicks = int(previous != label)
        self._last = ("click", label)
        accept_region(self.doc, shown, label)
        # Enter accepts: one key.
        return [self._action("click", label, clicks=clicks + class_clicks, keys=keys + 1)]
