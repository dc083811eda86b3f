"""engine/ and trainer/ must stay usable without a display: no Qt import anywhere in them."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
QT_MODULES = {"PySide6", "qtawesome", "shiboken6", "PyQt5", "PyQt6", "qtpy"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_and_trainer_source_never_import_qt():
    offenders = []
    for pkg in ("engine", "trainer"):
        for path in (ROOT / pkg).rglob("*.py"):
            bad = _imports(path) & QT_MODULES
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_engine_import_does_not_load_qt_or_torchvision():
    code = ("import sys, engine, trainer, deeplab_gui.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('PySide6', 'qtawesome', 'shiboken6', 'torchvision')]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
