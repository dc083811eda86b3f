"""deeplab_gui.cli: subcommands, one-line failures, prelabel writing palette masks."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from deeplab_gui.cli import parser as cli
from deeplab_gui.cli.parser import main
from engine import ModelMeta

ROOT = Path(__file__).resolve().parents[1]


class ConstSeg(nn.Module):
    """Predicts class ``k`` wherever the red channel is in band k (deterministic, checkable)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.meta = ModelMeta(arch="const", num_classes=num_classes)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1]  # normalised red; class by thresholds
        centers = torch.linspace(-2.0, 2.2, self.meta.num_classes, device=x.device).view(1, -1, 1, 1)
        return -(red - centers) ** 2 * 50 + self.dummy


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "expected a message on stderr"
    assert "Traceback" not in err
    return lines[-1]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    left_dark = np.zeros((20, 30, 3), np.uint8)
    left_dark[:, 15:] = 255
    Image.fromarray(left_dark).save(folder / "a.png")
    Image.fromarray(np.full((12, 9, 3), 255, np.uint8)).save(folder / "b.jpg")
    Image.fromarray(np.zeros((7, 5, 3), np.uint8)).save(folder / "sub" / "c.png")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    return folder


@pytest.fixture
def fake_model(monkeypatch):
    loaded = {}

    def load(spec, arch):
        loaded["spec"], loaded["arch"] = spec, arch
        return ConstSeg(3)

    monkeypatch.setattr(cli, "_load_model", load)
    return loaded


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("prelabel", "train", "export-voc", "import-voc"):
        assert cmd in out
    for cmd in ("prelabel", "train", "export-voc", "import-voc", "gui"):
        assert main([cmd, "--help"]) == 0
    assert "--weights" in capsys.readouterr().out
    assert main(["--version"]) == 0


@pytest.mark.parametrize("argv", [["export-voc", "missing", "o"], ["import-voc", "missing", "f"],
                                  ["train", "missing"]])
def test_voc_commands_refuse_missing_folders_in_one_line(argv, capsys):
    assert main(argv) == 2
    assert "not a folder" in _one_line(capsys.readouterr().err)


def test_gui_default_command_refuses_a_missing_folder(tmp_path, capsys):
    # Running the app itself is covered by tests/test_gui_core.py (a subprocess that exits by itself).
    assert main([str(tmp_path / "missing")]) == 2
    assert "not a folder" in _one_line(capsys.readouterr().err)


def test_usage_errors_are_one_line(capsys):
    assert main(["prelabel"]) == 2
    assert "FOLDER" in _one_line(capsys.readouterr().err)
    assert main(["prelabel", ".", "--max-side", "big"]) == 2
    assert "invalid int" in _one_line(capsys.readouterr().err)


def test_prelabel_argument_checks(images, tmp_path, capsys):
    assert main(["prelabel", str(images), "--weights", "w.pth"]) == 2
    assert "no such checkpoint" in _one_line(capsys.readouterr().err)
    assert main(["prelabel", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "--weights" in _one_line(capsys.readouterr().err)
    assert main(["prelabel", str(tmp_path / "nope"), "--weights", "w", "--out", "o"]) == 2
    assert "not a folder" in _one_line(capsys.readouterr().err)
    assert main(["prelabel", str(images), "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "no such checkpoint" in _one_line(capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert main(["prelabel", str(tmp_path / "empty"), "--weights", "w", "--out", str(tmp_path / "o")]) == 1
    assert "no images" in _one_line(capsys.readouterr().err)


def test_prelabel_unknown_catalog_id_fails_cleanly(images, tmp_path, capsys):
    code = main(["prelabel", str(images), "--weights", "no-such-weights-id", "--out", str(tmp_path / "o")])
    assert code != 0
    assert "no-such-weights-id" in _one_line(capsys.readouterr().err)


def test_prelabel_writes_palette_masks_and_skips_broken(images, tmp_path, fake_model, capsys):
    out = tmp_path / "masks"
    code = main(["prelabel", str(images), "--weights", "some.ckpt", "--arch", "const", "--out", str(out),
                 "--device", "cpu", "--max-side", "16"])
    assert code == 0
    assert fake_model == {"spec": "some.ckpt", "arch": "const"}
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    with Image.open(out / "a.png") as im:
        assert im.mode == "P" and im.size == (30, 20)
        a = np.array(im)
    assert (a[:, :12] == 0).all() and (a[:, 18:] == 2).all()  # dark left, bright right, full size
    with Image.open(out / "b.png") as im:
        assert im.size == (9, 12)
    err = capsys.readouterr().err
    assert "broken.png" in err and "wrote 2" in err and "Traceback" not in err


def test_prelabel_recursive_mirrors_subfolders_and_avoids_stem_clashes(images, tmp_path, fake_model, capsys):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / "a.jpg")  # same stem as a.png
    out = tmp_path / "masks"
    assert main(["prelabel", str(images), "--weights", "w", "--out", str(out), "--recursive"]) == 0
    assert (out / "sub" / "c.png").exists()
    with Image.open(out / "a.png") as im:
        assert im.size == (4, 4)  # a.jpg sorts first and owns a.png
    with Image.open(out / "a.png.png") as im:
        assert im.size == (30, 20)  # a.png keeps its whole name, as the app's "Save elsewhere…" names it
    assert "wrote 4 mask(s), skipped 1" in capsys.readouterr().err  # only broken.png is left out


def test_prelabel_nothing_readable_is_a_failure(tmp_path, fake_model, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.jpg").write_text("text")
    assert main(["prelabel", str(folder), "--weights", "w", "--out", str(tmp_path / "o")]) == 1
    assert "no image could be processed" in _one_line(capsys.readouterr().err)


def test_prelabel_crf_uses_engine_crf_or_says_unavailable(images, tmp_path, fake_model, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "engine.crf", None)  # import raises ImportError
    assert main(["prelabel", str(images), "--weights", "w", "--out", str(tmp_path / "o"), "--crf"]) == 2
    assert "--crf" in _one_line(capsys.readouterr().err)

    calls = []

    def refine(image, probs, params):
        calls.append((image.shape, probs.shape, params))
        flipped = probs[::-1].copy()  # visible effect: class order reversed
        return flipped

    fake = types.SimpleNamespace(CRFParams=lambda: "params", refine=refine)
    monkeypatch.setitem(sys.modules, "engine.crf", fake)
    out = tmp_path / "crf"
    assert main(["prelabel", str(images), "--weights", "w", "--out", str(out), "--crf"]) == 0
    assert sorted(c[0] for c in calls) == [(12, 9, 3), (20, 30, 3)]
    assert all(c[1][0] == 3 and c[2] == "params" for c in calls)
    a = np.array(Image.open(out / "a.png"))
    assert (a[:, :12] == 2).all() and (a[:, 18:] == 0).all()


def test_prelabel_with_real_native_checkpoint(images, tmp_path, capsys):
    from engine import build_model, save_model

    ckpt = tmp_path / "m.safetensors"
    save_model(build_model("deeplabv3_mobilenet_v2", num_classes=4), ckpt)
    out = tmp_path / "masks"
    assert main(["prelabel", str(images), "--weights", str(ckpt), "--out", str(out), "--max-side", "32",
                 "--device", "cpu"]) == 0
    m = np.array(Image.open(out / "a.png"))
    assert m.shape == (20, 30) and m.max() < 4


def test_python_m_subprocess_failure_is_one_line():
    r = subprocess.run([sys.executable, "-m", "deeplab_gui", "export-voc", "in", "out"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert _one_line(r.stderr).startswith("deeplab-gui export-voc:")
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_unexpected_failure_is_one_line_without_an_exception_name(monkeypatch, capsys, tmp_path):
    from deeplab_gui.cli import parser

    def boom(args):
        raise KeyError("internal")
    monkeypatch.setattr(parser, "_cmd_gui", boom)
    monkeypatch.setattr(parser, "build_parser", lambda real=parser.build_parser: _with_gui(real(), boom))
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "KeyError" not in err[0] and "unexpected failure" in err[0] and "internal" in err[0]


def _with_gui(p, fn):
    p.set_defaults(func=fn)
    for action in p._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=fn)
    return p
