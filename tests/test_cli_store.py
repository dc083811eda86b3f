"""CLI commands on the annotation store: prelabel without --out, export-voc, import-voc."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplab_gui.cli.parser import main
from engine import AnnotationStore, Status, build_model, save_model


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "photos ü"
    f.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(f / name)
    (f / "notes.png").write_bytes(b"not an image at all")
    return f


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(build_model("deeplabv3_mobilenet_v2", num_classes=21), path)
    return path


def test_prelabel_into_store_keeps_what_a_person_drew(folder, ckpt, capsys):
    drawn = np.full((24, 32), 7, np.uint8)
    with AnnotationStore.open(folder) as st:
        st.save_mask("b.png", drawn, status=Status.EDITED)
    argv = ["prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu", "--max-side", "32"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "notes.png" in err or "failed" in err
    with AnnotationStore.open(folder) as st:
        assert st.status("a.png") is Status.PRELABELED and st.status("c.jpg") is Status.PRELABELED
        assert st.load_mask("a.png").shape == (24, 32)
        assert st.status("b.png") is Status.EDITED
        assert (st.load_mask("b.png") == drawn).all()
        cached = st.load_probs("a.png")
        assert cached is not None and cached.probs.shape[0] == 21
    # Only an explicit --overwrite replaces the person's mask.
    assert main(argv + ["--overwrite"]) == 0
    with AnnotationStore.open(folder) as st:
        assert st.status("b.png") is Status.PRELABELED
        assert not (st.load_mask("b.png") == drawn).all()


def test_prelabel_into_store_refuses_a_model_with_no_class_of_the_folders(folder, tmp_path, capsys):
    path = tmp_path / "street.safetensors"
    save_model(build_model("deeplabv3_mobilenet_v2", num_classes=3, class_names=["road", "sky", "wall"]), path)
    assert main(["prelabel", str(folder), "--weights", str(path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("deeplab-gui prelabel:")]
    assert len(lines) == 1 and "class list" in lines[0] and "road" in lines[0]
    with AnnotationStore.open(folder) as st:
        assert st.status("a.png") is Status.UNLABELED


def test_prelabel_into_store_maps_another_class_list_by_name(folder, tmp_path, capsys):
    path = tmp_path / "street.safetensors"
    save_model(build_model("deeplabv3_mobilenet_v2", num_classes=3, class_names=["road", "car", "person"]), path)
    assert main(["prelabel", str(folder), "--weights", str(path), "--device", "cpu"]) == 0
    assert "2 of the model's 3 classes match" in capsys.readouterr().err
    with AnnotationStore.open(folder) as st:
        names = st.class_names
        assert set(np.unique(st.load_mask("a.png"))) <= {255, names.index("car"), names.index("person")}
        assert st.load_probs("a.png").probs.shape[0] == len(names)


def test_prelabel_with_an_unnamed_model_goes_index_for_index(folder, tmp_path, capsys):
    path = tmp_path / "five.safetensors"
    save_model(build_model("deeplabv3_mobilenet_v2", num_classes=5), path)
    assert main(["prelabel", str(folder), "--weights", str(path), "--device", "cpu"]) == 0
    assert "no names" in capsys.readouterr().err
    with AnnotationStore.open(folder) as st:
        assert st.status("a.png") is Status.PRELABELED and st.load_mask("a.png").max() < 5


def test_export_then_import_voc_from_the_command_line(folder, tmp_path, capsys):
    mask = np.zeros((24, 32), np.uint8)
    mask[4:12, 5:20] = 15
    mask[0, :] = 255
    with AnnotationStore.open(folder) as st:
        st.save_mask("a.png", mask, status=Status.REVIEWED)
        st.save_mask("c.jpg", mask, status=Status.PRELABELED)
    out = tmp_path / "voc"
    assert main(["export-voc", str(folder), str(out)]) == 0
    ids = (out / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    assert ids == ["a"]
    exported = np.array(Image.open(out / "SegmentationClass" / "a.png"))
    assert Image.open(out / "SegmentationClass" / "a.png").mode == "P" and (exported == mask).all()
    assert main(["export-voc", str(folder), str(tmp_path / "voc2"), "--include-prelabeled"]) == 0
    assert len((tmp_path / "voc2" / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()) == 2

    target = tmp_path / "imported"
    assert main(["import-voc", str(out), str(target)]) == 0
    with AnnotationStore.open(target) as st:
        (only,) = st.ids()
        assert st.status(only) is Status.REVIEWED and (st.load_mask(only) == mask).all()


def test_export_with_nothing_to_export_says_why(folder, tmp_path, capsys):
    assert main(["export-voc", str(folder), str(tmp_path / "voc")]) == 1
    assert "no edited or reviewed masks" in capsys.readouterr().err


def test_the_app_finds_what_prelabel_cached_for_the_same_weights(folder, ckpt, tmp_path, monkeypatch):
    from deeplab_gui.state.models import load_file
    from deeplab_gui.state.session_io import load_image

    assert main(["prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu", "--max-side", "32"]) == 0
    copy = tmp_path / "same weights, other name.safetensors"  # the identity is the content, not the name
    copy.write_bytes(ckpt.read_bytes())
    for path in (ckpt, copy):
        loaded = load_file(str(path), None, progress=lambda *a: None)
        with AnnotationStore.open(folder) as st:
            for image_id in ("a.png", "b.png", "c.jpg"):
                assert st.load_probs(image_id, loaded.model_id) is not None, (path.name, image_id)
                # ...and the app's image loading shows them: no network run is needed
                shown = load_image(st, image_id, loaded.model_id, None, cancel=lambda: False)
                assert shown.probs is not None and shown.probs.shape[0] == 21
