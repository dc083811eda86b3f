"""Guessed clicks: where the pointer rests on the image the click tool predicts a positive click
before it is made, so a press on that pixel shows its candidates at once. On the real canvas and
session (offscreen) with the disc-drawing fake predictor of test_click_tools_gui."""
# ruff: noqa: F811  (the canvas fixture is imported, and named again by each test's parameter)
from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import QEvent, Qt

from tests.test_click_tools_gui import (  # noqa: F401  (canvas is a fixture)
    H,
    W,
    DiscPredictor,
    R,
    canvas,
    click,
    disc,
    drag,
    mouse,
    previewed,
    probs_for,
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
    qtbot.waitUntil(lambda: tool._guess is not None and tool._guess.at(x, y) and tool._guess.result is not None,
                    timeout=10_000)


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
    fake, tool = held_tool(c)
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
    fake, tool = held_tool(c)
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


def held_tool(c):
    """The click tool on a HeldPredictor whose runs wait for its gate (closed)."""
    fake = HeldPredictor()
    c.target.click_predictor = lambda: fake
    c.target.click_status = lambda: None
    tool = use(c, "click")
    tool.edge_polish = False
    fake.gate.clear()
    return fake, tool


def claim(qtbot, c, fake, x=20, y=20) -> None:
    """Rest at (x, y) until the guess there runs (held), then click there: the click claims it."""
    mouse(c, QEvent.Type.MouseMove, x, y, held=Qt.MouseButton.NoButton)
    qtbot.waitUntil(fake.started.is_set, timeout=10_000)
    click(c, x, y)


@pytest.mark.parametrize("then", ["click elsewhere", "shift-click", "box from the margin"])
def test_a_click_pressed_on_a_guess_not_in_yet_survives_the_next_prompt(qtbot, canvas, then):
    c = canvas
    fake, tool = held_tool(c)
    claim(qtbot, c, fake)
    expected = {"click elsewhere": [[20, 20], [40, 30]], "shift-click": [[20, 20], [22, 20]],
                "box from the margin": [[20, 20]]}[then]
    if then == "click elsewhere":
        click(c, 40, 30)
    elif then == "shift-click":
        click(c, 22, 20, mods=Qt.KeyboardModifier.ShiftModifier)
    else:
        drag(c, [(-3, -2), (10, 10), (30, 25)])
    fake.gate.set()
    qtbot.waitUntil(lambda: tool.session is not None and tool.session.points.tolist() == expected, timeout=10_000)
    wait_idle(qtbot, tool)
    assert tool.session.points.tolist() == expected


def test_a_claimed_guess_that_went_stale_or_failed_runs_for_real(qtbot, canvas):
    c, s = canvas, canvas.session
    fake, tool = held_tool(c)
    claim(qtbot, c, fake)
    s.current_label = 2                                          # the region would get another class
    fake.gate.set()
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    wait_idle(qtbot, tool)
    assert fake.calls == 2 and tool.session.points.tolist() == [[20, 20]] and tool.label() == 2

    class FailFirst(HeldPredictor):
        def predict(self, *a, **kw):
            if self.calls == 0:
                self.calls += 1
                self.started.set()
                assert self.gate.wait(10)
                raise RuntimeError("out of memory")
            return super().predict(*a, **kw)
    qtbot.keyClick(c, Qt.Key.Key_Escape)
    failing = FailFirst()
    failing.gate.clear()
    c.target.click_predictor = lambda: failing
    errors: list = []
    c.target.report_error = errors.append
    claim(qtbot, c, failing, 30, 25)
    failing.gate.set()
    qtbot.waitUntil(lambda: previewed(c), timeout=10_000)
    wait_idle(qtbot, tool)
    assert tool.session.points.tolist() == [[30, 25]] and errors == []


def test_a_guess_is_not_used_after_the_probabilities_or_the_model_changed(qtbot, canvas):
    c, s = canvas, canvas.session
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    rest(qtbot, c, tool, 20, 20)
    s.probs = probs_for(np.full((H // 2, W // 2), 2), len(s.class_names))   # the segmentation came in
    click(c, 20, 20)
    wait_idle(qtbot, tool)
    assert fake.calls == 2 and tool.label() == 2                  # auto class from the new probabilities
    qtbot.keyClick(c, Qt.Key.Key_Escape)
    s.probs = None
    # Another click model: while its embedding is made, clicks wait, in order, and the old
    # model's guess is not taken.
    rest(qtbot, c, tool, 20, 20)
    c.target.click_predictor = lambda: None
    click(c, 40, 30, button=Qt.MouseButton.RightButton)
    click(c, 20, 20)
    other = DiscPredictor()
    c.target.click_predictor = lambda: other
    tool._embedding_ready(c.target.image_key)                     # what the click state says when it is made
    wait_idle(qtbot, tool)
    assert tool.session.predictor is other and tool.session.points.tolist() == [[40, 30], [20, 20]]


def test_a_drag_from_an_adopted_guess_leaves_only_the_box(qtbot, canvas):
    c = canvas
    with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 40, 30)
    wait_idle(qtbot, tool)
    rest(qtbot, c, tool, 10, 10)
    drag(c, [(10, 10), (20, 20), (30, 25)])
    wait_idle(qtbot, tool)
    assert tool.session.points.tolist() == [[40, 30]] and tool.session.box == (10, 10, 30, 25)


def test_hovering_does_not_count_as_clicking_and_dropped_guesses_do_not_run(qtbot, canvas):
    c = canvas
    fake, tool = held_tool(c)
    notes: list = []
    c.target.note_click = lambda: notes.append(1)     # what holds neighbours' embeddings back
    mouse(c, QEvent.Type.MouseMove, 10, 10, held=Qt.MouseButton.NoButton)
    qtbot.waitUntil(fake.started.is_set, timeout=10_000)
    for x in (12, 14, 16):                            # rests while that guess is held: none start
        mouse(c, QEvent.Type.MouseMove, x, 10, held=Qt.MouseButton.NoButton)
        qtbot.wait(60)
    qtbot.keyClick(c, Qt.Key.Key_Escape)
    fake.gate.set()
    qtbot.waitUntil(lambda: tool._guess is not None and tool._guess.result is not None and tool._guess.x == 16,
                    timeout=10_000)
    assert fake.calls == 2 and notes == []            # the held one, then the last rest's


def test_a_click_in_the_margin_around_the_image_does_nothing(qtbot, canvas):
    c = canvas
    fake = with_fake_model(c)
    errors: list = []
    c.target.report_error = errors.append
    tool = use(c, "click")
    click(c, 20, -4)                                            # above the image
    click(c, 30, H + 3, button=Qt.MouseButton.RightButton)      # below it
    qtbot.wait(100)
    wait_idle(qtbot, tool)
    assert fake.calls == 0 and errors == [] and not previewed(c)


def test_two_quick_clicks_are_two_prompts_even_when_qt_calls_the_second_a_double_click(qtbot, canvas):
    c = canvas
    fake = with_fake_model(c)
    tool = use(c, "click")
    tool.edge_polish = False
    for button, x in ((Qt.MouseButton.LeftButton, 20), (Qt.MouseButton.RightButton, 40)):
        click(c, x, 20, button=button)
        mouse(c, QEvent.Type.MouseButtonDblClick, x + 3, 20, button=button)   # the second press, as Qt sends it
        mouse(c, QEvent.Type.MouseButtonRelease, x + 3, 20, button=button)
        wait_idle(qtbot, tool)
    assert tool.session.points.tolist() == [[20, 20], [23, 20], [40, 20], [43, 20]]
    assert tool.session.labels.tolist() == [1, 1, 0, 0]


def test_slow_guesses_are_spaced_out(qtbot, canvas, monkeypatch):
    # A guess that takes long (a big photo) is followed by the next no sooner than a few times its
    # own time: a pointer wandering over the image takes a bounded share of the CPU.
    import time
    from types import SimpleNamespace

    import deeplab_gui.widgets.canvas.click_guess as click_guess
    c = canvas
    fake = with_fake_model(c)
    real, clock = fake.predict, [0.0]

    def slow(*a, **kw):                                          # 100 ms by the guesses' own clock
        clock[0] += 0.1
        return real(*a, **kw)
    fake.predict = slow
    monkeypatch.setattr(click_guess, "time", SimpleNamespace(perf_counter=lambda: clock[0], monotonic=time.monotonic))
    monkeypatch.setattr(click_guess, "GUESS_SHARE", 5)
    tool = use(c, "click")
    rest(qtbot, c, tool, 10, 10)                                 # took ~100 ms: the next waits ~500 ms
    started = time.monotonic()
    rest(qtbot, c, tool, 30, 20)
    assert time.monotonic() - started >= 0.4 and fake.calls == 2


def test_tab_and_enter_say_what_they_did_in_the_status_bar(qtbot, canvas):
    c, s = canvas, canvas.session
    with_fake_model(c)
    said: list = []
    s.message.connect(lambda kind, text: said.append(text))
    tool = use(c, "click")
    tool.edge_polish = False
    click(c, 20, 20)
    wait_idle(qtbot, tool)
    qtbot.keyClick(c, Qt.Key.Key_Tab)
    assert said[-1].startswith("candidate 2 of 3")
    shown = int(tool.shown_mask().sum())
    qtbot.keyClick(c, Qt.Key.Key_Return)
    assert said[-1] == f"{shown} pixels set to {s.class_names[1]} (Ctrl+Z undoes)"
