"""The CRF-snap brush changes only the region its stroke reaches: the pixels the CRF gave the stroke's
class that connect to the stroke, never the rest of its crop, and never a person's earlier labels
unless the stroke covers them. Driven through the tool with a plain target (no window)."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

import engine.crf
from deeplab_gui.editing.document import MaskDocument
from deeplab_gui.editing.snap import grow_from, person_set, snap_region
from deeplab_gui.widgets.canvas.tools import SnapTool
from deeplab_gui.widgets.canvas.toolview import SnapInput
from engine import VOID
from engine.crf import DEEPLAB_V1

H, W = 40, 50   # small enough that the snap's crop is the whole image
NO_MOD = Qt.KeyboardModifier.NoModifier
MODEL = 3       # the pre-label's class everywhere: no undo step, so no person set it


class Target:
    """What the snap tool edits; its task runs at once."""

    def __init__(self, doc: MaskDocument, label: int, image: np.ndarray, probs=None,
                 params=DEEPLAB_V1, num_classes: int = 4) -> None:
        self.document, self.current_label, self.image = doc, label, image
        self.probs, self.params, self.num_classes = probs, params, num_classes
        self.class_colors = [(0, 0, 0), (200, 0, 0), (0, 200, 0), (0, 0, 200)]
        self.errors: list[str] = []

    def snap_input(self):
        return SnapInput(self.image, self.probs, self.params, self.num_classes)

    def run_task(self, fn, *, on_result, on_error, task_name):
        on_result(fn())
        return task_name

    def report_error(self, text: str) -> None:
        self.errors.append(text)


class View:
    def show_path(self, *args, **kwargs) -> None:
        pass

    def clear_preview(self) -> None:
        pass

    def show_outline(self, *args, **kwargs) -> None:
        pass

    def clear_outline(self) -> None:
        pass


def _crf_labels() -> np.ndarray:
    """What the stubbed CRF answers: class 1 in a box holding the stroke and in a far, separate blob;
    class 2 in another patch; background (0) elsewhere."""
    lab = np.zeros((H, W), np.uint8)
    lab[5:16, 10:31] = 1     # the object the stroke is on
    lab[30:36, 38:48] = 1    # same class, not connected to the stroke
    lab[20:28, 2:20] = 2     # another class
    return lab


@pytest.fixture
def stub_crf(monkeypatch):
    """Replace the CRF by a fixed answer (one-hot of :func:`_crf_labels`), so the region is exact."""
    def fake(image, probs, scribbles, params=DEEPLAB_V1, *, num_classes=None, **kw):
        assert scribbles.shape == (H, W)  # the crop is the whole image
        lab = _crf_labels()
        marked = scribbles != VOID
        lab[marked] = scribbles[marked]
        return np.eye(4, dtype=np.float32)[lab].transpose(2, 0, 1)
    monkeypatch.setattr(engine.crf, "refine_with_scribbles", fake)


def _snap(doc, label, points, image=None, size=2.0, **crf) -> Target:
    target = Target(doc, label, image if image is not None else np.zeros((H, W, 3), np.uint8), **crf)
    tool = SnapTool()
    tool.activate(View(), target)
    tool.size = size
    tool.press(QPointF(*points[0]), NO_MOD)
    for p in points[1:]:
        tool.move(QPointF(*p), True)
    tool.release(QPointF(*points[-1]))
    assert target.errors == []
    return target


def _paint(doc, label, points, size=1.0) -> None:
    doc.begin_stroke(label, size)
    for x, y in points:
        doc.stroke_to(x, y)
    doc.end_stroke()


def test_snap_changes_only_the_region_of_its_class_connected_to_the_stroke(stub_crf):
    doc = MaskDocument(np.full((H, W), MODEL, np.uint8))
    _snap(doc, 1, [(15.5, 10.5), (18.5, 10.5)])
    expected = np.full((H, W), MODEL, np.uint8)
    expected[5:16, 10:31] = 1
    # The far blob of class 1, the class-2 patch and the CRF's background stay as they were.
    assert (doc.mask == expected).all()
    assert doc.undo_depth == 1 and doc.undo_description == "CRF snap"
    doc.undo()
    assert (doc.mask == MODEL).all()


def test_snap_keeps_a_persons_labels_and_does_not_grow_past_them(stub_crf):
    doc = MaskDocument(np.full((H, W), MODEL, np.uint8))
    _paint(doc, 2, [(25.5, 0.5), (25.5, 39.5)])        # a hand-drawn line across the object
    line = doc.mask == 2
    assert line[:, 25].all() and not line[:, 22].any() and not line[:, 28].any()
    painted = doc.mask.copy()
    _snap(doc, 1, [(14.5, 10.5), (16.5, 10.5)])
    assert (doc.mask[line] == 2).all()                 # the person's pixels are kept
    assert (doc.mask[5:16, 10:23] == 1).all()          # the object up to the line snaps
    assert (doc.mask[5:16, 28:31] == MODEL).all()      # beyond the line the snap does not reach
    changed = doc.mask != painted
    assert changed.sum() == (doc.mask[5:16, 10:31] == 1).sum()
    assert doc.undo_depth == 2
    doc.undo()                                         # one step takes the whole snap back
    assert (doc.mask == painted).all()


def test_a_stroke_over_a_persons_labels_changes_the_pixels_it_covers(stub_crf):
    doc = MaskDocument(np.full((H, W), MODEL, np.uint8))
    _paint(doc, 2, [(25.5, 0.5), (25.5, 39.5)])
    _snap(doc, 1, [(15.5, 10.5), (29.5, 10.5)], size=1.0)   # drawn across the line
    assert doc.mask[10, 25] == 1                             # covered by the stroke: relabelled
    assert doc.mask[5, 25] == 2 and doc.mask[14, 25] == 2    # the rest of the line is kept
    assert (doc.mask[5:16, 28:31] == 1).all()                # reached through the stroke


def test_person_set_follows_the_kept_history():
    doc = MaskDocument(np.full((H, W), MODEL, np.uint8))
    _paint(doc, 1, [(5.5, 5.5)])
    _paint(doc, 2, [(20.5, 5.5)])
    doc.fill(40, 30, 0)                        # a fill over the whole model region: person-set too
    prelabel = doc.mask.copy()
    prelabel[5, 20] = MODEL                    # the model re-labels one painted pixel
    doc.apply_labels(prelabel, description="pre-label")
    _paint(doc, VOID, [(5.5, 5.5)])            # erased back to void
    got = person_set(doc, (0, 0, H, W))
    assert not got[5, 5] and not got[5, 20] and got[30, 40]
    doc.undo()
    doc.undo()
    assert person_set(doc, (0, 0, H, W))[5, 20]   # undone steps no longer count
    assert person_set(doc, (3, 18, 8, 23)).shape == (5, 5)


def test_snap_region_on_its_own():
    labels = np.array([[1, 1, 0, 1],
                       [0, 1, 0, 1],
                       [2, 1, 1, 0]], np.uint8)
    scrib = np.full(labels.shape, VOID, np.uint8)
    scrib[0, 0] = 1
    current = np.full(labels.shape, 5, np.uint8)
    new, where = snap_region(labels, scrib, current)
    assert where.tolist() == [[True, True, False, False],
                              [False, True, False, False],
                              [False, True, True, False]]
    assert (new[where] == 1).all() and (new[~where] == 5).all()
    protected = np.zeros(labels.shape, bool)
    protected[1, 1] = True                     # a person's pixel on the only path: the snap stops
    new, where = snap_region(labels, scrib, current, protected)
    assert where.sum() == 2 and where[0, 0] and where[0, 1]
    assert grow_from(labels == 1, scrib == 1).sum() == 5


def test_real_crf_snap_leaves_a_look_alike_far_object_alone():
    image = np.full((H, W, 3), 20, np.uint8)
    image[4:14, 4:14] = 230     # the object stroked
    image[26:36, 36:46] = 230   # a look-alike far away, which the CRF also gives the stroke's class
    bright = image[..., 0] > 100
    probs = np.empty((4, H, W), np.float32)   # sure of the dark background, unsure on bright pixels
    probs[:] = np.array([0.7, 0.1, 0.1, 0.1], np.float32)[:, None, None]
    probs[:, bright] = np.array([0.36, 0.34, 0.15, 0.15], np.float32)[:, None]
    params = DEEPLAB_V1.replace(bilateral_weight=10.0, bilateral_xy=80.0)   # long-range appearance
    doc = MaskDocument(np.zeros((H, W), np.uint8))
    _snap(doc, 1, [(8.5, 8.5), (9.5, 9.5)], image=image, size=3.0, probs=probs, params=params)
    assert (doc.mask[4:14, 4:14] == 1).all()            # the stroked object snaps to its edges
    assert (doc.mask[26:36, 36:46] == 0).all()          # the look-alike is not relabelled
    assert (doc.mask[~bright] == 0).all()


def test_real_crf_snap_on_an_unlabelled_image_of_21_classes_stays_on_the_object():
    """No model and no labels yet (the app's first images): the snap follows the stroked object's
    edges instead of giving its class to the whole crop around the stroke."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:H, 0:W]
    face = (yy - 20) ** 2 + (xx - 25) ** 2 <= 9 ** 2
    image = np.clip(np.where(face[..., None], (210, 160, 130), (90, 110, 150)) + rng.normal(0, 6, (H, W, 3)),
                    0, 255).astype(np.uint8)
    doc = MaskDocument(np.full((H, W), VOID, np.uint8))
    _snap(doc, 15, [(22.5, 20.5), (27.5, 20.5)], image=image, size=2.0, num_classes=21)
    assert (doc.mask[face] == 15).mean() > 0.95
    assert (doc.mask[~face] == VOID).mean() > 0.98   # the rest of the crop stays unlabelled


def test_person_set_comes_from_the_stored_provenance_of_a_reopened_image():
    mask = np.zeros((H, W), np.uint8)
    mask[2:6, 3:9] = 1
    conf = np.zeros((H, W), bool)
    conf[2:6, 3:9] = True      # set by a person in an earlier session: no undo history holds it now
    conf[10, 10] = True        # erased to void by a person: nothing to protect
    mask[10, 10] = VOID
    doc = MaskDocument(mask, confirmed=conf)
    got = person_set(doc, (0, 0, H, W))
    assert got[2:6, 3:9].all() and got.sum() == 24


def test_a_snap_over_a_large_crop_runs_its_crf_on_a_reduced_copy(monkeypatch):
    """Over SNAP_MAX_PIXELS the CRF sees the crop reduced to the budget (never more), the strokes
    survive the reduction even one pixel wide, and the answer comes back at the photo's size: the
    stroked object snaps to its edges, the look-alike far away and the background stay."""
    from deeplab_gui.editing import snap
    monkeypatch.setattr(snap, "SNAP_MAX_PIXELS", 500)
    h, w = 80, 100
    image = np.full((h, w, 3), 20, np.uint8)
    image[10:34, 10:40] = 230     # the object stroked
    image[56:76, 70:94] = 230     # a look-alike far away
    bright = image[..., 0] > 100
    probs = np.empty((4, h // 2, w // 2), np.float32)   # on a coarser grid, as a large photo's are
    probs[:] = np.array([0.7, 0.1, 0.1, 0.1], np.float32)[:, None, None]
    probs[:, bright[::2, ::2]] = np.array([0.36, 0.34, 0.15, 0.15], np.float32)[:, None]
    seen = []
    real = engine.crf.refine_with_scribbles

    def spy(image, probs, scribbles, params=DEEPLAB_V1, **kw):
        seen.append((image.shape[:2], int((scribbles != VOID).sum()), params))
        return real(image, probs, scribbles, params, **kw)
    monkeypatch.setattr(engine.crf, "refine_with_scribbles", spy)
    params = DEEPLAB_V1.replace(bilateral_weight=10.0, bilateral_xy=80.0)
    doc = MaskDocument(np.zeros((h, w), np.uint8))
    target = Target(doc, 1, image, probs=probs, params=params)
    tool = SnapTool()
    tool.activate(View(), target)
    tool.size = 0.5
    tool.press(QPointF(12.5, 20.5), NO_MOD)
    tool.move(QPointF(37.5, 20.5), True)
    tool.release(QPointF(37.5, 20.5))
    assert target.errors == []
    (crf_h, crf_w), marked, used = seen[0]
    assert crf_h * crf_w <= 500 and marked > 0
    assert used.bilateral_xy < params.bilateral_xy           # widths scaled with the copy
    # The stroked object snaps to its edges within one reduced pixel (4 photo pixels here) ...
    one = 4
    assert (doc.mask[10 + one:34 - one, 10 + one:40 - one] == 1).all()
    assert (doc.mask == 1).sum() > 0.75 * 24 * 30
    near = np.zeros((h, w), bool)
    near[10 - one:34 + one, 10 - one:40 + one] = True
    assert not ((doc.mask == 1) & ~near).any()               # ... and nothing else changes: not the look-alike


def test_a_reduction_keeps_a_stroke_thinner_than_its_pixels():
    from deeplab_gui.editing.reduce import Reduction
    cut = Reduction.fit((0, 0, 60, 90), (60, 90), 150)
    scrib = np.full((60, 90), VOID, np.uint8)
    scrib[31, 5:85] = 2            # one pixel wide, four reduced pixels tall each
    scrib[3, 3] = 1
    small = cut.marks(scrib)
    assert small.shape == cut.size and cut.size[0] * cut.size[1] <= 150
    assert (small == 2).sum() >= cut.size[1] - 2 and (small == 1).sum() == 1
    assert set(np.unique(small).tolist()) == {1, 2, VOID}


def test_preparing_a_snap_leaves_the_probabilities_to_the_worker(monkeypatch):
    """prepare_snap (on the UI thread) only slices and copies; the crop's probabilities are read
    when the worker runs the job, and come out as the full-size resize's values there."""
    import engine
    from deeplab_gui.editing.snap import prepare_snap
    calls = []
    real = engine.crop_at
    monkeypatch.setattr(engine, "crop_at", lambda *a: calls.append(a[1:]) or real(*a))
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=(H // 2, W // 2)).transpose(2, 0, 1)
    scrib = np.full((H, W), VOID, np.uint8)
    scrib[10:12, 10:30] = 1
    job = prepare_snap(scrib, (10, 10, 12, 30), np.zeros((H, W, 3), np.uint8), probs.astype(np.float32),
                       DEEPLAB_V1, 4, 2.0)
    assert calls == [] and job.probs is None
    crop = job.crop_probs()
    assert calls == [((H, W), job.box)] and crop.shape == (4, job.box[2] - job.box[0], job.box[3] - job.box[1])
    assert job.labels().shape == crop.shape[1:]
