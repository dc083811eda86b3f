"""PASCAL VOC export and import for an annotation store.

Export writes the layout that torchvision's ``VOCSegmentation`` and VainF's loader read::

    OUT/JPEGImages/<id>.jpg
    OUT/SegmentationClass/<id>.png        P-mode, class indices, 255 void; VOC colour map for
                                          indices 0..20, the store's colours after, VOC void colour
    OUT/ImageSets/Segmentation/{train,val,trainval}.txt
    OUT/class_names.txt                   one class name per line, in index order
    OUT/labelmap.txt                      CVAT's "Segmentation mask 1.1" label map: name:r,g,b:: per
                                          class, the colours of SegmentationClass/
    OUT/deeplab-gui.json                  classes with colours, original image ids and statuses,
                                          export options (lets import restore the store exactly)

VOC ids are the image id without extension, ``/`` replaced by ``__`` (``street/a 1.jpg`` ->
``street__a 1``); a clash (``a.jpg`` and ``a.png``) appends the extension (``a_png``).  Images are
copied byte for byte when a VOC loader would read them exactly as we do (a JPEG, RGB or grey, with
no EXIF rotation), otherwise decoded with EXIF applied and written as JPEG quality 95, so the mask
always lines up with what ``PIL.Image.open(...).convert("RGB")`` gives.

Split: each id's rank in ``sha1(f"{seed}:{voc id}")`` order decides; the first ``val_fraction`` go to
val (at least one when there are two or more images).  Deterministic, and adding images later
moves few existing ones between train and val.

Problems with one image (mask missing, unreadable or not fitting) skip that image with a reason;
problems with OUT (cannot be created or written, lies inside the image folder) stop the export with
a :class:`VOCError`.  Every file is written atomically.  Import lives in :mod:`engine.voc_import`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import one_line
from ..fileio import atomic_write_bytes
from ..imageio import image_size, read_image
from ..labels import save_mask_png
from ..store.scan import natural_key
from ..store.store import AnnotationStore
from .voc_common import (
    VOC_NUM_STANDARD,
    VOCError,
    add_void_border,
    copyable_jpeg,
    export_colors,
    os_reason,
    rgb_mask_to_indices,
    split_ids,
    voc_ids,
)
from .common import FormatError
from .exporter import ExportReport as BaseExportReport
from .exporter import ExportSkip, check_out, export_ids, load_export_mask, prepare_out
from .registry import FormatOption, LabelFormat, register
from .voc_import import ImportReport, import_voc, voc_source

__all__ = ["EXPORT_PIXELS", "ExportReport", "ImportReport", "PixelBudget", "VOCError", "export_voc", "import_voc",
           "add_void_border", "voc_ids", "split_ids", "rgb_mask_to_indices", "export_colors", "VOC_NUM_STANDARD"]

Progress = Callable[[int, int], None]


@dataclass
class ExportReport(BaseExportReport):
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)


class _WriteFailed(Exception):
    """Writing into OUT failed: stops the whole export (every later image would fail the same way)."""

    def __init__(self, path: Path, exc: BaseException) -> None:
        super().__init__(f"could not write {path}: {os_reason(exc)}")


def export_voc(source: AnnotationStore | str | os.PathLike, out: str | os.PathLike, *,
               include_prelabeled: bool = False, void_border: int = 0, val_fraction: float = 0.2,
               seed: int = 0, workers: int | None = None, progress: Progress | None = None,
               cancel: Callable[[], bool] | None = None, confirmed_only: bool = True) -> ExportReport:
    """Export edited and reviewed images (plus pre-labeled ones if ``include_prelabeled``) to ``out``.

    ``source``: an open store, or a folder (opened read-only, so this works while the app has it
    open).  Images whose mask is missing, unreadable, of the wrong size or uses a class index beyond
    the class list are skipped with a reason; the rest are exported.  ``progress(done, total)`` is
    called after each image; ``cancel()`` returning True stops early (split files then list only
    what was written).  ``confirmed_only``: in an edited mask, the pixels no person set (a pre-label's
    untouched ones) are written as void (255), so that training on the export does not learn the
    model's own guesses; False writes edited masks as they are.  Reviewed masks are always whole.
    Raises ``ValueError`` for bad options and :class:`VOCError` (a
    ``StoreError``) when ``out`` lies inside the image folder or its store, when the image folder lies
    where export writes, or when ``out`` cannot be written; nothing is written for the first two.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be at least 0 and below 1, got {val_fraction}")
    if void_border < 0:
        raise ValueError(f"void_border must be 0 or more pixels, got {void_border}")
    store = source if isinstance(source, AnnotationStore) else AnnotationStore.open(source, read_only=True)
    try:
        out = Path(out).absolute()
        _check_out(store, out)
        _prepare_out(out)
        return _export(store, out, include_prelabeled, void_border, val_fraction, seed, workers, progress,
                       cancel, confirmed_only)
    finally:
        if store is not source:
            store.close()


# Pixels of images the export's workers hold at once: each holds its image decoded (3 bytes a pixel)
# or its JPEG, and its mask with the void border (a few bytes a pixel); four workers on 250-megapixel
# photos would otherwise hold several gigabytes together.
EXPORT_PIXELS = 64_000_000


class PixelBudget:
    """Work on images shares at most ``limit`` pixels at once: :meth:`take` waits until an image's
    pixels fit beside the others'; one larger than the whole budget waits to go alone."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = int(limit), 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self, pixels: int):
        n = min(max(int(pixels), 0), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


_WRITES = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")


def _check_out(store: AnnotationStore, out: Path) -> None:
    try:
        check_out(store, out, _WRITES[:2])
    except FormatError as exc:  # the shared checks' refusals keep the VOC error type callers expect
        raise VOCError(str(exc)) from None


def _prepare_out(out: Path) -> None:
    try:
        prepare_out(out, _WRITES)
    except FormatError as exc:
        raise VOCError(str(exc)) from None


def _export(store, out, include_prelabeled, void_border, val_fraction, seed, workers, progress, cancel,
            confirmed_only=True):
    ids = export_ids(store, include_prelabeled=include_prelabeled)
    report = ExportReport(out=out)
    # A split file holds one id per line: a name with a line break cannot be listed in one.
    for image_id in [i for i in ids if "\n" in i or "\r" in i]:
        ids.remove(image_id)
        report.skipped.append((image_id, "the name contains a line break, which VOC split files cannot hold"))
    names = voc_ids(ids)
    classes = store.classes
    colors = export_colors(classes)
    stop = threading.Event()

    budget = PixelBudget(EXPORT_PIXELS)

    def one(image_id: str) -> tuple[str, str | None]:
        try:
            width, height = image_size(store.image_path(image_id))
        except Exception:   # an unreadable header: the read below says why, in one line
            width = height = 0
        with budget.take(width * height):
            return one_held(image_id)

    def one_held(image_id: str) -> tuple[str, str | None]:
        if stop.is_set():
            return image_id, "not exported: the export stopped"
        vid = names[image_id]
        try:  # reading: a problem here belongs to this image only
            try:
                mask = load_export_mask(store, image_id, confirmed_only=confirmed_only)
            except ExportSkip as exc:
                return image_id, str(exc)
            src = store.image_path(image_id)
            if copyable_jpeg(src):
                data = src.read_bytes()
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
            else:
                rgb = read_image(src)
                h, w = rgb.shape[:2]
                buf = io.BytesIO()
                Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=0)
                data = buf.getvalue()
            if mask.shape != (h, w):
                return image_id, f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}"
            if void_border > 0:
                mask = add_void_border(mask, void_border)
        except Exception as exc:  # any decoder failure of one file must not end an export of thousands
            return image_id, one_line(exc) or "unreadable"
        dst = out / "JPEGImages" / f"{vid}.jpg"
        try:
            atomic_write_bytes(dst, data)
            dst = out / "SegmentationClass" / f"{vid}.png"
            save_mask_png(dst, mask, colors)
        except OSError as exc:
            stop.set()
            raise _WriteFailed(dst, exc) from None
        return image_id, None

    n_workers = workers or min(4, os.cpu_count() or 1)
    done = 0
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            futures = []
            # Submit lazily (a window of 2 per worker) so cancel() takes effect within a few images.
            for image_id in ids:
                futures.append(pool.submit(one, image_id))
                if len(futures) >= 2 * n_workers:
                    _report_one(futures.pop(0).result(), report, names)
                    done += 1
                    if progress:
                        progress(done, len(ids))
                    if cancel is not None and cancel():
                        report.cancelled = True
                        break
            for f in futures:
                _report_one(f.result(), report, names)
                done += 1
                if progress:
                    progress(done, len(ids))
    except _WriteFailed as exc:
        stop.set()
        raise VOCError(f"{exc}; the export stopped after {len(report.exported)} image(s) and {out} is "
                       f"incomplete (no split files were written)") from None

    report.exported.sort(key=natural_key)
    report.train, report.val = split_ids(report.exported, val_fraction=val_fraction, seed=seed)
    seg = out / "ImageSets" / "Segmentation"
    back = {v: k for k, v in names.items()}
    info = {"format": 1, "classes": [{"name": c.name, "color": list(c.color)} for c in classes],
            "void_border": void_border, "seed": seed, "val_fraction": val_fraction,
            "confirmed_only": bool(confirmed_only),
            "images": {v: {"id": back[v], "status": store.status(back[v]).value} for v in report.exported}}
    files = [(seg / f"{name}.txt", "".join(f"{i}\n" for i in lst).encode("utf-8"))
             for name, lst in (("train", report.train), ("val", report.val), ("trainval", report.exported))]
    files += [(out / "class_names.txt", "".join(f"{c.name}\n" for c in classes).encode("utf-8")),
              (out / "labelmap.txt", cvat_labelmap([c.name for c in classes], colors).encode("utf-8")),
              (out / "deeplab-gui.json", json.dumps(info, ensure_ascii=False, indent=1).encode("utf-8"))]
    for path, data in files:
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise VOCError(f"could not write {path}: {os_reason(exc)}; {out} is incomplete") from None
    return report


def cvat_labelmap(names: list[str], colors: list[tuple[int, int, int]]) -> str:
    """The ``labelmap.txt`` CVAT's "Segmentation mask 1.1" import reads: the colour of each class in
    SegmentationClass/, background included (CVAT maps mask colours to its labels by it)."""
    lines = ["# label:color_rgb:parts:actions\n"]
    lines += [f"{name}:{r},{g},{b}::\n" for name, (r, g, b) in zip(names, colors)]
    return "".join(lines)


def _report_one(result: tuple[str, str | None], report: ExportReport, names: dict[str, str]) -> None:
    image_id, reason = result
    if reason is None:
        report.exported.append(names[image_id])
    else:
        report.skipped.append((image_id, reason))



# ---------------------------------------------------------------------------- registration
def _read(src: Path, *, classes=None, split: str | None = None):
    # VOC carries its own class list (deeplab-gui.json, class_names.txt or VOC's 21); the folder's
    # list is checked against it by the importer.
    return voc_source(src, split=split)


def _write(store: AnnotationStore, out: Path, *, progress: Progress | None = None,
           cancel: Callable[[], bool] | None = None, include_prelabeled: bool = False,
           confirmed_only: bool = True, void_border: int = 0, val_fraction: float = 0.2,
           seed: int = 0) -> ExportReport:
    return export_voc(store, out, include_prelabeled=include_prelabeled, void_border=void_border,
                      val_fraction=val_fraction, seed=seed, progress=progress, cancel=cancel,
                      confirmed_only=confirmed_only)


register(LabelFormat(
    name="voc", summary="PASCAL VOC: JPEGImages/, SegmentationClass/ (P-mode or colour masks), ImageSets/",
    read=_read, write=_write, src_help="the VOC root (holding SegmentationClass/)",
    options=(
        FormatOption("split", "only the ids in ImageSets/Segmentation/NAME.txt", str, None),
        FormatOption("void_border", "mark N pixels along class boundaries as void (255), as VOC does",
                     int, 0, for_import=False, for_export=True),
        FormatOption("val_fraction", "share of images in val.txt", float, 0.2, for_import=False,
                     for_export=True),
        FormatOption("seed", "seed of the deterministic train/val split", int, 0, for_import=False,
                     for_export=True),
    )))
