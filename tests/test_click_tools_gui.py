"""The click-to-correct tools on the real canvas and session (offscreen): the click-model tool with a
fake predictor (discs around the clicks, so every expected mask is exact), the weight-free CRF click
and the superpixel brush.  Mouse and keys go through the canvas's own event handlers."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from deeplab_gui.widgets.canvas.canvas import Canvas
from deeplab_gui.widgets.canvas.tools import make_tools

pytest.importorskip("pytestqt")

H, W = 48, 64
R = 6   # the fake model's disc radius around a positive click


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


class DiscPredictor:
    """ClickPredictor.predict's signature: a disc of R around each positive point minus one around
    each negative point; a box gives the box; the first single point gives three candidates (radii R,
    R/2, 2R, scores in that order best first)."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        self.calls += 1
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            m = np.zeros((H, W), bool)
            m[y0:y1, x0:x1] = True
            masks = [m]
        else:
            radii = (R, R / 2, 2 * R) if multimask else (R,)
            masks = []
            for r in radii:
                m = np.zeros((H, W), bool)
                for (x, y), lab in zip(points, labels):
                    if lab == 1:
                        m |= disc(x, y, r)
                for (x, y), lab in zip(points, labels):
                    if lab == 0:
                        m &= ~disc(x, y, R)
                masks.append(m)
        k = len(masks)
        return SimpleNamespace(masks=np.stack(masks), scores=np.linspace(0.9, 0.5, k),
                               low_res_logits=np.zeros((k, 256, 256), np.float32))


@pytest.fixture
def canvas(qtbot, sessions, tmp_path):
    """A canvas on a session with one 48×64 image (dark left half, bright right half) open."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = np.zeros((H, W, 3), np.uint8)
    img[:, W // 2:] = (230, 220, 40)
    img[:, :W // 2] = (20, 30, 90)
    Image.fromarray(img).save(folder / "a.png")
    s = sessions(folder)
    qtbot.waitUntil(lambda: s.image is not None and s.document is not None, timeout=10_000)
    c = Canvas(s)
    qtbot.addWidget(c)
    c.resize(320, 240)
    c.show()
    qtbot.waitExposed(c)
    c.fit()
    c.tools = make_tools()
    s.current_label = 1
    return c


def use(c: Canvas, name: str):
    tool = c.tools[name]
    c.set_tool(tool)
    return tool


def probs_for(classes: np.ndarray, n: int, sure: float = 0.9) -> np.ndarray:
    """n×h×w softmax-like probabilities: ``sure`` on each pixel's class of ``classes``, the rest spread."""
    p = np.full((n, *classes.shape), (1 - sure) / (n - 1), np.float32)
    np.put_along_axis(p, classes[None].astype(np.int64), np.float32(sure), axis=0)
    return p


def with_fake_model(c: Canvas) -> DiscPredictor:
    fake = DiscPredictor()
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    return fake


def mouse(c: Canvas, kind: QEvent.Type, x: float, y: float, button=Qt.MouseButton.LeftButton,
          held=None, mods=Qt.KeyboardModifier.NoModifier) -> None:
    """Send a mouse event at image pixel (x, y) to the canvas's viewport."""
    p = c.mapFromScene(QPointF(x, y))
    pos = QPointF(p)
    held = (button if kind != QEvent.Type.MouseButtonRelease else Qt.MouseButton.NoButton) if held is None else held
    ev = QMouseEvent(kind, pos, QPointF(c.viewport().mapToGlobal(QPoint(p))),
                     Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else button, held, mods)
    QApplication.sendEvent(c.viewport(), ev)


def click(c, x, y, **kw) -> None:
    mouse(c, QEvent.Type.MouseButtonPress, x, y, **kw)
    mouse(c, QEvent.Type.MouseButtonRelease, x, y, **{k: v for k, v in kw.items() if k != "held"})


def drag(c, points) -> None:
    mouse(c, QEvent.Type.MouseButtonPress, *points[0])
    for x, y in points[1:]:
        mouse(c, QEvent.Type.MouseMove, x, y, held=Qt.MouseButton.LeftButton)
    mouse(c, QEvent.Type.MouseButtonRelease, *points[-1])


def previewed(c: Canvas) -> bool:
    return c.regions.region.isVisible()


def wait_idle(qtbot, tool) -> None:
    qtbot.waitUntil(lambda: not tool.queue.busy and not getattr(tool, "polish_queue", tool.queue).busy,
                    timeout=10_000)


def test_click_previews_then_enter_writes_only_the_region_as_one_confirmed_undo_step(qtbot, canvas):
    c, s = canvas, canvas.session
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    before = s.document.mask.copy()
    click(c, 20, 20)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    assert fake.calls == 1 and np.array_equal(s.document.mask, before)   # a preview only
    assert c.regions.label.text() == s.class_names[1]
    depth = s.document.undo_depth
    qtbot.keyClick(c, Qt.Key.Key_Return)
    expected = disc(20, 20, R)
    after = s.document.mask
    assert np.all(after[expected] == 1) and np.array_equal(after[~expected], before[~expected])
    assert s.document.undo_depth == depth + 1 and not previewed(c)
    conf = s.document.confirmed
    assert conf[expected].all() and not conf[~expected].any()        # a person's pixels now
    s.document.undo()
    assert np.array_equal(s.document.mask, before)


def test_a_clicks_remaining_logits_are_made_while_its_preview_shows(qtbot, canvas):
    """A predictor may hand its masks back before all of the logits (engine.ClickPrediction): the
    tool has them made in the click lane right after showing the candidates, so the next click
    finds its mask input ready; that click then feeds them back."""
    from engine.click import ClickPrediction
    c = canvas
    fake = with_fake_model(c)
    made, inputs = [], []
    plain = fake.predict

    def predict(*a, mask_input=None, **k):
        inputs.append(mask_input)
        out = plain(*a, mask_input=mask_input, **k)
        tag = float(fake.calls)

        def settle():
            made.append(threading.get_ident())
            return np.full_like(out.low_res_logits, tag)
        return ClickPrediction(out.masks, out.scores, settle=settle)
    fake.predict = predict
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 20, 20)
    qtbot.waitUntil(lambda: previewed(c) and len(made) == 1, timeout=10_000)
    assert made[0] != threading.get_ident()   # not on the UI thread
    click(c, 30, 20)
    qtbot.waitUntil(lambda: fake.calls == 2 and len(made) == 2, timeout=10_000)
    assert inputs[0] is None and np.all(inputs[1] == 1.0)   # the first click's logits, shown candidate


def test_negative_click_shrinks_the_candidate_and_tab_cycles(qtbot, canvas):
    c = canvas
    with_fake_model(c)
    tool = use(c, "click")
    click(c, 20, 20)
    wait_idle(qtbot, tool)
    first = tool.current.mask.copy()
    assert np.array_equal(first, disc(20, 20, R))
    qtbot.keyClick(c, Qt.Key.Key_Tab)                      # the next candidate: radius R/2
    assert np.array_equal(tool.current.mask, disc(20, 20, R / 2))
    qtbot.keyClick(c, Qt.Key.Key_Tab)
    qtbot.keyClick(c, Qt.Key.Key_Tab)                      # round to the first again
    assert np.array_equal(tool.current.mask, first)
    click(c, 25, 20, button=Qt.MouseButton.RightButton)   # negative near the edge
    wait_idle(qtbot, tool)
    shrunk = tool.current.mask
    assert shrunk.sum() < first.sum() and not (shrunk & disc(25, 20, R)).any()
    assert np.array_equal(shrunk, first & ~disc(25, 20, R))
    click(c, 14, 20, mods=Qt.KeyboardModifier.ShiftModifier)   # Shift+click is negative too
    wait_idle(qtbot, tool)
    assert not (tool.current.mask & disc(14, 20, R)).any()


class LazyDiscPredictor(DiscPredictor):
    """DiscPredictor's candidates made when first read (ClickPredictor's ``lazy``); records which it
    made and, with ``broken``, fails to make any but the first."""
    predicts_lazily = True

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.made, self.broken = [], broken

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True, lazy=False):
        assert lazy
        out = super().predict(points, labels, box, mask_input, multimask)

        kept = {}

        def mask(k):
            if k not in kept:
                if k and self.broken:
                    raise RuntimeError("no such mask")
                self.made.append(k)
                kept[k] = out.masks[k]
            return kept[k]
        mask(0)   # the best-scored one, before returning
        return SimpleNamespace(mask=mask, scores=out.scores, low_res_logits=out.low_res_logits)


@pytest.mark.parametrize("broken", [False, True])
def test_tab_shows_a_candidate_made_after_the_preview_and_a_failure_to_make_it_is_reported(qtbot, canvas, broken):
    c = canvas
    fake = LazyDiscPredictor(broken)
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    errors: list[str] = []
    c.target.report_error = errors.append
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 20, 20)
    wait_idle(qtbot, tool)
    assert np.array_equal(tool.current.mask, disc(20, 20, R)) and fake.made[0] == 0
    qtbot.keyClick(c, Qt.Key.Key_Tab)   # made by the settle in the click lane by now, or here
    if broken:
        assert errors and "Click model failed" in errors[-1] and "no such mask" in errors[-1]
        assert tool.current is None and not previewed(c)
        click(c, 30, 20)                 # the next click starts a new object
        wait_idle(qtbot, tool)
        assert np.array_equal(tool.current.mask, disc(30, 20, R))
    else:
        assert errors == [] and np.array_equal(tool.current.mask, disc(20, 20, R / 2)) and previewed(c)
        assert sorted(set(fake.made)) == sorted(fake.made)   # each made once
        qtbot.keyClick(c, Qt.Key.Key_Tab)
        assert np.array_equal(tool.current.mask, disc(20, 20, 2 * R)) and sorted(fake.made) == [0, 1, 2]


def test_a_drag_is_a_box_prompt(qtbot, canvas):
    c = canvas
    with_fake_model(c)
    tool = use(c, "click")
    drag(c, [(10, 10), (20, 20), (30, 25)])
    wait_idle(qtbot, tool)
    assert tool.session.box == (10, 10, 30, 25)
    assert tool.current.mask.sum() == 20 * 15


def test_a_press_predicts_before_the_button_comes_up_and_release_adds_nothing(qtbot, canvas):
    c = canvas
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    mouse(c, QEvent.Type.MouseButtonPress, 20, 20)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)          # the button is still down
    assert fake.calls == 1 and np.array_equal(tool.current.mask, disc(20, 20, R))
    mouse(c, QEvent.Type.MouseButtonRelease, 20, 20)
    wait_idle(qtbot, tool)
    assert fake.calls == 1 and tool.session.points.tolist() == [[20, 20]]


def test_a_press_that_becomes_a_drag_takes_its_point_back_for_the_box(qtbot, canvas):
    c = canvas
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 40, 30)                                       # an earlier point on the object
    wait_idle(qtbot, tool)
    mouse(c, QEvent.Type.MouseButtonPress, 10, 10)
    wait_idle(qtbot, tool)                                 # the pressed point was predicted...
    assert tool.session.points.tolist() == [[40, 30], [10, 10]]
    for x, y in ((20, 20), (30, 25)):
        mouse(c, QEvent.Type.MouseMove, x, y, held=Qt.MouseButton.LeftButton)
    assert not previewed(c)                                # ...and hidden while the box is drawn
    mouse(c, QEvent.Type.MouseButtonRelease, 30, 25)
    wait_idle(qtbot, tool)
    assert tool.session.points.tolist() == [[40, 30]] and tool.session.box == (10, 10, 30, 25)
    assert fake.calls == 3 and previewed(c)


def test_shift_click_sends_its_negative_point_once(qtbot, canvas):
    c = canvas
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 20, 20)
    wait_idle(qtbot, tool)
    click(c, 24, 20, mods=Qt.KeyboardModifier.ShiftModifier)
    wait_idle(qtbot, tool)
    assert tool.session.labels.tolist() == [1, 0] and fake.calls == 2


def _after_one_click(qtbot, c: Canvas):
    """The click tool (fake model, no edge polish) after a click at (40, 30); the errors it reports."""
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    errors: list[str] = []
    c.target.report_error = errors.append
    click(c, 40, 30)
    wait_idle(qtbot, tool)
    return tool, fake, errors


def test_a_box_drag_from_outside_the_image_keeps_the_earlier_click(qtbot, canvas):
    c = canvas
    tool, fake, errors = _after_one_click(qtbot, c)
    drag(c, [(-3, -2), (10, 10), (30, 25)])               # starts in the margin around the image
    wait_idle(qtbot, tool)
    assert errors == [] and fake.calls == 2
    assert tool.session.points.tolist() == [[40, 30]] and tool.session.box == (0, 0, 30, 25)


def test_a_failed_box_after_a_drag_shows_what_the_session_holds(qtbot, canvas):
    c = canvas
    tool, _, errors = _after_one_click(qtbot, c)
    first = tool.current.mask.copy()
    drag(c, [(10, 10), (10.2, 30), (10.4, 60)])           # a box under a pixel wide: refused
    wait_idle(qtbot, tool)
    assert errors and "empty" in errors[-1]
    assert tool.session.points.tolist() == [[40, 30]]     # the pressed point was taken back
    assert np.array_equal(tool.current.mask, first) and previewed(c)


def test_after_a_failed_prompt_what_shows_keeps_its_class_and_is_polished_again(qtbot, canvas, monkeypatch):
    """The refused box stopped the polish of the candidate on screen: it starts again for it, and the
    candidate still gets the probabilities' class."""
    c, s = canvas, canvas.session
    s.probs = probs_for(np.full((H, W), 2), len(s.class_names))
    polished = []
    refine = __import__("engine.crf", fromlist=["refine"]).refine
    monkeypatch.setattr("engine.crf.refine", lambda *a, **kw: polished.append(1) or refine(*a, **kw))
    tool, _, errors = _after_one_click(qtbot, c)
    tool.edge_polish = True
    tool.show()                                            # the first click's polish
    qtbot.waitUntil(lambda: len(polished) == 1 and not tool.polish_queue.busy, timeout=10_000)
    drag(c, [(10, 10), (10.2, 30), (10.4, 60)])            # a box under a pixel wide: refused
    wait_idle(qtbot, tool)
    qtbot.waitUntil(lambda: len(polished) == 2 and not tool.polish_queue.busy, timeout=10_000)
    assert errors and tool.label() == 2 and previewed(c)
    assert tool._polished.get(tool.index, (None,))[0] == 2   # its polished mask is what Enter writes


def test_a_retracted_point_that_never_ran_is_not_predicted(qtbot, canvas):
    c = canvas
    fake = GatedPredictor()
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 40, 30)
    wait_idle(qtbot, tool)
    click(c, 45, 30)                                       # held in the worker
    drag(c, [(10, 10), (20, 20), (30, 25)])                # its point and the retraction wait behind
    fake.gate.set()
    wait_idle(qtbot, tool)
    assert fake.calls == 3                                 # 40,30; 45,30; the box (not 10,10)
    assert tool.session.points.tolist() == [[40, 30], [45, 30]] and tool.session.box == (10, 10, 30, 25)


def test_auto_class_takes_the_probabilities_class_and_can_be_switched_off(qtbot, canvas):
    c, s = canvas, canvas.session
    with_fake_model(c)
    # The model says class 2 everywhere, on a coarser grid than the image.
    s.probs = probs_for(np.full((H // 2, W // 2), 2), len(s.class_names))
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 20, 20)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    assert tool.label() == 2 and c.regions.label.text() == s.class_names[2]
    tool.auto_class = False
    tool.show()
    assert tool.label() == 1 and c.regions.label.text() == s.class_names[1]
    tool.auto_class = True
    qtbot.keyClick(c, Qt.Key.Key_Space)                     # Space accepts too
    assert np.all(s.document.mask[disc(20, 20, R)] == 2)


def test_only_the_shown_candidates_class_is_weighed_before_its_preview(qtbot, canvas, monkeypatch):
    """The click's job weighs the class of the candidate it shows; the others are weighed while the
    preview is looked at (the settle), or by Tab when it comes first; each candidate once."""
    import deeplab_gui.editing.click as editing_click
    c, s = canvas, canvas.session
    with_fake_model(c)
    classes = np.full((H, W), 3)
    classes[disc(20, 20, R)] = 2                  # candidates R and R/2 lie in class 2; 2R mostly in 3
    s.probs = probs_for(classes, len(s.class_names))
    weighed = []
    real = editing_click.region_class
    monkeypatch.setattr(editing_click, "region_class",
                        lambda *a, **kw: weighed.append(threading.current_thread()) or real(*a, **kw))
    tool = use(c, "click")
    tool.edge_polish = False
    tool._settle_timer.setInterval(60_000)       # the settle only when the test says so
    click(c, 20, 20)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    wait_idle(qtbot, tool)
    assert tool.label() == 2 and len(weighed) == 1 and weighed[0] is not threading.main_thread()
    tool._settle_now()                            # what the timer does once the preview is painted
    qtbot.waitUntil(lambda: len(weighed) == 3, timeout=10_000)
    qtbot.keyClick(c, Qt.Key.Key_Tab)
    qtbot.keyClick(c, Qt.Key.Key_Tab)
    assert tool.label() == 3 and c.regions.label.text() == s.class_names[3] and len(weighed) == 3
    # Tab before the settle: the shown candidate's class is weighed then, once.
    qtbot.keyClick(c, Qt.Key.Key_Escape)
    weighed.clear()
    click(c, 20, 20)
    qtbot.waitUntil(lambda: previewed(c) and tool.cands and len(weighed) == 1, timeout=10_000)
    wait_idle(qtbot, tool)
    tool._settle_timer.stop()
    qtbot.keyClick(c, Qt.Key.Key_Tab)
    qtbot.keyClick(c, Qt.Key.Key_Tab)
    assert tool.label() == 3 and len(weighed) == 3
    qtbot.keyClick(c, Qt.Key.Key_Tab)
    assert tool.label() == 2 and len(weighed) == 3


def test_edge_polish_runs_in_a_worker_and_changes_only_the_border_band(qtbot, canvas):
    c, s = canvas, canvas.session
    with_fake_model(c)
    s.probs = probs_for(np.ones((H, W), int), len(s.class_names))
    tool = use(c, "click")
    before = s.document.mask.copy()
    click(c, 20, 20)
    wait_idle(qtbot, tool)                                 # the prediction, then the polish of what it shows
    shown = tool.shown_mask()
    assert shown is not None and not np.array_equal(shown, tool.current.mask)   # the polished one
    qtbot.keyClick(c, Qt.Key.Key_Return)
    changed = s.document.mask != before
    assert np.array_equal(changed, shown & (before != 1))  # exactly what the preview showed went in
    assert (changed & ~disc(20, 20, R + 4)).sum() == 0     # within the 3-px band around the disc
    assert changed[disc(20, 20, R - 4)].all()              # the interior went in


def test_escape_leaves_the_mask_unchanged(qtbot, canvas):
    c, s = canvas, canvas.session
    with_fake_model(c)
    tool = use(c, "click")
    before = s.document.mask.copy()
    click(c, 20, 20)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    qtbot.keyClick(c, Qt.Key.Key_Escape)
    assert not previewed(c) and tool.session is None
    qtbot.keyClick(c, Qt.Key.Key_Return)                   # nothing left to accept
    assert np.array_equal(s.document.mask, before) and s.document.undo_depth == 0


def test_without_a_click_model_a_click_says_how_to_get_one_and_does_nothing(qtbot, canvas):
    c, s = canvas, canvas.session
    c.target.click_status = lambda: "no click model: choose one in the Model panel"
    said = []
    s.message.connect(lambda level, text: said.append((level, text)))
    tool = use(c, "click")
    click(c, 20, 20)
    assert said[-1] == ("info", "no click model: choose one in the Model panel")
    assert tool.session is None and not previewed(c) and not tool.queue.busy


def test_prompts_wait_for_the_embedding_and_follow_when_it_is_ready(qtbot, canvas):
    c = canvas
    fake = DiscPredictor()
    ready = []
    c.target.click_status = lambda: None
    c.target.click_predictor = lambda: fake if ready else None
    hooks = []
    c.target.on_embedding_ready = lambda cb: hooks.append(cb)
    tool = use(c, "click")
    click(c, 20, 20)
    assert fake.calls == 0 and not previewed(c)
    ready.append(True)
    hooks[-1](c.target.image_key)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    assert np.array_equal(tool.current.mask, disc(20, 20, R))


def test_crf_click_previews_a_region_of_the_clicked_side_and_enter_accepts_it(qtbot, canvas):
    c, s = canvas, canvas.session
    halves = np.zeros((H, W), int)
    halves[:, W // 2:] = 1
    s.probs = probs_for(halves, len(s.class_names), sure=0.6)   # agrees with the picture, unsure
    tool = use(c, "crfclick")
    before = s.document.mask.copy()
    click(c, 45, 24)                                        # in the bright right half
    qtbot.waitUntil(lambda: tool.region is not None, timeout=20_000)
    assert previewed(c) and np.array_equal(s.document.mask, before)
    region = tool.region[0]
    assert region[24, 45] and not region[:, :W // 2 - 2].any()   # stops at the colour edge
    qtbot.keyClick(c, Qt.Key.Key_Return)
    assert np.array_equal(s.document.mask == 1, region) and s.document.confirmed[region].all()
    assert s.document.undo_depth == 1


def test_superpixel_drag_paints_whole_superpixels_as_one_undo_step(qtbot, canvas):
    c, s = canvas, canvas.session
    tool = use(c, "superpixel")
    tool.size = 8
    qtbot.waitUntil(lambda: tool.current() is not None, timeout=20_000)
    assert c.regions.overlay.isVisible()                   # the borders are shown
    seg = tool.current()[0].full()
    QApplication.processEvents()   # let the view settle (a first show may still fit it) before mapping points
    c.fit()
    drag(c, [(5, 5), (12, 9), (18, 14)])
    mask = s.document.mask
    painted = mask == 1
    touched = np.unique(seg[painted])
    # Whole superpixels: every touched one is painted entirely, and the drag's pixels are among them.
    assert np.array_equal(painted, np.isin(seg, touched))
    for x, y in ((5, 5), (12, 9), (18, 14)):
        assert painted[y, x]
    assert s.document.undo_depth == 1 and s.document.confirmed[painted].all()
    assert not painted[:, W // 2:].any()                   # the bright half is other superpixels


def test_window_keys_choose_the_region_tools_and_the_click_toggles_show_with_the_click_tool(
        qtbot, open_window, grey_images):
    win = open_window(grey_images(2))
    for key, name in ((Qt.Key.Key_X, "superpixel"), (Qt.Key.Key_R, "crfclick"), (Qt.Key.Key_C, "click")):
        qtbot.keyClick(win.canvas, key)
        assert win.canvas.tool is win.tools[name] and win.tool_actions[name].isChecked()
        if name == "superpixel":   # the size box says what it sets
            assert win.tool_options.size_label.text() == "Superpixel size"
    toggles = win.click_toggles
    assert all(a.isVisible() and a.isChecked() for a in toggles.values())
    toggles["auto_class"].setChecked(False)
    assert win.tools["click"].auto_class is False
    toggles["edge_polish"].setChecked(False)
    assert win.tools["click"].edge_polish is False
    qtbot.keyClick(win.canvas, Qt.Key.Key_B)
    assert not any(a.isVisible() for a in toggles.values())
    assert win.tool_options.size_label.text() == "Radius"


def test_in_the_window_without_a_click_model_the_click_tool_shows_the_click_states_own_line(
        qtbot, open_window, grey_images):
    win = open_window(grey_images(1, size=(24, 32)))
    s = win.session
    assert s.click.model_name is None
    win.set_tool("click")
    before = s.document.mask.copy()
    click(win.canvas, 10, 10)
    level, text = win.messages[-1]
    assert (level, text) == ("info", s.click.status_text) and "\n" not in text
    assert win.statusBar().currentMessage() == text
    assert np.array_equal(s.document.mask, before) and not previewed(win.canvas)


def test_superpixels_are_cached_per_image_and_size_and_recomputed_after_a_dropped_request(qtbot, canvas):
    c = canvas
    tool = use(c, "superpixel")
    qtbot.waitUntil(lambda: tool.current() is not None, timeout=20_000)
    first = tool.current()[0].full()
    tool.size = 6                                         # another granularity: computed anew...
    tool.size = 7                                         # ...and this one waits behind it
    c.set_tool(c.tools["brush"])                          # switched away: the waiting one is dropped
    assert not c.regions.overlay.isVisible()
    use(c, "superpixel")                                  # back: size 7 is asked for again
    qtbot.waitUntil(lambda: tool.current() is not None, timeout=20_000)
    assert tool.current()[0].count >= first.max() + 1      # finer or as fine
    seven = tool.current()[0]
    qtbot.waitUntil(lambda: not tool._queue.busy, timeout=20_000)
    tool.size = 6
    assert tool.current() is not None and not tool._queue.busy   # from the cache, no recomputation
    assert c.regions.overlay.isVisible()
    tool.size = 7
    assert tool.current()[0] is seven


class GatedPredictor(DiscPredictor):
    """Holds every predict after the first until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def predict(self, *a, **kw):
        if self.calls >= 1:
            self.gate.wait(10)
        return super().predict(*a, **kw)


def test_clicks_queued_behind_a_prediction_survive_tab_and_the_edge_polish(qtbot, canvas):
    c, s = canvas, canvas.session
    fake = GatedPredictor()
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    s.probs = probs_for(np.ones((H, W), int), len(s.class_names))   # so each shown candidate is polished
    tool = use(c, "click")
    click(c, 20, 20)
    wait_idle(qtbot, tool)
    click(c, 30, 20)                                       # held in the worker
    click(c, 12, 20, button=Qt.MouseButton.RightButton)    # these two wait behind it, in order
    click(c, 25, 30)
    qtbot.keyClick(c, Qt.Key.Key_Tab)                      # shows (and polishes) another candidate
    tool.auto_class = False                                # as the tool bar's toggle does
    tool.show()
    fake.gate.set()
    qtbot.waitUntil(lambda: fake.calls == 4, timeout=10_000)
    wait_idle(qtbot, tool)
    assert tool.session.labels.tolist() == [1, 1, 0, 1]    # no prompt was dropped
    assert tool.session.points.tolist() == [[20, 20], [30, 20], [12, 20], [25, 30]]


def test_a_new_click_stops_the_polish_of_the_candidates_it_replaces(qtbot, canvas, monkeypatch):
    """The edge polish is background work for what is shown: the next prompt (or Escape) stops it
    between its CRF steps, and the new candidates get their own polish."""
    c, s = canvas, canvas.session
    with_fake_model(c)
    s.probs = probs_for(np.ones((H, W), int), len(s.class_names))
    started, stopped = [], []

    idle = threading.Event()                              # never set: the poll's pause between checks

    def slow_refine(img, p, params, cancel=None, **kw):   # a CRF that runs until told to stop
        started.append(1)
        while not cancel():
            idle.wait(0.005)
        stopped.append(1)
        return None
    monkeypatch.setattr("engine.crf.refine", slow_refine)
    tool = use(c, "click")
    click(c, 20, 20)
    qtbot.waitUntil(lambda: len(started) == 1, timeout=10_000)
    click(c, 30, 20, button=Qt.MouseButton.RightButton)
    qtbot.waitUntil(lambda: len(stopped) == 1 and len(started) == 2, timeout=10_000)   # the next one's polish
    assert tool.session.points.tolist() == [[20, 20], [30, 20]]
    qtbot.keyClick(c, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: len(stopped) == 2 and not tool.polish_queue.busy, timeout=10_000)
    assert not previewed(c) and tool._polished == {}


def test_enter_while_a_prediction_runs_writes_what_is_on_screen(qtbot, canvas, monkeypatch):
    import deeplab_gui.editing.click as editing_click
    c, s = canvas, canvas.session
    with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 20, 20)
    wait_idle(qtbot, tool)
    shown = tool.shown_mask().copy()
    held, reached = threading.Event(), threading.Event()

    def slow_class(*a, **kw):                              # the session already holds new candidates
        reached.set()
        held.wait(10)
        return None
    monkeypatch.setattr(editing_click, "region_class", slow_class)
    s.probs = probs_for(np.ones((H, W), int), len(s.class_names))
    before = s.document.mask.copy()
    click(c, 40, 30)
    assert reached.wait(10)
    qtbot.keyClick(c, Qt.Key.Key_Return)
    held.set()
    changed = s.document.mask != before
    assert np.array_equal(changed, shown & (before != s.current_label))


class SizedDiscPredictor(DiscPredictor):
    """DiscPredictor that also makes its masks at a smaller ``size`` (every few pixels of the
    full-size ones), with ``full(k)`` for mask k at the image's size, as ClickPredictor does."""
    predicts_at_size = True

    def __init__(self) -> None:
        super().__init__()
        self.sizes, self.made = [], []

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True, size=None):
        out = super().predict(points, labels, box, mask_input, multimask)
        self.sizes.append(size)
        if size is None:
            return out
        whole = out.masks
        ys = ((np.arange(size[0]) + 0.5) * H / size[0]).astype(int)
        xs = ((np.arange(size[1]) + 0.5) * W / size[1]).astype(int)

        def full(k):
            self.made.append(k)
            return whole[k]
        return SimpleNamespace(masks=whole[:, ys][:, :, xs], scores=out.scores, low_res_logits=out.low_res_logits,
                               full=full)


def test_a_large_photos_candidates_show_reduced_and_enter_writes_the_full_size_mask(qtbot, canvas, monkeypatch):
    """Over CANDIDATE_PIXELS the candidates come at a reduced size and are previewed stretched over
    the image; the shown one is made at full size in a worker, and Enter writes exactly that."""
    from deeplab_gui.editing import click as click_editing
    monkeypatch.setattr(click_editing, "CANDIDATE_PIXELS", H * W // 4)
    c, s = canvas, canvas.session
    fake = SizedDiscPredictor()
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    tool = use(c, "click")
    tool.edge_polish = False
    before = s.document.mask.copy()
    click(c, 20, 20)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    assert fake.sizes == [(H // 2, W // 2)]
    item = c.regions.region
    assert item.transform().m11() == 2 and item.transform().m22() == 2   # a preview pixel: 2×2 image pixels
    rect = item.sceneBoundingRect()
    assert abs(rect.center().x() - 20) <= 2 and abs(rect.center().y() - 20) <= 2
    qtbot.waitUntil(lambda: tool.current.ready, timeout=10_000)           # made ahead, off the UI thread
    assert fake.made == [0]                                               # the shown candidate only
    qtbot.keyClick(c, Qt.Key.Key_Return)
    expected = disc(20, 20, R)
    after = s.document.mask
    assert np.all(after[expected] == 1) and np.array_equal(after[~expected], before[~expected])
    # With edge polish the worker polishes the full-size mask, and that is what is shown then.
    s.probs = probs_for(np.ones((H, W), int), len(s.class_names))
    tool.edge_polish = True
    click(c, 40, 20)
    wait_idle(qtbot, tool)
    qtbot.waitUntil(lambda: bool(tool._polished), timeout=10_000)
    assert tool.shown_mask(preview=True).shape == (H, W) and item.transform().m11() == 1


def test_a_large_images_superpixels_stay_on_their_grid_and_paint_whole_at_full_size(qtbot, canvas, monkeypatch):
    """Over MAX_PIXELS the ids are kept on the reduced grid (no full-size id map), the borders are
    drawn stretched over the image, and a drag still paints whole superpixels at the image's size."""
    from deeplab_gui.editing import superpixels
    monkeypatch.setattr(superpixels, "MAX_PIXELS", H * W // 4)
    monkeypatch.setattr(superpixels.segment, "__defaults__", (superpixels.SuperpixelParams(), H * W // 4))
    c, s = canvas, canvas.session
    tool = use(c, "superpixel")
    tool.size = 8
    qtbot.waitUntil(lambda: tool.current() is not None, timeout=20_000)
    sp = tool.current()[0]
    assert sp.seg.shape == (H // 2, W // 2) and sp.shape == (H, W)
    assert c.regions.overlay.transform().m11() == 2 and c.regions.overlay.transform().m22() == 2
    seg = sp.full()
    QApplication.processEvents()
    c.fit()
    drag(c, [(5, 5), (12, 9), (18, 14)])
    painted = s.document.mask == 1
    assert painted[5, 5] and painted[14, 18]
    assert np.array_equal(painted, np.isin(seg, np.unique(seg[painted])))
    assert s.document.undo_depth == 1
