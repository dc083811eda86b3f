"""Cityscapes gtFine import (labelIds mapped through the official table, or trainIds) and export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, LabelClass, Status
from engine.formats import FormatError, import_source
from engine.formats.cityscapes import LABEL_TO_TRAIN, TRAIN_CLASSES, read_cityscapes, write_cityscapes

H, W = 6, 10
NAME = "aachen_000000_000019"


@pytest.fixture(autouse=True)
def _user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))


def _city(root: Path, label_ids: np.ndarray, *, split="val", city="aachen", name=NAME, train_ids=None) -> Path:
    img = root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 70, np.uint8)).save(img)
    gt = root / "gtFine" / split / city
    gt.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_ids.astype(np.uint8), mode="L").save(gt / f"{name}_gtFine_labelIds.png")
    if train_ids is not None:
        Image.fromarray(train_ids.astype(np.uint8), mode="L").save(gt / f"{name}_gtFine_labelTrainIds.png")
    return root


def test_official_id_table():
    # cityscapesScripts labels.py: road 7->0, sidewalk 8->1, building 11->2, pole 17->5, sky 23->10,
    # person 24->11, car 26->13, bicycle 33->18; unlabeled 0, parking 9, guard rail 14, polegroup 18,
    # caravan 29 and trailer 30 are ignored (255).
    expect = {7: 0, 8: 1, 11: 2, 17: 5, 23: 10, 24: 11, 26: 13, 33: 18,
              0: 255, 9: 255, 14: 255, 18: 255, 29: 255, 30: 255, 34: 255, 255: 255}
    assert {k: int(LABEL_TO_TRAIN[k]) for k in expect} == expect
    assert [c.name for c in TRAIN_CLASSES][:3] == ["road", "sidewalk", "building"]
    assert TRAIN_CLASSES[13] == LabelClass("car", (0, 0, 142)) and len(TRAIN_CLASSES) == 19


def test_label_ids_import_maps_to_train_ids(tmp_path):
    ids = np.array([[7, 8, 11, 17, 23, 24, 26, 33, 0, 9]] * H, np.uint8)
    root = _city(tmp_path / "cs", ids)
    rep = import_source(read_cityscapes(root), tmp_path / "folder")
    image_id = f"val/aachen/{NAME}_leftImg8bit.png"
    assert rep.imported == [image_id], rep.skipped
    with AnnotationStore.open(tmp_path / "folder", read_only=True) as store:
        assert store.classes == TRAIN_CLASSES
        assert store.status(image_id) is Status.REVIEWED
        got = store.load_mask(image_id)
    assert got[0].tolist() == [0, 1, 2, 5, 10, 11, 13, 18, 255, 255]


def test_train_ids_import_and_bad_values(tmp_path):
    good = np.array([[0, 18, 255, 5, 5, 5, 5, 5, 5, 5]] * H, np.uint8)
    root = _city(tmp_path / "cs", np.zeros((H, W)), train_ids=good)
    _city(root, np.zeros((H, W)), name="bad_000000_000001", train_ids=np.full((H, W), 19))
    _city(root, np.zeros((H, W)), name="gone_000000_000002", train_ids=good)
    (root / "leftImg8bit/val/aachen/gone_000000_000002_leftImg8bit.png").unlink()
    rep = import_source(read_cityscapes(root, ids="trainIds"), tmp_path / "folder")
    assert rep.imported == [f"val/aachen/{NAME}_leftImg8bit.png"]
    reasons = dict(rep.skipped)
    assert "value 19 is no Cityscapes train id" in reasons["val/aachen/bad_000000_000001"]
    assert "no image" in reasons["val/aachen/gone_000000_000002"]
    assert not list((tmp_path / "folder").rglob("bad_*")) and not list((tmp_path / "folder").rglob("gone_*"))


def test_round_trip_writes_both_id_files(tmp_path):
    train = np.random.default_rng(0).integers(0, 19, (H, W)).astype(np.uint8)
    train[0, 0] = 255
    folder = tmp_path / "store"
    folder.mkdir()
    Image.fromarray(np.full((H, W, 3), 50, np.uint8)).save(folder / "street.jpg")
    with AnnotationStore.open(folder) as store:
        store.set_classes(TRAIN_CLASSES, allow_shrink=True)
        store.save_mask("street.jpg", train, status=Status.REVIEWED)
        rep = write_cityscapes(store, tmp_path / "out")
    assert rep.exported == ["train/unknown/street"]
    gt = tmp_path / "out/gtFine/train/unknown"
    assert np.array_equal(np.array(Image.open(gt / "street_gtFine_labelTrainIds.png")), train)
    label_ids = np.array(Image.open(gt / "street_gtFine_labelIds.png"))
    assert label_ids[0, 0] == 0 and np.array_equal(LABEL_TO_TRAIN[label_ids], train)
    assert (tmp_path / "out/leftImg8bit/train/unknown/street_leftImg8bit.png").is_file()
    for ids in ("labelIds", "trainIds"):
        back = import_source(read_cityscapes(tmp_path / "out", ids=ids), tmp_path / f"back_{ids}")
        image_id = "train/unknown/street_leftImg8bit.png"
        assert back.imported == [image_id]
        with AnnotationStore.open(tmp_path / f"back_{ids}", read_only=True) as store:
            assert np.array_equal(store.load_mask(image_id), train)


def test_export_refuses_another_class_list(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    Image.fromarray(np.full((H, W, 3), 50, np.uint8)).save(folder / "a.png")
    with AnnotationStore.open(folder) as store:
        store.save_mask("a.png", np.zeros((H, W), np.uint8), status=Status.REVIEWED)
        with pytest.raises(FormatError, match="not Cityscapes' 19 training classes"):
            write_cityscapes(store, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_cityscapes_root(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FormatError, match="not a Cityscapes root"):
        read_cityscapes(tmp_path / "x")
