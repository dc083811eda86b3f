"""The work an image takes: a simulated annotator corrects masks with the app's tools (NoC@85/90).

Each image is corrected towards its ground truth by :mod:`deeplab_gui.editing.simulate` (largest
error region first, each tool set's natural action, the app's own edit operations), from an empty
mask, a model's pre-label or masks made elsewhere. Per tool set it prints NoC@85 and NoC@90 (clicks
until the image's mIoU reaches 85 / 90 %; an image that never does counts the clicks it spent), the
clicks and estimated seconds per image (keystroke-level model, :mod:`deeplab_gui.editing.klm`), the
final mIoU and the images that never reached the highest target, and writes JSON.

    python benchmarks/bench_annotation.py --images DIR --masks DIR [--start empty|prelabel|DIR]
        [--weights CKPT] [--tools manual,snap,superpixel,crfclick,click] [--target 0.85,0.9]
        [--max-actions 40] [--json OUT] [--click-model mobile_sam] [--click-weights FILE]
    python benchmarks/bench_annotation.py --scenes 24      # generated scenes, from empty and noisy starts
    python benchmarks/bench_annotation.py --loop           # annotate, fine-tune, repeat (see annotation_loop.py)

``click`` needs a click model: ``--click-weights FILE`` (SAM 2.1, SAM or MobileSAM, detected), or
``--click-model NAME`` built with random weights, which measures the tool's cost in clicks and
seconds, not its quality (its rows say so).

``--masks DIR``: ground truth named like the images (``.png``), P- or L-mode class indices with 255
void, or RGB colour masks in the PASCAL VOC palette.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deeplab_gui.editing.simulate import TOOL_SETS, Annotator, SimConfig
from engine import VOID

__all__ = ["RANDOM_NOTE", "Item", "click_predictor", "load_items", "main", "print_table", "simulate", "summarise",
           "write_scenes"]

RESULTS = ROOT / "benchmarks" / "results"
RANDOM_NOTE = "random weights: measures cost, not quality"


def click_predictor(name: str = "mobile_sam", weights: str | None = None):
    """A click predictor for the ``click`` tool set: ``weights`` loaded (family detected), or the
    model ``name`` with random weights (seeded, so runs repeat). Returns (predictor, note)."""
    import torch

    from engine.click import ClickPredictor, build_click_model, load_click_model
    if weights:
        try:
            return ClickPredictor(load_click_model(weights)), f"weights {Path(weights).name}"
        except (OSError, ValueError) as exc:
            text = str(exc)
            raise SystemExit(f"bench_annotation: {text if weights in text else f'{weights}: {text}'}") from None
    try:
        torch.manual_seed(0)
        return ClickPredictor(build_click_model(name)), f"{name}, {RANDOM_NOTE}"
    except ValueError as exc:
        raise SystemExit(f"bench_annotation: --click-model: {exc}") from None


class Item:
    """One image to annotate: its pixels, truth, starting mask and (after a pre-label) probabilities."""

    def __init__(self, name: str, image: np.ndarray, truth: np.ndarray, start: np.ndarray,
                 probs: np.ndarray | None = None) -> None:
        self.name, self.image, self.truth, self.start, self.probs = name, image, truth, start, probs


def read_truth(path: Path) -> np.ndarray:
    """A ground-truth mask: P/L indices as they are, RGB through the VOC palette (void colour -> 255)."""
    from PIL import Image

    from engine import default_classes
    from engine.formats.voc_common import rgb_mask_to_indices
    with Image.open(path) as im:
        if im.mode in ("P", "L"):
            return np.array(im, dtype=np.uint8)
        if im.mode not in ("RGB", "RGBA"):
            raise ValueError(f"{path}: mask mode {im.mode} is neither class indices (P, L) nor VOC colours (RGB)")
        return rgb_mask_to_indices(np.asarray(im.convert("RGB")), [c.color for c in default_classes()])


def load_items(images: Path, masks: Path, start: str, weights: str | None = None) -> tuple[list[Item], int]:
    """The images of ``images`` that have a mask in ``masks``, with their starting masks; and the
    number of classes (the model's, or the highest index in the truth + 1)."""
    from engine import list_images, read_image
    predictor = None
    if start == "prelabel":
        if not weights:
            raise SystemExit("bench_annotation: --start prelabel needs --weights CKPT")
        import engine
        predictor = engine.Predictor(engine.load_model(weights), device="cpu")
    items, top = [], 0
    for path in list_images(images):
        gt = masks / (path.stem + ".png")
        if not gt.is_file():
            continue
        image, truth = read_image(path), read_truth(gt)
        if truth.shape != image.shape[:2]:
            raise SystemExit(f"bench_annotation: {gt}: mask is {truth.shape[1]}x{truth.shape[0]}, "
                             f"image {image.shape[1]}x{image.shape[0]}")
        probs = None
        if start == "empty":
            first = np.full(truth.shape, VOID, np.uint8)
        elif predictor is not None:
            pred = predictor.predict_with_probs(image)
            first, probs = pred.labels, pred.probs
        else:
            first = read_truth(Path(start) / (path.stem + ".png"))
            if first.shape != truth.shape:
                raise SystemExit(f"bench_annotation: {Path(start) / (path.stem + '.png')}: start mask size differs")
        valid = truth[truth != VOID]
        top = max(top, int(valid.max()) + 1 if valid.size else 0)
        items.append(Item(path.name, image, truth, first, probs))
    if not items:
        raise SystemExit(f"bench_annotation: no image in {images} has a mask in {masks}")
    return items, (predictor.num_classes if predictor is not None else top)


def simulate(items: list[Item], tools: str, targets: tuple[float, ...], max_actions: int,
             num_classes: int, predictor=None) -> list[dict]:
    """Run the annotator on every item with one tool set; per-image JSON records. ``predictor``: the
    click predictor the ``click`` tool set needs."""
    out = []
    for it in items:
        cfg = SimConfig(tools=tools, targets=targets, max_actions=max_actions,
                        predictor=predictor if tools == "click" else None)
        sim = Annotator(it.image, it.truth, it.start, cfg, probs=it.probs, num_classes=num_classes)
        r = sim.run()
        rec = r.as_json()
        rec["image"] = it.name
        out.append(rec)
    return out


def summarise(per_image: list[dict], targets: tuple[float, ...]) -> dict:
    """Means over images. NoC@t: clicks until t, or every click spent where t was never reached (the
    usual convention); seconds and clicks: until the highest target (or the budget) ran out."""
    def noc(t: float) -> float:
        key = f"{t:g}"
        return float(np.mean([r["noc"][key] if r["noc"][key] is not None else r["clicks"] for r in per_image]))
    top = f"{max(targets):g}"
    row = {f"noc{round(t * 100)}": round(noc(t), 2) for t in targets}
    row.update(clicks=round(float(np.mean([r["clicks"] for r in per_image])), 2),
               seconds=round(float(np.mean([r["seconds"] for r in per_image])), 1),
               actions=round(float(np.mean([r["actions"] for r in per_image])), 2),
               start_miou=round(float(np.mean([r["start_miou"] for r in per_image])), 4),
               final_miou=round(float(np.mean([r["final_miou"] for r in per_image])), 4),
               failed=sum(r["noc"][top] is None for r in per_image), images=len(per_image))
    return row


def print_table(title: str, rows: dict[str, dict], targets: tuple[float, ...]) -> None:
    keys = [f"noc{round(t * 100)}" for t in targets]
    head = ["tool set"] + [f"NoC@{round(t * 100)}" for t in targets] + ["clicks", "s/image", "start mIoU",
                                                                         "final mIoU", "failed"]
    print(f"\n{title}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in rows.items():
        if r.get("note"):
            name = f"{name} ({r['note']})"
        cells = [name] + [f"{r[k]:.1f}" for k in keys] + [f"{r['clicks']:.1f}", f"{r['seconds']:.0f}",
                                                         f"{r['start_miou']:.3f}", f"{r['final_miou']:.3f}",
                                                         f"{r['failed']}/{r['images']}"]
        print("| " + " | ".join(cells) + " |")


def run(items: list[Item], tools: list[str], targets: tuple[float, ...], max_actions: int, num_classes: int,
        start: str, click: tuple | None = None, click_images: int | None = None) -> dict:
    """``click``: (predictor, note) for the ``click`` tool set; ``click_images``: run it on only the
    first this many images (its encoder is the slow part on a CPU)."""
    report = {"target": list(targets), "max_actions": max_actions, "start": start, "images": len(items),
              "tool_sets": {}, "machine": platform.machine(), "python": platform.python_version()}
    for name in tools:
        t0 = time.perf_counter()
        subset = items[:click_images] if name == "click" and click_images else items
        per_image = simulate(subset, name, targets, max_actions, num_classes,
                             predictor=click[0] if name == "click" and click else None)
        row = summarise(per_image, targets)
        if name == "click" and click:
            row["note"] = click[1]
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        report["tool_sets"][name] = {**row, "per_image": per_image}
    return report


def write_scenes(folder: Path, n: int, size: tuple[int, int], seed: int, appearance: str = "a") -> Path:
    """``n`` generated scenes: ``images/``, their truth in ``masks/`` and a model-like noisy start in
    ``noisy/`` (trainer.synthetic's scenes and mistakes), all PNG."""
    from PIL import Image

    from engine import save_mask_png
    from trainer.synthetic import CLASSES, corrupt_mask, make_scene
    colors = [c for _, c in CLASSES]
    for sub in ("images", "masks", "noisy"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, truth = make_scene(rng, *size, appearance=appearance)
        Image.fromarray(image).save(folder / "images" / f"scene{i:03d}.png")
        save_mask_png(folder / "masks" / f"scene{i:03d}.png", truth, colors)
        save_mask_png(folder / "noisy" / f"scene{i:03d}.png", corrupt_mask(truth, rng), colors)
    return folder


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not vals or not all(0 < v <= 1 for v in vals):
        raise argparse.ArgumentTypeError(f"targets are mIoU values in (0, 1], got {text!r}")
    return vals


def _tools(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TOOL_SETS]
    if bad or not names:
        given = ", ".join(bad) or repr(text)
        raise argparse.ArgumentTypeError(f"unknown tool set {given}; choose from {', '.join(TOOL_SETS)}")
    return names


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path)
    p.add_argument("--masks", type=Path)
    p.add_argument("--start", default="empty", help="empty, prelabel (needs --weights) or a folder of masks")
    p.add_argument("--weights")
    p.add_argument("--tools", type=_tools, default=[t for t in TOOL_SETS if t != "click"],
                   help="tool sets, comma-separated (default: all but click, which needs a click model)")
    p.add_argument("--target", type=_floats, default=(0.85, 0.9))
    p.add_argument("--max-actions", type=int, default=40)
    p.add_argument("--json", type=Path)
    p.add_argument("--click-model", default="mobile_sam", help="the click tool set's model, random weights "
                   "(default mobile_sam; measures cost, not quality)")
    p.add_argument("--click-weights", help="the click tool set's weights file (SAM 2.1, SAM or MobileSAM)")
    p.add_argument("--click-images", type=int, metavar="N", help="run the click tool set on the first N images only")
    p.add_argument("--scenes", type=int, metavar="N", help="generated scenes, from empty and from a noisy start")
    p.add_argument("--size", type=_size, default=(240, 320), help="scene size HxW (default 240x320)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loop", action="store_true", help="annotate in batches, fine-tuning after each")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--iterations", type=int, default=60, help="fine-tuning steps per round (--loop)")
    args = p.parse_args(argv)
    if args.max_actions < 1:
        p.error("--max-actions must be at least 1")
    click = click_predictor(args.click_model, args.click_weights) if "click" in args.tools and not args.loop else None
    if args.loop:
        if "click" in args.tools:
            p.error("--loop runs the weight-free tool sets; leave click out of --tools")
        from annotation_loop import run_loop  # benchmarks/annotation_loop.py
        report = run_loop(args)
        out = args.json or RESULTS / "annotation_loop.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {out}")
        return 0
    if args.scenes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_scenes(Path(tmp), args.scenes, args.size, args.seed)
            for start in ("empty", "noisy"):
                items, n = load_items(folder / "images", folder / "masks",
                                      "empty" if start == "empty" else str(folder / "noisy"))
                report = run(items, args.tools, args.target, args.max_actions, n, start, click, args.click_images)
                report.update(data=f"{args.scenes} generated scenes {args.size[0]}x{args.size[1]}, seed {args.seed}")
                print_table(f"{args.scenes} generated scenes, start {start}",
                            {k: v for k, v in report["tool_sets"].items()}, args.target)
                out = (args.json.with_name(f"{args.json.stem}_{start}.json") if args.json
                       else RESULTS / f"annotation_scenes_{start}.json")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=1))
                print(f"wrote {out}")
        return 0
    if args.images is None or args.masks is None:
        p.error("give --images and --masks (or --scenes N, or --loop)")
    for d in (args.images, args.masks):
        if not d.is_dir():
            p.error(f"{d}: no such folder")
    items, n = load_items(args.images, args.masks, args.start, args.weights)
    report = run(items, args.tools, args.target, args.max_actions, n, args.start, click, args.click_images)
    print_table(f"{len(items)} images from {args.images}, start {args.start}", report["tool_sets"], args.target)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
