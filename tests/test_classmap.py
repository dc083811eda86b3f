"""engine.classmap: a model with another class list predicts into the folder's classes by name."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from engine import ClassMap, MappedPredictor, Predictor, normalise_class_name
from engine.meta import ModelMeta

VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
              "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
              "bicycle"]


def test_names_match_across_data_sets():
    assert normalise_class_name("Potted Plant") == normalise_class_name("pottedplant")
    assert normalise_class_name("motorcycle") == normalise_class_name("motorbike")
    assert normalise_class_name("Air-plane") == normalise_class_name("aeroplane")
    m = ClassMap.by_name(CITYSCAPES, VOC)
    assert dict(m.matched) == {"person": "person", "car": "car", "bus": "bus", "train": "train",
                               "motorcycle": "motorbike", "bicycle": "bicycle"}
    assert "road" in m.unmatched and len(m.unmatched) == 13 and not m.identity
    assert "6 of the model's 19 classes" in m.describe() and "road" in m.describe()
    assert ClassMap.by_name(VOC, VOC).identity


def test_labels_map_and_unmatched_become_void():
    m = ClassMap.by_name(["sky", "Car", "dog"], ["background", "dog", "car"])
    out = m.labels(np.array([[0, 1, 2, 255]], dtype=np.uint8))
    assert out.tolist() == [[255, 2, 1, 255]]


def test_probabilities_summed_per_folder_class_and_renormalised():
    m = ClassMap.by_name(["tv", "monitor", "road", "cat"], ["background", "tvmonitor", "cat"])
    p = np.array([[0.2, 0.0], [0.3, 0.0], [0.4, 1.0], [0.1, 0.0]], dtype=np.float32).reshape(4, 1, 2)
    out = m.probs(p)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 5 / 6, 1 / 6], atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1], [1 / 3] * 3, atol=1e-6)  # no mapped mass: uniform
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-6)


class _Const(nn.Module):
    """Logits that make class ``k`` win in the left half and class 0 in the right half."""

    def __init__(self, names):
        super().__init__()
        self.meta = ModelMeta(arch="const", num_classes=len(names), class_names=list(names))
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        n, _, h, w = x.shape
        y = torch.zeros(n, self.meta.num_classes, h, w)
        y[:, 3, :, : w // 2] = 10.0   # "car" in the left half
        y[:, 0, :, w // 2:] = 10.0    # "road" in the right half
        return y + self.w


def test_mapped_predictor_gives_folder_classes_in_every_form():
    model = _Const(["road", "sky", "person", "car"])
    mp = MappedPredictor(Predictor(model, device="cpu"), ClassMap.by_name(model.meta.class_names, VOC))
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    labels = mp.predict_labels(img)
    assert (labels[:, :20] == VOC.index("car")).all() and (labels[:, 20:] == 255).all()
    pred = mp.predict_with_probs(img)
    assert (pred.labels == labels).all() and pred.probs.shape == (21, 20, 40)
    np.testing.assert_allclose(pred.probs.sum(0), 1.0, atol=1e-5)
    assert mp.predict(img).shape == (21, 20, 40) and mp.num_classes == 21
    (key, res), = list(mp.predict_many([img], prediction=True))
    assert key == 0 and (res.labels == labels).all()
    assert mp.device.type == "cpu"   # the rest is the wrapped predictor's


def test_unnamed_classes_are_taken_index_for_index():
    m = ClassMap.by_name(["class_0", "class_1", "Class 2"], VOC)
    assert m.by_index and m.passes_through and m.lut == (0, 1, 2) and "no names" in m.describe()
    wide = ClassMap.by_name([f"class_{i}" for i in range(23)], VOC)
    assert wide.lut[:21] == tuple(range(21)) and wide.lut[21:] == (-1, -1) and not wide.passes_through
    assert "become void" in wide.describe()
    assert not ClassMap.by_name(["road", "class_1"], VOC).by_index   # named: by name
