"""The store's click-embedding cache: round trip, staleness, LRU budget, damaged files, old and read-only stores."""
from __future__ import annotations

import json
import os
import sqlite3
import time

import numpy as np
import pytest
from PIL import Image

from engine.click import ClickEmbedding
from engine.store.store import AnnotationStore, StoreError


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.jpg": (24, 32), "b.png": (20, 30), "sub/c.png": (16, 16)}.items():
        (d / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / name)
    return d


def _emb(seed=0, model="mobile_sam", size=(20, 30)) -> ClickEmbedding:
    rng = np.random.default_rng(seed)
    feats = {"image_embed": rng.standard_normal((1, 8, 4, 4)).astype(np.float32),
             "high_res_0": (rng.standard_normal((1, 2, 8, 8)) * 30).astype(np.float32)}
    return ClickEmbedding(feats, size, (1024, 1024 * size[1] // size[0]), model)


def test_round_trip_in_float16_with_its_tags(folder):
    emb = _emb()
    with AnnotationStore.open(folder) as st:
        st.save_embedding("b.png", emb, model_id="cat:mobile_sam")
        got = st.load_embedding("b.png", "cat:mobile_sam")
        path = st.embedding_path("b.png")
    assert got is not None and got.model == "mobile_sam"
    assert got.original_size == (20, 30) and got.input_size == emb.input_size
    assert list(got.features) == list(emb.features)
    for k, v in emb.features.items():
        assert got.features[k].dtype == np.float32 and got.features[k].shape == v.shape
        np.testing.assert_allclose(got.features[k], v, rtol=1e-3, atol=1e-3)
    # Readable without pickle; features are half precision on disk; the tags are plain JSON.
    with np.load(path, allow_pickle=False) as npz:
        assert npz["feat_image_embed"].dtype == np.float16
        meta = json.loads(str(npz["meta"][()]))
    assert meta["model_id"] == "cat:mobile_sam" and meta["model"] == "mobile_sam"
    assert meta["original_size"] == [20, 30] and meta["image"]["bytes"] == os.stat(folder / "b.png").st_size


def test_values_beyond_float16_are_kept_exactly(folder):
    emb = _emb()
    emb.features["high_res_0"][0, 0, 0, 0] = 1e6   # would be inf in float16
    with AnnotationStore.open(folder) as st:
        st.save_embedding("a.jpg", emb, model_id="m")
        got = st.load_embedding("a.jpg", "m")
    assert got.features["high_res_0"][0, 0, 0, 0] == 1e6
    np.testing.assert_array_equal(got.features["high_res_0"], emb.features["high_res_0"])


def test_stale_for_another_model_or_a_changed_image(folder):
    with AnnotationStore.open(folder) as st:
        st.save_embedding("sub/c.png", _emb(size=(16, 16)), model_id="model-1")
        assert st.load_embedding("sub/c.png", "model-1") is not None
        assert st.load_embedding("sub/c.png", "model-2") is None
        assert st.load_embedding("a.jpg", "model-1") is None   # never cached
        img = folder / "sub" / "c.png"
        os.utime(img, ns=(time.time_ns(), os.stat(img).st_mtime_ns + 5_000_000_000))
        assert st.load_embedding("sub/c.png", "model-1") is None


def test_budget_drops_the_least_recently_used(folder):
    one = None
    with AnnotationStore.open(folder) as st:
        st.save_embedding("a.jpg", _emb(), model_id="m")
        one = st.embedding_path("a.jpg").stat().st_size
    # Room for two entries, not three: the one not used for longest goes.
    with AnnotationStore.open(folder, embeddings_budget=2 * one + one // 2) as st:
        st.save_embedding("b.png", _emb(1), model_id="m")
        assert st.load_embedding("a.jpg", "m") is not None   # a.jpg now more recent than b.png
        st.save_embedding("sub/c.png", _emb(2), model_id="m")
        assert st.load_embedding("b.png", "m") is None and not st.embedding_path("b.png").exists()
        assert st.load_embedding("a.jpg", "m") is not None
        assert st.load_embedding("sub/c.png", "m") is not None


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "no-meta"])
def test_damaged_file_is_a_miss(folder, damage):
    with AnnotationStore.open(folder) as st:
        st.save_embedding("a.jpg", _emb(), model_id="m")
        path = st.embedding_path("a.jpg")
        data = path.read_bytes()
        if damage == "empty":
            path.write_bytes(b"")
        elif damage == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif damage == "garbage":
            path.write_bytes(b"\x00not a zip" * 50)
        else:
            with open(path, "wb") as fh:
                np.savez(fh, feat_image_embed=np.zeros(3, np.float16))
        assert st.load_embedding("a.jpg", "m") is None
        st.save_embedding("a.jpg", _emb(), model_id="m")   # and it can be written again
        assert st.load_embedding("a.jpg", "m") is not None


def test_read_only_store_loads_but_refuses_to_save(folder):
    with AnnotationStore.open(folder) as st:
        st.save_embedding("a.jpg", _emb(), model_id="m")
        with AnnotationStore.open(folder, read_only=True) as viewer:
            assert viewer.load_embedding("a.jpg", "m") is not None
            with pytest.raises(StoreError, match="read-only") as info:
                viewer.save_embedding("b.png", _emb(), model_id="m")
            assert "\n" not in str(info.value)
            assert not viewer.embedding_path("b.png").exists()


def test_a_store_from_before_the_table_gains_it(folder):
    AnnotationStore.open(folder).close()
    db = sqlite3.connect(folder / ".deeplab-gui" / "store.db")
    db.execute("DROP TABLE embeddings")
    db.commit()
    db.close()
    with AnnotationStore.open(folder, read_only=True) as viewer:   # old store, read-only: nothing cached
        assert viewer.load_embedding("a.jpg", "m") is None
    with AnnotationStore.open(folder) as st:
        st.save_embedding("a.jpg", _emb(), model_id="m")
        assert st.load_embedding("a.jpg", "m") is not None
    db = sqlite3.connect(folder / ".deeplab-gui" / "store.db")
    assert db.execute("SELECT id, model_id FROM embeddings").fetchall() == [("a.jpg", "m")]
    db.close()
