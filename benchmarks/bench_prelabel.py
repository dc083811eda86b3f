"""Throughput of distributed pre-labelling into the annotation store (``python -m engine.prelabel``).

A generated folder (default 40 photo-like images of 375x500) is pre-labelled by a model with random
weights (default ``deeplabv3_mobilenet_v2``, 21 classes: speed does not depend on the weights) with 1
and 2 processes on the CPU, or, with ``--device cuda``, with 1 process and one per GPU (CUDA rows
only).  ``--batch B`` passes ``--batch B`` to every run (images of one size through the network B
at a time; default: the command's own, 8 with CUDA and 1 on the CPU).  Each run starts from an empty store.  Reported per run: the steady rate (images/s between the
first and the last prediction, from the runs' trace of predictions, so start-up is not counted), the
whole job's wall time including start-up, and the rate per process (per GPU on CUDA).  Prints a table
and writes ``benchmarks/results/prelabel_<device>.json``.

    python benchmarks/bench_prelabel.py [--device cpu|cuda] [--images 40] [--size 375x500] [--procs 1,2]
                                        [--batch B]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (yy * 0.6 + xx * 0.4).astype(np.uint8)
    img[..., 1] = (255 - xx).astype(np.uint8)
    img[..., 2] = ((yy + xx + seed * 17) % 256).astype(np.uint8)
    for _ in range(5):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        img[y:y + h // 3, x:x + w // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def _run(folder: Path, ckpt: Path, procs: int, device: str, loader_workers: int, threads: int | None,
         trace: Path, batch: int | None = None) -> dict:
    from engine.prelabel_store import TRACE_ENV
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, TQDM_DISABLE="1", **{TRACE_ENV: str(trace)})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    args = [str(folder), "--weights", str(ckpt), "--device", device, "--loader-workers", str(loader_workers)]
    args += ["--batch", str(batch)] if batch else []
    if procs == 1:
        cmd = [sys.executable, "-m", "engine.prelabel", *args]
    else:
        cmd = [sys.executable, "-c", "import sys; from engine.prelabel_launch import launch_local; "
               f"sys.exit(launch_local(sys.argv[1:], {procs}))", *args]
    seen: list[float] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:  # time each prediction as it lands in the trace
        n = trace.read_text().count("\n") if trace.exists() else 0
        seen += [time.perf_counter()] * (n - len(seen))
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"bench_prelabel: {procs} process(es) failed: {err.strip()[-500:]}")
    n = trace.read_text().count("\n")
    seen += [time.perf_counter()] * (n - len(seen))
    steady = (len(seen) - 1) / (seen[-1] - seen[0]) if len(seen) > 1 and seen[-1] > seen[0] else float("nan")
    return {"processes": procs, "images": n, "images_per_s": round(steady, 2),
            "images_per_s_per_process": round(steady / procs, 2), "wall_s": round(wall, 2),
            "job_images_per_s": round(n / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", default="375x500", help="HxW of the generated images")
    ap.add_argument("--arch", default="deeplabv3_mobilenet_v2")
    ap.add_argument("--procs", default=None, help="process counts (default: 1,2 on the CPU; 1 and one per GPU)")
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (CPU)")
    ap.add_argument("--batch", type=int, default=None, metavar="B",
                    help="images per network call (default: the command's, 8 with CUDA, 1 on the CPU)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    from engine import build_model, save_model
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_prelabel: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    procs = [int(p) for p in a.procs.split(",")] if a.procs else ([1, 2] if a.device == "cpu" else
                                                                   sorted({1, max(1, gpus)}))
    h, w = (int(v) for v in a.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_prelabel_") as tmp:
        tmp_path = Path(tmp)
        torch.manual_seed(0)
        ckpt = save_model(build_model(a.arch, num_classes=21), tmp_path / "m.safetensors")
        src = tmp_path / "src"
        src.mkdir()
        for k in range(a.images):
            Image.fromarray(_photo(h, w, k)).save(src / f"img{k:04d}.jpg", quality=90)
        for n in procs:
            folder = tmp_path / f"run{n}"
            shutil.copytree(src, folder)
            row = _run(folder, ckpt, n, a.device, a.loader_workers, a.threads, tmp_path / f"trace{n}.txt",
                       a.batch)
            if a.device == "cuda":
                row["gpus"] = min(n, gpus)
            rows.append(row)
    base = rows[0]["images_per_s"] if rows else float("nan")
    print(f"pre-labelling {a.images} images {w}x{h}, {a.arch}, into the store, {a.device}, "
          f"batch {a.batch or ('default (8)' if a.device == 'cuda' else 'default (1)')}"
          f" ({os.cpu_count()} CPU cores{f', {gpus} GPU(s)' if gpus else ''})")
    print(f"{'processes':>9} {'images/s':>9} {'per proc':>9} {'speed-up':>9} {'wall s':>7} {'job img/s':>10}")
    for r in rows:
        print(f"{r['processes']:>9} {r['images_per_s']:>9.2f} {r['images_per_s_per_process']:>9.2f} "
              f"{r['images_per_s'] / base:>9.2f} {r['wall_s']:>7.2f} {r['job_images_per_s']:>10.2f}")
    out = Path(a.json or ROOT / "benchmarks" / "results" / f"prelabel_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": a.device, "gpu": torch.cuda.get_device_name(0) if gpus else None, "gpus": gpus,
        "cpu_cores": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
        "arch": a.arch, "images": a.images, "size_hw": [h, w], "loader_workers": a.loader_workers,
        "threads": a.threads, "batch": a.batch or (8 if a.device == "cuda" else 1), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
