"""`deeplab-gui import FORMAT SRC FOLDER` and `deeplab-gui export FORMAT FOLDER OUT`.

Summary on stdout, skipped images on stderr, failures one line on stderr with no Python exception
name; `import-voc` / `export-voc` stay.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_gui.cli.parser import main
from engine import AnnotationStore, LabelClass, Status
from engine.formats.cityscapes import TRAIN_CLASSES

EXCEPTION_NAMES = re.compile(r"\b\w*(Error|Exception|Traceback)\b")
H, W = 8, 10
CLASSES = [LabelClass("background", (0, 0, 0)), LabelClass("road", (128, 64, 128))]


@pytest.fixture(autouse=True)
def _user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))


def _folder(path: Path, classes=CLASSES, n: int = 2) -> Path:
    path.mkdir(parents=True)
    with AnnotationStore.open(path) as store:
        store.set_classes(classes, allow_shrink=True)
        for i in range(n):
            Image.fromarray(np.full((H, W, 3), 50 + i, np.uint8)).save(path / f"im{i}.png")
            m = np.zeros((H, W), np.uint8)
            m[i:, : 3 + i] = 1
            store.save_mask(f"im{i}.png", m, status=Status.REVIEWED)
    return path


def _masks(folder: Path) -> dict[str, np.ndarray]:
    with AnnotationStore.open(folder, read_only=True) as store:
        return {i: store.load_mask(i) for i in store.known_ids()}


def test_help_lists_formats_and_their_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "import" in out and "export" in out and "import-voc" in out
    assert main(["import", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("voc", "masks", "cityscapes"):
        assert name in out
    assert main(["import", "masks", "--help"]) == 0
    assert "--reduce-zero-label" in capsys.readouterr().out
    assert main(["export", "voc", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--void-border" in out and "--include-prelabeled" in out and "--as-is" in out
    assert main(["import", "cityscapes", "--help"]) == 0
    assert "trainIds" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["masks", "voc"])
def test_export_then_import_gives_back_the_masks(fmt, tmp_path, capsys):
    src = _folder(tmp_path / "src")
    assert main(["export", fmt, str(src), str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"export {fmt}: 2 image(s) to ")
    assert main(["import", fmt, str(tmp_path / "out"), str(tmp_path / "back")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"import {fmt}: 2 imported into ")
    before, after = _masks(src), _masks(tmp_path / "back")
    key = (lambda i: i) if fmt == "masks" else (lambda i: i)  # VOC keeps ids in deeplab-gui.json
    assert {key(k): v.tolist() for k, v in before.items()} == {k: v.tolist() for k, v in after.items()}


def test_format_options_reach_the_reader(tmp_path, capsys):
    root = tmp_path / "ade"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images/a.jpg")
    (root / "annotations").mkdir()
    values = np.zeros((H, W), np.uint8)
    values[2:, 2:] = 2
    Image.fromarray(values, mode="L").save(root / "annotations/a.png")
    assert main(["import", "masks", str(root), str(tmp_path / "f"), "--reduce-zero-label",
                 "--status", "edited"]) == 0
    capsys.readouterr()
    expect = np.full((H, W), 255, np.uint8)
    expect[2:, 2:] = 1
    assert np.array_equal(_masks(tmp_path / "f")["a.jpg"], expect)
    with AnnotationStore.open(tmp_path / "f", read_only=True) as store:
        assert store.status("a.jpg") is Status.EDITED


def test_skips_go_to_stderr_and_the_summary_counts_them(tmp_path, capsys):
    root = tmp_path / "m"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images/a.png")
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(root / "annotations/a.png")
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(root / "annotations/lost.png")
    assert main(["import", "masks", str(root), str(tmp_path / "f")]) == 0
    out = capsys.readouterr()
    assert out.out.strip().endswith(", 1 skipped")
    assert f"warning: skipped: {root / 'annotations/lost.png'}: no image" in out.err


@pytest.mark.parametrize("argv, code, words", [
    (["import", "masks", "{t}/missing", "{t}/f"], 2, "no such file or folder"),
    (["import", "masks", "{t}", "{t}/f"], 1, "not a mask folder"),
    (["import", "nope", "{t}", "{t}/f"], 2, "invalid choice"),
    (["export", "masks", "{t}/missing", "{t}/o"], 2, "not a folder"),
    (["import", "cityscapes", "{t}", "{t}/f", "--ids", "colour"], 2, "invalid choice"),
])
def test_failures_are_one_line(argv, code, words, tmp_path, capsys):
    assert main([a.format(t=tmp_path) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err and not EXCEPTION_NAMES.search(err)


def test_cityscapes_export_refuses_another_class_list_in_one_line(tmp_path, capsys):
    src = _folder(tmp_path / "src")
    assert main(["export", "cityscapes", str(src), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("deeplab-gui export: ") and "19 training classes" in err and "\n" not in err
    src2 = _folder(tmp_path / "src2", classes=TRAIN_CLASSES)
    assert main(["export", "cityscapes", str(src2), str(tmp_path / "o2")]) == 0
    assert "export cityscapes: 2 image(s)" in capsys.readouterr().out


def test_nothing_to_export_fails(tmp_path, capsys):
    src = _folder(tmp_path / "src", n=0)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / "x.png")
    assert main(["export", "masks", str(src), str(tmp_path / "o")]) == 1
    assert "nothing to export" in capsys.readouterr().err


def test_import_labelme_names_each_file_whose_points_and_lines_were_left_out(tmp_path, capsys):
    import json
    src = tmp_path / "lm"
    src.mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(src / "a.png")
    shapes = [{"label": "cat", "points": [[1, 1], [8, 1], [8, 8], [1, 8]], "shape_type": "polygon"},
              {"label": "cat", "points": [[2, 2]], "shape_type": "point"}]
    (src / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": "a.png", "imageHeight": 10,
                                            "imageWidth": 12}))
    assert main(["import", "labelme", str(src), str(tmp_path / "dst")]) == 0
    out, err = capsys.readouterr()
    assert "1 imported" in out and "1 with shapes left out" in out
    assert f"note: {src / 'a.json'}: 1 point or line shape left out (no area to label)" in err
