"""Take docs/screenshot.png: the real main window on the demo folder, pre-labelled, CRF panel visible.

    apt-get install -y xvfb
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/screenshot.py [--out docs/screenshot.png]
    ... benchmarks/screenshot.py --size 1280x800 --out docs/screenshot_1280x800.png
    ... benchmarks/screenshot.py --picker per --out docs/class_picker.png   (the "/" class picker, filtered)

The brush is the active tool and the pointer rests on the image, so its outline shows.

The demo folder is copied to a temporary folder first (the app writes its annotation store beside the
images), and settings, logs and the weights cache point there too, so the run leaves the repository and
the user's configuration untouched. The model is a randomly initialised deeplabv3plus_mobilenet_v2 (no
weights are downloadable here): the point is the interface, not the labels' quality.
"""
from __future__ import annotations

import argparse
import os
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
