"""Store benchmarks: folder scan, mask save/load at 4000x3000, VOC export throughput.

Goals: scan of 10,000 files under 1 s; save and load of a 4000x3000 mask under 50 ms each.
Prints a table and writes ``benchmarks/results/bench_store.json``.  Everything happens in a temporary
folder on the same disk as the system temp dir (set TMPDIR to measure another disk).

    python benchmarks/bench_store.py [--files 10000] [--export-images 40] [--repeat 5]
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

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import (
    AnnotationStore,  # noqa: E402
    export_voc,  # noqa: E402
)
from engine.store.scan import scan_folder  # noqa: E402


def _timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _realistic_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blobs of a few classes with void outlines: what a corrected VOC-style mask looks like."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), np.uint8)
    for k in range(8):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 10, h // 3)
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        m[d < r * r] = rng.integers(1, 21)
        m[(d >= r * r) & (d < (r + 5) ** 2)] = 255
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--export-images", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_store.json"))
    args = ap.parse_args(argv)
    results: dict = {"python": platform.python_version(), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "tmpdir": tempfile.gettempdir()}
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        tmp = Path(tmp)
        # -------------------------------------------------------------- scan
        scan_dir = tmp / "scan"
        scan_dir.mkdir()
        for i in range(args.files):
            ext = (".jpg", ".png", ".txt")[i % 3] if i % 50 == 0 else ".jpg"
            (scan_dir / f"IMG_{i}{ext}").write_bytes(b"x")
        t = _timed(lambda: scan_folder(scan_dir), args.repeat)
        n = len(scan_folder(scan_dir).images)
        results["scan"] = {"files": args.files, "images": n, "best_s": min(t), "median_s": statistics.median(t),
                           "goal_s": 1.0}
        # -------------------------------------------------------------- 4000x3000 mask
        big = tmp / "big"
        big.mkdir()
        Image.new("RGB", (4000, 3000), (90, 120, 60)).save(big / "photo.jpg", quality=80)
        mask = _realistic_mask(3000, 4000)
        with AnnotationStore.open(big) as st:
            st.save_mask("photo.jpg", mask)  # first save creates folders and caches the image size
            ts = _timed(lambda: st.save_mask("photo.jpg", mask), args.repeat)
            tl = _timed(lambda: st.load_mask("photo.jpg"), args.repeat)
            assert np.array_equal(st.load_mask("photo.jpg"), mask)
            size = st.mask_path("photo.jpg").stat().st_size
        results["mask_4000x3000"] = {"save_best_ms": 1e3 * min(ts), "save_median_ms": 1e3 * statistics.median(ts),
                                     "load_best_ms": 1e3 * min(tl), "load_median_ms": 1e3 * statistics.median(tl),
                                     "png_bytes": size, "goal_ms": 50.0}
        # -------------------------------------------------------------- export
        ex = tmp / "export"
        ex.mkdir()
        rng = np.random.default_rng(0)
        with AnnotationStore.open(ex) as st:
            for i in range(args.export_images):
                img = np.clip(rng.normal(120, 40, (375, 500, 3)), 0, 255).astype(np.uint8)
                name = f"img{i}.jpg" if i % 4 else f"img{i}.png"  # a quarter need re-encoding
                Image.fromarray(img).save(ex / name, quality=90)
                st.save_mask(name, _realistic_mask(375, 500, i))
            st.scan()
            t0 = time.perf_counter()
            rep = export_voc(st, tmp / "voc", void_border=2)
            dt = time.perf_counter() - t0
        results["export"] = {"images": len(rep.exported), "seconds": dt, "images_per_s": len(rep.exported) / dt,
                             "size": "500x375", "void_border": 2, "png_sources_reencoded": args.export_images // 4}
    print(f"scan  {results['scan']['files']:>6} files: best {results['scan']['best_s'] * 1e3:7.1f} ms "
          f"(goal < 1000 ms)")
    m = results["mask_4000x3000"]
    print(f"mask  4000x3000 save: best {m['save_best_ms']:7.1f} ms, median {m['save_median_ms']:7.1f} ms "
          f"(goal < 50 ms); load: best {m['load_best_ms']:7.1f} ms, median {m['load_median_ms']:7.1f} ms; "
          f"{m['png_bytes'] / 1024:.0f} KiB")
    e = results["export"]
    print(f"export {e['images']} images 500x375: {e['images_per_s']:.1f} images/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
