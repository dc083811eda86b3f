"""Training that cannot go wrong quietly: bad numbers refused up front, NaN weights never saved or made
current, a damaged versions.json reported and kept, nothing to learn or nowhere to write refused before
training, and a SIGKILL at any moment leaving the versions complete."""
from __future__ import annotations

import json
import os
import random
import select
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from deeplab_gui.cli.parser import main as gui_main
from engine import AnnotationStore
from trainer import FineTune, Recipe, TrainError, Version, Versions
from trainer.guards import check_out_path
from trainer.synthetic import CLASSES, make_folder

ARCH = "deeplabv3_mobilenet_v2"  # the lightest model
TINY = ["--iterations", "1", "--crop", "32", "--batch-size", "1", "--device", "cpu", "--eval-every", "0",
        "--heldout-fraction", "0"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Two shared cores: torch's default thread pool makes these tiny steps many times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_model() -> torch.nn.Module:
    """A small model whose BatchNorm has learned statistics (so it stays frozen at batch size 1)."""
    torch.manual_seed(0)
    model = engine.build_model(ARCH, num_classes=3, class_names=[c for c, _ in CLASSES])
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    engine.save_model(_tiny_model(), path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    make_folder(tmp_path / "f", 3, size=[(40, 48)], seed=3)
    return tmp_path / "f"


def _checkpoints(folder: Path) -> list[Path]:
    d = folder / ".deeplab-gui" / "checkpoints"
    return sorted(d.glob("*.safetensors")) if d.is_dir() else []


def _train(argv: list[str], capsys) -> tuple[int, list[str]]:
    """``deeplab-gui train ARGV``: (exit status, stderr lines)."""
    rc = gui_main(["train", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("option, value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.01"), ("--lr", "0"), ("--lr", "5"),
    ("--time-budget", "nan"), ("--time-budget", "inf"), ("--time-budget", "0"),
    ("--heldout-fraction", "nan"), ("--heldout-fraction", "1"), ("--heldout-fraction", "-0.1"),
    ("--batch-size", "0"), ("--accumulate", "0"), ("--seed", "-1"), ("--eval-every", "-1"),
    ("--iterations", "0"), ("--crop", "4"),
])
def test_train_refuses_a_bad_number_in_one_line_naming_the_option(folder, option, value, capsys):
    for run in (lambda a: gui_main(["train", *a]), _trainer_main):
        rc = run([str(folder), *TINY, option, value])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and option in lines[0] and "step" not in err, err
    assert _checkpoints(folder) == []


def _trainer_main(argv: list[str]) -> int:
    from trainer.__main__ import main
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code)


@pytest.mark.parametrize("field, value", [
    ("lr", float("nan")), ("lr", float("inf")), ("lr", 0.0), ("lr", 3.0), ("lr", True),
    ("momentum", float("nan")), ("momentum", 1.0), ("momentum", -0.5),
    ("weight_decay", float("nan")), ("weight_decay", -1e-4), ("weight_decay", float("inf")),
    ("head_lr_mult", float("nan")), ("head_lr_mult", 0.0), ("poly_power", float("nan")), ("poly_power", -1.0),
    ("scale_min", float("nan")), ("scale_min", 0.0), ("scale_max", float("inf")), ("scale_max", 100.0),
    ("aux_weight", float("nan")), ("aux_weight", -1.0),
    ("time_budget_s", float("nan")), ("time_budget_s", float("inf")), ("time_budget_s", -5.0),
    ("heldout_fraction", float("nan")), ("iterations", 2.5), ("iterations", 0), ("seed", -3),
    ("eval_max_side", 0), ("patience", -1), ("num_workers", -1), ("batch_size", "4"),
])
def test_recipe_refuses_nonfinite_and_out_of_range_numbers_naming_the_field(field, value):
    # The app's fine-tune dialog builds a Recipe: this is the check that covers it.
    with pytest.raises(ValueError, match=field):
        Recipe(**{field: value})


def test_recipe_refuses_a_reversed_scale_range_and_keeps_its_defaults():
    with pytest.raises(ValueError, match="scale_min"):
        Recipe(scale_min=2.0, scale_max=1.0)
    r = Recipe(time_budget_s=None, eval_max_side=None, lr=1, scale_min=1.0, scale_max=1.0)
    assert Recipe.from_dict(r.to_dict()) == r and Recipe() == Recipe.from_dict(Recipe().to_dict())


# ---------------------------------------------------------------------------------- NaN weights
def test_a_run_whose_weights_turn_nan_writes_nothing_and_promotes_nothing(folder, base, monkeypatch):
    import trainer.loop as loop
    # A learning rate the recipe would refuse, slipped in by the schedule: one step makes every weight NaN
    # while the loss of that step was still finite.
    monkeypatch.setattr(loop, "poly_lr", lambda base_lr, frac, power: float("nan"))
    with AnnotationStore.open(folder) as store:
        run = FineTune(store, engine.load_model(base), Recipe(iterations=1, crop=32, batch_size=1, eval_every=0,
                                                              device="cpu", heldout_fraction=0.4,
                                                              eval_max_side=None), confirm=True)
        with pytest.raises(TrainError, match="NaN or infinity.*nothing was written"):
            run.run()
        assert Versions.of(store).list() == [] and Versions.of(store).current is None
    assert _checkpoints(folder) == []


def test_save_model_refuses_nonfinite_weights(tmp_path):
    model = _tiny_model()
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or infinity"):
        engine.save_model(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []  # not even a temp file


def _nan_checkpoint(path: Path, version: Version) -> None:
    """A checkpoint with NaN weights written behind save_model's back (an older version, a copied file)."""
    from safetensors.torch import save_file
    model = _tiny_model()
    engine.save_model(model, path, version=version.to_dict())
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    first = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(path), metadata=header)


def test_nonfinite_tensors_names_the_float_tensors_holding_nan_or_infinity():
    nan, inf = float("nan"), float("inf")
    tensors = {"a": torch.tensor([1.0, nan]), "b": torch.tensor([1, 2]), "c": torch.tensor([[-inf]]),
               "d": torch.zeros(3, dtype=torch.float16), "e": torch.tensor([inf], dtype=torch.bfloat16),
               "f": torch.empty(0), "g": 3.5}
    assert engine.nonfinite_tensors(tensors) == ["a", "c", "e"]
    assert engine.nonfinite_tensors(_tiny_model().state_dict()) == []


def test_a_nonfinite_checkpoint_copied_in_is_listed_but_never_loaded(tmp_path):
    # Runs record only what save_model wrote, and it refuses NaN weights (above).  A damaged file put in
    # the folder by hand is listed from its metadata like any other, without its weights being read;
    # the reader refuses it whenever anything loads it, so it can be neither used nor trained on.
    good, bad = Version(name="good.safetensors", created=1.0), Version(name="bad.safetensors", created=2.0)
    engine.save_model(_tiny_model(), tmp_path / good.name, version=good.to_dict())
    _nan_checkpoint(tmp_path / bad.name, bad)
    vs = Versions(tmp_path)
    assert [v.name for v in vs.list()] == [good.name, bad.name]
    vs.add(good, make_current=True)
    vs.add(bad, make_current=True)
    assert Versions(tmp_path).current.name == bad.name
    for load in (engine.read_checkpoint, engine.load_model):
        with pytest.raises(engine.CheckpointError, match=f"{bad.name}: 1 tensor.*NaN or infinity"):
            load(vs.current_path())
    assert engine.load_model(vs.path(good.name)).meta.arch == ARCH


def test_a_nonfinite_starting_model_is_refused_before_training(folder, base, capsys):
    # A NaN version made current before these checks existed: the command line says so in one line.
    with AnnotationStore.open(folder) as store:
        ckdir = store.checkpoints_dir
    ckdir.mkdir(parents=True, exist_ok=True)
    _nan_checkpoint(ckdir / "old.safetensors", Version(name="old.safetensors"))
    (ckdir / "versions.json").write_text(json.dumps({"format": 1, "current": "old.safetensors", "versions": []}))
    rc, lines = _train([str(folder), *TINY], capsys)
    assert rc == 1 and len(lines) == 1 and "NaN" in lines[0], lines
    # The app hands the trainer a model in memory: refused before the first step too.
    model = _tiny_model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    events = []
    with AnnotationStore.open(folder) as store:
        with pytest.raises(TrainError, match="NaN or infinite weights"):
            FineTune(store, model, Recipe(iterations=1, crop=32, batch_size=1, device="cpu")).run(events.append)
    assert [e.phase for e in events] == ["prepare"]


# ---------------------------------------------------------------------------------- versions.json
def _one_version(d: Path) -> Version:
    v = Version(name="m-v001.safetensors", parent="base", created=5.0, miou_before=0.2, miou_after=0.4)
    engine.save_model(_tiny_model(), d / v.name, version=v.to_dict())
    return v


@pytest.mark.parametrize("content", [
    "{not json", "", "\xff\xfe", "[]", '"a string"', "null",
    '{"format": 1, "versions": {"m-v001.safetensors": {}}}',
    '{"format": 1, "current": ["m-v001.safetensors"], "versions": []}',
    '{"format": 7, "current": "m-v001.safetensors", "versions": []}',
])
def test_a_damaged_versions_index_is_reported_rebuilt_and_kept_aside(tmp_path, content):
    v = _one_version(tmp_path)
    damaged = content.encode("latin-1")
    (tmp_path / "versions.json").write_bytes(damaged)
    vs = Versions(tmp_path)  # no exception, whatever the shape
    assert [x.name for x in vs.list()] == [v.name] and vs.get(v.name).parent == "base"
    assert vs.notice and "versions.json" in vs.notice and "damaged" in vs.notice and "\n" not in vs.notice
    vs.set_current(v.name)  # the next write: a good index, the damaged one kept beside it
    assert json.loads((tmp_path / "versions.json").read_text())["current"] == v.name
    kept = list(tmp_path.glob("versions.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged and kept[0].name in vs.notice
    again = Versions(tmp_path)
    assert again.notice is None and again.current.name == v.name


@pytest.mark.parametrize("bad_entry", [
    {"parent": "no name"}, {"name": 3}, {"name": "../escape.safetensors"}, "a string", None,
    {"name": "m-v001.safetensors", "created": "yesterday"}, {"name": "m-v001.safetensors", "images": "a.png"},
])
def test_unreadable_entries_are_skipped_and_the_rest_of_the_index_kept(tmp_path, bad_entry):
    v = _one_version(tmp_path)
    good = {**v.to_dict(), "note": "from the index"}
    (tmp_path / "versions.json").write_text(json.dumps({"format": 1, "current": v.name,
                                                        "versions": [bad_entry, good]}))
    vs = Versions(tmp_path)
    assert vs.current.name == v.name and vs.current.note == "from the index"
    assert "1 unreadable entry" in vs.notice
    # The dialog and the versions list format these: a wrong type in the index must not break them.
    assert all(isinstance(x.created, (int, float)) and isinstance(x.images, list) for x in vs.list())


def test_cli_train_says_the_versions_index_was_damaged(folder, base, capsys):
    with AnnotationStore.open(folder) as store:
        ckdir = store.checkpoints_dir
    ckdir.mkdir(parents=True, exist_ok=True)
    (ckdir / "versions.json").write_text('{"format": 1, "versions": 3}')
    rc, lines = _train([str(folder), "--weights", str(base), *TINY, "--confirm"], capsys)
    assert rc == 0, lines
    notes = [ln for ln in lines if ln.startswith("note:")]
    assert len(notes) == 1 and "versions.json" in notes[0] and "damaged" in notes[0]
    assert len(list(ckdir.glob("versions.json.damaged-*"))) == 1
    assert Versions(ckdir).current is not None


# ---------------------------------------------------------------------------------- refused before training
def test_all_void_masks_refuse_to_train_naming_the_folder(folder, base, capsys):
    with AnnotationStore.open(folder) as store:
        for image_id in store.ids():
            store.save_mask(image_id, np.full((40, 48), 255, np.uint8), status="edited")
    rc, lines = _train([str(folder), "--weights", str(base), *TINY, "--confirm"], capsys)
    assert rc == 1 and "no labelled pixels" in lines[-1] and str(folder) in lines[-1], lines
    assert not any(ln.startswith(("step", "measuring")) for ln in lines) and _checkpoints(folder) == []


@pytest.mark.parametrize("where", ["folder", "missing folder", "read-only folder"])
def test_an_unwritable_out_path_fails_before_training(folder, base, tmp_path, where, capsys):
    if where == "folder":
        out = tmp_path / "outdir"
        out.mkdir()
    elif where == "missing folder":
        out = tmp_path / "nowhere" / "m.safetensors"
    else:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "m.safetensors"
    rc, lines = _train([str(folder), "--weights", str(base), *TINY, "--out", str(out)], capsys)
    assert rc == 1 and len(lines) == 1 and "--out" in lines[0] and str(out) in lines[0], lines
    assert not (tmp_path / "nowhere").exists() and _checkpoints(folder) == []
    if where == "folder":
        assert list(out.iterdir()) == []
    with AnnotationStore.open(folder) as store:  # the library refuses it too, before reading any image
        run = FineTune(store, engine.load_model(base), Recipe(device="cpu"), out=out)
        with pytest.raises(ValueError, match=str(out.name)):
            next(iter(run))


def test_an_out_name_as_long_as_a_file_name_may_be_trains_and_one_longer_is_refused(folder, base, tmp_path, capsys):
    # A probe named after the file (".NAME.random.tmp") would exceed the file system's 255 bytes and
    # report the folder unwritable; the checkpoint itself is written under a temp name that fits.
    out = tmp_path / ("m" * 238 + ".safetensors")
    assert len(out.name.encode()) == 250
    assert check_out_path(out) == out and list(tmp_path.iterdir()) == [folder]  # no probe left behind
    rc, lines = _train([str(folder), "--weights", str(base), *TINY, "--out", str(out)], capsys)
    assert rc == 0, lines
    assert engine.read_checkpoint(out).native_meta.arch == ARCH
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, out.name])
    too_long = tmp_path / ("é" * 122 + ".safetensors")  # 256 bytes in UTF-8, 134 characters
    rc, lines = _train([str(folder), "--weights", str(base), *TINY, "--out", str(too_long)], capsys)
    assert rc == 1 and len(lines) == 1 and "--out" in lines[0] and "256 bytes" in lines[0], lines


# ---------------------------------------------------------------------------------- SIGKILL
def _kill_child(argv: list[str], wfd: int) -> None:
    """Run ``python -m trainer ARGV`` in this forked process, its stdout and stderr into the pipe."""
    code = 1
    try:
        torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
        sys.stdout = sys.stderr = os.fdopen(wfd, "w", buffering=1)
        from trainer.__main__ import main
        code = main(argv)
        sys.stdout.flush()
    finally:
        os._exit(code)


def _state(ckdir: Path) -> tuple[str | None, set[str]]:
    """(current, listed names) after checking that versions.json and every checkpoint are complete."""
    vs = Versions(ckdir)
    assert vs.notice is None, vs.notice  # a torn or half-written versions.json would be reported here
    listed = {v.name for v in vs.list()}
    data = json.loads((ckdir / "versions.json").read_text())
    assert {e["name"] for e in data["versions"]} <= {p.name for p in ckdir.glob("*.safetensors")}
    for path in ckdir.glob("*.safetensors"):  # nothing half-written under a final name
        assert path.name in listed
        engine.read_checkpoint(path)  # refuses a torn file, and one holding NaN or infinity
    current = data["current"]
    assert current is not None and (ckdir / current).is_file()
    return current, listed


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork and SIGKILL")
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="forks a process that has run autograd: where CUDA is, autograd's device threads forbid "
                           "that (the machines without a GPU, CI's among them, run it)")
def test_sigkill_during_train_leaves_versions_and_current_model_complete(folder, base):
    """Kill ``python -m trainer`` at random moments (most of them while it writes the new version).

    The child is forked from the test process (torch already imported), so a round costs a second,
    not an interpreter start-up."""
    argv = [str(folder), *TINY, "--iterations", "2", "--confirm"]
    assert _trainer_main([*argv, "--weights", str(base)]) == 0  # a first current version
    with AnnotationStore.open(folder) as store:
        ckdir = store.checkpoints_dir
    current, listed = _state(ckdir)
    rng = random.Random(2024)
    markers = ["reading the labelled", "step 1/", "writing the new version", "writing the new version",
               "writing the new version", "writing the new version"]
    killed = 0
    for marker in markers:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            _kill_child(argv, w)
        os.close(w)
        data = b""
        while marker.encode() not in data and select.select([r], [], [], 60.0)[0]:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        # Writing a tiny model's version takes tens of milliseconds: kill within them.
        select.select([], [], [], rng.uniform(0.0, 0.06 if marker.startswith("writing") else 0.05))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        assert marker.encode() in data, data.decode(errors="replace")[-2000:]
        finished = os.WIFEXITED(status)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, data.decode(errors="replace")[-2000:]
        killed += not finished
        new_current, new_listed = _state(ckdir)
        # As before, or the new version complete, listed and (--confirm) current.
        assert new_current == current or new_current not in listed
        assert listed <= new_listed and len(new_listed - listed) <= 1
        if finished:
            assert new_current != current and new_current in new_listed
        current, listed = new_current, new_listed
    assert killed >= len(markers) // 2  # the kills landed in the run, or the test proves nothing
    # A rerun succeeds, starting from the current version, and the store sweeps the dead writers' temp files.
    assert _trainer_main(argv) == 0
    assert _state(ckdir)[0] not in listed
    assert not [p for p in ckdir.iterdir() if p.name.endswith(".tmp")]


def test_a_batch_of_one_trains_batchnorm_except_after_global_pooling(folder, base, capsys):
    # ASPP's image-pooling BatchNorm sees one value per channel with one image: torch refuses to train it.
    rc, lines = _train([str(folder), "--weights", str(base), *TINY, "--bn", "train"], capsys)
    assert rc == 0, lines
    assert len(_checkpoints(folder)) == 1
