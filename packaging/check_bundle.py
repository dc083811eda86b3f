"""Check a built one-folder bundle the way a user without Python would run it.

    python packaging/check_bundle.py [dist/deeplab-gui] [--screenshot build/package-test/screenshot.png]

1. Copies the bundle to a fresh temporary folder (so nothing resolves back into the build tree) and
   runs ``deeplab-gui --self-test`` there with a scrubbed environment (``env -i``-like: a minimal
   PATH, HOME in the temp folder, no PYTHONPATH, no venv, working directory the temp folder).
2. Where ``xvfb-run`` is installed, starts the GUI under Xvfb on the bundled demo folder for a few
   seconds (``DEEPLAB_GUI_EXIT_AFTER_MS``) and saves the window (``DEEPLAB_GUI_SCREENSHOT``).
Prints what it did and exits non-zero on the first failure. Standard library only: it runs with any
Python, and never imports the project.
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BundleCheck", "clean_env", "run_self_test", "run_gui_screenshot", "png_size", "main"]

ROOT = Path(__file__).resolve().parent.parent
EXE_NAME = "deeplab-gui.exe" if os.name == "nt" else "deeplab-gui"


@dataclass
class BundleCheck:
    """Where the copied bundle lives and what the checks produced."""
    exe: Path
    home: Path
    self_test_output: str = ""
    screenshot: Path | None = None


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: no PYTHONPATH/PYTHONHOME/VIRTUAL_ENV, nothing pointing at the venv."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(home)}
    for var in ("SYSTEMROOT", "WINDIR"):  # Windows cannot start processes without these
        if var in os.environ:
            env[var] = os.environ[var]
    env.update(extra)
    return env


def copy_bundle(bundle: Path, dest: Path) -> BundleCheck:
    """Copy ``bundle`` (the folder holding the executable) under ``dest``."""
    exe = bundle / EXE_NAME
    if not exe.is_file():
        raise FileNotFoundError(f"{exe}: no bundle here; run 'make package' first")
    target = dest / "deeplab-gui"
    shutil.copytree(bundle, target, symlinks=True)
    home = dest / "home"
    home.mkdir()
    return BundleCheck(exe=target / EXE_NAME, home=home)


def run_self_test(check: BundleCheck, timeout: float = 300) -> str:
    """``deeplab-gui --self-test`` from the temp folder, headless; returns its output, raises on failure."""
    r = subprocess.run([str(check.exe), "--self-test"], check=False, cwd=check.home, env=clean_env(check.home),
                       capture_output=True, text=True, timeout=timeout)
    check.self_test_output = r.stdout + r.stderr
    if r.returncode != 0 or "self-test passed" not in r.stdout:
        raise RuntimeError(f"bundle self-test failed (exit {r.returncode}):\n{check.self_test_output}")
    return check.self_test_output


def run_gui_screenshot(check: BundleCheck, out: Path, *, exit_after_ms: int = 3000,
                       size: str = "1280x800", timeout: float = 300) -> Path:
    """Start the GUI under ``xvfb-run`` on the bundled demo folder, save its window to ``out``."""
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise FileNotFoundError("xvfb-run is not installed (apt-get install -y xvfb)")
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = clean_env(check.home, DEEPLAB_GUI_EXIT_AFTER_MS=str(exit_after_ms),
                    DEEPLAB_GUI_SCREENSHOT=str(out))
    r = subprocess.run([xvfb, "-a", "-s", f"-screen 0 {size}x24", str(check.exe)], check=False, cwd=check.home, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not out.is_file():
        raise RuntimeError(f"the GUI under Xvfb exited {r.returncode} without a screenshot:\n{r.stdout}{r.stderr}")
    w, h = png_size(out)
    if w < 200 or h < 150:
        raise RuntimeError(f"{out}: {w}x{h} is not a main window")
    check.screenshot = out
    return out


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (no imaging library needed)."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    return struct.unpack(">II", head[16:24])


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", type=Path, default=ROOT / "dist" / "deeplab-gui")
    ap.add_argument("--screenshot", type=Path, default=ROOT / "build" / "package-test" / "screenshot.png")
    ap.add_argument("--no-gui", action="store_true", help="skip the Xvfb run")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deeplab_gui_bundle_") as tmp:
        try:
            check = copy_bundle(args.bundle.resolve(), Path(tmp))
            print(f"bundle: {args.bundle} ({dir_size(args.bundle) / 2**20:.0f} MiB), copied to {check.exe.parent}")
            print(run_self_test(check), end="")
            if args.no_gui:
                return 0
            if shutil.which("xvfb-run") is None:
                print("xvfb-run not installed: GUI start not checked")
                return 0
            shot = run_gui_screenshot(check, args.screenshot)
            print(f"GUI under Xvfb: screenshot {shot} ({'x'.join(map(str, png_size(shot)))})")
        except (RuntimeError, FileNotFoundError, ValueError, subprocess.TimeoutExpired) as exc:
            print(f"package-test FAILED: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
