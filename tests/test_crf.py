"""engine.crf: parameters, input validation, refine() on both backends, agreement with pydensecrf."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.crf import CONVCRF, DEEPLAB_V1, DEEPLAB_V2, PRESETS, CRFParams, available_backends, refine
from engine.crf.synthetic import make_scene, mean_iou

HAS_PYDENSECRF = "pydensecrf" in available_backends()
needs_pydensecrf = pytest.mark.skipif(not HAS_PYDENSECRF, reason="pydensecrf not installed")


@pytest.fixture(scope="module")
def scene():
    return make_scene(72, 96, 5, seed=3)


# ----------------------------------------------------------------------------- params
def test_presets_match_the_papers():
    as_tuple = lambda p: (p.iterations, p.bilateral_weight, p.bilateral_xy, p.bilateral_rgb,  # noqa: E731
                          p.gaussian_weight, p.gaussian_xy)
    assert as_tuple(DEEPLAB_V1) == (10, 4, 49, 5, 3, 3)
    assert as_tuple(DEEPLAB_V2) == (10, 4, 67, 3, 3, 1)
    assert as_tuple(CONVCRF) == (10, 10, 80, 13, 3, 3)
    assert set(PRESETS.values()) == {DEEPLAB_V1, DEEPLAB_V2, CONVCRF}


@pytest.mark.parametrize("changes", [
    {"iterations": -1}, {"iterations": 51}, {"iterations": 2.5}, {"iterations": True},
    {"bilateral_xy": 0}, {"bilateral_rgb": -1.0}, {"gaussian_xy": float("nan")}, {"gaussian_xy": float("inf")},
    {"bilateral_weight": -0.5}, {"gaussian_weight": float("nan")}, {"bilateral_xy": "49"},
])
def test_invalid_params_raise_value_error(changes):
    with pytest.raises(ValueError):
        DEEPLAB_V1.replace(**changes)


def test_params_are_frozen_and_scaled_keeps_colour_width():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEEPLAB_V1.iterations = 3
    half = DEEPLAB_V1.scaled(0.5)
    assert (half.bilateral_xy, half.gaussian_xy, half.bilateral_rgb) == (24.5, 1.5, 5.0)
    assert CRFParams(iterations=0, bilateral_weight=0).iterations == 0


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("backend", ["torch", pytest.param("pydensecrf", marks=needs_pydensecrf)])
def test_zero_iterations_return_the_input(scene, backend):
    out = refine(scene.image, scene.probs, DEEPLAB_V1.replace(iterations=0), backend=backend)
    assert out.dtype == np.float32 and out is not scene.probs
    np.testing.assert_array_equal(out, scene.probs)


def _bad_probs(probs):
    nan = probs.copy()
    nan[0, 3, 4] = np.nan
    neg = probs.copy()
    neg[0, 0, 0], neg[1, 0, 0] = -0.2, neg[1, 0, 0] + 0.2 + neg[0, 0, 0]
    return {
        "nan": nan,
        "negative": neg,
        "not normalised": probs * 1.5,
        "logits": np.log(probs + 1e-6),
        "2d": probs[0],
        "4d": probs[None],
        "wrong size": probs[:, :-1],
        "transposed": np.ascontiguousarray(probs.transpose(1, 2, 0)),
        "integer": (probs > 0.5).astype(np.int64),
        "list": probs.tolist(),
    }


@pytest.mark.parametrize("case", list(_bad_probs(np.full((2, 8, 8), 0.5))))
def test_bad_probabilities_raise_value_error(scene, case):
    bad = _bad_probs(scene.probs)[case]
    with pytest.raises(ValueError):
        refine(scene.image, bad, DEEPLAB_V1, backend="torch")


@pytest.mark.parametrize("image_fn", [
    lambda im: im[:, :, :2], lambda im: im.astype(np.float32), lambda im: im[:-2], lambda im: im[..., 0],
])
def test_bad_images_raise_value_error(scene, image_fn):
    with pytest.raises(ValueError):
        refine(image_fn(scene.image), scene.probs, DEEPLAB_V1, backend="torch")


def test_unknown_backend_and_bad_params_raise(scene):
    with pytest.raises(ValueError, match="backend"):
        refine(scene.image, scene.probs, DEEPLAB_V1, backend="opencv")
    with pytest.raises(ValueError):
        refine(scene.image, scene.probs, {"iterations": 5}, backend="torch")


# ----------------------------------------------------------------------------- behaviour
def test_auto_backend_returns_normalised_probabilities(scene):
    out = refine(scene.image, scene.probs, DEEPLAB_V1.replace(iterations=3))
    assert out.shape == scene.probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert (out >= 0).all()


@needs_pydensecrf
@pytest.mark.parametrize("name", list(PRESETS))
def test_torch_agrees_with_pydensecrf_and_both_beat_the_unary(name):
    sc = make_scene(90, 120, 6, seed=11)
    params = PRESETS[name]
    ref = refine(sc.image, sc.probs, params, backend="pydensecrf")
    ours = refine(sc.image, sc.probs, params, backend="torch")
    agreement = (ref.argmax(0) == ours.argmax(0)).mean()
    assert agreement >= 0.99
    unary = mean_iou(sc.probs.argmax(0), sc.mask, 6)
    assert mean_iou(ref.argmax(0), sc.mask, 6) > unary + 0.05
    assert mean_iou(ours.argmax(0), sc.mask, 6) > unary + 0.05
    # Same lattice arithmetic: the probabilities themselves match closely, not just the labels.
    assert np.abs(ref - ours).max() < 1e-3


@needs_pydensecrf
def test_single_kernel_and_two_class_cases_agree():
    sc = make_scene(40, 56, 2, seed=5)
    for params in (DEEPLAB_V1.replace(gaussian_weight=0), DEEPLAB_V1.replace(bilateral_weight=0)):
        ref = refine(sc.image, sc.probs, params, backend="pydensecrf")
        ours = refine(sc.image, sc.probs, params, backend="torch")
        assert (ref.argmax(0) == ours.argmax(0)).mean() >= 0.99


@pytest.mark.parametrize("stop_at", [1, 2, 5, 14])
def test_cancel_stops_the_refine_between_its_steps(scene, stop_at):
    """``cancel`` is asked before the work, between the steps of the kernels' build and before each
    iteration; the first True returns None. Never True: the same answer as without it."""
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) >= stop_at
    assert refine(scene.image, scene.probs, DEEPLAB_V1, backend="torch", cancel=cancel) is None
    # (two kernels' builds may ask at once, from two threads: one more each at most)
    assert stop_at <= len(asked) <= stop_at + 1
    counted = []
    never = refine(scene.image, scene.probs, DEEPLAB_V1, backend="torch", cancel=lambda: counted.append(1) or False)
    np.testing.assert_array_equal(never, refine(scene.image, scene.probs, DEEPLAB_V1, backend="torch"))
    assert len(counted) > DEEPLAB_V1.iterations + 8   # the build's steps are asked too


def test_a_cancel_during_the_kernels_build_runs_no_iteration(scene, monkeypatch):
    from engine.crf import dense
    ran = []
    monkeypatch.setattr(dense, "mean_field", lambda *a, **k: ran.append(1))
    asked = []
    assert refine(scene.image, scene.probs, DEEPLAB_V1, backend="torch",
                  cancel=lambda: asked.append(1) or len(asked) >= 3) is None
    assert ran == []


def test_class_pruning_does_not_change_the_result():
    sc = make_scene(64, 80, 21, active_classes=3, seed=2)
    pruned = refine(sc.image, sc.probs, DEEPLAB_V1, backend="torch")
    exact = refine(sc.image, sc.probs, DEEPLAB_V1, backend="torch", prune_tolerance=0)
    np.testing.assert_array_equal(pruned.argmax(0), exact.argmax(0))
    np.testing.assert_allclose(pruned, exact, atol=1e-4)
    np.testing.assert_allclose(pruned.sum(0), 1.0, atol=1e-5)


def test_uniform_image_smooths_a_noisy_unary():
    # No edges at all: the CRF should remove isolated label flips from a noisy two-class unary.
    rng = np.random.default_rng(0)
    image = np.full((40, 40, 3), 128, np.uint8)
    p0 = np.clip(0.7 + rng.normal(0, 0.15, (40, 40)), 0.01, 0.99).astype(np.float32)
    probs = np.stack([p0, 1 - p0])
    out = refine(image, probs, DEEPLAB_V1, backend="torch")
    assert (probs.argmax(0) == 1).sum() > 20
    assert (out.argmax(0) == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(scene):
    cpu = refine(scene.image, scene.probs, DEEPLAB_V2, backend="torch", device="cpu")
    gpu = refine(scene.image, scene.probs, DEEPLAB_V2, backend="torch", device="cuda")
    assert (cpu.argmax(0) == gpu.argmax(0)).mean() >= 0.99


# ----------------------------------------------------------------------------- CPU speed paths
def _two_column_mean_field(logp, kernels, iterations):
    # The textbook form, both columns filtered: the reference for the one-channel two-class path.
    q = torch.softmax(logp, 1)
    for _ in range(iterations):
        logits = logp.clone()
        for kernel, weight in kernels:
            logits += kernel.apply(q.contiguous(), weight)
        q = torch.softmax(logits, 1)
    return q


def test_two_class_one_channel_path_matches_the_two_column_form():
    from engine.crf import dense
    from engine.crf.backends import torch_kernels

    sc = make_scene(48, 64, 2, seed=8)
    with torch.inference_mode():
        logp = dense.log_unary(torch.from_numpy(sc.probs))
        kernels = torch_kernels(torch.from_numpy(sc.image).float(), DEEPLAB_V1)
        ours = dense.mean_field(logp, kernels, 6)
        ref = _two_column_mean_field(logp, kernels, 6)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert torch.equal(ours.argmax(1), ref.argmax(1))


@pytest.fixture
def two_threads(monkeypatch):
    from engine.crf import workers

    monkeypatch.setattr(workers, "MIN_POINTS", 0)  # tiny test images take the worker path too
    monkeypatch.setattr(workers, "SPLIT_COLUMNS", True)  # several columns too (off by default)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield workers
    torch.set_num_threads(before)


@pytest.mark.parametrize("classes,active", [(2, 2), (5, 5), (21, 3), (3, 1)])
def test_worker_split_matches_the_single_thread_result(two_threads, monkeypatch, classes, active):
    sc = make_scene(40, 52, classes, active_classes=active, seed=classes)
    monkeypatch.setattr(two_threads, "ENABLED", False)
    plain = refine(sc.image, sc.probs, DEEPLAB_V1, backend="torch", device="cpu")   # the split is the CPU's
    monkeypatch.setattr(two_threads, "ENABLED", True)
    calls = []
    real = two_threads.run_all
    monkeypatch.setattr(two_threads, "run_all", lambda jobs: calls.append(len(jobs)) or real(jobs))
    split = refine(sc.image, sc.probs, DEEPLAB_V1, backend="torch", device="cpu")
    assert calls and all(n == 2 for n in calls)  # one hand-off of two jobs per iteration
    np.testing.assert_allclose(split, plain, atol=1e-5)
    np.testing.assert_array_equal(split.argmax(0), plain.argmax(0))
    # Starting the single-threaded workers leaves this thread's (and the process default) count alone.
    assert torch.get_num_threads() == 2


def test_worker_errors_reach_the_caller(two_threads):
    def boom():
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError, match="job failed"):
        two_threads.run_all([lambda: torch.zeros(1), boom])
    assert [float(t) for t in two_threads.run_all([lambda: torch.ones(1), lambda: torch.ones(1) * 2])] == [1, 2]


def test_concurrent_lattice_builds_equal_sequential_ones(two_threads):
    from engine.crf import dense

    sc = make_scene(36, 50, 3, seed=4)
    image = torch.from_numpy(sc.image).float()
    feats = [dense.gaussian_features(36, 50, 3.0, image.device), dense.bilateral_features(image, 20.0, 8.0)]
    together = dense.kernels_from_features(feats)
    torch.set_num_threads(1)  # the sequential path
    alone = dense.kernels_from_features(feats)
    x = torch.rand(36 * 50, 3)
    for a, b in zip(together, alone):
        assert a.lattice.n_vertices == b.lattice.n_vertices
        assert torch.equal(a.apply(x, 2.0), b.apply(x, 2.0))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_workers_restart_in_a_forked_child(two_threads):
    import os
    import signal

    two_threads.run_all([lambda: torch.zeros(1), lambda: torch.zeros(1)])  # started in the parent
    pid = os.fork()
    if pid == 0:  # child: must not wait forever on the parent's threads (the alarm ends a hang)
        ok = False
        try:
            signal.alarm(30)
            ok = [float(t) for t in two_threads.run_all([lambda: torch.ones(1), lambda: torch.ones(1)])] == [1, 1]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("backend", ["torch", "pydensecrf"])
def test_read_only_image_arrays_are_accepted(backend):
    # np.asarray(PIL image) is read-only; pydensecrf's binding used to refuse such buffers.
    pytest.importorskip("pydensecrf")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    image.setflags(write=False)
    probs = rng.random((2, 12, 16)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    out = refine(image, probs, CRFParams(iterations=2), backend=backend)
    assert out.shape == (2, 12, 16)


def test_refine_over_some_pixels_is_the_crf_of_those_pixels_and_leaves_the_others():
    """``where``: the CRF spans only those pixels (fully connected among them, at their places in the
    image): over the left half it is the CRF of the left half's crop; the right half keeps its input."""
    sc = make_scene(40, 56, 3, seed=7)
    left = np.zeros((40, 56), bool)
    left[:, :28] = True
    # (on the CPU, where both runs add in the same order: a GPU's sums differ in the last bits)
    got = refine(sc.image, sc.probs, DEEPLAB_V1, backend="torch", where=left, device="cpu")
    want = refine(np.ascontiguousarray(sc.image[:, :28]), np.ascontiguousarray(sc.probs[:, :, :28]), DEEPLAB_V1,
                  backend="torch", device="cpu")
    np.testing.assert_allclose(got[:, :, :28], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:, :, 28:], sc.probs[:, :, 28:].astype(np.float32))
    assert not np.allclose(got[:, :, :28], sc.probs[:, :, :28], atol=1e-3)
    nothing = refine(sc.image, sc.probs, DEEPLAB_V1, backend="torch", where=np.zeros((40, 56), bool))
    np.testing.assert_array_equal(nothing, sc.probs.astype(np.float32))
    with pytest.raises(ValueError, match="where must be"):
        refine(sc.image, sc.probs, DEEPLAB_V1, where=left[:, :20])
    with pytest.raises(ValueError, match="torch backend"):
        refine(sc.image, sc.probs, DEEPLAB_V1, backend="pydensecrf", where=left)
