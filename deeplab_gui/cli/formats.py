"""``deeplab-gui import FORMAT SRC FOLDER`` and ``deeplab-gui export FORMAT FOLDER OUT``.

One sub-command per label format of :data:`engine.formats.LABEL_FORMATS`, its flags built from the
format's options.  The formats are loaded only when ``import`` or ``export`` is the command, so the
other commands' ``--help`` stays instant.  Summary on stdout, each skipped image on stderr, every
failure one line on stderr (exit 1; 2 for a usage error such as a missing folder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, CLIError

__all__ = ["add_format_commands", "cmd_import", "cmd_export"]

_STATUSES = ("reviewed", "edited", "prelabeled")


def _option_args(p: argparse.ArgumentParser, options) -> None:
    for o in options:
        if o.type is None:
            p.add_argument(o.flag, dest=o.name, action="store_true", help=o.help)
            continue
        extra: dict[str, Any] = {"choices": o.choices} if o.choices else {"metavar": o.name.upper()}
        default = f" (default {o.default})" if o.default not in (None, False) else ""
        p.add_argument(o.flag, dest=o.name, type=o.type, default=o.default, help=o.help + default, **extra)


def add_format_commands(sub: Any, full: bool) -> None:
    """Add ``import`` and ``export``; ``full``: with one sub-command per format (loads the formats)."""
    formats = {}
    if full:
        from engine.formats import LABEL_FORMATS
        formats = dict(LABEL_FORMATS)
    readers = {n: f for n, f in formats.items() if f.read is not None}
    writers = {n: f for n, f in formats.items() if f.write is not None}
    imp = sub.add_parser("import", help="import a labelled dataset (COCO, labelme, mask folders, VOC, ...)",
                         description="Import the dataset at SRC (images and their labels) into FOLDER and its "
                                     "annotation store. 'deeplab-gui import FORMAT --help' shows a format's options.")
    isub = imp.add_subparsers(dest="format", metavar="FORMAT", parser_class=type(imp), required=True)
    for name, fmt in readers.items():
        p = isub.add_parser(name, help=fmt.summary, description=f"Import {fmt.summary} into FOLDER.")
        p.add_argument("src", metavar="SRC", help=fmt.src_help)
        p.add_argument("folder", metavar="FOLDER", help="the image folder to import into (created if missing)")
        p.add_argument("--overwrite", action="store_true", help="replace masks already edited or reviewed")
        p.add_argument("--status", choices=_STATUSES, default=None,
                       help="status of the imported masks (default reviewed: a dataset's masks are ground truth)")
        _option_args(p, fmt.import_options())
        p.set_defaults(func=cmd_import)
    exp = sub.add_parser("export", help="export masks as a labelled dataset (COCO, labelme, mask folders, VOC, ...)",
                         description="Export FOLDER's edited and reviewed masks (and images) to OUT. "
                                     "'deeplab-gui export FORMAT --help' shows a format's options.")
    esub = exp.add_subparsers(dest="format", metavar="FORMAT", parser_class=type(exp), required=True)
    for name, fmt in writers.items():
        p = esub.add_parser(name, help=fmt.summary, description=f"Export FOLDER's masks as {fmt.summary}.")
        p.add_argument("folder", metavar="FOLDER")
        p.add_argument("out", metavar="OUT")
        p.add_argument("--include-prelabeled", action="store_true", help="also export masks nobody corrected")
        p.add_argument("--as-is", action="store_true",
                       help="export edited masks whole (default: pixels nobody set are void / left out)")
        _option_args(p, fmt.export_options())
        p.set_defaults(func=cmd_export)


def _options(args: argparse.Namespace, options) -> dict[str, Any]:
    return {o.name: getattr(args, o.name) for o in options if getattr(args, o.name, None) is not None}


def _progress(desc: str):
    state: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:  # made on the first image, shown after 0.5 s: a quick failure prints one line
            from tqdm import tqdm
            state["bar"] = tqdm(total=total, file=sys.stderr, unit="img", desc=desc, dynamic_ncols=True, delay=0.5)
        state["bar"].update(done - state["bar"].n)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()
    return progress, close


def _skips(skipped: list[str]) -> str:
    for reason in skipped:
        print(f"warning: skipped: {reason}", file=sys.stderr)
    return f", {len(skipped)} skipped" if skipped else ""


def _folder_classes(folder: Path) -> Any:
    """The folder's class list when it already holds masks (a reader maps into it), else None."""
    if not folder.is_dir():
        return None
    from engine import AnnotationStore
    try:
        with AnnotationStore.open(folder, read_only=True, scan=False) as store:
            return store.classes if store.known_ids() else None
    except Exception:  # the import itself reports an unreadable store, in its own words
        return None


def cmd_import(args: argparse.Namespace) -> int:
    from engine import StoreError, StoreLockedError, one_line
    from engine.formats import LABEL_FORMATS, import_source

    fmt = LABEL_FORMATS[args.format]
    src, folder = Path(args.src), Path(args.folder)
    if not src.exists():
        raise CLIError(f"{src}: no such file or folder", EXIT_USAGE)
    progress, close = _progress(f"import {fmt.name}")
    try:
        source = fmt.read(src, classes=_folder_classes(folder), **_options(args, fmt.import_options()))
        rep = import_source(source, folder, status=args.status, overwrite=args.overwrite, progress=progress)
    except StoreLockedError as exc:
        raise CLIError(f"{exc} (close the other deeplab-gui window first)") from None
    except (StoreError, OSError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    finally:
        close()
    reasons = [reason for _key, reason in rep.skipped]  # each reason names its file
    if not rep.imported and rep.skipped:
        _skips(reasons[1:])
        raise CLIError(f"nothing imported into {rep.folder}, {len(reasons)} skipped: {reasons[0]}")
    tail = _skips(reasons)
    for _key, note in rep.notes:   # each note names its file
        print(f"note: {note}", file=sys.stderr)
    noted = f" ({len(rep.notes)} with shapes left out)" if rep.notes else ""
    print(f"import {fmt.name}: {len(rep.imported)} imported into {rep.folder}{noted}{tail}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine import AnnotationStore, StoreError, one_line
    from engine.formats import LABEL_FORMATS

    fmt = LABEL_FORMATS[args.format]
    if not Path(args.folder).is_dir():
        raise CLIError(f"{args.folder}: not a folder", EXIT_USAGE)
    try:  # read-only: an export works while the app has the folder open
        store = AnnotationStore.open(args.folder, read_only=True)
    except (StoreError, OSError) as exc:
        raise CLIError(f"{args.folder}: cannot open the annotation store ({one_line(exc)})") from None
    progress, close = _progress(f"export {fmt.name}")
    try:
        rep = fmt.write(store, Path(args.out), progress=progress, cancel=None,
                        include_prelabeled=args.include_prelabeled, confirmed_only=not args.as_is,
                        **_options(args, fmt.export_options()))
    except (StoreError, OSError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    finally:
        close()
        store.close()
    reasons = [f"{image_id}: {reason}" for image_id, reason in rep.skipped]
    if not rep.exported and rep.skipped:
        _skips(reasons[1:])
        raise CLIError(f"nothing exported to {rep.out}, {len(reasons)} skipped: {reasons[0]}")
    if not rep.exported:
        raise CLIError("nothing to export: no edited or reviewed masks"
                       + ("" if args.include_prelabeled else " (add --include-prelabeled for model masks)"))
    tail = _skips(reasons)
    print(f"export {fmt.name}: {len(rep.exported)} image(s) to {rep.out}{tail}")
    return 0
