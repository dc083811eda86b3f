"""engine.click.graphs: what can be checked without a GPU (refilling the features in place; graphs off on
the CPU), plus the replay-equals-eager check that runs where CUDA is."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine.click import ClickPredictor, build_click_model
from engine.click.graphs import copy_into, graphs_enabled, refill


@dataclass
class _Side:
    rows: torch.Tensor
    hw: tuple[int, int]
    extra: torch.Tensor | None = None


def test_refill_copies_in_place_only_when_everything_matches():
    old = {"a": torch.zeros(2, 3), "side": _Side(torch.zeros(4), (2, 2)), "pair": (torch.zeros(1), torch.ones(2))}
    keep = old["a"]
    new = {"a": torch.full((2, 3), 5.0), "side": _Side(torch.arange(4.0), (2, 2)),
           "pair": (torch.tensor([7.0]), torch.tensor([8.0, 9.0]))}
    assert refill(old, new)
    assert old["a"] is keep and old["a"].eq(5).all() and old["side"].rows.tolist() == [0, 1, 2, 3]
    assert old["pair"][1].tolist() == [8, 9]
    bad = {"a": torch.full((2, 3), 1.0), "side": _Side(torch.zeros(5), (2, 2)), "pair": new["pair"]}
    assert not refill(old, bad)
    assert old["a"].eq(5).all()   # a mismatch anywhere: nothing copied, not even the parts that fit
    assert not refill(old, {**new, "side": _Side(torch.zeros(4), (3, 3))})
    assert not refill(None, new) and copy_into(torch.zeros(1), torch.ones(1))


def test_graphs_only_on_cuda_and_only_when_asked(monkeypatch):
    monkeypatch.delenv("DEEPLAB_GUI_CUDA_GRAPHS", raising=False)
    assert not graphs_enabled(torch.device("cpu")) and not graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("DEEPLAB_GUI_CUDA_GRAPHS", "1")
    assert graphs_enabled(torch.device("cuda")) and not graphs_enabled(torch.device("cpu"))
    torch.manual_seed(0)
    assert ClickPredictor(build_click_model("mobile_sam"), "cpu").graphs is None


def test_refill_works_on_inference_tensors_as_set_image_makes_them():
    with torch.inference_mode():
        old = {"f": torch.zeros(3)}
        new = {"f": torch.ones(3)}
    assert refill(old, new) and old["f"].tolist() == [1, 1, 1]   # called outside inference mode


def test_point_embedding_has_no_hidden_device_sync():
    """A CUDA graph cannot record a sync: no op of a click's decoding may need one (checked on the CPU by
    the ops dispatched: boolean-mask indexing and .item() do; torch.where does not)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(b in str(func) for b in ("nonzero", "_local_scalar_dense", "lift_fresh", "masked_select")):
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    for name in ("mobile_sam", "sam2.1_hiera_tiny"):
        torch.manual_seed(0)
        p = ClickPredictor(build_click_model(name), "cpu")
        p.set_image(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
        pts, lbl = torch.tensor([[[20.0, 30.0]]]), torch.tensor([[1]])
        box = torch.tensor([[5.0, 5.0, 50.0, 40.0]])
        p.predict([[20, 30]], [1])   # caches filled, as the graphs' warm-up does
        with Watch(), torch.inference_mode():
            for b in (None, box):
                low, _ = p.model.decode(p._features, pts, lbl, b, None, True, prepared=p._prepared)
                p.model.postprocess(low, p._input, p._original)
        assert seen == [], (name, seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_tiny"])
def test_replayed_clicks_equal_eager_ones(name, monkeypatch):
    torch.manual_seed(0)
    model = build_click_model(name)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    monkeypatch.setenv("DEEPLAB_GUI_CUDA_GRAPHS", "1")
    graphs = ClickPredictor(model, "cuda")
    monkeypatch.setenv("DEEPLAB_GUI_CUDA_GRAPHS", "0")
    eager = ClickPredictor(model, "cuda")
    assert graphs.graphs is not None and eager.graphs is None
    for img in images:
        graphs.set_image(img)
        eager.set_image(img)
        prev = None
        for n in range(1, 4):
            pts = rng.uniform(10, 110, (n, 2))
            lbl = rng.integers(0, 2, n)
            kw = dict(mask_input=prev, multimask=n == 1)
            a, b = graphs.predict(pts, lbl, **kw), eager.predict(pts, lbl, **kw)
            assert (a.masks == b.masks).all()
            np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-4)
            prev = a.low_res_logits[:1]
        a = graphs.predict(box=(5, 5, 90, 70))
        b = eager.predict(box=(5, 5, 90, 70))
        assert (a.masks == b.masks).all()
    assert graphs.graphs.failed is None and len(graphs.graphs) > 0
