"""The store keeps a person's work through a lost database, long names, read-only mounts, a shrunk
class list, and writes files with the person's umask."""
from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_gui.cli.parser import main
from engine import (
    NAME_MAX,
    AnnotationStore,
    Status,
    StoreError,
    atomic_write_bytes,
    build_model,
    fitted_name,
    save_model,
    temp_path,
)
from engine.store import format as storeformat


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GUI_DATA_DIR", str(tmp_path / "userdata"))
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / name)
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_model(build_model("deeplabv3_mobilenet_v2", num_classes=21), path)
    return path


DRAWN = np.full((24, 32), 7, np.uint8)


def _reviewed(folder):
    with AnnotationStore.open(folder) as st:
        st.save_mask("a.png", DRAWN, status=Status.REVIEWED)
        return st.root / "store.db"


def _zero(db):
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(db) + suffix):
            os.unlink(str(db) + suffix)
    db.write_bytes(b"")


def _delete(db):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(str(db) + suffix):
            os.unlink(str(db) + suffix)


def _truncate(db):
    with sqlite3.connect(db) as c:  # fold the WAL into the file, so the file holds everything
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = db.read_bytes()
    _delete(db)
    db.write_bytes(data[:4096])


def _foreign(db):
    _delete(db)
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE notes(x)")


def _garbage(db):
    _delete(db)
    db.write_bytes(b"this is not a database" * 10)


@pytest.mark.parametrize("damage", [_zero, _delete, _truncate, _foreign, _garbage])
def test_a_lost_database_is_rebuilt_with_every_mask_protected(folder, ckpt, damage, capsys):
    damage(_reviewed(folder))
    with AnnotationStore.open(folder) as st:
        assert st.status("a.png") is Status.EDITED
        assert st.notice and "rebuilt" in st.notice and "1 images with masks" in st.notice
        assert st.status("b.png") is Status.UNLABELED
    argv = ["prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu", "--max-side", "32"]
    assert main(argv) == 0
    with AnnotationStore.open(folder) as st:
        np.testing.assert_array_equal(st.load_mask("a.png"), DRAWN)
        assert st.status("a.png") is Status.EDITED and st.status("b.png") is Status.PRELABELED
        assert st.notice is None  # the rebuilt database is trusted from then on


def test_a_new_store_says_nothing(folder):
    with AnnotationStore.open(folder) as st:
        assert st.notice is None and st.status("a.png") is Status.UNLABELED


def test_a_mask_the_database_forgot_is_never_replaced_by_a_prediction(folder):
    with AnnotationStore.open(folder) as st:
        st.save_mask("a.png", DRAWN)
        st._db.execute("DELETE FROM images")  # the database forgets, the file stays
        st._status.clear()
        assert not st.needs_prelabel("a.png")
        assert st.save_prediction("a.png", np.zeros((24, 32), np.uint8)) is False
        np.testing.assert_array_equal(st.load_mask("a.png"), DRAWN)
        assert st.save_prediction("a.png", np.zeros((24, 32), np.uint8), overwrite=True)


def test_a_mask_whose_row_is_gone_stays_protected_after_reopening(folder):
    with AnnotationStore.open(folder) as st:  # e.g. an older store.db restored over a newer one
        st.save_mask("a.png", DRAWN, status=Status.REVIEWED)
        st._db.execute("DELETE FROM images WHERE id='a.png'")
    with AnnotationStore.open(folder) as st:
        assert st.save_prediction("a.png", np.zeros((24, 32), np.uint8)) is False
        np.testing.assert_array_equal(st.load_mask("a.png"), DRAWN)


def test_a_prediction_killed_between_status_and_file_is_redone(folder, monkeypatch):
    import engine.store.masks as masks_mod
    with AnnotationStore.open(folder) as st:
        def killed(*a, **k):
            raise KeyboardInterrupt  # a kill after the status commit, before the mask file
        monkeypatch.setattr(masks_mod, "save_mask_png", killed)
        with pytest.raises(KeyboardInterrupt):
            st.save_prediction("b.png", np.zeros((24, 32), np.uint8))
        monkeypatch.undo()
    with AnnotationStore.open(folder) as st:  # no mask without a status: the next run redoes it
        assert st.status("b.png") is Status.PRELABELED and not st.has_mask("b.png")
        assert st.needs_prelabel("b.png")
        assert st.save_prediction("b.png", np.ones((24, 32), np.uint8))


def test_delete_mask_removes_the_file_before_the_status(folder, monkeypatch):
    with AnnotationStore.open(folder) as st:
        st.save_mask("a.png", DRAWN)

        def dies(*a, **k):
            raise KeyboardInterrupt  # a kill between the two steps
        monkeypatch.setattr(st, "_put_status", dies)
        with pytest.raises(KeyboardInterrupt):
            st.delete_mask("a.png")
        assert not st.has_mask("a.png")


# ---------------------------------------------------------------------------- long names
@pytest.mark.parametrize("stem", ["x" * 246, "x" * 251, "é" * 125, "名" * 83])
def test_images_with_the_longest_names_can_be_saved(folder, stem):
    name = stem + ".png"
    assert 250 <= len(os.fsencode(name)) <= 255
    Image.new("RGB", (6, 4)).save(folder / name)
    m = np.ones((4, 6), np.uint8)
    with AnnotationStore.open(folder) as st:
        st.save_mask(name, m)
        st.save_probs(name, np.full((21, 4, 6), 1 / 21, np.float32), model_id="m")
        assert len(os.fsencode(st.mask_path(name).name)) <= NAME_MAX
        assert st.load_probs(name) is not None
    with AnnotationStore.open(folder) as st:
        np.testing.assert_array_equal(st.load_mask(name), m)
        db = st.root / "store.db"
    _delete(db)
    with AnnotationStore.open(folder) as st:  # the rebuild finds the image behind a shortened name
        assert st.status(name) is Status.EDITED


def test_fitted_names_and_temp_names_fit():
    assert fitted_name("a.jpg", ".png") == "a.jpg.png"
    long = "ü" * 127  # 254 bytes
    f1, f2 = fitted_name(long, ".png"), fitted_name(long + "x", ".png")
    assert f1 != f2 and f1.endswith(".png") and len(os.fsencode(f1)) <= NAME_MAX
    # every name that fits is kept as it is (masks written before names were shortened are found)
    assert fitted_name("x" * 251, ".png") == "x" * 251 + ".png"
    assert len(os.fsencode(temp_path("/tmp/" + "é" * 127).name)) <= NAME_MAX


def test_a_name_too_long_says_so_not_to_free_space():
    err = storeformat.write_error(OSError(errno.ENAMETOOLONG, "File name too long"), "the mask of x")
    assert "too long" in str(err) and "free" not in str(err)
    assert "free some space" in str(storeformat.write_error(OSError(errno.ENOSPC, "full"), "x"))


# ---------------------------------------------------------------------------- read-only mounts
def test_a_read_only_mount_shows_the_existing_store_read_only(folder, monkeypatch):
    _reviewed(folder)
    monkeypatch.setattr(storeformat, "_probe_writable", lambda f: False)
    with AnnotationStore.open(folder) as st:
        assert st.read_only and st.root == folder / ".deeplab-gui"
        assert "read-only" in st.notice
        assert st.status("a.png") is Status.REVIEWED
        np.testing.assert_array_equal(st.load_mask("a.png"), DRAWN)
        with pytest.raises(StoreError, match="read-only"):
            st.save_mask("a.png", DRAWN)


# ---------------------------------------------------------------------------- permissions
def test_files_get_the_umask_permissions_and_keep_a_chosen_mode(folder, tmp_path):
    old = os.umask(0o022)
    try:
        with AnnotationStore.open(folder) as st:
            st.save_mask("a.png", DRAWN)
            for p in (st.mask_path("a.png"), st.root / "classes.json"):
                assert p.stat().st_mode & 0o777 == 0o644, p
        os.umask(0o002)
        target = tmp_path / "x.txt"
        atomic_write_bytes(target, b"1")
        assert target.stat().st_mode & 0o777 == 0o664
        target.chmod(0o600)
        atomic_write_bytes(target, b"2")  # a replaced file keeps the mode its owner gave it
        assert target.stat().st_mode & 0o777 == 0o600 and target.read_bytes() == b"2"
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- class list edited by hand
def test_a_shrunk_class_list_names_the_masks_beyond_it_and_keeps_them(folder):
    m = np.zeros((24, 32), np.uint8)
    m[:4] = 20
    m[-1] = 255
    with AnnotationStore.open(folder) as st:
        st.save_mask("a.png", m)
        st.save_mask("b.png", np.ones((24, 32), np.uint8))
        path = st.mask_path("a.png")
        classes = st.root / "classes.json"
    before = path.read_bytes()
    import json
    data = json.loads(classes.read_text())
    data["classes"] = data["classes"][:5]
    classes.write_text(json.dumps(data))
    with AnnotationStore.open(folder) as st:
        assert len(st.classes) == 5
        assert st.masks_beyond_classes == {"a.png": 20}
        assert "a.png (index 20)" in st.notice and "b.png" not in st.notice
        with pytest.raises(StoreError, match="class index 20"):
            st.save_mask("a.png", st.load_mask("a.png"))
    assert path.read_bytes() == before


def test_checkpoints_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_model(build_model("deeplabv3_mobilenet_v2", num_classes=3), tmp_path / "m.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_masks_larger_than_pillows_bomb_limit_load(tmp_path, monkeypatch):
    from engine import load_mask_png, save_mask_png
    m = np.zeros((100, 120), np.uint8)
    m[10:20] = 3
    save_mask_png(tmp_path / "m.png", m)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as a 15000x15000 mask is to Pillow's default
    np.testing.assert_array_equal(load_mask_png(tmp_path / "m.png"), m)


def test_a_read_only_file_is_replaced_and_stays_read_only():
    """As a normal user (root writes through permissions, so the check runs as 'nobody')."""
    import shutil
    import tempfile
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    top = Path(tempfile.mkdtemp(prefix="ro-replace-", dir="/tmp" if os.path.isdir("/tmp") else None))
    top.chmod(0o755)  # reachable by the unprivileged child
    target = top / "ro" / "x.png.json"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o444)
    if os.geteuid() == 0:
        os.chown(target.parent, 65534, 65534)
        os.chown(target, 65534, 65534)
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, replace the file, report by exit status
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            atomic_write_bytes(target, b"new")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o444
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_many_long_names_open_without_rescanning_the_folder_per_mask(folder, monkeypatch):
    names = [f"{i:03d}" + "y" * 248 + ".png" for i in range(30)]  # 255 bytes: masks get shortened names
    for n in names:
        Image.new("RGB", (4, 3)).save(folder / n)
    with AnnotationStore.open(folder) as st:
        for n in names:
            st.save_mask(n, np.zeros((3, 4), np.uint8))
        db = st.root / "store.db"
    _delete(db)
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": calls.append(p) or real(p))
    with AnnotationStore.open(folder, scan=False) as st:
        assert all(st.status(n) is Status.EDITED for n in names)
    listed = [c for c in calls if Path(c) == folder]
    assert len(listed) <= 2, listed  # a listing or two per open, not one per mask


def test_set_aside_keeps_every_damaged_copy(tmp_path):
    from engine.fileio import set_aside
    names = []
    for _ in range(3):
        (tmp_path / "store.db").write_bytes(b"x")
        names.append(set_aside(tmp_path / "store.db", "corrupt"))
    assert len(set(names)) == 3 and all((tmp_path / n).exists() for n in names)


def test_a_mask_with_no_pixel_a_person_set_is_the_models_again(folder):
    """Saved with an empty confirmed map (every edit undone), a pre-labelled image stays pre-labelled,
    an edited one becomes pre-labelled again (unlabelled when all void), so a later pre-label may
    update it and training leaves it out; an accepted (reviewed) one stays reviewed."""
    model = np.full((24, 32), 3, np.uint8)
    none = np.zeros((24, 32), bool)
    some = none.copy()
    some[2:5, 2:5] = True
    with AnnotationStore.open(folder) as st:
        assert st.save_prediction("a.png", model, model_id="m")
        st.save_mask("a.png", model, confirmed=none)
        assert st.status("a.png") is Status.PRELABELED
        edited = model.copy()
        edited[2:5, 2:5] = 1
        st.save_mask("a.png", edited, confirmed=some)
        assert st.status("a.png") is Status.EDITED and not st.needs_prelabel("a.png")
        st.save_mask("a.png", model, confirmed=none)            # the edit undone, autosaved
        assert st.status("a.png") is Status.PRELABELED and st.needs_prelabel("a.png")
        assert np.array_equal(st.load_mask("a.png"), model)
        st.save_mask("b.png", np.full((24, 32), 2, np.uint8), confirmed=some)
        st.save_mask("b.png", np.full((24, 32), 255, np.uint8), confirmed=none)
        assert st.status("b.png") is Status.UNLABELED
        st.save_mask("a.png", model, status=Status.REVIEWED)
        st.save_mask("a.png", model, confirmed=none)
        assert st.status("a.png") is Status.REVIEWED
        st.save_mask("a.png", model)                            # no map given: a person's, as before
        assert st.status("a.png") is Status.REVIEWED
    with AnnotationStore.open(folder) as st:
        st.save_mask("b.png", np.full((24, 32), 2, np.uint8))
        assert st.status("b.png") is Status.EDITED
