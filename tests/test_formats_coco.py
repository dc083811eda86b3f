"""COCO: our RLE and polygon code agrees with pycocotools; export -> import gives the same masks; bad
inputs skip one image with a message naming the file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, LabelClass, Status, default_classes
from engine.formats import rle
from engine.formats.coco import export_coco, read_coco
from engine.formats.common import FormatError
from engine.formats.importer import import_source

mask_api = pytest.importorskip("pycocotools.mask")
# pycocotools 2.0 under numpy 2 warns about the copy keyword on every decode.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ---------------------------------------------------------------------------- rle against pycocotools
def test_polygons_rasterise_like_pycocotools():
    rng = np.random.default_rng(0)
    for trial in range(400):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        pts = rng.uniform(-2, max(h, w) + 2, size=2 * int(rng.integers(3, 10)))
        if trial % 3 == 0:
            pts = np.round(pts)  # vertices on pixel centres: the ties of the rounding rules
        ref = mask_api.decode(mask_api.merge(mask_api.frPyObjects([pts.tolist()], h, w))).astype(bool)
        assert np.array_equal(rle.polygon_mask(pts, h, w), ref), (trial, h, w, pts.tolist())


def test_rle_encode_decode_area_bbox_match_pycocotools():
    rng = np.random.default_rng(1)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 25, 2))
        m = rng.random((h, w)) < rng.random()
        ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        ours = rle.encode(m)
        assert ours["counts"] == ref["counts"].decode() and ours["size"] == [h, w]
        assert np.array_equal(rle.decode(ours), m)
        assert np.array_equal(rle.decode({"size": [h, w], "counts": ref["counts"]}), m)  # bytes as given
        assert rle.area(m) == int(mask_api.area(ref))
        assert rle.bbox(m) == [float(v) for v in mask_api.toBbox(ref)]
        runs = rle.string_to_counts(ours["counts"])
        assert np.array_equal(rle.decode({"size": [h, w], "counts": runs}), m)  # uncompressed counts
        assert np.array_equal(mask_api.decode(mask_api.frPyObjects({"size": [h, w], "counts": runs}, h, w)),
                              m.astype(np.uint8))


def test_rle_refuses_counts_that_do_not_cover_the_image():
    with pytest.raises(rle.RLEError, match="cover 5 pixels"):
        rle.decode({"size": [2, 3], "counts": [1, 4]})
    with pytest.raises(rle.RLEError, match="size is 3x2 but the image is 4x4"):
        rle.decode({"size": [2, 3], "counts": [6]}, 4, 4)
    with pytest.raises(rle.RLEError, match="character"):
        rle.decode({"size": [2, 3], "counts": "~~\x01"})


# ---------------------------------------------------------------------------- store fixtures
def _mask(h, w, seed, n):
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y:y + rng.integers(3, h // 2), x:x + rng.integers(3, w // 2)] = rng.integers(1, n)
    m[:, 0] = 255
    m[5, 5:9] = 255  # a void stroke inside the background: a hole in class 0's annotation
    return m


SIZES = {"a.jpg": (24, 32), "b.png": (20, 30), "sub/c.png": (18, 26)}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name, quality=90)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "todo.png")
    st = AnnotationStore.open(folder, recursive=True)
    st.set_classes(default_classes() + [LabelClass("tree", (12, 200, 40))])
    for k, name in enumerate(SIZES):
        st.save_mask(name, _mask(*SIZES[name], k, 22), status=Status.REVIEWED if k % 2 else Status.EDITED)
    yield st
    st.close()


def _import(src, folder, **kw):
    return import_source(read_coco(src, **kw), folder)


# ---------------------------------------------------------------------------- export / import
def test_export_decodes_with_pycocotools_to_the_store_masks(store, tmp_path):
    from pycocotools.coco import COCO

    rep = export_coco(store, tmp_path / "out")
    assert sorted(rep.exported) == sorted(SIZES) and not rep.skipped
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [c.name for c in store.classes]
    for img in coco.loadImgs(coco.getImgIds()):
        want = store.load_mask(img["file_name"])
        assert (img["height"], img["width"]) == want.shape
        got = np.full(want.shape, 255, np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(anns) == len(set(np.unique(want).tolist()) - {255})  # one per class present
        for ann in anns:
            got[coco.annToMask(ann).astype(bool)] = ann["category_id"] - 1
            assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        assert np.array_equal(got, want)
        assert (tmp_path / "out" / "images" / img["file_name"]).read_bytes() == \
            store.image_path(img["file_name"]).read_bytes()


def test_round_trip_gives_back_the_same_masks(store, tmp_path):
    export_coco(store, tmp_path / "out")
    rep = _import(tmp_path / "out" / "annotations.json", tmp_path / "back")
    assert sorted(rep.imported) == sorted(SIZES) and not rep.skipped
    with AnnotationStore.open(tmp_path / "back", read_only=True) as back:
        assert back.classes == store.classes
        for name in SIZES:
            assert np.array_equal(back.load_mask(name), store.load_mask(name))
            assert back.status(name) is Status.REVIEWED


def test_confirmed_only_leaves_out_what_no_person_set(store, tmp_path):
    h, w = SIZES["a.jpg"]
    confirmed = np.zeros((h, w), bool)
    confirmed[:, : w // 2] = True
    store.save_mask("a.jpg", store.load_mask("a.jpg"), status=Status.EDITED, confirmed=confirmed)
    export_coco(store, tmp_path / "out")
    _import(tmp_path / "out", tmp_path / "back")  # the folder form of SRC
    with AnnotationStore.open(tmp_path / "back", read_only=True) as back:
        got = back.load_mask("a.jpg")
    assert (got[:, w // 2:] == 255).all()
    assert np.array_equal(got[:, : w // 2], store.load_mask("a.jpg")[:, : w // 2])


def _write_coco(root: Path, images, anns, cats=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cats = cats or [{"id": 7, "name": "kite"}, {"id": 3, "name": "lamp"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _image(root: Path, name: str, h: int, w: int) -> None:
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / name)


def test_polygons_rle_and_crowd_draw_in_file_order(tmp_path):
    src = tmp_path / "coco"
    src.mkdir()
    _image(src, "x.png", 10, 12)
    crowd = np.zeros((10, 12), bool)
    crowd[6:9, 1:4] = True
    anns = [{"id": 1, "image_id": 5, "category_id": 7, "iscrowd": 0,
             "segmentation": [[1, 1, 8, 1, 8, 6, 1, 6], [10, 0, 11, 0, 11, 2]]},
            {"id": 2, "image_id": 5, "category_id": 3, "iscrowd": 0, "segmentation": rle.encode(np.pad(
                np.ones((2, 2), bool), ((2, 6), (3, 7))))},
            {"id": 3, "image_id": 5, "category_id": 3, "iscrowd": 1,
             "segmentation": {"size": [10, 12], "counts": rle.string_to_counts(rle.encode(crowd)["counts"])}},
            {"id": 4, "image_id": 99, "category_id": 3, "segmentation": [[0, 0, 1, 0, 1, 1]]}]  # no such image
    path = _write_coco(src, [{"id": 5, "file_name": "x.png", "width": 12, "height": 10}], anns)
    source = read_coco(path)
    assert [c.name for c in source.classes] == ["lamp", "kite"]  # categories in id order
    rep = import_source(source, tmp_path / "dst")
    assert rep.imported == ["x.png"]
    want = np.full((10, 12), 255, np.uint8)
    want[rle.polygons_mask([[1, 1, 8, 1, 8, 6, 1, 6], [10, 0, 11, 0, 11, 2]], 10, 12)] = 1
    want[2:4, 3:5] = 0
    want[crowd] = 0
    with AnnotationStore.open(tmp_path / "dst", read_only=True) as st:
        assert np.array_equal(st.load_mask("x.png"), want)
    crowd_void = read_coco(path, crowd="void").items[0].mask(10, 12)
    assert (crowd_void[crowd] == 255).all()


def test_categories_map_into_the_folder_classes_by_name(tmp_path):
    src = tmp_path / "coco"
    src.mkdir()
    _image(src, "x.png", 6, 6)
    path = _write_coco(src, [{"id": 1, "file_name": "x.png", "width": 6, "height": 6}],
                       [{"id": 1, "image_id": 1, "category_id": 3, "segmentation": rle.encode(np.ones((6, 6)))}])
    mine = default_classes()
    source = read_coco(path, classes=mine)
    assert [c.name for c in source.classes] == [c.name for c in mine] + ["lamp", "kite"]
    assert (source.items[0].mask(6, 6) == 21).all()
    with pytest.raises(FormatError, match=r"instances.json: label names not in the folder's class list: 'lamp', 'kite'"):
        read_coco(path, classes=mine, unknown="refuse")
    source = read_coco(path, classes=[LabelClass("lamp", (1, 2, 3)), LabelClass("kite", (3, 2, 1))],
                       unknown="refuse")
    assert [c.name for c in source.classes] == ["lamp", "kite"] and (source.items[0].mask(6, 6) == 0).all()


def test_bad_inputs_skip_one_image_and_write_nothing_for_it(tmp_path):
    src = tmp_path / "coco"
    src.mkdir()
    for name in ("ok.png", "big.png", "poly.png", "cat.png", "rle.png", "noseg.png"):
        _image(src, name, 8, 8)
    (src / "broken.png").write_bytes(b"not a png")
    full = rle.encode(np.ones((8, 8), bool))
    images = [{"id": i, "file_name": n, "width": 8, "height": 8} for i, n in enumerate(
        ["ok.png", "missing.png", "big.png", "poly.png", "cat.png", "rle.png", "noseg.png", "broken.png"])]
    images[2]["width"] = 9
    images.append({"id": 50, "file_name": "../escape.png", "width": 8, "height": 8})
    anns = [{"id": 10 + i, "image_id": i, "category_id": 7, "segmentation": full} for i in range(8)]
    anns[3]["segmentation"] = [[0, 0, 30, 0, 30, 5]]
    anns[4]["category_id"] = 12
    anns[5]["segmentation"] = {"size": [4, 4], "counts": [16]}
    del anns[6]["segmentation"]
    rep = _import(_write_coco(src, images, anns), tmp_path / "dst")
    assert rep.imported == ["ok.png"]
    reasons = dict(rep.skipped)
    assert set(reasons) == {"missing.png", "big.png", "poly.png", "cat.png", "rle.png", "noseg.png", "broken.png",
                            "../escape.png"}
    assert "missing.png: no image" in reasons["missing.png"]
    assert "listed as 9x8 but the file is 8x8" in reasons["big.png"]
    assert "annotation 13: a polygon reaches outside the 8x8 image" in reasons["poly.png"]
    assert "category_id 12, which no category has" in reasons["cat.png"]
    assert "RLE size is 4x4 but the image is 8x8" in reasons["rle.png"]
    assert "has no segmentation" in reasons["noseg.png"]
    assert "broken.png: not an image file" in reasons["broken.png"]
    assert "not a path inside a folder" in reasons["../escape.png"]
    for reason in reasons.values():
        assert "\n" not in reason and "Error" not in reason
    assert sorted(p.name for p in (tmp_path / "dst").iterdir() if not p.name.startswith(".")) == ["ok.png"]


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"{\"images\": [", "not valid JSON"),
    (b"[1, 2]", "not a COCO file"),
    (b"{\"images\": [], \"annotations\": [], \"categories\": [{\"id\": 1}]}", "needs a whole-number 'id' and a 'name'"),
])
def test_unreadable_json_refuses_the_import_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(FormatError) as err:
        read_coco(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "dst").exists()
