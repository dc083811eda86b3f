"""labelme / X-AnyLabeling JSON: a file written from labelme's documented schema imports to the mask
labelme draws; export -> import gives the same masks; bad files skip one image with a message."""
from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine import AnnotationStore, LabelClass, Status, default_classes
from engine.formats.common import FormatError
from engine.formats.importer import import_source
from engine.formats.labelme import export_labelme, read_labelme
from engine.formats.labelme_draw import draw_shapes, mask_shapes


def _png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _shape(label, points, shape_type="polygon", **kw):
    return {"label": label, "points": points, "group_id": kw.get("group_id"), "shape_type": shape_type,
            "flags": kw.get("flags", {}), "description": kw.get("description", ""), "mask": kw.get("mask")}


def _labelme_file(path: Path, shapes, h, w, *, image_path=None, embed=None) -> Path:
    """A file as labelme 5 writes it (version, flags, shapes, imagePath, imageData, imageHeight/Width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
                                "imageData": embed, "imageHeight": h, "imageWidth": w}))
    return path


def _labelme_shape_to_mask(h, w, shape) -> np.ndarray:
    """labelme's documented rule (labelme.utils.shape_to_mask) for the area shapes, written out here."""
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    xy = [tuple(p) for p in shape["points"]]
    if shape["shape_type"] == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif shape["shape_type"] == "rectangle":
        draw.rectangle(xy, outline=1, fill=1)
    else:
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.array(im, dtype=bool)


def test_a_file_in_labelmes_schema_imports_to_the_mask_labelme_draws(tmp_path):
    h, w = 20, 24
    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    box = np.zeros((3, 4), np.uint8)
    box[1:, 1:] = 1
    shapes = [
        _shape("road", [[0, 10], [23, 10], [23, 19], [0, 19]]),
        _shape("car", [[2, 1], [9, 6]], "rectangle"),
        _shape("sign", [[15.5, 5], [15.5, 8.5]], "circle"),
        _shape("road", [[4, 13], [8, 13], [8, 16], [4, 16]], description="hole"),   # a hole: void
        _shape("car", [[18, 12], [21, 14]], "mask", mask=_png_b64(box)),
        _shape("person", [[3.3, 3.7]], "point"),                                      # no area: not drawn
        _shape("person", [[0, 0], [5, 5]], "line"),
        _shape("sign", [[11, 2], [13, 2], [13, 4], [11, 4]], "rotation"),            # X-AnyLabeling
    ]
    _labelme_file(tmp_path / "src" / "street.json", shapes, h, w, image_path="street.png",
                  embed=base64.b64encode(buf.getvalue()).decode())
    source = read_labelme(tmp_path / "src")
    assert [c.name for c in source.classes] == ["road", "car", "sign", "person"]
    want = np.full((h, w), 255, np.uint8)
    want[_labelme_shape_to_mask(h, w, shapes[0])] = 0
    want[1:7, 2:10] = 1                                    # rectangle corners inclusive, as Pillow draws them
    assert np.array_equal(_labelme_shape_to_mask(h, w, shapes[1]), want == 1)
    want[_labelme_shape_to_mask(h, w, shapes[2])] = 2
    want[13:17, 4:9] = 255
    want[12:15, 18:22][box.astype(bool)] = 1
    want[2:5, 11:14] = 2
    rep = import_source(source, tmp_path / "dst")
    assert rep.imported == ["street.png"] and not rep.skipped
    # The point and the line are not lost silently: the report names the file and what it left out.
    assert rep.notes == [("street.json", f"{tmp_path / 'src' / 'street.json'}: 2 point or line shapes left out "
                                         "(no area to label)")]
    with AnnotationStore.open(tmp_path / "dst", read_only=True) as st:
        assert np.array_equal(st.load_mask("street.png"), want)
        assert st.status("street.png") is Status.REVIEWED
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dst" / "street.png").convert("RGB")), rgb)


def test_image_path_is_relative_to_the_json_and_kept_in_its_subfolder(tmp_path):
    (tmp_path / "src" / "imgs").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "src" / "imgs" / "a.jpg")
    _labelme_file(tmp_path / "src" / "ann" / "a.json", [_shape("x", [[0, 0], [7, 5]], "rectangle")], 6, 8,
                  image_path="../imgs/a.jpg")
    rep = import_source(read_labelme(tmp_path / "src"), tmp_path / "dst")
    assert rep.imported == ["ann/a.jpg"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    masks = {}
    yy, xx = np.mgrid[:30, :40]
    for k, name in enumerate(["a.jpg", "a.png", "sub/b.png"]):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / name, quality=90)
        m = np.zeros((30, 40), np.uint8)
        m[(yy - 15) ** 2 + (xx - 20) ** 2 < (10 + k) ** 2] = 21           # a disc ...
        m[(yy - 15) ** 2 + (xx - 20) ** 2 < 16] = 255 if k else 0          # ... with a hole (void or background)
        m[(yy - 15) ** 2 + (xx - 20) ** 2 < 2] = 3                         # an island in the hole
        m[2:5, 30 + k:38] = 7
        m[25, 2:30] = 15                                                   # a one-pixel stroke
        m[np.random.default_rng(k).random((30, 40)) < 0.01] = 255          # specks of void
        masks[name] = m
    st = AnnotationStore.open(folder, recursive=True)
    st.set_classes(default_classes() + [LabelClass("tree", (12, 200, 40))])
    for name, m in masks.items():
        st.save_mask(name, m, status=Status.REVIEWED)
    yield st
    st.close()


def test_round_trip_gives_back_the_same_masks(store, tmp_path):
    rep = export_labelme(store, tmp_path / "out")
    assert sorted(rep.exported) == ["a.jpg", "a.png", "sub/b.png"] and not rep.skipped
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"a.json", "a_png.json", "labels.txt", "a.jpg",
                                                                "a.png", "sub"}
    doc = json.loads((tmp_path / "out" / "sub" / "b.json").read_text())
    assert doc["imagePath"] == "b.png" and doc["imageData"] is None and (doc["imageHeight"], doc["imageWidth"]) == (30, 40)
    holes = [s for s in doc["shapes"] if s["flags"].get("hole")]
    assert all(s["description"] == "hole" for s in holes) and any(s["label"] == "tree" for s in holes)
    assert {s["shape_type"] for s in doc["shapes"]} <= {"polygon", "mask"}
    back = import_source(read_labelme(tmp_path / "out"), tmp_path / "back")
    assert sorted(back.imported) == ["a.jpg", "a.png", "sub/b.png"] and not back.skipped
    with AnnotationStore.open(tmp_path / "back", read_only=True) as st:
        assert st.classes[: len(store.classes)] == [LabelClass(c.name, st.classes[i].color)
                                                    for i, c in enumerate(store.classes)]
        for name in back.imported:
            assert np.array_equal(st.load_mask(name), store.load_mask(name)), name


def test_simple_regions_export_as_polygons_with_holes_only():
    yy, xx = np.mgrid[:40, :50]
    m = np.full((40, 50), 255, np.uint8)
    m[(yy - 20) ** 2 + (xx - 25) ** 2 < 15 ** 2] = 1
    m[(yy - 20) ** 2 + (xx - 25) ** 2 < 6 ** 2] = 255
    m[5:9, 40:48] = 0
    shapes = mask_shapes(m, ["a", "b"])
    assert [(s["label"], s["flags"].get("hole", False), s["shape_type"]) for s in shapes] == \
        [("b", False, "polygon"), ("b", True, "polygon"), ("a", False, "polygon")]
    assert len(shapes[2]["points"]) == 4  # straight runs merged: a box is its corners
    assert np.array_equal(draw_shapes(shapes, 40, 50, {"a": 0, "b": 1}), m)
    few = mask_shapes(m, ["a", "b"], simplify=1.5)
    assert len(few[0]["points"]) < len(shapes[0]["points"])


def test_unknown_labels_are_added_or_refused(tmp_path):
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "a.png")
    _labelme_file(tmp_path / "a.json", [_shape("zebra", [[0, 0], [3, 3]], "rectangle"),
                                        _shape("dog", [[4, 0], [7, 3]], "rectangle")], 6, 8, image_path="a.png")
    mine = default_classes()
    src = read_labelme(tmp_path / "a.json", classes=mine)
    assert [c.name for c in src.classes] == [c.name for c in mine] + ["zebra"]
    m = src.items[0].mask(6, 8)
    assert m[0, 0] == 21 and m[0, 5] == 12
    with pytest.raises(FormatError, match=r"label names not in the folder's class list: 'zebra'"):
        read_labelme(tmp_path / "a.json", classes=mine, unknown="refuse")


def test_bad_files_skip_their_image_with_a_message_and_write_nothing_for_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("ok", "size", "outside", "masksize", "circle"):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(src / f"{name}.png")
    rect = [_shape("x", [[0, 0], [3, 3]], "rectangle")]
    _labelme_file(src / "ok.json", rect, 6, 8, image_path="ok.png")
    (src / "corrupt.json").write_text('{"shapes": [')
    (src / "empty.json").write_text("")
    (src / "notlabelme.json").write_text('{"images": []}')
    _labelme_file(src / "missing.json", rect, 6, 8, image_path="missing.png")
    _labelme_file(src / "size.json", rect, 7, 8, image_path="size.png")
    _labelme_file(src / "outside.json", [_shape("x", [[0, 0], [30, 0], [30, 4]])], 6, 8, image_path="outside.png")
    _labelme_file(src / "masksize.json", [_shape("x", [[1, 1], [3, 3]], "mask",
                                                 mask=_png_b64(np.ones((2, 2), np.uint8)))], 6, 8,
                  image_path="masksize.png")
    _labelme_file(src / "circle.json", [_shape("x", [[1, 1]], "circle")], 6, 8, image_path="circle.png")
    _labelme_file(src / "garbage.json", rect, 6, 8, embed="bm90IGFuIGltYWdl")  # "not an image"
    _labelme_file(src / "nolabel.json", [_shape(" ", [[0, 0], [3, 3]], "rectangle")], 6, 8, image_path="ok.png")
    rep = import_source(read_labelme(src), tmp_path / "dst")
    assert rep.imported == ["ok.png"]
    why = dict(rep.skipped)
    assert "not valid JSON" in why["corrupt.json"] and str(src / "corrupt.json") in why["corrupt.json"]
    assert "the file is empty" in why["empty.json"]
    assert "not a labelme file" in why["notlabelme.json"]
    assert "missing.png: no such image" in why["missing.json"]
    assert "say 8x7 but the image is 8x6" in why["size.json"]
    assert "shape 1 ('x'): its points reach outside the 8x6 image" in why["outside.json"]
    assert "its mask is 2x2 but its box (1, 1)-(3, 3) is 3x3" in why["masksize.json"]
    assert "a circle needs 2 points" in why["circle.json"]
    assert "unreadable image" in why["garbage.json"]
    assert "shape 1 has no label" in why["nolabel.json"]
    assert len(why) == 10
    for reason in why.values():
        assert "\n" not in reason and "Error" not in reason
    assert sorted(p.name for p in (tmp_path / "dst").iterdir() if not p.name.startswith(".")) == ["ok.png"]


def test_export_is_registered_with_its_options():
    from engine.formats.registry import LABEL_FORMATS
    fmt = LABEL_FORMATS["labelme"]
    assert fmt.read is not None and fmt.write is not None
    assert {o.name for o in fmt.export_options()} == {"embed", "simplify"}
    assert "coco" in LABEL_FORMATS
