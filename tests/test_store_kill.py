"""Kill test: a process saving masks in a loop is SIGKILLed at random moments, 50 times.

Afterwards every mask on disk must be a complete old or new version (never torn, never a missing
or half-written file) and the store must open.  The child is forked from the test process (no
interpreter start-up per round) so the 50 rounds take a couple of seconds.
"""
from __future__ import annotations

import os
import random
import select
import signal
import sys

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, Status

pytestmark = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"),
                                reason="needs fork and SIGKILL")

IDS = ["a.png", "b.png", "c.png"]
H, W = 48, 64


def _version_mask(version: int) -> np.ndarray:
    """A mask that encodes its version everywhere, so a mix of two versions is detectable."""
    m = ((np.arange(H * W).reshape(H, W) + version) % 21).astype(np.uint8)
    m[0, :] = 255
    return m


def _decode_version(mask: np.ndarray) -> int | None:
    for v in range(21):
        if np.array_equal(mask, _version_mask(v)):
            return v
    return None


def _child(folder: str, start: int, wfd: int) -> None:
    """Save masks round-robin forever; after each completed save, report ``id:version`` on the pipe."""
    code = 1
    try:
        st = AnnotationStore.open(folder, scan=False)
        for image_id in IDS:  # warm up (header reads, decoder), so "ready" means saves come quickly
            st.validate_mask(image_id, _version_mask(0))
            st.load_mask(image_id)
        os.write(wfd, b"ready\n")
        v = start
        while True:
            image_id = IDS[v % len(IDS)]
            st.save_mask(image_id, _version_mask(v % 21))
            os.write(wfd, f"{image_id}:{v % 21}\n".encode())
            v += 1
    except BaseException as exc:  # report why, so the parent's failure message says it
        os.write(wfd, f"error:{exc!r}\n".encode())
        code = 3
    finally:
        os._exit(code)


def test_sigkill_during_saves_never_tears_a_mask(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in IDS:
        Image.new("RGB", (W, H)).save(folder / i)
    rng = random.Random(1234)
    acked: dict[str, int] = {}   # last version each id was reported saved with
    version = 0
    rounds_saving = 0  # rounds killed after the child was ready, i.e. inside its save loop
    for _ in range(50):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            _child(str(folder), version, w)
        os.close(w)
        data = b""
        if rng.random() < 0.2:  # now and then, kill it while it is still opening the store
            select.select([], [], [], rng.uniform(0.0, 0.01))
        else:  # mostly: once it is saving, after a random while (from mid-first-save to dozens in)
            while b"ready\n" not in data and select.select([r], [], [], 10.0)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
            rounds_saving += b"ready\n" in data
            select.select([], [], [], rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), "the child stopped by itself (it failed, exit status %s)" % status
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        lines = [ln for ln in data.decode().split("\n") if ln and ln != "ready"]
        for line in lines[:-1] if not data.endswith(b"\n") else lines:
            image_id, v = line.split(":", 1)
            assert image_id != "error", v
            acked[image_id] = int(v)
        saved = len([ln for ln in lines if ln.endswith(tuple("0123456789"))])
        version += saved
        # Between kills, every mask on disk is complete and one of the versions written: the last
        # acknowledged one or the one being written when the kill came (renamed, not yet reported).
        for image_id in IDS:
            path = folder / ".deeplab-gui" / "masks" / f"{image_id}.png"
            if not path.exists():
                assert image_id not in acked
                continue
            with Image.open(path) as im:
                im.load()  # a torn PNG fails here
                got = _decode_version(np.array(im))
            assert got is not None, f"{image_id}: mask on disk is not any version that was saved"
            if image_id in acked:
                assert got in (acked[image_id], (acked[image_id] + len(IDS)) % 21)

    with AnnotationStore.open(folder) as st:  # the store opens; statuses say edited; no temp files left
        assert {st.status(i) for i in acked} == {Status.EDITED}
        assert not [p for p in st.root.rglob("*.tmp")]
        for image_id in acked:
            assert _decode_version(st.load_mask(image_id)) is not None
    # Most kills must land inside the save loop, or the test would prove nothing about torn writes.
    assert rounds_saving >= 30 and version >= 10 and len(acked) == len(IDS), (rounds_saving, version)
