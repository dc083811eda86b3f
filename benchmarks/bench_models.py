"""Forward-pass speed of every registered model at 513×513 (DeepLab's evaluation crop).

CPU: batch 1, fp32, ``--threads`` threads (default 2, what this project's build machines have).
CUDA (when available): fp32 and fp16 (autocast + channels_last), batch 1 and 8, with peak memory.
Reference rows: when torchvision is importable (dev only, e.g. ``PYTHONPATH=/tmp/tvlib``), its own
deeplabv3_resnet50/101 and deeplabv3_mobilenet_v3_large are timed the same way, so our models can be
compared with the implementation whose weights they load.

Each measurement: a few warm-up runs, then ``--repeats`` timed runs; the median is reported.
Prints a table and writes ``benchmarks/results/models_<device>.json``.

    python benchmarks/bench_models.py --quick --models deeplabv3_mobilenet_v2,deeplabv3plus_mobilenet_v2
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from engine import build_model, list_models  # noqa: E402

__all__ = ["Row", "time_runs", "bench_model", "main"]

REFERENCE_MODELS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large")


@dataclass
class Row:
    model: str
    source: str  # "deeplab-gui" or "torchvision"
    device: str
    precision: str  # fp32 / fp16
    batch: int
    ms_per_image: float | None = None
    images_per_s: float | None = None
    peak_mib: float | None = None  # CUDA: max allocated during the timed runs
    params_m: float | None = None
    error: str | None = None


def time_runs(fn: Callable[[], object], *, warmup: int, repeats: int, sync: Callable[[], None],
              after_warmup: Callable[[], None] = lambda: None) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    after_warmup()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _out(y: object) -> torch.Tensor:
    return y["out"] if isinstance(y, dict) else y  # torchvision returns {"out": ...}


def bench_model(name: str, model: nn.Module, source: str, device: torch.device, precision: str, batch: int,
                size: int, warmup: int, repeats: int) -> Row:
    row = Row(name, source, device.type, precision, batch,
              params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3))
    cuda = device.type == "cuda"
    fp16 = precision == "fp16"
    try:
        model = model.to(device).eval()
        x = torch.randn(batch, 3, size, size, device=device)
        if cuda and fp16:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)

        def run() -> object:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda and fp16):
                return _out(model(x))

        sync = torch.cuda.synchronize if cuda else (lambda: None)
        def reset_peak() -> None:
            # After the warm-up: cudnn.benchmark's first calls try every algorithm, some with workspaces of
            # tens of GB (an H200 run showed 133 GB "peaks" for VGG16 at batch 1), which no steady run uses.
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        times = time_runs(run, warmup=max(warmup, 1) if cuda else warmup, repeats=repeats, sync=sync,
                          after_warmup=reset_peak)
        med = statistics.median(times)
        row.ms_per_image = round(med / batch, 2)
        row.images_per_s = round(batch * 1000.0 / med, 2)
        if cuda:
            row.peak_mib = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    except Exception as exc:  # e.g. out of memory at batch 8: record it, go on with the rest
        row.error = " ".join(str(exc).split())[:200]
    finally:
        if cuda:
            model.to("cpu")
            torch.cuda.empty_cache()
    return row


def _reference_builders() -> dict[str, Callable[[], nn.Module]]:
    if importlib.util.find_spec("torchvision") is None:
        return {}
    from torchvision.models import segmentation as seg  # dev-only comparison, never a dependency
    return {name: (lambda n=name: getattr(seg, n)(weights=None, weights_backbone=None, num_classes=21))
            for name in REFERENCE_MODELS}


def _configs(device: torch.device) -> list[tuple[str, int]]:
    if device.type == "cuda":
        return [("fp32", 1), ("fp32", 8), ("fp16", 1), ("fp16", 8)]
    return [("fp32", 1)]


_HEAD = (f"{'model':<34} {'src':<11} {'dev':<4} {'prec':<4} {'bs':>2} {'ms/img':>9} {'img/s':>8} "
         f"{'peakMiB':>8} {'Mparams':>8}")


def _format_row(r: Row) -> str:
    def f(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0]))
    tail = f"  ERROR: {r.error}" if r.error else ""
    return (f"{r.model:<34} {r.source:<11} {r.device:<4} {r.precision:<4} {r.batch:>2} "
            f"{f(r.ms_per_image, '9.1f')} {f(r.images_per_s, '8.2f')} {f(r.peak_mib, '8.0f')} "
            f"{f(r.params_m, '8.2f')}{tail}")


def _print_table(rows: list[Row]) -> None:
    print(_HEAD)
    print("-" * len(_HEAD))
    for r in rows:
        print(_format_row(r))


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated registry names (default: all)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 10, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="fewer runs, for checking the script works")
    ap.add_argument("--size", type=int, default=513)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CPU rows, and CUDA rows when a GPU is present; cpu or cuda: that device's rows only")
    ap.add_argument("--no-reference", action="store_true", help="skip the torchvision reference rows")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/models_<device>.json)")
    args = ap.parse_args(argv)

    names = list_models() if not args.models else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in list_models()]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(list_models())}", file=sys.stderr)
        return 2
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    devices = ([] if args.device == "cuda" else [torch.device("cpu")]) + ([torch.device("cuda")] if use_cuda else [])
    if use_cuda:
        torch.backends.cudnn.benchmark = True

    refs = {} if args.no_reference else _reference_builders()
    if args.quick and refs:  # one (the cheapest) reference row shows the column works
        refs = {k: v for k, v in refs.items() if k == "deeplabv3_mobilenet_v3_large"}
    rows: list[Row] = []
    for device in devices:
        # Each reference right after our model of the same name, so both see the same machine load
        # (this CPU is shared; drift over a long run would otherwise favour one side).
        candidates = []
        for n in names:
            candidates.append((n, "deeplab-gui", lambda n=n: build_model(n, num_classes=21)))
            if n in refs:
                candidates.append((n, "torchvision", refs[n]))
        for name, source, build in candidates:
            torch.manual_seed(0)
            model = build()  # once per model: its configurations run fp32 first, then fp16 (channels_last)
            for precision, batch in _configs(device):
                row = bench_model(name, model, source, device, precision, batch, args.size, warmup, repeats)
                rows.append(row)
                print(_format_row(row), flush=True)  # progress while the full run takes a while
            del model
    print()
    _print_table(rows)

    tag = "cuda" if use_cuda else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"models_{tag}.json"
    payload = {
        "size": args.size, "repeats": repeats, "warmup": warmup, "cpu_threads": args.threads,
        "quick": args.quick, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if use_cuda else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": [asdict(r) for r in rows],
    }
    _write_json(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
