"""session.models (ModelsState) without widgets: loading, pre-labelling, autoload; and the one way into
fine-tuning that the Model menu and the model panel's button share."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

import engine  # noqa: E402
from engine import Status  # noqa: E402

WAIT = 20_000  # ms; generous for a loaded 2-core machine, never reached when things work


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    engine.save_model(engine.build_model("deeplabv3_mobilenet_v2", num_classes=3), path)
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # No test may see a person's real weights cache or log folder.
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))


def _folder(tmp_path, n=3, size=(40, 32)):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _load(qtbot, s, path):
    with qtbot.waitSignal(s.models.loaded, timeout=WAIT) as got:
        assert s.models.load(path) is not None
    qtbot.waitUntil(lambda: not s.models.busy, timeout=WAIT)
    return got.args[0]


def _idle(qtbot, s):
    qtbot.waitUntil(lambda: s.worker.active == 0, timeout=WAIT)


def test_loading_a_checkpoint_sets_the_model_and_remembers_it(qtbot, tmp_path, sessions, tiny_ckpt):
    s = sessions(_folder(tmp_path, n=1))
    busy = []
    s.models.busy_changed.connect(busy.append)
    model_id = _load(qtbot, s, tiny_ckpt)
    assert model_id == s.model_id == engine.checkpoint_id(tiny_ckpt)
    assert s.model.meta.num_classes == 3 and s.model_name == "tiny.safetensors"
    assert s.settings.last_weights() == str(tiny_ckpt)
    assert s.models.status == "loaded tiny.safetensors" and s.models.load_error is None
    assert busy == [True, False]


def test_a_failed_load_says_why_and_keeps_no_model(qtbot, tmp_path, sessions):
    s = sessions(_folder(tmp_path, n=1))
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with qtbot.waitSignal(s.models.load_failed, timeout=WAIT) as failed:
        s.models.load(bad)
    assert failed.args[0] and s.models.load_error == failed.args[0]
    assert s.model is None
    qtbot.waitUntil(lambda: not s.models.busy, timeout=WAIT)


def test_prelabel_all_hands_the_shown_image_back_to_the_session(qtbot, tmp_path, sessions, tiny_ckpt):
    s = sessions(_folder(tmp_path, n=3))
    _load(qtbot, s, tiny_ckpt)
    shown = s.image_id
    written = []  # what the batch itself writes to the store, from the worker thread
    real_save = s.store.save_prediction
    s.store.save_prediction = lambda image_id, *a, **kw: written.append(image_id) or real_save(image_id, *a, **kw)
    with qtbot.waitSignal(s.models.prelabel_finished, timeout=WAIT) as done:
        handle = s.models.prelabel_all()
        handed_back = []
        handle.yielded.connect(lambda value: handed_back.append(value[0]))
    _idle(qtbot, s)
    assert done.args[0] == {"done": 3, "saved": 3, "failed": 0, "total": 3}
    assert handed_back == [shown]
    # The shown image went through the session: one undo step in its document, stored as a prediction.
    assert s.document.undo_depth == 1 and (s.document.mask != 255).all()
    np.testing.assert_array_equal(s.store.load_mask(shown), s.document.mask)
    assert sorted(written) == sorted(s.ids)  # the two others by the batch, the shown one by the session
    assert all(s.store.status(i) is Status.PRELABELED for i in s.ids)
    assert s.models.status == "pre-labelled 3 of 3"


def test_prelabel_current_leaves_a_persons_mask_alone(qtbot, tmp_path, sessions, tiny_ckpt):
    s = sessions(_folder(tmp_path, n=1))
    _load(qtbot, s, tiny_ckpt)
    doc = s.document
    doc.begin_stroke(2, 4.0)
    doc.stroke_to(5, 5)
    doc.stroke_to(20, 15)
    doc.end_stroke()
    painted = doc.mask.copy()
    assert s.save_current() and s.store.status(s.image_id) is Status.EDITED
    with qtbot.waitSignal(s.models.prelabel_finished, timeout=WAIT):
        assert s.models.prelabel_current() is not None
    _idle(qtbot, s)
    np.testing.assert_array_equal(s.document.mask, painted)
    assert s.store.status(s.image_id) is Status.EDITED
    assert s.store.load_probs(s.image_id, s.model_id) is not None  # the CRF still gets probabilities


def test_cancel_stops_a_prelabel_run(qtbot, tmp_path, sessions, tiny_ckpt):
    s = sessions(_folder(tmp_path, n=4))
    _load(qtbot, s, tiny_ckpt)
    real_predict = s.predictor.predict_with_probs
    started, go = threading.Event(), threading.Event()

    def predict_held(image):  # the first image waits until Cancel was clicked (on the UI thread)
        started.set()
        go.wait(WAIT / 1000)
        return real_predict(image)
    s.predictor.predict_with_probs = predict_held
    finished = []
    s.models.prelabel_finished.connect(finished.append)
    handle = s.models.prelabel_all()
    qtbot.waitUntil(started.is_set, timeout=WAIT)
    s.models.cancel()
    go.set()
    qtbot.waitUntil(lambda: handle.done, timeout=WAIT)
    _idle(qtbot, s)
    assert handle.cancelled and not s.models.busy and s.models.status == "cancelled"
    assert finished == []  # a cancelled run reports no summary
    assert sum(s.store.status(i) is Status.PRELABELED for i in s.ids) <= 1


def test_opening_a_folder_loads_its_current_version(qtbot, tmp_path, tiny_ckpt):
    from deeplab_gui.state.session import Session
    from deeplab_gui.state.settings import Settings
    from engine import AnnotationStore, Version, Versions

    folder = _folder(tmp_path, n=1)
    with AnnotationStore.open(folder) as store:
        store.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        version = store.checkpoints_dir / "m-v001.safetensors"
        version.write_bytes(tiny_ckpt.read_bytes())
        Versions.of(store).add(Version(name=version.name, steps=3), make_current=True)
    s = Session(Settings(tmp_path / "settings.ini"))  # nothing remembered: only the folder can say
    try:
        with qtbot.waitSignal(s.models.catalog_changed, timeout=WAIT):
            s.models.refresh_catalog()
        assert s.models.catalog_checked and s.model is None
        with qtbot.waitSignal(s.models.loaded, timeout=WAIT) as got:
            s.open_folder(folder)
        assert got.args[0] == s.model_id == engine.checkpoint_id(version)
        assert s.models.status == f"loaded this folder's fine-tuned model {version.name}"
    finally:
        s.shutdown()


def test_menu_entry_and_panel_button_take_the_same_path_with_no_model(qtbot, tmp_path, sessions):
    from deeplab_gui.widgets.main_window import MainWindow

    s = sessions(_folder(tmp_path, n=2))
    win = MainWindow(s)
    qtbot.addWidget(win)
    panel = win.panels["Model"]
    requests = []
    s.models.finetune_requested.connect(lambda: requests.append("asked"))
    assert s.model is None
    # The menu entry: with no model it offers the new-model path, as the button always did.
    win.finetune_action.trigger()
    d = panel.finetune_dialog
    assert requests == ["asked"] and d is not None and d.isVisible()
    assert d._form.isRowVisible(d.new_arch)
    d.close()
    # The button: the same request, the same dialog.
    assert panel.finetune_button.isEnabled()
    panel.finetune_button.click()
    assert requests == ["asked", "asked"] and panel.finetune_dialog is d and d.isVisible()
    d.close()
    # With no folder both refuse alike, saying why.
    s.close_store()
    win.finetune_action.trigger()
    assert requests == ["asked", "asked"] and "open a folder" in win.messages[-1][1]
    assert s.models.finetune_refusal() is not None
