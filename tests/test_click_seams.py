"""engine.click's seams with a toy click model: the loader's recognition and refusals, the predictor's
contract (validation, coordinates, embedding round trip). The real families have their own tests."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.checkpoints.limits import CheckpointError
from engine.click import (
    LOW_RES,
    ClickModel,
    ClickPredictor,
    ClickSpec,
    click_limit,
    detect_click_model,
    load_click_model,
    registry,
)


class Toy(ClickModel):
    """Encoder: a 1×1 conv over a 32×32 downscale; decoder: a disc around the first point, scored by
    the conv's mean; multimask gives three radii."""
    family = "toy"
    image_size = 64

    def __init__(self, name: str = "toy") -> None:
        super().__init__(name)
        self.conv = nn.Conv2d(3, 4, 1)
        self.calls = 0

    def preprocess(self, image):
        h, w = image.shape[:2]
        s = self.image_size / max(h, w)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        pad = torch.zeros(1, 3, self.image_size, self.image_size)
        pad[:, :, :x.shape[2], :x.shape[3]] = x
        return pad, (x.shape[2], x.shape[3])

    def encode(self, x):
        self.calls += 1
        return {"embed": self.conv(F.avg_pool2d(x, 2))}

    def transform_coords(self, xy, original_size, input_size):
        return (np.asarray(xy) * (input_size[1] / original_size[1])).astype(np.float32)

    def decode(self, features, points, labels, box, mask_input, multimask):
        yy, xx = torch.meshgrid(torch.arange(LOW_RES), torch.arange(LOW_RES), indexing="ij")
        scale = LOW_RES / self.image_size
        cx, cy = (points[0, 0] * scale) if points is not None else ((box[0, :2] + box[0, 2:]) / 2 * scale)
        radii = (8.0, 16.0, 24.0) if multimask else (16.0,)
        d = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
        low = torch.stack([r - d for r in radii])[None]
        if mask_input is not None:
            low = low + 0 * mask_input
        score = features["embed"].mean().expand(1, len(radii))
        return low, score

    def postprocess(self, low, input_size, original_size):
        up = F.interpolate(low, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        up = up[..., :input_size[0], :input_size[1]]
        return F.interpolate(up, size=original_size, mode="bilinear", align_corners=False)


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_FAMILIES", ())
    registry.expected_click_shapes.cache_clear()
    registry.largest_click_bytes.cache_clear()
    registry.register_click_model(ClickSpec("toy", "toy", Toy, unused_prefixes=("video.",)))
    yield
    registry.expected_click_shapes.cache_clear()
    registry.largest_click_bytes.cache_clear()


def _image(h=48, w=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_loader_recognises_the_layout_skips_the_named_unused_keys_and_names_what_is_wrong(toy_registry, tmp_path):
    sd = Toy().state_dict()
    path = tmp_path / "toy.pt"
    torch.save({"model": {**sd, "video.memory": torch.zeros(2)}}, path)   # SAM 2.1's wrapper and extra keys
    model = load_click_model(path)
    assert isinstance(model, Toy) and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    torch.save({k: v for k, v in sd.items() if k != "conv.bias"}, path)
    with pytest.raises(CheckpointError, match=r"toy\.pt.*1 missing: conv\.bias"):
        load_click_model(path)
    torch.save({**sd, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"unexpected: extra\.weight"):
        load_click_model(path)
    torch.save({**sd, "conv.weight": torch.zeros(5, 3, 1, 1)}, path)
    with pytest.raises(CheckpointError, match=r"wrong shape: conv\.weight \(5, 3, 1, 1\)"):
        load_click_model(path)
    with pytest.raises(ValueError, match="unknown click model 'sam_vit_x'"):
        detect_click_model(sd, path, "sam_vit_x")


def test_loader_refuses_nan_code_and_oversized_files(toy_registry, tmp_path):
    sd = Toy().state_dict()
    bad = dict(sd)
    bad["conv.weight"] = torch.full_like(sd["conv.weight"], float("nan"))
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN"):
        load_click_model(tmp_path / "nan.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError):
        load_click_model(tmp_path / "evil.pt")
    assert click_limit() == 4 * 4 * (4 * 3 + 4) + (64 << 20)   # four times the toy's bytes plus the slack


def test_predictor_validates_prompts_and_images(toy_registry):
    p = ClickPredictor(Toy())
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(points=[[1, 2]], labels=[1])
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        p.set_image(np.zeros((4, 4), np.uint8))
    p.set_image(_image())
    for kwargs, message in (({"points": [[1, 2, 3]], "labels": [1]}, "N×2"),
                            ({"points": [[np.nan, 2]], "labels": [1]}, "finite"),
                            ({"points": [[1, 2]], "labels": [2]}, "1 \\(positive\\) or 0"),
                            ({"points": [[1, 2], [3, 4]], "labels": [1]}, "one 1"),
                            ({"box": [1, 2, 3]}, "x0, y0, x1, y1"),
                            ({}, "at least one point or a box"),
                            ({"points": [[1, 2]], "labels": [1], "mask_input": np.zeros((64, 64))}, "1×256×256")):
        with pytest.raises(ValueError, match=message):
            p.predict(**kwargs)
    with pytest.raises(TypeError, match="ClickModel"):
        ClickPredictor(nn.Linear(2, 2))


def test_prediction_shapes_and_an_embedding_round_trip_without_the_encoder(toy_registry):
    model = Toy()
    p = ClickPredictor(model)
    image = _image(48, 64)
    p.set_image(image)
    assert model.calls == 1
    out = p.predict(points=[[40, 20]], labels=[1])
    assert out.masks.shape == (3, 48, 64) and out.masks.dtype == bool
    assert out.scores.shape == (3,) and out.low_res_logits.shape == (3, LOW_RES, LOW_RES)
    assert out.masks[0, 20, 40] and not out.masks[0, 0, 0]           # the disc sits on the click
    assert out.masks[0].sum() < out.masks[1].sum() < out.masks[2].sum()
    single = p.predict(points=[[40, 20]], labels=[1], multimask=False, mask_input=out.low_res_logits[:1])
    assert single.masks.shape == (1, 48, 64)
    emb = p.get_embedding()
    assert emb.original_size == (48, 64) and emb.input_size == (48, 64) and emb.model == "toy"
    q = ClickPredictor(model)
    q.set_embedding(emb)
    again = q.predict(points=[[40, 20]], labels=[1])
    assert model.calls == 1                                           # no second encoder run
    assert np.array_equal(again.masks, out.masks) and np.allclose(again.scores, out.scores)
    other = Toy("other")
    with pytest.raises(ValueError, match="computed by toy"):
        ClickPredictor(other).set_embedding(emb)
    boxed = p.predict(box=[30, 10, 50, 30])
    assert boxed.masks[0, 20, 40]
