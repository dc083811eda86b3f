"""Whole runs on CPU: a measured improvement, cancel, versions and promotion, the CLI, DDP on gloo."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine import AnnotationStore
from trainer import FineTune, Recipe, Versions
from trainer.synthetic import CLASSES, make_folder, pretrain

ROOT = Path(__file__).resolve().parents[1]
ARCH = "deeplabv3plus_mobilenet_v2"  # stride-4 decoder: useful logits even on 64-px crops
SIZES = [(64, 80), (72, 64), (56, 72)]  # mixed image sizes in every batch


def _recipe(**kw) -> Recipe:
    base = dict(iterations=12, lr=0.01, crop=64, batch_size=4, eval_every=0, device="cpu",
                heldout_fraction=0.3, eval_max_side=None)
    return Recipe(**{**base, **kw})


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A small model first trained on appearance "a" (BN learning its statistics), saved natively."""
    folder = tmp_path_factory.mktemp("appearance_a")
    model = pretrain(folder, ARCH, n=8, size=SIZES, iterations=20, crop=64)
    out = folder / "base.safetensors"
    engine.save_model(model.eval(), out)
    return out


@pytest.fixture
def folder_b(tmp_path) -> Path:
    """Ten labelled images of appearance "b": other colours, the same shapes (3 held out)."""
    make_folder(tmp_path / "b", 10, size=SIZES, appearance="b", seed=2)
    return tmp_path / "b"


def test_finetune_on_new_appearance_raises_heldout_miou_and_becomes_current(base_model, folder_b):
    model = engine.load_model(base_model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    events = []
    with AnnotationStore.open(folder_b) as store:
        # Batch statistics on: the new appearance shifts every activation (see the note in the report).
        run = FineTune(store, model, _recipe(iterations=16, freeze_bn=False), parent="base")
        result = run.run(events.append)
        versions = Versions.of(store)
    assert result.status == "done" and len(result.heldout_ids) == 3
    assert result.miou_after >= result.miou_before + 0.2, (result.miou_before, result.miou_after)
    assert result.promoted and versions.current.name == result.checkpoint.name
    v = versions.current
    assert v.parent == "base" and sorted(v.images + v.heldout) == [f"img{i:03d}.png" for i in range(10)]
    assert v.recipe["iterations"] == 16 and v.miou_after == pytest.approx(result.miou_after)
    # The checkpoint reloads as the trained model, and the caller's model was never touched.
    reloaded = engine.load_model(result.checkpoint)
    sd = reloaded.state_dict()
    bad = [k for k, t in result.model.state_dict().items() if not torch.equal(sd[k], t)]
    assert bad == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    assert reloaded.meta.extra["training"]["miou_after"] == pytest.approx(result.miou_after)
    train = [e for e in events if e.phase == "train"]
    assert [e.step for e in train] == list(range(1, 17)) and train[-1].eta_s == pytest.approx(0, abs=1)
    assert all(e.lr is not None and e.loss is not None for e in train)
    assert train[0].lr > train[-1].lr  # poly decay
    losses = [e.loss for e in train]
    assert all(np.isfinite(losses)) and np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])
    assert events[-1].phase == "done"


def _snapshot(store) -> dict:
    files = {p.relative_to(store.root): p.read_bytes() for p in store.root.rglob("*")
             if p.is_file() and p.name not in ("store.db-wal", "store.db-shm", "lock")}
    return {"files": files, "status": store.statuses()}


def test_cancel_mid_run_leaves_model_versions_and_store_untouched(base_model, folder_b):
    model = engine.load_model(base_model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with AnnotationStore.open(folder_b) as store:
        before = _snapshot(store)
        run = FineTune(store, model, _recipe(iterations=200))
        seen = []

        def consume():
            for ev in run:
                seen.append(ev)

        worker = threading.Thread(target=consume)  # as the GUI does: run in a worker, cancel from outside
        worker.start()
        while worker.is_alive() and not any(e.phase == "train" and e.step >= 2 for e in seen):
            worker.join(0.05)
        run.cancel()
        worker.join()
        assert run.result.status == "cancelled" and seen[-1].phase == "cancelled"
        assert 2 <= run.result.steps < 200 and run.result.model is None and run.result.checkpoint is None
        assert _snapshot(store) == before
        assert Versions.of(store).list() == [] and store.list_checkpoints() == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


def test_a_run_that_lowers_heldout_miou_is_kept_but_not_current(base_model, folder_b, monkeypatch):
    import trainer.loop as loop
    model = engine.load_model(base_model)
    with AnnotationStore.open(folder_b) as store:
        first = FineTune(store, model, _recipe(iterations=1)).run()
        scores = iter([0.6, 0.5])  # held-out mIoU before, after: it dropped
        monkeypatch.setattr(loop, "miou", lambda conf: next(scores))
        second = FineTune(store, first.model, _recipe(iterations=1)).run()
        versions = Versions.of(store)
        assert not second.promoted and second.checkpoint.is_file()
        assert versions.current.name == first.checkpoint.name
        assert "dropped" in versions.get(second.checkpoint.name).note
        assert versions.get(second.checkpoint.name).parent == first.checkpoint.name  # lineage from meta
        versions.set_current(second.checkpoint.name)  # any version can be made current again
        assert Versions.of(store).current.name == second.checkpoint.name
        scores = iter([0.6, 0.5])
        third = FineTune(store, second.model, _recipe(iterations=1), confirm=True).run()
        assert third.promoted and Versions.of(store).current.name == third.checkpoint.name


def test_store_class_list_change_is_applied_before_training(base_model, folder_b):
    with AnnotationStore.open(folder_b) as store:
        store.set_classes([("background", (0, 0, 0)), ("box", (0, 128, 0)), ("disc", (128, 0, 0)),
                           ("cat", (64, 0, 0))])
        result = FineTune(store, engine.load_model(base_model), _recipe(iterations=1)).run()
    assert result.model.meta.class_names == ["background", "box", "disc", "cat"]
    assert result.class_change.added == ["cat"] and result.class_change.kept["box"] == (2, 1)
    assert engine.load_model(result.checkpoint).meta.num_classes == 4


def test_cli_train_writes_a_version_and_reports_failures(base_model, folder_b, capsys):
    from deeplab_gui.cli.parser import CLIError
    from deeplab_gui.cli.train import cmd_train
    args = argparse.Namespace(folder=str(folder_b), weights=str(base_model), iterations=2, crop=64, out=None,
                              lr=0.01, batch_size=2, accumulate=None, time_budget=None, heldout_fraction=None,
                              eval_every=None, seed=None, device="cpu", confirm=True)
    assert cmd_train(args) == 0
    err = capsys.readouterr()
    assert "step 2/2" in err.err and err.out.strip().endswith(".safetensors")
    with AnnotationStore.open(folder_b) as store:
        assert Versions.of(store).current is not None
    # Without --weights the current version is the starting point; a folder with no labels fails.
    # The five arguments cli.py's parser defines are enough (the rest fall back to the recipe).
    minimal = argparse.Namespace(folder=str(folder_b), weights=None, iterations=1, crop=64, out=None)
    assert cmd_train(minimal) == 0
    empty = folder_b.parent / "empty"
    empty.mkdir()
    args.folder = minimal.folder = str(empty)
    with pytest.raises(CLIError, match="no images with edited or reviewed masks"):
        cmd_train(args)
    with pytest.raises(CLIError, match="--weights"):  # no weights given, no version to start from
        cmd_train(minimal)


def test_cli_train_new_starts_the_folders_first_model(folder_b, capsys):
    from deeplab_gui.cli.parser import CLIError
    from deeplab_gui.cli.train import cmd_train
    args = argparse.Namespace(folder=str(folder_b), weights=None, new=ARCH, iterations=2, crop=64, out=None,
                              batch_size=2, device="cpu", eval_every=0, confirm=True)
    assert cmd_train(args) == 0
    err = capsys.readouterr().err
    assert "building a new model" in err and "untrained" in err
    with AnnotationStore.open(folder_b) as store:
        current = Versions.of(store).current_path()
    model = engine.load_model(current)
    assert model.meta.arch == ARCH and model.meta.class_names == [c for c, _ in CLASSES]
    args.weights = "x.safetensors"
    with pytest.raises(CLIError, match="exclude each other"):
        cmd_train(args)
    args.weights, args.new = None, "deeplabv9"
    with pytest.raises(CLIError, match="unknown architecture"):
        cmd_train(args)


def test_ddp_two_processes_on_gloo_loss_falls_one_checkpoint(base_model, folder_b):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "trainer", str(folder_b), "--weights", str(base_model), "--iterations", "10", "--crop", "64",
           "--lr", "0.01", "--batch-size", "2", "--device", "cpu", "--eval-every", "0", "--confirm", "--bn", "train"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    with AnnotationStore.open(folder_b) as store:
        ckpts = store.list_checkpoints()
        ckpts = [p for p in ckpts if p.suffix == ".safetensors"]
        assert len(ckpts) == 1, ckpts  # rank 0 alone wrote
        assert Versions.of(store).current.name == ckpts[0].name
    losses = engine.read_meta(ckpts[0]).extra["training"]["losses"]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert r.stderr.count("step 10/10") == 1  # only rank 0 reports


def test_early_stop_keeps_best_weights_and_time_budget_stops(base_model, folder_b, monkeypatch):
    import trainer.loop as loop
    scores = iter([0.5, 0.6, 0.55, 0.4])  # before, after step 1 (best), after step 2 (worse), final
    monkeypatch.setattr(loop, "miou", lambda conf: next(scores))
    with AnnotationStore.open(folder_b) as store:
        r = FineTune(store, engine.load_model(base_model),
                     _recipe(iterations=50, eval_every=1, patience=1, accumulate=2, batch_size=2)).run()
        assert r.stop_reason == "early stop" and r.steps == 2
        assert r.miou_after == 0.6 and r.promoted  # the best weights seen, not the last ones
        monkeypatch.setattr(loop, "miou", lambda conf: 0.5)
        r = FineTune(store, engine.load_model(base_model), _recipe(iterations=50, time_budget_s=1e-3)).run()
        assert r.stop_reason == "time budget" and r.steps == 1
