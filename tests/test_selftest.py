"""``deeplab-gui --self-test`` in source form, and (when a bundle is named) the frozen bundle's check.

The bundle test runs only with ``DEEPLAB_GUI_BUNDLE=dist/deeplab-gui`` (what ``make package-test``
sets): building the bundle takes minutes, so plain ``make test`` never does.
"""
from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deeplab_gui.cli import parser as cli
from deeplab_gui.cli import selftest
from deeplab_gui.cli.selftest import SelfTestConfig, ensure_headless_qt, run_self_test

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("qt", "model", "predict", "crf", "store", "voc", "regions")


def _check_bundle_module():
    if "check_bundle" in sys.modules:
        return sys.modules["check_bundle"]
    spec = importlib.util.spec_from_file_location("check_bundle", ROOT / "packaging" / "check_bundle.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_bundle"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_self_test_passes_every_step_and_leaves_env_alone(qapp, monkeypatch):
    monkeypatch.delenv("DEEPLAB_GUI_CACHE", raising=False)
    monkeypatch.setenv("DEEPLAB_GUI_SETTINGS", "/nonexistent/keep-me.ini")
    out = io.StringIO()
    assert run_self_test(out=out) == 0, out.getvalue()
    text = out.getvalue()
    for step in STEPS:
        assert f"ok   {step}" in text, text
    assert "FAIL" not in text and "self-test passed: 7 steps" in text
    assert "torch and pydensecrf" in text and "platform offscreen" in text
    # The temporary redirection of settings/cache is undone.
    assert "DEEPLAB_GUI_CACHE" not in os.environ
    assert os.environ["DEEPLAB_GUI_SETTINGS"] == "/nonexistent/keep-me.ini"


def test_a_failing_step_is_reported_and_exits_1():
    out = io.StringIO()
    code = run_self_test(SelfTestConfig(arch="no_such_model", qt=False), out=out)
    text = out.getvalue()
    assert code == 1
    assert "FAIL model" in text and "self-test FAILED: model" in text
    assert "predict" not in text  # later steps need the model: skipped, not run on garbage


def test_missing_demo_image_fails_predict():
    out = io.StringIO()
    assert run_self_test(SelfTestConfig(image="missing.jpg", qt=False), out=out) == 1
    assert "FAIL predict" in out.getvalue() and "missing.jpg" in out.getvalue()


def test_cli_flag_dispatches_to_the_self_test(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(selftest, "run_self_test", lambda: calls.append(1) or 7)
    assert cli.main(["--self-test"]) == 7 and calls == [1]
    assert "--self-test" in cli.build_parser().format_help()


def test_cli_self_test_in_a_subprocess_exits_0():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run([sys.executable, "-m", "deeplab_gui", "--self-test"], check=False, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "self-test passed" in r.stdout and "source" in r.stdout.splitlines()[0]


@pytest.mark.parametrize("env, expected", [
    ({}, "offscreen"),
    ({"DISPLAY": ":0"}, None),
    ({"WAYLAND_DISPLAY": "wayland-0"}, None),
    ({"QT_QPA_PLATFORM": "xcb"}, "xcb"),
])
def test_headless_qt_only_without_a_display(monkeypatch, env, expected):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "platform", "linux")
    ensure_headless_qt()
    assert os.environ.get("QT_QPA_PLATFORM") == expected


def test_check_bundle_helpers(tmp_path):
    cb = _check_bundle_module()
    env = cb.clean_env(tmp_path)
    assert env["HOME"] == str(tmp_path) and "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert ".venv" not in env["PATH"]
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big"))
    assert cb.png_size(png) == (640, 480)
    (tmp_path / "bad.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError):
        cb.png_size(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        cb.copy_bundle(tmp_path / "nothing", tmp_path / "dest")


BUNDLE = os.environ.get("DEEPLAB_GUI_BUNDLE")


@pytest.mark.skipif(not BUNDLE, reason="set DEEPLAB_GUI_BUNDLE=dist/deeplab-gui (make package-test)")
def test_frozen_bundle_self_test_and_gui_under_xvfb(tmp_path):
    cb = _check_bundle_module()
    check = cb.copy_bundle(Path(BUNDLE).resolve(), tmp_path)
    text = cb.run_self_test(check)
    assert "frozen (PyInstaller)" in text.splitlines()[0], text
    for step in STEPS:
        assert f"ok   {step}" in text, text
    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run not installed: the GUI start is not checked")
    shot = cb.run_gui_screenshot(check, ROOT / "build" / "package-test" / "screenshot.png")
    w, h = cb.png_size(shot)
    assert w >= 200 and h >= 150


def test_app_screenshot_hook_saves_the_window(tmp_path):
    """DEEPLAB_GUI_SCREENSHOT (with DEEPLAB_GUI_EXIT_AFTER_MS): what the bundle check relies on."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    shot = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", DEEPLAB_GUI_EXIT_AFTER_MS="50",
               DEEPLAB_GUI_SCREENSHOT=str(shot), DEEPLAB_GUI_SETTINGS=str(tmp_path / "s.ini"),
               DEEPLAB_GUI_LOG_DIR=str(tmp_path / "log"), DEEPLAB_GUI_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "deeplab_gui", str(folder)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    with Image.open(shot) as im:
        assert im.width >= 200 and im.height >= 150
