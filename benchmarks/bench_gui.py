"""Benchmark the desktop app's interactive paths, offscreen, on the real widgets.

    .venv/bin/python benchmarks/bench_gui.py            # prints a table, writes benchmarks/results/gui.json
    .venv/bin/python benchmarks/bench_gui.py --quick    # fewer repeats

Goals: brush stroke segment on 4000×3000, p95 ≤ 8 ms (document + overlay update of the bbox);
switching to a 12-megapixel JPEG, excluding inference, ≤ 150 ms (read + mask + overlay + pixmap);
opening a folder of 10,000 images until the list is usable ≤ 1 s; CRF slider move to preview on screen
for 500×375, p95 ≤ 100 ms; a click with the click-model tool to its preview on screen, 500×375, the
image's embedding already made (MobileSAM, random weights: the cost does not depend on them), p95 ≤ 50 ms,
timed from a press that comes with no warning (the tool had no chance to guess it), LOOK_MS after the
last preview was painted (a person sees it before clicking again). Further click rows: the next click
on the same object, clicks back to back (each press the moment the last preview is painted), a click
held 100 ms (from the release), and a click after the pointer rested 150 ms on the spot (the tool
guesses it meanwhile). Times are wall clock on a shared
2-core machine: the load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from PySide6.QtCore import QEventLoop, QPointF, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from deeplab_gui.state.session import Session  # noqa: E402
from deeplab_gui.state.settings import Settings  # noqa: E402
from deeplab_gui.widgets.canvas.canvas import Canvas  # noqa: E402
from deeplab_gui.widgets.canvas.tools import BrushTool, ClickTool  # noqa: E402
from deeplab_gui.widgets.panels.crf_panel import PARAM_SPECS, CRFPanel  # noqa: E402
from deeplab_gui.widgets.panels.image_list import ImageListPanel  # noqa: E402
from engine import Status  # noqa: E402
from engine.allocator import keep_freed_memory  # noqa: E402
from engine.threads import own_threads  # noqa: E402
from engine.crf import DEEPLAB_V1  # noqa: E402
from engine.crf.synthetic import make_scene  # noqa: E402

from bench_click import machine_speed, wait_quiet  # noqa: E402  (this folder: the script's own)

RESULTS = Path(__file__).resolve().parent / "results" / "gui.json"


def pct(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def wait_until(app: QApplication, cond, timeout: float = 60.0, poll_ms: int = 1, wake=None) -> None:
    """Run a real event loop until ``cond()``, as the app's own loop runs: it sleeps in Qt's dispatcher
    (which releases the GIL) between events, checked every ``poll_ms``. A processEvents() polling loop
    instead keeps the UI thread busy and holding the GIL, which slows every worker thread and measured
    the CRF slider's engine part 20-40 ms slower than the app's idle loop gives it. ``wake``: installs
    a callback (``wake(check)``, ``wake(None)`` to remove it) that the app calls when ``cond`` may
    have become true, so the loop can sleep between checks: a 1 ms timer alone keeps the UI thread
    near a whole core busy, which a two-thread decoder on a 2-core machine feels."""
    app.processEvents()
    if cond():
        return
    loop = QEventLoop()
    end = time.perf_counter() + timeout
    timed_out = False

    def check() -> None:
        nonlocal timed_out
        if cond():
            loop.quit()
        elif time.perf_counter() > end:
            timed_out = True
            loop.quit()

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.timeout.connect(check)
    timer.start(poll_ms)
    if wake is not None:
        wake(check)
    try:
        loop.exec()
    finally:
        timer.stop()
        if wake is not None:
            wake(None)
    if timed_out:
        raise TimeoutError("benchmark step did not finish")


def pause(app: QApplication, ms: float, poll_ms: int = 10, since: float | None = None) -> None:
    """Let the app's event loop run for ``ms`` (from ``since``, a perf_counter time, or now): a person
    holding a button, resting the pointer or looking at the screen."""
    end = (time.perf_counter() if since is None else since) + ms / 1000
    wait_until(app, lambda: time.perf_counter() >= end, poll_ms=poll_ms)


def open_session(app, folder: Path, settings_path: Path) -> Session:
    s = Session(Settings(settings_path))
    s.open_folder(folder)
    wait_until(app, lambda: s.image is not None)
    return s


def open_canvas(app, tmp: Path, name: str, image: np.ndarray, filename: str, size: tuple[int, int] = (1000, 750),
                **save) -> tuple[Session, Canvas]:
    """A folder ``tmp/name`` holding ``image`` as ``filename`` (``save``: PIL's options), its session
    open on it and a canvas of ``size`` showing it as the window would."""
    folder = tmp / name
    folder.mkdir()
    Image.fromarray(image).save(folder / filename, **save)
    s = open_session(app, folder, tmp / f"{name}.ini")
    canvas = Canvas(s)
    canvas.resize(*size)
    canvas.show()
    canvas._on_current(s.image_id)  # created after the image loaded: show it as the window would
    return s, canvas


def use_click_tool(canvas: Canvas, predictor) -> ClickTool:
    """The click tool on ``canvas`` with ``predictor`` ready (no status to wait on), edge polish off."""
    canvas.target.click_predictor = lambda: predictor
    canvas.target.click_status = lambda: None
    tool = ClickTool()
    tool.edge_polish = False
    canvas.set_tool(tool)
    return tool


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour field with noise: JPEG-compresses and decodes like a photograph of that size."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(height // 100 + 2, width // 100 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- 1. brush segment
def bench_brush(app, tmp: Path, segments: int) -> dict:
    s, canvas = open_canvas(app, tmp, "brush", photo_like(3000, 4000, 1), "big.jpg", (1280, 800), quality=90)
    tool = BrushTool()
    canvas.set_tool(tool)
    s.current_label = 15
    out = {}
    for radius in (15, 60):
        tool.size = radius
        times, painted = [], []
        rng = np.random.default_rng(radius)
        for stroke in range(max(1, segments // 50)):
            # Strokes of 50 mouse events, 12 px apart (a brisk 60 Hz drag on a zoomed-out view), in a
            # random direction from a random start: one undo step each.
            x, y = float(rng.uniform(200, 3800)), float(rng.uniform(200, 2800))
            angle = rng.uniform(0, 2 * np.pi)
            dx, dy = 12.0 * np.cos(angle), 12.0 * np.sin(angle)
            tool.press(QPointF(x, y), Qt.KeyboardModifier.NoModifier)
            for i in range(50):
                x, y = min(max(x + dx, 0.0), 3999.0), min(max(y + dy, 0.0), 2999.0)
                t0 = time.perf_counter()
                tool.move(QPointF(x, y), True)  # document stroke_to -> listener -> overlay copy of the bbox
                t1 = time.perf_counter()
                app.processEvents()  # the repaint of the damaged rectangle
                t2 = time.perf_counter()
                times.append((t1 - t0) * 1000)
                painted.append((t2 - t0) * 1000)
            tool.release(QPointF(x, y))
        out[f"radius_{radius}"] = {"segment_p50_ms": pct(times, 50), "segment_p95_ms": pct(times, 95),
                                   "with_repaint_p50_ms": pct(painted, 50), "with_repaint_p95_ms": pct(painted, 95),
                                   "segments": len(times), "undo_steps": s.document.undo_depth, "undo_bytes": s.document.history_bytes}
    canvas.close()
    s.shutdown()
    return out


# ---------------------------------------------------------------------------- 2. image switch
def bench_switch(app, tmp: Path, repeats: int) -> dict:
    folder = tmp / "switch"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(photo_like(3000, 4000, 10 + i)).save(folder / f"photo{i}.jpg", quality=90)
    s = open_session(app, folder, tmp / "switch.ini")
    # Both images carry a stored mask (as after pre-labelling): the switch decodes it too.
    for n, image_id in enumerate(s.ids):
        mask = np.zeros((3000, 4000), np.uint8)
        mask[500 + 100 * n:2500, 800:3200] = 15
        s.store.save_mask(image_id, mask, status=Status.PRELABELED)
    canvas = Canvas(s)
    canvas.resize(1280, 800)
    canvas.show()
    shown: list[float] = []
    full: list[float] = []
    s.current_changed.connect(lambda _id: shown.append(time.perf_counter()))  # after the canvas's slot
    s.image_ready.connect(lambda _id: full.append(time.perf_counter()))
    times, full_times = [], []
    for r in range(repeats + 1):
        target = s.ids[1] if s.image_id == s.ids[0] else s.ids[0]
        shown.clear()
        full.clear()
        t0 = time.perf_counter()
        s.select(target)
        # First picture on screen: the reduced JPEG decode, the full-resolution mask and overlay.
        wait_until(app, lambda: bool(shown))
        app.processEvents()  # first paint of the new picture and overlay
        t1 = time.perf_counter()
        # Then the full-resolution pixmap replaces the preview (prefetched neighbours skip the wait).
        wait_until(app, lambda: bool(full) and s.image is not None)
        app.processEvents()
        t2 = time.perf_counter()
        if r:  # the first switch warms caches (imports, allocator)
            times.append((t1 - t0) * 1000)
            full_times.append((t2 - t0) * 1000)
        # A person looks at the picture before moving on: let the neighbour prefetch finish, as it
        # would then, so every switch starts from the same state (no decode of the other image in
        # memory: the prefetch keeps only neighbours, and each image is the other's neighbour).
        s.prefetch.ready.clear()
        wait_until(app, lambda: not s.prefetch.running)
        s.prefetch.ready.clear()
    # Where the time goes: the same steps one by one on this thread (median of 3).
    from PySide6.QtGui import QImage, QPixmap

    from deeplab_gui.state.session import PREVIEW_SIDE
    from engine import read_image, read_image_preview
    parts: dict[str, list[float]] = {"read_jpeg_ms": [], "read_jpeg_preview_ms": [], "load_mask_png_ms": [],
                                     "pixmap_from_image_ms": []}
    for _ in range(3):
        t0 = time.perf_counter()
        img = read_image(s.store.image_path(s.ids[0]))
        tp = time.perf_counter()
        read_image_preview(s.store.image_path(s.ids[0]), PREVIEW_SIDE)
        t1 = time.perf_counter()
        s.store.load_mask(s.ids[0])
        t2 = time.perf_counter()
        QPixmap.fromImage(QImage(img.data, img.shape[1], img.shape[0], 3 * img.shape[1],
                                 QImage.Format.Format_RGB888))
        t3 = time.perf_counter()
        for k, v in zip(parts, (tp - t0, t1 - tp, t2 - t1, t3 - t2)):
            parts[k].append(v * 1000)
    canvas.close()
    s.shutdown()
    return {"p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "max_ms": max(times), "repeats": len(times),
            "full_res_p50_ms": pct(full_times, 50), "full_res_p95_ms": pct(full_times, 95),
            "image": "4000x3000 JPEG q90 with a stored mask, no cached probabilities, not prefetched",
            "first_image": f"reduced JPEG decode (longer side >= {PREVIEW_SIDE}) + full-resolution mask",
            "breakdown_median": {k: statistics.median(v) for k, v in parts.items()}}


# ---------------------------------------------------------------------------- 3. open 10,000
def bench_open(app, tmp: Path, count: int) -> dict:
    folder = tmp / "many"
    folder.mkdir()
    first = folder / "img00000.jpg"
    Image.fromarray(photo_like(375, 500, 3)).save(first, quality=85)
    for i in range(1, count):
        os.link(first, folder / f"img{i:05d}.jpg")  # the scan reads names and stat only
    out = {}
    for label in ("first_open", "reopen"):
        s = Session(Settings(tmp / f"open_{label}.ini"))
        panel = ImageListPanel(s)
        panel.resize(300, 800)
        panel.show()
        t0 = time.perf_counter()
        s.open_folder(folder)
        wait_until(app, lambda: panel.model.rowCount() == count)
        app.processEvents()  # the list paints its first screen of rows
        t1 = time.perf_counter()
        wait_until(app, lambda: s.image is not None)
        t2 = time.perf_counter()
        out[label] = {"list_usable_ms": (t1 - t0) * 1000, "first_image_shown_ms": (t2 - t0) * 1000}
        panel.close()
        s.shutdown()
    from engine import AnnotationStore
    t0 = time.perf_counter()
    AnnotationStore.open(folder).close()
    out["store_open_and_scan_ms"] = (time.perf_counter() - t0) * 1000
    out["images"] = count
    return out


# ---------------------------------------------------------------------------- 4. CRF slider
def bench_crf(app, tmp: Path, moves: int) -> dict:
    scene = make_scene(375, 500, 21, active_classes=5, seed=5)
    s, canvas = open_canvas(app, tmp, "crf", scene.image, "scene.png")
    panel = CRFPanel(s)
    panel.show()
    panel.set_params(DEEPLAB_V1, submit=False)
    s.set_probs(s.image_id, scene.probs)
    wait_until(app, lambda: panel.last_result is not None and panel.last_result.stage == "full")
    specs = {p.field: p for p in PARAM_SPECS}
    rng = np.random.default_rng(0)
    fields = ["bilateral_xy", "bilateral_weight", "bilateral_rgb", "gaussian_weight", "gaussian_xy", "iterations"]
    preview, full, engine_preview, delivered, steps = [], [], [], [], []
    stages: dict[str, float] = {}
    panel.crf_updated.connect(lambda stage: stages.setdefault(stage, time.perf_counter()))
    for i in range(moves):
        field = fields[i % len(fields)]
        control = panel.controls[field]
        spec = specs[field]
        lo, hi = (spec.to_slider(5) if field == "iterations" else 50), (spec.to_slider(15) if field == "iterations" else 950)
        pos = int(rng.integers(lo, hi))
        if pos == control.slider.value():
            pos += 7
        stages.clear()
        t0 = time.perf_counter()
        control.slider.setValue(pos)  # exactly what a drag step does
        want = panel.params()
        wait_until(app, lambda: panel.last_result is not None and panel.last_result.params == want
                   and "preview" in stages)
        app.processEvents()  # the canvas repaints the overlay from crf_labels
        preview.append((time.perf_counter() - t0) * 1000)
        shown = panel.last_result
        engine_preview.append(shown.elapsed * 1000)  # submit -> LiveResult, worker thread
        delivered.append((stages["preview"] - t0) * 1000)  # the panel has set session.crf_labels
        steps.append({"field": field, "value": round(getattr(want, field), 2), "on_screen_ms": round(preview[-1], 1),
                      "engine_ms": round(engine_preview[-1], 1), "stage": shown.stage,
                      "scale": round(shown.scale, 3), "iterations": shown.iterations})
        wait_until(app, lambda: "full" in stages)
        full.append((stages["full"] - t0) * 1000)
    panel.shutdown()
    canvas.close()
    s.shutdown()
    return {"preview_on_screen_p50_ms": pct(preview, 50), "preview_on_screen_p95_ms": pct(preview, 95),
            "delivered_p50_ms": pct(delivered, 50), "delivered_p95_ms": pct(delivered, 95),
            "engine_preview_p50_ms": pct(engine_preview, 50), "engine_preview_p95_ms": pct(engine_preview, 95),
            "full_p50_ms": pct(full, 50), "full_p95_ms": pct(full, 95), "moves": moves, "steps": steps,
            "scene": "500x375, 21 classes, 5 carrying probability, DeepLab v1 preset start"}


# ---------------------------------------------------------------------------- 5. click preview
HOLD_MS = 100.0   # how long a mouse button is typically held for a click
REST_BEFORE_MS = 150.0   # how long the pointer rests on the spot before a deliberate click (the guess row)
MOVE_ON_MS = 300.0       # from one object's click to the pointer reaching the next (the guess row)
def bench_click(app, tmp: Path, clicks: int) -> dict:
    """Mouse press (and release) on the canvas with the click tool -> the preview painted, on a
    cached embedding: per object a first click (three candidates) and a negative click (one mask,
    the first's logits as mask prompt), Escape between objects."""
    from PySide6.QtCore import QEvent, QPoint
    from PySide6.QtGui import QMouseEvent

    from deeplab_gui.state.click_models import CLICK_LANE
    from engine.click import ClickPredictor, build_click_model

    s, canvas = open_canvas(app, tmp, "click", photo_like(375, 500, 3), "photo.png")
    # Built in the worker's pool as the app loads it; encoded and decoded on the click lane.
    got: list = []
    built = s.run_task(lambda: ClickPredictor(build_click_model("mobile_sam")), task_name="build",
                       on_result=got.append)
    wait_until(app, lambda: built.done)
    predictor = got[0]
    t0 = time.perf_counter()
    # The embedding is made before the clicks, on the click lane as the app makes it (the decoder
    # then runs on the thread that ran the encoder).
    made = s.run_task(predictor.set_image, s.image, lane=CLICK_LANE, task_name="embedding")
    wait_until(app, lambda: made.done)
    encode_ms = (time.perf_counter() - t0) * 1000
    decode, predict = [], predictor.predict

    def timed_predict(*a, **kw):                    # the decoder's share, on the worker thread
        t = time.perf_counter()
        out = predict(*a, **kw)
        decode.append((time.perf_counter() - t) * 1000)
        return out
    predictor.predict = timed_predict
    tool = use_click_tool(canvas, predictor)
    item, rng = canvas.regions.region, np.random.default_rng(3)

    def click(button: Qt.MouseButton, hold_ms: float = 0.0, rest_ms: float = 0.0, rest_off: float = 0.0,
              look_ms: float = 0.0) -> float:
        """Press and release at a random point; ms from the press (``hold_ms`` > 0: from the release,
        the button held that long; 0 when the preview was there before it) until the preview is
        painted. ``rest_ms`` > 0: the pointer rests that long first (the tool guesses a click
        there), on the spot or, with ``rest_off``, that many image pixels to its left. ``look_ms``:
        the person looks at what is on screen that long before pressing (no pointer motion)."""
        if look_ms:
            pause(app, look_ms)
        x, y = float(rng.uniform(60, 440)), float(rng.uniform(60, 315))
        p = canvas.mapFromScene(QPointF(x, y))
        send = lambda kind, held, b=button, at=p: app.sendEvent(canvas.viewport(), QMouseEvent(  # noqa: E731
            kind, QPointF(at), QPointF(canvas.viewport().mapToGlobal(QPoint(at))), b, held,
            Qt.KeyboardModifier.NoModifier))
        if rest_ms:
            send(QEvent.Type.MouseMove, Qt.MouseButton.NoButton, Qt.MouseButton.NoButton,
                 canvas.mapFromScene(QPointF(x - rest_off, y)))
            pause(app, rest_ms, poll_ms=5)
        painted, rounds = item.paints, tool._round
        shown = lambda: item.paints > painted or (tool._round > rounds and not item.isVisible())  # noqa: E731
        t0 = time.perf_counter()
        send(QEvent.Type.MouseButtonPress, button)
        if hold_ms:
            pause(app, hold_ms, poll_ms=max(1, int(hold_ms)), since=t0)
            t0 = time.perf_counter()
            if shown():
                send(QEvent.Type.MouseButtonRelease, Qt.MouseButton.NoButton)
                return 0.0
        send(QEvent.Type.MouseButtonRelease, Qt.MouseButton.NoButton)
        # Painted (the preview's paint wakes the loop), or (an empty candidate) the preview taken away.
        wait_until(app, shown, poll_ms=20, wake=lambda check: setattr(item, "on_paint", check))
        return (time.perf_counter() - t0) * 1000

    # Each object: a first click (three candidates), then a negative one, which re-predicts one mask
    # with the shown candidate's logits as the mask prompt; Escape before the next object.
    # A person sees the last preview before the next press (LOOK_MS): the work a preview starts
    # behind it in the click lane (the rest of its logits, see ClickTool._settle) is then done, as in
    # use. The back-to-back row below presses at once instead.
    times, followups, first_decode, followup_decode = [], [], [], []
    # (--quiet: the goal's clicks wait for the shared machine's quiet phase, see bench_click.wait_quiet)
    speed = [wait_quiet(QUIET[0], QUIET[1], gbs=QUIET[2])] if QUIET[0] else []
    for i in range(clicks + 2):                     # the first two warm the decoder up
        times.append(click(Qt.MouseButton.LeftButton, look_ms=LOOK_MS))
        first_decode.append(decode[-1])
        followups.append(click(Qt.MouseButton.RightButton, look_ms=LOOK_MS))
        followup_decode.append(decode[-1])
        tool.key(Qt.Key.Key_Escape)
        app.processEvents()
    times, followups, first_decode, followup_decode = (v[2:] for v in (times, followups, first_decode,
                                                                      followup_decode))
    if speed:
        speed.append(machine_speed(10))
    # Back to back: each press the moment the last preview is painted (faster than a person can see
    # it): a click may wait for the previous one's remaining work in the lane.
    rushed = []
    for i in range(clicks):
        rushed.append(click(Qt.MouseButton.LeftButton))
        rushed.append(click(Qt.MouseButton.RightButton))
        tool.key(Qt.Key.Key_Escape)
        app.processEvents()
    # What a person waits after letting go: the button held as long as a click usually is.
    held = []
    for i in range(clicks):
        held.append(click(Qt.MouseButton.LeftButton, HOLD_MS))
        tool.key(Qt.Key.Key_Escape)
        app.processEvents()
    # A deliberate click: the pointer rests on the spot first, and the tool guesses the click there.
    # Between objects a person takes a moment to move on (MOVE_ON_MS; the tool spaces its guesses).
    rested, guessed_runs = [], len(decode)
    for i in range(clicks):
        pause(app, MOVE_ON_MS)
        rested.append(click(Qt.MouseButton.LeftButton, rest_ms=REST_BEFORE_MS))
        tool.key(Qt.Key.Key_Escape)
        app.processEvents()
    guessed_runs = len(decode) - guessed_runs
    # The price of guessing: the pointer rests 60 ms (a guess starts at 40 ms and is still running),
    # then the press comes 20 px away, so the real click waits for the wasted guess.
    missed = []
    for i in range(clicks):
        missed.append(click(Qt.MouseButton.LeftButton, rest_ms=60.0, rest_off=20.0))
        tool.key(Qt.Key.Key_Escape)
        app.processEvents()
    # As the app is once the folder is pre-labelled: the model's probabilities at hand, so each
    # preview carries the class they favour (auto class) and its border is then polished by the CRF
    # in the background (edge polish, on by default), while the person looks at it.
    s.probs = np.random.default_rng(5).dirichlet(np.full(21, 0.3), size=s.image.shape[:2]).transpose(2, 0, 1) \
        .astype(np.float32)
    tool.edge_polish = True
    with_probs, with_probs_followups = [], []
    for i in range(clicks + 1):                     # the first warms the polish up
        with_probs.append(click(Qt.MouseButton.LeftButton, look_ms=LOOK_MS))
        with_probs_followups.append(click(Qt.MouseButton.RightButton, look_ms=LOOK_MS))
        pause(app, LOOK_MS)
        tool.key(Qt.Key.Key_Escape)
        app.processEvents()
    with_probs, with_probs_followups = with_probs[1:], with_probs_followups[1:]
    canvas.close()
    s.shutdown()
    return {"preview_on_screen_p50_ms": pct(times, 50), "preview_on_screen_p95_ms": pct(times, 95),
            "with_probs_preview_p50_ms": pct(with_probs, 50), "with_probs_preview_p95_ms": pct(with_probs, 95),
            "with_probs_followup_p50_ms": pct(with_probs_followups, 50),
            "with_probs_followup_p95_ms": pct(with_probs_followups, 95),
            "decode_p50_ms": pct(first_decode, 50), "decode_p95_ms": pct(first_decode, 95),
            "followup_preview_on_screen_p50_ms": pct(followups, 50),
            "followup_preview_on_screen_p95_ms": pct(followups, 95),
            "followup_decode_p50_ms": pct(followup_decode, 50), "followup_decode_p95_ms": pct(followup_decode, 95),
            "held_ms": HOLD_MS, "after_release_p50_ms": pct(held, 50), "after_release_p95_ms": pct(held, 95),
            "rest_before_ms": REST_BEFORE_MS, "move_on_ms": MOVE_ON_MS, "rested_p50_ms": pct(rested, 50), "rested_p95_ms": pct(rested, 95),
            "rested_decoder_runs": guessed_runs,
            "after_missed_guess_p50_ms": pct(missed, 50), "after_missed_guess_p95_ms": pct(missed, 95),
            "look_ms": LOOK_MS, "back_to_back_p50_ms": pct(rushed, 50), "back_to_back_p95_ms": pct(rushed, 95),
            "clicks": clicks, "encode_ms": encode_ms, "model": "mobile_sam (random weights)",
            "image": "500x375", "threads": torch.get_num_threads(),
            "machine_speed_before_after": speed or None}


def bench_click_large(app, tmp: Path, clicks: int) -> dict:
    """The click tool on a 4000×3000 photo, its embedding made: press -> the preview painted (the
    candidates made at about a megapixel and weighed for their class against probabilities on the
    store's 4-megapixel grid), then, after the preview has been looked at for LOOK_MS, Enter -> the
    full-size region written (the UI thread's part: the region itself is made meanwhile in a worker)."""
    from PySide6.QtCore import QEvent, QPoint
    from PySide6.QtGui import QMouseEvent

    from deeplab_gui.state.click_models import CLICK_LANE
    from engine.click import ClickPredictor, build_click_model
    from engine.probgrid import probs_grid

    s, canvas = open_canvas(app, tmp, "click_large", photo_like(3000, 4000, 5), "photo.jpg", quality=92)
    wait_until(app, lambda: s.image is not None and s.image.shape[:2] == (3000, 4000), timeout=120)
    grid = probs_grid(3000, 4000)
    probs = np.random.default_rng(0).dirichlet(np.ones(21), size=grid).transpose(2, 0, 1).astype(np.float32)
    s.probs = probs
    got: list = []
    built = s.run_task(lambda: ClickPredictor(build_click_model("mobile_sam")), task_name="build",
                       on_result=got.append)
    wait_until(app, lambda: built.done)
    predictor = got[0]
    made = s.run_task(predictor.set_image, s.image, lane=CLICK_LANE, task_name="embedding")
    wait_until(app, lambda: made.done, timeout=120)
    tool = use_click_tool(canvas, predictor)
    item, rng = canvas.regions.region, np.random.default_rng(4)
    previews, accepts = [], []
    for i in range(clicks + 1):                     # the first warms up
        # A person moves on to the next object after Enter (the undo's repaint of the photo is done
        # by then, as the 500x375 rows look at the screen before each press).
        pause(app, LOOK_MS)
        x, y = float(rng.uniform(400, 3600)), float(rng.uniform(300, 2700))
        p = canvas.mapFromScene(QPointF(x, y))
        send = lambda kind, held, b=Qt.MouseButton.LeftButton: app.sendEvent(canvas.viewport(), QMouseEvent(  # noqa: E731
            kind, QPointF(p), QPointF(canvas.viewport().mapToGlobal(QPoint(p))), b, held,
            Qt.KeyboardModifier.NoModifier))
        painted, rounds = item.paints, tool._round
        shown = lambda: item.paints > painted or (tool._round > rounds and not item.isVisible())  # noqa: E731
        t0 = time.perf_counter()
        send(QEvent.Type.MouseButtonPress, Qt.MouseButton.LeftButton)
        send(QEvent.Type.MouseButtonRelease, Qt.MouseButton.NoButton)
        wait_until(app, shown, poll_ms=20, wake=lambda check: setattr(item, "on_paint", check))
        previews.append((time.perf_counter() - t0) * 1000)
        pause(app, LOOK_MS)
        version = s.document.version
        t0 = time.perf_counter()
        tool.key(Qt.Key.Key_Return)
        accepts.append((time.perf_counter() - t0) * 1000)
        if s.document.version == version:
            accepts.pop()                           # an empty candidate: nothing written
        s.document.undo()
        app.processEvents()
    previews = previews[1:]
    accepts = accepts[1:] if len(accepts) > clicks else accepts
    canvas.close()
    s.shutdown()
    return {"preview_on_screen_p50_ms": pct(previews, 50), "preview_on_screen_p95_ms": pct(previews, 95),
            "enter_p50_ms": pct(accepts, 50), "enter_p95_ms": pct(accepts, 95), "look_ms": LOOK_MS,
            "clicks": clicks, "accepted": len(accepts), "image": "4000x3000", "probs_grid": list(grid),
            "model": "mobile_sam (random weights)", "threads": torch.get_num_threads()}


LOOK_MS = 300.0   # how long a person looks at a proposed region before pressing Enter
QUIET = (0.0, 0.0, 0.0)   # --quiet, --quiet-wait, --quiet-gbs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quiet", type=float, default=0.0, metavar="GFLOPS",
                    help="click: its goal's clicks first wait for the shared machine's quiet phase, a 1024² "
                         "product at this many GFLOP/s or more (as bench_click --quiet; default 0: do not wait)")
    ap.add_argument("--quiet-wait", type=float, default=600.0, metavar="S", help="at most this long (default 600)")
    ap.add_argument("--quiet-gbs", type=float, default=0.0, metavar="GBS",
                    help="with --quiet: the memory at this many GB/s or more too (as bench_click --quiet-gbs)")
    ap.add_argument("--only", default="", help="comma-separated subset of brush,switch,open_folder,"
                    "crf_slider,click,click_large; the other rows are kept from the existing --out file")
    args = ap.parse_args()
    global QUIET
    QUIET = (args.quiet, args.quiet_wait, args.quiet_gbs)
    benches = {"brush": lambda app, tmp: bench_brush(app, tmp, 200 if args.quick else 600),
               "switch": lambda app, tmp: bench_switch(app, tmp, 4 if args.quick else 10),
               "open_folder": lambda app, tmp: bench_open(app, tmp, 10_000),
               "crf_slider": lambda app, tmp: bench_crf(app, tmp, 12 if args.quick else 40),
               "click": lambda app, tmp: bench_click(app, tmp, 10 if args.quick else 40),
               "click_large": lambda app, tmp: bench_click_large(app, tmp, 5 if args.quick else 15)}
    only = [k for k in args.only.split(",") if k] or list(benches)
    if not set(only) <= set(benches):
        ap.error(f"--only takes {', '.join(benches)}")
    # The rows not run are kept from the existing file (none when there is no file yet).
    keep = set(only) != set(benches) and args.out.is_file()
    results = json.loads(args.out.read_text()) if keep else {}
    results.pop("goals", None)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    kept = keep_freed_memory()   # as deeplab_gui.app.main does (engine.allocator)
    own_threads(1)               # ... and one torch thread for the UI thread (engine.threads)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_gui_") as d:
        tmp = Path(d)
        os.environ["DEEPLAB_GUI_LOG_DIR"] = str(tmp / "log")
        for name in only:
            results[name] = benches[name](app, tmp)
    results["machine"] = {"rerun": only, "allocator_keeps_freed_memory": kept,
                          "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "qt_platform": os.environ.get("QT_QPA_PLATFORM"), "load_start": load0,
                          "load_end": os.getloadavg()[0], "quick": args.quick}
    rows = []   # (only the benchmarks run now or kept from the file)
    if "brush" in results:
        b = results["brush"]["radius_15"]
        rows += [("brush segment 4000x3000 (r=15) p95", b["segment_p95_ms"], 8, "ms"),
                 ("  same, radius 60, p95", results["brush"]["radius_60"]["segment_p95_ms"], 8, "ms"),
                 ("  same incl. repaint (r=15) p95", b["with_repaint_p95_ms"], None, "ms")]
    if "switch" in results:
        sw = results["switch"]
        rows += [("switch to 12 MP JPEG p95 (first image on screen)", sw["p95_ms"], 150, "ms"),
                 ("  same, until full resolution on screen p95", sw["full_res_p95_ms"], None, "ms"),
                 *[(f"  {k} (median)", v, None, "ms") for k, v in sw["breakdown_median"].items()]]
    if "open_folder" in results:
        op = results["open_folder"]
        rows += [("open 10,000 images: list usable (first open)", op["first_open"]["list_usable_ms"], 1000, "ms"),
                 ("open 10,000 images: list usable (reopen)", op["reopen"]["list_usable_ms"], 1000, "ms"),
                 ("  store open + scan alone (reopen)", op["store_open_and_scan_ms"], None, "ms")]
    if "crf_slider" in results:
        crf = results["crf_slider"]
        rows += [("CRF slider -> preview on screen p95", crf["preview_on_screen_p95_ms"], 100, "ms"),
                 ("  engine part (LiveCRF submit -> preview) p95", crf["engine_preview_p95_ms"], None, "ms"),
                 ("  slider -> labels in the session p95", crf["delivered_p95_ms"], None, "ms"),
                 ("CRF slider -> full-size result p95", crf["full_p95_ms"], None, "ms")]
    if "click" in results:
        rows += [("click -> preview on screen, p95, cached embedding, CPU",
                  results["click"]["preview_on_screen_p95_ms"], 50, "ms"),
                 ("  decoder part (ClickPredictor.predict) p95", results["click"]["decode_p95_ms"], None, "ms")]
        if "followup_preview_on_screen_p95_ms" in results["click"]:
            rows += [("next click on the object (mask prompt) -> preview p95",
                      results["click"]["followup_preview_on_screen_p95_ms"], None, "ms"),
                     ("  decoder part p95", results["click"]["followup_decode_p95_ms"], None, "ms")]
        if "after_release_p95_ms" in results["click"]:
            rows += [(f"click held {results['click']['held_ms']:.0f} ms: release -> preview p95",
                      results["click"]["after_release_p95_ms"], None, "ms")]
        if "rested_p95_ms" in results["click"]:
            rows += [(f"pointer rested {results['click']['rest_before_ms']:.0f} ms, then click: press -> preview p95",
                      results["click"]["rested_p95_ms"], None, "ms")]
        if "back_to_back_p95_ms" in results["click"]:
            rows += [("clicks back to back (no look at the preview) -> preview p95",
                      results["click"]["back_to_back_p95_ms"], None, "ms")]
        if "after_missed_guess_p95_ms" in results["click"]:
            rows += [("click 20 px from a guess still running -> preview p95",
                      results["click"]["after_missed_guess_p95_ms"], None, "ms")]
        if "with_probs_preview_p95_ms" in results["click"]:
            rows += [("with probabilities (auto class, edge polish) -> preview p95",
                      results["click"]["with_probs_preview_p95_ms"], None, "ms"),
                     ("  next click on the object p95", results["click"]["with_probs_followup_p95_ms"], None, "ms")]
    if "click_large" in results:
        rows += [("click on a 4000x3000 photo -> preview on screen p95", results["click_large"]["preview_on_screen_p95_ms"],
                  None, "ms"),
                 ("  Enter -> full-size region written (UI thread) p95", results["click_large"]["enter_p95_ms"], None,
                  "ms")]
    results["goals"] = {name.strip(): {"value": v, "goal": g, "met": (v <= g) if g else None}
                        for name, v, g, _ in rows}
    print(f"{'measure':48s} {'value':>9s}  goal")
    for name, v, g, unit in rows:
        goal = f"<= {g} {unit} ({'met' if v <= g else 'NOT met'})" if g else ""
        print(f"{name:48s} {v:8.1f} {unit}  {goal}")
    print(f"load average {load0:.1f} -> {results['machine']['load_end']:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
