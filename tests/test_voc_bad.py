"""import-voc / export-voc on broken datasets and bad destinations, from the command line.

Each problem ends in one stderr line naming the file, a non-zero exit and no Python exception name;
a dataset that cannot be read leaves FOLDER exactly as it was; a bad image is skipped and listed
while the rest is imported; nothing is copied into FOLDER unless its mask was accepted.
"""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_gui.cli.parser import main
from engine import AnnotationStore, LabelClass, Status, StoreWriteError, default_classes, save_mask_png
from engine.meta import voc_colormap

EXCEPTION_NAMES = re.compile(r"\b\w*(Error|Exception|Traceback)\b")
H, W = 12, 16


@pytest.fixture(autouse=True)
def _user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))


def _mask(value: int = 1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[2:8, 3:10] = value
    m[0, :] = 255
    return m


def _voc(root: Path, ids=("a", "b", "c"), *, info=None, names=None) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(ids))
    for vid in ids:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{vid}.jpg")
        save_mask_png(root / "SegmentationClass" / f"{vid}.png", _mask())
    (root / "ImageSets/Segmentation/train.txt").write_text("".join(f"{v}\n" for v in ids))
    if info is not None:
        (root / "deeplab-gui.json").write_text(info if isinstance(info, str) else json.dumps(info))
    if names is not None:
        (root / "class_names.txt").write_bytes(names if isinstance(names, bytes) else names.encode())
    return root


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes (the sqlite side files aside: a reader may create them)."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _run(capsys, *argv) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    for ln in lines:
        assert not EXCEPTION_NAMES.search(ln), ln
    return code, lines


@pytest.fixture
def labelled(tmp_path) -> Path:
    """An image folder whose store holds one person's mask under a custom 3-class list."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(folder / "mine.png")
    with AnnotationStore.open(folder) as st:
        st.set_classes([("background", (0, 0, 0)), ("cat", (9, 9, 9)), ("dog", (7, 7, 7))], allow_shrink=True)
        st.save_mask("mine.png", _mask(2), status=Status.REVIEWED)
    return folder


# ------------------------------------------------------------------------------ refusals: FOLDER untouched
BAD_INFO = {
    "a list": ([1, 2], "expected a JSON object"),
    "classes a string": ({"classes": "background,cat"}, '"classes" must be a non-empty list'),
    "classes empty": ({"classes": []}, "an empty list"),
    "class not an object": ({"classes": ["background"]}, "class 0 must be an object"),
    "class without name": ({"classes": [{"color": [0, 0, 0]}]}, "class 0 has no name"),
    "colour of two values": ({"classes": [{"name": "bg", "color": [0, 0]}]}, '"color" must be three integers'),
    "colour a string": ({"classes": [{"name": "bg", "color": "red"}]}, '"color" must be three integers'),
    "colour out of range": ({"classes": [{"name": "bg", "color": [0, 0, 300]}]}, "three integers 0..255"),
    "name twice": ({"classes": [{"name": "bg", "color": [0, 0, 0]}, {"name": "bg", "color": [1, 1, 1]}]},
                   "'bg' appears twice"),
    "256 classes": ({"classes": [{"name": f"c{i}", "color": [i % 256, 0, 0]} for i in range(256)]},
                    "256 classes, but at most 255"),
    "images a list": ({"images": ["a"]}, '"images" must be an object'),
    "image entry a string": ({"images": {"a": "a.jpg"}}, "images['a'] must be an object"),
    "image id escapes": ({"images": {"a": {"id": "../a.jpg"}}}, "invalid image id"),
    "image id no image": ({"images": {"a": {"id": "a.txt"}}}, "no image file name"),
    "status unknown": ({"images": {"a": {"id": "a.jpg", "status": "done"}}}, '"status" must be one of'),
    "newer format": ({"format": 7}, "newer deeplab-gui"),
    "name with a line break": ({"classes": [{"name": "a\nb", "color": [0, 0, 0]}]}, "contains a line break"),
    "hidden image id": ({"images": {"a": {"id": "sub/.cache/a.jpg"}}}, "would be a hidden file"),
    "not JSON": ('{"classes": [', "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_INFO))
def test_malformed_metadata_refuses_and_leaves_folder_alone(case, tmp_path, labelled, capsys):
    info, expected = BAD_INFO[case]
    voc = _voc(tmp_path / "voc", info=info)
    before = _snapshot(labelled)
    code, lines = _run(capsys, "import-voc", voc, labelled)
    assert code == 1 and len(lines) == 1, lines
    assert str(voc / "deeplab-gui.json") in lines[0] and expected in lines[0]
    assert _snapshot(labelled) == before


def test_metadata_not_utf8_refuses(tmp_path, capsys):
    voc = _voc(tmp_path / "voc")
    (voc / "deeplab-gui.json").write_bytes(b'{"classes": "\xff"}')
    code, lines = _run(capsys, "import-voc", voc, tmp_path / "new")
    assert code == 1 and len(lines) == 1
    assert "deeplab-gui.json: not UTF-8 text (byte 0xff on line 1)" in lines[0]
    assert not (tmp_path / "new").exists()  # a refused import creates no folder


@pytest.mark.parametrize("names, expected", [
    ("".join(f"class{i}\n" for i in range(300)), "300 classes, but at most 255"),
    (b"background\ncat\xe9\n", "not UTF-8 text (byte 0xe9 on line 2)"),
    ("\n  \n", "lists no class names"),
    ("background\ncat\ncat\n", "the class name 'cat' appears twice"),
])
def test_bad_class_names_file_refuses(names, expected, tmp_path, labelled, capsys):
    voc = _voc(tmp_path / "voc", names=names)
    before = _snapshot(labelled)
    code, lines = _run(capsys, "import-voc", voc, labelled)
    assert code == 1 and len(lines) == 1, lines
    assert f"{voc / 'class_names.txt'}: {expected}" in lines[0]
    assert _snapshot(labelled) == before


def test_bad_split_files_refuse(tmp_path, capsys):
    voc = _voc(tmp_path / "voc")
    split = voc / "ImageSets/Segmentation/train.txt"
    split.write_bytes(b"a\nb\xff\xfe\n")
    code, lines = _run(capsys, "import-voc", voc, tmp_path / "new")
    assert code == 1 and len(lines) == 1 and f"{split}: not UTF-8 text (byte 0xff on line 2)" in lines[0]
    split.write_text("\n\n")
    code, lines = _run(capsys, "import-voc", voc, tmp_path / "new")
    assert code == 1 and len(lines) == 1 and f"{split}: the split files list no ids" in lines[0]
    code, lines = _run(capsys, "import-voc", voc, tmp_path / "new", "--split", "val")
    assert code == 1 and len(lines) == 1
    assert f"{voc / 'ImageSets/Segmentation/val.txt'}: no such split file (there are: train)" in lines[0]
    assert not (tmp_path / "new").exists()


def test_class_list_clashing_with_existing_masks_refuses(tmp_path, labelled, capsys):
    voc = _voc(tmp_path / "voc")  # no class list: VOC's 21, whose class 1 is not the folder's "cat"
    before = _snapshot(labelled)
    code, lines = _run(capsys, "import-voc", voc, labelled)
    assert code == 1 and len(lines) == 1
    assert "already has masks" in lines[0] and "names class 1 'aeroplane' where the folder has 'cat'" in lines[0]
    assert _snapshot(labelled) == before


def test_folder_open_elsewhere_refuses_before_copying(tmp_path, labelled, capsys):
    voc = _voc(tmp_path / "voc", info={"classes": [{"name": n, "color": [i, i, i]}
                                                   for i, n in enumerate(["background", "cat", "dog"])]})
    with AnnotationStore.open(labelled):  # as the app would hold it
        code, lines = _run(capsys, "import-voc", voc, labelled)
    assert code == 1 and len(lines) == 1 and "already open" in lines[0]
    assert not (labelled / "a.jpg").exists()


# ------------------------------------------------------------------------------ one bad image: skipped
def _break(voc: Path) -> dict[str, str]:
    """Damage one image each way; returns VOC id -> the words its reason must contain."""
    (voc / "ImageSets/Segmentation/train.txt").write_text(
        "good\nsize\nmode\nindex\nnojpg\nbadjpg\nbadpng\n../escape\n")
    rng = np.random.default_rng(5)
    for vid in ("good", "size", "mode", "index", "badjpg", "badpng"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{vid}.jpg")
    for vid in ("good", "nojpg", "badjpg"):
        save_mask_png(voc / "SegmentationClass" / f"{vid}.png", _mask())
    save_mask_png(voc / "SegmentationClass" / "size.png", np.zeros((H + 1, W), np.uint8))
    Image.new("LA", (W, H)).save(voc / "SegmentationClass" / "mode.png")
    save_mask_png(voc / "SegmentationClass" / "index.png", _mask(40))
    (voc / "JPEGImages" / "badjpg.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (voc / "SegmentationClass" / "badpng.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"size": f"size.png: mask is {W}x{H + 1} but the image is {W}x{H}",
            "mode": "mode.png: mask mode LA is neither class indices",
            "index": "index.png: class index 40 is beyond the 21-class list",
            "nojpg": "nojpg.jpg: no image for this id", "badjpg": "badjpg.jpg:",
            "badpng": "badpng.png: unreadable mask", "../escape": "train.txt: the id '../escape' contains a path"}


def test_bad_images_are_skipped_and_listed_the_rest_imported(tmp_path, capsys):
    voc = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    expected = _break(voc)
    folder = tmp_path / "new"
    code, lines = _run(capsys, "import-voc", voc, folder)
    assert code == 0
    *warnings, summary = lines
    assert summary.startswith(f"import-voc: 1 imported into {folder}, 7 skipped: ")
    assert len(warnings) == 7 and all(w.startswith("warning: skipped: ") for w in warnings)
    for vid, words in expected.items():
        assert sum(words in w for w in warnings) == 1, (vid, warnings)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["good.jpg"]
    with AnnotationStore.open(folder) as st:
        assert st.ids() == ["good.jpg"] and st.status("good.jpg") is Status.REVIEWED


def test_nothing_importable_changes_neither_images_nor_class_list(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    with AnnotationStore.open(folder) as st:  # a class list of its own, no masks yet
        st.set_classes([("background", (0, 0, 0)), ("tree", (0, 99, 0))], allow_shrink=True)
    voc = _voc(tmp_path / "voc", ids=("only",))
    save_mask_png(voc / "SegmentationClass" / "only.png", np.zeros((H, W + 3), np.uint8))
    before = _snapshot(folder)
    code, lines = _run(capsys, "import-voc", voc, folder)
    assert code == 1 and len(lines) == 1
    assert "nothing imported" in lines[0] and "1 skipped" in lines[0] and "only.png: mask is" in lines[0]
    assert _snapshot(folder) == before
    with AnnotationStore.open(folder) as st:
        assert st.class_names == ["background", "tree"]
    code, lines = _run(capsys, "import-voc", voc, tmp_path / "absent")
    assert code == 1 and len(lines) == 1 and not (tmp_path / "absent").exists()


def test_rgb_and_16_bit_masks_and_colours(tmp_path, capsys):
    voc = _voc(tmp_path / "voc", ids=("rgb", "wide", "odd", "over"))
    cmap = np.array(voc_colormap(256), np.uint8)
    Image.fromarray(cmap[_mask(3)]).save(voc / "SegmentationClass" / "rgb.png")
    Image.fromarray(_mask(4).astype(np.uint16)).save(voc / "SegmentationClass" / "wide.png")
    odd = cmap[_mask(3)]
    odd[5, 5] = (1, 2, 3)
    Image.fromarray(odd).save(voc / "SegmentationClass" / "odd.png")
    Image.fromarray(np.full((H, W), 300, np.uint16)).save(voc / "SegmentationClass" / "over.png")
    folder = tmp_path / "new"
    code, lines = _run(capsys, "import-voc", voc, folder)
    assert code == 0 and lines[-1].startswith("import-voc: 2 imported")
    assert any("odd.png: colour (1, 2, 3) on 1 pixels is no class colour" in ln for ln in lines)
    assert any("over.png: 16-bit mask with values up to 300" in ln for ln in lines)
    with AnnotationStore.open(folder) as st:
        np.testing.assert_array_equal(st.load_mask("rgb.jpg"), _mask(3))
        np.testing.assert_array_equal(st.load_mask("wide.jpg"), _mask(4))
        assert not (folder / "odd.jpg").exists() and not (folder / "over.jpg").exists()


def test_existing_different_image_is_never_replaced(tmp_path, capsys):
    voc = _voc(tmp_path / "voc", ids=("a",))
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "a.jpg")
    before = (folder / "a.jpg").read_bytes()
    code, lines = _run(capsys, "import-voc", voc, folder)
    assert code == 1 and len(lines) == 1 and "a.jpg: already exists in the folder with different content" in lines[0]
    assert (folder / "a.jpg").read_bytes() == before


# ------------------------------------------------------------------------------ write failures: stop, roll back
def _fail_save_mask(monkeypatch, on_call: int) -> None:
    """Make the store's ``save_mask`` report a full disk on its ``on_call``-th call."""
    real = AnnotationStore.save_mask
    calls = []

    def full_disk(self, image_id, mask, **kw):
        calls.append(image_id)
        if len(calls) == on_call:
            raise StoreWriteError(f"could not save the mask of {image_id}: the disk is full")
        return real(self, image_id, mask, **kw)

    monkeypatch.setattr(AnnotationStore, "save_mask", full_disk)


def test_write_failure_stops_and_rolls_back_the_image(tmp_path, capsys, monkeypatch):
    voc = _voc(tmp_path / "voc", ids=("a", "b", "c"))
    folder = tmp_path / "new"
    _fail_save_mask(monkeypatch, on_call=2)
    code, lines = _run(capsys, "import-voc", voc, folder)
    assert code == 1 and len(lines) == 1
    assert "the disk is full" in lines[0] and "stopped after 1 image(s), nothing of b was kept" in lines[0]
    assert (folder / "a.jpg").exists() and not (folder / "b.jpg").exists() and not (folder / "c.jpg").exists()
    with AnnotationStore.open(folder) as st:
        assert st.known_ids() == ["a.jpg"]


def test_write_failure_on_the_first_image_keeps_the_class_list(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    with AnnotationStore.open(folder) as st:  # a class list of its own, no masks yet
        st.set_classes([("background", (0, 0, 0)), ("tree", (0, 99, 0))], allow_shrink=True)
    voc = _voc(tmp_path / "voc", ids=("a", "b"))
    _fail_save_mask(monkeypatch, on_call=1)
    code, lines = _run(capsys, "import-voc", voc, folder)
    assert code == 1 and len(lines) == 1 and "stopped after 0 image(s), nothing of a was kept" in lines[0]
    assert sorted(p.name for p in folder.iterdir()) == [".deeplab-gui"]
    with AnnotationStore.open(folder) as st:
        assert st.class_names == ["background", "tree"] and not st.known_ids()


# ------------------------------------------------------------------------------ export-voc
@pytest.fixture
def exportable(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(np.full((H, W, 3), 60, np.uint8)).save(folder / name)
    with AnnotationStore.open(folder) as st:
        st.save_mask("a.png", _mask(), status=Status.EDITED)
        st.save_mask("b.jpg", _mask(), status=Status.EDITED)
    return folder


@pytest.mark.parametrize("where, expected", [
    ("inside", "is inside the image folder"),
    ("store", "inside the image folder's store"),
    ("a file", "is a file, not a folder"),
    ("parent", "where the export writes"),
])
def test_export_refuses_bad_destinations(where, expected, tmp_path, exportable, capsys):
    out = {"inside": exportable / "voc", "store": exportable / ".deeplab-gui" / "voc",
           "a file": tmp_path / "out.txt", "parent": tmp_path}[where]
    if where == "a file":
        out.write_text("x")
    if where == "parent":  # the folder is OUT/JPEGImages: exporting there would write into it
        exportable = exportable.rename(tmp_path / "JPEGImages")
    before = _snapshot(tmp_path)
    code, lines = _run(capsys, "export-voc", exportable, out)
    assert code == 1 and len(lines) == 1 and expected in lines[0] and str(out) in lines[0]
    assert _snapshot(tmp_path) == before


def test_export_bad_options_and_masks(tmp_path, exportable, capsys):
    code, lines = _run(capsys, "export-voc", exportable, tmp_path / "v", "--val-fraction", "1.5")
    assert code == 2 and len(lines) == 1 and "--val-fraction" in lines[0] and not (tmp_path / "v").exists()
    with AnnotationStore.open(exportable) as st:  # masks a shrunk class list no longer covers
        save_mask_png(st.mask_path("a.png"), _mask(30))
        st.mask_path("b.jpg").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, lines = _run(capsys, "export-voc", exportable, tmp_path / "v")
    assert code == 1 and lines[-1].startswith(f"deeplab-gui export-voc: nothing exported to {tmp_path / 'v'}, 2 skipped")
    assert any("a.png: class index 30 is beyond the 21-class list" in ln for ln in lines)
    assert any("b.jpg:" in ln and "unreadable" in ln for ln in lines)


def test_export_write_failure_stops_with_one_line(tmp_path, exportable, capsys, monkeypatch):
    import engine.formats.voc as voc_mod

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(voc_mod, "atomic_write_bytes", full)
    code, lines = _run(capsys, "export-voc", exportable, tmp_path / "v")
    assert code == 1 and len(lines) == 1
    assert "could not write" in lines[0] and "the disk is full" in lines[0] and "the export stopped" in lines[0]
    assert not (tmp_path / "v" / "ImageSets" / "Segmentation" / "trainval.txt").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through permissions")
def test_export_into_read_only_folder(tmp_path, exportable, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, lines = _run(capsys, "export-voc", exportable, out)
    finally:
        out.chmod(0o755)
    assert code == 1 and len(lines) == 1 and "permission denied" in lines[0] and str(out) in lines[0]


def test_import_of_a_good_export_still_round_trips(tmp_path, exportable, capsys):
    assert main(["export-voc", str(exportable), str(tmp_path / "v")]) == 0
    code, lines = _run(capsys, "import-voc", tmp_path / "v", tmp_path / "again")
    assert code == 0 and lines[-1] == f"import-voc: 2 imported into {tmp_path / 'again'}"
    with AnnotationStore.open(tmp_path / "again") as st:
        assert st.classes == default_classes() and sorted(st.ids()) == ["a.png", "b.jpg"]
        assert all(isinstance(c, LabelClass) for c in st.classes)
