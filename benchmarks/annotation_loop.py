"""Does "Fine-tune on my labels" pay off? Annotate in batches, fine-tune after each, watch the work fall.

A small model is trained on generated scenes of one appearance (trainer.synthetic, appearance "a");
the folder to label has another (appearance "b": other colours, the same kinds of objects), the
domain shift the button exists for. Each round the current model pre-labels a batch, the simulated
annotator corrects every image from that pre-label to the target (each tool set from the same
pre-label; the first set's corrected masks are what the person accepts), and the real
``trainer.FineTune`` with the app's recipe trains on everything accepted so far (steps and crop
scaled to the CPU; the app swaps in the new version when it is promoted, and so does this loop). A
fixed held-out set of the new appearance measures the pre-labels' mIoU before each round.

Used by ``bench_annotation.py --loop``; :func:`annotation_loop` is importable for tests.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["annotation_loop", "run_loop"]

ARCH = "deeplabv3plus_mobilenet_v2"


def annotation_loop(*, batches: int = 4, batch_size: int = 6, iterations: int = 60,
                    tools: tuple[str, ...] = ("manual", "snap"), targets: tuple[float, ...] = (0.85, 0.9),
                    max_actions: int = 40, size: tuple[int, int] = (120, 160), seed: int = 0,
                    heldout: int = 6, pretrain_iterations: int = 60, workdir: Path | None = None,
                    log=print) -> dict:
    import engine
    from deeplab_gui.editing.simulate import Annotator, SimConfig, image_miou
    from engine import AnnotationStore, Status
    from trainer import FineTune, Recipe
    from trainer.synthetic import CLASSES, make_scene, pretrain

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir or tmp)
        t0 = time.perf_counter()
        model = pretrain(root / "appearance_a", ARCH, n=8, size=size, iterations=pretrain_iterations,
                         crop=min(size), scenes=True)
        log(f"base model: {pretrain_iterations} steps on appearance a, {time.perf_counter() - t0:.0f} s")
        folder = root / "to_label"
        folder.mkdir()
        rng = np.random.default_rng(seed + 100)
        from PIL import Image
        scenes = []
        for i in range(batches * batch_size):
            image, truth = make_scene(rng, *size, appearance="b")
            Image.fromarray(image).save(folder / f"img{i:03d}.png")
            scenes.append((f"img{i:03d}.png", image, truth))
        test = [make_scene(rng, *size, appearance="b") for _ in range(heldout)]
        # The app's recipe; only the steps and the crop fit a CPU and these small images.
        recipe = Recipe(iterations=iterations, crop=min(321, min(size)), device="cpu", amp=False,
                        eval_max_side=None)
        rows = []
        with AnnotationStore.open(folder) as store:
            store.set_classes(CLASSES, allow_shrink=True)
            for b in range(batches):
                predictor = engine.Predictor(model, device="cpu")
                test_miou = float(np.mean([image_miou(predictor.predict_labels(im), gt) for im, gt in test]))
                batch = scenes[b * batch_size:(b + 1) * batch_size]
                per_tool: dict[str, list] = {t: [] for t in tools}
                for name, image, truth in batch:
                    pred = predictor.predict_with_probs(image)
                    for k, tool in enumerate(tools):
                        sim = Annotator(image, truth, pred.labels, SimConfig(tools=tool, targets=targets,
                                                                             max_actions=max_actions),
                                        probs=pred.probs, num_classes=len(CLASSES))
                        per_tool[tool].append(sim.run())
                        if k == 0:   # accepted: every pixel is now the person's
                            store.save_mask(name, sim.doc.mask, status=Status.REVIEWED,
                                            confirmed=np.ones(truth.shape, bool))
                row = {"batch": b + 1, "images_labelled_before": b * batch_size, "heldout_prelabel_miou":
                       round(test_miou, 4), "tool_sets": {}}
                for tool, results in per_tool.items():
                    top = max(targets)
                    row["tool_sets"][tool] = {
                        "prelabel_miou": round(float(np.mean([r.start_miou for r in results])), 4),
                        "clicks": round(float(np.mean([r.clicks for r in results])), 2),
                        "seconds": round(float(np.mean([r.seconds for r in results])), 1),
                        "noc90": round(float(np.mean([r.noc[top] if r.noc[top] is not None else r.clicks
                                                      for r in results])), 2),
                        "failed": sum(r.noc[top] is None for r in results)}
                t1 = time.perf_counter()
                result = FineTune(store, model, recipe, parent=f"round{b}").run()
                row["finetune"] = {"status": result.status, "miou_before": result.miou_before,
                                   "miou_after": result.miou_after, "promoted": bool(result.promoted),
                                   "seconds": round(time.perf_counter() - t1, 1),
                                   "images": (b + 1) * batch_size}
                if result.promoted and result.model is not None:
                    model = result.model
                rows.append(row)
                _print_row(row, tools, log)
    return {"arch": ARCH, "size": list(size), "batches": batches, "batch_size": batch_size,
            "recipe": {"iterations": iterations, "crop": recipe.crop, "lr": recipe.lr,
                       "batch_size": recipe.batch_size, "freeze_bn": recipe.freeze_bn},
            "pretrain_iterations": pretrain_iterations, "target": list(targets), "rounds": rows}


def _print_row(row: dict, tools, log) -> None:
    if row["batch"] == 1:
        head = ["batch", "held-out pre-label mIoU"] + [f"{t} clicks/img | {t} s/img" for t in tools] + ["fine-tune mIoU"]
        log("| " + " | ".join(head) + " |")
    ft = row["finetune"]
    cells = [str(row["batch"]), f"{row['heldout_prelabel_miou']:.3f}"]
    cells += [f"{row['tool_sets'][t]['clicks']:.1f} | {row['tool_sets'][t]['seconds']:.0f}" for t in tools]
    cells.append(f"{ft['miou_before']:.3f} -> {ft['miou_after']:.3f}{'' if ft['promoted'] else ' (kept old)'}"
                 if ft["miou_before"] is not None else ft["status"])
    log("| " + " | ".join(cells) + " |")


def run_loop(args) -> dict:
    """``bench_annotation.py --loop``'s entry: the loop with the command line's settings."""
    return annotation_loop(batches=args.batches, batch_size=args.batch_size, iterations=args.iterations,
                           tools=tuple(args.tools), targets=tuple(args.target), max_actions=args.max_actions,
                           size=args.size if args.size != (240, 320) else (120, 160), seed=args.seed)
