"""Pre-labelling into a folder's annotation store: one image's prediction, what is left to do, and the
one writer that puts results into the store.

Shared by the one-process command (``deeplab-gui prelabel FOLDER``) and the distributed one
(``torchrun ... -m engine.prelabel``, :mod:`engine.prelabel`), so both write the same masks,
statuses, probabilities and error notes.

Resuming
    An image counts as done, and a rerun skips it, when its status is ``prelabeled`` and the store's
    note on its pre-label (written right after the mask: the checkpoint identity, the image file's
    size and mtime, the mask file's) still matches: same checkpoint, the image unchanged, the mask
    the one that run wrote.  The status is committed before the mask and the note after it, so an
    image a kill interrupted half-way is never taken for done. The probability cache's byte budget
    does not matter (for a large folder it evicts most entries). A store written before the notes
    existed falls back to the cache file's own tags (checkpoint and image), read from its small
    ``meta`` member; an evicted entry then makes the image count as not done.
"""
from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CRF_MAX_PIXELS_CPU",
    "TRACE_ENV",
    "PrelabelCounts",
    "PrelabelError",
    "StoreWriter",
    "check_class_lists",
    "fit_classes",
    "failure_of",
    "is_done",
    "predict_for_store",
    "prelabel_in_store",
    "prelabel_todo",
    "prelabel_variant",
    "trace",
]

# A file each process appends "<rank> <image id>" to after predicting an image: an audit of who
# predicted what (and how often), used by the tests of resumed and distributed runs.
TRACE_ENV = "DEEPLAB_GUI_PRELABEL_TRACE"
# The CRF of a CPU pre-label sees at most this many pixels (the live CRF's budget in the app); a GPU
# refines the whole grid.
CRF_MAX_PIXELS_CPU = 2_000_000


class PrelabelError(ValueError):
    """A pre-label run cannot go on; the message is one line for the user."""


def predict_for_store(predictor: Any, image: Any, refine: Callable[..., Any] | None,
                      params: Any = None, crf_max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H×W uint8 labels, C×h×w float32 probabilities on the store's capped grid) of one image.

    ``image``: a file path (read and checked here, named in errors) or an H×W×3 uint8 array already
    checked by the caller.  With the CRF (``refine``; ``params`` default :class:`engine.crf.CRFParams`)
    it refines the grid: the image's own size when within the cap, else a reduced copy with the
    spatial widths scaled alike; the labels are its result enlarged band by band.  So no step holds
    C×H×W values of a huge image: memory stays at :meth:`engine.predictor.Predictor.predict_with_probs`'s
    bound plus the decoded image.  On a CPU (or with ``crf_max_pixels`` > 0) the CRF sees at most
    :data:`CRF_MAX_PIXELS_CPU` pixels, its result enlarged back to the grid: at the 4-megapixel grid of
    a large photo it took 25 s and 2.9 GB a process, as much as the live CRF's budget allows.
    """
    if refine is None:
        pred = predictor.predict_with_probs(image)  # a path is read (and checked) there, dropped early
        return pred.labels, pred.probs
    from .imageio import read_image
    from .probgrid import labels_at, resize_image, resize_probs

    if params is None:
        from .crf import CRFParams
        params = CRFParams()
    if isinstance(image, np.ndarray):
        rgb = image
    else:
        rgb = read_image(image)
        predictor.check_image_size(*rgb.shape[:2], path=image)
    size = rgb.shape[:2]
    probs = predictor.predict_with_probs(rgb).probs
    grid = work = tuple(probs.shape[1:])
    if crf_max_pixels is None:
        crf_max_pixels = CRF_MAX_PIXELS_CPU if str(getattr(predictor, "device", "cpu")).startswith("cpu") else 0
    if 0 < crf_max_pixels < grid[0] * grid[1]:
        s = math.sqrt(crf_max_pixels / (grid[0] * grid[1]))
        work = (max(1, int(grid[0] * s)), max(1, int(grid[1] * s)))
    if work != size:
        rgb = resize_image(rgb, work)
        params = params.scaled(math.sqrt(work[0] * work[1] / (size[0] * size[1])))
    refined = np.asarray(refine(rgb, resize_probs(probs, work), params), dtype=np.float32)
    if work != grid:   # back on the cache's grid
        refined = resize_probs(refined, grid)
    return labels_at(refined, size), refined


def trace(image_id: str) -> None:
    """Append this process's rank and ``image_id`` to the file ``$DEEPLAB_GUI_PRELABEL_TRACE`` names."""
    import os
    target = os.environ.get(TRACE_ENV)
    if not target:
        return
    line = f"{os.environ.get('RANK', '0')} {image_id}\n".encode()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)  # one short O_APPEND write: lines from several processes never interleave
    finally:
        os.close(fd)


def check_class_lists(store: Any, meta: Any) -> Any:
    """How the model's classes become the folder's: None when the lists are the same, else an
    ``engine.ClassMap`` (by name, or index for index for a model without class names; see
    :mod:`engine.classmap`).  A model none of whose classes the folder has is refused: every pixel
    would be void."""
    from .classmap import ClassMap
    if list(store.class_names) == list(meta.class_names):
        return None
    cmap = ClassMap.by_name(list(meta.class_names), list(store.class_names))
    if not cmap.matched:
        raise PrelabelError(
            f"none of the model's {meta.num_classes} classes ({', '.join(meta.class_names[:4])}, ...) is in "
            f"the folder's class list ({len(store.class_names)}: {', '.join(store.class_names[:4])}, ...); "
            "pre-label into --out DIR, or fine-tune a model on this folder's classes")
    return cmap


def fit_classes(predictor: Any, cmap: Any, warn: Callable[[str], Any] | None = None) -> Any:
    """``predictor`` speaking the folder's classes through ``cmap`` (see :func:`check_class_lists`)."""
    if cmap is None:
        return predictor
    if warn is not None:
        warn(f"note: {cmap.describe()}")
    if cmap.passes_through:
        return predictor
    from .classmap import MappedPredictor
    return MappedPredictor(predictor, cmap)


def _cache_tags(path: Path) -> dict | None:
    """The JSON ``meta`` of a probability cache file, without reading its probabilities."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("meta.npy") as fh:
            return json.loads(str(np.lib.format.read_array(fh, allow_pickle=False)[()]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None


def prelabel_variant(crf: bool) -> str:
    """How pre-labels are made beyond the model, as the store's notes keep it: a run with the CRF
    does not count as done what a run without it made, nor the other way round."""
    return "crf" if crf else ""


def is_done(store: Any, image_id: str, model_id: str, *, notes: dict | None = None, variant: str = "") -> bool:
    """Whether ``image_id`` holds a complete pre-label by ``model_id`` (made the ``variant`` way:
    ``"crf"`` or ``""``) for the image as it is now. ``notes``: ``store.prelabel_tags()`` read once
    for many calls."""
    from .store import ImageSignature, Status

    if store.status(image_id) is not Status.PRELABELED or not store.mask_path(image_id).exists():
        return False
    notes = store.prelabel_tags() if notes is None else notes
    current = store.prelabel_current(image_id, model_id, notes.get(image_id), variant)
    if current is not None:
        return current
    # A pre-label from before the store kept notes: its probability cache file says the same (but
    # not whether the CRF made it).
    tags = _cache_tags(store.probs_path(image_id))
    if tags is None or tags.get("model_id") != model_id:
        return False
    try:
        now = ImageSignature.of(store.image_path(image_id)).to_dict()
    except OSError:
        return False
    return tags.get("image") == now


def prelabel_todo(store: Any, model_id: str, *, overwrite: bool = False, variant: str = ""
                  ) -> tuple[list[str], int, int]:
    """(ids to predict in sorted order, how many a person's mask protects, how many are already done).

    Every rank of a distributed run gets this list from the one process that holds the store, so all
    agree on it even while that process writes.
    """
    todo: list[str] = []
    protected = done = 0
    notes = store.prelabel_tags() if not overwrite else {}
    for image_id in sorted(store.ids()):
        if not store.needs_prelabel(image_id, overwrite=overwrite):
            protected += 1
        elif not overwrite and is_done(store, image_id, model_id, notes=notes, variant=variant):
            done += 1
        else:
            todo.append(image_id)
    return todo, protected, done


@dataclass
class PrelabelCounts:
    written: int = 0
    failed: int = 0
    protected: int = 0
    done_before: int = 0
    todo: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self, overwrite: bool = False) -> str:
        again = f", {self.done_before} already done with this checkpoint" if self.done_before else ""
        return (f"prelabel: {self.written} pre-labeled, {self.protected} kept (edited/reviewed"
                f"{'' if not overwrite else ', none: --overwrite'}){again}, {self.failed} failed")


class StoreWriter:
    """Puts results into an open store: the only code that writes pre-labels there.

    ``warn(line)`` shows a one-line warning (above a progress bar); every call is also counted.
    """

    def __init__(self, store: Any, model_id: str, *, overwrite: bool = False,
                 warn: Callable[[str], Any] | None = None, variant: str = "") -> None:
        self.store = store
        self.model_id, self.variant = model_id, variant
        self.overwrite = overwrite
        self.counts = PrelabelCounts()
        self._warn = warn or (lambda line: None)

    def warn(self, line: str) -> None:
        self.counts.warnings.append(line)
        self._warn(line)

    def put(self, image_id: str, labels: np.ndarray, probs: np.ndarray | None,
            probs_file: bytes | None = None, image_stat: dict | None = None) -> bool:
        """Save one prediction (never over a person's mask unless ``overwrite``); True when written.
        ``probs_file``: the probabilities' cache file already made (``encode_probs``) instead of ``probs``;
        ``image_stat``: the image file's ``{"bytes", "mtime_ns"}`` when it was read for this prediction."""
        from .errors import one_line
        try:
            if self.store.save_prediction(image_id, labels, probs=probs, model_id=self.model_id,
                                          overwrite=self.overwrite, probs_file=probs_file, variant=self.variant,
                                          image_stat=image_stat):
                self.counts.written += 1
                self.store.record_error(image_id, None)
                return True
            return False
        except Exception as exc:  # a full disk on one image: say so, go on with the next
            self.warn(f"warning: {image_id}: {one_line(exc)}")
            self.counts.failed += 1
            return False

    def fail(self, image_id: str, message: str, reason: str | None = None) -> None:
        """An image that could not be predicted; ``reason`` (unreadable, too small) is kept in the store."""
        from .errors import one_line
        if reason is not None:
            try:
                self.store.record_error(image_id, reason)
            except Exception as exc:
                message = f"{message} (and its note was not saved: {one_line(exc)})"
        self.warn(f"warning: skipped {message}" if reason is not None else f"warning: {message}")
        self.counts.failed += 1


def failure_of(image_id: str, exc: BaseException) -> tuple[str, str | None]:
    """(one-line message, reason the store keeps or None) for an image's exception."""
    from .errors import one_line
    from .imageio import ImageReadError
    from .predictor import ImageTooSmallError

    if isinstance(exc, (ImageReadError, ImageTooSmallError)):
        return str(exc), exc.reason
    return f"{image_id}: {one_line(exc)}", None


def prelabel_in_store(store: Any, predictor: Any, refine: Callable[..., Any] | None, *, model_id: str,
                      overwrite: bool = False, warn: Callable[[str], Any] | None = None,
                      progress: Callable[[int], Any] | None = None,
                      todo_known: Callable[[int], Any] | None = None) -> PrelabelCounts:
    """Predict, in this process, every image of the open ``store`` that needs a pre-label.

    ``todo_known(n)`` is called once with the number of images to predict; ``progress(1)`` after each.
    Memory stays at :meth:`engine.predictor.Predictor.predict_with_probs`'s bound whatever the image
    size: the store keeps probabilities on a capped grid, and the CRF runs on that grid.
    """
    predictor = fit_classes(predictor, check_class_lists(store, predictor.meta), warn)
    variant = prelabel_variant(refine is not None)
    todo, protected, done = prelabel_todo(store, model_id, overwrite=overwrite, variant=variant)
    writer = StoreWriter(store, model_id, overwrite=overwrite, warn=warn, variant=variant)
    writer.counts.protected, writer.counts.done_before, writer.counts.todo = protected, done, len(todo)
    if todo_known is not None:
        todo_known(len(todo))
    params = None
    if refine is not None:
        from .crf import CRFParams
        params = CRFParams()
    from .store import ImageSignature
    for image_id in todo:
        try:
            path = store.image_path(image_id)
            read_as = ImageSignature.of(path).to_dict()   # before the read: a later change is not this one
            labels, probs = predict_for_store(predictor, path, refine, params)
        except Exception as exc:  # one bad image must not stop a folder of thousands
            writer.fail(image_id, *failure_of(image_id, exc))
        else:
            trace(image_id)
            writer.put(image_id, labels, probs, image_stat=read_as)
            del labels, probs  # the next image's peak must not include this one's arrays
        if progress is not None:
            progress(1)
    return writer.counts
