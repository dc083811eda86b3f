"""CLI commands that work on a folder's annotation store: ``prelabel`` without ``--out``,
``export-voc`` and ``import-voc``.  No Qt; imported by :mod:`deeplab_gui.cli` only when needed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["prelabel_into_store", "cmd_export_voc", "cmd_import_voc"]


def _cli_error(message: str, code: int = 1) -> Exception:
    from .errors import CLIError
    return CLIError(message, code)


def _open_store(folder: str | Path, **kw: Any) -> Any:
    from engine import AnnotationStore, StoreError, StoreLockedError

    try:
        store = AnnotationStore.open(folder, **kw)
    except StoreLockedError as exc:
        raise _cli_error(f"{exc} (close the other deeplab-gui window first)") from None
    except (StoreError, OSError) as exc:
        raise _cli_error(f"{folder}: cannot open the annotation store ({exc})") from None
    if store.notice:
        print(f"note: {store.notice}", file=sys.stderr)
    return store


def _predict_for_store(predictor: Any, path: Path, refine: Callable[..., Any] | None,
                       params: Any) -> tuple[Any, Any]:
    """(H×W uint8 labels, C×h×w float32 probabilities on the store's capped grid) of one image file:
    :func:`engine.prelabel_store.predict_for_store`."""
    from engine.prelabel_store import predict_for_store
    return predict_for_store(predictor, path, refine, params)


def prelabel_into_store(folder: Path, predictor: Any, refine: Callable[..., Any] | None, *,
                        checkpoint: Path, recursive: bool, overwrite: bool) -> int:
    """Predict every image that has no person's mask and no pre-label by this checkpoint yet; masks and
    probabilities go into the store (:func:`engine.prelabel_store.prelabel_in_store`).

    Edited and reviewed masks are never replaced unless ``overwrite``.  Unreadable images and images
    too small to segment are recorded in the store with their reason and skipped.  Memory stays at
    :meth:`engine.predictor.Predictor.predict_with_probs`'s bound whatever the image size.
    """
    from tqdm import tqdm

    from engine import checkpoint_id
    from engine.prelabel_store import PrelabelError, prelabel_in_store

    with _open_store(folder, recursive=recursive or None) as store:
        mid = checkpoint_id(checkpoint)  # the app keys its cache the same way
        with tqdm(total=0, file=sys.stderr, unit="img", desc="prelabel", dynamic_ncols=True, delay=0.5) as bar:
            try:
                counts = prelabel_in_store(store, predictor, refine, model_id=mid, overwrite=overwrite,
                                           warn=lambda line: bar.write(line, file=sys.stderr),
                                           progress=bar.update, todo_known=lambda n: bar.reset(total=n))
            except PrelabelError as exc:
                raise _cli_error(str(exc)) from None
    print(counts.summary(overwrite), file=sys.stderr)
    if counts.todo and counts.written == 0 and counts.done_before == 0:
        raise _cli_error("no image could be processed")
    return 0


def _skipped_summary(skipped: list[str]) -> str:
    """``", K skipped: <first reason>"``, after listing every reason when there is more than one."""
    if len(skipped) > 1:
        for reason in skipped:
            print(f"warning: skipped: {reason}", file=sys.stderr)
    return f", {len(skipped)} skipped: {skipped[0]}" if skipped else ""


def cmd_export_voc(args: argparse.Namespace) -> int:
    from engine import StoreError, export_voc, one_line

    if not Path(args.folder).is_dir():
        raise _cli_error(f"{args.folder}: not a folder", 2)
    if not 0.0 <= args.val_fraction < 1.0:
        raise _cli_error(f"--val-fraction must be at least 0 and below 1, got {args.val_fraction}", 2)
    if args.void_border < 0:
        raise _cli_error(f"--void-border must be 0 or more pixels, got {args.void_border}", 2)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # made on the first image and shown after 0.5 s: a refusal or a quick failure prints one line
            from tqdm import tqdm
            bar = tqdm(total=total, file=sys.stderr, unit="img", desc="export-voc", dynamic_ncols=True, delay=0.5)
        bar.update(done - bar.n)
    try:
        rep = export_voc(args.folder, args.out, include_prelabeled=args.include_prelabeled,
                         void_border=args.void_border, val_fraction=args.val_fraction, seed=args.seed,
                         progress=progress, confirmed_only=not getattr(args, "as_is", False))
    except (StoreError, OSError, ValueError) as exc:
        raise _cli_error(one_line(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    skipped = _skipped_summary([f"{image_id}: {reason}" for image_id, reason in rep.skipped])
    if not rep.exported and rep.skipped:
        raise _cli_error(f"nothing exported to {rep.out}{skipped}")
    if not rep.exported:
        raise _cli_error("nothing to export: no edited or reviewed masks"
                         + ("" if args.include_prelabeled else " (add --include-prelabeled for model masks)"))
    print(f"export-voc: {len(rep.exported)} image(s) to {rep.out} (train {len(rep.train)}, val "
          f"{len(rep.val)}){skipped}", file=sys.stderr)
    return 0


def cmd_import_voc(args: argparse.Namespace) -> int:
    """Import VOCROOT into FOLDER.  A dataset that cannot be read (class list, split files) is refused
    with one line and FOLDER untouched; single bad images are skipped, listed, and the rest imported."""
    from engine import StoreError, StoreLockedError, import_voc, one_line

    if not Path(args.vocroot).is_dir():
        raise _cli_error(f"{args.vocroot}: not a folder", 2)
    try:
        rep = import_voc(args.vocroot, args.folder, split=args.split, overwrite=args.overwrite)
    except StoreLockedError as exc:
        raise _cli_error(f"{exc} (close the other deeplab-gui window first)") from None
    except (StoreError, OSError, ValueError) as exc:
        raise _cli_error(one_line(exc)) from None
    skipped = _skipped_summary([reason for _voc_id, reason in rep.skipped])  # each reason names its file
    if not rep.imported and rep.skipped:
        raise _cli_error(f"nothing imported into {rep.folder}{skipped}")
    print(f"import-voc: {len(rep.imported)} imported into {rep.folder}{skipped}", file=sys.stderr)
    return 0
