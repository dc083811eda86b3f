"""engine.predictor: probabilities at input size, preprocessing, bounded memory, TTA, OOM fallbacks."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from engine import ImageReadError, PredictionError, Predictor, resolve_device
from engine.meta import CAFFE_BGR, IMAGENET, ModelMeta, Preprocessing

ROOT = Path(__file__).resolve().parents[1]


class TinySeg(nn.Module):
    """Follows the model contract: N×3×H×W -> N×C×H×W logits at the input size; records input sizes."""

    def __init__(self, num_classes: int = 3, preprocessing: Preprocessing = IMAGENET) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)
        self.meta = ModelMeta(arch="tiny", num_classes=num_classes, preprocessing=preprocessing)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone() if x.numel() < 10_000 else x[:, :, :1, :1].clone())
        self.last_size = tuple(x.shape[-2:])
        y = self.conv(F.avg_pool2d(x, 2, ceil_mode=True))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _img(h: int, w: int) -> np.ndarray:
    return np.random.randint(0, 256, (h, w, 3), dtype=np.uint8)


def test_probabilities_at_input_size_sum_to_one():
    p = Predictor(TinySeg(4), device="cpu", max_side=32)
    probs = p.predict(_img(45, 71))  # upsampled from the 20×32 inference size
    assert probs.shape == (4, 45, 71) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    assert p.model.last_size == (20, 32)


def test_accepts_grey_float_and_paths(tmp_path):
    p = Predictor(TinySeg(2), device="cpu")
    grey = np.random.randint(0, 256, (10, 12), dtype=np.uint8)
    np.testing.assert_allclose(p.predict(grey), p.predict(np.repeat(grey[:, :, None], 3, 2)), atol=1e-6)
    assert p.predict(np.random.rand(10, 12, 3)).shape == (2, 10, 12)
    path = tmp_path / "x.png"
    rgb = _img(9, 8)
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(p.predict(path), p.predict(rgb))
    with pytest.raises(ImageReadError):
        p.predict(tmp_path / "missing.png")


def test_preprocessing_from_meta_bgr_scale_mean_std():
    model = TinySeg(2, CAFFE_BGR)
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[...] = (10, 20, 30)
    Predictor(model, device="cpu").predict(img)
    x = model.seen[-1][0, :, 0, 0]
    expected = torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675])
    torch.testing.assert_close(x, expected)
    model = TinySeg(2, IMAGENET)
    Predictor(model, device="cpu").predict(img)
    expected = (torch.tensor([10, 20, 30]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(model.seen[-1][0, :, 0, 0], expected)


def test_inference_size_resize_short_then_max_side():
    p = Predictor(TinySeg(2, Preprocessing(resize_short=520)), device="cpu", max_side=1024)
    assert p.inference_size(100, 200) == (512, 1024)  # 520 short side would make the long one 1040
    assert p.inference_size(600, 700) == (520, 607)
    assert Predictor(TinySeg(2), device="cpu", max_side=64).inference_size(300, 500) == (38, 64)
    assert Predictor(TinySeg(2), device="cpu", max_side=None).inference_size(300, 500) == (300, 500)


def test_banded_upsampling_equals_full_interpolation():
    p = Predictor(TinySeg(3), device="cpu", tile_elements=1024)
    for (h, w, H, W) in [(7, 9, 61, 45), (20, 30, 50, 40), (5, 5, 5, 170)]:
        low = torch.rand(3, h, w)
        ref = F.interpolate(low[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        bands = list(p._upsampled_bands(low, H, W))
        assert len(bands) > 1
        torch.testing.assert_close(torch.cat([b for _, b in bands], 1), ref, atol=1e-5, rtol=0)


def test_tiling_does_not_change_results_and_labels_match_argmax():
    img = _img(61, 83)
    a = Predictor(TinySeg(5), device="cpu", max_side=24)
    b = Predictor(a.model, device="cpu", max_side=24, tile_elements=1024)  # many small bands
    pa, pb = a.predict(img), b.predict(img)
    np.testing.assert_allclose(pa, pb, atol=1e-6)
    np.testing.assert_array_equal(b.predict_labels(img), pa.argmax(0))
    assert b.predict_labels(img).dtype == np.uint8


def test_flip_tta_averages_flipped_prediction():
    model = TinySeg(3)
    img = _img(16, 20)
    plain = Predictor(model, device="cpu", max_side=None)
    flipped = plain.predict(np.ascontiguousarray(img[:, ::-1]))[:, :, ::-1]
    tta = Predictor(model, device="cpu", max_side=None, tta_flip=True).predict(img)
    np.testing.assert_allclose(tta, (plain.predict(img) + flipped) / 2, atol=1e-6)


def test_multiscale_tta_runs_each_scale():
    model = TinySeg(3)
    p = Predictor(model, device="cpu", max_side=None, tta_scales=(1.0, 0.5))
    probs = p.predict(_img(20, 30))
    sizes = [tuple(t.shape[-2:]) for t in model.seen[-2:]]
    assert sizes == [(20, 30), (10, 15)]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    with pytest.raises(ValueError):
        Predictor(model, device="cpu", tta_scales=())


def _oom_forward(model: TinySeg, times: int):
    real = model.forward
    state = {"left": times}

    def forward(x):
        if state["left"] > 0:
            state["left"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x)

    model.forward = forward  # instance attribute shadows the method; nn.Module.__call__ uses it


def test_oom_once_retries_at_smaller_size():
    model = TinySeg(3)
    p = Predictor(model, device="cpu", max_side=40)
    _oom_forward(model, 1)
    with pytest.warns(RuntimeWarning, match="retrying at 20x15"):
        probs = p.predict(_img(30, 40))
    assert model.last_size == (15, 20)
    assert probs.shape == (3, 30, 40)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_oom_twice_falls_back_to_cpu_and_thrice_is_a_clear_error():
    model = TinySeg(3)
    p = Predictor(model, device="cpu", max_side=40)
    _oom_forward(model, 2)
    with pytest.warns(RuntimeWarning) as rec:
        probs = p.predict(_img(30, 40))
    assert any("CPU" in str(w.message) for w in rec)
    assert p.device.type == "cpu" and model.last_size == (30, 40) and probs.shape == (3, 30, 40)
    _oom_forward(model, 3)
    with pytest.warns(RuntimeWarning), pytest.raises(PredictionError, match="out of memory"):
        p.predict(_img(30, 40))


def test_half_precision_overflow_redoes_the_image_in_float32_and_stays_there(monkeypatch):
    """fp16 autocast (CUDA) can overflow to inf/NaN for some weights: the image is redone in float32 with
    a warning, and later images skip half precision.  Exercised on the CPU with CPU autocast standing in."""
    model = TinySeg(3)
    real = model.forward
    halves = []

    def forward(x):
        halves.append(torch.is_autocast_enabled("cpu"))
        y = real(x)
        return torch.full_like(y, float("nan")) if halves[-1] else y

    model.forward = forward
    p = Predictor(model, device="cpu")
    want = Predictor(TinySeg(3), device="cpu")
    want.model.load_state_dict(model.state_dict())
    monkeypatch.setattr(p, "_amp_enabled", lambda: not p._amp_off)  # as on CUDA with amp on
    img = _img(12, 16)
    with pytest.warns(RuntimeWarning, match="float32"):
        probs = p.predict(img)
    assert halves == [True, False]
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, want.predict(img), atol=1e-6)
    p.predict(img)
    assert halves == [True, False, False]


def test_sliding_window_averages_logits_over_overlapping_crops_like_mmseg():
    pp = Preprocessing(sliding_window=(16, 24, 10, 14))
    model = TinySeg(3, preprocessing=pp)
    p = Predictor(model, device="cpu", max_side=None)
    img = _img(40, 60)
    probs = p.predict(img)
    windows = [tuple(t.shape[-2:]) for t in model.seen]
    assert windows == [(16, 24)] * 16   # 4 rows (y 0, 10, 20, 24) x 4 columns (x 0, 14, 28, 36)
    # The same thing by hand: logits of each crop summed into place, divided by the cover count, softmax.
    full = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    full = (full - torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)) / torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
    total, count = torch.zeros(1, 3, 40, 60), torch.zeros(1, 1, 40, 60)
    with torch.no_grad():
        for y1 in (0, 10, 20, 24):
            for x1 in (0, 14, 28, 36):
                total[:, :, y1:y1 + 16, x1:x1 + 24] += TinySeg.forward(model, full[:, :, y1:y1 + 16, x1:x1 + 24])
                count[:, :, y1:y1 + 16, x1:x1 + 24] += 1
    np.testing.assert_allclose(probs, (total / count).softmax(1)[0].numpy(), atol=1e-5)
    model.seen.clear()
    p.predict(_img(16, 20))   # fits in one window: the whole image at once
    assert [tuple(t.shape[-2:]) for t in model.seen] == [(16, 20)]


def test_sliding_window_models_run_street_scenes_at_their_own_size():
    p = Predictor(TinySeg(3, preprocessing=Preprocessing(resize_short=1024, sliding_window=(512, 1024, 341, 683))),
                  device="cpu")
    assert p.inference_size(1024, 2048) == (1024, 2048)      # the zoo's evaluation size, despite max_side 1024
    assert p.inference_size(750, 1000) == (1024, 1365)       # short side 1024, as mmseg's keep-ratio Resize
    assert Predictor(TinySeg(3), device="cpu").inference_size(1024, 2048) == (512, 1024)   # others: capped


def test_other_errors_are_not_swallowed():
    model = TinySeg(3)
    model.forward = lambda x: (_ for _ in ()).throw(ValueError("bad shape"))
    with pytest.raises(ValueError, match="bad shape"):
        Predictor(model, device="cpu").predict(_img(8, 8))


def test_predict_many_reports_per_item_errors_and_progress(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_img(12, 10)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    p = Predictor(TinySeg(3), device="cpu")
    calls = []
    items = [_img(8, 9), good, bad, np.zeros((3,), np.uint8), _img(5, 6)]
    out = list(p.predict_many(items, progress=lambda d, t: calls.append((d, t)), labels=True))
    assert [k for k, _ in out] == [0, good, bad, 3, 4]
    assert out[0][1].shape == (8, 9) and out[1][1].shape == (12, 10) and out[1][1].dtype == np.uint8
    assert isinstance(out[2][1], ImageReadError) and isinstance(out[3][1], ValueError)
    assert calls == [(i, 5) for i in range(1, 6)]
    probs = list(p.predict_many(iter([_img(4, 4)])))  # no len(): total None, probabilities
    assert probs[0][1].shape == (3, 4, 4)


def test_predict_many_cancel():
    p = Predictor(TinySeg(2), device="cpu")
    stop = threading.Event()
    got = []
    for key, _ in p.predict_many([_img(4, 4)] * 5, progress=lambda d, t: stop.set() if d == 2 else None):
        got.append(key)
    assert got == [0, 1, 2, 3, 4]
    got = []
    for key, _ in p.predict_many([_img(4, 4)] * 5, cancel=stop):
        got.append(key)
    assert got == []
    flag = {"n": 0}
    got = [k for k, _ in p.predict_many([_img(4, 4)] * 5, cancel=lambda: flag["n"] >= 2,
                                        progress=lambda d, t: flag.__setitem__("n", d))]
    assert got == [0, 1]


def test_device_and_model_checks():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="meta"):
        Predictor(nn.Conv2d(3, 2, 1), device="cpu")


def test_real_registered_model_smoke():
    from engine import build_model
    model = build_model("deeplabv3_mobilenet_v2", num_classes=3)
    probs = Predictor(model, device="cpu", max_side=48).predict(_img(33, 47))
    assert probs.shape == (3, 33, 47)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


_HUGE_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
    torch.set_num_threads(1)
    from engine import ModelMeta
    from engine import Predictor

    class Cheap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.meta = ModelMeta(arch="cheap", num_classes=2)
        def forward(self, x):
            y = self.conv(F.avg_pool2d(x, 8))
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def rss():
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) * 1024

    def peak():
        # VmHWM is this address space's high-water mark.  Not ru_maxrss: Linux carries that over
        # exec from the forking parent (here a pytest worker that may hold a gigabyte of models).
        with open("/proc/self/status") as f:
            return int(f.read().split("VmHWM:")[1].split()[0]) * 1024

    p = Predictor(Cheap(), device="cpu")
    p.predict_labels(np.zeros((300, 400, 3), np.uint8))  # load lazily initialised kernels first
    H, W = 9000, 12000
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (np.arange(W) % 256).astype(np.uint8)[None, :, None]
    base = rss()
    labels = p.predict_labels(img)
    grow_labels = peak() - base
    assert labels.shape == (H, W) and labels.dtype == np.uint8
    del labels
    probs = p.predict(img)
    grow_probs = peak() - base
    assert probs.shape == (2, H, W)
    assert abs(float(probs[:, ::997, ::1009].sum(0).mean()) - 1.0) < 1e-5
    print(grow_labels, p.memory_bound(H, W, labels=True), grow_probs, p.memory_bound(H, W))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for resident memory")
def test_huge_image_stays_within_documented_memory_bound():
    r = subprocess.run([sys.executable, "-c", _HUGE_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    grow_labels, bound_labels, grow_probs, bound_probs = map(int, r.stdout.split())
    # Slack for the cheap model's activations at 1024×768 and allocator/page granularity.
    slack = 64 * 2**20
    assert grow_labels <= bound_labels + slack, (grow_labels, bound_labels)
    assert grow_probs <= bound_probs + slack, (grow_probs, bound_probs)
    # The labels path really avoids full-size probabilities (2×9000×12000 float32 = 864 MB).
    assert grow_labels < 2 * 9000 * 12000 * 4 / 2


@pytest.fixture(scope="module")
def real_predictor():
    from engine import build_model
    torch.manual_seed(0)
    return Predictor(build_model("deeplabv3_mobilenet_v2", num_classes=5), device="cpu", max_side=64)


def _write(path: Path, kind: str) -> tuple[int, int]:
    """Write a 30×40 test image of ``kind``; returns the (H, W) a viewer shows."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    if kind == "rgb":
        Image.fromarray(rgb).save(path)
    elif kind == "grey":
        Image.fromarray(rgb[:, :, 0]).save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, rgb[:, :, 1]])).save(path)
    elif kind == "16bit":
        Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)).save(path)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
        Image.fromarray(rgb).save(path, exif=exif.tobytes())
        return 40, 30
    return 30, 40


@pytest.mark.parametrize("kind,suffix", [("rgb", ".png"), ("grey", ".png"), ("rgba", ".png"),
                                         ("16bit", ".png"), ("exif_rotated", ".jpg")])
def test_real_model_probabilities_sum_to_one_at_input_size(real_predictor, tmp_path, kind, suffix):
    path = tmp_path / f"img{suffix}"
    shape = _write(path, kind)
    if kind == "16bit":
        assert Image.open(path).mode.startswith("I")
    probs = real_predictor.predict(path)
    assert probs.shape == (5, *shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert real_predictor.predict_labels(path).shape == shape
