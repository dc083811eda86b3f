"""VOC export/import: the tree reads back through a VOCSegmentation-style loader; round trips are exact."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, LabelClass, Status, default_classes, save_mask_png
from engine.formats.voc import add_void_border, export_voc, import_voc, rgb_mask_to_indices, split_ids, voc_ids
from engine.meta import voc_colormap


class VOCLoader:
    """Written like torchvision's ``VOCSegmentation``: ids from ImageSets/Segmentation/<split>.txt,
    ``JPEGImages/<id>.jpg`` opened and converted to RGB, ``SegmentationClass/<id>.png`` opened as is."""

    def __init__(self, voc_root: Path, image_set: str = "train") -> None:
        split_f = os.path.join(voc_root, "ImageSets", "Segmentation", image_set.rstrip("\n") + ".txt")
        with open(split_f) as f:
            file_names = [x.strip() for x in f.readlines()]
        self.images = [os.path.join(voc_root, "JPEGImages", x + ".jpg") for x in file_names]
        self.masks = [os.path.join(voc_root, "SegmentationClass", x + ".png") for x in file_names]
        self.ids = file_names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return Image.open(self.images[index]).convert("RGB"), Image.open(self.masks[index])


def _mask(h, w, seed, n=21):
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y:y + rng.integers(3, h // 2), x:x + rng.integers(3, w // 2)] = rng.integers(1, n)
    m[:, 0] = 255
    return m


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    folder = tmp_path / "photos"
    (folder / "sub dir").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = {"img1.jpg": (24, 32), "img2.png": (20, 30), "img2.jpg": (20, 30), "sub dir/été 3.jpg": (18, 26),
             "grey.png": (16, 16), "pred.jpg": (16, 20), "todo.jpg": (16, 16)}
    for name, (h, w) in names.items():
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr[:, :, 0] if name == "grey.png" else arr).save(folder / name, quality=90)
    st = AnnotationStore.open(folder, recursive=True)
    st.set_classes(default_classes() + [LabelClass("tree", (12, 200, 40)), LabelClass("road", (90, 90, 90))])
    for k, name in enumerate(["img1.jpg", "img2.png", "img2.jpg", "sub dir/été 3.jpg", "grey.png"]):
        h, w = names[name]
        st.save_mask(name, _mask(h, w, k, n=23), status=Status.REVIEWED if k % 2 else None)
    st.save_prediction("pred.jpg", _mask(16, 20, 9))
    yield st
    st.close()


def test_export_reads_back_like_torchvision(store, tmp_path):
    out = tmp_path / "VOC"
    rep = export_voc(store, out, seed=3)
    assert not rep.skipped and not rep.cancelled
    assert rep.exported == ["grey", "img1", "img2", "img2_png", "sub dir__été 3"]
    assert sorted(rep.train + rep.val) == sorted(rep.exported) and rep.val
    back = {v: k for k, v in voc_ids(store.known_ids()).items()}
    seen = []
    for split in ("train", "val", "trainval"):
        ds = VOCLoader(out, split)
        assert len(ds) == len({"train": rep.train, "val": rep.val, "trainval": rep.exported}[split])
        for i in range(len(ds)):
            img, target = ds[i]
            image_id = back[ds.ids[i]]
            assert target.mode == "P"
            pal = target.getpalette()
            assert [tuple(pal[3 * j:3 * j + 3]) for j in range(21)] == voc_colormap(21)
            assert tuple(pal[3 * 21:3 * 21 + 3]) == (12, 200, 40)  # user colours after the VOC 21
            assert tuple(pal[3 * 255:3 * 256]) == (224, 224, 192)
            m = np.array(target)
            np.testing.assert_array_equal(m, store.load_mask(image_id))
            assert (m == 255).any()  # void kept
            assert img.size == (m.shape[1], m.shape[0])
            src = np.array(Image.open(store.image_path(image_id)).convert("RGB"))
            if image_id.endswith(".jpg"):  # JPEGs are copied byte for byte
                np.testing.assert_array_equal(np.array(img), src)
            else:  # others are re-encoded as JPEG quality 95, 4:4:4
                assert np.abs(np.array(img).astype(int) - src).mean() < 6  # random noise: JPEG's worst case
            seen.append(ds.ids[i])
    assert (out / "class_names.txt").read_text().splitlines()[-2:] == ["tree", "road"]
    assert "pred" not in seen and "todo" not in seen


def test_prelabeled_on_request_and_deterministic_split(store, tmp_path):
    a = export_voc(store, tmp_path / "a", include_prelabeled=True, seed=7)
    b = export_voc(store, tmp_path / "b", include_prelabeled=True, seed=7)
    assert "pred" in a.exported and (a.train, a.val) == (b.train, b.val)
    for name in ("train", "val", "trainval"):
        p = Path("ImageSets/Segmentation") / f"{name}.txt"
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()
    ids = [f"x{i}" for i in range(100)]
    tr, va = split_ids(ids, val_fraction=0.25, seed=1)
    assert len(va) == 25 and not set(tr) & set(va)
    assert split_ids(ids, val_fraction=0.25, seed=2) != (tr, va)
    tr2, va2 = split_ids(ids + ["x100"], val_fraction=0.25, seed=1)
    assert len(set(va) ^ set(va2)) <= 2  # adding an image barely moves the split


def test_void_border():
    m = np.zeros((12, 12), np.uint8)
    m[3:9, 3:9] = 5
    m[0, :] = 255
    out = add_void_border(m, 1)
    # A 2-pixel band (one each side) along the 0/5 outline; interior and far background untouched.
    assert out[6, 2] == 255 and out[6, 3] == 255 and out[6, 4] == 5 and out[6, 1] == 0
    assert out[5, 5] == 5 and out[11, 11] == 0
    assert (out[0] == 255).all() and out[1, 6] == 0  # next to void: no border
    np.testing.assert_array_equal(add_void_border(m, 0), m)
    wide = add_void_border(m, 2)
    assert wide[6, 1] == 255 and wide[6, 4] == 255 and wide[6, 5] == 5


def test_export_with_void_border(store, tmp_path):
    rep = export_voc(store, tmp_path / "v", void_border=2)
    back = {v: k for k, v in voc_ids(store.known_ids()).items()}
    for vid in rep.exported:
        got = np.array(Image.open(tmp_path / "v" / "SegmentationClass" / f"{vid}.png"))
        np.testing.assert_array_equal(got, add_void_border(store.load_mask(back[vid]), 2))


def test_import_export_import_is_identical(store, tmp_path):
    v1 = tmp_path / "v1"
    export_voc(store, v1)
    f1, f2 = tmp_path / "f1", tmp_path / "f2"
    r1 = import_voc(v1, f1)
    assert not r1.skipped
    with AnnotationStore.open(f1) as s1:
        export_voc(s1, tmp_path / "v2")
    r2 = import_voc(tmp_path / "v2", f2)
    assert r1.imported == r2.imported
    with AnnotationStore.open(f1) as s1, AnnotationStore.open(f2) as s2:
        assert s1.classes == s2.classes == store.classes
        assert s1.ids() == s2.ids() and s1.statuses() == s2.statuses()
        for image_id in s1.ids():
            assert (f1 / image_id).read_bytes() == (f2 / image_id).read_bytes()
            np.testing.assert_array_equal(s1.load_mask(image_id), s2.load_mask(image_id))
            np.testing.assert_array_equal(s1.load_mask(image_id), store.load_mask(image_id))
            assert s1.status(image_id) is store.status(image_id)
    for p in ("SegmentationClass", "ImageSets/Segmentation"):
        for f in sorted((v1 / p).iterdir()):
            assert f.read_bytes() == (tmp_path / "v2" / p / f.name).read_bytes(), f


def test_import_plain_voc_with_rgb_masks(tmp_path):
    voc = tmp_path / "plain"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    cmap = np.array(voc_colormap(256), np.uint8)
    masks = {}
    for k, vid in enumerate(["2007_000032", "2007_000039"]):
        Image.fromarray(np.full((20, 24, 3), 60 * k, np.uint8)).save(voc / "JPEGImages" / f"{vid}.jpg")
        masks[vid] = _mask(20, 24, k)
    save_mask_png(voc / "SegmentationClass" / "2007_000032.png", masks["2007_000032"])
    Image.fromarray(cmap[masks["2007_000039"]]).save(voc / "SegmentationClass" / "2007_000039.png")  # RGB
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000039\n")
    folder = tmp_path / "new"
    rep = import_voc(voc, folder, status="edited")
    assert rep.imported == ["2007_000032.jpg", "2007_000039.jpg"] and not rep.skipped
    with AnnotationStore.open(folder) as st:
        assert st.classes == default_classes()
        for vid, m in masks.items():
            np.testing.assert_array_equal(st.load_mask(f"{vid}.jpg"), m)
            assert st.status(f"{vid}.jpg") is Status.EDITED
        st.save_mask("2007_000032.jpg", np.zeros((20, 24), np.uint8))
    again = import_voc(voc, folder, split="train")  # never replaces a person's mask unless asked
    assert again.imported == [] and "already has an edited" in again.skipped[0][1]
    assert import_voc(voc, folder, split="train", overwrite=True).imported == ["2007_000032.jpg"]


def test_rgb_mask_to_indices():
    cols = voc_colormap(3)
    rgb = np.array([[cols[0], cols[2]], [(224, 224, 192), (255, 255, 255)]], np.uint8)
    np.testing.assert_array_equal(rgb_mask_to_indices(rgb, cols), [[0, 2], [255, 255]])
    with pytest.raises(ValueError, match=r"colour \(9, 9, 9\)"):
        rgb_mask_to_indices(np.full((2, 2, 3), 9, np.uint8), cols)


def test_progress_cancel_and_refusals(store, tmp_path):
    calls = []
    rep = export_voc(store, tmp_path / "c", workers=1, progress=lambda d, t: calls.append((d, t)),
                     cancel=lambda: len(calls) >= 2)
    assert rep.cancelled and 2 <= len(rep.exported) < 5
    assert (tmp_path / "c/ImageSets/Segmentation/trainval.txt").read_text().split("\n")[:-1] == rep.exported
    with pytest.raises(Exception, match="cannot export into"):
        export_voc(store, store.root / "voc")


def test_export_from_folder_path_while_store_is_open(store, tmp_path):
    rep = export_voc(store.folder, tmp_path / "p")  # opens read-only: no clash with the open store
    assert len(rep.exported) == 5


def test_real_torchvision_reads_the_export(store, tmp_path):
    tv = pytest.importorskip("torchvision")
    from torchvision.datasets import VOCSegmentation
    out = tmp_path / "root" / "VOCdevkit" / "VOC2012"
    rep = export_voc(store, out)
    ds = VOCSegmentation(str(tmp_path / "root"), year="2012", image_set="trainval", download=False)
    assert len(ds) == len(rep.exported)
    back = {v: k for k, v in voc_ids(store.known_ids()).items()}
    for i, vid in enumerate(rep.exported):
        img, target = ds[i]
        np.testing.assert_array_equal(np.array(target), store.load_mask(back[vid]))
    assert tv is not None



@pytest.mark.parametrize("width", [1, 2, 3])
def test_void_border_marks_exactly_the_pixels_near_another_class(width):
    """Against the definition, pixel by pixel: a labelled pixel becomes void when a labelled pixel of
    another class lies within ``width`` (square window); void neighbours never count, class 254 included."""
    rng = np.random.default_rng(width)
    m = rng.choice([0, 1, 7, 254, 255], size=(5, 7), p=[.3, .2, .2, .15, .15]).astype(np.uint8)
    m = np.repeat(np.repeat(m, 3, 0), 3, 1)
    want = m.copy()
    h, w = m.shape
    for y in range(h):
        for x in range(w):
            if m[y, x] == 255:
                continue
            win = m[max(0, y - width):y + width + 1, max(0, x - width):x + width + 1]
            if ((win != 255) & (win != m[y, x])).any():
                want[y, x] = 255
    np.testing.assert_array_equal(add_void_border(m, width), want)


def test_export_workers_hold_at_most_the_pixel_budget_and_a_larger_image_goes_alone(store, tmp_path, monkeypatch):
    """The export's workers share a budget of pixels in flight: never more at once (an image larger
    than the whole budget exports alone), and every image still comes out."""
    import threading

    import engine.formats.voc as voc
    peak, asked, cond = [0], [0], threading.Condition()

    class Watched(voc.PixelBudget):
        def take(self, pixels):
            with cond:
                asked[0] += 1
                cond.notify_all()
            outer = super().take(pixels)

            class Ctx:
                def __enter__(self_):
                    outer.__enter__()
                    with cond:
                        peak[0] = max(peak[0], self.used)
                        # Held until another worker has asked too, so they compete for the budget.
                        cond.wait_for(lambda: asked[0] > 1, timeout=10)

                def __exit__(self_, *exc):
                    return outer.__exit__(*exc)
            return Ctx()

    monkeypatch.setattr(voc, "PixelBudget", Watched)
    monkeypatch.setattr(voc, "EXPORT_PIXELS", 24 * 32 + 20 * 30)   # the two largest images together
    report = export_voc(store, tmp_path / "out", workers=4)
    assert len(report.exported) == 5 and not report.skipped
    assert 0 < peak[0] <= 24 * 32 + 20 * 30
    monkeypatch.setattr(voc, "EXPORT_PIXELS", 100)                  # every image larger than the budget
    report = export_voc(store, tmp_path / "alone", workers=4)
    assert len(report.exported) == 5 and peak[0] <= 24 * 32 + 20 * 30
    budget = voc.PixelBudget(100)
    with budget.take(10_000):                                        # alone: takes the whole budget
        assert budget.used == 100
    assert budget.used == 0
