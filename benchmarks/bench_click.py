"""Speed of the click-segmentation models: the encoder (once per image) and a click (per prompt).

For every registered click model (random weights; a model whose builder fails is listed with its
error and skipped) on a 500×375 image:

- ``set_image``: preprocessing plus the image encoder at 1024×1024, what the user waits for once
  per image. Median of ``--encoder-runs`` after one warm-up; models over 50 M parameters get one
  run and no warm-up (tens of seconds each on a CPU; the spread is small next to that).
- ``predict``: one positive click, three masks at image size (prompt encoder, mask decoder and the
  upsampling), median of ``--predict-runs``: what a click waits for. On the CPU the models' clicks
  are timed in ``--rounds`` rounds, each a few clicks of every model after one warm-up, so the
  machine's slow phases (it is shared) fall on all of them alike; CUDA rows time each model's
  clicks in one go after two warm-ups.
- ``settled``: the same click with its low-resolution logits over the padding made as well (on a
  CPU SAM and MobileSAM make those after the masks; the app does so while the person looks at the
  candidates, and the next click's mask input reads them).
- ``--quiet GFLOPS``: the machine is shared and the same code runs up to half as long again in its
  slow phases (:func:`machine_speed`); with this, each round of clicks and MobileSAM's encoder (the
  one with a goal) wait for a quiet phase first, and the JSON keeps every reading (the other
  encoders' too), so a run says which machine it measured.
- ``followup``: the next click on the same object (a negative one), one mask, with the first
  click's best low-resolution logits as the mask prompt: what most clicks of an object cost.
- ``objects`` (CUDA): clicks as the app makes them, a predictor per image, four clicks an object
  (1-4 points, a mask prompt after the first), over six images: median / slowest click in ms. With
  the decoder's CUDA graphs (``--cuda-graphs``, both ways by default) this counts the recording of
  each new prompt signature, which the predictors of a model share. (Eagerly, the copy of the
  low-resolution logits to the CPU for the next click's prompt falls outside the timing; with graphs
  ``predict`` makes it.)

CPU: ``--threads`` threads (default 2, this project's build machines). CUDA, when present: fp32
(autocast off) and the predictor's own half precision (bfloat16 where supported, else float16),
with peak memory. Goals printed beside the figures: a click within 30 ms on the CPU, MobileSAM's
encoder within 1 s on the CPU. Prints a table and writes ``benchmarks/results/click_<device>.json``.

    python benchmarks/bench_click.py --models mobile_sam,sam_vit_b
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from engine.allocator import keep_freed_memory
from engine.click import ClickPredictor, build_click_model, list_click_models
from engine.click.graphs import DecoderGraphs

__all__ = ["Goals", "Row", "bench_click_model", "main"]

IMAGE_HW = (375, 500)        # a typical VOC photo, H×W
LARGE_PARAMS = 50_000_000    # above this, one encoder run is enough


@dataclass(frozen=True)
class Goals:
    """What a click model should reach on the CPU (``--threads`` threads)."""
    predict_ms_cpu: float = 30.0
    encoder_ms_cpu: dict = field(default_factory=lambda: {"mobile_sam": 1000.0})   # model -> ms


GOALS = Goals()


@dataclass
class Row:
    model: str
    device: str
    precision: str               # fp32, bf16, fp16
    params_m: float | None = None
    set_image_ms: float | None = None
    encoder_runs: int = 0
    predict_ms: float | None = None
    predict_runs: int = 0
    # CPU: the median of each round's clicks (the machine's phases show as rounds apart); the goal is
    # judged on predict_ms, the median of all of them
    predict_round_ms: list[float] = field(default_factory=list)
    settled_ms: float | None = None    # predict plus the rest of its logits (the next click's mask input)
    followup_ms: float | None = None   # a second click on the object: one mask, the first's logits as prompt
    peak_mib: float | None = None   # CUDA: max allocated over both measurements
    # CUDA: the decoder replayed recorded graphs (engine/click/graphs.py) or ran eagerly; None on a CPU
    cuda_graphs: bool | None = None
    graphs_failed: str | None = None   # why the predictor gave graphs up (then its clicks ran eagerly)
    # CUDA: clicks as the app makes them, a predictor per image (:meth:`_Clicks.objects`): median and
    # slowest click, first recordings included, and how many graphs were recorded meanwhile
    object_click_ms: float | None = None
    object_click_max_ms: float | None = None
    object_clicks: int = 0
    object_recordings: int | None = None
    goal: str = ""               # the CPU goals this row meets or misses, in words
    error: str | None = None


def _median_ms(fn, warmup: int, runs: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _goal_text(row: Row) -> str:
    if row.device != "cpu" or row.error:
        return ""
    parts = []
    if row.predict_ms is not None:
        ok = row.predict_ms <= GOALS.predict_ms_cpu
        parts.append(f"click {'ok' if ok else 'OVER'} (≤{GOALS.predict_ms_cpu:.0f} ms)")
    goal = GOALS.encoder_ms_cpu.get(row.model)
    if goal is not None and row.set_image_ms is not None:
        parts.append(f"encoder {'ok' if row.set_image_ms <= goal else 'OVER'} (≤{goal / 1000:g} s)")
    return ", ".join(parts)


class _Clicks:
    """One model's predictor with the image's embedding made, and its click times so far (ms)."""

    def __init__(self, row: Row, predictor: ClickPredictor, sync) -> None:
        self.row, self.predictor, self.sync = row, predictor, sync
        self.times: dict[str, list[float]] = {"predict": [], "settled": [], "followup": []}
        pred, click = predictor, np.array([[IMAGE_HW[1] / 2, IMAGE_HW[0] / 2]])
        first = pred.predict(click, [1])
        best = first.low_res_logits[int(np.argmax(first.scores))][None]
        two, labels = np.array([click[0], [IMAGE_HW[1] / 4, IMAGE_HW[0] / 4]]), [1, 0]
        self.calls = {"predict": lambda: pred.predict(click, [1]),
                      "settled": lambda: pred.predict(click, [1]).settle(),
                      "followup": lambda: pred.predict(two, labels, mask_input=best, multimask=False)}

    def run(self, warmup: int, runs: int) -> None:
        """``warmup`` untimed then ``runs`` timed calls of each kind (a round)."""
        start = len(self.times["predict"])
        for kind, call in self.calls.items():
            for _ in range(warmup):
                call()
            self.sync()
            for _ in range(runs):
                t = time.perf_counter()
                call()
                self.sync()
                self.times[kind].append((time.perf_counter() - t) * 1000)
        if runs:
            self.row.predict_round_ms.append(round(statistics.median(self.times["predict"][start:]), 2))

    def objects(self, images: int = 6, clicks: int = 4) -> None:
        """Clicks as the app makes them: a predictor per image (the same embedding: the speed does not
        depend on it), on each one object of ``clicks`` clicks, the k-th with k points and, after the
        first, the previous click's best logits as the mask prompt. A decoder replaying graphs records
        each new signature once, on the first image (the predictors share the model's graphs)."""
        model, device = self.predictor.model, self.predictor.device
        embedding = self.predictor.get_embedding()
        before = self.predictor.graphs.recorded if self.predictor.graphs is not None else None
        rng, times = np.random.default_rng(0), []
        for _ in range(images):
            pred = ClickPredictor(model, device)
            pred.graphs = self.predictor.graphs
            pred.set_embedding(embedding)
            prev = None
            points = rng.uniform(20, 300, (clicks, 2))
            for k in range(1, clicks + 1):
                self.sync()
                t = time.perf_counter()
                got = pred.predict(points[:k], [1] + [0] * (k - 1), mask_input=prev, multimask=k == 1)
                self.sync()
                times.append((time.perf_counter() - t) * 1000)
                prev = got.low_res_logits[int(np.argmax(got.scores))][None]
        r = self.row
        r.object_click_ms, r.object_click_max_ms = round(statistics.median(times), 2), round(max(times), 2)
        r.object_clicks = len(times)
        if before is not None:
            r.object_recordings = self.predictor.graphs.recorded - before

    def finish(self) -> Row:
        r = self.row
        r.predict_ms, r.settled_ms, r.followup_ms = (round(statistics.median(self.times[k]), 2)
                                                     for k in ("predict", "settled", "followup"))
        r.predict_runs = len(self.times["predict"])
        if self.predictor.device.type == "cuda":
            r.peak_mib = round(torch.cuda.max_memory_allocated(self.predictor.device) / 2**20, 1)
            graphs = self.predictor.graphs
            r.graphs_failed = graphs.failed if graphs is not None else None
        r.goal = _goal_text(r)
        return r


def _prepare(name: str, device: torch.device, precision: str, encoder_runs: int, graphs: bool = False,
             model: torch.nn.Module | None = None) -> tuple[Row, _Clicks | None]:
    """Build ``name`` (random weights) and time ``set_image``; the row (with its error, if any) and
    the model's clicks to time (None after an error). ``graphs`` (CUDA): the decoder replays recorded
    CUDA graphs, else it runs eagerly, whatever the predictor's default. ``model``: ``name`` already
    built (the CUDA rows build each model once for all their rows)."""
    row = Row(name, device.type, precision)
    cuda = device.type == "cuda"
    if cuda:
        row.cuda_graphs = graphs
    try:
        if model is None:
            torch.manual_seed(0)
            model = build_click_model(name)
    except Exception as exc:  # noqa: BLE001 - a family still being written: list it, go on with the rest
        row.error = "builder failed: " + " ".join(str(exc).split())[:160]
        row.goal = _goal_text(row)
        return row, None
    try:
        n_params = sum(p.numel() for p in model.parameters())
        row.params_m = round(n_params / 1e6, 3)
        pred = ClickPredictor(model, device)
        if cuda and precision == "fp32":
            pred._autocast = contextlib.nullcontext   # the predictor half-casts on CUDA by default
        if cuda:
            pred.graphs = DecoderGraphs(device) if graphs else None
        image = np.random.default_rng(0).integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        large = n_params > LARGE_PARAMS and not cuda   # one CPU run of ViT-H takes a minute
        runs = 1 if large else encoder_runs
        row.set_image_ms = round(_median_ms(lambda: pred.set_image(image), 0 if large else 1, runs, sync), 1)
        row.encoder_runs = runs
        return row, _Clicks(row, pred, sync)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: record it, go on with the rest
        row.error = " ".join(str(exc).split())[:200]
        row.goal = _goal_text(row)
        return row, None


def bench_click_model(name: str, device: torch.device, precision: str, encoder_runs: int,
                      predict_runs: int, graphs: bool = False, model: torch.nn.Module | None = None) -> Row:
    """One model's row, its clicks timed in one go (the CUDA rows; see :func:`bench_interleaved`)."""
    row, clicks = _prepare(name, device, precision, encoder_runs, graphs, model)
    if clicks is None:
        return row
    try:
        clicks.run(2, predict_runs)
        if device.type == "cuda":
            clicks.objects()
        return clicks.finish()
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: record it, go on with the rest
        row.error = " ".join(str(exc).split())[:200]
        row.goal = _goal_text(row)
        return row
    finally:
        del clicks
        if device.type == "cuda":
            torch.cuda.empty_cache()


def wait_quiet(gflops: float, limit_s: float, report=print, gbs: float = 0.0) -> dict:
    """Wait, checking every 10 s and at most ``limit_s`` seconds, until two readings of
    :func:`machine_speed` in a row show the shared machine's matrix product at ``gflops`` or more
    and, with ``gbs``, its memory at that many GB/s or more (its quiet phase: a click's decoder
    streams more memory than it multiplies, and the memory's speed swings by 2× on its own); a
    ``gflops`` of 0 returns at once. Returns the last reading and the seconds waited; what is
    timed after it is compared with the goals as on a machine to oneself, and the readings say so
    in the JSON."""
    t0, speed, ok = time.perf_counter(), machine_speed(10), 0
    while gflops:
        ok = ok + 1 if speed["gemm_gflops"] >= gflops and speed["add_gbs"] >= gbs else 0
        if ok >= 2 or time.perf_counter() - t0 >= limit_s:
            break
        if ok == 0:
            time.sleep(10)
        speed = machine_speed(10)
    waited = round(time.perf_counter() - t0, 1)
    if waited > 5:
        report(f"(waited {waited:.0f} s for the machine: {speed})")
    return {**speed, "waited_s": waited}


def bench_interleaved(names: list[str], encoder_runs: int, predict_runs: int, rounds: int = 5,
                      report=print, quiet: tuple[float, float, float] = (0.0, 0.0, 0.0), phases: list | None = None
                      ) -> list[Row]:
    """The CPU rows: every model's encoder in turn, then their clicks in ``rounds`` rounds, each
    round a few clicks of every model (one warm-up each, as a click after another model's), so a
    slow phase of the shared machine falls on all models alike instead of on whichever ran then.
    Every model stays loaded meanwhile (all eight: about 6 GB); each gets ``predict_runs`` clicks
    rounded up to a multiple of the rounds.

    ``quiet`` = (GFLOP/s, seconds, GB/s): before each round, and before each encoder that has a goal
    (MobileSAM's), wait up to that long for the machine's quiet phase (:func:`wait_quiet`); ``phases``
    gets each reading. The other encoders take seconds to a minute and have no goal: they run as the
    machine is, their readings beside them, instead of each waiting up to ``quiet[1]`` for a phase
    that can last an hour."""
    device = torch.device("cpu")
    rounds, predict_runs = max(1, rounds), max(1, predict_runs)
    phases = [] if phases is None else phases

    def gate(what: str, wait: bool = True) -> None:
        """With ``quiet``: wait for the quiet phase (or, not ``wait``, only read the machine's speed)."""
        if quiet[0]:
            speed = (wait_quiet(quiet[0], quiet[1], report=report, gbs=quiet[2]) if wait
                     else {**machine_speed(10), "waited_s": 0.0})
            phases.append({"before": what, **speed})

    prepared = []
    for name in names:
        gate(f"{name} encoder", wait=name in GOALS.encoder_ms_cpu)
        prepared.append(_prepare(name, device, "fp32", encoder_runs))
    per_round = max(1, -(-predict_runs // rounds))
    for row, clicks in prepared:   # first clicks after the encoder, as the sequential rows' two warm-ups
        if clicks is not None and row.error is None:
            try:
                clicks.run(2, 0)
            except Exception as exc:  # noqa: BLE001 - record it, go on with the rest
                row.error = " ".join(str(exc).split())[:200]
    for i in range(min(rounds, predict_runs)):
        gate(f"click round {i + 1}")
        for row, clicks in prepared:
            if clicks is not None and row.error is None:
                try:
                    clicks.run(1, per_round)
                except Exception as exc:  # noqa: BLE001 - record it, go on with the rest
                    row.error = " ".join(str(exc).split())[:200]
    rows = []
    for row, clicks in prepared:
        rows.append(clicks.finish() if clicks is not None and row.error is None else row)
        report(_format_row(rows[-1]))
    return rows


def _cuda_half_name() -> str:
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


_HEAD = (f"{'model':<22} {'dev':<4} {'prec':<4} {'decoder':<7} {'Mparams':>8} {'set_image ms':>13} {'n':>2} "
         f"{'click ms':>9} {'n':>3} {'settled':>8} {'next ms':>8} {'objects':>13} {'peakMiB':>8}  goals")


def _format_row(r: Row) -> str:
    def f(v, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0]))
    tail = f"  ERROR: {r.error}" if r.error else f"  {r.goal}"
    if r.graphs_failed:
        tail += f"  (graphs given up: {r.graphs_failed})"
    decoder = "" if r.cuda_graphs is None else "graph" if r.cuda_graphs else "eager"
    objects = "-" if r.object_click_ms is None else f"{r.object_click_ms:.2f}/{r.object_click_max_ms:.1f}"
    return (f"{r.model:<22} {r.device:<4} {r.precision:<4} {decoder:<7} {f(r.params_m, '8.2f')} "
            f"{f(r.set_image_ms, '13.1f')} "
            f"{r.encoder_runs:>2} {f(r.predict_ms, '9.2f')} {r.predict_runs:>3} {f(r.settled_ms, '8.2f')} "
            f"{f(r.followup_ms, '8.2f')} {objects:>13} "
            f"{f(r.peak_mib, '8.0f')}{tail}")


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated click model names (default: all registered)")
    ap.add_argument("--encoder-runs", type=int, default=3, help="timed set_image runs per small model (default 3)")
    ap.add_argument("--predict-runs", type=int, default=20, help="timed clicks per model (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="CPU: the clicks are timed in this many rounds over all models (default 5)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CPU rows, and CUDA rows when a GPU is present; cpu or cuda: that device's rows only")
    ap.add_argument("--quiet", type=float, default=0.0, metavar="GFLOPS",
                    help="CPU: before each round of clicks and each encoder with a goal, wait for the shared "
                         "machine's quiet phase, its 1024² product at this many GFLOP/s or more (an AMD EPYC host: "
                         "165 when quiet; an Intel Xeon host with AVX-512: 190-300); each reading goes into the "
                         "JSON (default 0: do not wait)")
    ap.add_argument("--quiet-gbs", type=float, default=0.0, metavar="GBS",
                    help="with --quiet: the quiet phase also has the machine's memory at this many GB/s or more "
                         "(a 4 MiB add; this machine: 45-90 when quiet, 20-40 in its slow phases; default 0)")
    ap.add_argument("--quiet-wait", type=float, default=600.0, metavar="S",
                    help="at most this many seconds for each such wait (default 600)")
    ap.add_argument("--cuda-graphs", choices=["both", "on", "off"], default="both",
                    help="CUDA: time the decoder replaying recorded CUDA graphs (on), eagerly (off), or each model "
                         "both ways (default)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. the machine's load)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/click_<device>.json)")
    args = ap.parse_args(argv)

    known = list_click_models()
    names = known if not args.models else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        print(f"unknown click model(s): {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()   # as the app and the command line run (engine.allocator)
    configs = [] if args.device == "cuda" else [(torch.device("cpu"), "fp32")]
    graph_modes = {"both": [False, True], "on": [True], "off": [False]}[args.cuda_graphs]
    if use_cuda:
        configs += [(torch.device("cuda"), "fp32"), (torch.device("cuda"), _cuda_half_name())]

    speed = [machine_speed()]
    print(f"machine before: {speed[0]}")
    print(_HEAD)
    print("-" * len(_HEAD))
    rows, phases = [], []
    if configs and configs[0][0].type == "cpu":
        rows += bench_interleaved(names, args.encoder_runs, args.predict_runs, args.rounds,
                                  report=lambda line: print(line, flush=True),
                                  quiet=(args.quiet, args.quiet_wait, args.quiet_gbs), phases=phases)
    cuda_configs = [(d, p) for d, p in configs if d.type == "cuda"]
    for name in names if cuda_configs else []:
        try:   # once for all its CUDA rows (ViT-H's random initialisation alone takes seconds)
            torch.manual_seed(0)
            model = build_click_model(name)
        except Exception:  # noqa: BLE001 - each row then builds it and reports the builder's error
            model = None
        for device, precision in cuda_configs:
            for graphs in graph_modes:
                row = bench_click_model(name, device, precision, args.encoder_runs, args.predict_runs, graphs,
                                        model)
                rows.append(row)
                print(_format_row(row), flush=True)
        del model
        torch.cuda.empty_cache()
    speed.append(machine_speed())
    print(f"machine after: {speed[1]}")
    cpu_rows = [r for r in rows if r.device == "cpu" and r.predict_round_ms]
    if cpu_rows and len(cpu_rows[0].predict_round_ms) > 1:
        print("click ms by round (the machine's phases): " + "; ".join(
            f"{r.model} {'/'.join(f'{v:.0f}' for v in r.predict_round_ms)}" for r in cpu_rows))

    tag = "cuda" if use_cuda else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"click_{tag}.json"
    payload = {
        "image": list(IMAGE_HW), "encoder_input": 1024, "cpu_threads": args.threads,
        "encoder_runs": args.encoder_runs, "predict_runs": args.predict_runs, "cpu_rounds": args.rounds,
        "goals": {"predict_ms_cpu": GOALS.predict_ms_cpu, "encoder_ms_cpu": GOALS.encoder_ms_cpu},
        "cpu_count": os.cpu_count(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "note": args.note, "allocator_keeps_freed_memory": kept, "machine_speed_before_after": speed,
        "quiet_gflops": args.quiet or None, "quiet_gbs": args.quiet_gbs or None, "machine_speed_at_each_wait": phases,
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu": cpu_name(), "gpu": torch.cuda.get_device_name(0) if use_cuda else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": [asdict(r) for r in rows],
    }
    _write_json(out, payload)
    print(f"wrote {out}")
    return 0


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what ``platform`` says: the shared
    build machines are not always the same processor, and the timings depend on it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_speed(repeats: int = 20) -> dict:
    """How fast the shared machine is just now, in the benchmark's threads: a 1024² float32 matrix
    product (GFLOP/s, median) and a 4 MiB add into a buffer already touched (GB/s read and written,
    median). The same code runs up to 1.5× slower in this shared machine's slow phases; these say
    which phase a run fell in (on the 2-core machine the product ran at 165-180 GFLOP/s while a
    MobileSAM click took 27 ms, and at 130-145 GFLOP/s while it took 32-36 ms).

    Measured on a thread of its own, with the count a new thread starts from (the benchmark's):
    bench_gui calls it from its UI thread, which runs torch with one thread (its readings were
    half the machine's, so its ``--quiet`` never saw a quiet phase), and an OpenMP team made there
    for the reading would stay and slow every click after it (engine.threads)."""
    got: dict = {}

    def measure() -> None:
        try:
            a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
            x, y = torch.randn(1 << 20), torch.empty(1 << 20)

            def median_s(fn) -> float:
                fn()
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
                return statistics.median(times)

            gemm = median_s(lambda: torch.mm(a, b))
            add = median_s(lambda: torch.add(x, 1.0, out=y))
            got["speed"] = {"gemm_gflops": round(2 * 1024 ** 3 / gemm / 1e9, 1),
                            "add_gbs": round(8 * (1 << 20) / add / 1e9, 1), "threads": torch.get_num_threads()}
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            got["error"] = exc

    reader = threading.Thread(target=measure, name="machine-speed")
    reader.start()
    reader.join()
    if "error" in got:
        raise got["error"]
    return got["speed"]


if __name__ == "__main__":
    sys.exit(main())
