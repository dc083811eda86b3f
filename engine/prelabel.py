"""Pre-labelling a folder with several processes: ``torchrun --nproc_per_node=N -m engine.prelabel FOLDER
--weights W [--crf] [--out DIR] [--loader-workers K] [--batch B]`` (``deeplab-gui prelabel ... --workers N`` starts
the same ranks on one machine).

Who does what
    Rank 0 opens the folder's annotation store (its single-instance lock) and is the only process that
    writes to it.  It lists the images that still need a pre-label (sorted ids; images a person drew
    on are never touched, images already pre-labelled with this checkpoint are skipped, see
    :mod:`engine.prelabel_store`) and sends that list to every rank, so all ranks split the very same
    list: rank r predicts ``todo[r::world]``.  The other ranks hand their results to rank 0 through a
    spool of files beside the store (:mod:`engine.prelabel_spool`, which says why files); rank 0 takes
    them between its own images and writes them.  With ``--out DIR`` masks go to DIR/<stem>.png
    instead, named as the one-process command names them, again written by rank 0 alone.

Per rank
    Images are read and decoded in a ``torch.utils.data.DataLoader`` with ``--loader-workers`` worker
    processes; an unreadable or too small image travels as a value (its one-line message and reason)
    and is recorded in the store like the one-process command does.  The Predictor runs on
    ``cuda:LOCAL_RANK`` with CUDA (fp16 autocast and channels_last there), else on the CPU with the
    cores split between the ranks of the machine.  The CRF (``--crf``) runs on the store's capped
    probability grid, on the rank's device: with a GPU there (the CUDA CRF is tens of times faster
    than on the CPU, so moving it to CPU workers would make it the bottleneck), else on its cores.

Batches
    ``--batch B`` (default 8 with CUDA, where small images leave the GPU idle between launches, 1 on
    the CPU, where a batch gains little) gathers up to B consecutive images of the same size and runs
    them through the network together (:meth:`engine.predictor.Predictor.predict_batch_with_probs`).
    An image of another size or one that could not be read ends the group early, so a folder of mixed
    sizes simply runs in smaller batches.  The CRF, the hand-over and the trace stay per image, and the
    results are those of ``--batch 1`` (within float rounding).  A batch that fails for another reason
    than memory is redone one image at a time, so each image gets its own result or error.

Memory
    A rank holds at most the Predictor's bound for a batch (:meth:`engine.predictor.Predictor.
    memory_bound` with ``batch=B``: B times one image's labels at full size, probabilities on the
    capped grid and network activations; banded upsampling, so a huge photo never has C×H×W values
    anywhere), the B images of the batch being gathered plus those its loader has decoded ahead (one
    per loader worker), and one batch of results; a rank with ``--spool-limit`` results not yet taken
    by rank 0 waits.  Out of memory on a batch, its images are predicted one at a time and later
    batches are halved.

Cancel and resume
    Ctrl-C, or SIGTERM from torchrun, stops every rank: rank 0 leaves a ``stop`` mark that the others
    obey, and each store write is atomic (status first, then the mask file renamed into place, then
    the probabilities), so the store is consistent at every moment.  Results still in the spool are
    ingested by the next run when they came from the same checkpoint and the image has not changed,
    and dropped otherwise.  A rerun therefore does only what is left.
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PrelabelConfig", "build_parser", "main", "run"]

EXIT_CANCELLED = 130


@dataclass
class PrelabelConfig:
    folder: Path
    weights: Path | str
    arch: str | None = None
    crf: bool = False
    out: Path | None = None
    device: str = "auto"
    max_side: int | None = None
    recursive: bool = False
    overwrite: bool = False
    loader_workers: int = 2
    spool_limit: int = 4
    batch: int | None = None  # None: 8 with CUDA, 1 otherwise (see "Batches")


class _Stop(Exception):
    """Another rank or the launcher is gone: stop quietly."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.prelabel", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("--weights", required=True, metavar="CKPT|CATALOG_ID")
    p.add_argument("--arch", metavar="NAME")
    p.add_argument("--crf", action="store_true")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--device", default="auto", help="auto (CUDA: cuda:LOCAL_RANK), cpu or cuda")
    p.add_argument("--max-side", type=int, default=None, metavar="N")
    p.add_argument("--recursive", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--loader-workers", type=int, default=2, metavar="K",
                   help="processes reading and decoding images for each rank (0: in the rank itself)")
    p.add_argument("--spool-limit", type=int, default=4, metavar="N",
                   help="results a rank may hand over before it waits for rank 0")
    p.add_argument("--batch", type=int, default=None, metavar="B",
                   help="images of the same size run through the network together (default: 8 with CUDA, "
                        "1 on the CPU)")
    return p


def _config(ns: argparse.Namespace) -> PrelabelConfig:
    return PrelabelConfig(Path(ns.folder), ns.weights, ns.arch, ns.crf, Path(ns.out) if ns.out else None,
                          ns.device, ns.max_side, ns.recursive, ns.overwrite, max(0, ns.loader_workers),
                          max(1, ns.spool_limit), None if ns.batch is None else max(1, ns.batch))


# ---------------------------------------------------------------------------------------- ranks
def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _join() -> tuple[int, int]:
    """(rank, world) from torchrun's environment; the group only carries the plan, so gloo always."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 1
    import datetime

    import torch.distributed as dist
    # Ranks meet once, at the start; a long timeout so that rank 0 may take its time over the list.
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size()


def _broadcast(plan: dict | None, world: int) -> dict:
    if world <= 1:
        assert plan is not None
        return plan
    import torch.distributed as dist
    box = [plan]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _device(cfg: PrelabelConfig, world: int) -> str:
    import torch
    local = _env_int("LOCAL_RANK", 0)
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        gpu = local % torch.cuda.device_count()
        torch.cuda.set_device(gpu)   # what a bare "cuda" means in this rank (else every rank's GPU 0)
        return f"cuda:{gpu}"
    device = cfg.device
    if device == "auto":
        device = "cpu" if world > 1 else "auto"  # several ranks on one Apple GPU would only queue
    if device == "cpu" and world > 1:  # each rank gets its share of the machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, _env_int("LOCAL_WORLD_SIZE", world))))
    return device


_PARENT = os.getppid()


def _parent_gone() -> bool:
    """The launcher (torchrun's agent, or ``--workers``) died without stopping us: we were re-parented."""
    return os.getppid() != _PARENT


def _interrupt(signum: int, frame: Any) -> None:
    _STOPPING.set()
    _quiet()  # one stop is enough: a second signal must not break the clean-up of the first
    raise KeyboardInterrupt


_STOPPING = threading.Event()   # this process is stopping: its peers may vanish under its threads


def _unexpected(exc_type: type, exc: BaseException, tb: Any, thread: Any = None) -> None:
    """``sys.excepthook`` and ``threading.excepthook`` of ranks and loader workers. The helper
    threads of torch and multiprocessing (multiprocessing's resource sharer hands each decoded image
    from a loader worker to its rank, and reports its own failures through ``sys.excepthook``) fail
    with connection errors when the other side goes away as a run stops: nothing for the person to
    see. Anything else is one line, not a traceback."""
    if issubclass(exc_type, (ConnectionError, EOFError)) and (_STOPPING.is_set() or _parent_gone()
                                                              or _IN_LOADER_WORKER):
        return
    if issubclass(exc_type, (SystemExit, KeyboardInterrupt)):
        return
    from .errors import one_line
    where = f" in {thread.name}" if thread is not None else ""
    print(f"prelabel: unexpected error{where}: {one_line(exc) or exc_type.__name__}", file=sys.stderr)


def _unraisable(u: Any) -> None:
    """``sys.unraisablehook`` of ranks and loader workers: a clean-up (``__del__``) failing while the
    run stops is nothing for the person to see (a Ctrl-C that lands while a DataLoader iterator is
    being made leaves one whose ``__del__`` then fails on what it never set up; Python printed that
    as a traceback); anything else is one line, as :func:`_unexpected`."""
    if _STOPPING.is_set() or _parent_gone():
        return
    _unexpected(u.exc_type, u.exc_value, u.exc_traceback)


def _install_error_hooks() -> None:
    sys.excepthook = _unexpected
    threading.excepthook = lambda a: _unexpected(a.exc_type, a.exc_value, a.exc_traceback, a.thread)
    sys.unraisablehook = _unraisable


_IN_LOADER_WORKER = False


def _quiet() -> None:
    # A handler that does nothing, not SIG_IGN: a signal already delivered but not yet run (the
    # launcher's SIGTERM right behind a terminal's SIGINT) would then raise "Signal 15 ignored due
    # to race condition" wherever the clean-up happens to be.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _ignore)


def _ignore(signum: int, frame: Any) -> None:
    return None


# ---------------------------------------------------------------------------------------- loading
class _Images:
    """Dataset of (image id, path): yields (id, H×W×3 uint8 tensor or None, failure or None, signature)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, Any, tuple[str, str | None] | None, dict | None]:
        import warnings

        import torch

        from .imageio import read_image
        from .predictor import Predictor
        from .prelabel_store import failure_of
        from .store import ImageSignature
        image_id, path = self.items[index]
        try:
            sig = ImageSignature.of(path).to_dict()
            rgb = read_image(path)
            Predictor.check_image_size(*rgb.shape[:2], path=path)
        except Exception as exc:  # a value, not a raise: one bad file must not end the loader
            return image_id, None, failure_of(image_id, exc), None
        with warnings.catch_warnings():  # Pillow's arrays are read-only; nothing writes to this one
            warnings.simplefilter("ignore")
            return image_id, torch.from_numpy(rgb), None, sig  # a tensor crosses processes in shared memory


def _pass(sample: Any) -> Any:
    return sample


def _loader(items: list[tuple[str, str]], workers: int) -> Any:
    from torch.utils.data import DataLoader

    # Each loader worker dies with its rank: torch's own check compares the parent's pid with the one
    # it saw at start, so a worker forked just before its rank was killed waited forever (and kept
    # the terminal's stderr open).
    extra = {"prefetch_factor": 1, "persistent_workers": False,
             "worker_init_fn": functools.partial(_loader_worker_init, os.getpid())} if workers > 0 else {}
    return DataLoader(_Images(items), batch_size=None, shuffle=False, num_workers=workers,
                      collate_fn=_pass, **extra)


def _loader_worker_init(rank_pid: int, worker_id: int) -> None:
    from .prelabel_launch import die_with_parent
    global _IN_LOADER_WORKER
    _IN_LOADER_WORKER = True   # a connection lost under its threads means its rank is gone
    _install_error_hooks()
    die_with_parent(rank_pid)


def _predict_shard(cfg: PrelabelConfig, plan: dict, rank: int, world: int,
                   deliver: Callable[[Any], None], stopped: Callable[[], bool]) -> None:
    """Predict this rank's share of the plan, handing each result to ``deliver``."""
    from .checkpoints import load_model
    from .predictor import DEFAULT_MAX_SIDE, Predictor
    from .prelabel_spool import SpoolResult
    from .prelabel_store import failure_of, predict_for_store, trace

    items = [tuple(x) for x in plan["items"][rank::world]]
    if not items:
        return
    predictor = Predictor(load_model(plan["weights"], arch=cfg.arch), device=_device(cfg, world),
                          max_side=cfg.max_side or DEFAULT_MAX_SIDE)
    if plan.get("classes") is not None and list(plan["classes"]) != list(predictor.meta.class_names):
        from .classmap import ClassMap
        from .prelabel_store import fit_classes
        predictor = fit_classes(predictor, ClassMap.by_name(list(predictor.meta.class_names), plan["classes"]))
    refine, params = None, None
    if cfg.crf:
        from .crf import CRFParams
        from .crf import refine as crf_refine
        # On the rank's own device: the CRF's default is the first GPU, whichever rank runs it.
        refine, params = functools.partial(crf_refine, device=predictor.device), CRFParams()
    mid = plan["model_id"]
    batch = cfg.batch or (8 if predictor.device.type == "cuda" else 1)

    def send(image_id: str, rgb: Any, failure: Any, sig: Any, pred: Any = None) -> None:
        labels = probs = None
        if failure is None:
            try:
                labels, probs = predict_for_store(predictor if pred is None else _Computed(predictor, pred),
                                                  rgb.numpy(), refine, params)
                trace(image_id)
            except Exception as exc:  # reported per image; the shard goes on
                failure = failure_of(image_id, exc)
        del rgb, pred
        probs_file = None
        if mid and probs is not None and sig is not None:
            # The cache file is made here, by whichever rank predicted: its deflate was rank 0's (the one
            # writer's) bottleneck, ~2/3 of each store write.
            from .store.probcache import ImageSignature, encode_probs
            probs_file = encode_probs(probs, model_id=mid, signature=ImageSignature(**sig))
            probs = None
        message, reason = failure if failure is not None else (None, None)
        deliver(SpoolResult(image_id, mid, sig, labels, probs, message, reason, probs_file))

    group: list[tuple[str, Any, Any]] = []  # consecutive images of one size, read without failure

    def flush() -> None:
        preds: list[Any] = [None] * len(group)
        if len(group) > 1:
            try:
                preds = predictor.predict_batch_with_probs([rgb.numpy() for _, rgb, _ in group])
            except Exception:  # redone one image at a time below: each gets its own result or error
                preds = [None] * len(group)
        while group:
            if stopped():
                raise _Stop
            image_id, rgb, sig = group.pop(0)
            send(image_id, rgb, None, sig, preds.pop(0))
            del rgb

    for image_id, rgb, failure, sig in _loader(items, cfg.loader_workers):
        if stopped():
            raise _Stop
        if group and (failure is not None or tuple(rgb.shape) != tuple(group[0][1].shape)):
            flush()
        if failure is not None:
            send(image_id, None, failure, sig)
            continue
        group.append((image_id, rgb, sig))
        del rgb
        if len(group) >= batch:
            flush()
    flush()


class _Computed:
    """The predictor, with one image's prediction already made by a batch: ``predict_for_store`` takes
    it from here, so the CRF and everything after the network run per image exactly as with batch 1."""

    def __init__(self, predictor: Any, prediction: Any) -> None:
        self._predictor = predictor
        self._prediction = prediction

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict_with_probs(self, image: Any, *, max_pixels: int | None = None) -> Any:
        if max_pixels is not None:  # the batch made the store's grid; any other grid is predicted anew
            return self._predictor.predict_with_probs(image, max_pixels=max_pixels)
        return self._prediction


# ---------------------------------------------------------------------------------------- rank 0
def _run_main(cfg: PrelabelConfig, world: int) -> int:
    """Rank 0: plan, share the plan, predict its own share and write everyone's results."""
    import contextlib

    from tqdm import tqdm

    from .checkpoints import load_model
    from .errors import one_line
    from .prelabel_spool import Spool
    from .prelabel_store import PrelabelError
    from .prelabel_writer import Writer, finish, plan_out, plan_store

    # Shown after a moment: a run that stops at once (a locked store, a bad checkpoint) prints its
    # one line without an empty bar before it.
    bar = tqdm(total=0, file=sys.stderr, unit="img", desc="prelabel", dynamic_ncols=True, delay=0.5)
    writer = Writer(cfg, bar)
    spool: Spool | None = None
    shared = complete = False
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        try:
            try:
                weights = _resolve_weights(cfg.weights)
                meta = load_model(weights, arch=cfg.arch).meta
                plan = plan_out(cfg, writer, meta) if cfg.out else plan_store(cfg, stack, writer, weights, meta)
            except PrelabelError as exc:
                _broadcast({"error": str(exc)}, world)
                shared = True
                raise
            except Exception as exc:
                msg = one_line(exc) or "cannot start"
                if isinstance(exc, OSError) and not str(exc).startswith(str(cfg.folder)):
                    msg = f"{cfg.folder}: {msg}"
                _broadcast({"error": msg}, world)
                shared = True
                raise PrelabelError(msg) from None
            plan["weights"] = str(weights)
            _broadcast(plan, world)
            shared = True
            spool = Spool(Path(plan["spool"]), 0)
            bar.reset(total=len(plan["items"]))

            def take_spooled() -> None:
                for path in spool.ready():
                    res = spool.read(path)
                    if res is not None:
                        writer.take(res)
                    path.unlink(missing_ok=True)

            def deliver(res: Any) -> None:
                writer.take(res)
                take_spooled()
            _predict_shard(cfg, plan, 0, world, deliver, _parent_gone)
            waiting = set(range(1, world))
            while waiting:
                if _parent_gone():
                    raise _Stop
                take_spooled()
                for r in sorted(waiting):
                    if spool.has(f"r{r}.failed"):
                        writer.warn(f"warning: rank {r} stopped: {one_line(spool.note(f'r{r}.failed'))}")
                        waiting.discard(r)
                    elif spool.has(f"r{r}.end"):
                        waiting.discard(r)
                if waiting:
                    time.sleep(0.02)
            take_spooled()
            complete = True
        except (KeyboardInterrupt, _Stop):
            if not shared:
                raise
            bar.close()
            done = writer.sink.counts.written if writer.sink else writer.written
            print(f"prelabel: cancelled after {done} image(s); run it again to go on where it stopped",
                  file=sys.stderr)
            return EXIT_CANCELLED
        finally:
            if spool is not None:
                spool.mark("stop")  # the others stop at their next image, even if they got no signal
                if complete:  # every rank is done: nothing will read the marks (else the next run clears them)
                    spool.remove_if_empty()
    return finish(cfg, writer)


def _resolve_weights(spec: Path | str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    from .weights import resolve_weights
    return Path(resolve_weights(str(spec)))


def _run_other(cfg: PrelabelConfig, rank: int, world: int) -> int:
    """Ranks > 0: predict their share and hand each result over through the spool."""
    from .errors import one_line
    from .prelabel_spool import Spool

    plan = _broadcast(None, world)
    if "error" in plan:
        return 1  # rank 0 says why
    spool = Spool(Path(plan["spool"]), rank)

    def stopped() -> bool:
        return _parent_gone() or spool.has("stop")

    def deliver(res: Any) -> None:
        spool.put(res)
        while spool.pending() >= cfg.spool_limit:  # rank 0 is behind: wait rather than pile up
            if stopped():
                raise _Stop
            time.sleep(0.02)
    try:
        _predict_shard(cfg, plan, rank, world, deliver, stopped)
    except (KeyboardInterrupt, _Stop):
        return EXIT_CANCELLED
    except Exception as exc:
        spool.mark(f"r{rank}.failed", one_line(exc) or type(exc).__name__)
        print(f"prelabel: rank {rank}: {one_line(exc)}", file=sys.stderr)
        return 1
    spool.mark(f"r{rank}.end")
    return 0


def run(cfg: PrelabelConfig) -> int:
    """One rank of a run (rank 0 of 1 without torchrun's environment); returns the exit status."""
    from .prelabel_store import PrelabelError
    signal.signal(signal.SIGTERM, _interrupt)  # torchrun stops its workers with SIGTERM
    signal.signal(signal.SIGINT, _interrupt)
    _install_error_hooks()
    rank, world = _join()
    try:
        if rank == 0:
            try:
                return _run_main(cfg, world)
            except PrelabelError as exc:
                print(f"prelabel: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("prelabel: cancelled", file=sys.stderr)
                return EXIT_CANCELLED
            except Exception as exc:  # the store is closed and consistent; say what happened in one line
                from .errors import one_line
                print(f"prelabel: {one_line(exc) or type(exc).__name__}", file=sys.stderr)
                return 1
        return _run_other(cfg, rank, world)
    finally:
        _STOPPING.set()
        _quiet()  # the run is over (or cancelled): let the interpreter shut down undisturbed
        if world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from .allocator import keep_freed_memory
    keep_freed_memory()   # one buffer size after another: reused, not fresh pages each time
    return run(_config(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
