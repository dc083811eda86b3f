"""SAM ViT-B/L/H against segment-anything: state-dict layout, recorded outputs, live comparison, and
ClickPredictor end to end on sam_vit_b.

tests/data/click_keys_sam_vit_*.json were recorded from the authors' code by
tests/data/record_click_sam.py (its top says how to install the peer): each holds the peer's
key → shape map, and sam_vit_b's also the peer predictor's outputs for a fixed image and prompts under
the formula weights below, so the numerics are checked without the peer installed.
"""
from __future__ import annotations

import dataclasses

import json
import pathlib
import sys
import threading

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.checkpoints.limits import CheckpointError
from engine.click import (
    ClickPrediction,
    ClickPredictor,
    build_click_model,
    click_spec,
    detect_click_model,
    list_click_models,
    load_click_model,
)
from engine.click.sam import ImageEncoderViT, SamViTConfig
from engine.click.sam_parts import (
    LayerNorm2d,
    Sam,
    build_sam_decoder_parts,
    preprocess_shape,
)
from tests import weights_formula
from tests.weights_formula import Formula

DATA = ROOT / "tests" / "data"
SIZES = ("sam_vit_b", "sam_vit_l", "sam_vit_h")

# The constants the golden outputs in tests/data/click_keys_sam_vit_b.json were recorded with.
FORMULA = Formula(10007, 7.0, 12.9898, 43758.5453, 0.25, (1.0, 0.2))
IMAGE_HW = (45, 64)          # landscape and not a multiple of anything: resize, padding and crop all matter
ROWS = COLS = [0, 37, 101, 170, 255]   # where the 256×256 low-resolution logits are probed
EMBED_PROBE = ([0, 77, 255], [0, 20, 44], [3, 31, 63])   # (channels, rows, cols) of the 64×64 embedding
# (name, points, labels, box, mask_input from that earlier prompt's best mask or None, multimask)
PROMPTS = [
    ("point", [[20, 15]], [1], None, None, True),
    ("point_negative_mask", [[20, 15], [50, 30]], [1, 0], None, "point", False),
    ("box", None, None, [5, 4, 40, 33], None, True),
    ("point_box", [[30, 20]], [1], [5, 4, 40, 33], None, False),
]


def fixed_image() -> np.ndarray:
    h, w = IMAGE_HW
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([128 + 100 * np.sin(0.3 * x + 0.2 * y), 128 + 100 * np.cos(0.17 * x - 0.23 * y),
                    (4 * x + 3 * y) % 256], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def golden(name: str) -> dict:
    return json.loads((DATA / f"click_keys_{name}.json").read_text(encoding="utf-8"))


def probe_low_res(low: np.ndarray) -> list:
    return low[:, ROWS][:, :, COLS].tolist()


def probe_embed(embed: np.ndarray) -> list:
    c, r, k = EMBED_PROBE
    return embed[0][c][:, r][:, :, k].tolist()


def run_prompts(predict) -> dict[str, dict]:
    """Each prompt of PROMPTS through ``predict(points, labels, box, mask_input, multimask)`` returning
    (masks, scores, low_res_logits): {name: {"iou", "low_res" probe, "mask_area"}} and the raw outputs."""
    out, raw = {}, {}
    for name, pts, lbl, box, prev, multi in PROMPTS:
        mask_input = None
        if prev is not None:
            _, s, low = raw[prev]
            mask_input = low[int(np.argmax(s))][None]
        pts = None if pts is None else np.array(pts, dtype=np.float64)
        lbl = None if lbl is None else np.array(lbl)
        box = None if box is None else np.array(box, dtype=np.float64)
        masks, scores, low = predict(pts, lbl, box, mask_input, multi)
        raw[name] = (masks, scores, low)
        out[name] = {"iou": np.asarray(scores).tolist(), "low_res": probe_low_res(np.asarray(low)),
                     "mask_area": [int(a.sum()) for a in masks]}
    return out, raw


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sam_b():
    """sam_vit_b under the formula weights, with fixed_image()'s embedding computed once."""
    model = build_click_model("sam_vit_b")
    model.load_state_dict(weights_formula.fixed_state(golden("sam_vit_b")["keys"], FORMULA))
    predictor = ClickPredictor(model)
    predictor.set_image(fixed_image())
    return model, predictor, predictor.get_embedding()


def _ours(predictor):
    def predict(pts, lbl, box, mask_input, multi):
        p = predictor.predict(pts, lbl, box, mask_input, multi)
        return p.masks, p.scores, p.low_res_logits
    return predict


# --------------------------------------------------------------------------- layout


def test_registered_in_the_sam_family():
    assert set(SIZES) <= set(list_click_models())
    for name in SIZES:
        assert click_spec(name).family == "sam" and click_spec(name).unused_prefixes == ()


@pytest.mark.parametrize("name", SIZES)
def test_state_dict_layout_matches_peer(name):
    gold = golden(name)
    with torch.device("meta"):
        model = build_click_model(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == gold["keys"]
    assert list(shapes) == list(gold["keys"])   # in the peer's order too
    assert sum(p.numel() for p in model.parameters()) == gold["num_params"]


def test_decoder_parts_have_the_official_layout():
    prompt, decoder = build_sam_decoder_parts()
    gold = golden("sam_vit_b")["keys"]
    for prefix, module in (("prompt_encoder.", prompt), ("mask_decoder.", decoder)):
        assert {prefix + k: list(v.shape) for k, v in module.state_dict().items()} == \
            {k: v for k, v in gold.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- numerics against the record


def test_embedding_matches_peer_record(sam_b):
    _, _, emb = sam_b
    assert emb.input_size == preprocess_shape(*IMAGE_HW, 1024) == (720, 1024)
    feats = emb.features["image_embed"]
    assert feats.shape == (1, 256, 64, 64)
    want = np.array(golden("sam_vit_b")["references"][0]["embed"])
    np.testing.assert_allclose(probe_embed(feats), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_prompts_match_peer_record(sam_b):
    _, predictor, _ = sam_b
    got, _ = run_prompts(_ours(predictor))
    want = golden("sam_vit_b")["references"][0]["prompts"]
    assert list(got) == list(want)
    for name in want:
        w, g = want[name], got[name]
        scale = max(1.0, float(np.abs(w["low_res"]).max()))
        np.testing.assert_allclose(g["low_res"], w["low_res"], rtol=1e-3, atol=1e-3 * scale, err_msg=name)
        np.testing.assert_allclose(g["iou"], w["iou"], rtol=1e-3, atol=1e-3, err_msg=name)
        # A pixel whose logit is within rounding of 0 may fall either side.
        for a, b in zip(g["mask_area"], w["mask_area"]):
            assert abs(a - b) <= max(2, b // 500), (name, g["mask_area"], w["mask_area"])


# --------------------------------------------------------------------------- ClickPredictor end to end


def test_predict_shapes_and_multimask_order(sam_b):
    model, predictor, emb = sam_b
    pts, lbl = np.array([[20.0, 15.0]]), np.array([1])
    multi = predictor.predict(pts, lbl, multimask=True)
    single = predictor.predict(pts, lbl, multimask=False)
    assert multi.masks.shape == (3, *IMAGE_HW) and multi.masks.dtype == bool
    assert multi.scores.shape == (3,) and multi.low_res_logits.shape == (3, 256, 256)
    assert single.masks.shape == (1, *IMAGE_HW) and single.scores.shape == (1,)
    assert single.low_res_logits.shape == (1, 256, 256)
    # The decoder's token 0 is the single answer, tokens 1..3 the three ambiguous ones, in that order.
    feats = {k: torch.from_numpy(v) for k, v in emb.features.items()}
    coords = torch.from_numpy(model.transform_coords(pts, emb.original_size, emb.input_size))[None]
    with torch.no_grad():
        sparse, dense = model.prompt_encoder((coords, torch.from_numpy(lbl)[None]), None, None)
        side = model.mask_decoder.transformer.image_side(feats["image_embed"] + dense,
                                                         model.prompt_encoder.get_dense_pe())
        all_masks, all_iou = model.mask_decoder.predict_masks(side, sparse)
    # (predict uses the per-image prepared rows, this call does not: float32 rounding apart.)
    np.testing.assert_allclose(multi.low_res_logits, all_masks[0, 1:].numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(single.low_res_logits, all_masks[0, :1].numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(multi.scores, all_iou[0, 1:].numpy(), atol=1e-5, rtol=1e-5)
    # Masks are the upsampled logits above zero.
    full = model.postprocess(torch.from_numpy(multi.low_res_logits)[None], emb.input_size, emb.original_size)
    assert np.array_equal(multi.masks, (full[0] > 0).numpy())


def test_a_large_image_gets_the_same_masks_one_at_a_time(sam_b, monkeypatch):
    """Above SPLIT_MASKS_PIXELS the full-size masks are made one at a time (bounded memory): the
    same masks as all at once."""
    import engine.click.predictor as click_predictor
    _, predictor, _ = sam_b
    together = predictor.predict([[20, 15]], [1], multimask=True)
    monkeypatch.setattr(click_predictor, "SPLIT_MASKS_PIXELS", 100)
    apart = predictor.predict([[20, 15]], [1], multimask=True)
    assert together.masks.any() and not together.masks.all()
    assert np.array_equal(apart.masks, together.masks)
    np.testing.assert_array_equal(apart.low_res_logits, together.low_res_logits)


def test_masks_at_a_smaller_size_and_any_of_them_at_full_size_later(sam_b):
    """``size`` gives the same logits' masks at that size; ``full(k)`` gives mask k exactly as a
    prediction without ``size`` does, even once the predictor holds another image."""
    model, predictor, emb = sam_b
    whole = predictor.predict([[20, 15]], [1], multimask=True)
    h, w = whole.masks.shape[1:]
    small = predictor.predict([[20, 15]], [1], multimask=True, size=(h // 3, w // 2))
    assert small.masks.shape == (3, h // 3, w // 2) and whole.full is None
    np.testing.assert_array_equal(small.low_res_logits, whole.low_res_logits)
    np.testing.assert_array_equal(small.scores, whole.scores)
    low = torch.from_numpy(whole.low_res_logits)[None]
    assert np.array_equal(small.masks, (model.postprocess(low, emb.input_size, (h // 3, w // 2))[0] > 0).numpy())
    predictor.set_embedding(dataclasses.replace(emb, original_size=(40, 30), input_size=(1024, 768)))   # another image
    try:
        for k in range(3):
            assert np.array_equal(small.full(k), whole.masks[k])
    finally:
        predictor.set_embedding(emb)


@pytest.mark.parametrize("shape", ["landscape", "portrait"])
def test_masks_come_first_and_the_paddings_logits_when_asked_for_as_a_whole_decode_gives(sam_b, monkeypatch,
                                                                                         shape):
    """On a CPU the masks are made from the logits over the image alone; the padding's logits (the
    next click's mask input only) are made when first read or settled: the same values either way."""
    import engine.click.sam_upscale as decoder
    from engine.click.base import ClickModel
    model, predictor, emb = sam_b
    if shape == "portrait":   # the padding at the right: the first part spans whole columns
        predictor.set_embedding(dataclasses.replace(emb, original_size=(64, 45), input_size=(1024, 720)))
    try:
        made = []
        real = decoder.upscale_masks
        monkeypatch.setattr(decoder, "upscale_masks",
                            lambda keys, hw, *a, **k: made.append(hw) or real(keys, hw, *a, **k))
        pred = predictor.predict([[20, 15]], [1], multimask=True, mask_input=None)
        first = list(made)
        assert len(first) == 1 and first[0][0] * first[0][1] < 64 * 64   # only the image's part so far
        pred.settle()
        assert len(made) == 2 and sum(h * w for h, w in made) == 64 * 64   # then the rest, once
        low = pred.low_res_logits
        assert len(made) == 2 and pred.low_res_logits is low
        monkeypatch.setattr(type(model), "needed_low_res", ClickModel.needed_low_res)   # everything at once
        whole = predictor.predict([[20, 15]], [1], multimask=True)
        np.testing.assert_array_equal(pred.masks, whole.masks)
        np.testing.assert_allclose(low, whole.low_res_logits, rtol=1e-6, atol=1e-6)
        assert np.abs(low).max() > 0
        # The next click's mask input reads them.
        nxt = predictor.predict([[20, 15], [30, 20]], [1, 1], mask_input=pred.low_res_logits[:1], multimask=False)
        assert nxt.masks.shape[1:] == whole.masks.shape[1:]
    finally:
        predictor.set_embedding(emb)


@pytest.mark.parametrize("original", [(45, 64), (64, 45), (1, 500), (375, 500), (768, 1024), (3000, 4000), (801, 33)])
def test_postprocess_reads_only_the_logits_needed_low_res_names(original):
    """What lies past needed_low_res (the padding's logits, made later: NaN here) never reaches the
    masks, in either of postprocess's paths."""
    model = build_click_model("mobile_sam")
    input_size = preprocess_shape(*original, model.image_size)
    rows, cols = model.needed_low_res(input_size)
    assert rows == 256 or cols == 256
    low = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    unmade = low.clone()
    unmade[..., rows:, :] = float("nan")
    unmade[..., :, cols:] = float("nan")
    with torch.inference_mode():
        want = model.postprocess(low, input_size, original)
        got = model.postprocess(unmade, input_size, original)
    assert torch.isfinite(got).all()
    assert torch.equal(got, want)


@pytest.mark.parametrize("original", [(45, 64), (64, 45), (1, 500), (375, 500), (500, 375), (768, 1024), (801, 33)])
def test_postprocess_equals_the_authors_two_interpolations(original):
    """Upsampled to the whole 1024×1024 input, cropped to the image's part, resized to the image:
    the authors' steps, whichever of postprocess's paths (sparse taps on a CPU) gives it."""
    import torch.nn.functional as F
    model = build_click_model("mobile_sam")
    h, w = preprocess_shape(*original, model.image_size)
    low = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 4
    with torch.inference_mode():
        up = F.interpolate(low, (model.image_size, model.image_size), mode="bilinear", align_corners=False)
        want = F.interpolate(up[..., :h, :w], original, mode="bilinear", align_corners=False)
        got = model.postprocess(low, (h, w), original)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_lazy_prediction_makes_the_best_mask_first_and_the_others_when_read(sam_b, monkeypatch):
    """predict(lazy=True): one full-size mask (the best-scored) before it returns; each other one
    when first read; all of them the same bits as predict without lazy."""
    _, predictor, _ = sam_b
    eager = predictor.predict([[20, 15]], [1], multimask=True)
    made = []
    real = predictor._masks
    monkeypatch.setattr(predictor, "_masks", lambda raw, *a: made.append(raw.shape[1]) or real(raw, *a))
    lazy = predictor.predict([[20, 15]], [1], multimask=True, lazy=True)
    assert made == [1]
    best = int(np.argmax(lazy.scores))
    np.testing.assert_array_equal(lazy.mask(best), eager.masks[best])
    assert made == [1]                                         # read, not made again
    other = (best + 1) % 3
    np.testing.assert_array_equal(lazy.mask(other), eager.masks[other])
    assert made == [1, 1]
    np.testing.assert_array_equal(lazy.masks, eager.masks)     # the third made, the two kept
    assert made == [1, 1, 1]
    np.testing.assert_array_equal(lazy.low_res_logits, eager.low_res_logits)
    with pytest.raises(IndexError):
        predictor.predict([[20, 15]], [1], lazy=True).mask(3)
    one = predictor.predict([[20, 15]], [1], multimask=False, lazy=True)   # one mask: nothing to defer
    assert one.masks.shape == (1, *IMAGE_HW)
    np.testing.assert_array_equal(lazy.mask(-1), eager.masks[-1])
    small = predictor.predict([[20, 15]], [1], size=(20, 30))                 # at a preview's size too
    lazy_small = predictor.predict([[20, 15]], [1], size=(20, 30), lazy=True)
    np.testing.assert_array_equal(lazy_small.masks, small.masks)
    np.testing.assert_array_equal(lazy_small.full(2), eager.masks[2])


def test_a_predictions_logits_are_made_once_across_threads():
    from concurrent.futures import ThreadPoolExecutor
    threads, calls, arrived = 8, [], []
    everyone = threading.Condition()

    def settle():
        calls.append(1)
        with everyone:   # every thread is asking by now: without the lock, more would be in here
            assert everyone.wait_for(lambda: len(arrived) == threads, timeout=30)
        return np.ones((1, 256, 256), np.float32)
    pred = ClickPrediction(np.zeros((1, 2, 2), bool), np.ones(1), settle=settle)

    def ask(_):
        with everyone:
            arrived.append(1)
            everyone.notify_all()
        return pred.low_res_logits
    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(ask, range(threads)))
    assert calls == [1] and all(g is got[0] for g in got)
    with pytest.raises(ValueError):
        ClickPrediction(np.zeros((1, 2, 2), bool), np.ones(1))   # neither the logits nor a way to make them


def test_negative_point_box_and_mask_input_change_the_answer(sam_b):
    _, predictor, _ = sam_b
    pos = predictor.predict([[20, 15]], [1], multimask=False)
    neg = predictor.predict([[20, 15], [50, 30]], [1, 0], multimask=False)
    box = predictor.predict(box=[5, 4, 40, 33], multimask=False)
    again = predictor.predict([[20, 15]], [1], mask_input=pos.low_res_logits, multimask=False)
    flat = predictor.predict([[20, 15]], [1], mask_input=pos.low_res_logits[0], multimask=False)
    for other in (neg, box, again):
        assert not np.allclose(other.low_res_logits, pos.low_res_logits, atol=1e-3)
    np.testing.assert_array_equal(again.low_res_logits, flat.low_res_logits)   # 1×256×256 or 256×256
    # Predicting is deterministic: the same prompts give the same logits.
    assert np.array_equal(predictor.predict([[20, 15]], [1], multimask=False).low_res_logits, pos.low_res_logits)


def test_embedding_round_trip_skips_the_encoder(sam_b, monkeypatch):
    model, predictor, emb = sam_b
    want = predictor.predict([[30, 20]], [1], box=[5, 4, 40, 33])
    fresh = ClickPredictor(model)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran")
    monkeypatch.setattr(model.image_encoder, "forward", no_encoder)
    fresh.set_embedding(emb)
    got = fresh.predict([[30, 20]], [1], box=[5, 4, 40, 33])
    np.testing.assert_array_equal(got.low_res_logits, want.low_res_logits)
    np.testing.assert_array_equal(got.masks, want.masks)
    np.testing.assert_array_equal(got.scores, want.scores)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "at least one point or a box"),
    ({"points": [[1, 2, 3]], "labels": [1]}, "N×2"),
    ({"points": [[1, float("nan")]], "labels": [1]}, "finite"),
    ({"points": [[1, 2]], "labels": [2]}, "labels"),
    ({"points": [[1, 2], [3, 4]], "labels": [1]}, "labels"),
    ({"box": [1, 2, 3]}, "box"),
    ({"points": [[1, 2]], "labels": [1], "mask_input": np.zeros((64, 64))}, "mask_input"),
])
def test_bad_prompts_raise_value_error(sam_b, kwargs, message):
    _, predictor, _ = sam_b
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


def test_bad_image_raises_value_error(sam_b):
    model, _, _ = sam_b
    with pytest.raises(ValueError, match="uint8"):
        ClickPredictor(model).set_image(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="H×W×3"):
        ClickPredictor(model).set_image(np.zeros((8, 8), dtype=np.uint8))


# --------------------------------------------------------------------------- preprocessing and small parts


def test_preprocess_resizes_the_longer_side_and_pads_with_zeros():
    prompt, decoder = build_sam_decoder_parts()
    model = Sam("tiny", torch.nn.Identity(), prompt, decoder)
    assert preprocess_shape(3, 1000, 1024) == (3, 1024)        # 3.072 rounds down
    assert preprocess_shape(1000, 499, 1024) == (1024, 511)    # 510.98 rounds up
    img = np.full((10, 5, 3), 255, dtype=np.uint8)
    x, (h, w) = model.preprocess(img)
    assert x.shape == (1, 3, 1024, 1024) and (h, w) == (1024, 512)
    want = (255 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(x[0, :, :h, :w].mean((1, 2)), want, atol=1e-4, rtol=1e-5)
    assert x[0, :, :, w:].abs().max() == 0
    # Clicks scale with the resize: (x, y) on a 10×5 image → ×204.8 and ×102.4.
    np.testing.assert_allclose(model.transform_coords(np.array([[1.0, 2.0]]), (10, 5), (h, w)), [[102.4, 204.8]])


def test_dense_positional_encoding_follows_the_loaded_matrix():
    prompt, _ = build_sam_decoder_parts()
    first = prompt.get_dense_pe()
    assert first.shape == (1, 256, 64, 64) and prompt.get_dense_pe() is first   # kept between clicks
    sd = prompt.state_dict()
    sd["pe_layer.positional_encoding_gaussian_matrix"] = torch.ones(2, 128)
    prompt.load_state_dict(sd)
    second = prompt.get_dense_pe()
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, prompt.pe_layer((64, 64))[None])


@pytest.mark.parametrize("channels", [5, 64])   # per pixel over the channel axis, and over rows
def test_layer_norm_2d_normalises_each_pixel_over_channels(channels):
    norm = LayerNorm2d(channels)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(1.0, 5.0, channels))
        norm.bias.fill_(0.5)
    x = torch.randn(2, channels, 3, 4) * 3 + 1
    u = x.mean(1, keepdim=True)
    want = (x - u) / torch.sqrt((x - u).pow(2).mean(1, keepdim=True) + 1e-6) * norm.weight[:, None, None] + 0.5
    torch.testing.assert_close(norm(x), want)
    got = norm(x.half())                    # half precision in: normalised in float32
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, norm(x.half().float()))


def test_small_vit_windows_pad_and_work_under_autocast():
    # 8×8 patches with 14×14 windows: the window partition pads and crops back.
    enc = ImageEncoderViT(SamViTConfig(32, 2, 2, (1,)), img_size=128).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = enc(x)
    assert out.shape == (1, 256, 8, 8) and torch.isfinite(out).all()
    assert torch.isfinite(half.float()).all()
    torch.testing.assert_close(half.float(), out, atol=0.1, rtol=0.1)


# --------------------------------------------------------------------------- loading the official files


def _save_cheap(sd: dict[str, torch.Tensor], path: pathlib.Path) -> None:
    """torch.save of a state dict with the official keys and shapes whose tensors share one element
    each (a stride-0 view), so a 375 MB layout is a small file."""
    torch.save({k: torch.full((1,), 0.01).expand(*v.shape) if v.dim() else v for k, v in sd.items()}, path)


def test_load_official_layout_detects_vit_b(tmp_path):
    shapes = golden("sam_vit_b")["keys"]
    path = tmp_path / "sam_vit_b_01ec64.pth"
    _save_cheap({k: torch.empty(v, device="meta") for k, v in shapes.items()}, path)
    model = load_click_model(path)
    assert isinstance(model, Sam) and model.name == "sam_vit_b" and not model.training
    assert model.image_encoder.blocks[3].attn.rel_pos_h[5, 7].item() == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["sam_vit_l", "sam_vit_h"])
def test_detects_the_larger_sizes_from_their_layout(name):
    sd = {k: torch.empty(v, device="meta") for k, v in golden(name)["keys"].items()}
    assert detect_click_model(sd) == name


def test_missing_or_wrong_key_is_one_line_error_naming_it(tmp_path):
    shapes = golden("sam_vit_b")["keys"]
    missing = {k: torch.empty(v, device="meta") for k, v in shapes.items()
               if k != "mask_decoder.iou_token.weight"}
    _save_cheap(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="mask_decoder.iou_token.weight") as err:
        load_click_model(tmp_path / "missing.pth")
    assert "\n" not in str(err.value) and "missing.pth" in str(err.value)
    wrong = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    wrong["image_encoder.neck.0.weight"] = torch.empty(128, 768, 1, 1, device="meta")
    _save_cheap(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="image_encoder.neck.0.weight") as err:
        load_click_model(tmp_path / "wrong.pth", arch="sam_vit_b")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- live peer (dev machines only)


def test_live_peer_same_outputs(sam_b, tmp_path):
    """segment-anything's own SamPredictor under the same weights, image and prompts; its saved
    state dict (the official files' layout) loads as sam_vit_b with every tensor kept."""
    sa = pytest.importorskip("segment_anything")
    model, predictor, emb = sam_b
    peer = sa.sam_model_registry["vit_b"]().eval()
    peer.load_state_dict(model.state_dict())
    torch.save(peer.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    loaded = load_click_model(tmp_path / "sam_vit_b_01ec64.pth")
    assert loaded.name == "sam_vit_b"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    del loaded
    peer_pred = sa.SamPredictor(peer)
    peer_pred.set_image(fixed_image())
    assert tuple(peer_pred.input_size) == emb.input_size
    np.testing.assert_allclose(emb.features["image_embed"], peer_pred.features.numpy(), atol=2e-4, rtol=1e-3)

    def theirs(pts, lbl, box, mask_input, multi):
        return peer_pred.predict(pts, lbl, box, mask_input, multi)
    _, want = run_prompts(theirs)
    _, got = run_prompts(_ours(predictor))
    for name in want:
        (wm, ws, wl), (gm, gs, gl) = want[name], got[name]
        np.testing.assert_allclose(gl, wl, atol=1e-3 * max(1.0, np.abs(wl).max()), rtol=1e-3, err_msg=name)
        np.testing.assert_allclose(gs, ws, atol=1e-3, rtol=1e-3, err_msg=name)
        assert gm.shape == wm.shape and (gm != wm).mean() < 1e-3, name


@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_tiny"])   # SAM's decoder, SAM 2.1's
def test_a_mask_prompt_changes_the_prepared_rows_as_making_them_again_would(name):
    # A click with the previous round's logits starts from the per-image prepared rows and adds the
    # mask's projected change; making every row and projection again from image + dense must agree.
    torch.manual_seed(0)
    model = build_click_model(name).eval()
    predictor = ClickPredictor(model)
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    first = predictor.predict([[20, 15]], [1], multimask=False)
    pts, lbl = np.array([[20.0, 15.0], [50.0, 30.0]]), np.array([1, 0])
    fast = predictor.predict(pts, lbl, mask_input=first.low_res_logits, multimask=False)
    prepared, predictor._prepared = predictor._prepared, None        # the path without prepared rows
    try:
        slow = predictor.predict(pts, lbl, mask_input=first.low_res_logits, multimask=False)
    finally:
        predictor._prepared = prepared
    scale = np.abs(slow.low_res_logits).max()
    np.testing.assert_allclose(fast.low_res_logits, slow.low_res_logits, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-5)
    assert not np.allclose(fast.low_res_logits, first.low_res_logits, atol=1e-3)


def _predict_all(predictor, prompts: list[dict]) -> list:
    """Each prompt's prediction in turn; ``mask_input="first"`` takes the first one's logits."""
    outs, first = [], None
    for kw in prompts:
        kw = dict(kw)
        if kw.get("mask_input") == "first":
            kw["mask_input"] = first.low_res_logits[:1]
        out = predictor.predict(**kw)
        first = first or out
        outs.append(out)
    return outs


def _assert_same_predictions(fast: list, plain: list) -> None:
    for a, b in zip(fast, plain, strict=True):
        scale = max(1.0, np.abs(b.low_res_logits).max())
        np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.parametrize("name,shape", [("mobile_sam", (48, 64)), ("mobile_sam", (64, 40)),
                                        ("sam2.1_hiera_tiny", (48, 64))])   # SAM's decoder, SAM 2.1's
def test_the_folded_first_upscaling_gives_what_the_final_rows_give(name, shape, monkeypatch):
    """On a CPU the upscaling's first product comes from the prepared rows and each block's change
    (FoldedDeconv) instead of from the final rows: the same logits, with a mask prompt too, and a
    click with more points than that path takes falls back to the rows."""
    import engine.click.sam_upscale as upscale
    torch.manual_seed(0)
    model = build_click_model(name).eval()
    with torch.no_grad():   # norms that are not the identity, so what is folded matters
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    predictor = ClickPredictor(model)
    # (a portrait image: SAM's masks come first over the grid's left columns, see upscale_masks_first)
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (*shape, 3), dtype=np.uint8))
    prepared = predictor._prepared if not isinstance(predictor._prepared, dict) else predictor._prepared["side"]
    folded = prepared.folded
    assert folded is not None
    made = []
    monkeypatch.setattr(upscale.FoldedDeconv, "rows", lambda self, *a, real=upscale.FoldedDeconv.rows, **kw:
                        made.append(1) or real(self, *a, **kw))
    many = np.random.default_rng(2).uniform(0, 40, (20, 2))   # 20 points: too many tokens to fold
    prompts = [dict(points=[[20, 15]], labels=[1], multimask=True),
               dict(points=[[20, 15], [50, 30]], labels=[1, 0], multimask=False, mask_input="first"),
               dict(points=many, labels=np.arange(20) % 2, multimask=False)]

    def run(fold: bool):
        prepared.folded = folded if fold else None
        return _predict_all(predictor, prompts)

    try:
        plain = run(False)
        assert made == []
        fast = run(True)
    finally:
        prepared.folded = folded
    assert len(made) >= 2   # the first two prompts folded (the third could not)
    _assert_same_predictions(fast, plain)


@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_tiny"])
def test_the_second_block_from_the_first_blocks_change_gives_what_the_rows_give(name, monkeypatch):
    """On a CPU the second two-way block works from the image's own rows, projected once per image,
    and the first block's change of them (NormedRows) instead of from the normed rows: the same
    logits and scores, with a mask prompt (whose dense embedding the first block then takes as a
    change of its own, see ImageSide.dense) too, and a click with more points than that path takes
    falls back to the rows."""
    from engine.click import sam_decoder
    torch.manual_seed(0)
    model = build_click_model(name).eval()
    with torch.no_grad():   # norms that are not the identity, so what is folded in matters
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    predictor = ClickPredictor(model)
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    prepared = predictor._prepared if not isinstance(predictor._prepared, dict) else predictor._prepared["side"]
    nproj = prepared.nproj
    assert nproj is not None and len(nproj) == 5 and all(t.shape[-2] == 64 * 64 for t in nproj)
    used = []
    real = sam_decoder.Attention.normed_scores
    monkeypatch.setattr(sam_decoder.Attention, "normed_scores", lambda *a, **k: used.append(1) or real(*a, **k))
    many = np.random.default_rng(2).uniform(0, 40, (20, 2))   # 20 points: too many tokens for that path
    prompts = [dict(points=[[20, 15]], labels=[1], multimask=True),
               dict(points=[[20, 15], [50, 30]], labels=[1, 0], multimask=False, mask_input="first"),
               dict(box=[5, 5, 40, 30], multimask=True),
               dict(points=many, labels=np.arange(20) % 2, multimask=False),
               dict(points=many, labels=np.arange(20) % 2, multimask=False, mask_input="first")]

    def run(normed: bool):
        prepared.nproj = nproj if normed else None
        return _predict_all(predictor, prompts)

    try:
        plain = run(False)
        assert used == []
        fast = run(True)
    finally:
        prepared.nproj = nproj
    assert len(used) == 3 * 3   # the second block's two attentions and the final one, for three prompts
    _assert_same_predictions(fast, plain)
    for a, b in zip(fast, plain):
        assert np.array_equal(a.masks, b.masks) or np.mean(a.masks != b.masks) < 1e-4


def test_the_normed_paths_give_the_rows_answer_for_several_mask_prompts_at_once():
    """The two-way transformer alone, on a small grid: two mask prompts at once (a batch of two
    sides from with_dense, each with its own dense change) through the normed paths, the change
    handed to the first block as it is, give the tokens and rows that the rows and projections
    made with the change give."""
    from engine.click.sam_decoder import TwoWayTransformer
    torch.manual_seed(0)
    tr = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=64).eval()
    with torch.no_grad():
        for m in tr.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
        image, pe = torch.randn(1, 256, 8, 8), torch.randn(1, 256, 8, 8)
        no_mask = torch.randn(1, 256)
        conv = torch.nn.Conv2d(16, 256, 1)
        side = tr.image_side(image + no_mask.view(1, -1, 1, 1), pe, project=True)
        assert side.nproj is not None and len(side.nproj) == 5
        features = torch.randn(2, 16, 8, 8)
        masked = tr.with_dense(side, features, conv, no_mask)
        assert masked.dense is not None and masked.dense[0].shape == (2, 64, 17)
        assert masked.keys is side.keys and masked.kp is side.kp   # nothing remade
        tokens = torch.randn(2, 7, 256)
        fast = tr(masked, tokens, keep=[0, 1, 2])
        side.nproj = None   # (no nproj: with_dense makes the rows and projections with the change)
        made = tr.with_dense(side, features, conv, no_mask)
        assert made.dense is None and made.keys.shape[0] == 2
        plain = tr(made, tokens, keep=[0, 1, 2])
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_normed_rows_are_joined_in_the_attentions_layout():
    """NormedRows.of joins a block's weights (the attention's B×m×N, seen as N×m) and the row means
    along the weights' own layout: R·ᵀ is then contiguous (one copy, not a gather of single
    elements), with the same values as joining the N×m view, and a mask prompt's extra columns
    join the same way."""
    from engine.click.sam_decoder import NormedRows
    torch.manual_seed(0)
    attn = torch.rand(1, 8, 7, 64).softmax(dim=2)
    weights = attn.reshape(1, 56, 64).transpose(1, 2)
    values, mean, rstd = torch.randn(1, 56, 32), torch.randn(1, 64, 1), torch.rand(1, 64, 1)
    norm = torch.nn.LayerNorm(32)
    rows = NormedRows.of((weights, values, mean, rstd, norm))
    assert rows.rows.transpose(1, 2).is_contiguous()
    assert torch.equal(rows.rows, torch.cat([weights, mean], dim=-1))
    assert torch.equal(rows.mat[:, -1], torch.full((1, 32), -1.0))
    # A mask prompt's change (R N×k, M k×C) joins the weights as k more columns, in that layout too.
    from engine.click.sam_decoder import Attention
    att = Attention(32, 8, 2)
    dense = (torch.rand(1, 64, 5), torch.randn(1, 5, 32))
    stash = []
    with torch.no_grad():
        out = att._weigh_tokens(attn, torch.randn(1, 7, 32), None, stash, dense)
    joined, vo = stash[0]
    assert joined.shape == (1, 64, 61) and joined.transpose(1, 2).is_contiguous()
    assert torch.equal(joined[..., 56:], dense[0]) and torch.equal(joined[..., :56], weights)
    torch.testing.assert_close(out, joined @ vo)


def test_the_transposed_convolutions_matrix_is_kept_only_while_its_weights_are_unchanged():
    """The upscaling's 2×2 transposed convolution as a matrix is made once for inference and made
    again when its weights are written to or replaced; with autograd it is made each time, so
    gradients reach the weights."""
    from engine.click.sam_upscale import _deconv_weights
    conv = torch.nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2)
    x = torch.randn(1, 8, 3, 5)

    def as_matrix_output() -> torch.Tensor:   # the convolution through its matrix, in block order
        w, b = _deconv_weights(conv)
        rows = x.flatten(2).transpose(1, 2) @ w + b                   # 1×15×(2·2·4)
        return rows.view(1, 3, 5, 2, 2, 4).permute(0, 5, 1, 3, 2, 4).reshape(1, 4, 6, 10)

    with torch.no_grad():
        torch.testing.assert_close(as_matrix_output(), conv(x))
        first = _deconv_weights(conv)[0]
        assert _deconv_weights(conv)[0] is first                      # kept
        conv.weight.mul_(2)                                           # written to: made again
        torch.testing.assert_close(as_matrix_output(), conv(x))
        conv.bias = torch.nn.Parameter(torch.randn(4))                # replaced: made again
        torch.testing.assert_close(as_matrix_output(), conv(x))
        conv.double()                                                 # its data swapped (module.to)
        x = x.double()
        torch.testing.assert_close(as_matrix_output(), conv(x))
        assert _deconv_weights(conv)[0].dtype == torch.float64
    with torch.inference_mode():
        torch.testing.assert_close(as_matrix_output(), conv(x))
    as_matrix_output().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
