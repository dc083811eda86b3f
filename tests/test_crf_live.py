"""engine.crf.LiveCRF / LiveCRFWorker: caching, preview then full, latest request wins, cancel."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.crf import DEEPLAB_V1, LiveCRF, LiveCRFWorker, refine
from engine.crf import live as live_mod
from engine.crf.synthetic import make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene(96, 128, 21, active_classes=4, seed=7)


def test_preview_then_full_matches_refine(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    results = list(session.run(DEEPLAB_V1))
    assert [r.stage for r in results] == ["preview", "full"]
    preview, full = results
    assert preview.scale < 1 and preview.probs.shape[1] * preview.probs.shape[2] <= 3100
    assert full.scale == 1.0 and full.probs.shape == scene.probs.shape
    assert preview.request_id == full.request_id and full.elapsed >= preview.elapsed
    expected = refine(scene.image, scene.probs, DEEPLAB_V1, backend="torch")
    np.testing.assert_allclose(full.probs, expected, atol=1e-5)
    # Class pruning kept the four classes that carry probability, nothing else.
    assert len(full.kept_classes) == 4
    # The preview is a coarse version of the same answer.
    assert preview.full_labels().shape == scene.mask.shape
    assert (preview.full_labels() == full.labels).mean() > 0.9
    assert preview.full_probs().shape == scene.probs.shape


def test_small_image_gets_only_the_full_answer(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=10**6)
    assert [r.stage for r in session.run(DEEPLAB_V1)] == ["full"]


def test_lattices_are_cached_per_widths(scene, monkeypatch):
    builds = []
    real_bilateral, real_gaussian = live_mod.dense.bilateral_kernel, live_mod.dense.gaussian_kernel
    monkeypatch.setattr(live_mod.dense, "bilateral_kernel",
                        lambda *a, **k: builds.append("bilateral") or real_bilateral(*a, **k))
    monkeypatch.setattr(live_mod.dense, "gaussian_kernel",
                        lambda *a, **k: builds.append("gaussian") or real_gaussian(*a, **k))
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    list(session.run(DEEPLAB_V1))
    assert sorted(builds) == ["bilateral", "bilateral", "gaussian", "gaussian"]  # preview + full
    builds.clear()
    list(session.run(DEEPLAB_V1.replace(bilateral_weight=7, gaussian_weight=1, iterations=4)))
    assert builds == []  # weights and iterations reuse both lattices
    list(session.run(DEEPLAB_V1.replace(gaussian_xy=2)))
    assert builds == ["gaussian", "gaussian"]  # one width moved: one kernel rebuilt per level


def test_newer_request_supersedes_older(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    old = session.submit(DEEPLAB_V1)
    new = session.submit(DEEPLAB_V1.replace(iterations=3))
    assert not session.is_current(old) and session.is_current(new)
    assert list(session.run(DEEPLAB_V1, request_id=old)) == []
    results = list(session.run(DEEPLAB_V1.replace(iterations=3), request_id=new))
    assert [r.stage for r in results] == ["preview", "full"]


def test_request_superseded_during_preview_skips_full(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    gen = session.run(DEEPLAB_V1)
    first = next(gen)
    assert first.stage == "preview"
    session.submit(DEEPLAB_V1.replace(iterations=2))  # arrives while the caller shows the preview
    assert list(gen) == []


def test_cancel_check_stops_work(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3  # allow the preview to start, then cancel during the iterations

    stages = [r.stage for r in session.run(DEEPLAB_V1, cancel=cancel)]
    assert "full" not in stages and len(calls) > 3


def test_zero_iterations_answer_with_the_input(scene):
    session = LiveCRF(scene.image, scene.probs)
    full = list(session.run(DEEPLAB_V1.replace(iterations=0)))[-1]
    np.testing.assert_allclose(full.probs, scene.probs, atol=1e-6)


def test_invalid_inputs_raise(scene):
    with pytest.raises(ValueError):
        LiveCRF(scene.image[:-1], scene.probs)
    session = LiveCRF(scene.image, scene.probs)
    with pytest.raises(ValueError):
        session.submit({"iterations": 3})


def test_worker_answers_the_latest_request(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    results, done = [], threading.Event()
    last = {"id": None}

    def on_result(result):
        results.append(result)
        if result.stage == "full" and result.request_id == last["id"]:
            done.set()

    worker = LiveCRFWorker(session, on_result)
    try:
        for k in range(6):  # a burst of slider moves: only the last must get a full answer
            last["id"] = worker.request(DEEPLAB_V1.replace(bilateral_xy=40 + 5 * k))
        assert done.wait(timeout=60), worker.errors
    finally:
        worker.close(timeout=30)
    assert worker.errors == []
    fulls = [r for r in results if r.stage == "full"]
    assert fulls[-1].params.bilateral_xy == 65 and fulls[-1].request_id == last["id"]
    expected = refine(scene.image, scene.probs, DEEPLAB_V1.replace(bilateral_xy=65), backend="torch")
    np.testing.assert_allclose(fulls[-1].probs, expected, atol=1e-5)


def test_a_new_preview_does_not_wait_behind_a_running_full_stage(scene, monkeypatch):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    release, full_started = threading.Event(), threading.Event()
    real_solve = session._solve

    def solve(level, params, stale, iterations, *rest):
        if level is session._full:  # hold every full-size stage until the test lets go
            full_started.set()
            assert release.wait(timeout=60)
        return real_solve(level, params, stale, iterations, *rest)

    monkeypatch.setattr(session, "_solve", solve)
    previews, second_preview = [], threading.Event()

    def on_result(result):
        if result.stage == "preview":
            previews.append(result.request_id)
            if len(previews) == 2:
                second_preview.set()

    worker = LiveCRFWorker(session, on_result)
    try:
        worker.request(DEEPLAB_V1)
        assert full_started.wait(timeout=60), worker.errors
        second = worker.request(DEEPLAB_V1.replace(bilateral_rgb=9))
        # The first request's full stage is still running (held), yet the new preview arrives.
        assert second_preview.wait(timeout=60), worker.errors
        assert previews[-1] == second and not release.is_set()
    finally:
        release.set()
        worker.close(timeout=30)
    assert worker.errors == []


def test_cache_respects_its_memory_budget(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000, cache_bytes=1)
    list(session.run(DEEPLAB_V1))
    assert len(session._cache) == 2  # only the kernels of the last level survive
    roomy = LiveCRF(scene.image, scene.probs, preview_pixels=3000)
    list(roomy.run(DEEPLAB_V1))
    assert len(roomy._cache) == 4 and all(k.nbytes > 0 for k in roomy._cache.values())


def test_preview_over_its_lattice_budget_falls_back_to_a_coarser_level(scene, monkeypatch):
    builds = []
    real_bilateral = live_mod.dense.bilateral_kernel
    monkeypatch.setattr(live_mod.dense, "bilateral_kernel",
                        lambda *a, **k: builds.append(a[0].shape[:2]) or real_bilateral(*a, **k))
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000, preview_seconds=None)
    sizes = [(lv.height, lv.width) for lv in session._previews]
    assert len(sizes) == 3 and sizes[0][0] * sizes[0][1] > sizes[1][0] * sizes[1][1] > sizes[2][0] * sizes[2][1]
    usual = next(session.run(DEEPLAB_V1, full=False))
    assert usual.scale == session._previews[0].scale  # the preset's lattices fit the finest level
    # Widths far below a preview pixel: every pixel's simplex is its own and the lattice is over budget.
    tiny = DEEPLAB_V1.replace(bilateral_xy=1.0, bilateral_rgb=0.5)
    builds.clear()
    preview = next(session.run(tiny, full=False))
    assert preview.scale < session._previews[0].scale and preview.iterations == 5
    assert builds[0] == sizes[0] and len(builds) >= 2  # tried the finest level first, then a coarser one
    # The verdict is remembered: a weight move goes straight to the level that fits.
    builds.clear()
    again = next(session.run(tiny.replace(bilateral_weight=6.0), full=False))
    assert again.scale == preview.scale and builds == []
    # The full-size answer ignores the budget and equals refine().
    full = session.refine(tiny)
    np.testing.assert_allclose(full, refine(scene.image, scene.probs, tiny, backend="torch"), atol=1e-4)


def test_preview_time_budget_stops_iterations_early(scene):
    session = LiveCRF(scene.image, scene.probs, preview_pixels=3000, preview_seconds=0.0)
    preview, full = list(session.run(DEEPLAB_V1))
    assert preview.iterations == 1 and full.iterations == DEEPLAB_V1.iterations
    one = LiveCRF(scene.image, scene.probs, preview_pixels=3000, preview_seconds=None, preview_iterations=1)
    np.testing.assert_allclose(preview.probs, next(one.run(DEEPLAB_V1, full=False)).probs, atol=1e-6)
    unhurried = LiveCRF(scene.image, scene.probs, preview_pixels=3000, preview_seconds=None)
    assert next(unhurried.run(DEEPLAB_V1, full=False)).iterations == live_mod.PREVIEW_ITERATIONS
