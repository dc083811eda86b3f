"""Take docs/screenshot.png: the real main window on the demo folder, pre-labelled, CRF panel visible.

    apt-get install -y xvfb
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/screenshot.py [--out docs/screenshot.png]
    ... benchmarks/screenshot.py --size 1280x800 --out docs/screenshot_1280x800.png
    ... benchmarks/screenshot.py --size 1920x1080 --out docs/screenshot_1920x1080.png
    ... benchmarks/screenshot.py --picker per --out docs/class_picker.png   (the "/" class picker, filtered)
    ... benchmarks/screenshot.py --progress --out docs/progress.png   (View > Progress..., see below)
    ... benchmarks/screenshot.py --click 0.3,0.45 --label cat --out docs/click_preview.png
        (a click with the click-model tool at that fraction of the image: its proposed region and class;
        see STAND-IN below)  --crf-click FX,FY does the same with the weight-free CRF click.

STAND-IN: no click-model weights can be downloaded on the machines this project is built on, and a
randomly initialised SAM proposes noise, so ``--click`` feeds the click tool a stand-in predictor whose
candidates are the image's superpixels under the click (scikit-image's Felzenszwalb at three sizes).
Everything after the predictor (the tool, the worker, the preview, its class label) is the app's own.

The brush is the active tool and the pointer rests on the image, so its outline shows.

The demo folder is copied to a temporary folder first (the app writes its annotation store beside the
images), and settings, logs and the weights cache point there too, so the run leaves the repository and
the user's configuration untouched. The model is a randomly initialised deeplabv3plus_mobilenet_v2 (no
weights are downloadable here): the point is the interface, not the labels' quality.

``--progress`` grabs the progress window instead. Its figures are ILLUSTRATIVE, NOT A MEASUREMENT: the
temporary folder gets a few more copies of the demo images, and :func:`seed_progress` writes made-up
effort records for them through the store's own API (a fixed seed, so every run draws the same
picture): a first batch done with the starting model, then a fine-tuned version recorded as current
(the untrained checkpoint under a version's name), then a second batch done under it in less time
and with fewer actions. Nobody annotated anything to make that picture.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wait_until(app, cond, timeout: float = 180.0) -> None:
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            raise TimeoutError("the window did not reach the expected state")
        app.processEvents()
        time.sleep(0.01)  # a script, not a test: polling keeps it simple


# The progress screenshot's made-up data (see the module docstring).
COPIES = 5                      # each demo image 5 times: 20 points on the plot
VERSION = "finetune-v001.safetensors"
START = 1762160400.0            # a fixed wall-clock start: the records' times never depend on today
_TOOLS = ("brush", "brush", "brush", "eraser", "fill", "polygon", "snap", "undo")  # a brush-heavy mix


def seed_progress(demo: Path, ckpt: Path, seed: int = 7) -> None:
    """Fill ``demo`` (a throwaway copy) with illustrative effort records; see the module docstring."""
    from engine import AnnotationStore, Version, Versions

    images = sorted(p for p in demo.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for k in range(2, COPIES + 1):
        for src in images:
            shutil.copyfile(src, src.with_name(f"{src.stem}_{k}{src.suffix}"))
    ids = sorted(p.name for p in demo.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    rng = random.Random(seed)
    rng.shuffle(ids)
    before, after = ids[: len(ids) // 2], ids[len(ids) // 2:]
    now = START

    def record(image_id: str, seconds: float, actions: int, version: str | None, accepted: bool) -> None:
        nonlocal now
        now += seconds + rng.uniform(5, 20)
        counts: dict[str, int] = {}
        for _ in range(actions):
            tool = rng.choice(_TOOLS)
            counts[tool] = counts.get(tool, 0) + 1
        store.add_effort(image_id, seconds=round(seconds, 1), actions=counts, accepted=accepted,
                         version=version, now=now)

    with AnnotationStore.open(demo) as store:
        for i, image_id in enumerate(before):  # starting model: slow, a person learning the tools too
            # Now and then an image is edited and left unaccepted: done when last edited.
            record(image_id, max(40.0, rng.gauss(170 - 3 * i, 35)), max(6, round(rng.gauss(24, 6))), None,
                   accepted=i % 7 != 5)
        store.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt, store.checkpoints_dir / VERSION)
        now += 600  # the fine-tune run
        Versions.of(store).add(Version(name=VERSION, created=now, images=sorted(before), steps=300,
                                       note="illustrative version for the progress screenshot"),
                               make_current=True)
        for i, image_id in enumerate(after):  # the fine-tuned model pre-labels better: fewer corrections
            record(image_id, max(15.0, rng.gauss(75, 20)), max(1, round(rng.gauss(9, 3))), VERSION,
                   accepted=i % 7 != 5)


def grab_progress(app, window, out: Path) -> bool:
    """Open View > Progress... as a person would, wait for its records and save the dialog to ``out``."""
    from deeplab_gui.widgets.dialogs.progress import ProgressDialog

    window.progress_action.trigger()
    dialog = window.findChild(ProgressDialog)
    wait_until(app, lambda: dialog.report is not None)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    ok = dialog.grab().save(str(out))
    print(f"progress: {dialog.summary.text()}")
    dialog.close()
    return ok


class SuperpixelStandIn:
    """The STAND-IN predictor (see the module docstring): ClickPredictor.predict's signature, candidates
    = the superpixels under the positive clicks minus those under negative ones, at three sizes."""

    def __init__(self, image, sizes=(32, 16, 64)) -> None:
        from deeplab_gui.editing.superpixels import (
            SuperpixelParams,
            compute_superpixels,
        )
        self.segs = [compute_superpixels(image, SuperpixelParams(size=k)) for k in sizes]

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        from types import SimpleNamespace

        import numpy as np
        masks = []
        for seg in self.segs if multimask else self.segs[:1]:
            ids = {int(seg[int(y), int(x)]): lab for (x, y), lab in zip(points, labels)}
            masks.append(np.isin(seg, [i for i, lab in ids.items() if lab == 1]))
        k = len(masks)
        return SimpleNamespace(masks=np.stack(masks), scores=np.linspace(0.9, 0.5, k),
                               low_res_logits=np.zeros((k, 256, 256), np.float32))


def grab_region_tool(app, window, args) -> int:
    """A click with the click-model tool (``--click``, stand-in predictor) or the CRF-click tool
    (``--crf-click``) on the shown image, its preview with the proposed class on screen."""
    from PySide6.QtCore import QPointF, Qt

    s, canvas = window.session, window.canvas
    s.current_label = s.class_names.index(args.label)
    name = "click" if args.click else "crfclick"
    if args.click:
        stand_in = SuperpixelStandIn(s.image)
        canvas.target.click_predictor = lambda: stand_in
        canvas.target.click_status = lambda: None
    window.set_tool(name)
    canvas.fit()
    fx, fy = (float(v) for v in (args.click or args.crf_click).split(","))
    h, w = s.image.shape[:2]
    tool, at = canvas.tool, QPointF(fx * w, fy * h)
    tool.press(at, Qt.KeyboardModifier.NoModifier)
    tool.release(at)
    shown = (lambda: tool.current is not None) if args.click \
        else (lambda: tool.region is not None)
    wait_until(app, lambda: shown() and canvas.regions.region.isVisible())
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ok = window.grab().save(str(args.out))
    print(f"wrote {args.out}: {canvas.regions.label.text()} proposed" if ok else f"could not write {args.out}")
    window.close()
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--image", default="chelsea_cat.jpg", help="demo image to show")
    ap.add_argument("--size", default="1600x1000", help="window size WxH")
    # An untrained network labels everything one class unless its decoder sees low-level features;
    # this architecture and seed give a few classes that follow the picture, which shows the overlay.
    ap.add_argument("--arch", default="deeplabv3plus_mobilenet_v2")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--picker", metavar="TEXT", help="open the class picker with TEXT typed in its filter")
    ap.add_argument("--click", metavar="FX,FY",
                    help="click the click-model tool (stand-in predictor) at this fraction of the image")
    ap.add_argument("--crf-click", metavar="FX,FY",
                    help="click the CRF-click tool at this fraction of the image and grab its preview")
    ap.add_argument("--label", default="cat", help="the class the --crf-click proposes")
    ap.add_argument("--progress", action="store_true",
                    help="grab View > Progress... over illustrative (made-up) effort records instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="deeplab_gui_shot_"))
    os.environ["DEEPLAB_GUI_SETTINGS"] = str(tmp / "settings.ini")
    os.environ["DEEPLAB_GUI_LOG_DIR"] = str(tmp / "log")
    os.environ["DEEPLAB_GUI_CACHE"] = str(tmp / "cache")
    demo = tmp / "demo"
    shutil.copytree(ROOT / "resources" / "demo", demo, ignore=shutil.ignore_patterns("*.md"))

    import torch
    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QApplication

    import engine
    from deeplab_gui.widgets.main_window import MainWindow

    torch.manual_seed(args.seed)
    ckpt = tmp / f"untrained_{args.arch}.safetensors"
    engine.save_model(engine.build_model(args.arch, num_classes=21), ckpt)
    if args.progress:
        seed_progress(demo, ckpt)

    app = QApplication.instance() or QApplication([sys.argv[0]])
    window = MainWindow()
    w, h = (int(v) for v in args.size.split("x"))
    window.resize(w, h)
    window.show()
    s = window.session
    s.open_folder(demo)
    wait_until(app, lambda: s.image is not None)
    if args.image in s.ids and s.image_id != args.image:
        s.select(args.image)
        wait_until(app, lambda: s.image_id == args.image)
    if args.progress:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        ok = grab_progress(app, window, args.out)
        wait_until(app, lambda: not s.models.busy)  # the folder's current version loads meanwhile
        window.close()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"wrote {args.out}" if ok else f"could not write {args.out}", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if args.crf_click or args.click:
        return grab_region_tool(app, window, args)
    model_panel, crf_panel = window.panels["Model"], window.panels["CRF"]
    model_panel.load_weights(str(ckpt))
    wait_until(app, lambda: s.model is not None and model_panel.task is None)
    model_panel.prelabel_current()
    wait_until(app, lambda: model_panel.task is None and s.worker.active == 0 and s.probs is not None)
    # Show the live CRF result of the DeepLab v1 preset at full size, as after a slider move.
    wait_until(app, lambda: crf_panel.last_result is not None and crf_panel.last_result.stage == "full")
    s.set_view_mode("crf")
    window.canvas.fit()
    for _ in range(20):
        app.processEvents()
    # The brush outline follows the pointer: rest it on the image, a little right of centre.
    from PySide6.QtTest import QTest
    window.set_tool("brush")
    window.tool_options.size.setValue(24.0)  # big enough to see at the fitted zoom
    view = window.canvas.viewport()
    QTest.mouseMove(view, view.rect().center() + QPoint(view.width() // 6, view.height() // 8))
    shot = window.grab
    if args.picker:
        from deeplab_gui.widgets.dialogs.class_picker import open_class_picker
        picker = open_class_picker(s, window)
        QTest.keyClicks(picker.filter, args.picker)
        # The picker is a window of its own: grab the screen where the main window is.
        screen = app.primaryScreen()
        geo = window.frameGeometry()
        shot = lambda: screen.grabWindow(0, geo.x(), geo.y(), geo.width(), geo.height())  # noqa: E731
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not shot().save(str(args.out)):
        print(f"could not write {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({window.width()}x{window.height()}); statuses: "
          f"{ {i: s.store.status(i).value for i in s.ids} }")
    window.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
