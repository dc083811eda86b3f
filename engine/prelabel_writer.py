"""Rank 0 of a distributed pre-label run (:mod:`engine.prelabel`): the plan every rank splits, and the
one writer that puts every rank's results into the annotation store or the ``--out`` folder."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["Writer", "finish", "ingest_leftovers", "out_names", "plan_out", "plan_store"]


class Writer:
    """Rank 0's side: takes each result (its own or from the spool) into the store or DIR."""

    def __init__(self, cfg: Any, bar: Any) -> None:
        self.cfg, self.bar = cfg, bar
        self.store = self.sink = self.names = self.colors = None
        self.written = self.failed = 0

    def warn(self, line: str) -> None:
        from .errors import one_line
        self.bar.write(one_line(line), file=sys.stderr)

    def take(self, res: Any) -> None:
        if self.sink is not None:
            if res.failed:
                self.sink.fail(res.image_id, res.message or res.image_id, res.reason)
            else:
                self.sink.put(res.image_id, res.labels, res.probs, res.probs_file, res.signature)
        else:
            self._write_out(res)
        self.bar.update(1)

    def _write_out(self, res: Any) -> None:
        from .errors import one_line
        from .labels import save_mask_png
        if res.failed:
            self.warn(f"warning: skipped {res.message}")
            self.failed += 1
            return
        out = self.cfg.out / self.names[res.image_id]
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            save_mask_png(out, res.labels, colors=self.colors[:255])
            self.written += 1
        except (OSError, ValueError) as exc:
            self.warn(f"warning: {out}: cannot write mask ({one_line(exc)})")
            self.failed += 1



def out_names(ids: list[str]) -> dict[str, str]:
    """Image id -> mask name under DIR: ``<stem>.png``, later clashes keep their whole name (``a.png.png``),
    compared without case; the same rule as the one-process command's ``--out``."""
    from pathlib import PurePosixPath

    from .fileio import fitted_name
    names: dict[str, str] = {}
    taken: set[str] = set()
    for image_id in ids:
        rel = PurePosixPath(image_id)
        name, whole = rel.with_suffix(".png"), rel.name
        while str(name).casefold() in taken:
            whole = fitted_name(whole, ".png")
            name = rel.with_name(whole)
        taken.add(str(name).casefold())
        names[image_id] = str(name)
    return names


def ingest_leftovers(spool: Any, store: Any, model_id: str, overwrite: bool, writer: Any) -> int:
    """Write what a killed run handed over but never stored, when it still applies; drop the rest."""
    from .prelabel_store import is_done
    from .store import ImageSignature
    taken = 0
    for path in spool.ready():
        res = spool.read(path)
        try:
            if res is None or res.failed or res.model_id != model_id or res.image_id not in store.ids():
                continue
            if not store.needs_prelabel(res.image_id, overwrite=overwrite) or \
                    is_done(store, res.image_id, model_id, variant=writer.variant):
                continue
            if ImageSignature.of(store.image_path(res.image_id)).to_dict() != res.signature:
                continue  # the image changed since it was predicted
            taken += writer.put(res.image_id, res.labels, res.probs, res.probs_file, res.signature)
        except OSError:
            continue
        finally:
            path.unlink(missing_ok=True)
    return taken


def plan_store(cfg: Any, stack: Any, writer: Writer, weights: Path, meta: Any) -> dict:
    from .checkpoints import checkpoint_id
    from .prelabel_spool import SPOOL_NAME, Spool
    from .prelabel_store import StoreWriter, check_class_lists, prelabel_todo, prelabel_variant
    from .store import AnnotationStore

    store = stack.enter_context(AnnotationStore.open(cfg.folder, recursive=cfg.recursive or None))
    if store.notice:
        writer.warn(f"note: {store.notice}")
    cmap = check_class_lists(store, meta)
    if cmap is not None:
        writer.warn(f"note: {cmap.describe()}")
    mid = checkpoint_id(weights)  # the app keys its cache the same way
    writer.store = store
    variant = prelabel_variant(cfg.crf)
    writer.sink = StoreWriter(store, mid, overwrite=cfg.overwrite, warn=writer.warn, variant=variant)
    spool = Spool(store.root / SPOOL_NAME)
    spool.reset()
    taken = ingest_leftovers(spool, store, mid, cfg.overwrite, writer.sink)
    todo, protected, done = prelabel_todo(store, mid, overwrite=cfg.overwrite, variant=variant)
    c = writer.sink.counts
    # What the last run left in the spool was written just now (counted as written), not before.
    c.protected, c.done_before, c.todo = protected, max(0, done - taken), len(todo)
    # Every rank maps the model's classes onto these (engine.prelabel_store.fit_classes), as one process does.
    return {"items": [(i, str(store.image_path(i))) for i in todo], "model_id": mid, "spool": str(spool.folder),
            "classes": list(store.class_names)}


def plan_out(cfg: Any, writer: Writer, meta: Any) -> dict:
    from .imageio import list_images
    from .prelabel_store import PrelabelError

    out = cfg.out.resolve()
    images = []
    for p in list_images(cfg.folder, recursive=cfg.recursive):
        try:
            p.resolve().relative_to(out)
        except ValueError:
            images.append(p)
    if not images:
        raise PrelabelError(f"{cfg.folder}: no images found")
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrelabelError(f"{cfg.out}: cannot create output folder ({exc.strerror or exc})") from None
    ids = [p.relative_to(cfg.folder).as_posix() for p in images]
    writer.names, writer.colors = out_names(ids), list(meta.class_colors)
    from .prelabel_spool import SPOOL_NAME, Spool
    spool = Spool(cfg.out / f".{SPOOL_NAME}")
    spool.reset()
    spool.discard_results()  # DIR is written again in full: an old run's results are of no use
    return {"items": [(i, str(p)) for i, p in zip(ids, images)], "model_id": "", "spool": str(spool.folder)}


def finish(cfg: Any, writer: Writer) -> int:
    from .prelabel_store import PrelabelError
    if writer.sink is not None:
        c = writer.sink.counts
        print(c.summary(cfg.overwrite), file=sys.stderr)
        if c.todo and c.written == 0 and c.done_before == 0:  # a rerun with only bad files left is fine
            raise PrelabelError("no image could be processed")
        return 0
    print(f"prelabel: wrote {writer.written} mask(s), skipped {writer.failed}", file=sys.stderr)
    if writer.written == 0:
        raise PrelabelError("no image could be processed")
    return 0


