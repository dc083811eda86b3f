"""Click to correct without Qt: click sessions, a region's class, CRF edge polish, CRF clicks, accepting."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deeplab_gui.editing.click import (
    ClickSession,
    accept_region,
    crf_click_region,
    polish_edges,
    region_class,
)
from deeplab_gui.editing.document import MaskDocument
from engine.crf import CRFParams

SHAPE = (32, 40)


class FakePredictor:
    """Records each call; returns three candidates on multimask (scores 0.2, 0.9, 0.5), one otherwise,
    with low-res logits that say which call and which candidate they came from."""

    def __init__(self, shape=SHAPE):
        self.shape, self.calls = shape, []

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        self.calls.append({"points": None if points is None else np.array(points),
                               "labels": None if labels is None else np.array(labels), "box": box,
                               "mask_input": None if mask_input is None else np.array(mask_input),
                               "multimask": multimask})
        n = len(self.calls)
        k = 3 if multimask else 1
        masks = np.zeros((k,) + self.shape, bool)
        for i in range(k):
            masks[i, : 4 * (i + 1), : 4 * (i + 1)] = True
        scores = np.array([0.2, 0.9, 0.5][:k]) if multimask else np.array([0.7])
        logits = np.stack([np.full((256, 256), 100.0 * n + i, np.float32) for i in range(k)])
        return SimpleNamespace(masks=masks, scores=scores, low_res_logits=logits)


def test_click_session_prompts_candidates_and_the_logits_fed_back():
    fake = FakePredictor()
    s = ClickSession(fake, SHAPE)
    assert s.current is None and s.cycle() == 0
    cands = s.add_point(5, 6)
    first = fake.calls[0]
    assert first["multimask"] is True and first["mask_input"] is None
    assert first["points"].tolist() == [[5, 6]] and first["labels"].tolist() == [1]
    # Best score first: the model's candidates 1 (0.9), 2 (0.5), 0 (0.2).
    assert [c.score for c in cands] == [0.9, 0.5, 0.2]
    assert s.current.mask.sum() == 8 * 8
    assert [s.cycle(), s.cycle(), s.cycle()] == [1, 2, 0]
    s.cycle()                                   # show the model's candidate 2 (logits 102)
    assert s.current.score == 0.5
    cands = s.add_point(20, 10, positive=False)
    second = fake.calls[1]
    assert second["multimask"] is False and len(cands) == 1
    assert second["labels"].tolist() == [1, 0] and second["points"].tolist() == [[5, 6], [20, 10]]
    assert second["mask_input"].shape == (1, 256, 256) and np.all(second["mask_input"] == 102.0)
    s.set_box(30, 20, 2, 1)                     # corners in any order
    third = fake.calls[2]
    assert third["box"] == (2.0, 1.0, 30.0, 20.0) and np.all(third["mask_input"] == 200.0)
    assert s.points.shape == (2, 2) and s.labels.tolist() == [1, 0]
    s.clear()
    assert s.current is None and s.points.shape == (0, 2) and s.box is None
    s.add_point(1, 1)
    assert fake.calls[-1]["multimask"] is True and fake.calls[-1]["mask_input"] is None
    with pytest.raises(ValueError, match="outside"):
        s.add_point(40, 0)


class LazyPredictor(FakePredictor):
    """FakePredictor's answers from a predictor that makes a mask when it is first read (as
    engine.ClickPredictor with ``lazy``); records which it made."""
    predicts_lazily = True

    def __init__(self, shape=SHAPE):
        super().__init__(shape)
        self.made = []

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True, lazy=False):
        out = super().predict(points, labels, box, mask_input, multimask)
        assert lazy
        best = int(np.argmax(out.scores))
        self.made.append(best)

        def mask(k):
            if k != best:
                self.made.append(k)
            return out.masks[k]
        return SimpleNamespace(mask=mask, scores=out.scores, low_res_logits=out.low_res_logits)


def test_a_lazy_predictors_other_candidates_are_made_when_settled_or_shown():
    lazy, fake = LazyPredictor(), FakePredictor()
    s, eager = ClickSession(lazy, SHAPE), ClickSession(fake, SHAPE)
    cands, want = s.add_point(5, 6), eager.add_point(5, 6)
    assert lazy.made == [1]                                   # the best-scored one (0.9) only
    assert [c.score for c in cands] == [c.score for c in want]
    assert np.array_equal(cands[0].mask, want[0].mask) and cands[0].preview is cands[0].mask
    assert s.cycle() == 1 and np.array_equal(s.current.preview, want[1].mask)   # Tab makes the one it shows
    assert lazy.made == [1, 2]
    s.settle()                                                # ... and settle the rest
    assert sorted(lazy.made) == [0, 1, 2]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(s.candidates, want))
    s.add_point(20, 10, positive=False)                       # one candidate: made at once
    assert len(s.candidates) == 1 and s.current.mask.shape == SHAPE


def test_retract_point_restores_the_candidates_and_shown_one_before_the_last_point():
    fake = FakePredictor()
    s = ClickSession(fake, SHAPE)
    first = s.add_point(5, 6)
    s.cycle()                                    # the second candidate is on screen
    s.add_point(20, 10, positive=False)
    back = s.retract_point()
    assert len(fake.calls) == 2                  # no prediction to take a point back
    assert [c.score for c in back] == [c.score for c in first] and s.index == 1
    assert s.points.tolist() == [[5, 6]] and s.labels.tolist() == [1]
    s.add_point(7, 7)                            # the next prompt feeds the restored candidate's logits
    assert np.all(fake.calls[-1]["mask_input"] == 102.0)
    s.retract_point()
    assert s.retract_point() == [c for c in s.candidates] and s.points.tolist() == [[5, 6]]   # once only
    s.set_box(1, 1, 10, 10)
    s.retract_point()                            # a box is not a point: nothing to take back
    assert s.points.tolist() == [[5, 6]] and s.box == (1.0, 1.0, 10.0, 10.0)
    empty = ClickSession(fake, SHAPE)
    assert empty.retract_point() == [] and empty.points.shape == (0, 2)
    s.add_point(3, 3)
    s.retract_point((9, 9))                      # not the last point: nothing changes
    assert s.points.tolist() == [[5, 6], [3, 3]]
    s.retract_point((3, 3))
    assert s.points.tolist() == [[5, 6]]
    with pytest.raises(ValueError, match="outside"):
        s.add_point(-1, 2)
    assert s.retract_point() and s.points.tolist() == [[5, 6]]   # a refused point leaves nothing to take back


def test_a_box_alone_asks_for_one_mask():
    fake = FakePredictor()
    s = ClickSession(fake, SHAPE)
    s.set_box(2, 2, 20, 20)
    assert fake.calls[0]["multimask"] is False and fake.calls[0]["points"] is None


def test_region_class_sums_log_probabilities_also_on_a_coarser_grid():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    probs = np.full((3, 8, 8), 1 / 3, np.float32)
    probs[:, :4, :4] = np.array([0.1, 0.2, 0.7])[:, None, None]
    assert region_class(probs, mask, default=0) == 2
    # One pixel sure of class 1 does not outvote fifteen that lean to 2: log-probabilities add up.
    probs[:, 0, 0] = [0.0, 1.0, 0.0]
    assert region_class(probs, mask, default=0) == 2
    coarse = np.full((3, 4, 4), 1 / 3, np.float32)
    coarse[:, :2, :2] = np.array([0.6, 0.3, 0.1])[:, None, None]    # the mask's cells on a 4x4 grid
    assert region_class(coarse, mask, default=2) == 0
    assert region_class(None, mask, default=5) == 5
    assert region_class(probs, np.zeros((8, 8), bool), default=4) == 4


@pytest.mark.parametrize("seed", range(4))
def test_region_class_counts_every_pixel_at_the_cell_its_centre_falls_in(seed):
    """The per-cell counts (rows of each cell row, then columns) equal counting pixel by pixel,
    for grids finer and coarser than the mask, sparse and dense masks, and runs over 255 rows."""
    from deeplab_gui.editing.reduce import cell_counts
    rng = np.random.default_rng(seed)
    for _ in range(60):
        (H, W), (h, w) = rng.integers(1, 50, 2), rng.integers(1, 70, 2)
        if rng.random() < 0.1:
            H, h = 600, 2          # 300 rows a cell: the plain sum
        mask = rng.random((H, W)) < rng.random()
        want = np.zeros((h, w), np.int64)
        ys, xs = np.nonzero(mask)
        np.add.at(want, (np.minimum(((ys + 0.5) * h / H).astype(int), h - 1),
                         np.minimum(((xs + 0.5) * w / W).astype(int), w - 1)), 1)
        got = cell_counts(mask, (h, w))
        if got is None:
            assert not mask.any()
            continue
        counts, rows, cols = got
        full = np.zeros((h, w), np.int64)
        full[np.ix_(rows, cols)] = counts
        assert (full == want).all()


@pytest.mark.parametrize("seed", range(3))
def test_cell_counts_in_blocks_equal_the_counts_per_cell_summed(seed):
    """With max_cells, square blocks of cells: their counts are the per-cell counts summed, listed
    at each block's middle cell, and there are at most max_cells of them."""
    from deeplab_gui.editing.reduce import cell_counts
    rng = np.random.default_rng(seed)
    for _ in range(40):
        (H, W), (h, w) = rng.integers(1, 300, 2), rng.integers(1, 200, 2)
        mask = rng.random((H, W)) < rng.random()
        limit = int(rng.integers(1, 400))
        got, blocks = cell_counts(mask, (h, w)), cell_counts(mask, (h, w), limit)
        if got is None:
            assert blocks is None and not mask.any()
            continue
        (counts, rows, cols), (bc, br, bk) = got, blocks
        step = next(s for s in range(1, 10_000) if -(-len(rows) // s) * -(-len(cols) // s) <= limit)
        assert bc.size <= limit
        r, k = np.arange(0, len(rows), step), np.arange(0, len(cols), step)
        want = np.add.reduceat(np.add.reduceat(counts, r, axis=0), k, axis=1)
        assert np.array_equal(bc, want) and bc.sum() == mask.sum()
        assert np.array_equal(br, rows[np.minimum(r + step // 2, len(rows) - 1)])
        assert np.array_equal(bk, cols[np.minimum(k + step // 2, len(cols) - 1)])


def test_region_class_of_a_region_over_many_cells_weighs_blocks_of_them(monkeypatch):
    """Above CLASS_CELLS cells the region is weighed in blocks; a region that leans to a class still
    gets it, and one sure cell does not outvote the rest."""
    from deeplab_gui.editing import click
    monkeypatch.setattr(click, "CLASS_CELLS", 64)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(60, 80)).transpose(2, 0, 1).astype(np.float32)
    probs[:, 10:50, 10:70] = np.array([0.1, 0.2, 0.15, 0.55])[:, None, None]
    probs[:, 20, 20] = [1.0, 0.0, 0.0, 0.0]
    mask = np.zeros((120, 160), bool)
    mask[20:100, 20:140] = True                     # cells 10:50 × 10:70 of the 60×80 grid
    assert region_class(probs, mask, default=0) == 3


def _square_image(rng, shape=(48, 64), box=(12, 16, 36, 44)):
    image = np.full(shape + (3,), 60, np.float32)
    y0, x0, y1, x1 = box
    image[y0:y1, x0:x1] = (200, 80, 40)
    image += rng.normal(0, 4, image.shape)
    truth = np.zeros(shape, bool)
    truth[y0:y1, x0:x1] = True
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_polish_edges_moves_the_border_onto_the_edge_and_nothing_beyond_the_band():
    from scipy import ndimage
    image, truth = _square_image(np.random.default_rng(0))
    rough = np.zeros_like(truth)
    rough[14:38, 14:42] = True          # 2 px off on every side
    rough[0:9, 0:9] = True              # a far-away blob: only its border may move
    out = polish_edges(image, None, rough, 1, CRFParams(), 2, band=3)
    changed = out != rough
    assert changed.any()
    near = (ndimage.distance_transform_edt(rough) <= 3) & rough | (ndimage.distance_transform_edt(~rough) <= 3) & ~rough
    assert not (changed & ~near).any()
    assert out[0:5, 0:5].all()
    assert (out != truth)[4:, 4:].sum() < (rough != truth)[4:, 4:].sum() / 3
    # A narrow band limits the change further.
    one = polish_edges(image, None, rough, 1, CRFParams(), 2, band=1)
    near1 = (ndimage.distance_transform_edt(rough) <= 1) & rough | (ndimage.distance_transform_edt(~rough) <= 1) & ~rough
    assert not ((one != rough) & ~near1).any()
    assert np.array_equal(polish_edges(image, None, np.zeros_like(rough), 1, CRFParams(), 2), np.zeros_like(rough))


@pytest.mark.parametrize("max_pixels", [None, 2000])
def test_a_polish_stopped_by_cancel_returns_none(max_pixels):
    image, truth = _square_image(np.random.default_rng(0), shape=(120, 160), box=(30, 40, 90, 110))
    rough = np.zeros_like(truth)
    rough[34:86, 36:104] = True
    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    asked = []
    assert polish_edges(image, None, rough, 1, CRFParams(), 2, band=3, cancel=lambda: asked.append(1) or len(asked) > 2,
                        **kw) is None
    kept = polish_edges(image, None, rough, 1, CRFParams(), 2, band=3, cancel=lambda: False, **kw)
    assert np.array_equal(kept, polish_edges(image, None, rough, 1, CRFParams(), 2, band=3, **kw))


def test_a_large_regions_polish_spans_its_border_not_its_box_and_moves_the_edge_alike(monkeypatch):
    """A region whose border band is a small share of its crop gets a CRF over the pixels within
    POLISH_REACH of its border only; the edge it finds is the whole crop's CRF's, a few pixels apart."""
    from engine.crf import backends
    from deeplab_gui.editing import click
    image, truth = _square_image(np.random.default_rng(3), shape=(200, 240), box=(30, 40, 170, 200))
    rough = np.zeros_like(truth)
    rough[33:168, 37:203] = True                    # 2-3 px off on every side
    seen = []
    real = backends.refine

    def spy(*a, where=None, **k):
        seen.append(where)
        return real(*a, where=where, **k)
    monkeypatch.setattr(backends, "refine", spy)
    monkeypatch.setattr("engine.crf.refine", spy)
    ring = polish_edges(image, None, rough, 1, CRFParams(), 2)
    assert seen[-1] is not None and seen[-1].mean() < click.POLISH_RING_SHARE
    monkeypatch.setattr(click, "POLISH_RING_SHARE", 0.0)   # the whole crop
    whole = polish_edges(image, None, rough, 1, CRFParams(), 2)
    assert seen[-1] is None
    assert (ring != truth).sum() < (rough != truth).sum() / 4
    assert (ring != whole).sum() <= 0.02 * (rough != truth).sum()


def test_a_large_region_is_polished_on_a_reduced_copy_within_a_scaled_band(monkeypatch):
    """Over max_pixels the CRF sees a reduced copy (never more than max_pixels); the border still
    moves onto the edge, the model's probabilities still count, and nothing changes farther than
    the band scaled to the photo."""
    from scipy import ndimage

    from deeplab_gui.editing import click
    image, truth = _square_image(np.random.default_rng(0), shape=(120, 160), box=(30, 40, 90, 110))
    image.flags.writeable = False   # as Pillow's arrays: read, never copied or written
    rough = np.zeros_like(truth)
    rough[34:86, 36:104] = True          # 4-6 px off on every side
    seen = []
    refine = __import__("engine.crf", fromlist=["refine"]).refine
    monkeypatch.setattr("engine.crf.refine",
                        lambda img, p, params, **kw: seen.append(img.shape[:2]) or refine(img, p, params, **kw))
    out = polish_edges(image, None, rough, 1, CRFParams(), 2, band=3, max_pixels=2000)
    assert seen and all(h * w <= 2000 for h, w in seen)
    changed = out != rough
    scale = np.sqrt(seen[0][0] * seen[0][1] / (rough.shape[0] * rough.shape[1]))
    reach = 3 / scale + 2 / scale   # the band at the photo's size, and the reduced pixels it cuts through
    near = (ndimage.distance_transform_edt(rough) <= reach) & rough | (ndimage.distance_transform_edt(~rough) <= reach) & ~rough
    assert changed.any() and not (changed & ~near).any()
    assert (out != truth).sum() < (rough != truth).sum() / 2
    # The same region at full size agrees with it on nearly every pixel.
    exact = polish_edges(image, None, rough, 1, CRFParams(), 2, band=3)
    assert (exact == out).mean() > 0.98
    # The model's probabilities of the label count there too: sure it is not the label, it shrinks.
    probs = np.zeros((2, 30, 40), np.float32)
    probs[0] = 1.0
    shrunk = polish_edges(image, probs, rough, 1, CRFParams(), 2, band=3, max_pixels=2000)
    assert shrunk.sum() < out.sum() and not (shrunk & ~rough).any()


def test_crf_click_grows_along_a_colour_region_and_stops_at_its_edge():
    image, truth = _square_image(np.random.default_rng(1))
    current = np.full(truth.shape, 255, np.uint8)
    region = crf_click_region(image, None, (30, 24), 1, CRFParams(), 2, current, radius=40)
    assert (region & truth).sum() >= 0.95 * truth.sum()
    assert (region & ~truth).sum() <= 0.02 * truth.sum()
    # The window bounds it: a small radius reaches only that far around the click.
    small = crf_click_region(image, None, (30, 24), 1, CRFParams(), 2, current, radius=9)
    ys, xs = np.nonzero(small)
    assert small.any() and ys.min() >= 24 - 9 and ys.max() <= 24 + 9 and xs.min() >= 30 - 9 and xs.max() <= 30 + 9
    # With VOC's 21 classes and nothing labelled yet, the other 20 classes do not each lose to the
    # click's class: the unlabelled pixels compete as one, and the click stays inside the square.
    many = crf_click_region(image, None, (30, 24), 8, CRFParams(), 21, current, radius=40)
    assert (many & truth).sum() >= 0.95 * truth.sum() and (many & ~truth).sum() <= 0.02 * truth.sum()
    # With a model's probabilities the click still follows the image's edge.
    probs = np.empty((2,) + truth.shape, np.float32)
    probs[0], probs[1] = 0.7, 0.3                # a model that missed the object
    with_model = crf_click_region(image, probs, (30, 24), 1, CRFParams(), 2, None)
    assert (with_model & truth).sum() >= 0.9 * truth.sum() and (with_model & ~truth).sum() <= 0.05 * truth.sum()
    with pytest.raises(ValueError, match="outside"):
        crf_click_region(image, None, (64, 0), 1, CRFParams(), 2, current)


def test_accept_region_is_one_confirmed_undo_step_inside_the_mask_only():
    start = np.zeros((10, 12), np.uint8)
    start[0, :] = 2
    doc = MaskDocument(start)
    region = np.zeros((10, 12), bool)
    region[0:4, 3:7] = True
    box = accept_region(doc, region, 1)
    assert box is not None and doc.undo_depth == 1 and doc.undo_description == "Click region"
    assert (doc.mask[region] == 1).all() and np.array_equal(doc.mask[~region], start[~region])
    assert np.array_equal(doc.confirmed, region)
    doc.undo()
    assert np.array_equal(doc.mask, start) and not doc.confirmed.any()
    assert accept_region(doc, np.zeros((10, 12), bool), 1) is None
    with pytest.raises(ValueError):
        accept_region(doc, np.zeros((3, 3), bool), 1)
