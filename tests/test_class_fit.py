"""A model whose class list is not the folder's: predictions are mapped by name (never stored as the wrong
classes), the model panel says so, and an unlabelled folder can take the model's list instead."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

import engine  # noqa: E402
from deeplab_gui.widgets.panels.model_panel import HEADER_ROLE, ModelPanel  # noqa: E402
from engine import MappedPredictor, Status  # noqa: E402

WAIT = 20_000


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))


def _street_model():
    return engine.build_model("deeplabv3_mobilenet_v2", num_classes=4,
                              class_names=["road", "car", "person", "sky"],
                              class_colors=[(128, 64, 128), (0, 0, 142), (220, 20, 60), (70, 130, 180)])


def test_other_class_list_is_mapped_by_name_and_said(qtbot, grey_images, sessions):
    s = sessions(grey_images(2, size=(32, 24)))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    assert s.class_map is None and panel.class_fit.isHidden()
    s.set_model(_street_model(), "street", "cpu")
    assert isinstance(s.predictor, MappedPredictor) and s.class_map is not None
    assert dict(s.class_map.matched) == {"car": "car", "person": "person"}
    assert not panel.class_fit.isHidden() and "2 of the model's 4 classes" in panel.class_fit_text.text()
    labels = s.predictor.predict_labels(s.image)
    assert set(np.unique(labels)) <= {255, s.store.class_names.index("car"), s.store.class_names.index("person")}
    s.set_model(engine.build_model("deeplabv3_mobilenet_v2", num_classes=21), "voc", "cpu")
    assert s.class_map is None and not isinstance(s.predictor, MappedPredictor) and panel.class_fit.isHidden()


def test_unlabelled_folder_can_take_the_models_classes(qtbot, grey_images, sessions):
    s = sessions(grey_images(2, size=(32, 24)))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    s.set_model(_street_model(), "street", "cpu")
    assert s.can_adopt_model_classes() and not panel.adopt_button.isHidden()
    qtbot.mouseClick(panel.adopt_button, qtbot_button())
    assert s.store.class_names == ["road", "car", "person", "sky"]
    assert s.class_map is None and panel.class_fit.isHidden()


def test_a_labelled_folder_keeps_its_classes(qtbot, grey_images, sessions):
    s = sessions(grey_images(2, size=(32, 24)))
    s.store.save_mask(s.store.ids()[1], np.zeros((32, 24), dtype=np.uint8), status=Status.EDITED)
    s.statuses_changed.emit()
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    s.set_model(_street_model(), "street", "cpu")
    assert s.class_map is not None and not s.can_adopt_model_classes()
    assert panel.adopt_button.isHidden() and not s.adopt_model_classes()
    assert len(s.store.class_names) == 21


def test_weights_grouped_by_data_set_under_headings(qtbot, grey_images, sessions):
    s = sessions(grey_images(1))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    combo = panel.weights_combo
    headers = [i for i in range(combo.count()) if combo.itemData(i, HEADER_ROLE)]
    datasets = {getattr(e, "dataset", "") or "Other" for e in engine.list_weights("segmentation")}
    assert len(headers) == (len(datasets) if len(datasets) > 1 else 0)
    assert combo.currentData() in engine.CATALOG   # a real entry is chosen, never a heading
    for i in headers:
        assert not combo.model().item(i).isEnabled()


def qtbot_button():
    from PySide6.QtCore import Qt
    return Qt.MouseButton.LeftButton


def test_a_model_without_class_names_predicts_index_for_index(qtbot, grey_images, sessions):
    s = sessions(grey_images(1))
    panel = ModelPanel(s)
    qtbot.addWidget(panel)
    s.set_model(engine.build_model("deeplabv3_mobilenet_v2", num_classes=3), "unnamed", "cpu")
    assert s.class_map is not None and s.class_map.by_index
    assert not isinstance(s.predictor, MappedPredictor)   # nothing to map: used as it is
    assert not panel.class_fit.isHidden() and "no names" in panel.class_fit_text.text()
