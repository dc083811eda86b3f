"""MobileSAM (engine.click.tinyvit) against the authors' code (ChaoningZhang/MobileSAM).

tests/data/click_keys_mobile_sam.json holds the state-dict layout of the authors'
``sam_model_registry["vit_t"]()`` and their outputs under formula weights (:data:`FORMULA`): the
TinyViT encoder on a fixed tensor, and their ``SamPredictor`` on a fixed image and prompts. It was
written by tests/data/record_click_mobile_sam.py (its top says how to install the authors' code).
The live comparison at the end runs only where that code is importable (a developer's machine).
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

from engine.checkpoints.limits import CheckpointError
from engine.click import (
    ClickPredictor,
    build_click_model,
    list_click_models,
    load_click_model,
)
from engine.click.tinyvit import TinyViT
from tests import weights_formula
from tests.weights_formula import Formula

GOLDEN = ROOT / "tests" / "data" / "click_keys_mobile_sam.json"

# The constants the golden outputs were recorded with.
FORMULA = Formula(9973, 5.0, 7.1234, 31337.77, 0.25, (1.0, 0.2))
H, W = 97, 131                                  # odd sizes: SAM's resize rounds, then pads to 1024
EMB_CH, EMB_RC = [0, 100, 255], [0, 13, 31, 47, 63]
LOW_RC = [0, 50, 101, 160, 255]
IMG_ROWS, IMG_COLS = [0, 24, 48, 72, 96], [0, 32, 65, 98, 130]
# Prompt rounds, in the authors' predictor's terms; "mask_from" feeds back mask 0 of an earlier round.
CASES = {
    "click_multimask": {"points": [[70, 45]], "labels": [1], "box": None, "multimask": True},
    "clicks_box": {"points": [[70, 45], [20, 80]], "labels": [1, 0], "box": [30, 10, 115, 85], "multimask": False},
    "box_only_multimask": {"points": None, "labels": None, "box": [5, 5, 90, 60], "multimask": True},
    "refine_with_mask": {"points": [[70, 45], [100, 20]], "labels": [1, 0], "box": None, "multimask": False,
                         "mask_from": "click_multimask"},
}


def fixed_image() -> np.ndarray:
    """An H×W×3 uint8 image from integer arithmetic only (identical everywhere): a bright disc on
    gradients and hashed noise."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.int64)
    idx = np.arange(H * W * 3, dtype=np.int64).reshape(H, W, 3)
    noise = ((idx * 2654435761) >> 13) % 41
    base = np.stack([(xx * 2) % 200, (yy * 3) % 200, (xx + yy) % 200], -1)
    disc = (((xx - 70) ** 2 + (yy - 45) ** 2) < 28 ** 2)[..., None] * np.array([50, 30, -20])
    return np.clip(base + noise + disc + 10, 0, 255).astype(np.uint8)


def fixed_encoder_input() -> torch.Tensor:
    n = 3 * 1024 * 1024
    return (torch.sin(torch.arange(n, dtype=torch.float64) * 0.37) * 1.5).float().reshape(1, 3, 1024, 1024)


def emb_probe(emb: torch.Tensor) -> list:
    return emb[0, EMB_CH][:, EMB_RC][:, :, EMB_RC].tolist()


def low_probe(low) -> list:
    return torch.as_tensor(np.asarray(low))[:, LOW_RC][:, :, LOW_RC].tolist()


def img_probe(logits) -> list:
    return torch.as_tensor(np.asarray(logits))[:, IMG_ROWS][:, :, IMG_COLS].tolist()


def _golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _ref(gold: dict, what: str) -> dict:
    return next(r for r in gold["references"] if r["what"] == what)


def _close(actual, expected, rtol=1e-4, atol_rel=1e-4):
    a, e = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol_rel * float(e.abs().max()) + 1e-6)


@pytest.fixture(scope="module")
def fixed_model():
    model = build_click_model("mobile_sam")
    model.load_state_dict(weights_formula.fixed_state(_golden()["keys"], FORMULA))
    return model.eval()


PAUSES: list = []   # the fixed predictor's encoder pauses (set_image's ``between``)


@pytest.fixture(scope="module")
def fixed_predictor(fixed_model):
    pred = ClickPredictor(fixed_model)

    def between():   # torch work of its own at each pause, as a click decoded there is
        PAUSES.append(float((torch.ones(64, 64) @ torch.ones(64, 64)).sum()))
    # The golden tests below then check that the paused encoder gives the authors' embedding.
    pred.set_image(fixed_image(), between=between)
    return pred


def test_the_encoder_pauses_after_each_block(fixed_predictor):
    assert len(PAUSES) == len(fixed_predictor.model.encoder_steps()) == 12
    assert not any(h for m in fixed_predictor.model.encoder_steps() for h in m._forward_hooks.values())


def _run_cases(predict) -> dict:
    """``predict(points, labels, box, mask_input, multimask)`` → (logits at image size, iou, low-res)
    for every case, in order, feeding earlier low-res logits back where a case says so."""
    out = {}
    for name, c in CASES.items():
        mask = out[c["mask_from"]][2][:1] if c.get("mask_from") else None
        out[name] = predict(c["points"], c["labels"], c["box"], mask, c["multimask"])
    return out


def _ours(pred: ClickPredictor):
    def predict(points, labels, box, mask, multimask):
        p = pred.predict(points, labels, box, mask, multimask)
        low = torch.from_numpy(p.low_res_logits)[None]
        full = pred.model.postprocess(low, pred._input, pred._original)[0]
        assert np.array_equal(p.masks, (full > 0).numpy())
        return full.numpy(), p.scores, p.low_res_logits
    return predict


# --------------------------------------------------------------------------- layout


def test_registered_with_the_authors_layout():
    gold = _golden()
    assert "mobile_sam" in list_click_models()
    model = build_click_model("mobile_sam")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == gold["keys"]
    assert list(shapes) == list(gold["keys"])   # the authors' order, too
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == gold["num_params"] == 10_130_092
    assert model.family == "sam" and model.name == "mobile_sam"


# --------------------------------------------------------------------------- numerics


def test_encoder_matches_peer_reference():
    gold = _golden()
    enc = TinyViT()
    prefix = "image_encoder."
    # The formula hashes the whole model's key names, prefix included.
    sd = weights_formula.fixed_state({k: v for k, v in gold["keys"].items() if k.startswith(prefix)}, FORMULA)
    enc.load_state_dict({k[len(prefix):]: v for k, v in sd.items()})
    with torch.no_grad():
        out = enc.eval()(fixed_encoder_input())
    assert out.shape == (1, 256, 64, 64)
    _close(emb_probe(out), _ref(gold, "encoder")["probe"])


def test_predictions_match_peer_reference(fixed_predictor):
    ref = _ref(_golden(), "predictor")
    assert ref["image"] == [H, W]
    _close(emb_probe(torch.from_numpy(fixed_predictor.get_embedding().features["image_embed"])), ref["embedding"])
    ours = _run_cases(_ours(fixed_predictor))
    for name, (full, iou, low) in ours.items():
        exp = ref["cases"][name]
        k = 3 if CASES[name]["multimask"] else 1
        assert full.shape == (k, H, W) and iou.shape == (k,) and low.shape == (k, 256, 256), name
        _close(low_probe(low), exp["low_res"])
        _close(img_probe(full), exp["logits"])
        _close(iou, exp["iou"], rtol=1e-4, atol_rel=1e-4)


def test_inference_in_bands_equals_one_band(monkeypatch):
    """Stage 0, the merges, the attention (a row of windows at a time) and the MLPs run in bands of
    rows at inference; the smallest bands (uneven, with padded windows at the edges) give what one
    band over the whole image gives."""
    from engine.click import tinyvit

    torch.manual_seed(0)
    enc = TinyViT().eval()
    with torch.no_grad():
        for m in enc.modules():   # BatchNorm statistics and attention biases that matter
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_()
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, tinyvit.Attention):
                m.attention_biases.normal_()
    x = torch.randn(1, 3, 160, 224)   # stages of 40×56, 20×28 and 10×14: no side a whole number of windows
    with torch.no_grad():
        monkeypatch.setattr(tinyvit, "BAND_BYTES", 1)
        banded = enc(x)
        monkeypatch.setattr(tinyvit, "BAND_BYTES", 1 << 40)
        monkeypatch.setattr(tinyvit.TinyViTBlock, "_attention_in_bands", lambda blk, t: t + blk._windowed(t))
        whole = enc(x)
    assert banded.shape == whole.shape == (1, 256, 10, 14)
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-5)


def test_encoder_takes_other_sizes_and_autocast():
    """The size comes from the input (windows padded as the authors pad them); under autocast the
    embedding comes out finite and float32 (the neck's LayerNorm runs in float32)."""
    torch.manual_seed(0)
    enc = TinyViT().eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = enc(x)
    assert ref.shape == half.shape == (1, 256, 8, 8)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - ref).abs().mean() < 0.1 * ref.abs().mean()


# --------------------------------------------------------------------------- loading


def test_official_layout_file_is_recognised(tmp_path, fixed_model, fixed_predictor):
    sd = fixed_model.state_dict()
    path = tmp_path / "mobile_sam.pt"
    torch.save(dict(sd), path)   # the published file: a bare state dict
    loaded = load_click_model(path)
    assert loaded.name == "mobile_sam" and not loaded.training
    pred = ClickPredictor(loaded)
    pred.set_embedding(fixed_predictor.get_embedding())
    a, b = pred.predict([[70, 45]], [1]), fixed_predictor.predict([[70, 45]], [1])
    assert np.array_equal(a.low_res_logits, b.low_res_logits) and np.array_equal(a.masks, b.masks)


def test_wrong_or_missing_key_is_one_line_naming_it(tmp_path, fixed_model):
    sd = dict(fixed_model.state_dict())
    missing = dict(sd)
    del missing["image_encoder.layers.2.blocks.3.attn.attention_biases"]
    renamed = dict(sd)
    renamed["image_encoder.neck.9.weight"] = renamed.pop("image_encoder.neck.2.weight")
    for bad, key in ((missing, "layers.2.blocks.3.attn.attention_biases"), (renamed, "neck.9.weight")):
        path = tmp_path / "bad.pt"
        torch.save(bad, path)
        with pytest.raises(CheckpointError) as info:
            load_click_model(path)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg and key in msg and "mobile_sam" in msg


# --------------------------------------------------------------------------- live comparison (dev only)


def _peer_model():
    build = pytest.importorskip("mobile_sam.build_sam")   # needs timm and torchvision: dev-only
    torch.manual_seed(0)
    peer = build.sam_model_registry["vit_t"]()
    g = torch.Generator().manual_seed(1)
    sd = peer.state_dict()
    for k, v in sd.items():   # every tensor random, BatchNorm statistics too
        if not v.is_floating_point():
            continue
        r = torch.rand(v.shape, generator=g)
        if k.endswith("running_var"):
            v.copy_(0.5 + r)
        elif v.ndim <= 1 or "attention_biases" in k:
            v.copy_(r - 0.5)
        else:
            v.copy_((r - 0.5) * (12.0 / max(1, v[0].numel())) ** 0.5)
    peer.load_state_dict(sd)
    return peer.eval()   # eval() after loading: the authors' attention caches its biases there


def test_live_against_the_authors_predictor(tmp_path):
    peer = _peer_model()
    from mobile_sam import SamPredictor
    path = tmp_path / "mobile_sam.pt"
    torch.save(peer.state_dict(), path)   # what the authors publish: their model's bare state dict
    ours = load_click_model(path)
    assert ours.name == "mobile_sam"
    img = fixed_image()
    theirs, mine = SamPredictor(peer), ClickPredictor(ours.eval())
    with torch.no_grad():
        theirs.set_image(img)
    mine.set_image(img)
    emb = torch.from_numpy(mine.get_embedding().features["image_embed"])
    torch.testing.assert_close(emb, theirs.features, rtol=1e-4, atol=1e-4)

    def peer_predict(points, labels, box, mask, multimask):
        full, iou, low = theirs.predict(
            None if points is None else np.asarray(points, dtype=np.float64),
            None if labels is None else np.asarray(labels), None if box is None else np.asarray(box),
            mask, multimask, return_logits=True)
        return full, iou, low

    expected, actual = _run_cases(peer_predict), _run_cases(_ours(mine))
    for name in CASES:
        (ef, ei, el), (af, ai, al) = expected[name], actual[name]
        np.testing.assert_allclose(al, el, rtol=1e-3, atol=1e-3 * np.abs(el).max())
        np.testing.assert_allclose(ai, ei, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(af, ef, rtol=1e-3, atol=1e-3 * np.abs(ef).max())
        # Masks agree except where a logit is within rounding of the threshold.
        differ = (af > 0) != (ef > 0)
        assert np.all(np.abs(ef[differ]) < 1e-3 * np.abs(ef).max()), name


# --------------------------------------------------------------------------- benchmark script


def test_bench_click_writes_rows_and_lists_a_failing_builder(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_click
    threads = torch.get_num_threads()
    out = tmp_path / "click.json"
    try:
        rc = bench_click.main(["--models", "mobile_sam", "--encoder-runs", "1", "--predict-runs", "2",
                               "--device", "cpu", "--note", "test", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    payload = json.loads(out.read_text(encoding="utf-8"))
    rows = payload["rows"]
    assert isinstance(payload["cpu"], str) and payload["cpu"]   # which processor: the timings depend on it
    assert [(r["model"], r["device"], r["precision"]) for r in rows] == [("mobile_sam", "cpu", "fp32")]
    assert rows[0]["set_image_ms"] > 0 and rows[0]["predict_ms"] > 0 and rows[0]["error"] is None
    assert rows[0]["settled_ms"] > 0
    assert "click" in rows[0]["goal"] and "encoder" in rows[0]["goal"]
    assert bench_click.main(["--models", "no_such_model", "--out", str(out)]) == 2
    assert "unknown click model" in capsys.readouterr().err

    def broken(name):
        raise NotImplementedError("not written yet")
    monkeypatch.setattr(bench_click, "build_click_model", broken)
    row = bench_click.bench_click_model("mobile_sam", torch.device("cpu"), "fp32", 1, 1)
    assert row.error == "builder failed: not written yet" and row.set_image_ms is None


def test_bench_click_waits_for_two_quiet_readings_in_a_row_and_no_longer_than_told(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_click
    readings = iter([100.0, 170.0, 120.0, 170.0, 175.0, 90.0])
    clock = {"t": 0.0}
    monkeypatch.setattr(bench_click, "machine_speed", lambda repeats=20: {"gemm_gflops": next(readings), "add_gbs": 1})
    monkeypatch.setattr(bench_click.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(bench_click.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    got = bench_click.wait_quiet(165, 600, report=lambda line: None)
    # 100 (sleep) 170 120 (sleep) 170 175: quiet twice in a row after two 10 s waits
    assert got["gemm_gflops"] == 175.0 and got["waited_s"] == 20.0
    # A machine that never quiets down: the wait ends at its limit, with the last reading.
    readings = iter([100.0] * 50)
    clock["t"] = 0.0
    got = bench_click.wait_quiet(165, 35, report=lambda line: None)
    assert got["gemm_gflops"] == 100.0 and 35 <= got["waited_s"] < 50
    # 0: no wait at all.
    readings = iter([100.0])
    assert bench_click.wait_quiet(0, 600)["waited_s"] == 0.0
    # With a memory speed to wait for too: a fast product on slow memory is not quiet.
    pairs = iter([(170.0, 30.0), (170.0, 50.0), (170.0, 30.0), (170.0, 50.0), (168.0, 55.0)])
    monkeypatch.setattr(bench_click, "machine_speed",
                        lambda repeats=20: dict(zip(("gemm_gflops", "add_gbs"), next(pairs))))
    clock["t"] = 0.0
    got = bench_click.wait_quiet(165, 600, report=lambda line: None, gbs=45)
    assert (got["gemm_gflops"], got["add_gbs"], got["waited_s"]) == (168.0, 55.0, 20.0)


def test_bench_click_waits_before_the_rounds_and_the_goal_encoder_only(monkeypatch):
    """--quiet waits before every round of clicks and before MobileSAM's encoder (the one with a
    goal); the other encoders run as the machine is, with a reading kept beside them."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_click
    waits = []
    monkeypatch.setattr(bench_click, "wait_quiet", lambda gflops, limit, report=print, gbs=0.0:
                        waits.append((gflops, limit, gbs)) or {"gemm_gflops": 170.0, "add_gbs": 60.0, "waited_s": 3.0})
    monkeypatch.setattr(bench_click, "machine_speed", lambda repeats=20: {"gemm_gflops": 99.0, "add_gbs": 20.0})
    monkeypatch.setattr(bench_click, "_prepare", lambda name, device, precision, runs:
                        (bench_click.Row(name, "cpu", precision, error="skipped here"), None))
    phases = []
    rows = bench_click.bench_interleaved(["sam_vit_b", "mobile_sam", "sam2.1_hiera_tiny"], 1, 6, rounds=3,
                                         report=lambda line: None, quiet=(155.0, 600.0, 55.0), phases=phases)
    assert [r.model for r in rows] == ["sam_vit_b", "mobile_sam", "sam2.1_hiera_tiny"]
    assert [p["before"] for p in phases] == ["sam_vit_b encoder", "mobile_sam encoder", "sam2.1_hiera_tiny encoder",
                                             "click round 1", "click round 2", "click round 3"]
    assert len(waits) == 4 and set(waits) == {(155.0, 600.0, 55.0)}    # MobileSAM's encoder and the 3 rounds
    assert [p["waited_s"] for p in phases] == [0.0, 3.0, 0.0, 3.0, 3.0, 3.0]
    assert phases[0]["gemm_gflops"] == 99.0 and phases[1]["gemm_gflops"] == 170.0
    # Without --quiet nothing waits and nothing is read.
    waits.clear()
    phases = []
    bench_click.bench_interleaved(["sam_vit_b", "mobile_sam"], 1, 2, rounds=2, report=lambda line: None,
                                  phases=phases)
    assert waits == [] and phases == []


def test_bench_machine_speed_reads_the_benchmarks_threads_from_a_one_thread_caller(monkeypatch):
    """bench_gui asks from its UI thread, which runs torch with one thread: the reading is still
    the benchmark's (a thread of its own, with the count new threads start from), and the caller
    keeps its one thread (a team made on it would stay and slow every later click)."""
    import threading

    from engine import threads
    monkeypatch.setattr(threads, "_process_default", threads._process_default)   # (own_threads sets it)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_click
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    got = []

    def ui_thread() -> None:
        threads.own_threads(1)
        got.append((bench_click.machine_speed(2), torch.get_num_threads()))
    try:
        caller = threading.Thread(target=ui_thread)
        caller.start()
        caller.join()
    finally:
        torch.set_num_threads(before)
    speed, caller_threads = got[0]
    assert speed["threads"] == 2 and caller_threads == 1
    assert speed["gemm_gflops"] > 0 and speed["add_gbs"] > 0
