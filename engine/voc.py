"""PASCAL VOC export and import for an annotation store.

Export writes the layout that torchvision's ``VOCSegmentation`` and VainF's loader read::

    OUT/JPEGImages/<id>.jpg
    OUT/SegmentationClass/<id>.png        P-mode, class indices, 255 void; VOC colour map for
                                          indices 0..20, the store's colours after, VOC void colour
    OUT/ImageSets/Segmentation/{train,val,trainval}.txt
    OUT/class_names.txt                   one class name per line, in index order
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
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .imageio import ImageReadError, image_size, read_image
from .fileio import atomic_write_bytes
from .masks import VOID_COLOR, VOID_INDEX, save_mask_png
from .meta import voc_colormap
from .scan import natural_key
from .store import AnnotationStore, LabelClass, Status, StoreError, default_classes

__all__ = ["ExportReport", "ImportReport", "export_voc", "import_voc", "add_void_border", "voc_ids",
           "split_ids", "rgb_mask_to_indices", "export_colors", "VOC_NUM_STANDARD"]

VOC_NUM_STANDARD = 21
Progress = Callable[[int, int], None]


@dataclass
class ExportReport:
    out: Path
    exported: list[str] = field(default_factory=list)           # VOC ids written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image id, reason)
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    cancelled: bool = False


@dataclass
class ImportReport:
    folder: Path
    imported: list[str] = field(default_factory=list)           # image ids given a mask
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (VOC id, reason)
    cancelled: bool = False


# ---------------------------------------------------------------------------- helpers
def voc_ids(image_ids: Iterable[str]) -> dict[str, str]:
    """image id -> VOC id (flat, no extension), unique; see the module docstring."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for image_id in sorted(image_ids, key=natural_key):
        stem, ext = os.path.splitext(image_id)
        vid = stem.replace("/", "__")
        if vid in used:
            vid = f"{vid}_{ext.lstrip('.').lower()}"
            n = 2
            while vid in used:
                vid, n = f"{stem.replace('/', '__')}_{ext.lstrip('.').lower()}{n}", n + 1
        used.add(vid)
        out[image_id] = vid
    return out


def split_ids(ids: Sequence[str], *, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic seeded train/val split; both lists sorted naturally."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ranked = sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    n_val = int(round(val_fraction * len(ranked)))
    if val_fraction > 0 and len(ranked) >= 2:
        n_val = min(max(n_val, 1), len(ranked) - 1)
    val = set(ranked[:n_val])
    return (sorted((i for i in ids if i not in val), key=natural_key), sorted(val, key=natural_key))


def add_void_border(mask: np.ndarray, width: int) -> np.ndarray:
    """Mark as void (255) every labelled pixel within ``width`` px (square neighbourhood) of a pixel
    of another class, as VOC's annotators did around object outlines.  Void pixels stay void and a
    class next to void gains no border.  Returns a new H×W uint8 array."""
    m = np.asarray(mask, dtype=np.uint8)
    if width <= 0:
        return m.copy()
    lab = m.astype(np.int16)
    void = m == VOID_INDEX
    hi = np.where(void, -1, lab)    # void never raises a neighbour's maximum ...
    lo = np.where(void, 256, lab)   # ... nor lowers its minimum
    hi = _window(_window(hi, width, 0, np.maximum), width, 1, np.maximum)
    lo = _window(_window(lo, width, 0, np.minimum), width, 1, np.minimum)
    out = m.copy()
    out[~void & ((hi > lab) | (lo < lab))] = VOID_INDEX
    return out


def _window(a: np.ndarray, r: int, axis: int, op) -> np.ndarray:
    """Sliding max/min of radius ``r`` along ``axis`` (edges use what lies inside the array)."""
    out = a.copy()
    n = a.shape[axis]
    for d in range(1, min(r, n - 1) + 1):
        lead = [slice(None)] * 2
        trail = [slice(None)] * 2
        lead[axis], trail[axis] = slice(0, n - d), slice(d, n)
        op(out[tuple(lead)], a[tuple(trail)], out=out[tuple(lead)])
        op(out[tuple(trail)], a[tuple(lead)], out=out[tuple(trail)])
    return out


def export_colors(classes: Sequence[LabelClass]) -> list[tuple[int, int, int]]:
    """Palette colours for export: the VOC colour map for the first 21 indices, the store's after."""
    voc = voc_colormap(VOC_NUM_STANDARD)
    return [voc[i] if i < VOC_NUM_STANDARD else tuple(c.color) for i, c in enumerate(classes)]


def rgb_mask_to_indices(rgb: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """H×W×3 colour-coded mask -> H×W uint8 indices (VOC void colour and white -> 255).

    Raises ``ValueError`` naming a colour that is no class colour (guessing would mislabel pixels).
    """
    a = np.asarray(rgb, dtype=np.uint8)[:, :, :3].astype(np.uint32)
    packed = (a[:, :, 0] << 16) | (a[:, :, 1] << 8) | a[:, :, 2]
    table = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(colors)}
    for void in (VOID_COLOR, (255, 255, 255)):
        table.setdefault((void[0] << 16) | (void[1] << 8) | void[2], VOID_INDEX)
    uniq, inverse = np.unique(packed, return_inverse=True)
    lut = np.empty(len(uniq), dtype=np.uint8)
    for k, v in enumerate(uniq.tolist()):
        if v not in table:
            count = int((inverse == k).sum())
            raise ValueError(f"colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) on {count} pixels is no "
                             f"class colour")
        lut[k] = table[v]
    return lut[inverse.reshape(packed.shape)]


def _copyable_jpeg(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return (im.format == "JPEG" and im.mode in ("RGB", "L")
                    and im.getexif().get(0x0112, 1) in (1, None))
    except Exception:
        return False


# ---------------------------------------------------------------------------- export
def export_voc(source: AnnotationStore | str | os.PathLike, out: str | os.PathLike, *,
               include_prelabeled: bool = False, void_border: int = 0, val_fraction: float = 0.2,
               seed: int = 0, workers: int | None = None, progress: Progress | None = None,
               cancel: Callable[[], bool] | None = None) -> ExportReport:
    """Export edited and reviewed images (plus pre-labeled ones if ``include_prelabeled``) to ``out``.

    ``source``: an open store, or a folder (opened read-only, so this works while the app has it
    open).  Images whose mask is missing, unreadable, of the wrong size or uses a class index beyond
    the class list are skipped with a reason; the rest are exported.  ``progress(done, total)`` is
    called after each image; ``cancel()`` returning True stops early (split files then list only
    what was written).  Raises ``StoreError`` when ``out`` is inside the store or equal to the folder.
    """
    store = source if isinstance(source, AnnotationStore) else AnnotationStore.open(source, read_only=True)
    try:
        return _export(store, Path(out).absolute(), include_prelabeled, void_border, val_fraction, seed,
                       workers, progress, cancel)
    finally:
        if store is not source:
            store.close()


def _export(store, out, include_prelabeled, void_border, val_fraction, seed, workers, progress, cancel):
    if out.resolve() == store.folder or out.resolve().is_relative_to(store.root):
        raise StoreError(f"cannot export into {out}: choose a folder outside the image folder's store")
    wanted = {Status.EDITED, Status.REVIEWED} | ({Status.PRELABELED} if include_prelabeled else set())
    # Every labelled image the store knows, not only those of the last scan (a sub-folder image stays
    # exportable when recursion is off); images deleted since are skipped with a reason.
    ids = [i for i in store.known_ids() if store.status(i) in wanted]
    names = voc_ids(ids)
    classes = store.classes
    colors = export_colors(classes)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    report = ExportReport(out=out)

    def one(image_id: str) -> tuple[str, str | None]:
        vid = names[image_id]
        try:
            mask = store.load_mask(image_id)
            if mask is None:
                return image_id, "no mask on disk"
            src = store.image_path(image_id)
            if _copyable_jpeg(src):
                with Image.open(src) as im:
                    w, h = im.size
                data = None
            else:
                data = read_image(src)
                h, w = data.shape[:2]
            if mask.shape != (h, w):
                return image_id, f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}"
            _check_indices(mask, len(classes))
            if void_border > 0:
                mask = add_void_border(mask, void_border)
            if data is None:
                shutil.copyfile(src, out / "JPEGImages" / f"{vid}.jpg")
            else:
                Image.fromarray(data).save(out / "JPEGImages" / f"{vid}.jpg", quality=95, subsampling=0)
            save_mask_png(out / "SegmentationClass" / f"{vid}.png", mask, colors)
            return image_id, None
        except (StoreError, ImageReadError, OSError, ValueError) as exc:
            return image_id, " ".join(str(exc).split())

    n_workers = workers or min(4, os.cpu_count() or 1)
    done = 0
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        pending = iter(ids)
        futures = []
        # Submit lazily (a window of 2 per worker) so cancel() takes effect within a few images.
        for image_id in pending:
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

    report.exported.sort(key=natural_key)
    report.train, report.val = split_ids(report.exported, val_fraction=val_fraction, seed=seed)
    seg = out / "ImageSets" / "Segmentation"
    for name, lst in (("train", report.train), ("val", report.val), ("trainval", report.exported)):
        atomic_write_bytes(seg / f"{name}.txt", "".join(f"{i}\n" for i in lst).encode("utf-8"))
    atomic_write_bytes(out / "class_names.txt", "".join(f"{c.name}\n" for c in classes).encode("utf-8"))
    back = {v: k for k, v in names.items()}
    info = {"format": 1, "classes": [{"name": c.name, "color": list(c.color)} for c in classes],
            "void_border": void_border, "seed": seed, "val_fraction": val_fraction,
            "images": {v: {"id": back[v], "status": store.status(back[v]).value} for v in report.exported}}
    atomic_write_bytes(out / "deeplab-gui.json", json.dumps(info, ensure_ascii=False, indent=1).encode())
    return report


def _report_one(result: tuple[str, str | None], report: ExportReport, names: dict[str, str]) -> None:
    image_id, reason = result
    if reason is None:
        report.exported.append(names[image_id])
    else:
        report.skipped.append((image_id, reason))


# ---------------------------------------------------------------------------- import
def _read_ids(voc_root: Path, split: str | None) -> list[str]:
    seg = voc_root / "ImageSets" / "Segmentation"
    files = [seg / f"{split}.txt"] if split else sorted(seg.glob("*.txt")) if seg.is_dir() else []
    if split and not files[0].exists():
        raise FileNotFoundError(f"{files[0]}: no such split file")
    ids: set[str] = set()
    for f in files:
        ids.update(line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    if not files:  # no split files: every mask present
        ids = {p.stem for p in (voc_root / "SegmentationClass").glob("*.png")}
    return sorted(ids, key=natural_key)


def _read_classes(voc_root: Path, info: dict) -> list[LabelClass]:
    if info.get("classes"):
        return [LabelClass(c["name"], tuple(c["color"])) for c in info["classes"]]
    names_file = voc_root / "class_names.txt"
    if names_file.exists():
        names = [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
        cmap = voc_colormap(256)
        return [LabelClass(n, cmap[i]) for i, n in enumerate(names)]
    return default_classes()


def import_voc(voc_root: str | os.PathLike, folder: str | os.PathLike | AnnotationStore, *,
               split: str | None = None, status: Status | str | None = None, overwrite: bool = False,
               progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> ImportReport:
    """Import a VOC-layout dataset: copy images into ``folder`` and masks into its store.

    Ids come from ``ImageSets/Segmentation/<split>.txt`` (all split files when ``split`` is None, all
    ``SegmentationClass/*.png`` when there are none).  Masks may be P-mode/greyscale indices or
    RGB colour-coded (mapped through the class colours; VOC void colour and white become 255).
    Classes come from ``deeplab-gui.json``, else ``class_names.txt``, else VOC's 21.  Status: from
    ``deeplab-gui.json``, else ``status`` (default ``reviewed``: a dataset's masks are ground truth).
    An image whose store mask is edited/reviewed is skipped unless ``overwrite``; an image file of
    the same name with different content is never replaced.  Per-image problems are skipped with a
    reason; the rest is imported.
    """
    voc_root = Path(voc_root)
    if not (voc_root / "SegmentationClass").is_dir():
        raise FileNotFoundError(f"{voc_root}: not a VOC dataset (no SegmentationClass folder)")
    info_path = voc_root / "deeplab-gui.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    classes = _read_classes(voc_root, info)
    ids = _read_ids(voc_root, split)
    if isinstance(folder, AnnotationStore):
        store = folder
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)
        nested = any("/" in (meta or {}).get("id", "") for meta in info.get("images", {}).values())
        store = AnnotationStore.open(folder, scan=False, recursive=True if nested else None)
    try:
        if store.classes != classes:
            if store.known_ids() and len(classes) < len(store.classes):
                raise StoreError(f"{store.folder} already has masks with a {len(store.classes)}-class list; "
                                 f"the dataset has {len(classes)} classes")
            store.set_classes(classes, allow_shrink=not store.known_ids())
        report = ImportReport(folder=store.folder)
        meta_images = info.get("images", {})
        for n, vid in enumerate(ids):
            if cancel is not None and cancel():
                report.cancelled = True
                break
            entry = meta_images.get(vid, {})
            reason = _import_one(store, voc_root, vid, entry, classes, status, overwrite)
            if reason is None:
                report.imported.append(entry.get("id", f"{vid}.jpg"))
            else:
                report.skipped.append((vid, reason))
            if progress:
                progress(n + 1, len(ids))
        store.scan()
        return report
    finally:
        if store is not folder:
            store.close()


def _import_one(store: AnnotationStore, voc_root: Path, vid: str, entry: dict, classes, status,
                overwrite: bool) -> str | None:
    image_id = entry.get("id", f"{vid}.jpg")
    src = voc_root / "JPEGImages" / f"{vid}.jpg"
    mask_path = voc_root / "SegmentationClass" / f"{vid}.png"
    if not src.exists():
        return f"no image {src.name} in JPEGImages"
    if not mask_path.exists():
        return f"no mask {mask_path.name} in SegmentationClass"
    try:
        dst = store.image_path(image_id)
        if not overwrite and store.status(image_id) in (Status.EDITED, Status.REVIEWED):
            return f"{image_id} already has an edited or reviewed mask (use overwrite)"
        with Image.open(mask_path) as im:
            im.load()
            if im.mode in ("P", "L"):
                mask = np.array(im, dtype=np.uint8)
            elif im.mode in ("RGB", "RGBA"):
                mask = rgb_mask_to_indices(np.asarray(im.convert("RGB")), [c.color for c in classes])
            else:
                return f"mask mode {im.mode} is neither indices (P, L) nor colours (RGB)"
        w, h = image_size(src)
        if mask.shape != (h, w):  # checked before the image is copied, so a bad pair leaves no trace
            return f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}"
        if dst.exists():
            store.validate_mask(image_id, mask)
        else:
            _check_indices(mask, len(classes))
        if dst.exists():
            if dst.read_bytes() != src.read_bytes():
                return f"{image_id} already exists in the folder with different content"
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, src.read_bytes())
        st = Status(entry.get("status") or status or Status.REVIEWED)
        if st is Status.PRELABELED:
            store.save_prediction(image_id, mask, overwrite=True)
        else:
            store.save_mask(image_id, mask, status=st)
        return None
    except (StoreError, ImageReadError, OSError, ValueError) as exc:
        return " ".join(str(exc).split())


def _check_indices(mask: np.ndarray, n: int) -> None:
    bad = np.unique(mask[(mask >= n) & (mask != VOID_INDEX)])
    if bad.size:
        raise ValueError(f"class index {int(bad[0])} is beyond the {n}-class list")
