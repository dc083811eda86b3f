"""Model panel, CRF panel and export dialog, driven offscreen with pytest-qt against a real Session."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

import engine  # noqa: E402
from deeplab_gui.widgets.dialogs.export_dialog import ExportDialog, ExportOptions  # noqa: E402
from deeplab_gui.widgets.panels.crf_panel import PARAM_SPECS, CRFPanel  # noqa: E402
from deeplab_gui.widgets.panels.model_panel import ModelPanel  # noqa: E402
from engine import Status  # noqa: E402
from engine.crf import DEEPLAB_V1  # noqa: E402
from engine.crf.synthetic import make_scene  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    engine.save_model(engine.build_model("deeplabv3_mobilenet_v2", num_classes=21), path)
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # No test may see a person's real weights cache or settings.
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))


def _folder(tmp_path, n=3, size=(48, 32)):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def _load(qtbot, panel, path):
    with qtbot.waitSignal(panel.session.model_changed, timeout=WAIT):
        assert panel.load_weights(path) is not None
    qtbot.waitUntil(lambda: panel.task is None, timeout=WAIT)


def _idle(qtbot, session):
    qtbot.waitUntil(lambda: session.worker.active == 0, timeout=WAIT)


# ------------------------------------------------------------------------------ model panel
def test_load_checkpoint_opens_near_the_checkpoint_used_last_else_the_folders_versions(
        qtbot, tmp_path, sessions, tiny_ckpt, monkeypatch):
    from PySide6.QtWidgets import QFileDialog
    s = sessions(_folder(tmp_path))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda parent, title, start, filters: asked.append(start) or ("", "")))
    s.settings.set_last_weights(None)
    s.store.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    panel.choose_checkpoint()
    s.settings.set_last_weights(str(tiny_ckpt))
    panel.choose_checkpoint()
    s.settings.set_last_weights(str(tmp_path / "gone.pth"))   # moved away since: the versions again
    panel.choose_checkpoint()
    assert asked == [str(s.store.checkpoints_dir), str(tiny_ckpt.resolve().parent), str(s.store.checkpoints_dir)]
    _idle(qtbot, s)


def test_banner_when_no_weights_then_checkpoint_loads(qtbot, tmp_path, sessions, tiny_ckpt):
    s = sessions(_folder(tmp_path))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: not panel.banner.isHidden(), timeout=WAIT)  # empty cache: the three ways
    assert "not downloaded" in panel.weights_combo.currentText()
    assert panel.device_label.text() == "CPU"
    assert not panel.prelabel_button.isEnabled()
    _load(qtbot, panel, tiny_ckpt)
    assert s.model is not None and s.model_name == "tiny.safetensors"
    assert s.model_id == engine.checkpoint_id(tiny_ckpt)
    assert panel.banner.isHidden()
    assert panel.classes_label.text() == "21"
    assert s.settings.last_weights() == str(tiny_ckpt)
    qtbot.waitUntil(lambda: panel.prelabel_button.isEnabled(), timeout=WAIT)
    # Next start: the weights used last time load by themselves (they are on disk; nothing downloads).
    s.set_model(None, None)
    with qtbot.waitSignal(s.model_changed, timeout=WAIT):
        again = ModelPanel(s)
        qtbot.addWidget(again)
    qtbot.waitUntil(lambda: s.model is not None, timeout=WAIT)


def test_failed_download_shows_where_to_drop_the_file(qtbot, tmp_path, sessions, monkeypatch):
    from engine.weights import catalog

    def offline(entry, **kw):
        raise engine.WeightsUnavailable(f"no network; save {entry.url} as {catalog.weights_path(entry)}")
    monkeypatch.setattr(catalog, "download", offline)
    s = sessions(_folder(tmp_path, n=1))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    entry = catalog.list_weights("segmentation")[0]
    with qtbot.waitSignal(s.message, timeout=WAIT) as msg:
        panel.load_weights(entry.id)
    assert msg.args[0] == "error"
    assert str(catalog.weights_path(entry)) in panel.banner_error.text()
    assert not panel.banner.isHidden() and s.model is None
    qtbot.waitUntil(lambda: panel.task is None, timeout=WAIT)
    assert panel.load_button.isEnabled()
    # The long message (a URL and a path) gets the height it needs at the panel's width.
    panel.resize(360, panel.sizeHint().height())
    panel.show()
    qtbot.waitExposed(panel)
    err = panel.banner_error
    qtbot.waitUntil(lambda: err.height() >= err.heightForWidth(err.width()) > 0, timeout=WAIT)


def test_prelabel_all_keeps_ui_responsive(qtbot, tmp_path, sessions, tiny_ckpt):
    from PySide6.QtCore import QTimer

    s = sessions(_folder(tmp_path, n=3))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    _load(qtbot, panel, tiny_ckpt)
    ticks = [0]
    timer = QTimer()
    timer.setInterval(2)
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    timer.start()
    # Each prediction (worker thread) waits for the UI thread's timer to tick twice: if the UI thread
    # were blocked by the run, no tick would come and `waited` would record a failure.
    real_predict = s.predictor.predict_with_probs  # what a pre-label run calls per image
    waited = []

    def gated_predict(image):
        start = ticks[0]
        ok = threading.Event()
        for _ in range(500):
            if ticks[0] >= start + 2:
                ok.set()
                break
            ok.wait(0.01)
        waited.append(ok.is_set())
        return real_predict(image)
    s.predictor.predict_with_probs = gated_predict
    with qtbot.waitSignal(panel.prelabel_finished, timeout=WAIT) as done:
        assert panel.prelabel_unlabelled() is not None
        assert not panel.cancel_button.isHidden() and panel.progress.maximum() == 0
        assert not panel.prelabel_all_button.isEnabled()  # one run at a time
    timer.stop()
    assert waited == [True, True, True]
    assert done.args[0]["saved"] == 3 and done.args[0]["failed"] == 0
    _idle(qtbot, s)
    assert all(s.store.status(i) is Status.PRELABELED for i in s.ids)
    for i in s.ids:  # probabilities cached for the CRF and for switching back
        assert s.store.load_probs(i, s.model_id) is not None
    assert s.probs is not None and (s.document.mask != 255).all()  # shown image got its labels
    assert s.document.undo_depth == 1  # one undo step


def test_prelabel_never_overwrites_an_edited_mask(qtbot, tmp_path, sessions, tiny_ckpt):
    s = sessions(_folder(tmp_path, n=2))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    _load(qtbot, panel, tiny_ckpt)
    doc = s.document
    doc.begin_stroke(7, 4.0)
    doc.stroke_to(10, 10)
    doc.stroke_to(30, 20)
    doc.end_stroke()
    painted = doc.mask.copy()
    assert s.save_current() and s.store.status(s.image_id) is Status.EDITED
    with qtbot.waitSignal(s.probs_changed, timeout=WAIT):
        panel.prelabel_current()
    _idle(qtbot, s)
    np.testing.assert_array_equal(s.document.mask, painted)
    np.testing.assert_array_equal(s.store.load_mask(s.image_id), painted)
    assert s.store.status(s.image_id) is Status.EDITED
    assert s.probs is not None  # but the CRF panel gets the network's probabilities
    assert s.store.load_probs(s.image_id, s.model_id) is not None
    # The batch run also leaves the edited image alone.
    with qtbot.waitSignal(panel.prelabel_finished, timeout=WAIT) as done:
        panel.prelabel_unlabelled()
    assert done.args[0]["total"] == 1
    _idle(qtbot, s)
    np.testing.assert_array_equal(s.store.load_mask(s.ids[0]), painted)


def test_prelabel_cancel_stops_the_batch(qtbot, tmp_path, sessions, tiny_ckpt):
    s = sessions(_folder(tmp_path, n=4))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    _load(qtbot, panel, tiny_ckpt)
    real_predict = s.predictor.predict_with_probs

    def predict_then_cancel(image):
        panel.task.cancel()  # as if Cancel were clicked during the first image
        return real_predict(image)
    s.predictor.predict_with_probs = predict_then_cancel
    handle = panel.prelabel_unlabelled()
    qtbot.waitUntil(lambda: handle.done, timeout=WAIT)
    _idle(qtbot, s)
    assert panel.task is None and panel.status_label.text() == "cancelled"
    labelled = [i for i in s.ids if s.store.status(i) is Status.PRELABELED]
    assert len(labelled) <= 1


# ------------------------------------------------------------------------------ CRF panel
@pytest.fixture
def crf_setup(qtbot, tmp_path, sessions):
    """One 60x40 image with two regions and noisy probabilities cached for it."""
    scene = make_scene(40, 60, 21, active_classes=2, seed=3, shapes=1, coarse=8, prob_noise=1.5)
    folder = tmp_path / "scene"
    folder.mkdir()
    Image.fromarray(scene.image).save(folder / "scene.png")
    s = sessions(folder)
    panel = CRFPanel(s)
    qtbot.addWidget(panel)
    panel.set_params(DEEPLAB_V1.replace(iterations=0))
    with qtbot.waitSignal(panel.crf_updated, timeout=WAIT):
        s.set_probs(s.image_id, scene.probs)
    yield s, panel, scene
    panel.shutdown()


def test_crf_slider_changes_the_shown_mask(qtbot, crf_setup):
    s, panel, scene = crf_setup
    qtbot.waitUntil(lambda: panel.last_result is not None and panel.last_result.params.iterations == 0,
                    timeout=WAIT)
    raw = scene.probs.argmax(0)
    np.testing.assert_array_equal(s.crf_labels, raw)  # 0 iterations: the network's labels
    spec = next(p for p in PARAM_SPECS if p.field == "iterations")
    panel.controls["iterations"].slider.setValue(spec.to_slider(10))  # as a drag would
    assert panel.controls["iterations"].box.value() == 10
    qtbot.waitUntil(lambda: panel.last_result.params.iterations == 10 and panel.last_result.stage == "full",
                    timeout=WAIT)
    assert s.view_mode == "crf" and s.overlay_labels() is s.crf_labels
    changed = (s.crf_labels != raw).mean()
    assert changed > 0.001  # the CRF cleaned up noisy pixels
    # The refined labels agree with the truth better than the noisy network output.
    assert (s.crf_labels == scene.mask).mean() > (raw == scene.mask).mean()
    # Parameters persist per folder, written once the drag pauses (not on each step).
    qtbot.waitUntil(lambda: (s.settings.crf_params(s.folder) or {}).get("iterations") == 10, timeout=WAIT)
    again = CRFPanel(s)
    qtbot.addWidget(again)
    assert again.params().iterations == 10
    again.shutdown()


def test_presets_and_number_boxes(qtbot, crf_setup):
    s, panel, _ = crf_setup
    i = panel.preset_combo.findData("deeplab_v2")
    panel.preset_combo.setCurrentIndex(i)
    panel.preset_combo.activated.emit(i)
    assert panel.params() == engine.crf.DEEPLAB_V2
    assert panel.controls["gaussian_xy"].box.value() == 1.0
    panel.controls["bilateral_rgb"].box.setValue(7.5)  # typing a number moves its slider too
    assert panel.params().bilateral_rgb == 7.5
    assert panel.preset_combo.currentData() == "custom"
    spec = next(p for p in PARAM_SPECS if p.field == "bilateral_rgb")
    assert panel.controls["bilateral_rgb"].slider.value() == spec.to_slider(7.5)
    for p in PARAM_SPECS:  # slider <-> value round trip at both ends of every range
        assert p.from_slider(p.to_slider(p.minimum)) == pytest.approx(p.minimum)
        assert p.from_slider(p.to_slider(p.maximum)) == pytest.approx(p.maximum)
    panel.enable_box.setChecked(False)
    assert s.crf_labels is None and s.view_mode != "crf"


def test_apply_crf_to_mask_is_one_undo_step(qtbot, crf_setup):
    s, panel, _ = crf_setup
    panel.set_params(DEEPLAB_V1)
    qtbot.waitUntil(lambda: panel.last_result.params == DEEPLAB_V1, timeout=WAIT)
    doc = s.document
    before, depth = doc.mask.copy(), doc.undo_depth
    assert panel.apply_button.isEnabled()
    panel.apply_button.click()
    np.testing.assert_array_equal(doc.mask, s.crf_labels)
    assert doc.undo_depth == depth + 1 and doc.dirty
    doc.undo()
    np.testing.assert_array_equal(doc.mask, before)


# ------------------------------------------------------------------------------ export
def test_export_voc_from_the_dialog(qtbot, tmp_path, sessions):
    s = sessions(_folder(tmp_path, n=3))
    ids = s.ids
    h, w = s.image.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 5:30] = 12
    s.store.save_mask(ids[1], mask, status=Status.EDITED)
    s.store.save_mask(ids[2], mask, status=Status.REVIEWED)
    s.document.apply_labels(mask)  # the open image's edit is saved before exporting
    dialog = ExportDialog(s)
    qtbot.addWidget(dialog)
    out = tmp_path / "voc"
    dialog.set_options(ExportOptions(out=str(out), void_border=2, val_fraction=0.34, seed=1))
    with qtbot.waitSignal(dialog.export_finished, timeout=WAIT) as done:
        assert dialog.start_export() is not None
    report = done.args[0]
    assert len(report.exported) == 3 and not report.skipped
    assert sorted((out / "JPEGImages").iterdir()) and len(list((out / "SegmentationClass").glob("*.png"))) == 3
    for split in ("train", "val", "trainval"):
        assert (out / "ImageSets" / "Segmentation" / f"{split}.txt").is_file()
    written = np.array(Image.open(out / "SegmentationClass" / f"{report.exported[0]}.png"))
    assert set(np.unique(written)) == {0, 12, 255}  # void border of 2 px around the object
    assert "Exported 3" in dialog.result_label.text()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=WAIT)
    assert dialog.export_button.isEnabled()


def test_export_refuses_into_the_store(qtbot, tmp_path, sessions):
    s = sessions(_folder(tmp_path, n=1))
    dialog = ExportDialog(s)
    qtbot.addWidget(dialog)
    dialog.set_options(ExportOptions(out=str(s.store.root / "voc")))
    with qtbot.waitSignal(dialog.export_failed, timeout=WAIT) as failed:
        dialog.start_export()
    assert "store" in failed.args[0]


def test_preview_labels_scale_to_the_image_by_nearest_neighbour():
    from deeplab_gui.state.crf_lanes import LabelScaler
    from engine.crf import LiveResult

    probs = np.zeros((3, 2, 3), np.float32)
    small = np.array([[0, 1, 2], [2, 2, 0]])
    for c in range(3):
        probs[c][small == c] = 1.0
    res = LiveResult(1, "preview", DEEPLAB_V1, probs, 0.5, (4, 6), 0.0, (0, 1, 2))
    scaler = LabelScaler()
    np.testing.assert_array_equal(scaler(res), np.repeat(np.repeat(small, 2, 0), 2, 1).astype(np.uint8))
    full = LiveResult(2, "full", DEEPLAB_V1, probs, 1.0, (2, 3), 0.0, (0, 1, 2))
    np.testing.assert_array_equal(scaler(full), small)


def test_big_images_refine_on_a_reduced_copy(qtbot, crf_setup, monkeypatch):
    import deeplab_gui.state.crf_lanes as crf_live

    s, panel, scene = crf_setup
    monkeypatch.setattr(crf_live, "MAX_LIVE_PIXELS", 600)  # the 60x40 scene counts as "big" now
    panel.enable_box.setChecked(False)
    panel.set_params(DEEPLAB_V1, submit=False)
    panel.enable_box.setChecked(True)  # a new live session, built on a 30x20 copy
    qtbot.waitUntil(lambda: panel.last_result is not None and panel.last_result.stage == "full", timeout=WAIT)
    assert panel.last_result.params == DEEPLAB_V1  # widths were scaled inside, not in what is reported
    assert panel.last_result.image_size == (20, 30)
    assert s.crf_labels.shape == scene.mask.shape  # shown at the picture's size
    assert (s.crf_labels == scene.mask).mean() > 0.8
