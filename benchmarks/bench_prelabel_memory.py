"""Peak memory of ``deeplab-gui prelabel`` on one huge image: into the annotation store, and with ``--out``.

Goal: pre-labelling a 12000x9000 image with a 21-class model into the store stays under 4 GiB of
resident memory, as ``--out`` does (the store also keeps the image's probabilities, on a capped grid).
The model is ``deeplabv3plus_mobilenet_v2`` with random weights (memory does not depend on the weights),
run on the CPU.  Each run is a fresh child process that reports its own ``VmHWM`` (its address space's
resident high-water mark) when the command returns; ``ru_maxrss`` is not used because Linux carries it
over ``exec`` from the forking parent.  Prints a table and writes
``benchmarks/results/prelabel_memory.json``.  Linux only (reads /proc).

    python benchmarks/bench_prelabel_memory.py [--sizes 12000x9000 15000x15000] [--classes 21]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Runs the CLI in this (child) process, then prints the process's peak resident memory in bytes.
_CHILD = """
import sys
from deeplab_gui.cli.parser import main
code = main(sys.argv[1:])
with open("/proc/self/status") as f:
    hwm = int(f.read().split("VmHWM:")[1].split()[0]) * 1024
print("VMHWM", hwm, flush=True)
sys.exit(code)
"""


def _write_image(path: Path, h: int, w: int) -> None:
    """A photo-like JPEG: smooth gradients and a few discs (what prediction memory does not depend on,
    but the JPEG stays small and quick to write)."""
    yy = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (yy * 0.7 + xx * 0.3).astype(np.uint8)
    img[..., 1] = (255 - xx).astype(np.uint8)
    img[..., 2] = ((yy + xx) % 256).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(6):
        cy, cx, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(h // 20, h // 6))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r, h), max(cx - r, 0), min(cx + r, w)
        ys, xs = np.ogrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1][(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = rng.integers(0, 256, 3, dtype=np.uint8)
    Image.fromarray(img).save(path, quality=90)


def _run(args: list[str]) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0 or "VMHWM" not in r.stdout:
        raise SystemExit(f"prelabel {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-600:]}")
    return int(r.stdout.split("VMHWM")[1].split()[0]), elapsed, r.stderr.strip().splitlines()[-1]


def _measure(tmp_path: Path, w: int, h: int, c: int, ckpt: Path, predictor) -> list[dict]:
    from engine import AnnotationStore
    from engine.probgrid import probs_grid, probs_max_pixels

    folder = tmp_path / f"images-{w}x{h}"
    folder.mkdir()
    _write_image(folder / "huge.jpg", h, w)
    base = ["prelabel", str(folder), "--weights", str(ckpt), "--device", "cpu"]
    rows = [("store", base, predictor.memory_bound(h, w, cache_pixels=probs_max_pixels())),
            ("--out", base + ["--out", str(tmp_path / f"masks-{w}x{h}")], predictor.memory_bound(h, w, labels=True))]
    runs = []
    for mode, cli_args, bound in rows:
        peak, seconds, summary = _run(cli_args)
        run = {"image": [w, h], "mode": mode, "peak_rss_bytes": peak, "seconds": round(seconds, 1),
               "predictor_bound_bytes": bound + h * w * 3, "summary": summary}
        if mode == "store":
            with AnnotationStore.open(folder, read_only=True) as st:
                cached = st.load_probs("huge.jpg")
                run["status"] = st.status("huge.jpg").value
                run["cached_probs_shape"] = list(cached.probs.shape) if cached is not None else None
                run["cache_file_bytes"] = st.probs_path("huge.jpg").stat().st_size
                # From the PNG header: Pillow refuses to open one above 179 Mpx (decompression-bomb check).
                head = st.mask_path("huge.jpg").read_bytes()[:24]
                run["mask_shape"] = [int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")]
            assert run["cached_probs_shape"] == [c, *probs_grid(h, w)], run
        runs.append(run)
    (folder / "huge.jpg").unlink()
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["12000x9000"], help="WIDTHxHEIGHT of each test image")
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--arch", default="deeplabv3plus_mobilenet_v2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prelabel_memory.json"))
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("this benchmark reads /proc: Linux only")
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]

    import torch

    from engine import Predictor, build_model, save_model
    from engine.probgrid import probs_max_pixels

    c = args.classes
    results: dict = {"python": platform.python_version(), "torch": torch.__version__,
                     "machine": platform.machine(), "cpus": os.cpu_count(), "classes": c, "arch": args.arch,
                     "device": "cpu", "probs_max_pixels": probs_max_pixels(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-prelabel-") as tmp:
        tmp_path = Path(tmp)
        torch.manual_seed(0)
        model = build_model(args.arch, num_classes=c)
        ckpt = save_model(model, tmp_path / "model.safetensors")
        predictor = Predictor(model, device="cpu")
        for w, h in sizes:
            results["runs"] += _measure(tmp_path, w, h, c, ckpt, predictor)

    gib = 2 ** 30
    print(f"prelabel of one JPEG, {c} classes, {args.arch} on the CPU ({os.cpu_count()} cores)")
    print(f"{'image':>12} {'mode':8} {'peak RSS GiB':>13} {'bound GiB':>10} {'seconds':>8}  notes")
    for run in results["runs"]:
        note = ""
        if run["mode"] == "store":
            shape = run["cached_probs_shape"]
            note = (f"probs cached at {shape[2]}x{shape[1]} ({run['cache_file_bytes'] / 2**20:.0f} MiB), "
                    f"mask {run['mask_shape'][1]}x{run['mask_shape'][0]}")
        size = f"{run['image'][0]}x{run['image'][1]}"
        print(f"{size:>12} {run['mode']:8} {run['peak_rss_bytes'] / gib:13.2f} "
              f"{run['predictor_bound_bytes'] / gib:10.2f} {run['seconds']:8.1f}  {note}")
    print("bound: Predictor.memory_bound (network activations excluded) plus the decoded image")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
