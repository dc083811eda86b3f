"""The ``deeplab-gui`` command: one entry point, one subcommand per job.

``deeplab-gui [FOLDER]`` opens the app; ``prelabel``, ``train``, ``import FORMAT``, ``export FORMAT``
(``import-voc`` / ``export-voc`` are ``import voc`` / ``export voc`` as they always were) run
without a display.  Only the GUI path imports Qt, and heavy modules (torch, the engine) are imported
inside the commands that need them, so ``--help`` is instant.  Every failure ends with a non-zero
exit status and one line on stderr; set ``DEEPLAB_GUI_DEBUG=1`` to get the traceback as well.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import EXIT_FAILURE, EXIT_USAGE, CLIError

__all__ = ["main", "build_parser", "CLIError", "COMMANDS"]

PROG = "deeplab-gui"
COMMANDS = ("gui", "prelabel", "train", "import", "export", "export-voc", "import-voc")

class _Parser(argparse.ArgumentParser):
    # argparse prints usage plus the error and exits; we want exactly one line and to return a code.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(f"{self.prog}: error: {message}", EXIT_USAGE)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("deeplab-gui")
    except Exception:
        return "unknown"


def build_parser(*, formats: bool = False) -> argparse.ArgumentParser:
    """The command line; ``formats=True`` adds ``import``/``export``'s per-format sub-commands (they
    load the label formats, which the other commands do not need)."""
    p = _Parser(prog=PROG, description="Label images for semantic segmentation with DeepLab pre-labels, "
                "a dense CRF and your corrections; export PASCAL VOC.",
                epilog=f"'{PROG} FOLDER' is short for '{PROG} gui FOLDER'.")
    p.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    p.add_argument("--self-test", action="store_true",
                   help="check this installation (Qt, model, prediction, both CRF backends, store, VOC "
                        "export) in a few seconds, headless; exit 0 when all pass")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("gui", help="open the app (the default command)", description="Open the app.")
    g.add_argument("folder", nargs="?", help="image folder to open")
    g.set_defaults(func=_cmd_gui)

    pl = sub.add_parser("prelabel", help="predict masks for every image in a folder",
                        description="Predict a class-index mask for every image in FOLDER.")
    pl.add_argument("folder", metavar="FOLDER", help="folder of images")
    pl.add_argument("--weights", metavar="CKPT|CATALOG_ID",
                    help="checkpoint file (native .safetensors, torchvision, VainF or kazuto1011 .pth) or "
                         "a weights catalog id")
    pl.add_argument("--arch", metavar="NAME", help="architecture (registry name); detected from the "
                                                   "checkpoint's keys when omitted")
    pl.add_argument("--crf", action="store_true", help="refine each prediction with the dense CRF")
    pl.add_argument("--out", metavar="DIR", help="write DIR/<image stem>.png (palette PNG, class "
                                                 "indices, VOC colours); without it, masks and "
                                                 "probabilities go into the folder's annotation store")
    pl.add_argument("--device", default="auto", help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, "
                                                     "cuda:N or mps")
    pl.add_argument("--max-side", type=int, default=None, metavar="N",
                    help="cap on the longer side the network sees (default 1024); masks are always "
                         "written at full size")
    pl.add_argument("--recursive", action="store_true", help="include sub-folders (mirrored under DIR)")
    pl.add_argument("--overwrite", action="store_true",
                    help="without --out: also replace masks a person edited or reviewed (never by default)")
    pl.add_argument("--workers", type=int, default=1, metavar="N",
                    help="predict with N processes on this machine (as torchrun -m engine.prelabel does; "
                         "one GPU each when there are enough)")
    pl.add_argument("--batch", type=int, default=None, metavar="B",
                    help="images of the same size run through the network together (default: 8 with CUDA, "
                         "1 on the CPU); runs as the ranks of --workers do, even with one")
    pl.add_argument("--loader-workers", type=int, default=None, metavar="K",
                    help="processes reading and decoding images for each rank (default 2; 0: in the rank "
                         "itself); runs as the ranks of --workers do, even with one")
    pl.set_defaults(func=_cmd_prelabel)

    t = sub.add_parser("train", help="fine-tune on the folder's corrected masks",
                       description="Fine-tune the model on FOLDER's edited/reviewed masks; the new version "
                                   "becomes current when held-out mIoU did not drop (or with --confirm).")
    t.add_argument("folder", metavar="FOLDER")
    t.add_argument("--weights", metavar="CKPT", help="start from this checkpoint (default: the folder's "
                                                      "current fine-tuned version)")
    t.add_argument("--iterations", type=int, metavar="N")
    t.add_argument("--crop", type=int, metavar="S")
    t.add_argument("--out", metavar="CKPT", help="write the result here instead of a new version in the store")
    from . import train as cli_train
    cli_train.add_arguments(t)
    t.set_defaults(func=lambda a: cli_train.cmd_train(a))

    e = sub.add_parser("export-voc", help="export masks as a PASCAL VOC dataset",
                       description="Export FOLDER's edited and reviewed masks (and images) as a PASCAL VOC "
                                   "dataset in OUT: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/.")
    e.add_argument("folder", metavar="FOLDER")
    e.add_argument("out", metavar="OUT")
    e.add_argument("--include-prelabeled", action="store_true", help="also export masks nobody corrected")
    e.add_argument("--as-is", action="store_true", help="export edited masks whole (default: pixels nobody set are void)")
    e.add_argument("--void-border", type=int, default=0, metavar="N",
                   help="mark N pixels along class boundaries as void (255), as VOC does (default 0)")
    e.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="share of images in val.txt")
    e.add_argument("--seed", type=int, default=0, help="seed of the deterministic train/val split")
    e.set_defaults(func=lambda a: _store_cmd("cmd_export_voc", a))

    i = sub.add_parser("import-voc", help="import a PASCAL VOC dataset",
                       description="Import the VOC dataset at VOCROOT (images and P-mode or colour-coded "
                                   "masks) into FOLDER and its annotation store.")
    i.add_argument("vocroot", metavar="VOCROOT")
    i.add_argument("folder", metavar="FOLDER")
    i.add_argument("--split", metavar="NAME", help="only the ids in ImageSets/Segmentation/NAME.txt")
    i.add_argument("--overwrite", action="store_true", help="replace masks already edited or reviewed")
    i.set_defaults(func=lambda a: _store_cmd("cmd_import_voc", a))

    from .formats import add_format_commands
    add_format_commands(sub, formats)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `deeplab-gui` and `deeplab-gui FOLDER` mean the GUI; argparse cannot mix an optional positional
    # with subcommands, so the default command is inserted here.
    if not args_list or (args_list[0] not in COMMANDS and not args_list[0].startswith("-")):
        args_list.insert(0, "gui")
    try:
        # Only import/export need the label formats loaded; the other commands' help stays instant.
        full = {"formats": True} if args_list[0] in ("import", "export") else {}
        args = build_parser(**full).parse_args(args_list)
    except CLIError as exc:
        _error_line(str(exc))
        return exc.code
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    if args.self_test:  # same code in source and frozen form; it prints its own report
        from .selftest import run_self_test
        return run_self_test()
    # Many images of one size in a row: their buffers reused, not fresh pages each (engine.allocator).
    from engine.allocator import keep_freed_memory
    keep_freed_memory()
    try:
        return int(args.func(args))
    except CLIError as exc:
        _error_line(f"{PROG} {args.command}: {exc}")
        return exc.code
    except KeyboardInterrupt:
        _error_line(f"{PROG} {args.command}: interrupted")
        return 130
    except Exception as exc:  # last resort: still one line, never a traceback (unless debugging)
        if os.environ.get("DEEPLAB_GUI_DEBUG"):
            traceback.print_exc()
        # A bug of ours, not the person's input: say so in words; the traceback is one variable away.
        _error_line(f"{PROG} {args.command}: unexpected failure ({_one_line(exc) or 'no details'}); "
                    f"run again with DEEPLAB_GUI_DEBUG=1 to see where")
        return EXIT_FAILURE


def _one_line(exc: BaseException | str) -> str:
    from engine import one_line  # here, not at the top: importing the engine loads torch
    return one_line(exc)


def _error_line(text: str) -> None:
    print(_one_line(text), file=sys.stderr)


# ---------------------------------------------------------------------------- commands
def _cmd_gui(args: argparse.Namespace) -> int:
    if args.folder is not None and not Path(args.folder).is_dir():
        raise CLIError(f"{args.folder}: not a folder", EXIT_USAGE)
    from .. import app  # the app (and with it Qt) is only imported on this path
    return int(app.main(args.folder))


def _store_cmd(name: str, args: argparse.Namespace) -> int:
    from . import store as cli_store
    return int(getattr(cli_store, name)(args))


def _cmd_prelabel(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise CLIError(f"{folder}: not a folder", EXIT_USAGE)
    if args.weights is None:
        raise CLIError("--weights is required: a checkpoint file or a weights catalog id", EXIT_USAGE)
    if args.max_side is not None and args.max_side < 16:
        raise CLIError(f"--max-side must be at least 16, not {args.max_side}", EXIT_USAGE)
    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, not {args.workers}", EXIT_USAGE)
    for flag, value, least in (("--batch", args.batch, 1), ("--loader-workers", args.loader_workers, 0)):
        if value is not None and value < least:
            raise CLIError(f"{flag} must be at least {least}, not {value}", EXIT_USAGE)
    refine = _load_crf() if args.crf else None
    if args.workers > 1 or args.batch is not None or args.loader_workers is not None:
        return _prelabel_workers(args)
    if args.out is None:
        from .store import prelabel_into_store
        checkpoint = _resolve_weights(args.weights)
        predictor = _make_predictor(_load_model(str(checkpoint), args.arch), args)
        return prelabel_into_store(folder, predictor, refine, checkpoint=checkpoint,
                                   recursive=args.recursive, overwrite=args.overwrite)

    from engine import list_images
    out_dir = Path(args.out)
    images = [p for p in list_images(folder, recursive=args.recursive) if not _is_inside(p, out_dir)]
    if not images:
        raise CLIError(f"{folder}: no images found", EXIT_FAILURE)
    targets = _output_paths(images, folder, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{out_dir}: cannot create output folder ({exc.strerror or exc})") from None

    predictor = _make_predictor(_load_model(args.weights, args.arch), args)
    return _run_prelabel(predictor, targets, refine)


def _prelabel_workers(args: argparse.Namespace) -> int:
    """``--workers N``: the ranks of ``engine.prelabel``, started here; each prints its own reasons."""
    from engine.prelabel_launch import launch_local
    argv = [args.folder, "--weights", str(_resolve_weights(args.weights)), "--device", args.device]
    argv += ["--arch", args.arch] if args.arch else []
    argv += ["--out", args.out] if args.out else []
    argv += ["--max-side", str(args.max_side)] if args.max_side else []
    argv += ["--batch", str(args.batch)] if args.batch else []
    argv += ["--loader-workers", str(args.loader_workers)] if args.loader_workers is not None else []
    argv += [flag for flag, on in (("--crf", args.crf), ("--recursive", args.recursive),
                                   ("--overwrite", args.overwrite)) if on]
    return launch_local(argv, args.workers)


def _make_predictor(model: Any, args: argparse.Namespace) -> Any:
    from engine import DEFAULT_MAX_SIDE, Predictor
    try:
        return Predictor(model, device=args.device, max_side=args.max_side or DEFAULT_MAX_SIDE)
    except (ValueError, RuntimeError) as exc:
        raise CLIError(_one_line(exc), EXIT_USAGE) from None


def _run_prelabel(predictor: Any, targets: dict[Path, Path], refine: Any) -> int:
    from tqdm import tqdm

    from engine import save_mask_png

    colors = list(predictor.meta.class_colors)
    todo = list(targets)
    skipped = 0
    written = 0
    bar = tqdm(total=len(todo), file=sys.stderr, unit="img", desc="prelabel", dynamic_ncols=True)

    def say(line: str) -> None:
        bar.write(_one_line(line), file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # Predictor warnings (out-of-memory fallbacks) become one tidy line above the progress bar.
        warnings.showwarning = lambda msg, *a, **k: say(f"warning: {msg}")
        results = _crf_results(predictor, todo, refine) if refine else predictor.predict_many(todo, labels=True)
        try:
            for path, result in results:
                if isinstance(result, Exception):
                    say(f"warning: skipped {_one_line(result)}")
                    skipped += 1
                else:
                    out = targets[Path(path)]
                    try:
                        out.parent.mkdir(parents=True, exist_ok=True)
                        save_mask_png(out, result, colors=colors[:255])
                        written += 1
                    except (OSError, ValueError) as exc:
                        say(f"warning: {out}: cannot write mask ({_one_line(exc)})")
                        skipped += 1
                bar.update(1)
        finally:
            bar.close()
    print(f"prelabel: wrote {written} mask(s), skipped {skipped}", file=sys.stderr)
    if written == 0:
        raise CLIError("no image could be processed", EXIT_FAILURE)
    return 0


def _crf_results(predictor: Any, paths: list[Path], refine: Any) -> Iterator[tuple[Path, Any]]:
    """(path, labels or error) like ``predict_many(labels=True)``, with the CRF between.

    The CRF runs on the store's capped probability grid, labels enlarged band by band, so memory is
    bounded as for pre-labelling into the store, whatever the image's size.
    """
    from engine.crf import CRFParams

    from .store import _predict_for_store

    params = CRFParams()
    for path in paths:
        try:
            labels, _ = _predict_for_store(predictor, path, refine, params)
            yield path, labels
        except Exception as exc:  # reported per image; the folder goes on
            yield path, exc


def _load_crf() -> Any:
    try:
        from engine.crf import CRFParams, refine  # noqa: F401  (CRFParams is used per image)
    except ImportError:
        raise CLIError("--crf needs engine.crf.refine, which is not available in this version; run "
                       "without --crf", EXIT_USAGE) from None
    return refine


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _output_paths(images: list[Path], folder: Path, out_dir: Path) -> dict[Path, Path]:
    """Image -> DIR/<stem>.png, sub-folders mirrored, named as the app's "Save elsewhere…" names them
    (:func:`~deeplab_gui.mask_names.mask_file_names`): ``a.jpg`` and ``a.png`` side by side get
    ``a.png`` and ``a.png.png``, so no mask overwrites another and no image is left out."""
    from ..editing.mask_names import mask_file_names
    rels = {img: img.relative_to(folder).as_posix() for img in images}
    names = mask_file_names(rels.values())
    return {img: out_dir / names[rel] for img, rel in rels.items()}


def _resolve_weights(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    looks_like_file = os.sep in spec or "/" in spec or path.suffix.lower() in (".pth", ".pt", ".safetensors", ".ckpt")
    if looks_like_file:
        raise CLIError(f"{spec}: no such checkpoint file", EXIT_USAGE)
    from engine import TqdmProgress, resolve_weights

    bar = TqdmProgress(f"downloading {spec}")
    try:
        return Path(resolve_weights(spec, progress=bar))
    except Exception as exc:  # unknown id, offline, hash mismatch: the catalog's message says which
        raise CLIError(_one_line(exc)) from None
    finally:
        bar.close()


def _load_model(spec: str, arch: str | None) -> Any:
    path = _resolve_weights(spec)
    from engine import load_model
    try:
        return load_model(path, arch=arch)
    except (ValueError, KeyError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CLIError(_one_line(msg)) from None
