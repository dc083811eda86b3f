"""Predictor.predict_batch_with_probs: one network call for same-size images, each result equal to
predict_with_probs of its image; fp16 overflow per batch; out of memory one image at a time."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import ClassMap, MappedPredictor, Predictor
from engine.meta import IMAGENET, ModelMeta, Preprocessing


class SmallSeg(nn.Module):
    """N×3×H×W -> N×C×H×W logits at the input size; records the shape of every input it sees."""

    def __init__(self, num_classes: int = 4, preprocessing: Preprocessing = IMAGENET) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(8, num_classes, 1))
        with torch.no_grad():  # BatchNorm statistics that are not the identity, as trained weights have
            self.body[1].running_mean.uniform_(-0.5, 0.5)
            self.body[1].running_var.uniform_(0.5, 2.0)
        self.meta = ModelMeta(arch="small", num_classes=num_classes, preprocessing=preprocessing,
                              class_names=[f"c{i}" for i in range(num_classes)])
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        y = self.body(F.avg_pool2d(x, 2, ceil_mode=True))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _images(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
        for _ in range(4):  # blocks, so the classes vary over the image
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            img[y:y + h // 3, x:x + w // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
        out.append(img)
    return out


def _assert_same(batch, single) -> None:
    assert len(batch) == len(single)
    for b, s in zip(batch, single):
        assert b.labels.shape == s.labels.shape and b.labels.dtype == np.uint8
        assert b.probs.shape == s.probs.shape and b.probs.dtype == np.float32
        np.testing.assert_allclose(b.probs, s.probs, atol=1e-5)
        assert (b.labels == s.labels).mean() > 0.999  # a near tie may flip with float rounding


@pytest.mark.parametrize("case", ["plain", "tta_flip", "sliding_window", "max_side", "small_grid", "tta_scales"])
def test_batch_equals_predict_with_probs_per_image(case):
    pp = Preprocessing(sliding_window=(16, 24, 10, 14)) if case == "sliding_window" else IMAGENET
    model = SmallSeg(4, pp)
    kwargs = {"tta_flip": case == "tta_flip", "max_side": 32 if case == "max_side" else None}
    if case == "tta_scales":
        kwargs["tta_scales"] = (1.0, 0.5)
    p = Predictor(model, device="cpu", **kwargs)
    h, w = 40, 60
    images = _images(3, h, w)
    max_pixels = 300 if case == "small_grid" else None
    model.shapes.clear()
    batch = p.predict_batch_with_probs(images, max_pixels=max_pixels)
    batch_shapes = list(model.shapes)
    single = [p.predict_with_probs(img, max_pixels=max_pixels) for img in images]
    _assert_same(batch, single)
    assert all(b.labels.shape == (h, w) for b in batch)
    assert all(shape[0] == 3 for shape in batch_shapes)  # every network call saw the three images at once
    if case == "max_side":
        assert batch_shapes == [(3, 3, 21, 32)]  # shrunk to the cap, then upsampled back to 40×60
    if case == "sliding_window":
        assert len(batch_shapes) == 16 and batch_shapes[0] == (3, 3, 16, 24)  # windows, each for all images
    if case == "small_grid":
        assert batch[0].probs.shape[1] * batch[0].probs.shape[2] <= 300
    # The images really differ, so a result handed to the wrong image would have failed above.
    assert not np.allclose(batch[0].probs, batch[1].probs, atol=1e-3)


def test_mixed_sizes_are_refused_and_an_empty_batch_is_empty():
    p = Predictor(SmallSeg(3), device="cpu")
    with pytest.raises(ValueError, match="one size"):
        p.predict_batch_with_probs(_images(1, 20, 30) + _images(1, 30, 20))
    assert p.predict_batch_with_probs([]) == []
    one = _images(1, 12, 16)
    _assert_same(p.predict_batch_with_probs(one), [p.predict_with_probs(one[0])])


def test_half_precision_overflow_redoes_the_batch_in_float32(monkeypatch):
    model = SmallSeg(3)
    real = model.forward
    halves: list[bool] = []

    def forward(x):
        halves.append(torch.is_autocast_enabled("cpu"))
        y = real(x)
        return torch.full_like(y, float("nan")) if halves[-1] else y

    model.forward = forward
    p = Predictor(model, device="cpu")
    want = Predictor(SmallSeg(3), device="cpu")
    monkeypatch.setattr(p, "_amp_enabled", lambda: not p._amp_off)  # as on CUDA with amp on
    images = _images(4, 16, 20)
    with pytest.warns(RuntimeWarning, match="float32"):
        batch = p.predict_batch_with_probs(images)
    assert halves == [True, False]  # one check and one float32 redo for the whole batch
    assert all(np.isfinite(b.probs).all() for b in batch)
    _assert_same(batch, [want.predict_with_probs(img) for img in images])
    p.predict_batch_with_probs(images)
    assert halves == [True, False, False]


def test_out_of_memory_on_a_batch_predicts_one_image_at_a_time_then_smaller_batches():
    model = SmallSeg(3)
    real = model.forward

    def forward(x):
        if x.shape[0] > 2:  # room for two images at a time, no more
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x)

    model.forward = forward
    p = Predictor(model, device="cpu")
    images = _images(5, 16, 20)
    model.shapes.clear()
    with pytest.warns(RuntimeWarning, match="one at a time"):
        batch = p.predict_batch_with_probs(images)
    assert [s[0] for s in model.shapes] == [1] * 5  # the failed call never reached the recorder
    assert p.max_batch == 2
    want = [p.predict_with_probs(img) for img in images]
    _assert_same(batch, want)
    model.shapes.clear()
    _assert_same(p.predict_batch_with_probs(images), want)  # later batches: at most two images a call
    assert [s[0] for s in model.shapes] == [2, 2, 1]


def test_memory_bound_of_a_batch_is_n_times_the_per_image_terms():
    p = Predictor(SmallSeg(3), device="cpu")
    one, four = p.memory_bound(300, 400, cache_pixels=10_000), p.memory_bound(300, 400, cache_pixels=10_000, batch=4)
    workspace = 4 * p.tile_elements * 4 + 300 * 24
    assert four - workspace == 4 * (one - workspace)


def test_mapped_predictor_maps_every_result_of_a_batch():
    model = SmallSeg(4)
    cmap = ClassMap.by_name(["c0", "c1", "c2", "c3"], ["c2", "x", "c0"])
    p = MappedPredictor(Predictor(model, device="cpu"), cmap)
    images = _images(3, 18, 22)
    batch = p.predict_batch_with_probs(images)
    single = [p.predict_with_probs(img) for img in images]
    _assert_same(batch, single)
    assert all(b.probs.shape[0] == 3 for b in batch)
    assert set(np.unique(np.concatenate([b.labels.ravel() for b in batch]))) <= {0, 2, 255}


@pytest.mark.parametrize("crf", [False, True])
def test_prelabel_shard_batches_consecutive_same_size_images(tmp_path, monkeypatch, crf):
    """engine.prelabel groups consecutive images of one size (another size or an unreadable file ends a
    group) and hands over per image exactly what batch 1 hands over, with the CRF per image too."""
    from PIL import Image

    from engine import build_model, save_model
    from engine.prelabel import PrelabelConfig, _predict_shard

    torch.manual_seed(0)
    ckpt = save_model(build_model("deeplabv3_mobilenet_v2", num_classes=21), tmp_path / "m.safetensors")
    sizes = {"a0": (24, 32), "a1": (24, 32), "a2": (24, 32), "a3": (24, 32), "a4": (24, 32), "a5": None,
             "a6": (30, 20), "a7": (30, 20), "a8": (24, 32), "a9": (24, 32)}
    items = []
    for k, (name, size) in enumerate(sizes.items()):
        path = tmp_path / f"{name}.png"
        if size is None:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(_images(1, *size, seed=k)[0]).save(path)
        items.append((name, str(path)))
    calls: list[int] = []
    real = Predictor.predict_batch_with_probs

    def recording(self, images, **kw):
        calls.append(len(images))
        return real(self, images, **kw)

    monkeypatch.setattr(Predictor, "predict_batch_with_probs", recording)
    import engine.crf as crf_module
    devices: list = []
    real_refine = crf_module.refine

    def refine_on(*a, device=None, **kw):          # the CRF runs on the rank's own device
        devices.append(device)
        return real_refine(*a, device=device, **kw)
    monkeypatch.setattr(crf_module, "refine", refine_on)
    plan = {"items": items, "weights": str(ckpt), "model_id": "m"}
    results = {}
    for batch in (4, 1):
        got: list = []
        cfg = PrelabelConfig(tmp_path, str(ckpt), device="cpu", loader_workers=0, batch=batch,
                              crf=crf)
        _predict_shard(cfg, plan, 0, 1, got.append, lambda: False)
        results[batch] = got
    assert calls == [4, 2, 2]  # a0-a3; a4 alone (the broken a5 ends its group); a6-a7; a8-a9
    assert devices == ([torch.device("cpu")] * 18 if crf else [])
    assert [r.image_id for r in results[4]] == [r.image_id for r in results[1]] == list(sizes)
    for b4, b1 in zip(results[4], results[1]):
        assert (b4.message is None) == (b1.message is None) and b4.reason == b1.reason
        if b1.labels is not None:   # the rank made the cache file: its probabilities, float16
            assert b4.probs is None and b1.probs is None
            np.testing.assert_allclose(_decoded(b4.probs_file, tmp_path), _decoded(b1.probs_file, tmp_path),
                                       atol=2e-3)
            assert (b4.labels == b1.labels).mean() > 0.999
    assert results[4][5].message is not None and results[4][5].labels is None


def _decoded(data: bytes, tmp_path) -> np.ndarray:
    from engine.store.probcache import read_probs_file
    path = tmp_path / "decoded.npz"
    path.write_bytes(data)
    return read_probs_file(path).probs
