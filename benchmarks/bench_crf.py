"""Benchmark engine.crf: refine() per backend and size, and LiveCRF latencies over a scripted slider drag.

    .venv/bin/python benchmarks/bench_crf.py              # full run, writes benchmarks/results/crf_<device>.json
    .venv/bin/python benchmarks/bench_crf.py --quick      # 500x375 only, 1 repeat

Scenes are generated (engine.crf.synthetic): coloured shapes with noise and coarse, noisy unaries. "classes"
is how many classes carry probability (C = that many, except the live "5 of 21" case). Times are wall
clock; the machine's load average is recorded because this CPU is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.crf import DEEPLAB_V1, LiveCRF, LiveCRFWorker, available_backends, refine  # noqa: E402
from engine.crf.synthetic import make_scene  # noqa: E402

SIZES = [(500, 375), (1024, 768), (2048, 1536)]
CLASSES = [2, 5, 21]
ITERATIONS = [5, 10]


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else None


def warm_up(backends):
    """One untimed small refine per backend and class count: first calls pay one-time costs (JIT-generated
    gather kernels per column count, worker threads, lazy imports) that are not per-image costs."""
    for c in CLASSES:
        scene = make_scene(200, 240, c, seed=c)
        for backend, device in backends:
            refine(scene.image, scene.probs, DEEPLAB_V1.replace(iterations=2), backend=backend, device=device)


def bench_refine(sizes, repeats, backends, log):
    warm_up(backends)
    rows = []
    for w, h in sizes:
        for c in CLASSES:
            scene = make_scene(h, w, c, seed=c)
            for it in ITERATIONS:
                params = DEEPLAB_V1.replace(iterations=it)
                # Backends take turns within each repeat so that a burst of load hits them alike.
                times = {bd: [] for bd in backends}
                labels = {}
                for _ in range(repeats if w * h <= 1024 * 768 else 1):
                    for backend, device in backends:
                        t0 = time.perf_counter()
                        out = refine(scene.image, scene.probs, params, backend=backend, device=device)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        times[(backend, device)].append(time.perf_counter() - t0)
                        labels[(backend, device)] = out.argmax(0)
                load = os.getloadavg()[0]
                ref = labels[backends[0]]
                for (backend, device), ts in times.items():
                    agree = float((labels[(backend, device)] == ref).mean())
                    rows.append({"width": w, "height": h, "classes": c, "iterations": it, "backend": backend,
                                 "device": device, "seconds": min(ts), "runs": len(ts), "load1": load,
                                 "label_agreement_with_first": agree})
                    log(f"{w}x{h} C={c:2d} it={it:2d} {backend:10s} {device or '':4s} {min(ts):7.3f} s  "
                        f"agree {agree:.4f} (load {load:.1f})")
    return rows


def _drag_script():
    """Slider positions for a scripted drag: each slider swept in small steps, one after another."""
    p = DEEPLAB_V1
    steps = [p.replace(bilateral_xy=x) for x in np.linspace(49, 90, 12)]
    p = steps[-1]
    steps += [p.replace(bilateral_weight=x) for x in np.linspace(4, 8, 8)]
    p = steps[-1]
    steps += [p.replace(bilateral_rgb=x) for x in np.linspace(5, 12, 8)]
    p = steps[-1]
    steps += [p.replace(gaussian_xy=x) for x in np.linspace(3, 1, 6)]
    p = steps[-1]
    steps += [p.replace(iterations=int(x)) for x in (10, 8, 6, 5, 8, 10)]
    return steps


def bench_live(device, log):
    """Two protocols per case: 'settled' (each move waits for its full answer, like a person pausing)
    and 'drag' (moves every 33 ms through the worker, superseded work dropped)."""
    results = {}
    for label, active in (("5_of_21_classes", 5), ("21_of_21_classes", 21)):
        scene = make_scene(375, 500, 21, active_classes=active, seed=1)
        t0 = time.perf_counter()
        session = LiveCRF(scene.image, scene.probs, device=device)
        setup = time.perf_counter() - t0
        list(session.run(DEEPLAB_V1))  # first request builds the initial lattices
        script = _drag_script()

        preview, full = [], []
        for params in script:
            for r in session.run(params):
                (preview if r.stage == "preview" else full).append(r.elapsed)

        drag_preview, drag_full, done = [], [], threading.Event()
        ids = []

        def on_result(r):
            (drag_preview if r.stage == "preview" else drag_full).append(r.elapsed)
            if r.stage == "full" and ids and r.request_id == ids[-1]:
                done.set()

        session2 = LiveCRF(scene.image, scene.probs, device=device)
        list(session2.run(DEEPLAB_V1))
        worker = LiveCRFWorker(session2, on_result)
        load = os.getloadavg()[0]
        next_time = time.perf_counter()
        for params in script:
            ids.append(worker.request(params))
            next_time += 1 / 30
            time.sleep(max(0.0, next_time - time.perf_counter()))  # benchmark pacing only
        done.wait(timeout=120)
        worker.close(timeout=60)
        ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
        results[label] = {
            "session_setup_ms": ms(setup),
            "settled": {"requests": len(script),
                        "preview_p50_ms": ms(_percentile(preview, 50)), "preview_p95_ms": ms(_percentile(preview, 95)),
                        "full_p50_ms": ms(_percentile(full, 50)), "full_p95_ms": ms(_percentile(full, 95))},
            "drag_30hz": {"requests": len(script), "previews": len(drag_preview), "fulls": len(drag_full),
                          "preview_p50_ms": ms(_percentile(drag_preview, 50)),
                          "preview_p95_ms": ms(_percentile(drag_preview, 95)),
                          "last_full_ms": ms(drag_full[-1]) if drag_full else None, "load1": load},
        }
        log(f"live {label}: {json.dumps(results[label])}")
    return results


def markdown(report) -> str:
    """The README table: seconds per image per backend, and the live latencies."""
    m = report["machine"]
    lines = [f"CRF timings ({m['cpu_count']} CPU cores, torch {m['torch']} with {m['torch_threads']} threads"
             + (f", {m['cuda']}" if m["cuda"] else "") + f"; load average at start {m['loadavg_start'][0]:.1f}, "
             f"end {m['loadavg_end'][0]:.1f}). DeepLab v1 CRF preset; seconds per image, lattice build included.",
             ""]
    rows = report.get("refine", [])
    cols = sorted({(r["backend"], r["device"]) for r in rows}, key=lambda bd: (bd[0] != "pydensecrf", str(bd[1])))
    if rows:
        head = ["image", "classes", "iterations"] + [f"{b} {d or ''}".strip() for b, d in cols]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        keys = sorted({(r["width"], r["height"], r["classes"], r["iterations"]) for r in rows})
        for w, h, c, it in keys:
            cells = [f"{w}×{h}", str(c), str(it)]
            for b, d in cols:
                hit = [r for r in rows if (r["width"], r["height"], r["classes"], r["iterations"], r["backend"],
                                           r["device"]) == (w, h, c, it, b, d)]
                cells.append(f"{hit[0]['seconds']:.2f}" if hit else "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for device, cases in report.get("live_500x375", {}).items():
        lines += [f"LiveCRF on 500×375 ({device}), {len(_drag_script())}-step scripted slider drag. 'settled': each "
                  "step waits for its full answer; 'drag': a step every 33 ms through LiveCRFWorker (stale work "
                  "dropped). Latency from request to result, ms.", "",
                  "| classes carrying probability | settled preview p50 / p95 | settled full p50 / p95 "
                  "| drag preview p50 / p95 | drag previews / requests |", "|---|---|---|---|---|"]
        for label, r in cases.items():
            st, dr = r["settled"], r["drag_30hz"]
            lines.append(f"| {label.split('_of_')[0]} of 21 | {st['preview_p50_ms']} / {st['preview_p95_ms']} | "
                         f"{st['full_p50_ms']} / {st['full_p95_ms']} | {dr['preview_p50_ms']} / "
                         f"{dr['preview_p95_ms']} | {dr['previews']} / {dr['requests']} |")
        lines.append("")
    lines += _goals(report)
    return "\n".join(lines)


def _goals(report) -> list[str]:
    """Check the issue's goals against the numbers and say so in plain words."""
    out = ["Goals:", ""]
    live = report.get("live_500x375", {}).get("cpu", {})
    if live:
        p95 = live["5_of_21_classes"]["settled"]["preview_p95_ms"]
        worst = live["21_of_21_classes"]["settled"]["preview_p95_ms"]
        out.append(f"- preview p95 within 100 ms on 500×375 with ≤ 5 classes carrying probability: {p95} ms "
                   f"({'met' if p95 <= 100 else 'NOT met'}); 21-class worst case {worst} ms.")
    rows = report.get("refine", [])
    pairs = []
    for r in rows:
        if r["backend"] == "torch" and r["device"] == "cpu":
            ref = [x for x in rows if x["backend"] == "pydensecrf" and
                   (x["width"], x["height"], x["classes"], x["iterations"]) ==
                   (r["width"], r["height"], r["classes"], r["iterations"])]
            if ref:
                pairs.append(ref[0]["seconds"] / r["seconds"])
    if pairs:
        wins = sum(p >= 1.0 for p in pairs)
        out.append(f"- torch CPU no slower than pydensecrf at full size: faster in {wins} of {len(pairs)} cases; "
                   f"speed-up median {statistics.median(pairs):.2f}×, range {min(pairs):.2f}–{max(pairs):.2f}×.")
    cuda = [(x, r) for r in rows if r["device"] == "cuda" for x in rows
            if x["backend"] == "pydensecrf" and (x["width"], x["height"], x["classes"], x["iterations"]) ==
            (r["width"], r["height"], r["classes"], r["iterations"])]
    if cuda:
        ratios = [x["seconds"] / r["seconds"] for x, r in cuda]
        out.append(f"- CUDA at least 20× faster than pydensecrf: median {statistics.median(ratios):.1f}×, "
                   f"min {min(ratios):.1f}×.")
    else:
        out.append("- CUDA ≥ 20× pydensecrf: not measured here (no GPU on this machine).")
    return out + [""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500x375 only, one repeat")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2 if os.cpu_count() == 2 else 8))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CPU rows, and CUDA rows when a GPU is present; cuda: the CUDA rows and the "
                         "pydensecrf reference they are compared with; cpu: no CUDA rows")
    ap.add_argument("--sizes", default=None, help="comma-separated WxH (default 500x375,1024x768,2048x1536)")
    ap.add_argument("--skip-refine", action="store_true")
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown-from", type=Path, default=None, help="only render the table of a JSON report")
    args = ap.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(args.markdown_from.read_text())))
        return
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    backends = [(b, "cpu" if b == "torch" else None) for b in available_backends() if b != "torch"]
    if args.device != "cuda":
        backends.insert(0, ("torch", "cpu"))
    if cuda:
        backends.append(("torch", "cuda"))
    sizes = SIZES[:1] if args.quick else SIZES
    if args.sizes:
        sizes = [tuple(int(v) for v in wh.lower().split("x")) for wh in args.sizes.split(",") if wh.strip()]
    log = lambda s: print(s, flush=True)  # noqa: E731
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if cuda else None,
                    "loadavg_start": os.getloadavg()},
        "params": "DeepLab v1 preset (w1 4, θα 49, θβ 5, w2 3, θγ 3) with the iterations given",
    }
    if not args.skip_refine:
        report["refine"] = bench_refine(sizes, 1 if args.quick else args.repeats, backends, log)
    if not args.skip_live:
        report["live_500x375"] = {} if args.device == "cuda" else {"cpu": bench_live("cpu", log)}
        if cuda:
            report["live_500x375"]["cuda"] = bench_live("cuda", log)
    report["machine"]["loadavg_end"] = os.getloadavg()
    out = args.out or Path(__file__).parent / "results" / f"crf_{'cuda' if cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    md = out.with_suffix(".md") if args.out else out.parent / ("crf_cuda.md" if cuda else "crf.md")
    md.write_text(markdown(report))
    log(markdown(report))
    log(f"wrote {out} and {md}")


if __name__ == "__main__":
    sys.exit(main())
