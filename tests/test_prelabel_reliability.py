"""Pre-labelling into the annotation store: bounded memory, images too small to segment, SIGKILL.

The store keeps each image's probabilities on a grid of at most ``DEEPLAB_GUI_PROBS_MAX_PIXELS``
pixels (4 Mi by default); these tests lower the cap so a 192×256 image stands for a huge one.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_gui.cli.parser import main
from engine import AnnotationStore, ImageTooSmallError, Predictor, Status, build_model, save_model
from engine.probgrid import PROBS_MAX_PIXELS_ENV, crop_at, probs_grid, resize_probs
from engine.store.probcache import ImageSignature, read_probs_file, save_probs

ROOT = Path(__file__).resolve().parents[1]
CAP = 500  # pixels of cached probabilities in these tests
H, W = 192, 256  # "huge": 49152 pixels, about a hundred times the cap


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour regions (not noise), so a random-weight model still predicts several classes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(5):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        img[y:y + h // 2, x:x + w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


@pytest.fixture(scope="module")
def model():
    import torch
    torch.manual_seed(0)
    return build_model("deeplabv3_mobilenet_v2", num_classes=21)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model):
    return save_model(model, tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture
def capped(monkeypatch):
    monkeypatch.setenv(PROBS_MAX_PIXELS_ENV, str(CAP))
    return CAP


# ------------------------------------------------------------------------------------- bounded memory
def test_prelabel_into_the_store_keeps_probabilities_on_the_capped_grid(tmp_path, model, ckpt, capped, monkeypatch):
    from deeplab_gui.cli.store import prelabel_into_store

    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = _photo(H, W)
    Image.fromarray(rgb).save(folder / "big.png")
    Image.fromarray(_photo(16, 20, 1)).save(folder / "small.png")  # within the cap: its own size
    predictor = Predictor(model, device="cpu")
    handed = []
    real_save = AnnotationStore.save_probs

    def spy(self, image_id, probs, **kw):
        handed.append(tuple(probs.shape))
        return real_save(self, image_id, probs, **kw)
    # Warm up imports and lazily built kernels, so the traced peak below is the run's own arrays; and
    # skip hashing the checkpoint (1 MiB reads), which is not what is measured here.
    warm = tmp_path / "warm"
    warm.mkdir()
    Image.fromarray(_photo(40, 40)).save(warm / "w.png")
    prelabel_into_store(warm, predictor, None, checkpoint=ckpt, recursive=False, overwrite=False)
    monkeypatch.setattr("engine.checkpoint_id", lambda checkpoint: "m")
    monkeypatch.setattr(AnnotationStore, "save_probs", spy)
    tracemalloc.start()
    try:
        prelabel_into_store(folder, predictor, None, checkpoint=ckpt, recursive=False, overwrite=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grid = probs_grid(H, W, CAP)
    assert grid[0] * grid[1] <= CAP and sorted(handed) == sorted([(21, *grid), (21, 16, 20)])
    with AnnotationStore.open(folder) as st:
        assert st.status("big.png") is Status.PRELABELED
        mask = st.load_mask("big.png")
        assert mask.shape == (H, W)  # the mask is full size, and is exactly the banded prediction
        np.testing.assert_array_equal(mask, predictor.predict_labels(rgb))
        cached = st.load_probs("big.png")
        assert cached.probs.shape == (21, *grid)
        np.testing.assert_allclose(cached.probs.sum(0), 1.0, atol=2e-3)
        assert st.load_probs("small.png").probs.shape == (21, 16, 20)
    # Full-size float32 probabilities of the big image alone would be 21×H×W×4 = 4 MB; the whole run
    # (image, labels, PNG and cache buffers) stays far below that.
    assert peak < 21 * H * W * 4 / 3, peak


def test_prelabel_with_the_crf_refines_on_the_capped_grid(tmp_path, ckpt, capped):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_photo(H, W)).save(folder / "big.png")
    assert main(["prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu", "--crf"]) == 0
    with AnnotationStore.open(folder) as st:
        mask, cached = st.load_mask("big.png"), st.load_probs("big.png")
    grid = probs_grid(H, W, CAP)
    assert mask.shape == (H, W) and cached.probs.shape == (21, *grid)
    # The mask is the refined grid enlarged, so it agrees with the cached (refined) probabilities.
    assert (mask == resize_probs(cached.probs, (H, W)).argmax(0)).mean() > 0.99


def test_prelabel_out_with_the_crf_refines_on_the_capped_grid(tmp_path, ckpt, capped, monkeypatch):
    import engine.crf
    folder, out = tmp_path / "imgs", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(_photo(H, W)).save(folder / "big.png")
    shapes = []
    real = engine.crf.refine
    monkeypatch.setattr(engine.crf, "refine", lambda img, probs, params, **kw: shapes.append(probs.shape)
                        or real(img, probs, params, **kw))
    assert main(["prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu", "--crf",
                 "--out", str(out)]) == 0
    assert shapes == [(21, *probs_grid(H, W, CAP))]
    with Image.open(out / "big.png") as im:
        assert im.size == (W, H)


def test_a_cpu_crf_refines_a_grid_over_its_budget_at_a_reduced_size(model, capped, monkeypatch):
    """On a CPU the pre-label's CRF sees at most CRF_MAX_PIXELS_CPU pixels: a larger grid is reduced
    for it and its result enlarged back to the grid (the labels follow it); a GPU's budget is the grid."""
    import engine.crf
    import engine.prelabel_store as ps
    monkeypatch.setattr(ps, "CRF_MAX_PIXELS_CPU", 120)
    seen = []
    monkeypatch.setattr(engine.crf, "refine", lambda img, probs, params, **kw: seen.append((img.shape, probs.shape,
                                                                                            params)) or probs)
    from functools import partial
    predictor = Predictor(model, device="cpu")
    labels, refined = ps.predict_for_store(predictor, _photo(H, W), partial(engine.crf.refine))
    grid = probs_grid(H, W, CAP)
    (img, probs, params), = seen
    assert probs[1] * probs[2] <= 120 and img[:2] == probs[1:]
    assert params.bilateral_xy < engine.crf.CRFParams().bilateral_xy
    assert refined.shape == (21, *grid) and labels.shape == (H, W)
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    assert (labels == resize_probs(refined, (H, W)).argmax(0)).mean() > 0.99
    seen.clear()
    ps.predict_for_store(predictor, _photo(H, W), partial(engine.crf.refine), crf_max_pixels=0)   # no budget
    assert seen[0][1] == (21, *grid)


def test_the_app_pre_label_path_hands_on_capped_probabilities(tmp_path, model, capped):
    from deeplab_gui.state.models import predict_batch, predict_one

    predictor = Predictor(model, device="cpu")
    rgb = _photo(H, W)
    labels, probs = predict_one(predictor, rgb)
    grid = probs_grid(H, W, CAP)
    assert labels.shape == (H, W) and probs.shape == (21, *grid)
    np.testing.assert_array_equal(labels, predictor.predict_labels(rgb))

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rgb).save(folder / name)
    with AnnotationStore.open(folder) as st:
        shown = []
        out = predict_batch(predictor, st, ["a.png", "b.png"], "m", ["a.png"],
                            progress=lambda d, t: None, cancel=lambda: False,
                            emit=lambda v: shown.append((v[0], v[1].shape, v[2].shape)))
        assert out["saved"] == 2 and out["failed"] == 0
        assert shown == [("a.png", (H, W), (21, *grid))]  # the shown image goes to the UI thread
        assert st.status("b.png") is Status.PRELABELED and st.load_mask("b.png").shape == (H, W)
        assert st.load_probs("b.png", "m").probs.shape == (21, *grid)


def test_readers_of_the_cache_work_from_the_capped_grid(tmp_path, capped):
    from deeplab_gui.state.crf_lanes import ScaledLiveCRF, build_live
    from deeplab_gui.state.session_io import derived, load_image

    rng = np.random.default_rng(3)
    grid = probs_grid(H, W, CAP)
    probs = rng.random((4, *grid)).astype(np.float32)
    probs /= probs.sum(0)
    full = resize_probs(probs, (H, W))  # what a full-size map would be, for comparison only
    # Raw labels and uncertainty at the image's size, from the grid.
    raw, unc = derived(probs, (H, W))
    assert raw.shape == unc.shape == (H, W)
    np.testing.assert_array_equal(raw, full.argmax(0))
    # The CRF-snap brush asks for a box at full-size coordinates.
    np.testing.assert_allclose(crop_at(probs, (H, W), (10, 20, 50, 90)), full[:, 10:50, 20:90], atol=1e-6)
    # The live CRF runs at the grid, never at the image's size.
    live = build_live(_photo(H, W), probs)
    assert isinstance(live, ScaledLiveCRF) and (live.height, live.width) == grid
    # Loading an image for the app keeps a capped entry and derives full-size maps from it.
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_photo(H, W)).save(folder / "big.png")
    with AnnotationStore.open(folder) as st:
        st.save_probs("big.png", probs, model_id="m")
        loaded = load_image(st, "big.png", "m", None, None, cancel=lambda: False)
    assert loaded.probs.shape == (4, *grid) and loaded.raw.shape == (H, W) and loaded.unc.shape == (H, W)
    # An entry written at full size (an older version, or a caller that ignored the cap) is shrunk
    # to the grid on write and on read.
    path = tmp_path / "p.npz"
    save_probs(path, full, model_id="m", signature=ImageSignature(1, 1), max_pixels=H * W)
    assert read_probs_file(path, max_pixels=H * W).probs.shape == (4, H, W)
    assert read_probs_file(path).probs.shape == (4, *grid)
    save_probs(path, full, model_id="m", signature=ImageSignature(1, 1))
    assert np.load(path)["probs"].shape == (4, *grid)


def test_the_app_shows_capped_probabilities_at_the_image_size(qtbot, tmp_path, sessions, capped):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_photo(H, W)).save(folder / "big.png")
    s = sessions(folder)
    qtbot.waitUntil(lambda: s.image is not None, timeout=20_000)
    probs = np.random.default_rng(0).random((21, *probs_grid(H, W, CAP))).astype(np.float32)
    probs /= probs.sum(0)
    with qtbot.waitSignal(s.probs_changed, timeout=20_000):
        s.set_probs("big.png", probs)
    assert s.probs is probs and s.raw_labels.shape == (H, W) and s.uncertainty.shape == (H, W)
    assert s.store.load_probs("big.png", s.model_id or "").probs.shape == probs.shape


# ------------------------------------------------------------------------------ images too small
@pytest.mark.parametrize("shape", [(1, 1), (1, 500), (3, 3), (500, 2)])
def test_the_predictor_refuses_degenerate_images_in_one_line(model, tmp_path, shape):
    p = Predictor(model, device="cpu")
    with pytest.raises(ImageTooSmallError, match=rf"image is {shape[1]}x{shape[0]} pixels, too small"):
        p.predict_labels(np.zeros((*shape, 3), np.uint8))
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(path)
    with pytest.raises(ImageTooSmallError) as err:
        p.predict_with_probs(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_small_images_are_enlarged_for_the_network_and_come_back_at_their_size(model):
    p = Predictor(model, device="cpu")
    for shape in [(4, 4), (20, 20), (5, 300), (300, 6)]:
        assert min(p.inference_size(*shape)) >= 16
        pred = p.predict_with_probs(_photo(*shape))
        assert pred.labels.shape == shape and pred.probs.shape == (21, *shape)
    with pytest.raises(ImageTooSmallError, match="too thin"):
        p.check_image_size(4, 20_000)  # enlarged to 16 rows it would be 80,000 columns


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, shape in {"ok.png": (24, 32), "thumb.png": (20, 20), "strip.png": (1, 500),
                        "dot.png": (1, 1), "icon.png": (3, 3)}.items():
        Image.fromarray(_photo(*shape) if min(shape) > 3 else np.zeros((*shape, 3), np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("out", [False, True])
def test_prelabel_names_each_image_too_small_in_one_line(tiny_folder, tmp_path, ckpt, capsys, out):
    argv = ["prelabel", str(tiny_folder), "--weights", str(ckpt), "--device", "cpu"]
    if out:
        argv += ["--out", str(tmp_path / "masks")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "padded input" not in err and "Traceback" not in err
    for name, size in [("strip.png", "500x1"), ("dot.png", "1x1"), ("icon.png", "3x3")]:
        (line,) = [ln for ln in err.splitlines() if name in ln]
        assert f"image is {size} pixels, too small to segment" in line, line
    if out:
        assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["ok.png", "thumb.png"]
        return
    with AnnotationStore.open(tiny_folder) as st:
        assert st.status("thumb.png") is Status.PRELABELED and st.load_mask("thumb.png").shape == (20, 20)
        assert st.status("strip.png") is Status.UNLABELED and "too small" in st.error("strip.png")
        assert not st.has_mask("strip.png")


# ------------------------------------------------------------------------------------------- SIGKILL
_KILL_IDS = [f"img{i:02d}.png" for i in range(10)]
_PERSON = {"img03.png": Status.EDITED, "img07.png": Status.REVIEWED}


def _complete_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        im.load()  # a torn PNG fails here
        assert im.mode == "P" and im.size == (shape[1], shape[0]), (path, im.mode, im.size)
        return np.array(im)


def _check_store(folder: Path, drawn: dict[str, np.ndarray], shape: tuple[int, int]) -> dict[str, Status]:
    """Opened as the next run would: every mask on disk is complete and has its status, unlabeled
    images have none, and every person's mask is as they left it."""
    with AnnotationStore.open(folder) as st:
        statuses = {i: st.status(i) for i in _KILL_IDS}
        for image_id, status in statuses.items():
            path = st.mask_path(image_id)
            if image_id in drawn:
                assert status is _PERSON[image_id], (image_id, status)
                np.testing.assert_array_equal(_complete_mask(path, shape), drawn[image_id])
            elif status is Status.PRELABELED:
                # The status is committed before the mask: a kill in between leaves no mask (the next
                # run redoes the image); a mask, when there is one, is complete.
                if path.exists():
                    assert _complete_mask(path, shape).max() < 21
            else:
                # So "unlabeled" means no mask at all: a mask never exists without its status.
                assert status is Status.UNLABELED and not path.exists(), (image_id, status)
        assert not [p for p in st.root.rglob("*.tmp")]
    return statuses


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sigkill_during_prelabel_leaves_a_consistent_store(tmp_path, ckpt):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shape = (240, 320)  # big enough that a run takes a while between kills
    for k, image_id in enumerate(_KILL_IDS):
        Image.fromarray(_photo(*shape, k)).save(folder / image_id)
    drawn = {}
    with AnnotationStore.open(folder) as st:
        for k, (image_id, status) in enumerate(_PERSON.items()):
            drawn[image_id] = np.full(shape, 5 + k, np.uint8)
            drawn[image_id][:10] = 255
            st.save_mask(image_id, drawn[image_id], status=status)
    argv = [sys.executable, "-m", "deeplab_gui", "prelabel", str(folder), "--weights", str(ckpt),
            "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    rng = random.Random(7)
    masks = folder / ".deeplab-gui" / "masks"
    killed_mid_run = 0
    for _ in range(4):
        start = time.time_ns()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for this run's first mask, then let it go on for a random while before the kill.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not any(
                p.stat().st_mtime_ns >= start for p in masks.glob("*.png") if p.name[:-4] not in drawn):
            try:
                proc.wait(0.005)  # returns at once if the run ended; else look for its first mask again
            except subprocess.TimeoutExpired:
                pass
        time.sleep(rng.uniform(0.0, 0.6))
        killed_mid_run += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        _check_store(folder, drawn, shape)
    assert killed_mid_run >= 3, "the runs ended before the kills: the test proved nothing"
    # A rerun completes and pre-labels every image nobody drew on.
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = _check_store(folder, drawn, shape)
    for image_id in _KILL_IDS:
        if image_id not in drawn:
            assert statuses[image_id] is Status.PRELABELED, (image_id, statuses[image_id])


def test_the_app_names_the_image_too_small_to_segment(model):
    from deeplab_gui.state.models import predict_one
    with pytest.raises(ImageTooSmallError, match=r"^strip\.png: .*too small"):
        predict_one(Predictor(model, device="cpu"), np.zeros((1, 500, 3), np.uint8), "strip.png")
