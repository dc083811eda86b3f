"""One test per bad input: a clear message, nothing lost, and the rest of the folder still works."""
from __future__ import annotations

import errno
import io
import os
import sqlite3

import numpy as np
import pytest
from PIL import Image

import engine.labels as masks_mod
from engine import (
    AnnotationStore,
    ImageReadError,
    MaskError,
    Status,
    StoreError,
    StoreWriteError,
    export_voc,
    import_voc,
    read_image,
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("good1.jpg", "good2.png"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(d / name)
    return d


def _mask(k=1):
    m = np.full((20, 30), k, np.uint8)
    m[:5] = 255
    return m


def _rest_still_works(store: AnnotationStore, tmp_path, n_expected=1):
    """The good images still save, load and export."""
    store.save_mask("good2.png", _mask(2))
    np.testing.assert_array_equal(store.load_mask("good2.png"), _mask(2))
    rep = export_voc(store, tmp_path / "voc_check")
    assert "good2" in rep.exported and len(rep.exported) >= n_expected
    return rep


def test_truncated_image(folder, tmp_path):
    data = (folder / "good1.jpg").read_bytes()
    (folder / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with AnnotationStore.open(folder) as st:
        assert "trunc.jpg" in st.ids()  # the scan does not decode
        with pytest.raises(ImageReadError, match="trunc.jpg") as err:
            read_image(st.image_path("trunc.jpg"))
        st.record_error("trunc.jpg", err.value.reason)
        assert st.error("trunc.jpg")
        # A mask saved for it earlier (e.g. before the file got damaged) is skipped at export, with why.
        st.save_mask("trunc.jpg", _mask())
        rep = _rest_still_works(st, tmp_path)
        assert [i for i, _ in rep.skipped] == ["trunc.jpg"] and "trunc" in rep.skipped[0][1].lower()
        assert st.load_mask("trunc.jpg") is not None  # nothing lost


def test_not_an_image(folder, tmp_path):
    (folder / "notes.jpg").write_text("this is text, not a JPEG")
    with AnnotationStore.open(folder) as st:
        with pytest.raises(ImageReadError, match="not an image"):
            read_image(st.image_path("notes.jpg"))
        _rest_still_works(st, tmp_path)


def test_empty_file(folder, tmp_path):
    (folder / "empty.png").write_bytes(b"")
    with AnnotationStore.open(folder) as st:
        assert "empty.png" not in st.ids()
        assert dict(st.scan_result.skipped)["empty.png"].startswith("empty file")
        _rest_still_works(st, tmp_path)


def test_image_over_pixel_limit(folder, tmp_path):
    Image.new("L", (400, 300)).save(folder / "huge.png")
    with AnnotationStore.open(folder) as st:
        with pytest.raises(ImageReadError, match="above the limit"):
            read_image(st.image_path("huge.png"), max_pixels=100_000)
        st.save_mask("huge.png", np.zeros((300, 400), np.uint8))  # header-only size check still works
        _rest_still_works(st, tmp_path)


def test_exif_rotated_image(folder, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30x20 landscape, shown 20x30 portrait
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "rot.jpg", exif=exif.tobytes())
    with AnnotationStore.open(folder) as st:
        with pytest.raises(MaskError, match="30x20 but the image is 20x30"):
            st.save_mask("rot.jpg", np.zeros((20, 30), np.uint8))
        st.save_mask("rot.jpg", np.zeros((30, 20), np.uint8))
        rep = _rest_still_works(st, tmp_path)
        assert "rot" in rep.exported
    with Image.open(tmp_path / "voc_check" / "JPEGImages" / "rot.jpg") as im:  # upright, as the mask
        assert im.convert("RGB").size == (20, 30)


def test_disk_full_keeps_old_mask(folder, tmp_path, monkeypatch):
    with AnnotationStore.open(folder) as st:
        st.save_mask("good1.jpg", _mask(1))
        st.set_status("good2.png", Status.PRELABELED)
        st.save_prediction("good2.png", _mask(0))
        real_fdopen = os.fdopen

        class FullDisk(io.RawIOBase):
            def __init__(self, fd):
                self.fh = real_fdopen(fd, "wb")

            def write(self, data):
                self.fh.write(bytes(data[:10]))  # part of it lands, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")

            def fileno(self):
                return self.fh.fileno()

            def close(self):
                self.fh.close()
                super().close()

        monkeypatch.setattr(masks_mod.os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(fd))
        with pytest.raises(StoreWriteError, match="disk is full.*previous version on disk is kept"):
            st.save_mask("good1.jpg", _mask(5))
        with pytest.raises(StoreWriteError, match="disk is full"):
            st.save_mask("good2.png", _mask(5))  # a failed first edit leaves the prediction's status
        monkeypatch.undo()
        np.testing.assert_array_equal(st.load_mask("good1.jpg"), _mask(1))
        np.testing.assert_array_equal(st.load_mask("good2.png"), _mask(0))
        assert st.status("good2.png") is Status.PRELABELED
        assert not list(st.root.rglob("*.tmp"))
        st.save_mask("good1.jpg", _mask(5))  # space is back: saving works again
        np.testing.assert_array_equal(st.load_mask("good1.jpg"), _mask(5))


def test_mask_of_wrong_size(folder, tmp_path):
    with AnnotationStore.open(folder) as st:
        st.save_mask("good1.jpg", _mask(1))
        with pytest.raises(MaskError, match="31x20 but the image is 30x20; nothing was saved"):
            st.save_mask("good1.jpg", np.zeros((20, 31), np.uint8))
        with pytest.raises(MaskError, match="HxW"):
            st.save_mask("good1.jpg", np.zeros((20, 30, 3), np.uint8))
        np.testing.assert_array_equal(st.load_mask("good1.jpg"), _mask(1))
        _rest_still_works(st, tmp_path)


def test_class_index_beyond_class_list(folder, tmp_path):
    with AnnotationStore.open(folder) as st:
        st.save_mask("good1.jpg", _mask(1))
        with pytest.raises(MaskError, match="class index 21 but the class list has 21 classes"):
            st.save_mask("good1.jpg", _mask(21))
        with pytest.raises(MaskError, match="class index"):
            st.save_prediction("good1.jpg", _mask(40), overwrite=True)
        np.testing.assert_array_equal(st.load_mask("good1.jpg"), _mask(1))
        # A class list shrunk on purpose: the masks that now overflow are skipped at export, with why.
        st.set_classes([("background", (0, 0, 0)), ("thing", (128, 0, 0))], allow_shrink=True)
        st.save_mask("good2.png", _mask(1))
        masks_mod.save_mask_png(st.mask_path("good1.jpg"), _mask(7))
        rep = export_voc(st, tmp_path / "voc")
        assert rep.exported == ["good2"]
        assert rep.skipped == [("good1.jpg", "class index 7 is beyond the 2-class list")]


def test_import_bad_masks(folder, tmp_path):
    voc = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rgb = np.zeros((20, 30, 3), np.uint8)
    for name in ("ok", "wrongsize", "badindex", "badcolour"):
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{name}.jpg")
    masks_mod.save_mask_png(voc / "SegmentationClass" / "ok.png", _mask(3))
    masks_mod.save_mask_png(voc / "SegmentationClass" / "wrongsize.png", np.zeros((10, 10), np.uint8))
    masks_mod.save_mask_png(voc / "SegmentationClass" / "badindex.png", _mask(30))
    odd = np.zeros((20, 30, 3), np.uint8)
    odd[0, 0] = (1, 2, 3)
    Image.fromarray(odd).save(voc / "SegmentationClass" / "badcolour.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("ok\nwrongsize\nbadindex\nbadcolour\nmissing\n")
    rep = import_voc(voc, folder)
    assert rep.imported == ["ok.jpg"]
    why = dict(rep.skipped)
    assert "10x10 but the image is 30x20" in why["wrongsize"]
    assert "class index 30" in why["badindex"]
    assert "colour (1, 2, 3) on 1 pixels is no class colour" in why["badcolour"]
    assert "no image" in why["missing"]
    assert not (folder / "wrongsize.jpg").exists()  # a rejected pair leaves no trace
    with AnnotationStore.open(folder) as st:
        assert st.status("ok.jpg") is Status.REVIEWED
        _rest_still_works(st, tmp_path)


def test_damaged_store_database(folder, tmp_path):
    with AnnotationStore.open(folder) as st:
        st.save_mask("good1.jpg", _mask(1))
        st.save_prediction("good2.png", _mask(0))
    db = folder / ".deeplab-gui" / "store.db"
    db.write_bytes(b"garbage, not sqlite" * 100)
    with AnnotationStore.open(folder) as st:
        assert "damaged" in st.notice and "rebuilt" in st.notice
        # Without the database, every mask counts as a person's: none can be overwritten by accident.
        assert st.status("good1.jpg") is Status.EDITED and st.status("good2.png") is Status.EDITED
        np.testing.assert_array_equal(st.load_mask("good1.jpg"), _mask(1))
        assert list(db.parent.glob("store.db.corrupt-*"))
        _rest_still_works(st, tmp_path)
    sqlite3.connect(db).execute("SELECT count(*) FROM images").fetchone()


def test_damaged_classes_file(folder, tmp_path):
    with AnnotationStore.open(folder) as st:
        st.set_classes(st.classes + [("tree", (1, 2, 3))])
    (folder / ".deeplab-gui" / "classes.json").write_text("{ not json")
    with AnnotationStore.open(folder) as st:
        assert "classes.json was unreadable" in st.notice and st.class_names[-1] == "tree"
        assert list((folder / ".deeplab-gui").glob("classes.json.damaged-*"))
        _rest_still_works(st, tmp_path)
    with AnnotationStore.open(folder) as st:  # restored for good
        assert st.notice is None and st.class_names[-1] == "tree"


def test_damaged_mask_file(folder, tmp_path):
    with AnnotationStore.open(folder) as st:
        st.save_mask("good1.jpg", _mask(1))
        st.mask_path("good1.jpg").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        with pytest.raises(StoreError, match="mask of good1.jpg is unreadable"):
            st.load_mask("good1.jpg")
        rep = _rest_still_works(st, tmp_path)
        assert [i for i, _ in rep.skipped] == ["good1.jpg"]
        st.save_mask("good1.jpg", _mask(4))  # a new save replaces the damaged file
        np.testing.assert_array_equal(st.load_mask("good1.jpg"), _mask(4))


def test_image_deleted_after_scan(folder, tmp_path):
    with AnnotationStore.open(folder) as st:
        (folder / "good1.jpg").unlink()
        st.save_mask("good1.jpg", _mask(1))  # the user's work is kept even so
        rep = _rest_still_works(st, tmp_path)
        assert [i for i, _ in rep.skipped] == ["good1.jpg"] and "no such file" in rep.skipped[0][1]
        assert st.load_mask("good1.jpg") is not None
