"""Mask-folder import and export (images/ + annotations/ index PNGs, the ADE20K / mmsegmentation layout)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, LabelClass, Status
from engine.formats import FormatError, import_source
from engine.formats.masks import read_mask_folder, write_mask_folder

H, W = 8, 12
CLASSES = [LabelClass("background", (0, 0, 0)), LabelClass("road", (128, 64, 128)),
           LabelClass("tree", (0, 128, 0))]


@pytest.fixture(autouse=True)
def _user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))


def _img(path: Path, value: int = 80, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path, format=fmt)
    return path


def _mask(seed: int, n: int = 3) -> np.ndarray:
    m = np.random.default_rng(seed).integers(0, n, (H, W)).astype(np.uint8)
    m[0, :3] = 255
    return m


def _png(path: Path, values: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values, mode=mode).save(path)
    return path


def _store(folder: Path, masks: dict[str, np.ndarray]) -> Path:
    for i, image_id in enumerate(masks):
        _img(folder / image_id, 40 + 30 * i)
    with AnnotationStore.open(folder, recursive=True) as store:
        store.set_classes(CLASSES, allow_shrink=True)
        for image_id, m in masks.items():
            store.save_mask(image_id, m, status=Status.REVIEWED)
    return folder


def _stored(folder: Path) -> dict[str, np.ndarray]:
    with AnnotationStore.open(folder, read_only=True) as store:
        return {i: store.load_mask(i) for i in store.known_ids()}


@pytest.mark.parametrize("reduce", [False, True])
def test_round_trip_gives_back_the_same_masks_and_classes(tmp_path, reduce):
    masks = {"a.png": _mask(1), "sub/b.jpg": _mask(2)}
    src = _store(tmp_path / "src", masks)
    with AnnotationStore.open(src, read_only=True) as store:
        rep = write_mask_folder(store, tmp_path / "out", reduce_zero_label=reduce)
    assert sorted(rep.exported) == ["a.png", "sub/b.jpg"] and not rep.skipped
    assert (tmp_path / "out/annotations/sub/b.png").is_file()
    assert (tmp_path / "out/classes.txt").read_text() == "background\t0,0,0\nroad\t128,64,128\ntree\t0,128,0\n"
    raw = np.array(Image.open(tmp_path / "out/annotations/a.png"))
    assert Image.open(tmp_path / "out/annotations/a.png").mode == "L"
    assert np.array_equal(raw, np.where(masks["a.png"] == 255, 0, masks["a.png"] + 1) if reduce else masks["a.png"])
    source = read_mask_folder(tmp_path / "out", reduce_zero_label=reduce)
    back = import_source(source, tmp_path / "back")
    assert sorted(back.imported) == ["a.png", "sub/b.jpg"], back.skipped
    got = _stored(tmp_path / "back")
    for image_id, m in masks.items():
        assert np.array_equal(got[image_id], m), image_id
    with AnnotationStore.open(tmp_path / "back", read_only=True) as store:
        assert store.classes == CLASSES


def test_reduce_zero_label_reads_ade20k_values(tmp_path):
    root = tmp_path / "ade"
    _img(root / "images/training/x.jpg")
    values = np.zeros((H, W), np.uint8)
    values[2:4, 2:4] = 1      # class 0
    values[5:, 5:] = 3        # class 2
    values[0, 0] = 255        # stays void
    _png(root / "annotations/training/x.png", values)
    _img(root / "images/validation/y.jpg")
    _png(root / "annotations/validation/y.png", values)
    source = read_mask_folder(root, reduce_zero_label=True, split="training")
    assert [it.image_id for it in source.items] == ["training/x.jpg"]
    assert [c.name for c in source.classes] == ["class 0", "class 1", "class 2"]
    m = source.items[0].mask(H, W)
    expect = np.full((H, W), 255, np.uint8)
    expect[2:4, 2:4] = 0
    expect[5:, 5:] = 2
    assert np.array_equal(m, expect)


def test_class_list_extends_the_folders_own(tmp_path):
    root = tmp_path / "mm"
    _img(root / "img_dir/a.png")
    _png(root / "ann_dir/a.png", np.full((H, W), 4, np.uint8))
    source = read_mask_folder(root, classes=CLASSES)
    assert [c.name for c in source.classes] == ["background", "road", "tree", "class 3", "class 4"]


def test_bad_masks_skip_alone_with_a_message_and_write_nothing_for_them(tmp_path):
    root = tmp_path / "bad"
    _img(root / "images/good.png")
    _png(root / "annotations/good.png", _mask(3))
    _png(root / "annotations/orphan.png", _mask(4))                       # no image
    _img(root / "images/rgb.png")
    _png(root / "annotations/rgb.png", np.zeros((H, W, 3), np.uint8), "RGB")
    _img(root / "images/deep.png")
    Image.fromarray(np.full((H, W), 300, np.uint16)).save(root / "annotations/deep.png")  # 16-bit
    _img(root / "images/small.png")
    _png(root / "annotations/small.png", np.zeros((3, 3), np.uint8))
    _img(root / "images/broken.png")
    (root / "annotations/broken.png").write_bytes(b"\x89PNG nothing")
    (root / "classes.txt").write_text("background\nroad\ntree\n")
    rep = import_source(read_mask_folder(root), tmp_path / "folder")
    assert rep.imported == ["good.png"]
    reasons = dict(rep.skipped)
    assert set(reasons) == {"orphan", "rgb", "deep", "small", "broken"}
    assert reasons["orphan"].startswith(str(root / "annotations/orphan.png")) and "no image" in reasons["orphan"]
    assert "colour (RGB) mask" in reasons["rgb"]
    assert "16-bit mask" in reasons["deep"]
    assert reasons["small"] == f"{root / 'annotations/small.png'}: mask is 3x3 but the image is {W}x{H}"
    assert "unreadable mask" in reasons["broken"]
    files = sorted(p.name for p in (tmp_path / "folder").iterdir() if p.is_file())
    assert files == ["good.png"]


def test_not_a_mask_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a mask folder"):
        read_mask_folder(tmp_path / "empty")
    (tmp_path / "x/annotations").mkdir(parents=True)
    (tmp_path / "x/images").mkdir()
    with pytest.raises(FormatError, match="holds no mask"):
        read_mask_folder(tmp_path / "x")


def test_export_splits_and_refuses_name_clashes(tmp_path):
    src = _store(tmp_path / "src", {"a.png": _mask(1), "a.jpg": _mask(2), "c.png": _mask(3), "d.png": _mask(4)})
    with AnnotationStore.open(src, read_only=True) as store:
        flat = write_mask_folder(store, tmp_path / "flat")
        split = write_mask_folder(store, tmp_path / "split", val_fraction=0.5, seed=1)
    assert len(flat.exported) == 3 and len(flat.skipped) == 1
    assert "named like" in flat.skipped[0][1]
    assert {e.split("/")[0] for e in split.exported} == {"train", "val"}
    for rel in split.exported:
        assert (tmp_path / "split/images" / rel).is_file()
        assert (tmp_path / "split/annotations" / (rel.rsplit(".", 1)[0] + ".png")).is_file()


def test_export_writes_unconfirmed_pixels_as_void(tmp_path):
    folder = _store(tmp_path / "src", {"a.png": _mask(1)})
    half = np.zeros((H, W), bool)
    half[:, :4] = True
    with AnnotationStore.open(folder) as store:
        store.save_mask("a.png", _mask(1), status=Status.EDITED, confirmed=half)
        write_mask_folder(store, tmp_path / "out")
        write_mask_folder(store, tmp_path / "whole", confirmed_only=False)
    got = np.array(Image.open(tmp_path / "out/annotations/a.png"))
    assert (got[:, 4:] == 255).all() and np.array_equal(got[:, :4], _mask(1)[:, :4])
    assert np.array_equal(np.array(Image.open(tmp_path / "whole/annotations/a.png")), _mask(1))
