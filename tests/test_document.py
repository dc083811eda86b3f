"""The mask document, scribble layer and uncertainty helpers: plain Python, no QApplication."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from deeplab_gui.editing.document import MaskDocument, Patch, ScribbleLayer, wait_for_compression
from deeplab_gui.editing.raster import TIE_SLACK, capsule_pieces, flood_region, polygon_mask
from deeplab_gui.editing.uncertainty import mean_uncertainty, uncertainty


def _changed_box(a: np.ndarray, b: np.ndarray):
    ys, xs = np.nonzero(a != b)
    if ys.size == 0:
        return None
    return (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)


def _inside(box, outer) -> bool:
    return outer[0] <= box[0] and outer[1] <= box[1] and box[2] <= outer[2] and box[3] <= outer[3]


def _capsule_ref(shape, a, b, r):
    """Per-pixel brute force: pixel centre within r of segment a→b, plus the end points' pixels."""
    h, w = shape
    out = np.zeros(shape, bool)
    (ax, ay), (bx, by) = a, b
    for row in range(h):
        for col in range(w):
            px, py = col + 0.5, row + 0.5
            dx, dy = bx - ax, by - ay
            l2 = dx * dx + dy * dy
            t = 0.0 if l2 == 0 else min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / l2))
            out[row, col] = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2 <= r * r + TIE_SLACK
    for x, y in (a, b):
        if 0 <= int(math.floor(y)) < h and 0 <= int(math.floor(x)) < w:
            out[int(math.floor(y)), int(math.floor(x))] = True
    return out


def _winding_ref(shape, pts):
    """Per-pixel brute force non-zero winding number at pixel centres."""
    h, w = shape
    out = np.zeros(shape, bool)
    n = len(pts)
    for row in range(h):
        for col in range(w):
            px, py = col + 0.5, row + 0.5
            wn = 0
            for i in range(n):
                (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
                if (y0 <= py) != (y1 <= py):
                    xc = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
                    if xc <= px:    # crossing at or left of the centre
                        wn += 1 if y1 > y0 else -1
            out[row, col] = wn != 0
    return out


@pytest.fixture
def doc():
    return MaskDocument(np.zeros((40, 50), np.uint8))


# --- painting -----------------------------------------------------------------------------------
def test_stroke_paints_capsule_and_is_one_undo_step(doc):
    doc.begin_stroke(3, 4.0)
    doc.stroke_to(10, 10)
    doc.stroke_to(30, 20)
    doc.stroke_to(35.5, 30.2)
    assert doc.undo_depth == 0 and doc.can_undo      # still open: not yet a history step
    doc.end_stroke()
    want = (_capsule_ref(doc.shape, (10, 10), (30, 20), 4.0)
            | _capsule_ref(doc.shape, (30, 20), (35.5, 30.2), 4.0))
    np.testing.assert_array_equal(doc.mask == 3, want)
    assert set(np.unique(doc.mask)) == {0, 3}
    assert doc.undo_depth == 1
    doc.undo()
    assert not doc.mask.any() and doc.undo_depth == 0 and doc.can_redo
    doc.redo()
    np.testing.assert_array_equal(doc.mask == 3, want)


def test_first_point_is_a_dot_and_tiny_brush_marks_the_pixel_under_the_cursor(doc):
    doc.begin_stroke(7, 0.2)
    doc.stroke_to(12.9, 3.05)
    doc.end_stroke()
    assert np.argwhere(doc.mask).tolist() == [[3, 12]]


def test_long_segment_split_into_pieces_equals_whole_capsule():
    shape = (60, 80)
    a, b = (2.3, 3.1), (77.0, 55.5)
    got = np.zeros(shape, bool)
    for (y0, x0, y1, x1), inside in capsule_pieces(shape, a, b, 2.5):
        got[y0:y1, x0:x1] |= inside
    np.testing.assert_array_equal(got, _capsule_ref(shape, a, b, 2.5))


@pytest.mark.parametrize("erase_to", [255, 0])
def test_eraser_writes_void_or_background(erase_to):
    d = MaskDocument(np.full((20, 20), 5, np.uint8))
    d.begin_stroke(9, 3.0, erase_to=erase_to)      # the label is ignored by an eraser
    d.stroke_to(10, 10)
    d.end_stroke()
    assert d.mask[10, 10] == erase_to and 9 not in d.mask
    assert (d.mask == erase_to).sum() == _capsule_ref((20, 20), (10, 10), (10, 10), 3.0).sum()
    d.undo()
    assert (d.mask == 5).all()


def test_stroke_that_changes_nothing_leaves_no_history():
    # Already a person's labels: the same label painted over them changes neither labels nor bits.
    d = MaskDocument(np.full((20, 20), 2, np.uint8), confirmed=np.ones((20, 20), bool))
    d.begin_stroke(2, 5.0)
    d.stroke_to(5, 5)
    d.stroke_to(15, 15)
    d.end_stroke()
    assert d.undo_depth == 0 and not d.dirty and d.version == 0


def test_out_of_bounds_points_are_clipped(doc):
    doc.begin_stroke(1, 3.0)
    box = doc.stroke_to(-100, -100)
    assert box[0] == box[2] or box[1] == box[3]     # empty: missed the image entirely
    box = doc.stroke_to(-100, 20)                   # a segment still left of the image
    assert doc.version == 0
    box = doc.stroke_to(200, 20)                    # crosses the whole width
    doc.end_stroke()
    assert box[1] == 0 and box[3] == 50
    assert doc.mask[20].all() and doc.undo_depth == 1
    assert doc.polygon([(-10, -10), (100, -10), (100, 5), (-10, 5)], 4) == (0, 0, 5, 50)
    assert (doc.mask[:5] == 4).all()


def test_stroke_segment_touches_only_its_box_and_reports_it(doc):
    boxes = []
    doc.add_listener(boxes.append)
    doc.begin_stroke(2, 2.0)
    before = doc.mask.copy()
    r = doc.stroke_to(20, 20)
    assert boxes == [r] and _inside(_changed_box(before, doc.mask), r)
    before = doc.mask.copy()
    r = doc.stroke_to(30, 25)
    assert boxes[-1] == r and _inside(_changed_box(before, doc.mask), r)
    doc.end_stroke()
    assert len(boxes) == 2


def test_cancel_stroke_restores_pixels_and_leaves_no_step():
    m = np.zeros((30, 30), np.uint8)
    m[10:20, 10:20] = 4
    d = MaskDocument(m)
    boxes = []
    d.add_listener(boxes.append)
    d.begin_stroke(7, 3.0)
    for x in range(5, 26, 2):                      # overlapping pieces: each pixel saved several times
        d.stroke_to(x, 15)
    painted = d.mask.copy()
    box = d.cancel_stroke()
    np.testing.assert_array_equal(d.mask, m)
    assert boxes[-1] == box and _inside(_changed_box(m, painted), box)
    assert d.undo_depth == 0 and not d.in_stroke and not d.dirty and d.cancel_stroke() is None


def test_undo_during_open_stroke_commits_then_undoes_it(doc):
    doc.polygon([(0, 0), (10, 0), (10, 10)], 1)
    doc.begin_stroke(2, 2.0)
    doc.stroke_to(30, 30)
    assert doc.can_undo
    doc.undo()
    assert not doc.in_stroke and 2 not in doc.mask and 1 in doc.mask and doc.redo_depth == 1


def test_stroke_api_misuse_raises(doc):
    with pytest.raises(RuntimeError):
        doc.stroke_to(1, 1)
    with pytest.raises(ValueError):
        doc.begin_stroke(1, 0)
    with pytest.raises(ValueError):
        doc.begin_stroke(1, float("nan"))
    doc.begin_stroke(1, 2)
    with pytest.raises(ValueError):
        doc.stroke_to(float("inf"), 1)


# --- fill, polygon, pick ------------------------------------------------------------------------
def test_fill_four_connected_region_touching_the_border():
    m = np.zeros((6, 8), np.uint8)
    m[2, :] = 1            # a wall; the diagonal gap below is not 4-connected
    m[3:, 4] = 1
    m[4, 6] = 1
    d = MaskDocument(m)
    box = d.fill(0, 0, 9)  # region above the wall, touching three borders
    assert box == (0, 0, 2, 8)
    assert (d.mask[:2] == 9).all() and (d.mask[2:] != 9).all()
    assert d.fill(7, 5, 5) == (3, 5, 6, 8)      # the bottom-right pocket around the lone 1 at (4, 6)
    assert d.mask[4, 6] == 1 and d.mask[3, 5] == 5 and d.mask[5, 7] == 5 and d.mask[3, 0] == 0
    assert d.undo_depth == 2


def test_fill_does_not_leak_through_diagonals():
    m = np.eye(5, dtype=np.uint8)                 # a diagonal line of 1s splits zeros in two halves
    d = MaskDocument(m)
    d.fill(4, 0, 3)                               # upper-right triangle
    assert (d.mask == 3).sum() == 10 and d.mask[4, 0] == 0
    d.fill(0, 0, 8)                               # the diagonal itself is 8-connected only: one pixel
    assert (d.mask == 8).sum() == 1


def test_fill_matches_brute_force_on_random_mask():
    rng = np.random.default_rng(1)
    m = (rng.random((30, 40)) < 0.4).astype(np.uint8)
    box, inside = flood_region(m, 3, 3)
    # Brute-force BFS.
    want = np.zeros(m.shape, bool)
    stack, v = [(3, 3)], m[3, 3]
    while stack:
        r, c = stack.pop()
        if 0 <= r < 30 and 0 <= c < 40 and not want[r, c] and m[r, c] == v:
            want[r, c] = True
            stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    got = np.zeros(m.shape, bool)
    got[box[0]:box[2], box[1]:box[3]] = inside
    np.testing.assert_array_equal(got, want)


def test_fill_outside_or_over_a_persons_same_label_is_a_noop(doc):
    assert doc.fill(-1, 3, 2) is None and doc.fill(50, 0, 2) is None
    assert doc.undo_depth == 0 and doc.version == 0 and not doc.dirty
    before = doc.mask.copy()
    assert doc.fill(3, 3, 0) is not None          # the same label: nothing relabelled, the region confirmed
    assert np.array_equal(doc.mask, before) and doc.confirmed.all() and doc.undo_depth == 1
    assert doc.fill(3, 3, 0) is None and doc.undo_depth == 1   # already a person's: no step


def test_polygon_concave_and_self_touching_match_winding_reference(doc):
    concave = [(5, 5), (40, 5), (40, 35), (22.5, 12), (5, 35)]                  # a "U"/arrow shape
    box = doc.polygon(concave, 2)
    want = _winding_ref(doc.shape, concave)
    np.testing.assert_array_equal(doc.mask == 2, want)
    assert box == _changed_box(np.zeros(doc.shape, np.uint8), doc.mask)
    assert doc.mask[30, 22] == 0                                                 # the notch stays out
    d = MaskDocument(np.zeros((30, 30), np.uint8))
    # Two squares meeting at one vertex (15, 15), drawn as one outline, plus a crossing bow-tie lobe.
    touching = [(2, 2), (15, 2), (15, 15), (28, 15), (28, 28), (15, 28), (15, 15), (2, 15)]
    d.polygon(touching, 1)
    np.testing.assert_array_equal(d.mask == 1, _winding_ref(d.shape, touching))
    assert d.mask[8, 8] == 1 and d.mask[20, 20] == 1 and d.mask[20, 8] == 0 and d.mask[8, 20] == 0
    # A pentagram loops twice round its centre (winding 2): non-zero fills it, even-odd would not.
    star = [(15 + 14 * math.sin(k * 4 * math.pi / 5), 15 - 14 * math.cos(k * 4 * math.pi / 5)) for k in range(5)]
    hit = polygon_mask((30, 30), star)
    got = np.zeros((30, 30), bool)
    (y0, x0, y1, x1), inside = hit
    got[y0:y1, x0:x1] = inside
    np.testing.assert_array_equal(got, _winding_ref((30, 30), star))
    assert got[15, 15]
    bowtie = [(0, 0), (20, 20), (20, 0), (0, 20)]
    hit = polygon_mask((30, 30), bowtie)
    got = np.zeros((30, 30), bool)
    (y0, x0, y1, x1), inside = hit
    got[y0:y1, x0:x1] = inside
    np.testing.assert_array_equal(got, _winding_ref((30, 30), bowtie))


def test_polygon_is_one_step_and_degenerate_is_noop(doc):
    doc.polygon([(1, 1), (20, 1), (20, 20)], 6)
    assert doc.undo_depth == 1
    assert doc.polygon([(1, 1), (30, 1), (45, 1)], 6) is None    # collinear: covers nothing
    assert doc.undo_depth == 1
    with pytest.raises(ValueError):
        doc.polygon([(1, 1), (2, 2)], 1)
    with pytest.raises(ValueError):
        doc.polygon([(1, 1), (2, 2), (float("nan"), 3)], 1)


def test_pick(doc):
    doc.polygon([(10, 10), (20, 10), (20, 20), (10, 20)], 12)
    assert doc.pick(15.7, 12.2) == 12 and doc.pick(0, 0) == 0 and doc.pick(49.9, 39.9) == 0
    with pytest.raises(ValueError):
        doc.pick(50, 0)


# --- history ------------------------------------------------------------------------------------
def test_undo_redo_chain_of_150_steps():
    d = MaskDocument(np.zeros((30, 40), np.uint8))
    states = [d.mask.copy()]
    for i in range(150):
        d.begin_stroke(i % 20 + 1, 1.5)
        d.stroke_to(i % 37, (i * 7) % 29)
        d.stroke_to((i * 3) % 40, (i * 5) % 30)
        d.end_stroke()
        states.append(d.mask.copy())
    assert d.undo_depth == 150
    for i in range(150, 0, -1):
        assert d.undo() is not None
        np.testing.assert_array_equal(d.mask, states[i - 1])
    assert d.undo() is None and not d.can_undo and d.redo_depth == 150
    for i in range(1, 151):
        d.redo()
        np.testing.assert_array_equal(d.mask, states[i])
    assert d.redo() is None and not d.can_redo


def test_new_edit_after_undo_drops_redo_branch(doc):
    doc.polygon([(0, 0), (10, 0), (10, 10)], 1)
    doc.polygon([(20, 20), (30, 20), (30, 30)], 2)
    doc.undo()
    assert doc.can_redo
    doc.fill(45, 35, 4)
    assert not doc.can_redo and doc.undo_depth == 2 and doc.redo() is None
    assert 2 not in doc.mask


def test_history_budget_evicts_oldest_but_keeps_newest():
    d = MaskDocument(np.zeros((40, 40), np.uint8), max_history_bytes=600)
    for i in range(6):   # each patch: a 10×10 block, old + new = 200 bytes (below the compression size)
        d.polygon([(i * 5, i * 5), (i * 5 + 10, i * 5), (i * 5 + 10, i * 5 + 10), (i * 5, i * 5 + 10)],
                  i + 1)
    assert d.undo_depth == 3 and d.history_bytes == 600
    for _ in range(3):
        d.undo()
    assert d.undo() is None and (d.mask == 1).any()      # the oldest steps are gone for good
    tiny = MaskDocument(np.zeros((40, 40), np.uint8), max_history_bytes=10)
    tiny.polygon([(0, 0), (30, 0), (30, 30)], 1)
    assert tiny.undo_depth == 1 and tiny.undo() is not None


def test_patch_memory_proportional_to_bbox():
    d = MaskDocument(np.zeros((3000, 4000), np.uint8))
    d.begin_stroke(5, 3.0)
    d.stroke_to(2000, 1500)
    d.stroke_to(2010, 1505)
    d.end_stroke()
    assert 0 < d.history_bytes < 2000          # a 7×17 box, not a 12-Mpixel copy
    bbox = d._undo[-1].bbox
    assert (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]) < 300
    d.fill(0, 0, 1)                            # full-image step: compressed to a sliver of 24 MB
    wait_for_compression()                     # (by the background thread)
    assert d.history_bytes < 200_000
    d.undo()
    assert d.mask[0, 0] == 0 and d.mask[1500, 2000] == 5


def test_many_ordinary_strokes_fit_default_budget():
    d = MaskDocument(np.zeros((3000, 4000), np.uint8))
    rng = np.random.default_rng(0)
    for i in range(110):
        x, y = rng.uniform(0, 3700), rng.uniform(0, 2800)
        d.begin_stroke(i % 20 + 1, 15.0)
        for k in range(8):
            d.stroke_to(x + 40 * k, y + 25 * k)
        d.end_stroke()
    assert d.undo_depth == 110 and d.history_bytes < 256 * 2**20 // 10


def test_patch_roundtrip_raw_and_compressed():
    for n in (4, 200):
        old = np.arange(n * n, dtype=np.uint8).reshape(n, n) % 7
        new = old + 1
        p = Patch.make((0, 0, n, n), old, new)
        assert p.compressed == (n == 200)
        np.testing.assert_array_equal(p.pixels("old"), old)
        np.testing.assert_array_equal(p.pixels("new"), new)


# --- apply_labels -------------------------------------------------------------------------------
def test_apply_labels_everywhere_and_where(doc):
    new = np.zeros(doc.shape, np.int64)
    new[5:10, 7:20] = 4
    new[30:32, 40:42] = 9
    box = doc.apply_labels(new, description="Apply CRF")
    assert box == (5, 7, 32, 42) and doc.undo_description == "Apply CRF"
    np.testing.assert_array_equal(doc.mask, new)
    where = np.zeros(doc.shape, bool)
    where[:20] = True
    box = doc.apply_labels(np.full(doc.shape, 2, np.uint8), where=where)
    assert box == (0, 0, 20, 50) and (doc.mask[:20] == 2).all() and doc.mask[31, 41] == 9
    assert doc.undo_depth == 2
    assert doc.apply_labels(doc.mask.copy()) is None and doc.undo_depth == 2   # no change, no step
    doc.undo()
    np.testing.assert_array_equal(doc.mask, new)


def test_apply_labels_stores_only_changed_box():
    d = MaskDocument(np.zeros((300, 400), np.uint8))
    new = np.zeros((300, 400), np.uint8)
    new[100:103, 200:204] = 1
    assert d.apply_labels(new) == (100, 200, 103, 204)
    assert d.history_bytes == 2 * 12


# --- listeners, version, dirty ------------------------------------------------------------------
def test_listeners_get_tight_boxes_for_every_edit(doc):
    boxes = []
    doc.add_listener(boxes.append)
    edits = [lambda: doc.polygon([(3, 4), (12, 4), (12, 9)], 1),
             lambda: doc.fill(49, 39, 2),
             lambda: doc.apply_labels(np.where(np.arange(50)[None, :] > 45, 7, doc.mask).astype(np.uint8)),
             doc.undo, doc.undo, doc.redo]
    for edit in edits:
        before = doc.mask.copy()
        ret = edit()
        assert boxes[-1] == ret == _changed_box(before, doc.mask)
    assert len(boxes) == len(edits)
    doc.remove_listener(boxes.append)
    doc.fill(0, 0, 3)
    assert len(boxes) == len(edits)


def test_version_dirty_and_mark_saved(doc):
    assert doc.version == 0 and not doc.dirty
    doc.begin_stroke(1, 2)
    doc.stroke_to(5, 5)
    assert doc.dirty and doc.version == 1           # dirty while the stroke is still open
    doc.mark_saved()                                # an autosave mid-drag: the stroke stays open
    doc.stroke_to(8, 5)
    assert doc.dirty and doc.in_stroke
    doc.end_stroke()
    assert doc.dirty and doc.undo_depth == 1
    doc.mark_saved()
    assert not doc.dirty
    doc.fill(30, 30, 2)
    v = doc.version
    assert doc.dirty
    doc.undo()
    assert not doc.dirty and doc.version == v + 1   # back at the saved state
    doc.undo()
    assert doc.dirty
    doc.redo()
    assert not doc.dirty


def test_dirty_survives_eviction_of_the_saved_state():
    d = MaskDocument(np.zeros((20, 20), np.uint8), max_history_bytes=2 * 2 * 25)
    for i in range(4):
        d.polygon([(i * 5, 0), (i * 5 + 5, 0), (i * 5 + 5, 5), (i * 5, 5)], i + 1)
    while d.undo() is not None:
        pass
    assert d.dirty                                  # the original (saved) state is no longer reachable


def test_mask_is_read_only_and_a_copy():
    src = np.zeros((5, 5), np.uint8)
    d = MaskDocument(src)
    with pytest.raises(ValueError):
        d.mask[0, 0] = 1
    d.fill(0, 0, 3)
    assert src[0, 0] == 0 and d.mask[0, 0] == 3


# --- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int64),
                                 np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4), np.uint8), [[0, 1]]])
def test_constructor_rejects_bad_masks(bad):
    with pytest.raises(ValueError):
        MaskDocument(bad)


@pytest.mark.parametrize("label", [256, -1, 1.5, True, "3"])
def test_bad_labels_rejected(doc, label):
    with pytest.raises(ValueError):
        doc.begin_stroke(label, 2)
    with pytest.raises(ValueError):
        doc.fill(1, 1, label)
    with pytest.raises(ValueError):
        doc.polygon([(0, 0), (5, 0), (5, 5)], label)
    assert doc.undo_depth == 0 and not doc.dirty


def test_apply_labels_rejects_bad_arrays(doc):
    for bad in (np.zeros((40, 49), np.uint8), np.zeros(doc.shape, np.float32),
                np.full(doc.shape, 300, np.int32), np.full(doc.shape, -1, np.int16)):
        with pytest.raises(ValueError):
            doc.apply_labels(bad)
    with pytest.raises(ValueError):
        doc.apply_labels(np.zeros(doc.shape, np.uint8), where=np.ones(doc.shape, np.uint8))
    assert doc.undo_depth == 0


# --- scribble layer -----------------------------------------------------------------------------
def test_scribble_layer_paint_erase_clear_near():
    s = ScribbleLayer((30, 40))
    assert not s.any() and (s.scribbles == 255).all()
    boxes = []
    s.add_listener(boxes.append)
    s.begin_stroke(3, 1.0)
    s.stroke_to(10, 10)
    s.stroke_to(20, 10)
    s.end_stroke()
    assert s.any() and s.scribbles[10, 15] == 3 and set(np.unique(s.scribbles)) == {3, 255}
    near = s.near(2)
    marked = s.scribbles != 255
    ys, xs = np.nonzero(marked)
    for r in range(30):                        # brute-force square dilation
        for c in range(40):
            want = bool(((abs(ys - r) <= 2) & (abs(xs - c) <= 2)).any())
            assert near[r, c] == want
    s.begin_stroke(0, 5.0, erase_to=255)
    s.stroke_to(10, 10)
    s.stroke_to(20, 10)
    s.end_stroke()
    assert not s.any()
    s.begin_stroke(1, 1.0)
    s.stroke_to(5, 5)
    s.end_stroke()
    n = len(boxes)
    s.clear()
    assert not s.any() and (s.scribbles == 255).all() and len(boxes) == n + 1
    with pytest.raises(ValueError):
        s.scribbles[0, 0] = 1


def test_scribbles_feed_crf_and_apply_back():
    from engine.crf import CRFParams, refine_with_scribbles
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, 16:] = 255
    s = ScribbleLayer((24, 32))
    for label, x in ((0, 4), (1, 28)):
        s.begin_stroke(label, 1.0)
        s.stroke_to(x, 3)
        s.stroke_to(x, 20)
        s.end_stroke()
    probs = refine_with_scribbles(img, None, np.array(s.scribbles), CRFParams(iterations=5), num_classes=2)
    d = MaskDocument(np.full((24, 32), 255, np.uint8))
    box = d.apply_labels(probs.argmax(0), where=s.near(30), description="CRF snap")
    assert box is not None and d.undo_depth == 1
    assert d.mask[12, 2] == 0 and d.mask[12, 30] == 1


# --- uncertainty --------------------------------------------------------------------------------
def test_uncertainty_limits_and_mean(monkeypatch):
    p = np.zeros((4, 3, 5), np.float32)
    p[0, 0] = 1.0                               # row 0: certain
    p[:, 1] = 0.25                              # row 1: uniform
    p[0, 2], p[1, 2] = 0.5, 0.5                 # row 2: two of four classes: log 2 / log 4
    u = uncertainty(p)
    assert u.dtype == np.float32 and u.shape == (3, 5)
    np.testing.assert_allclose(u[0], 0, atol=1e-6)
    np.testing.assert_allclose(u[1], 1, atol=1e-6)
    np.testing.assert_allclose(u[2], 0.5, atol=1e-6)
    assert mean_uncertainty(p) == pytest.approx(0.5, abs=1e-6)
    assert (uncertainty(np.ones((1, 2, 2), np.float32)) == 0).all()
    # Row-chunked computation gives the same answer as one pass.
    monkeypatch.setattr(sys.modules["deeplab_gui.editing.uncertainty"], "_ROW_CELLS", 5)
    np.testing.assert_allclose(uncertainty(p), u, atol=1e-7)
    with pytest.raises(ValueError):
        uncertainty(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError):
        uncertainty(np.zeros((2, 3, 3), np.uint8))


def test_document_modules_load_no_qt():
    import subprocess
    code = ("import sys, deeplab_gui.editing.document, deeplab_gui.editing.brush, deeplab_gui.editing.raster, "
            "deeplab_gui.editing.uncertainty, deeplab_gui.editing.export_unsaved, deeplab_gui.editing.mask_names; "
            "sys.exit(any(m.split('.')[0] in ('PySide6', 'shiboken6', 'qtawesome') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_paint_region_within_a_box_equals_painting_the_same_region_over_the_image():
    """A region given over its box alone (a few superpixels of a large photo) is the same step as the
    full-size region: same pixels, confirmed, one undo step; a box off the image is refused."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (30, 40)).astype(np.uint8)
    region = np.zeros((30, 40), bool)
    region[5:12, 8:20] = rng.random((7, 12)) < 0.6
    whole, boxed = MaskDocument(mask), MaskDocument(mask)
    a = whole.paint_region(region, 4)
    b = boxed.paint_region(region[3:15, 6:25], 4, box=(3, 6, 15, 25))
    assert a == b and np.array_equal(whole.mask, boxed.mask) and np.array_equal(whole.confirmed, boxed.confirmed)
    assert boxed.undo_depth == 1
    boxed.undo()
    assert np.array_equal(boxed.mask, mask) and not boxed.confirmed.any()
    assert boxed.paint_region(np.zeros((2, 2), bool), 4, box=(0, 0, 2, 2)) is None
    with pytest.raises(ValueError):
        boxed.paint_region(np.ones((5, 5), bool), 4, box=(28, 38, 33, 43))
    with pytest.raises(ValueError):
        boxed.paint_region(np.ones((5, 4), bool), 4, box=(0, 0, 5, 5))


def test_a_polygon_around_most_of_a_large_image_is_filled_in_bounded_bands():
    """The winding sums are made a band of rows at a time: a lasso around most of a 6-megapixel
    image holds little beyond its own bool mask (whole-box int sums took over ten times that)."""
    import tracemalloc
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    pts = np.c_[1500 + 1450 * np.cos(t), 1000 + 950 * np.sin(t)]
    tracemalloc.start()
    try:
        box, inside = polygon_mask((2000, 3000), pts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert inside.size > 5_000_000 and peak < 6 * inside.size
    yy, xx = np.mgrid[box[0]:box[2], box[1]:box[3]]
    assert inside[(xx - 1500) ** 2 / 1400 ** 2 + (yy - 1000) ** 2 / 900 ** 2 < 1].all()


def test_apply_labels_within_a_box_equals_applying_them_over_the_image():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, (30, 40)).astype(np.uint8)
    new = rng.integers(0, 5, (30, 40)).astype(np.int64)
    where = rng.random((30, 40)) < 0.5
    outside = np.zeros((30, 40), bool)
    outside[4:20, 10:33] = True
    whole, boxed = MaskDocument(mask), MaskDocument(mask)
    a = whole.apply_labels(new, where=where & outside, description="Snap")
    b = boxed.apply_labels(new[4:20, 10:33], where=where[4:20, 10:33], description="Snap", box=(4, 10, 20, 33))
    assert a == b and np.array_equal(whole.mask, boxed.mask) and np.array_equal(whole.confirmed, boxed.confirmed)
    assert boxed.undo_description == "Snap"
    boxed.undo()
    assert np.array_equal(boxed.mask, mask)
    with pytest.raises(ValueError):
        boxed.apply_labels(new[:5, :5], box=(0, 0, 6, 5))
    with pytest.raises(ValueError):
        boxed.apply_labels(new[:5, :5], box=(26, 36, 31, 41))


@pytest.mark.parametrize("erase", [False, True])
def test_a_long_stroke_is_recorded_tile_by_tile_as_one_step_like_a_single_box(monkeypatch, erase):
    """A stroke across a large image is one undo step made of the tiles it touched (its cost follows
    the painted area, not the box); labels and confirmed bits after it, after undo and after redo
    are those of recording the whole box at once."""
    import deeplab_gui.editing.stroke_tiles as tiles
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 3, (300, 400)).astype(np.uint8)
    confirmed = rng.random((300, 400)) < 0.3
    path = [(10, 20), (390, 280), (200, 30), (205, 33)]   # a diagonal, a jump back, a wiggle

    def run(tile):
        monkeypatch.setattr(tiles, "STROKE_TILE", tile)
        monkeypatch.setattr(tiles.stroke_blocks, "__defaults__", (tile,))
        doc = MaskDocument(mask, confirmed=confirmed)
        seen = []
        doc.add_listener(seen.append)
        if erase:
            doc.begin_stroke(0, 4.0, erase_to=255)
        else:
            doc.begin_stroke(2, 4.0)
        for x, y in path:
            doc.stroke_to(x, y)
        doc.end_stroke()
        states = [(doc.mask.copy(), doc.confirmed.copy())]
        step = doc._undo[-1]
        seen.clear()
        doc.undo()
        states.append((doc.mask.copy(), doc.confirmed.copy()))
        doc.redo()
        states.append((doc.mask.copy(), doc.confirmed.copy()))
        return doc, step, states, seen

    whole_doc, whole_step, whole, _ = run(10**6)
    tiled_doc, tiled_step, tiled, seen = run(32)
    for (m1, c1), (m2, c2) in zip(whole, tiled):
        assert np.array_equal(m1, m2) and np.array_equal(c1, c2)
    assert np.array_equal(tiled[1][0], mask) and np.array_equal(tiled[1][1], confirmed)
    assert tiled_doc.undo_depth == 1 and len(tiled_step.parts) > 4
    area = sum((p.bbox[2] - p.bbox[0]) * (p.bbox[3] - p.bbox[1]) for p in tiled_step.parts)
    y0, x0, y1, x1 = tiled_step.bbox
    assert area < (y1 - y0) * (x1 - x0) / 3
    assert max((b[2] - b[0]) * (b[3] - b[1]) for b in seen) <= 32 * 32   # undo repaints tile by tile


def test_a_large_step_is_whole_while_its_compression_waits_and_after():
    """A large patch is kept raw until the background thread has compressed it: undo and redo give
    the same pixels and confirmed bits before and after, and the history then shrinks to a sliver."""
    import threading

    from deeplab_gui.editing import patches
    hold = threading.Event()
    patches._compressor().submit(hold.wait)    # the compressor is busy: the next patch waits raw
    try:
        base = np.zeros((1500, 2000), np.uint8)
        base[:, :1000] = 2
        d = MaskDocument(base)
        region = np.zeros((1500, 2000), bool)
        region[50:1450, 100:1950] = True         # over 4 MiB of old and new pixels
        d.paint_region(region, 5)
        step = d._undo[-1]
        assert not step.compressed and d.history_bytes > 4_000_000
        after, conf = d.mask.copy(), d.confirmed.copy()
        d.undo()
        assert np.array_equal(d.mask, base) and not d.confirmed.any()
        d.redo()
        assert np.array_equal(d.mask, after) and np.array_equal(d.confirmed, conf)
    finally:
        hold.set()
    wait_for_compression()
    assert step.compressed and d.history_bytes < 100_000
    d.undo()
    assert np.array_equal(d.mask, base) and not d.confirmed.any()
    d.redo()
    assert np.array_equal(d.mask, after) and np.array_equal(d.confirmed, conf)
