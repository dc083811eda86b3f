"""``deeplab-gui --self-test``: check, in a few seconds, that this installation (source or frozen bundle)
has every piece the app needs, by using each one once.

Steps, each printed as one ``ok``/``FAIL`` line with its time:
  qt        a QApplication starts (offscreen where there is no display) and qtawesome's icon fonts
            load and draw (frozen builds that miss the font files or platform plugins fail here)
  model     build a small DeepLab, save it as a native checkpoint, load it back
  predict   read a bundled demo image, predict C×H×W probabilities
  crf       refine them with both CRF backends (torch and pydensecrf), compare their labels
  store     write a mask into a temporary annotation store and read it back
  voc       export that store as PASCAL VOC and read the exported mask back
  regions   superpixels of the image (scikit-image) and one click through a click model's decoder
            (MobileSAM with random weights, from a stand-in embedding: no encoder run)
Then a summary line. Exit status 0 when every step passed, 1 otherwise. Nothing outside a temporary
folder is written: settings, logs and the weights cache are pointed there too.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["SelfTestConfig", "run_self_test", "ensure_headless_qt"]


_REDIRECTED = {"DEEPLAB_GUI_SETTINGS": "settings.ini", "DEEPLAB_GUI_LOG_DIR": "log", "DEEPLAB_GUI_CACHE": "cache"}


@dataclass(frozen=True)
class SelfTestConfig:
    """What the self-test runs; defaults keep it to a few seconds on a 2-core CPU."""
    arch: str = "deeplabv3_mobilenet_v2"  # the smallest registry model (5.1M parameters)
    num_classes: int = 21
    image: str = "chelsea_cat.jpg"        # from resources/demo
    side: int = 96                        # longer image side the test works at (CRF cost ~ pixels)
    crf_iterations: int = 5
    device: str = "cpu"                   # the check is about the bundle, not the GPU
    qt: bool = True


def ensure_headless_qt() -> None:
    """Use Qt's offscreen platform where no display server is reachable (Linux/BSD without
    DISPLAY or WAYLAND_DISPLAY); Windows and macOS always have a native platform."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd")) and "QT_QPA_PLATFORM" not in os.environ \
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


def _demo_image(name: str) -> Path:
    from ..app import demo_folder
    path = demo_folder() / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled demo image missing: {path}")
    return path


def _check_qt() -> str:
    ensure_headless_qt()
    os.environ.setdefault("QT_API", "pyside6")  # qtawesome goes through qtpy: no probing for PyQt
    import qtawesome as qta
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "deeplab-gui"])
    # A glyph from each font family the app uses; a missing .ttf raises or draws nothing.
    drawn = 0
    for name in ("fa5s.paint-brush", "mdi.eraser", "fa5s.fill-drip"):
        image = qta.icon(name, color=QColor("black")).pixmap(QSize(32, 32)).toImage()
        if image.isNull():
            raise RuntimeError(f"qtawesome icon {name} rendered an empty pixmap")
        opaque = sum(image.pixelColor(x, y).alpha() > 0 for x in range(0, 32, 2) for y in range(0, 32, 2))
        if opaque == 0:
            raise RuntimeError(f"qtawesome icon {name} drew no pixels (font not loaded)")
        drawn += 1
    return f"platform {app.platformName()}, Qt {_qt_version()}, {drawn} qtawesome glyphs drawn"


def _qt_version() -> str:
    from PySide6 import QtCore
    return QtCore.qVersion()


class _Run:
    """Runs steps, prints one line each, remembers failures (later steps may depend on earlier)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed: list[str] = []
        self.passed: list[str] = []

    def step(self, name: str, fn: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail = fn()
        except Exception as exc:  # a self-test reports every failure and goes on
            if os.environ.get("DEEPLAB_GUI_DEBUG"):
                traceback.print_exc(file=self.out)
            self.failed.append(name)
            self._line("FAIL", name, t0, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            return False
        self.passed.append(name)
        self._line("ok", name, t0, detail)
        return True

    def _line(self, mark: str, name: str, t0: float, detail: str) -> None:
        print(f"  {mark:<4} {name:<8} {time.perf_counter() - t0:6.2f}s  {detail}", file=self.out, flush=True)


def run_self_test(config: SelfTestConfig | None = None, *, out: TextIO | None = None) -> int:
    """Run every step of the module docstring; print one line per step and a summary to ``out``
    (default stdout). Returns the exit status: 0 when all passed, 1 otherwise."""
    cfg = config or SelfTestConfig()
    out = out or sys.stdout
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="deeplab_gui_selftest_"))
    # Nothing of the user's is read or written: settings, logs and downloads go to the temp folder
    # (restored afterwards, since the self-test may run inside a longer-lived process).
    saved = {v: os.environ.get(v) for v in _REDIRECTED}
    for var, sub in _REDIRECTED.items():
        os.environ[var] = str(tmp / sub)
    frozen = "frozen (PyInstaller)" if getattr(sys, "frozen", False) else "source"
    print(f"deeplab-gui self-test: {frozen}, Python {platform.python_version()}, {platform.platform()}",
          file=out, flush=True)
    run = _Run(out)
    s: dict[str, Any] = {}
    try:
        if cfg.qt:
            run.step("qt", _check_qt)
        ok = run.step("model", lambda: _model(cfg, tmp, s))
        ok = ok and run.step("predict", lambda: _predict(cfg, s))
        ok = ok and run.step("crf", lambda: _crf(cfg, s))
        ok = ok and run.step("store", lambda: _store(cfg, tmp, s))
        ok = ok and run.step("voc", lambda: _voc(tmp, s))
        if "rgb" in s:   # the image the predict step read
            run.step("regions", lambda: _regions(s))
    finally:
        if s.get("store") is not None:
            s["store"].close()
        shutil.rmtree(tmp, ignore_errors=True)
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    total = time.perf_counter() - t_start
    if run.failed:
        print(f"self-test FAILED: {', '.join(run.failed)} ({len(run.passed)} passed, {total:.1f}s)", file=out)
        return 1
    print(f"self-test passed: {len(run.passed)} steps in {total:.1f}s", file=out, flush=True)
    return 0


def _model(cfg: SelfTestConfig, tmp: Path, s: dict) -> str:
    import torch

    import engine

    torch.manual_seed(0)
    model = engine.build_model(cfg.arch, num_classes=cfg.num_classes)
    path = tmp / "selftest.safetensors"
    engine.save_model(model, path)
    loaded = engine.load_model(path)  # architecture detected from the file, as the app does
    a, b = model.state_dict(), loaded.state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise RuntimeError("checkpoint did not load back bit-exactly")
    s["model"] = loaded
    n = sum(p.numel() for p in loaded.parameters())
    return f"{cfg.arch}, {n:,} parameters, saved and reloaded ({path.stat().st_size / 1e6:.1f} MB); torch {torch.__version__}"


def _predict(cfg: SelfTestConfig, s: dict) -> str:
    import numpy as np
    from PIL import Image

    import engine

    rgb = engine.read_image(_demo_image(cfg.image))
    h, w = rgb.shape[:2]
    scale = cfg.side / max(h, w)
    if scale < 1:  # the CRF's cost grows with pixels: a thumbnail is enough to exercise every step
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # np.array, not asarray: a read-only view trips pydensecrf (engine.crf passes it through).
        rgb = np.array(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    probs = engine.Predictor(s["model"], device=cfg.device).predict(rgb)
    if probs.shape != (cfg.num_classes,) + rgb.shape[:2] or probs.dtype != np.float32:
        raise RuntimeError(f"probabilities {probs.shape} {probs.dtype}, expected "
                           f"{(cfg.num_classes,) + rgb.shape[:2]} float32")
    if not np.allclose(probs.sum(0), 1.0, atol=1e-3):
        raise RuntimeError("probabilities do not sum to 1 per pixel")
    s["rgb"], s["probs"] = rgb, probs
    return f"{cfg.image} ({w}x{h}) at {rgb.shape[1]}x{rgb.shape[0]} -> {probs.shape[0]}x{probs.shape[1]}x{probs.shape[2]} float32"


def _crf(cfg: SelfTestConfig, s: dict) -> str:
    import dataclasses

    import numpy as np

    from engine.crf import DEEPLAB_V1, available_backends, refine

    params = dataclasses.replace(DEEPLAB_V1, iterations=cfg.crf_iterations)
    missing = {"torch", "pydensecrf"} - set(available_backends())
    if missing:
        raise RuntimeError(f"CRF backend(s) not available: {sorted(missing)}")
    labels = {}
    for backend in ("torch", "pydensecrf"):
        kw = {"device": cfg.device} if backend == "torch" else {}
        refined = refine(s["rgb"], s["probs"], params, backend=backend, **kw)
        if refined.shape != s["probs"].shape or not np.isfinite(refined).all():
            raise RuntimeError(f"{backend}: bad output {refined.shape}")
        labels[backend] = refined.argmax(0).astype(np.uint8)
    agree = float((labels["torch"] == labels["pydensecrf"]).mean())
    # Both implement the same mean field; a gross disagreement means a broken backend.
    if agree < 0.9:
        raise RuntimeError(f"torch and pydensecrf labels agree on only {agree:.1%} of pixels")
    s["labels"] = labels["torch"]
    return f"torch and pydensecrf, {params.iterations} iterations, labels agree on {agree:.1%} of pixels"


def _store(cfg: SelfTestConfig, tmp: Path, s: dict) -> str:
    import numpy as np
    from PIL import Image

    from engine import AnnotationStore, Status

    folder = tmp / "images"
    folder.mkdir()
    image_id = Path(cfg.image).stem + ".png"
    Image.fromarray(s["rgb"]).save(folder / image_id)  # the thumbnail, so the mask's size matches
    mask = s["labels"].copy()
    mask[0, :] = 255  # one void row: the 255 convention must survive the round trip
    store = s["store"] = AnnotationStore.open(folder)
    if store.ids() != [image_id]:
        raise RuntimeError(f"store scan found {store.ids()}, expected [{image_id!r}]")
    store.save_mask(image_id, mask)
    back = store.load_mask(image_id)
    if back is None or not np.array_equal(back, mask) or store.status(image_id) is not Status.EDITED:
        raise RuntimeError("the mask did not read back as saved, or the status is not 'edited'")
    s["image_id"], s["mask"] = image_id, mask
    return f"mask {mask.shape[1]}x{mask.shape[0]} saved and read back, status {store.status(image_id).value}"


def _voc(tmp: Path, s: dict) -> str:
    import numpy as np
    from PIL import Image

    from engine import export_voc

    out = tmp / "voc"
    report = export_voc(s["store"], out, val_fraction=0.0)
    stem = Path(s["image_id"]).stem
    if report.exported != [stem] or report.skipped:
        raise RuntimeError(f"exported {report.exported}, skipped {report.skipped}")
    png = out / "SegmentationClass" / f"{stem}.png"
    with Image.open(png) as im:
        mode, back = im.mode, np.asarray(im)
    if mode != "P" or not np.array_equal(back, s["mask"]):
        raise RuntimeError(f"{png.name}: mode {mode}, or mask differs from the stored one")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return f"{len(report.exported)} image exported, {len(files)} files, P-mode mask matches"


def _regions(s: dict) -> str:
    import numpy as np

    from ..editing.superpixels import compute_superpixels
    from engine.click import ClickEmbedding, ClickPredictor, build_click_model

    rgb = s["rgb"]
    seg = compute_superpixels(rgb)
    if seg.shape != rgb.shape[:2]:
        raise RuntimeError(f"superpixels {seg.shape} for a {rgb.shape[:2]} image")
    model = build_click_model("mobile_sam")
    predictor = ClickPredictor(model)
    h, w = rgb.shape[:2]
    side = model.image_size
    scale = side / max(h, w)
    features = {"image_embed": np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)}
    predictor.set_embedding(ClickEmbedding(features, (h, w), (int(h * scale + 0.5), int(w * scale + 0.5)), model.name))
    out = predictor.predict(points=[[w / 2, h / 2]], labels=[1])
    if out.masks.shape != (3, h, w):
        raise RuntimeError(f"click masks {out.masks.shape}, expected (3, {h}, {w})")
    return f"{int(seg.max()) + 1} superpixels; mobile_sam click -> {out.masks.shape[0]} masks {h}x{w}"
