"""engine.click.graphs: what can be checked without a GPU (refilling the features in place; graphs off on
the CPU), plus the replay-equals-eager check that runs where CUDA is."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine.click import ClickPredictor, build_click_model
from engine.click.graphs import DecoderGraphs, copy_into, graphs_enabled, graphs_for, refill


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


def test_graphs_on_cuda_unless_turned_off(monkeypatch):
    monkeypatch.delenv("DEEPLAB_GUI_CUDA_GRAPHS", raising=False)
    assert graphs_enabled(torch.device("cuda")) and not graphs_enabled(torch.device("cpu"))
    monkeypatch.setenv("DEEPLAB_GUI_CUDA_GRAPHS", "0")
    assert not graphs_enabled(torch.device("cuda")) and not graphs_enabled(torch.device("cpu"))
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


class _FakeGraph:
    """What a CUDA graph does, on a CPU: a replay recomputes the recorded call from the tensors it was
    recorded on (the bank's) into the same output tensors."""

    def __init__(self, call, out):
        self.call, self.out = call, out

    def replay(self):
        assert copy_into(self.out, self.call())


def _cpu_graphs(monkeypatch):
    monkeypatch.setattr(DecoderGraphs, "_capture", lambda self, call: (lambda out: (_FakeGraph(call, out), out))(
        call()))


def _with_graphs(model, image):
    p = ClickPredictor(model, "cpu")
    p.graphs = graphs_for(p.model, p.device)   # as on CUDA (graphs_enabled is for CUDA only)
    p.set_image(image)
    return p


def test_every_predictor_of_a_model_replays_the_same_graphs_with_its_own_image(monkeypatch):
    """The app makes a predictor per image: a signature recorded on one image replays on the next, of
    any size, and each replay reads the image of the predictor that asks (the bank copies it in)."""
    _cpu_graphs(monkeypatch)
    torch.manual_seed(0)
    model = build_click_model("mobile_sam")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((120, 160), (90, 70), (120, 160))]
    replaying = [_with_graphs(model, im) for im in images]
    eager = []
    for im in images:
        e = ClickPredictor(model, "cpu")
        e.set_image(im)
        eager.append(e)
    bank = replaying[0].graphs
    assert all(p.graphs is bank for p in replaying) and graphs_for(model, torch.device("cpu")) is bank
    prompts = [dict(points=[[30, 40]], labels=[1]), dict(points=[[30, 40], [10, 60]], labels=[1, 0]),
               dict(points=[[30, 40]], labels=[1])]
    kept = []
    for round_ in range(2):
        for p, e in zip(replaying, eager):
            for kw in prompts:
                a, b = p.predict(**kw), e.predict(**kw)
                assert a.masks.shape == b.masks.shape and (a.masks == b.masks).all()
                np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-4)
                np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
                kept.append((a, a.low_res_logits.copy(), b))
    assert bank.recorded == 2 and len(bank) == 2 and bank.failed is None   # two signatures, whatever the image
    for a, low, b in kept:   # later replays did not write into earlier predictions
        np.testing.assert_array_equal(a.low_res_logits, low)
    # A new embedding in a predictor (set_image again) is copied in too.
    replaying[0].set_image(images[1])
    a, b = replaying[0].predict(**prompts[0]), eager[1].predict(**prompts[0])
    assert (a.masks == b.masks).all() and bank.recorded == 2
    # A large photo's preview size: masks from the same replayed logits at that size, full size later.
    a = replaying[2].predict([[50, 60]], [1], size=(60, 80))
    b = eager[2].predict([[50, 60]], [1], size=(60, 80))
    replaying[1].predict([[5, 5]], [1])
    assert (a.masks == b.masks).all() and all((a.full(k) == b.full(k)).all() for k in range(3))


def test_images_of_another_structure_are_recorded_afresh_and_of_the_same_one_copied_in(monkeypatch):
    """A graph reads the tensors it was recorded on: an image whose tensors differ in shape cannot be
    copied into them (the graphs are dropped and recorded again on a copy of it); one that matches is."""
    _cpu_graphs(monkeypatch)
    bank = DecoderGraphs(torch.device("cpu"))

    def fn(image, x):
        return image["a"].sum() * x
    one = torch.ones(1)
    assert float(bank.run("k", fn, {"a": torch.ones(2, 2)}, object(), [one])) == 4
    assert float(bank.run("k", fn, {"a": torch.ones(3, 3)}, object(), [one])) == 9
    assert bank.recorded == 2
    third = {"a": torch.full((3, 3), 2.0)}
    assert float(bank.run("k", fn, third, object(), [one])) == 18 and bank.recorded == 2
    third["a"] += 1   # a holder stands for its tensors as they are: the bank's copy is not refreshed
    holder = object()
    assert float(bank.run("k", fn, third, holder, [one])) == 27
    assert float(bank.run("k", fn, third, holder, [2 * one])) == 54 and bank.recorded == 2


def test_running_out_of_gpu_memory_decodes_that_click_eagerly_and_keeps_the_graphs(monkeypatch):
    _cpu_graphs(monkeypatch)
    real = DecoderGraphs._capture
    bank = DecoderGraphs(torch.device("cpu"))
    fn = lambda image, x: image * x   # noqa: E731
    assert float(bank.run("a", fn, torch.ones(1), "h", [torch.ones(1)])) == 1

    def oom(self, call):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    monkeypatch.setattr(DecoderGraphs, "_capture", oom)
    assert bank.run("b", fn, torch.ones(1), "h", [torch.ones(1)]) is None
    assert bank.failed is None and len(bank) == 1
    monkeypatch.setattr(DecoderGraphs, "_capture", real)
    _cpu_graphs(monkeypatch)
    assert float(bank.run("b", fn, torch.full((1,), 3.0), "h2", [torch.ones(1)])) == 3 and len(bank) == 2


def test_a_failed_recording_leaves_every_predictor_of_the_model_decoding_eagerly(monkeypatch, caplog):
    def broken(self, call):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(DecoderGraphs, "_capture", broken)
    torch.manual_seed(0)
    model = build_click_model("mobile_sam")
    image = np.random.default_rng(2).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    p, q, e = _with_graphs(model, image), _with_graphs(model, image), ClickPredictor(model, "cpu")
    e.set_image(image)
    for pred in (p, q):
        a, b = pred.predict([[20, 30]], [1]), e.predict([[20, 30]], [1])
        assert (a.masks == b.masks).all()
    assert "not permitted" in p.graphs.failed and q.graphs is p.graphs and len(p.graphs) == 0
    assert sum("CUDA graphs disabled" in r.getMessage() for r in caplog.records) == 1


def test_graph_banks_go_with_their_model():
    import gc
    import weakref
    torch.manual_seed(0)
    model = build_click_model("mobile_sam")
    first = graphs_for(model, torch.device("cpu"))
    assert graphs_for(model, "cpu") is first and graphs_for(model, torch.device("meta")) is not first
    model.double()   # weights moved: graphs recorded on the old ones must not replay
    bank = weakref.ref(graphs_for(model, "cpu"))
    assert bank() is not first and graphs_for(model, "cpu") is bank()
    del first
    del model
    gc.collect()
    assert bank() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_tiny"])
def test_replayed_clicks_equal_eager_ones(name, monkeypatch):
    torch.manual_seed(0)
    model = build_click_model(name)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((120, 160), (90, 200), (120, 160))]
    for img in images:
        # A predictor per image, as the app makes them: all of them replay the model's graphs.
        monkeypatch.delenv("DEEPLAB_GUI_CUDA_GRAPHS", raising=False)
        graphs = ClickPredictor(model, "cuda")   # the default
        monkeypatch.setenv("DEEPLAB_GUI_CUDA_GRAPHS", "0")
        eager = ClickPredictor(model, "cuda")
        assert graphs.graphs is not None and eager.graphs is None
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
        # A large photo's preview size, its full-size masks read after the next replay overwrote the
        # graph's outputs (the prediction keeps its own copy of the logits).
        a = graphs.predict([[40, 50]], [1], size=(60, 80))
        b = eager.predict([[40, 50]], [1], size=(60, 80))
        assert a.masks.shape == (3, 60, 80) and (a.masks == b.masks).all()
        graphs.predict([[100, 20]], [1], size=(60, 80))
        for k in range(3):
            assert (a.full(k) == b.full(k)).all()
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    # Signatures: 1, 2, 3 points (the last two with a mask prompt), a box, a point with all three masks
    # (the same as the first): recorded once for all three images.
    assert graphs.graphs.failed is None and graphs.graphs.recorded == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_graphs_record_while_another_thread_uses_the_gpu(monkeypatch):
    """In the app the DeepLab model, the CRF or another click model may run on the GPU in other threads
    while a click records its graph: neither side may fail, and replays still equal eager calls."""
    import threading
    monkeypatch.delenv("DEEPLAB_GUI_CUDA_GRAPHS", raising=False)
    torch.manual_seed(0)
    model, other = build_click_model("mobile_sam"), build_click_model("mobile_sam")
    rng = np.random.default_rng(3)
    img, img2 = (rng.integers(0, 256, (100, 140, 3), dtype=np.uint8) for _ in range(2))
    p, e = ClickPredictor(model, "cuda"), ClickPredictor(model, "cuda")
    e.graphs = None
    p.set_image(img)
    e.set_image(img)
    stop, errors, rounds = threading.Event(), [], [0]

    def busy():
        q = ClickPredictor(other, "cuda")
        try:
            while not stop.is_set():
                q.set_image(img2)
                x = torch.randn(1500 + rounds[0] % 7, 1500, device="cuda")   # new sizes: new allocations
                float((x @ x.T).sum())
                rounds[0] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    t = threading.Thread(target=busy)
    t.start()
    try:
        prev = None
        for n in range(1, 7):
            pts, lbl = rng.uniform(5, 95, (n, 2)), rng.integers(0, 2, n)
            kw = dict(mask_input=prev, multimask=n == 1)
            a, b = p.predict(pts, lbl, **kw), e.predict(pts, lbl, **kw)
            np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-4)
            prev = a.low_res_logits[:1]
    finally:
        stop.set()
        t.join()
    assert not errors and rounds[0] > 0
    assert p.graphs.failed is None and p.graphs.recorded == 6
