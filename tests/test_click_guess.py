"""Guessed clicks: where the pointer rests on the image the click tool predicts a positive click
before it is made, so a press on that pixel shows its candidates at once. On the real canvas and
session (offscreen) with the disc-drawing fake predictor of test_click_tools_gui."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import QEvent, Qt

from tests.test_click_tools_gui import (  # noqa: F401  (canvas is a fixture)
    DiscPredictor,
    R,
    canvas,
    click,
    disc,
    mouse,
    previewed,
    use,
    wait_idle,
    with_fake_model,
)

pytest.importorskip("pytestqt")


class HeldPredictor(DiscPredictor):
    """Each predict waits for ``gate`` (set: no wait) and says it started through ``started``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()

    def predict(self, *a, **kw):
        self.started.set()
        assert self.gate.wait(10)
        return super().predict(*a, **kw)


def rest(qtbot, c, tool, x: float, y: float) -> None:
    """Hover to image pixel (x, y) and stay until the guess there has been started and is in."""
    mouse(c, QEvent.Type.MouseMove, x, y, held=Qt.MouseButton.NoButton)
    qtbot.waitUntil(lambda: tool._guess is not None and tool._guess.result is not None, timeout=10_000)


def press(c, x, y, **kw) -> None:
    mouse(c, QEvent.Type.MouseButtonPress, x, y, **kw)


def release(c, x, y) -> None:
    mouse(c, QEvent.Type.MouseButtonRelease, x, y)


def test_a_press_where_the_pointer_rested_shows_the_guess_at_once(qtbot, canvas):
    c, s = canvas, canvas.session
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    before = s.document.mask.copy()
    rest(qtbot, c, tool, 20, 20)
    # The guess changed nothing anyone can see: no preview, no prompt, no candidates.
    assert fake.calls == 1 and not previewed(c) and tool.cands == []
    assert tool.session is None or tool.session.points.size == 0
    press(c, 20, 20)
    assert previewed(c) and fake.calls == 1                       # shown within the press, no new run
    release(c, 20, 20)
    wait_idle(qtbot, tool)
    assert fake.calls == 1 and tool.session.points.tolist() == [[20, 20]]
    qtbot.keyClick(c, Qt.Key.Key_Return)
    expected = disc(20, 20, R)
    assert np.all(s.document.mask[expected] == 1)
    assert np.array_equal(s.document.mask[~expected], before[~expected])


def test_a_press_elsewhere_predicts_for_real_and_the_guess_is_dropped(qtbot, canvas):
    c = canvas
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    rest(qtbot, c, tool, 20, 20)
    click(c, 40, 30)
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    wait_idle(qtbot, tool)
    assert fake.calls == 2 and tool.session.points.tolist() == [[40, 30]]
    assert np.array_equal(tool.current.mask, disc(40, 30, R))


def test_a_press_before_the_guess_is_in_waits_for_it_instead_of_running_again(qtbot, canvas):
    c = canvas
    fake = HeldPredictor()
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    tool = use(c, "click")
    tool.edge_polish = False
    fake.gate.clear()
    mouse(c, QEvent.Type.MouseMove, 20, 20, held=Qt.MouseButton.NoButton)
    qtbot.waitUntil(fake.started.is_set, timeout=10_000)        # the guess runs, held
    click(c, 20, 20)
    assert not previewed(c)
    fake.gate.set()
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    wait_idle(qtbot, tool)
    assert fake.calls == 1 and tool.session.points.tolist() == [[20, 20]]


def test_a_press_on_a_guess_not_in_yet_that_becomes_a_drag_leaves_only_the_box(qtbot, canvas):
    c = canvas
    fake = HeldPredictor()
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    tool = use(c, "click")
    tool.edge_polish = False
    fake.gate.clear()
    mouse(c, QEvent.Type.MouseMove, 10, 10, held=Qt.MouseButton.NoButton)
    qtbot.waitUntil(fake.started.is_set, timeout=10_000)
    press(c, 10, 10)
    for x, y in ((20, 20), (30, 25)):
        mouse(c, QEvent.Type.MouseMove, x, y, held=Qt.MouseButton.LeftButton)
    release(c, 30, 25)
    fake.gate.set()
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    wait_idle(qtbot, tool)
    assert tool.session.points.size == 0 and tool.session.box == (10.0, 10.0, 30.0, 25.0)
    box = np.zeros_like(tool.current.mask)
    box[10:25, 10:30] = True
    assert np.array_equal(tool.current.mask, box)


def test_a_guess_made_before_tab_or_another_class_is_not_used(qtbot, canvas):
    c, s = canvas, canvas.session
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 20, 20)                                             # three candidates
    wait_idle(qtbot, tool)
    rest(qtbot, c, tool, 40, 30)                                 # guessed on candidate 0
    qtbot.keyClick(c, Qt.Key.Key_Tab)                            # candidate 1 feeds the next prompt
    calls = fake.calls
    click(c, 40, 30)
    wait_idle(qtbot, tool)
    assert fake.calls == calls + 1 and tool.session.points.tolist() == [[20, 20], [40, 30]]
    rest(qtbot, c, tool, 10, 40)
    s.current_label = 2                                          # the region would get another class
    calls = fake.calls
    click(c, 10, 40)
    wait_idle(qtbot, tool)
    assert fake.calls == calls + 1 and tool.label() == 2


def test_no_guess_without_a_model_while_a_prompt_runs_or_when_switched_off(qtbot, canvas):
    c = canvas
    tool = use(c, "click")
    c.target.click_status = lambda: "no click model: choose one in the model panel"
    c.target.click_predictor = lambda: None
    mouse(c, QEvent.Type.MouseMove, 20, 20, held=Qt.MouseButton.NoButton)
    qtbot.wait(150)
    assert tool._guess is None
    fake = with_fake_model(c)
    tool.guess_clicks = False
    mouse(c, QEvent.Type.MouseMove, 21, 20, held=Qt.MouseButton.NoButton)
    qtbot.wait(150)
    assert tool._guess is None and fake.calls == 0
