"""SAM 2.1 (engine.click.sam2) against the authors' code (the ``sam2`` package, 1.1.0).

Golden data in tests/data/click_keys_sam2.1_hiera_*.json was recorded from the authors' code by
tests/data/record_click_sam2.py (its top says how to install the peer and run it): the full state-dict
layout of each size (video-tracking keys included) and, for Hiera-T, probes of the authors'
SAM2ImagePredictor outputs under formula weights for the image and prompts below. The live tests at
the end run only where ``sam2`` is importable and compare everything against it directly.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.checkpoints.formats import SkipRandomInit
from engine.checkpoints.limits import CheckpointError
from engine.click import (
    ClickPredictor,
    build_click_model,
    click_spec,
    detect_click_model,
    expected_click_shapes,
    load_click_model,
)
from engine.click.hiera import sine_position_encoding
from engine.click.sam2 import VIDEO_ONLY_PREFIXES
from tests import weights_formula
from tests.weights_formula import Formula

DATA = ROOT / "tests" / "data"
SIZES = {"sam2.1_hiera_tiny": "t", "sam2.1_hiera_small": "s", "sam2.1_hiera_base_plus": "b+",
         "sam2.1_hiera_large": "l"}
GOLDEN_MODEL = "sam2.1_hiera_tiny"

# The constants the golden outputs were recorded with (LayerNorm weights 1 ± 0.2, He-scaled matrices).
FORMULA = Formula(10007, 7.0, 12.9898, 43758.5453, 0.25, (1.0, 0.2))

# A small non-square image: the resize to 1024×1024 stretches the axes differently.
H, W = 45, 67
# Prompts, each also given the previous case's best low-res logits when ``feed`` is set.
CASES = [
    {"name": "click", "points": [[20.0, 15.0]], "labels": [1], "box": None, "multimask": True, "feed": False},
    {"name": "click_single", "points": [[20.0, 15.0]], "labels": [1], "box": None, "multimask": False,
     "feed": False},
    {"name": "two_clicks_fed", "points": [[20.0, 15.0], [50.5, 30.0]], "labels": [1, 0], "box": None,
     "multimask": False, "feed": True},
    {"name": "box_click", "points": [[30.0, 20.0]], "labels": [1], "box": [4.0, 3.0, 60.0, 40.0],
     "multimask": True, "feed": False},
    {"name": "box", "points": None, "labels": None, "box": [10.0, 5.0, 55.0, 44.0], "multimask": False,
     "feed": False},
]
LOW_ROWS, LOW_COLS = [0, 37, 101, 180, 255], [0, 64, 128, 200, 255]
EMB_CH, EMB_YX = [0, 77, 255], [(0, 0), (31, 40), (63, 63)]


def golden(name: str) -> dict:
    return json.loads((DATA / f"click_keys_{name}.json").read_text(encoding="utf-8"))


def fixed_image() -> np.ndarray:
    i = np.arange(H * W * 3, dtype=np.float64)
    return ((np.sin(i * 0.731) * 0.5 + 0.5) * 255).round().astype(np.uint8).reshape(H, W, 3)


def fixed_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return weights_formula.fixed_state(shapes, FORMULA)


def run_cases(predict) -> list[dict]:
    """``predict(points, labels, box, mask_input, multimask)`` → (masks, scores, low_res) numpy; the
    probes the golden file keeps, per case."""
    out, prev = [], None
    for case in CASES:
        mask_in = None
        if case["feed"]:
            mask_in = prev[2][int(np.argmax(prev[1]))][None]
        pts = None if case["points"] is None else np.array(case["points"])
        lbl = None if case["labels"] is None else np.array(case["labels"])
        box = None if case["box"] is None else np.array(case["box"])
        masks, scores, low = predict(pts, lbl, box, mask_in, case["multimask"])
        prev = (masks, scores, low)
        out.append({"name": case["name"], "scores": [float(s) for s in scores],
                    "low_res": low[:, LOW_ROWS][:, :, LOW_COLS].tolist(),
                    "mask_area": [int(m.sum()) for m in masks],
                    "mask_rows": [int(r) for r in masks[0].sum(axis=1)]})
    return out


def embedding_probe(image_embed: np.ndarray) -> list:
    return [[float(image_embed[0, c, y, x]) for (y, x) in EMB_YX] for c in EMB_CH]


def _ours_predict(pred: ClickPredictor):
    def predict(pts, lbl, box, mask_in, multimask):
        r = pred.predict(points=pts, labels=lbl, box=box, mask_input=mask_in, multimask=multimask)
        return r.masks, r.scores, r.low_res_logits
    return predict


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", sorted(SIZES))
def test_keys_and_shapes_equal_the_authors_minus_video_keys(name):
    gold = golden(name)
    peer = {k: tuple(v) for k, v in gold["keys"].items()}
    image_mode = {k: v for k, v in peer.items() if not k.startswith(VIDEO_ONLY_PREFIXES)}
    ours = expected_click_shapes(name)
    assert list(ours) == list(image_mode)          # same names, same order
    assert ours == image_mode                      # same shapes
    assert sum(int(np.prod(s)) for s in ours.values()) == gold["num_params"]
    # Every skipped prefix names something the authors' model has (the list is not stale) ...
    assert all(any(k.startswith(p) for k in peer) for p in VIDEO_ONLY_PREFIXES)
    # ... and none of it is a module image mode runs.
    assert not any(k.startswith(("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder."))
                   for k in peer if k.startswith(VIDEO_ONLY_PREFIXES))
    spec = click_spec(name)
    assert spec.family == "sam2" and spec.unused_prefixes == VIDEO_ONLY_PREFIXES


def test_each_size_is_recognised_from_its_official_layout():
    for name in SIZES:
        sd = {k: torch.empty(v, device="meta") for k, v in golden(name)["keys"].items()}
        assert detect_click_model(sd, "x.pt") == name


# --------------------------------------------------------------------------- numerics (recorded)


@pytest.fixture(scope="module")
def tiny_predictor():
    model = build_click_model(GOLDEN_MODEL)
    model.load_state_dict(fixed_state({k: list(v) for k, v in expected_click_shapes(GOLDEN_MODEL).items()}))
    pred = ClickPredictor(model)
    pred.set_image(fixed_image())
    return pred


def test_embedding_matches_recorded_peer(tiny_predictor):
    ref = golden(GOLDEN_MODEL)["references"][0]
    emb = tiny_predictor.get_embedding()
    assert emb.features["image_embed"].shape == (1, 256, 64, 64)
    assert emb.features["high_res_s0"].shape == (1, 32, 256, 256)
    assert emb.features["high_res_s1"].shape == (1, 64, 128, 128)
    np.testing.assert_allclose(embedding_probe(emb.features["image_embed"]), ref["embedding"], rtol=1e-4,
                               atol=1e-4 * np.abs(ref["embedding"]).max())


def test_masks_scores_and_logits_match_recorded_peer(tiny_predictor):
    ref = golden(GOLDEN_MODEL)["references"][0]["cases"]
    got = run_cases(_ours_predict(tiny_predictor))
    assert [c["name"] for c in got] == [c["name"] for c in ref]
    for g, r in zip(got, ref):
        scale = max(1.0, float(np.abs(r["low_res"]).max()))
        np.testing.assert_allclose(g["low_res"], r["low_res"], rtol=1e-4, atol=1e-4 * scale, err_msg=r["name"])
        np.testing.assert_allclose(g["scores"], r["scores"], rtol=1e-4, atol=1e-5, err_msg=r["name"])
        # Thresholded masks may differ only where a logit is within rounding of zero.
        assert np.abs(np.subtract(g["mask_area"], r["mask_area"])).max() <= 2, r["name"]
        assert np.abs(np.subtract(g["mask_rows"], r["mask_rows"])).max() <= 2, r["name"]


def test_multimask_gives_three_and_single_gives_one(tiny_predictor):
    r3 = tiny_predictor.predict(points=[[20, 15]], labels=[1], multimask=True)
    r1 = tiny_predictor.predict(points=[[20, 15]], labels=[1], multimask=False)
    assert r3.masks.shape == (3, H, W) and r3.scores.shape == (3,) and r3.low_res_logits.shape == (3, 256, 256)
    assert r1.masks.shape == (1, H, W) and r1.masks.dtype == bool
    assert np.abs(r3.low_res_logits).max() <= 32.0   # returned clamped, as the authors' predictor does
    # Scores come out of a sigmoid.
    assert ((r3.scores >= 0) & (r3.scores <= 1)).all()


def test_unstable_single_mask_falls_back_to_best_multimask():
    dec = build_click_model(GOLDEN_MODEL).sam_mask_decoder
    masks = torch.full((1, 4, 8, 8), -5.0)
    masks[0, 1:, :4] = 5.0                        # three clear-cut multimask outputs
    iou = torch.tensor([[0.9, 0.2, 0.7, 0.4]])
    masks[0, 0, :2] = 5.0                         # a stable single mask: kept
    out, score = dec._stable_single(masks, iou)
    assert torch.equal(out[0, 0], masks[0, 0]) and score.item() == pytest.approx(0.9)
    masks[0, 0, 2:4] = 0.01                       # half its area sits between -0.05 and +0.05
    out, score = dec._stable_single(masks, iou)
    assert torch.equal(out[0, 0], masks[0, 2]) and score.item() == pytest.approx(0.7)


def test_sine_position_encoding_shape_and_range():
    pe = sine_position_encoding(16, 12)
    assert pe.shape == (1, 256, 16, 12)
    # y features first: the first half does not vary along x, the second not along y.
    assert torch.equal(pe[0, :128, :, 0], pe[0, :128, :, 5]) and torch.equal(pe[0, 128:, 0], pe[0, 128:, 7])


def test_encoder_and_decoder_run_under_autocast():
    model = build_click_model(GOLDEN_MODEL)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.encode(torch.randn(1, 3, 128, 128))   # any multiple of 32 runs
    assert feats["image_embed"].shape == (1, 256, 8, 8)
    assert all(torch.isfinite(v.float()).all() for v in feats.values())
    full = {"image_embed": torch.randn(1, 256, 64, 64), "high_res_s0": torch.randn(1, 32, 256, 256),
            "high_res_s1": torch.randn(1, 64, 128, 128)}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, iou = model.decode(full, torch.tensor([[[100.0, 200.0]]]), torch.tensor([[1]]), None, None, True)
    assert low.shape == (1, 3, 256, 256) and iou.shape == (1, 3) and torch.isfinite(low.float()).all()


# --------------------------------------------------------------------------- official files


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory):
    """An official-layout SAM 2.1 file: {"model": full state dict, video-tracking keys included}."""
    sd = fixed_state(golden(GOLDEN_MODEL)["keys"])
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sd}, path)
    return path, sd


def test_load_official_file_detects_tiny_and_skips_video_keys(official_tiny):
    path, sd = official_tiny
    model = load_click_model(path)
    assert model.name == GOLDEN_MODEL and model.family == "sam2"
    ours = model.state_dict()
    assert all(torch.equal(ours[k], sd[k]) for k in ours)
    assert load_click_model(path, arch=GOLDEN_MODEL).name == GOLDEN_MODEL
    with pytest.raises(CheckpointError, match="sam2.1_hiera_small"):
        load_click_model(path, arch="sam2.1_hiera_small")


@pytest.mark.parametrize("change, key", [
    ("drop", "sam_mask_decoder.iou_token.weight"),
    ("add", "image_encoder.trunk.extra.weight"),
    ("shape", "no_mem_embed"),
])
def test_file_with_a_wrong_key_fails_naming_it(official_tiny, tmp_path, change, key):
    _, sd = official_tiny
    sd = dict(sd)
    if change == "drop":
        del sd[key]
    elif change == "add":
        sd[key] = torch.zeros(3)
    else:
        sd[key] = torch.zeros(1, 1, 128)
    path = tmp_path / "broken.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_click_model(path)
    msg = str(err.value)
    assert key in msg and "broken.pt" in msg and "\n" not in msg


# --------------------------------------------------------------------------- live, against the authors' code


@pytest.fixture(scope="module")
def peer_pair():
    pytest.importorskip("torchvision")
    build = pytest.importorskip("sam2.build_sam")
    image_predictor = pytest.importorskip("sam2.sam2_image_predictor")
    torch.manual_seed(1)
    peer = build.build_sam2(f"configs/sam2.1/sam2.1_hiera_{SIZES[GOLDEN_MODEL]}.yaml", device="cpu")
    ours = build_click_model(GOLDEN_MODEL)
    ours.load_state_dict({k: v for k, v in peer.state_dict().items() if not k.startswith(VIDEO_ONLY_PREFIXES)})
    theirs = image_predictor.SAM2ImagePredictor(peer)
    mine = ClickPredictor(ours)
    image = fixed_image()
    theirs.set_image(image)
    mine.set_image(image)
    return theirs, mine, peer


def test_live_embedding_equals_peer(peer_pair):
    theirs, mine, _ = peer_pair
    f = mine.get_embedding().features
    torch.testing.assert_close(torch.from_numpy(f["image_embed"]), theirs._features["image_embed"].float(),
                               rtol=1e-5, atol=1e-5)
    for got, ref in zip((f["high_res_s0"], f["high_res_s1"]), theirs._features["high_res_feats"]):
        torch.testing.assert_close(torch.from_numpy(got), ref.float(), rtol=1e-5, atol=1e-5)


def test_live_predictions_equal_peer(peer_pair):
    theirs, mine, _ = peer_pair

    def peer_predict(pts, lbl, box, mask_in, multimask):
        return theirs.predict(point_coords=pts, point_labels=lbl, box=box, mask_input=mask_in,
                              multimask_output=multimask)
    def recording(predict, into):
        def wrapped(*args):
            into.append(predict(*args))
            return into[-1]
        return wrapped
    got_all, ref_all = [], []
    run_cases(recording(_ours_predict(mine), got_all))
    run_cases(recording(peer_predict, ref_all))
    for case, got, ref in zip(CASES, got_all, ref_all):
        (gm, gs, gl), (rm, rs, rl) = got, ref
        np.testing.assert_allclose(gl, rl, rtol=1e-5, atol=1e-5, err_msg=case["name"])
        np.testing.assert_allclose(gs, rs, rtol=1e-5, atol=1e-6, err_msg=case["name"])
        assert gm.shape == rm.shape and (gm != rm).sum() <= 2, case["name"]


@pytest.mark.parametrize("name", ["sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"])
def test_live_encoder_of_other_sizes_equals_peer(name):
    """The other sizes' trunks (more blocks, two heads, other windows) on a small input."""
    pytest.importorskip("torchvision")
    build = pytest.importorskip("sam2.build_sam")
    torch.manual_seed(2)
    peer = build.build_sam2(f"configs/sam2.1/sam2.1_hiera_{SIZES[name]}.yaml", device="cpu")
    with SkipRandomInit():
        ours = click_spec(name).builder().eval()
    ours.load_state_dict({k: v for k, v in peer.state_dict().items() if not k.startswith(VIDEO_ONLY_PREFIXES)})
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        got = ours.encode(x)
        ref = peer.forward_image(x)["backbone_fpn"]
    torch.testing.assert_close(got["image_embed"], ref[2] + peer.no_mem_embed.view(1, -1, 1, 1))
    torch.testing.assert_close(got["high_res_s0"], ref[0])
    torch.testing.assert_close(got["high_res_s1"], ref[1])


def test_live_sine_encoding_equals_peer():
    pe_mod = pytest.importorskip("sam2.modeling.position_encoding")
    ref = pe_mod.PositionEmbeddingSine(256, warmup_cache=False)
    for h, w in ((64, 64), (16, 12)):
        torch.testing.assert_close(sine_position_encoding(h, w), ref(torch.zeros(1, 256, h, w)))
