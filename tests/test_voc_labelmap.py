"""VOC export's labelmap.txt: the label map CVAT's "Segmentation mask 1.1" import expects."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, LabelClass, Status, export_voc


@pytest.fixture(autouse=True)
def _user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))


def test_labelmap_lists_every_class_with_its_mask_colour(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(np.full((4, 6, 3), 30, np.uint8)).save(folder / "a.png")
    classes = [LabelClass("background", (1, 2, 3)), LabelClass("cat", (9, 9, 9))]
    with AnnotationStore.open(folder) as store:
        store.set_classes(classes, allow_shrink=True)
        store.save_mask("a.png", np.ones((4, 6), np.uint8), status=Status.REVIEWED)
    export_voc(folder, tmp_path / "out")
    # The first 21 indices use VOC's colour map in SegmentationClass/, so the label map says so too.
    assert (tmp_path / "out/labelmap.txt").read_text() == (
        "# label:color_rgb:parts:actions\n"
        "background:0,0,0::\n"
        "cat:128,0,0::\n")
    palette = Image.open(tmp_path / "out/SegmentationClass/a.png").getpalette()
    assert palette[3:6] == [128, 0, 0]
