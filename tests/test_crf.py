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
