"""Folder scan: natural order, recursion, ids from relative paths, no decoding, odd entries reported."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.store.scan import natural_key, scan_folder


def _touch(path: Path, data: bytes = b"not decoded by the scan") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_natural_order_and_ids(tmp_path):
    for name in ["img10.jpg", "img2.jpg", "IMG1.png", "img2.png", "notes.txt", "img3.JPEG"]:
        _touch(tmp_path / name)
    res = scan_folder(tmp_path)
    assert res.ids() == ["IMG1.png", "img2.jpg", "img2.png", "img3.JPEG", "img10.jpg"]
    e = res.by_id()["img10.jpg"]
    assert e.path == tmp_path / "img10.jpg" and e.size == len(b"not decoded by the scan") and e.mtime_ns > 0


def test_natural_key_total_order():
    names = ["a10", "a2", "A2", "a02", "b", "a", "10", "9"]
    ordered = sorted(names, key=natural_key)
    assert ordered == ["9", "10", "a", "A2", "a02", "a2", "a10", "b"]


def test_recursive_unicode_spaces_and_hidden(tmp_path):
    _touch(tmp_path / "top.jpg")
    _touch(tmp_path / "sub dir" / "photo 1.jpg")
    _touch(tmp_path / "sub dir" / "déjà vu" / "日本.png")
    _touch(tmp_path / ".hidden" / "x.jpg")
    _touch(tmp_path / ".deeplab-gui" / "masks" / "top.jpg.png")
    _touch(tmp_path / ".dotfile.jpg")
    assert scan_folder(tmp_path).ids() == ["top.jpg"]
    assert scan_folder(tmp_path, recursive=True).ids() == [
        "sub dir/déjà vu/日本.png", "sub dir/photo 1.jpg", "top.jpg"]


def test_empty_and_symlink_loop_and_dangling(tmp_path):
    _touch(tmp_path / "ok.jpg")
    _touch(tmp_path / "empty.jpg", b"")
    (tmp_path / "loop").symlink_to(tmp_path)  # a folder linking to its parent must not hang the scan
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    res = scan_folder(tmp_path, recursive=True)
    assert res.ids() == ["ok.jpg"]
    reasons = dict(res.skipped)
    assert "empty" in reasons["empty.jpg"] and "stat" in reasons["dangling.jpg"]


@pytest.mark.skipif(os.name != "posix", reason="undecodable names exist only on POSIX byte paths")
def test_undecodable_name_is_skipped(tmp_path):
    bad = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    with open(bad, "wb") as fh:
        fh.write(b"x")
    _touch(tmp_path / "fine.jpg")
    res = scan_folder(tmp_path)
    assert res.ids() == ["fine.jpg"]
    assert len(res.skipped) == 1 and "not valid text" in res.skipped[0][1]


def test_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        scan_folder(_touch(tmp_path / "file.jpg"))


def test_cancel_returns_partial(tmp_path):
    _touch(tmp_path / "a.jpg")
    assert scan_folder(tmp_path, cancel=lambda: True).ids() == []
