"""Annotation store: layout, status rules, masks, probability cache, classes, lock, read-only folders."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from engine import mask_palette
from engine.store import format as storeformat
from engine.store.store import AnnotationStore, LabelClass, Status, StoreError, StoreLockedError, default_classes


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.jpg": (24, 32), "b.png": (20, 30), "c 3.jpg": (16, 16)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / name)
    return d


def _mask(h, w, k=1):
    m = np.full((h, w), k, np.uint8)
    m[0, :] = 255
    m[h // 2:, : w // 2] = 0
    return m


def test_layout_and_roundtrip(folder):
    with AnnotationStore.open(folder) as st:
        assert st.root == folder / ".deeplab-gui" and st.notice is None
        assert st.ids() == ["a.jpg", "b.png", "c 3.jpg"]
        assert all(s is Status.UNLABELED for s in st.statuses().values())
        m = _mask(24, 32, 7)
        st.save_mask("a.jpg", m)
        assert st.status("a.jpg") is Status.EDITED
        assert st.mask_path("a.jpg") == st.root / "masks" / "a.jpg.png"
        np.testing.assert_array_equal(st.load_mask("a.jpg"), m)
        assert st.load_mask("b.png") is None
        with Image.open(st.mask_path("a.jpg")) as im:  # a VOC-style palette PNG with 255 void
            assert im.mode == "P" and im.getpalette()[:63] == mask_palette()[:63]
        cls = json.loads((st.root / "classes.json").read_text())
        assert [c["name"] for c in cls["classes"]][:2] == ["background", "aeroplane"]
        for sub in ("masks", "probs", "checkpoints"):
            assert (st.root / sub).is_dir()
    with AnnotationStore.open(folder) as st:  # survives reopening
        assert st.status("a.jpg") is Status.EDITED and st.counts()[Status.EDITED] == 1
        np.testing.assert_array_equal(st.load_mask("a.jpg"), m)


def test_prediction_never_replaces_user_mask(folder):
    with AnnotationStore.open(folder) as st:
        pred = np.zeros((24, 32), np.uint8)
        assert st.save_prediction("a.jpg", pred) is True
        assert st.status("a.jpg") is Status.PRELABELED
        user = _mask(24, 32, 3)
        st.save_mask("a.jpg", user)
        assert not st.needs_prelabel("a.jpg") and st.needs_prelabel("b.png")
        assert st.save_prediction("a.jpg", pred) is False
        np.testing.assert_array_equal(st.load_mask("a.jpg"), user)
        st.set_status("a.jpg", Status.REVIEWED)
        st.save_mask("a.jpg", user)  # editing a reviewed mask keeps it reviewed
        assert st.status("a.jpg") is Status.REVIEWED
        assert st.save_prediction("a.jpg", pred) is False
        assert st.save_prediction("a.jpg", pred, overwrite=True) is True
        np.testing.assert_array_equal(st.load_mask("a.jpg"), pred)
        assert st.status("a.jpg") is Status.PRELABELED
        st.delete_mask("a.jpg")
        assert st.status("a.jpg") is Status.UNLABELED and not st.has_mask("a.jpg")


def test_probability_cache_tags_and_staleness(folder):
    with AnnotationStore.open(folder) as st:
        p = np.random.default_rng(1).dirichlet(np.ones(21), size=(20, 30)).transpose(2, 0, 1).astype(np.float32)
        st.save_prediction("b.png", p.argmax(0).astype(np.uint8), probs=p, model_id="tv-r50")
        got = st.load_probs("b.png", "tv-r50")
        assert got.probs.dtype == np.float32 and got.probs.shape == (21, 20, 30)
        np.testing.assert_allclose(got.probs, p, atol=1e-3)
        assert got.model_id == "tv-r50" and st.load_probs("b.png") is not None
        assert st.load_probs("b.png", "other-model") is None  # another model's cache is stale
        img = folder / "b.png"
        os.utime(img, ns=(time.time_ns(), os.stat(img).st_mtime_ns + 5_000_000_000))
        assert st.load_probs("b.png", "tv-r50") is None  # the image changed
        assert st.load_probs("a.jpg") is None


def test_probability_cache_budget_evicts_least_recent(folder):
    with AnnotationStore.open(folder, probs_budget=1) as st:
        for i in ("a.jpg", "b.png"):
            st.save_probs(i, np.full((2, 4, 4), 0.5, np.float32), model_id="m")
        # Budget of one byte: only the newest entry survives.
        assert st.load_probs("b.png") is not None and not st.probs_path("a.jpg").exists()


def test_classes_edit_and_validation(folder):
    with AnnotationStore.open(folder) as st:
        assert st.classes == default_classes()
        new = default_classes() + [LabelClass("tree", (10, 200, 30))]
        st.set_classes(new)
        assert st.class_names[-1] == "tree"
        with pytest.raises(StoreError, match="unique"):
            st.set_classes([("a", (0, 0, 0)), ("a", (1, 1, 1))])
        with pytest.raises(StoreError, match="fewer"):
            st.set_classes([("bg", (0, 0, 0))])
        st.save_mask("c 3.jpg", np.full((16, 16), 21, np.uint8))  # index 21 is valid now
    with AnnotationStore.open(folder) as st:
        assert st.classes[-1] == LabelClass("tree", (10, 200, 30))


def test_second_instance_is_refused_read_only_viewer_works(folder):
    with AnnotationStore.open(folder) as st:
        st.save_mask("a.jpg", _mask(24, 32))
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            AnnotationStore.open(folder)
        with AnnotationStore.open(folder, read_only=True) as viewer:
            assert viewer.status("a.jpg") is Status.EDITED
            with pytest.raises(StoreError, match="read-only"):
                viewer.save_mask("a.jpg", _mask(24, 32))
    AnnotationStore.open(folder).close()  # released on close


def test_read_only_folder_uses_user_data_dir(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(storeformat, "_probe_writable", lambda f: False)
    with AnnotationStore.open(folder) as st:
        assert st.root.is_relative_to(tmp_path / "userdata" / "stores")
        assert "read-only" in st.notice and str(st.root) in st.notice
        st.save_mask("a.jpg", _mask(24, 32))
    assert not (folder / ".deeplab-gui" / "masks" / "a.jpg.png").exists()
    with AnnotationStore.open(folder) as st:  # the same user-dir store is found again
        assert st.status("a.jpg") is Status.EDITED
    with AnnotationStore.open(folder, read_only=True) as viewer:
        assert viewer.status("a.jpg") is Status.EDITED


def test_recursive_setting_is_remembered(folder):
    (folder / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "sub" / "d.png")
    with AnnotationStore.open(folder, recursive=True) as st:
        assert "sub/d.png" in st.ids()
        st.save_mask("sub/d.png", np.zeros((8, 8), np.uint8))
        assert st.mask_path("sub/d.png") == st.root / "masks" / "sub" / "d.png.png"
    with AnnotationStore.open(folder) as st:
        assert st.recursive and "sub/d.png" in st.ids()


def test_invalid_ids_are_refused(folder):
    with AnnotationStore.open(folder) as st:
        for bad in ("../x.jpg", "/etc/passwd", "a/../../b.png", ".deeplab-gui/store.db", ""):
            with pytest.raises(StoreError, match="invalid image id"):
                st.save_mask(bad, np.zeros((2, 2), np.uint8))


def test_orphan_temp_files_are_removed(folder):
    AnnotationStore.open(folder).close()
    tmp = folder / ".deeplab-gui" / "masks" / ".a.jpg.png.abc123.tmp"
    tmp.write_bytes(b"half a png")
    AnnotationStore.open(folder).close()
    assert not tmp.exists()


def test_checkpoint_versions(folder):
    with AnnotationStore.open(folder) as st:
        p1 = st.new_checkpoint_path("r50 tuned")
        assert p1.name == "r50_tuned-v001.safetensors" and p1.parent == st.checkpoints_dir
        p1.write_bytes(b"x")
        assert st.new_checkpoint_path("r50 tuned").name == "r50_tuned-v002.safetensors"
        assert st.list_checkpoints() == [p1]


def test_record_error(folder):
    with AnnotationStore.open(folder) as st:
        st.record_error("b.png", "truncated image file")
    with AnnotationStore.open(folder) as st:
        assert st.error("b.png") == "truncated image file" and st.status("b.png") is Status.UNLABELED
        st.record_error("b.png", None)
        assert st.error("b.png") is None
