"""Which pixels a person set: the document's confirmed map, its place in the store, and the consumers
(VOC export, the fine-tuning dataset) that must not take a pre-label's untouched pixels as labels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplab_gui.editing.document import MaskDocument
from engine import load_mask_png
from engine.formats.voc import export_voc
from engine.store import masks as store_masks
from engine.store.store import AnnotationStore, Status
from trainer.dataset import labelled_samples, load_pair

H, W = 12, 16


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    monkeypatch.setenv("DEEPLAB_GUI_LOG_DIR", str(tmp_path / "log"))
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(d / name)
    st = AnnotationStore.open(d)
    yield st
    st.close()


def _prelabelled_doc() -> MaskDocument:
    doc = MaskDocument(np.full((H, W), 255, np.uint8))
    doc.apply_labels(np.full((H, W), 1, np.uint8), description="pre-label")
    return doc


def _stroke(doc: MaskDocument, label: int = 2) -> None:
    doc.begin_stroke(label, 1.5)
    doc.stroke_to(3, 3)
    doc.stroke_to(6, 3)
    doc.end_stroke()


def test_prelabel_confirms_nothing_and_a_stroke_only_its_pixels():
    doc = _prelabelled_doc()
    assert not doc.confirmed.any()
    _stroke(doc)
    painted = doc.mask == 2
    assert painted.any() and np.array_equal(doc.confirmed, painted)
    doc.fill(15, 11, 3)  # the pre-label's region, less the stroke, becomes a person's
    assert np.array_equal(doc.confirmed, doc.mask != 255)
    with pytest.raises(ValueError):
        doc.confirmed[0, 0] = True  # read-only view


def test_undo_and_redo_restore_the_confirmed_map():
    doc = _prelabelled_doc()
    _stroke(doc)
    after = doc.confirmed.copy()
    doc.undo()
    assert not doc.confirmed.any() and (doc.mask == 1).all()
    doc.redo()
    assert np.array_equal(doc.confirmed, after)
    # A new pre-label over painted pixels gives them back to the model; undo confirms them again.
    doc.apply_labels(np.full((H, W), 4, np.uint8), description="pre-label")
    assert not doc.confirmed.any()
    doc.undo()
    assert np.array_equal(doc.confirmed, after)


def test_crf_and_polygon_confirm_their_changes():
    doc = _prelabelled_doc()
    target = doc.mask.copy()
    target[:, :4] = 5
    doc.apply_labels(target, description="Apply CRF")
    assert np.array_equal(doc.confirmed, target == 5)
    doc.polygon([(10, 0), (16, 0), (16, 6)], 6)
    assert np.array_equal(doc.confirmed, (target == 5) | (doc.mask == 6))


def test_save_load_round_trip(store):
    doc = _prelabelled_doc()
    store.save_prediction("a.png", doc.mask.copy())
    assert not store.load_confirmed("a.png").any()
    _stroke(doc)
    store.save_mask("a.png", doc.mask.copy(), confirmed=doc.confirmed.copy())
    assert store.status("a.png") is Status.EDITED
    got = store.load_confirmed("a.png")
    assert got.dtype == bool and np.array_equal(got, doc.confirmed)
    # confirmed=None keeps what the store has
    store.save_mask("a.png", doc.mask.copy())
    assert np.array_equal(store.load_confirmed("a.png"), doc.confirmed)
    assert store.load_confirmed("b.png") is None  # no mask
    back = MaskDocument(store.load_mask("a.png"), confirmed=store.load_confirmed("a.png"))
    assert np.array_equal(back.confirmed, doc.confirmed)


def test_reviewed_confirms_every_pixel(store):
    store.save_prediction("a.png", np.ones((H, W), np.uint8))
    store.save_mask("a.png", np.ones((H, W), np.uint8), status=Status.REVIEWED,
                    confirmed=np.zeros((H, W), bool))
    assert store.load_confirmed("a.png").all()


def test_old_store_edited_mask_without_map_counts_as_confirmed(store):
    store.save_mask("a.png", np.ones((H, W), np.uint8))  # what a store before the map wrote
    assert not store.confirmed_path("a.png").exists()
    assert store.load_confirmed("a.png").all()
    export_voc(store, store.folder.parent / "voc", val_fraction=0.0)
    assert (load_mask_png(store.folder.parent / "voc" / "SegmentationClass" / "a.png") == 1).all()


def _confirmed_now(st) -> np.ndarray:
    """The pixels the store would hand out as a person's, checked against what the mask holds."""
    return st.load_confirmed("a.png")


def test_a_kill_between_the_writes_never_confirms_a_model_pixel(store, monkeypatch):
    store.save_prediction("a.png", np.ones((H, W), np.uint8))
    edited = np.ones((H, W), np.uint8)
    edited[:4] = 2
    conf = np.zeros((H, W), bool)
    conf[:4] = True

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # a kill: no rollback runs

    monkeypatch.setattr(store_masks, "save_mask_png", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save_mask("a.png", edited, confirmed=conf)
    monkeypatch.undo()
    assert store.status("a.png") is Status.EDITED and (store.load_mask("a.png") == 1).all()
    assert not _confirmed_now(store).any()  # the old model mask is on disk: nothing of it is a person's

    store.save_mask("a.png", edited, confirmed=conf)
    # Next save moves the confirmed rows: the kill lands after the mask, before the new map.
    moved = np.ones((H, W), np.uint8)
    moved[8:] = 3
    conf2 = np.zeros((H, W), bool)
    conf2[:2] = True
    conf2[8:] = True
    real = store._write_confirmed
    calls = []

    def second_kill(image_id, c):
        calls.append(c)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(image_id, c)

    monkeypatch.setattr(store, "_write_confirmed", second_kill)
    with pytest.raises(KeyboardInterrupt):
        store.save_mask("a.png", moved, confirmed=conf2)
    monkeypatch.undo()
    assert (store.load_mask("a.png") == moved).all()
    on_disk = _confirmed_now(store)
    assert on_disk[:2].all() and not on_disk[2:].any()  # only rows confirmed both before and after


def test_export_and_dataset_void_what_nobody_set(store, tmp_path):
    mask = np.ones((H, W), np.uint8)
    mask[:3] = 2
    conf = np.zeros((H, W), bool)
    conf[:3] = True
    store.save_prediction("a.png", np.ones((H, W), np.uint8))
    store.save_mask("a.png", mask, confirmed=conf)
    store.save_prediction("b.png", np.ones((H, W), np.uint8))
    store.save_mask("b.png", np.ones((H, W), np.uint8), status=Status.REVIEWED, confirmed=np.zeros((H, W), bool))

    export_voc(store, tmp_path / "voc", val_fraction=0.0)
    got = load_mask_png(tmp_path / "voc" / "SegmentationClass" / "a.png")
    assert (got[:3] == 2).all() and (got[3:] == 255).all()
    assert (load_mask_png(tmp_path / "voc" / "SegmentationClass" / "b.png") == 1).all()
    export_voc(store, tmp_path / "asis", val_fraction=0.0, confirmed_only=False)
    assert np.array_equal(load_mask_png(tmp_path / "asis" / "SegmentationClass" / "a.png"), mask)

    pairs = {s.id: load_pair(s)[1] for s in labelled_samples(store)}
    assert (pairs["a.png"][:3] == 2).all() and (pairs["a.png"][3:] == 255).all()
    assert (pairs["b.png"] == 1).all()


def test_session_saves_and_reloads_the_map(qtbot, sessions, store):
    folder = store.folder
    store.save_prediction("a.png", np.ones((H, W), np.uint8))
    store.close()
    s = sessions(folder)
    assert s.image_id == "a.png" and not s.document.confirmed.any()
    _stroke(s.document)
    expected = s.document.confirmed.copy()
    assert expected.any() and not expected.all()
    assert s.save_current()
    s.shutdown()
    s2 = sessions(folder)
    assert s2.image_id == "a.png" and np.array_equal(s2.document.confirmed, expected)


def test_undo_restores_mixed_confirmed_bits_of_a_large_step():
    doc = MaskDocument(np.zeros((100, 100), np.uint8))
    doc.apply_labels(np.ones((100, 100), np.uint8), description="pre-label")
    doc.polygon([(0, 0), (60, 0), (0, 60)], 2)
    before = doc.confirmed.copy()
    assert before.any() and not before.all()
    doc.apply_labels(np.full((100, 100), 3, np.uint8), description="pre-label")  # a compressed step
    assert not doc.confirmed.any()
    doc.undo()
    assert np.array_equal(doc.confirmed, before)
    doc.redo()
    assert not doc.confirmed.any()


def test_cli_export_as_is_keeps_unconfirmed_pixels(store, tmp_path):
    from deeplab_gui.cli.parser import main

    store.save_prediction("a.png", np.ones((H, W), np.uint8))
    one = np.zeros((H, W), bool)
    one[0, 0] = True                    # a person set one pixel: the rest is still the model's
    store.save_mask("a.png", np.ones((H, W), np.uint8), confirmed=one)
    folder = store.folder
    store.close()
    assert main(["export-voc", str(folder), str(tmp_path / "void"), "--val-fraction", "0"]) == 0
    exported = load_mask_png(tmp_path / "void" / "SegmentationClass" / "a.png")
    assert exported[0, 0] == 1 and (exported[one == 0] == 255).all()
    assert main(["export-voc", str(folder), str(tmp_path / "asis"), "--val-fraction", "0", "--as-is"]) == 0
    assert (load_mask_png(tmp_path / "asis" / "SegmentationClass" / "a.png") == 1).all()


def test_filling_a_region_with_its_own_class_confirms_it_as_one_undo_step():
    from deeplab_gui.editing.document import PRELABEL, MaskDocument
    import numpy as np
    doc = MaskDocument(np.zeros((6, 8), np.uint8))
    model = np.zeros((6, 8), np.uint8)
    model[1:4, 2:6] = 3
    doc.apply_labels(model, description=PRELABEL)      # the model's guess: nobody's yet
    assert not doc.confirmed.any()
    box = doc.fill(3, 2, 3)                             # the person fills the region with its own class
    assert box == (1, 2, 4, 6) and doc.undo_description == "Fill"
    assert np.array_equal(doc.confirmed, model == 3) and np.array_equal(doc.mask, model)
    assert doc.fill(3, 2, 3) is None                    # already the person's: no second step
    doc.undo()
    assert not doc.confirmed.any() and np.array_equal(doc.mask, model)
