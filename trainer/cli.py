"""Command-line fine-tuning, shared by ``deeplab-gui train`` and ``python -m trainer`` / torchrun.

Which model: ``--weights CKPT|CATALOG_ID``, ``--new ARCH`` (a folder's first model), else the folder's
current version.  Progress goes to
stderr (rank 0 only); the exit status is 0 when a checkpoint was written, 1 on failure with one
line saying why, 130 when interrupted (nothing written then).
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from .recipe import LIMITS, RecipeError, check_value

__all__ = ["add_train_arguments", "run_training", "recipe_from_args"]


def _checked(field: str):
    """An argparse ``type`` for recipe field ``field``: parses the text and refuses what the recipe would,
    so a bad value fails at once, naming the option, instead of after loading a model."""
    kind = LIMITS[field][0]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'a whole number' if kind is int else 'a number'}, not {text!r}") from None
        try:
            return check_value(field, value)
        except RecipeError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None
    parse.__name__ = field
    return parse


# command-line option (argparse dest) -> Recipe field
_FIELDS = {"iterations": "iterations", "crop": "crop", "lr": "lr", "batch_size": "batch_size",
           "accumulate": "accumulate", "time_budget": "time_budget_s", "heldout_fraction": "heldout_fraction",
           "eval_every": "eval_every", "seed": "seed"}
_OPTIONS = {field: "--" + dest.replace("_", "-") for dest, field in _FIELDS.items()}


def add_train_arguments(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """The ``train`` options beyond FOLDER, --weights, --iterations, --crop and --out (which
    ``positional`` adds too, for ``python -m trainer``)."""
    if positional:
        p.add_argument("folder", metavar="FOLDER", help="image folder with edited/reviewed masks")
        p.add_argument("--weights", metavar="CKPT|CATALOG_ID",
                       help="model to start from (default: the folder's current fine-tuned version)")
        p.add_argument("--iterations", type=_checked("iterations"), metavar="N",
                       help="optimiser steps (default 300)")
        p.add_argument("--crop", type=_checked("crop"), metavar="S",
                       help="training crop size in pixels (default 321)")
        p.add_argument("--out", metavar="CKPT", help="write the checkpoint here instead of as a new "
                                                     "version in the folder's store")
    p.add_argument("--new", metavar="ARCH", help="start a new ARCH model instead (the folder's classes; "
                   "backbone from cached ImageNet weights when present, else from scratch)")
    p.add_argument("--lr", type=_checked("lr"), metavar="LR",
                   help="backbone learning rate, in (0, 1] (head ×10; default 0.001)")
    p.add_argument("--batch-size", type=_checked("batch_size"), metavar="N",
                   help="crops per step and process (default 4)")
    p.add_argument("--accumulate", type=_checked("accumulate"), metavar="N", help="micro-batches per step (default 1)")
    p.add_argument("--time-budget", type=_checked("time_budget_s"), metavar="SECONDS",
                   help="stop training after this long")
    p.add_argument("--heldout-fraction", type=_checked("heldout_fraction"), metavar="F",
                   help="share held out, in [0, 1) (default 0.2)")
    p.add_argument("--eval-every", type=_checked("eval_every"), metavar="N", help="validate every N steps (default 50)")
    p.add_argument("--bn", choices=("auto", "frozen", "train"), default="auto",
                   help="BatchNorm: frozen below 8 crops per process (auto), always frozen, or trained")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_checked("seed"), metavar="S")
    p.add_argument("--confirm", action="store_true",
                   help="make the new version current even if held-out mIoU dropped")


def recipe_from_args(args: argparse.Namespace):
    """The Recipe of ``args``; ValueError naming the option when a value is out of range (a parser
    other than ours, such as deeplab-gui's for --iterations and --crop, may let one through)."""
    from .recipe import Recipe

    kw = {dst: getattr(args, src) for src, dst in _FIELDS.items() if getattr(args, src, None) is not None}
    bn = getattr(args, "bn", None) or "auto"
    try:
        return Recipe(device=getattr(args, "device", None) or "auto",
                      freeze_bn=None if bn == "auto" else bn == "frozen", **kw)
    except RecipeError as exc:
        raise ValueError(f"{_OPTIONS.get(exc.field, exc.field)} {exc.reason}") from None


def _load_start_model(args, store):
    import engine
    from engine import Versions

    new = getattr(args, "new", None)
    if new:
        if args.weights:
            raise ValueError("--new and --weights exclude each other: start a new model or from weights")
        from .start import new_model
        if new not in engine.list_models():
            raise ValueError(f"--new {new}: unknown architecture; choose from {', '.join(engine.list_models())}")
        return (lambda: new_model(new, store.class_names, store.class_colors)), f"new {new}"
    if args.weights:
        path = engine.resolve_weights(args.weights)
        return engine.load_model(path), str(path)
    current = Versions.of(store).current_path()
    if current is None:
        raise ValueError("no model to start from: pass --weights CKPT, or --new ARCH to start a new model "
                         "(this folder has no fine-tuned version yet)")
    return engine.load_model(current), current.name


def run_training(args: argparse.Namespace, *, cancel: threading.Event | None = None) -> int:
    """Fine-tune per ``args``; raises ValueError/TrainError/OSError with a one-line reason on failure."""
    from engine import AnnotationStore, Versions, one_line

    from . import ddp
    from .guards import check_out_path
    from .loop import FineTune

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    recipe = recipe_from_args(args)
    info = ddp.init_from_env(recipe.device)
    try:
        if info.is_main and args.out is not None:  # fail now, not after the whole run
            try:
                check_out_path(args.out)
            except ValueError as exc:
                raise ValueError(f"--out {exc}") from None
        # Only rank 0 writes, so only it takes the store's instance lock.
        with AnnotationStore.open(folder, read_only=not info.is_main) as store:
            notice = Versions.of(store).notice if info.is_main else None
            if notice:  # a damaged versions.json: rebuilt, but the person should know
                print(f"note: {one_line(notice)}", file=sys.stderr, flush=True)
            model, parent = _load_start_model(args, store)
            run = FineTune(store, model, recipe, parent=parent, confirm=args.confirm, out=args.out,
                           cancel=cancel)
            for ev in run:
                if info.is_main:
                    _print_event(ev)
            result = run.result
        if info.is_main and result is not None and result.checkpoint is not None:
            print(str(result.checkpoint))
        return 0 if result is not None and result.status == "done" else 130
    finally:
        ddp.cleanup()


def _print_event(ev) -> None:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    if ev.phase == "train":
        if ev.step == 1 or ev.step % 10 == 0 or ev.step == ev.total:
            print(f"step {ev.step}/{ev.total}  loss {f(ev.loss, '.4f')}  lr {f(ev.lr, '.2e')}  "
                  f"mIoU {f(ev.miou, '.3f')}  {f(ev.images_per_s, '.1f')} img/s  ETA {f(ev.eta_s, '.0f')} s",
                  file=sys.stderr, flush=True)
    elif ev.message:
        print(ev.message, file=sys.stderr, flush=True)
