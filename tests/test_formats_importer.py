"""The shared import seam (engine.formats.importer) and the format registry.

Imported masks count as set by a person (every pixel confirmed), even where they replace an edited
mask whose own map said otherwise; a bad item skips alone and leaves nothing of itself behind.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, LabelClass, Status
from engine.formats import LABEL_FORMATS, ImportSource, SkipItem, SourceItem, import_source

H, W = 10, 14
CLASSES = [LabelClass("background", (0, 0, 0)), LabelClass("cat", (200, 0, 0))]


def _png(path: Path, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path)
    return path


def _mask(value: int = 1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[2:6, 3:9] = value
    return m


def _source(root: Path, items) -> ImportSource:
    return ImportSource(root=root, classes=list(CLASSES), classes_from="the test", items=items)


def test_imported_mask_replaces_a_partial_person_map_with_a_whole_one(tmp_path):
    folder = tmp_path / "folder"
    img = _png(folder / "a.png")
    with AnnotationStore.open(folder) as store:
        store.set_classes(CLASSES, allow_shrink=True)
        half = np.zeros((H, W), bool)
        half[:, : W // 2] = True
        store.save_mask("a.png", _mask(0), status=Status.EDITED, confirmed=half)
        assert not store.load_confirmed("a.png").all()
    item = SourceItem(key="a", image_id="a.png", image=img, mask=lambda h, w: _mask(1), status=Status.EDITED)
    rep = import_source(_source(tmp_path, [item]), folder, overwrite=True)
    assert rep.imported == ["a.png"], rep.skipped
    with AnnotationStore.open(folder, read_only=True) as store:
        assert store.status("a.png") is Status.EDITED
        assert np.array_equal(store.load_mask("a.png"), _mask(1))
        assert store.load_confirmed("a.png").all()


def test_default_status_is_reviewed_and_embedded_bytes_are_copied(tmp_path):
    src = _png(tmp_path / "src" / "b.png", 40)
    item = SourceItem(key="b", image_id="sub/b.png", image=src.read_bytes(), mask=lambda h, w: _mask())
    rep = import_source(_source(tmp_path / "src", [item]), tmp_path / "folder")
    assert rep.imported == ["sub/b.png"], rep.skipped
    assert (tmp_path / "folder" / "sub" / "b.png").read_bytes() == src.read_bytes()
    with AnnotationStore.open(tmp_path / "folder", read_only=True) as store:
        assert store.status("sub/b.png") is Status.REVIEWED
        assert store.load_confirmed("sub/b.png").all()
        assert [c.name for c in store.classes] == ["background", "cat"]


def test_bad_items_skip_alone_and_leave_nothing(tmp_path):
    src = tmp_path / "src"
    good = _png(src / "good.png")
    (src / "broken.png").write_bytes(b"not an image")

    def refuse(h, w):
        raise SkipItem("m.json: polygon outside the image")

    items = [SourceItem("good", "good.png", good, lambda h, w: _mask()),
             SourceItem("skip", "skip.png", _png(src / "skip.png"), refuse),
             SourceItem("size", "size.png", _png(src / "size.png"), lambda h, w: np.zeros((3, 3), np.uint8),
                        origin="size_mask.png"),
             SourceItem("index", "index.png", _png(src / "index.png"), lambda h, w: _mask(7)),
             SourceItem("broken", "broken.png", src / "broken.png", lambda h, w: _mask()),
             SourceItem("missing", "missing.png", src / "missing.png", lambda h, w: _mask()),
             SourceItem("escape", "../out.png", good, lambda h, w: _mask()),
             SourceItem("known", "known.png", good, lambda h, w: _mask(), problem="list.txt: no mask for known")]
    rep = import_source(_source(src, items), tmp_path / "folder")
    assert rep.imported == ["good.png"]
    reasons = dict(rep.skipped)
    assert reasons["skip"] == "m.json: polygon outside the image"
    assert reasons["size"] == f"size_mask.png: mask is 3x3 but the image is {W}x{H}"
    assert "class index 7 is beyond the 2-class list (class list: the test)" in reasons["index"]
    assert str(src / "broken.png") in reasons["broken"]
    assert str(src / "missing.png") in reasons["missing"]
    assert "invalid image id" in reasons["escape"]
    assert reasons["known"] == "list.txt: no mask for known"
    files = sorted(p.name for p in (tmp_path / "folder").iterdir() if p.is_file())
    assert files == ["good.png"]
    assert not (tmp_path / "out.png").exists()


def test_nothing_accepted_leaves_the_folder_untouched(tmp_path):
    item = SourceItem("x", "x.png", tmp_path / "nope.png", lambda h, w: _mask())
    rep = import_source(_source(tmp_path, [item]), tmp_path / "folder")
    assert rep.imported == [] and len(rep.skipped) == 1
    assert not (tmp_path / "folder").exists()


def test_registry_offers_voc_both_ways():
    voc = LABEL_FORMATS["voc"]
    assert voc.read is not None and voc.write is not None
    assert {o.name for o in voc.import_options()} == {"split"}
    assert {o.flag for o in voc.export_options()} == {"--void-border", "--val-fraction", "--seed"}
    with pytest.raises(KeyError):
        LABEL_FORMATS["no-such-format"]
