"""Pre-labelling with several ranks (``torchrun -m engine.prelabel``, ``deeplab-gui prelabel --workers``):
gloo on the CPU, a tiny model, tiny images.

Every rank appends "<rank> <image id>" to the file ``DEEPLAB_GUI_PRELABEL_TRACE`` names after each
prediction, so the tests can count who predicted what, and how often.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import AnnotationStore, Predictor, Status, build_model, load_model, save_model
from engine.prelabel_spool import SPOOL_NAME, Spool
from engine.prelabel_store import TRACE_ENV, is_done, prelabel_in_store, prelabel_todo

ROOT = Path(__file__).resolve().parents[1]
IDS = [f"img{i:02d}.png" for i in range(20)]
PERSON = {"img04.png": Status.EDITED, "img13.png": Status.REVIEWED}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and gloo as on Linux and macOS")


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(4):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        img[y:y + h // 2, x:x + w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch
    torch.manual_seed(0)
    return save_model(build_model("deeplabv3_mobilenet_v2", num_classes=21),
                      tmp_path_factory.mktemp("model") / "m.safetensors")


def _folder(path: Path, shape: tuple[int, int] = (24, 32)) -> dict[str, np.ndarray]:
    """20 images, one unreadable file, and a person's mask on two images; returns those masks."""
    path.mkdir()
    for k, image_id in enumerate(IDS):
        Image.fromarray(_photo(*shape, k)).save(path / image_id)
    (path / "broken.png").write_bytes(b"not a png")
    drawn = {}
    with AnnotationStore.open(path) as st:
        for k, (image_id, status) in enumerate(PERSON.items()):
            drawn[image_id] = np.full(shape, 3 + k, np.uint8)
            st.save_mask(image_id, drawn[image_id], status=status)
    return drawn


def _folder_marks(path: Path, drawn: dict[str, np.ndarray]) -> None:
    with AnnotationStore.open(path) as st:
        for image_id, mask in drawn.items():
            st.save_mask(image_id, mask, status=PERSON[image_id])


def _env(trace: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", OMP_NUM_THREADS="1", **{TRACE_ENV: str(trace)})


def _torchrun(folder: Path, ckpt: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "engine.prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu",
            "--loader-workers", "1", *extra]


def _trace(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def _contents(folder: Path, model_id: str | None = None) -> dict[str, tuple]:
    with AnnotationStore.open(folder) as st:
        out = {}
        for image_id in st.ids():
            cached = st.load_probs(image_id, model_id)
            mask = st.load_mask(image_id) if st.mask_path(image_id).exists() else None
            out[image_id] = (st.status(image_id), mask, None if cached is None else cached.probs,
                             st.error(image_id))
        return out


def _assert_same_store(a: dict[str, tuple], b: dict[str, tuple]) -> None:
    assert sorted(a) == sorted(b)
    for image_id in a:
        (sa, ma, pa, ea), (sb, mb, pb, eb) = a[image_id], b[image_id]
        assert sa is sb and (ea is None) == (eb is None), (image_id, sa, sb, ea, eb)
        assert (ma is None) == (mb is None) and (pa is None) == (pb is None), image_id
        if pa is not None:
            np.testing.assert_allclose(pa, pb, atol=2e-3)
            close = np.sort(pa, 0)[-1] - np.sort(pa, 0)[-2] < 1e-2  # near ties may go either way
            assert ((ma == mb) | close).all(), image_id
        elif ma is not None:
            np.testing.assert_array_equal(ma, mb)


def test_two_ranks_write_what_one_process_writes_each_image_once(tmp_path, ckpt):
    drawn = _folder(tmp_path / "two")
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    trace = tmp_path / "trace.txt"
    run = subprocess.run(_torchrun(tmp_path / "two", ckpt), env=_env(trace), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "18 pre-labeled, 2 kept" in run.stderr and "1 failed" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    done = _trace(trace)
    counts = Counter(image_id for _rank, image_id in done)
    assert sorted(counts) == sorted(set(IDS) - set(PERSON)) and set(counts.values()) == {1}
    assert {rank for rank, _ in done} == {"0", "1"}  # both ranks took a share

    from engine import checkpoint_id
    predictor = Predictor(load_model(ckpt), device="cpu")
    with AnnotationStore.open(tmp_path / "one") as st:
        counts1 = prelabel_in_store(st, predictor, None, model_id=checkpoint_id(ckpt))
    assert counts1.written == 18 and counts1.failed == 1 and counts1.protected == 2
    two, one = _contents(tmp_path / "two", checkpoint_id(ckpt)), _contents(tmp_path / "one", checkpoint_id(ckpt))
    _assert_same_store(two, one)
    for image_id, mask in drawn.items():  # a person's masks, untouched
        assert two[image_id][0] is PERSON[image_id]
        np.testing.assert_array_equal(two[image_id][1], mask)
    assert "broken.png" in two and two["broken.png"][0] is Status.UNLABELED and two["broken.png"][3]
    assert not (tmp_path / "two" / ".deeplab-gui" / SPOOL_NAME).exists()  # nothing left behind

    # deeplab-gui prelabel --workers 2 starts the same ranks and writes the same store.
    shutil.copytree(tmp_path / "one", tmp_path / "cli", ignore=shutil.ignore_patterns(".deeplab-gui"))
    _folder_marks(tmp_path / "cli", drawn)
    cli = subprocess.run([sys.executable, "-m", "deeplab_gui", "prelabel", str(tmp_path / "cli"), "--weights",
                          str(ckpt), "--device", "cpu", "--workers", "2"], env=_env(tmp_path / "cli.txt"),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr[-3000:]
    assert Counter(r for r, _ in _trace(tmp_path / "cli.txt")) == Counter(r for r, _ in done)
    _assert_same_store(_contents(tmp_path / "cli", checkpoint_id(ckpt)), two)

    # A rerun with the same checkpoint has nothing left to predict.
    again = subprocess.run(_torchrun(tmp_path / "two", ckpt), env=_env(trace), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "18 already done with this checkpoint" in again.stderr
    assert len(_trace(trace)) == len(done)


def _check_consistent(folder: Path, drawn: dict[str, np.ndarray]) -> None:
    """Every mask on disk is complete and has its status; a person's masks are as they were."""
    with AnnotationStore.open(folder) as st:
        for image_id in IDS:
            status, path = st.status(image_id), st.mask_path(image_id)
            if image_id in drawn:
                assert status is PERSON[image_id]
                np.testing.assert_array_equal(st.load_mask(image_id), drawn[image_id])
            elif status is Status.UNLABELED:
                assert not path.exists(), image_id
            elif path.exists():
                with Image.open(path) as im:
                    im.load()  # a torn PNG fails here
        assert not list(st.root.rglob("*.tmp"))


def _done_or_spooled(folder: Path, model_id: str) -> set[str]:
    """Images the next run must not predict again: stored in full, or handed over and waiting."""
    with AnnotationStore.open(folder, read_only=True) as st:
        done = {i for i in IDS if is_done(st, i, model_id)}
        spool = st.root / SPOOL_NAME
    if spool.is_dir():
        done |= {r.image_id for r in map(Spool.read, Spool(spool).ready()) if r is not None and not r.failed}
    return done


@pytest.mark.parametrize("how", ["torchrun", "workers", "workers-terminal", "workers-sigkill"])
def test_a_run_stopped_midway_resumes_without_doing_anything_twice(tmp_path, ckpt, how):
    from engine import checkpoint_id

    folder = tmp_path / "imgs"
    drawn = _folder(folder, (96, 128))
    trace = tmp_path / "trace.txt"
    if how == "torchrun":
        argv = _torchrun(folder, ckpt)
    else:
        argv = [sys.executable, "-m", "deeplab_gui", "prelabel", str(folder), "--weights", str(ckpt),
                "--device", "cpu", "--workers", "2"]
    proc = subprocess.Popen(argv, env=_env(trace), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 90
    while len(_trace(trace)) < 6 and time.monotonic() < deadline:
        try:
            proc.wait(timeout=0.01)   # the pause between looks: it ends early if the run does
            break
        except subprocess.TimeoutExpired:
            pass
    assert proc.poll() is None, "the run ended before the interrupt: the test proved nothing"
    # Ctrl-C, or SIGKILL (no time to pass anything on), sent to the launcher alone; or Ctrl-C in a
    # terminal, which reaches every process of the group at once (the ranks then also get the
    # launcher's SIGTERM right behind it).
    if how == "workers-terminal":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGKILL if how.endswith("sigkill") else signal.SIGINT)
    err = proc.communicate(timeout=120)[1]   # the ranks hold stderr until they notice: slow on a loaded machine
    assert proc.returncode != 0, err[-3000:]
    if how in ("workers", "workers-terminal"):  # torchrun prints its own traceback on Ctrl-C; ours is one line
        assert "Traceback" not in err and "cancelled" in err, err[-3000:]
    # communicate() returned at end of file on stderr, which every rank (and its loader workers) holds
    # open: they have all exited or let go of it. The trace must not grow while the store is checked.
    first = _trace(trace)
    assert len(first) < len(IDS) - len(PERSON), "every image was done before the interrupt"
    _check_consistent(folder, drawn)
    kept = _done_or_spooled(folder, checkpoint_id(ckpt))
    assert kept, "nothing was stored before the interrupt"
    assert len(_trace(trace)) == len(first), "a rank outlived its launcher"

    again = subprocess.run(argv, env=_env(trace), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    if how != "torchrun":   # the summary counts every image once (spooled results: written now)
        summary = again.stderr.replace("\r", "\n").strip().splitlines()[-1]
        counts = [int(n) for n in re.findall(r"(\d+) (?:pre-labeled|kept|already done|failed)", summary)]
        assert sum(counts) == len(IDS) + 1, summary   # and broken.png, failed
    second = [image_id for _rank, image_id in _trace(trace)[len(first):]]
    assert not set(second) & kept, "an image stored by the first run was predicted again"
    assert len(second) == len(set(second))
    _check_consistent(folder, drawn)
    with AnnotationStore.open(folder) as st:
        assert all(is_done(st, i, checkpoint_id(ckpt)) for i in IDS if i not in PERSON)


def test_out_dir_with_two_workers_holds_what_one_process_writes(tmp_path, ckpt):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(6):
        Image.fromarray(_photo(24, 32, k)).save(folder / f"a{k}.png")
    Image.fromarray(_photo(24, 32, 9)).save(folder / "a0.jpg")  # same stem: a0.png.png, as in one process
    base = [sys.executable, "-m", "deeplab_gui", "prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu"]
    for out, extra in (("one", []), ("two", ["--workers", "2"])):
        done = subprocess.run(base + ["--out", str(tmp_path / out), *extra], env=_env(tmp_path / f"{out}.txt"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "wrote 7 mask(s)" in done.stderr, done.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and "a0.png.png" in names
    for name in names:
        with Image.open(tmp_path / "one" / name) as a, Image.open(tmp_path / "two" / name) as b:
            assert a.mode == b.mode == "P" and a.getpalette() == b.getpalette()
            np.testing.assert_array_equal(np.array(a), np.array(b))
    assert {r for r, _ in _trace(tmp_path / "two.txt")} == {"0", "1"}


def test_one_rank_with_batches_writes_what_batch_one_writes(tmp_path, ckpt):
    """--batch 4 groups consecutive same-size images (two of another size and the unreadable file end
    groups early) and the store holds what --batch 1 writes."""
    from engine import checkpoint_id
    drawn = _folder(tmp_path / "b4")
    for k, image_id in ((6, "img06.png"), (7, "img07.png")):
        Image.fromarray(_photo(30, 20, 100 + k)).save(tmp_path / "b4" / image_id)
    shutil.copytree(tmp_path / "b4", tmp_path / "b1")
    base = [sys.executable, "-m", "engine.prelabel", "--weights", str(ckpt), "--device", "cpu", "--loader-workers", "1"]
    for name in ("b4", "b1"):
        run = subprocess.run(base + [str(tmp_path / name), "--batch", name[1:]], env=_env(tmp_path / f"{name}.txt"),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert "18 pre-labeled, 2 kept" in run.stderr and "1 failed" in run.stderr, run.stderr[-2000:]
    assert sorted(i for _, i in _trace(tmp_path / "b4.txt")) == sorted(i for _, i in _trace(tmp_path / "b1.txt"))
    b4, b1 = _contents(tmp_path / "b4", checkpoint_id(ckpt)), _contents(tmp_path / "b1", checkpoint_id(ckpt))
    _assert_same_store(b4, b1)
    assert b4["img06.png"][1].shape == (30, 20) and b4["img05.png"][1].shape == (24, 32)
    for image_id, mask in drawn.items():
        np.testing.assert_array_equal(b4[image_id][1], mask)


def test_workers_pass_batch_and_options_to_every_rank(tmp_path, ckpt, monkeypatch):
    import engine.prelabel_launch as launch
    from deeplab_gui.cli import main

    seen = []
    monkeypatch.setattr(launch, "launch_local", lambda argv, n: seen.append((list(argv), n)) or 0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    assert main(["prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu", "--workers", "2",
                 "--batch", "4", "--crf"]) == 0
    (argv, n), = seen
    assert n == 2 and argv[argv.index("--batch") + 1] == "4" and "--crf" in argv
    # --batch or --loader-workers without --workers: one rank, not the path that has neither.
    assert main(["prelabel", str(folder), "--weights", str(ckpt), "--batch", "2", "--loader-workers", "0"]) == 0
    argv, n = seen[-1]
    assert n == 1 and argv[argv.index("--batch") + 1] == "2" and argv[argv.index("--loader-workers") + 1] == "0"


def test_a_cache_file_made_by_a_rank_stores_what_the_store_would_make(tmp_path):
    from engine.prelabel_spool import SpoolResult
    from engine.store.probcache import ImageSignature, encode_probs

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(folder / name)
    probs = np.random.default_rng(0).dirichlet(np.ones(21), size=(12, 16)).astype(np.float32).transpose(2, 0, 1)
    labels = probs.argmax(0).astype(np.uint8)
    sig = ImageSignature.of(folder / "a.png")
    spool = Spool(tmp_path / "spool", 1)
    spool.reset()
    spool.put(SpoolResult("a.png", "m", sig.to_dict(), labels, None, probs_file=encode_probs(
        probs, model_id="m", signature=sig)))
    got = Spool.read(next(iter(spool.ready())))
    assert got.probs is None and got.probs_file is not None and (got.labels == labels).all()
    with AnnotationStore.open(folder) as st:
        assert st.save_prediction("a.png", got.labels, model_id="m", probs_file=got.probs_file)
        assert st.save_prediction("b.png", labels, probs=probs, model_id="m")
        a, b = st.load_probs("a.png", "m"), st.load_probs("b.png", "m")
        assert a is not None and b is not None and is_done(st, "a.png", "m")
        np.testing.assert_array_equal(a.probs, b.probs)


def test_a_pre_label_stays_done_when_its_probabilities_are_evicted_and_not_when_its_mask_changes(tmp_path):
    # The probability cache keeps a few thousand entries of a large folder: resuming must not depend
    # on them. The store's note on each pre-label decides, and stops matching when the image, the
    # model or the mask file (a person's save, another model's run cut short) changes.
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.fromarray(_photo(12, 16, len(name) + ord(name[0]))).save(folder / name)
    probs = np.random.default_rng(0).dirichlet(np.ones(21), size=(12, 16)).astype(np.float32).transpose(2, 0, 1)
    labels = probs.argmax(0).astype(np.uint8)
    with AnnotationStore.open(folder) as st:
        for name in ("a.png", "b.png", "c.png", "d.png"):
            assert st.save_prediction(name, labels, probs=probs, model_id="m")
        for name in ("a.png", "b.png", "c.png", "d.png"):
            st.probs_path(name).unlink()                      # evicted by the cache's byte budget
        assert all(is_done(st, n, "m") for n in ("a.png", "b.png", "c.png", "d.png"))
        assert not is_done(st, "a.png", "other model")
        os.utime(folder / "b.png", ns=(1, 1))                 # the image changed since
        from engine.labels import save_mask_png
        save_mask_png(st.mask_path("c.png"), np.zeros((12, 16), np.uint8), st.class_colors)   # rewritten
        st.save_mask("d.png", labels, status=Status.EDITED)  # a person's
        assert [n for n in ("a.png", "b.png", "c.png", "d.png") if is_done(st, n, "m")] == ["a.png"]
        todo, protected, done = prelabel_todo(st, "m")
        assert done == 1 and protected == 1 and sorted(todo) == ["b.png", "c.png"]
        # A run with the CRF is not done by one without it, nor the other way round.
        assert st.save_prediction("b.png", labels, model_id="m", variant="crf")
        assert is_done(st, "b.png", "m", variant="crf") and not is_done(st, "b.png", "m")
        assert not is_done(st, "a.png", "m", variant="crf")
        assert sorted(prelabel_todo(st, "m", variant="crf")[0]) == ["a.png", "c.png"]


def test_results_a_killed_run_left_are_stored_and_counted_once(tmp_path, ckpt):
    # A rank killed after handing results over: the next run stores them first and predicts only
    # the rest; its summary counts each image once (those results as written now, not as done before).
    from engine import checkpoint_id
    from engine.prelabel_spool import SpoolResult
    from engine.store.probcache import ImageSignature

    folder = tmp_path / "imgs"
    _folder(folder, (24, 32))
    with AnnotationStore.open(folder) as st:
        spool = Spool(st.root / SPOOL_NAME, 1)
    spool.folder.mkdir(parents=True, exist_ok=True)
    left = {"img01.png": 3, "img02.png": 5}
    for image_id, label in left.items():
        sig = ImageSignature.of(folder / image_id).to_dict()
        spool.put(SpoolResult(image_id, checkpoint_id(ckpt), sig, np.full((24, 32), label, np.uint8)))
    trace = tmp_path / "trace.txt"
    run = subprocess.run([sys.executable, "-m", "deeplab_gui", "prelabel", str(folder), "--weights", str(ckpt),
                          "--device", "cpu", "--workers", "2"], env=_env(trace), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    predicted = [image_id for _rank, image_id in _trace(trace)]
    assert not set(predicted) & set(left) and len(predicted) == len(set(predicted))
    summary = run.stderr.replace("\r", "\n").strip().splitlines()[-1]
    counts = dict((what, int(n)) for n, what in re.findall(r"(\d+) (pre-labeled|kept|already done|failed)", summary))
    assert counts.get("already done", 0) == 0 and counts["pre-labeled"] == len(predicted) + len(left), summary
    with AnnotationStore.open(folder, read_only=True) as st:
        for image_id, label in left.items():
            assert (st.load_mask(image_id) == label).all() and is_done(st, image_id, checkpoint_id(ckpt))


def test_a_run_that_cannot_start_says_why_in_one_line_and_nothing_else(tmp_path):
    folder = tmp_path / "imgs"
    _folder(folder)
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    run = subprocess.run([sys.executable, "-m", "deeplab_gui", "prelabel", str(folder), "--weights", str(bad),
                          "--device", "cpu", "--workers", "2"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert run.returncode != 0 and len(lines) == 1, run.stderr   # no empty progress bar, no traceback
    assert "garbage.safetensors" in lines[0] and "not a checkpoint" in lines[0]


def test_an_image_changed_while_it_was_predicted_is_not_taken_as_done(tmp_path, ckpt, monkeypatch):
    # The note keeps the image file as it was read, not as it is when the mask is written: a new
    # version saved in between gets its own prediction on the next run.
    import engine.prelabel_store as ps
    from engine import checkpoint_id

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(_photo(24, 32, len(name) + ord(name[0]))).save(folder / name)
    real = ps.predict_for_store

    def predict_then_change(predictor, image, refine, params=None):
        out = real(predictor, image, refine, params)
        if Path(image).name == "b.png":   # a new version lands while b is being predicted
            Image.fromarray(_photo(24, 32, 99)).save(image)
            os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
        return out
    monkeypatch.setattr(ps, "predict_for_store", predict_then_change)
    mid = checkpoint_id(ckpt)
    predictor = Predictor(load_model(ckpt), device="cpu")
    with AnnotationStore.open(folder) as st:
        counts = prelabel_in_store(st, predictor, None, model_id=mid)
        assert counts.written == 2
        assert is_done(st, "a.png", mid) and not is_done(st, "b.png", mid)
        monkeypatch.setattr(ps, "predict_for_store", real)
        again = prelabel_in_store(st, predictor, None, model_id=mid)
        assert again.written == 1 and again.done_before == 1 and is_done(st, "b.png", mid)


def test_two_machines_as_torchrun_starts_them_split_the_folder(tmp_path, ckpt):
    # torchrun --nnodes=2: one agent per machine (both on this one here, sharing the folder as
    # machines share storage); rank 0's node writes, the other node's rank hands over through the spool.
    from engine import checkpoint_id
    from engine.prelabel_launch import free_port

    folder = tmp_path / "imgs"
    _folder(folder)
    trace = tmp_path / "trace.txt"
    port = free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                               "-m", "engine.prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu",
                               "--loader-workers", "0"], env=_env(trace), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    errs = [p.communicate(timeout=180)[1] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert "18 pre-labeled, 2 kept" in errs[0], errs[0][-2000:]
    done = _trace(trace)
    counts = Counter(image_id for _rank, image_id in done)
    assert sorted(counts) == sorted(set(IDS) - set(PERSON)) and set(counts.values()) == {1}
    assert {rank for rank, _ in done} == {"0", "1"}
    with AnnotationStore.open(folder, read_only=True) as st:
        assert all(is_done(st, i, checkpoint_id(ckpt)) for i in IDS if i not in PERSON)


def test_a_loader_worker_whose_rank_is_already_gone_exits(tmp_path):
    # A loader worker forked just before its rank was killed: its parent is not the rank any more
    # when it starts, so it goes at once instead of waiting for work forever (holding stderr).
    code = ("import os, sys; from engine.prelabel import _loader_worker_init; "
            "_loader_worker_init(int(sys.argv[1]), 0); print('alive')")
    gone = subprocess.run([sys.executable, "-c", code, "999999999"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
    there = subprocess.run([sys.executable, "-c", code, str(os.getpid())], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                           capture_output=True, text=True, timeout=60)
    assert gone.returncode != 0 and "alive" not in gone.stdout
    assert there.returncode == 0 and "alive" in there.stdout, there.stderr


def test_helper_thread_failures_are_quiet_while_stopping_and_one_line_otherwise(monkeypatch, capsys):
    """multiprocessing's resource sharer (which hands a loader worker's images to its rank) reports a
    peer that vanished as a run stops through sys.excepthook: no traceback for the person; anything
    else unexpected is one line."""
    import threading

    import engine.prelabel as pl
    monkeypatch.setattr(pl, "_STOPPING", threading.Event())
    monkeypatch.setattr(pl, "_IN_LOADER_WORKER", False)
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError as exc:
        lost = (type(exc), exc, exc.__traceback__)
    pl._unexpected(*lost)                                   # not stopping: said, in one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Connection reset by peer" in err and "Traceback" not in err
    pl._STOPPING.set()
    pl._unexpected(*lost)                                   # stopping: nothing
    monkeypatch.setattr(pl, "_STOPPING", threading.Event())
    monkeypatch.setattr(pl, "_IN_LOADER_WORKER", True)
    pl._unexpected(*lost)                                   # a loader worker whose rank went away: nothing
    assert capsys.readouterr().err == ""
    pl._unexpected(ValueError, ValueError("bad value"), None, threading.current_thread())
    err = capsys.readouterr().err
    assert err.startswith("prelabel: unexpected error in MainThread: bad value") and "Traceback" not in err


def test_a_clean_up_failing_as_a_rank_stops_prints_nothing_and_otherwise_one_line(monkeypatch, capsys):
    """A Ctrl-C that lands while a DataLoader iterator is being made leaves an object whose __del__
    fails later: Python reports that through sys.unraisablehook, which a rank keeps quiet while it
    stops (it printed a traceback) and turns into one line otherwise."""
    import gc
    from engine import prelabel

    class Half:
        def __del__(self):
            raise AttributeError("'Half' object has no attribute '_workers_status'")

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(prelabel.threading, "excepthook", prelabel.threading.excepthook)
    prelabel._install_error_hooks()
    monkeypatch.setattr(prelabel, "_STOPPING", prelabel.threading.Event())
    prelabel._STOPPING.set()
    Half()
    gc.collect()
    assert capsys.readouterr().err == ""
    prelabel._STOPPING.clear()
    Half()
    gc.collect()
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "_workers_status" in err


def test_a_stopped_run_says_cancelled_even_when_rank_0_had_to_be_killed(tmp_path):
    """Ctrl-C to the launcher: a rank that does not end within the grace period is killed, and the
    launcher then says 'cancelled' itself (rank 0 never got to), with the cancelled exit status."""
    (tmp_path / "stubborn.py").write_text(
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "while True:\n"
        "    signal.pause()\n")
    code = ("import sys; import engine.prelabel_launch as launch; launch._GRACE_S = 0.5; "
            "sys.exit(launch.launch_local([], 1, module='stubborn'))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    first: list[str] = []   # the rank's first line (it shares the launcher's stderr), read with a time limit
    reader = threading.Thread(target=lambda: first.append(proc.stderr.readline()), daemon=True)
    reader.start()
    reader.join(60)
    assert first == ["ready\n"], ("the rank never started", first)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "stubborn: cancelled", err
