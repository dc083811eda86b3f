"""The simulated annotator: reaches its target with each tool set through the document's own edits."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from deeplab_gui.editing import klm
from deeplab_gui.editing.simulate import Annotator, SimConfig, error_count, image_miou
from engine import VOID
from trainer.synthetic import corrupt_mask, make_scene

SIZE = (96, 128)


def _scene(seed: int, start: str):
    rng = np.random.default_rng(seed)
    image, truth = make_scene(rng, *SIZE)
    if start == "empty":
        first = np.full(truth.shape, VOID, np.uint8)
    else:
        first = corrupt_mask(truth, rng, boundary=2)
    return image, truth, first


def _committed_errors(start_error: int, actions) -> list[int]:
    """Error after each step that stayed (a snap undone at once, or a click candidate dismissed, is
    not a step that stayed)."""
    out, prev = [start_error], None
    for a in actions:
        if a.tool == "undo":
            out.pop()           # the snap before it was taken back
        elif a.tool == "cancel":
            assert a.error_after == out[-1]   # dismissing changes nothing
        else:
            out.append(a.error_after)
        prev = a
    assert prev is None or prev.tool != "undo"
    return out


@pytest.mark.parametrize("tools", ["manual", "snap", "superpixel", "crfclick"])
@pytest.mark.parametrize("start", ["empty", "noisy"])
def test_reaches_the_target_and_every_step_lowers_the_error(tools, start):
    for seed in (0, 1):
        image, truth, first = _scene(seed, start)
        sim = Annotator(image, truth, first, SimConfig(tools=tools, targets=(0.85, 0.9), max_actions=60),
                        num_classes=3)
        result = sim.run()
        assert result.final_miou >= 0.9, (seed, result.final_miou, [a.tool for a in result.actions])
        assert result.noc[0.85] is not None and result.noc[0.9] is not None
        assert 0 < result.noc[0.85] <= result.noc[0.9] <= result.clicks
        assert result.final_miou == pytest.approx(image_miou(sim.doc.mask, truth))
        errors = _committed_errors(error_count(first, truth), result.actions)
        assert all(b < a for a, b in itertools.pairwise(errors)), errors
        assert result.seconds > 0 and all(a.seconds > 0 for a in result.actions)


@pytest.mark.parametrize("tools", ["snap", "crfclick"])
def test_each_action_is_one_edit_of_the_app_s_document(tools):
    image, truth, first = _scene(3, "noisy")
    sim = Annotator(image, truth, first, SimConfig(tools=tools, max_actions=60), num_classes=3)
    result = sim.run()
    kept = [a for a in result.actions if a.tool != "undo"]
    undone = sum(a.tool == "undo" for a in result.actions)
    # Every action is an undo step of the document; each undo took one back (it is on the redo stack,
    # or dropped by the next edit).
    assert sim.doc.undo_depth == len(kept) - undone
    assert tools in {a.tool for a in result.actions}
    names = {"fill": "Fill", "polygon": "Polygon", "brush": "Paint", "snap": "CRF snap", "superpixel": "Superpixels",
             "crfclick": "CRF click", "click": "Click region"}
    steps = []
    while sim.doc.can_undo:
        steps.append(sim.doc.undo_description)
        sim.doc.undo()
    stayed = []
    for a in result.actions:
        if a.tool == "undo":
            stayed.pop()
        else:
            stayed.append(names[a.tool])
    assert steps[::-1] == stayed
    assert np.array_equal(sim.doc.mask, first)   # undoing everything gives the start back


def test_a_perfect_start_needs_no_action():
    image, truth, _ = _scene(4, "empty")
    result = Annotator(image, truth, truth.copy(), SimConfig(tools="manual"), num_classes=3).run()
    assert result.actions == [] and result.clicks == 0 and result.seconds == 0
    assert result.noc == {0.85: 0, 0.9: 0} and result.final_miou == 1.0


def test_the_budget_stops_the_annotator_and_the_target_counts_as_missed():
    image, truth, first = _scene(5, "empty")
    result = Annotator(image, truth, first, SimConfig(tools="manual", max_actions=1), num_classes=3).run()
    assert len(result.actions) == 1 and result.noc[0.9] is None and result.final_miou < 0.9


def test_void_truth_is_ignored_and_miou_counts_spurious_classes():
    truth = np.array([[0, 0, 1, VOID]], np.uint8)
    assert image_miou(np.array([[0, 0, 1, 2]], np.uint8), truth) == 1.0
    # A class only the mask has counts with IoU 0: (1 + 1/2 + 0) / 3.
    assert image_miou(np.array([[0, 2, 1, 1]], np.uint8), truth) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert error_count(np.array([[0, 2, 1, 1]], np.uint8), truth) == 1


def test_polygon_vertices_are_clicks_and_a_fill_is_one():
    truth = np.zeros((60, 80), np.uint8)
    truth[10:40, 20:60] = 1                        # a box: 4 vertices
    image = np.where(truth[..., None] == 1, 200, 50).astype(np.uint8).repeat(3, 2)
    start = np.zeros_like(truth)
    result = Annotator(image, truth, start, SimConfig(tools="manual"), num_classes=2).run()
    assert [a.tool for a in result.actions] == ["polygon"] and result.actions[0].clicks == 4
    assert result.final_miou == 1.0
    # The same box already outlined with the wrong class: one fill click.
    start[10:40, 20:60] = 2
    result = Annotator(image, truth, start, SimConfig(tools="manual"), num_classes=3).run()
    assert [(a.tool, a.clicks) for a in result.actions] == [("fill", 1)]


def test_keystroke_level_model_charges_what_it_says():
    assert klm.action_seconds(clicks=1) == pytest.approx(klm.M + klm.P + klm.K)
    drag = klm.action_seconds(clicks=1, drag_px=klm.PX_PER_CM * 10, segments=2)
    assert drag == pytest.approx(klm.M + klm.P + klm.K + 2 * klm.D_SEGMENT + 10 * klm.D_PER_CM)
    assert klm.action_seconds(keys=1) == pytest.approx(klm.M + klm.K)
    with pytest.raises(ValueError):
        klm.action_seconds(clicks=-1)


def test_unknown_tool_set_and_bad_targets_are_refused():
    with pytest.raises(ValueError, match="tool set"):
        SimConfig(tools="magic")
    with pytest.raises(ValueError, match="targets"):
        SimConfig(targets=(1.5,))
    with pytest.raises(ValueError, match="click predictor"):
        SimConfig(tools="click")


def test_superpixel_drags_are_undo_steps_of_whole_superpixels():
    image, truth, first = _scene(6, "empty")
    sim = Annotator(image, truth, first, SimConfig(tools="superpixel", max_actions=60), num_classes=3)
    result = sim.run()
    assert result.final_miou >= 0.9 and "superpixel" in {a.tool for a in result.actions}
    seg = sim._seg
    before = first.copy()
    steps = []
    while sim.doc.can_undo:
        steps.append((sim.doc.undo_description, sim.doc.mask.copy()))
        sim.doc.undo()
    # Replaying forwards, each superpixel step changed whole superpixels only.
    for description, after in reversed(steps):
        if description == "Superpixels":
            changed = np.unique(seg[after != before])
            assert all((after[seg == k] == after[seg == k][0]).all() for k in changed.tolist())
        before = after


class OracleClicks:
    """A click model that knows the truth: the object under the first positive click. Its first answer
    (three candidates) shows the object grown by 4 px best, then the object itself, then everything;
    with ``spill`` it keeps showing the grown object until a negative click comes."""

    def __init__(self, truth: np.ndarray, spill: bool = False) -> None:
        self.truth, self.spill, self.calls, self.images = truth, spill, [], 0

    def set_image(self, image):
        self.images += 1

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        from types import SimpleNamespace

        from scipy import ndimage
        self.calls.append((np.array(labels).tolist(), mask_input is not None, multimask))
        x, y = (int(v) for v in points[0])
        comps, _ = ndimage.label(self.truth == self.truth[y, x])
        exact = comps == comps[y, x]
        grown = ndimage.binary_dilation(exact, iterations=4)
        if multimask:
            masks, scores = np.stack([grown, grown if self.spill else exact, np.ones_like(exact)]), np.array([.9, .6, .1])
        else:
            masks, scores = (grown if self.spill and 0 not in labels else exact)[None], np.array([.8])
        return SimpleNamespace(masks=masks, scores=scores, low_res_logits=np.zeros((len(masks), 256, 256), np.float32))


@pytest.mark.parametrize("start", ["empty", "noisy"])
def test_click_tool_set_follows_the_noc_protocol_through_the_session(start):
    image, truth, first = _scene(7, start)
    oracle = OracleClicks(truth)
    sim = Annotator(image, truth, first, SimConfig(tools="click", predictor=oracle, max_actions=60), num_classes=3)
    result = sim.run()
    manual = Annotator(image, truth, first, SimConfig(tools="manual", max_actions=60), num_classes=3).run()
    assert oracle.images == 1 and result.final_miou >= 0.9
    clicked = [a for a in result.actions if a.tool == "click"]
    assert clicked and result.noc[0.9] < manual.noc[0.9]
    # The exact object is the model's second candidate: one Tab, the tool key on first use, Enter.
    assert clicked[0].keys >= 2 and all(a.keys >= 1 for a in clicked)
    errors = _committed_errors(error_count(first, truth), result.actions)
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    while sim.doc.can_undo:
        assert sim.doc.undo_description in {"Fill", "Polygon", "Paint", "Click region"}
        sim.doc.undo()


def test_click_tool_set_clicks_negative_where_the_candidate_spills_and_feeds_back_the_logits():
    truth = np.zeros((60, 80), np.uint8)
    truth[15:45, 20:60] = 1
    image = np.where(truth[..., None] == 1, 200, 50).astype(np.uint8).repeat(3, 2)
    oracle = OracleClicks(truth, spill=True)
    result = Annotator(image, truth, np.zeros_like(truth),
                       SimConfig(tools="click", predictor=oracle), num_classes=2).run()
    assert oracle.calls[:2] == [([1], False, True), ([1, 0], True, False)]
    (act,) = result.actions
    # Two image clicks and the class chosen on the class list (no probabilities); tool key and Enter.
    assert (act.tool, act.clicks, act.keys) == ("click", 3, 2) and result.final_miou == 1.0
    # With the model's probabilities the class is proposed right: no class click.
    probs = np.stack([truth == 0, truth == 1]).astype(np.float32)
    oracle = OracleClicks(truth, spill=True)
    result = Annotator(image, truth, np.zeros_like(truth), SimConfig(tools="click", predictor=oracle),
                       probs=probs, num_classes=2).run()
    assert [(a.tool, a.clicks) for a in result.actions] == [("click", 2)]


def test_a_useless_click_model_is_dismissed_and_manual_tools_finish():
    class Nothing(OracleClicks):
        def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
            from types import SimpleNamespace
            k = 3 if multimask else 1
            return SimpleNamespace(masks=np.ones((k,) + self.truth.shape, bool), scores=np.ones(k),
                                   low_res_logits=np.zeros((k, 256, 256), np.float32))
    image, truth, first = _scene(8, "noisy")
    sim = Annotator(image, truth, first, SimConfig(tools="click", predictor=Nothing(truth), max_actions=80),
                    num_classes=3)
    result = sim.run()
    tools = [a.tool for a in result.actions]
    assert "cancel" in tools and "click" not in tools and result.final_miou >= 0.9
    cancels = [a for a in result.actions if a.tool == "cancel"]
    assert all(a.clicks == 4 and a.keys >= 1 for a in cancels)   # the clicks a region allows, then Escape
