"""Fine-tuning speed: training images/s at 513×513 crops, and a 20-image fine-tune end to end.

1. Throughput: SGD steps (forward, cross-entropy, backward, update; head lr ×10, frozen BN as the
   trainer does) on random 513×513 crops for deeplabv3plus_mobilenet_v2 and
   deeplabv3plus_resnet101: CPU fp32, and where CUDA exists fp32 and AMP (fp16 autocast).
2. "Click to swapped-in model": a folder of 20 generated 375×500 labelled images; wall time from
   loading the starting checkpoint, through ``trainer.FineTune`` (validation before and after,
   ``--iterations`` steps, writing the version) to an ``engine.Predictor`` on the new model.

Prints a table and writes ``benchmarks/results/train_<device>.json``.

    python benchmarks/bench_train.py --quick          # fewer steps, CPU-sized
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine import AnnotationStore  # noqa: E402
from trainer import FineTune, Recipe, seg_loss, split_params  # noqa: E402
from trainer.params import freeze_bn_params, set_train_mode  # noqa: E402
from trainer.synthetic import CLASSES, make_folder  # noqa: E402

__all__ = ["train_throughput", "finetune_wall_time", "main"]

MODELS = ("deeplabv3plus_mobilenet_v2", "deeplabv3plus_resnet101")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(arch: str, device: torch.device, *, amp: bool, batch: int, crop: int = 513,
                     warmup: int = 1, steps: int = 3) -> dict:
    """Median training images/s over ``steps`` timed SGD steps (after ``warmup`` untimed ones)."""
    model = engine.build_model(arch, num_classes=21).to(device)
    freeze_bn_params(model)
    backbone, head = split_params(model)
    opt = torch.optim.SGD([{"params": backbone, "lr": 1e-3}, {"params": head, "lr": 1e-2}], momentum=0.9,
                          weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, 21, (batch, crop, crop), device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        set_train_mode(model, frozen_bn=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = seg_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    s = statistics.median(times)
    row = {"model": arch, "device": device.type, "precision": "amp" if amp else "fp32", "batch": batch,
           "crop": crop, "s_per_step": round(s, 3), "images_per_s": round(batch / s, 2)}
    if device.type == "cuda":
        row["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20)
    return row


def finetune_wall_time(arch: str, device: str, *, iterations: int, crop: int, images: int = 20) -> dict:
    """Seconds from 'Fine-tune' to a Predictor on the new version, on ``images`` generated images."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_folder(folder, images, size=(375, 500), appearance="b", seed=0)
        start = Path(tmp) / "start.safetensors"
        engine.save_model(engine.build_model(arch, num_classes=3, class_names=[c for c, _ in CLASSES]), start)
        t0 = time.perf_counter()
        model = engine.load_model(start)
        with AnnotationStore.open(folder) as store:
            run = FineTune(store, model, Recipe(iterations=iterations, crop=crop, device=device, eval_every=0))
            result = run.run()
        engine.Predictor(result.model, device=device)  # the swap: what the app does with the result
        wall = time.perf_counter() - t0
    return {"model": arch, "device": device, "images": images, "heldout": len(result.heldout_ids),
            "iterations": iterations, "crop": crop, "wall_s": round(wall, 2),
            "miou_before": result.miou_before, "miou_after": result.miou_after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and iterations (CPU-sized)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--iterations", type=int, default=None, help="fine-tune steps (default 100, quick 10)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU rows, and CUDA rows when a GPU is present; cpu or cuda: that device's rows only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    has_cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not has_cuda:
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    devices = ([] if args.device == "cuda" else [torch.device("cpu")]) + ([torch.device("cuda")] if has_cuda else [])
    rows = []
    for arch in args.models.split(","):
        for dev in devices:
            for amp in ((False, True) if dev.type == "cuda" else (False,)):
                batch = 8 if dev.type == "cuda" else 2
                try:
                    row = train_throughput(arch, dev, amp=amp, batch=batch, steps=2 if args.quick else 5)
                except RuntimeError as exc:  # e.g. out of memory: report, keep going
                    row = {"model": arch, "device": dev.type, "precision": "amp" if amp else "fp32",
                           "batch": batch, "error": " ".join(str(exc).split())[:200]}
                rows.append(row)
                print(f"{arch:28s} {dev.type:5s} {row['precision']:5s} batch {batch}: "
                      f"{row.get('images_per_s', '-')} img/s ({row.get('s_per_step', '-')} s/step)", flush=True)
    main_dev = "cuda" if has_cuda else "cpu"
    iters = args.iterations or (10 if args.quick else 100)
    wall = finetune_wall_time("deeplabv3plus_mobilenet_v2", main_dev, iterations=iters,
                              crop=321 if main_dev == "cuda" or not args.quick else 257)
    print(f"20-image fine-tune, click to swapped-in model ({main_dev}, {wall['iterations']} steps, crop "
          f"{wall['crop']}): {wall['wall_s']} s", flush=True)
    out = ROOT / "benchmarks" / "results" / f"train_{main_dev}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "threads": args.threads,
                               "torch": torch.__version__, "throughput": rows, "finetune_20_images": wall},
                              indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
