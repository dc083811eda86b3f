"""COCO JSON, semantic flavour: export an annotation store as it, import one into a store.

Export writes::

    OUT/annotations.json    images (id 1.., file_name = the image id, width, height), categories
                            (one per class: id = class index + 1, name, "color" as the panoptic
                            format has it), annotations: one per class present in an image, its
                            pixels as a compressed RLE (pycocotools' string form), area, bbox,
                            iscrowd 0.  Void pixels are in no annotation.
    OUT/images/<image id>   each exported image (``no_images`` leaves them out): the file itself, or its
                            pixels re-encoded when it carries an EXIF rotation (loaders differ on it)

Masks are the export's usual ones: edited and reviewed images, confirmed-only (in an edited mask the
pixels no person set are void, i.e. left out).  ``width``/``height`` are the image's as the app shows it
(EXIF orientation applied), and so is every image file written.

Import reads any COCO file with segmentations: per image, every annotation in file order is drawn over
the ones before it -- polygons (several per annotation are a union), RLE with string or list counts;
``iscrowd`` annotations are drawn as their category (``crowd="void"`` draws them as void instead).
Categories are matched to classes by name (``unknown`` decides about names the folder's class list
lacks; into a new folder the list is the categories in id order).  Images are found relative to
``images`` when given, else beside the JSON file or in ``images/`` beside it.  Pixels no annotation
covers are void.

What refuses the whole import: the JSON cannot be read or is no COCO file (no images, annotations and
categories lists, a category without an id or name, an id twice), unknown names with
``unknown="refuse"``.  What skips one image, naming the file: a bad ``file_name``, a missing or
unreadable image, a size other than the entry says, an annotation with an unknown category, a
segmentation that is missing or malformed, an RLE of another size, a polygon reaching more than one
pixel outside the image.  Annotations that name no listed image are ignored; a polygon of fewer than
three points draws nothing.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import one_line
from ..fileio import atomic_write_bytes
from ..labels import VOID, LabelClass
from ..store.store import AnnotationStore
from . import rle
from .classnames import UNKNOWN_CHOICES, resolve_names
from .common import FormatError, os_reason, read_json
from .exporter import (
    ExportReport,
    ExportSkip,
    check_out,
    image_bytes,
    open_source,
    prepare_out,
    run_export,
)
from .importer import ImportSource, SkipItem, SourceItem
from .registry import FormatOption, LabelFormat, register

__all__ = ["read_coco", "export_coco", "coco_annotations", "coco_mask", "CROWD_CHOICES"]

Progress = Callable[[int, int], None]
CROWD_CHOICES = ("class", "void")
_OUTSIDE = 1.0  # px a polygon may reach beyond the image (rounding in other tools); more means a wrong image


# ---------------------------------------------------------------------------- masks <-> annotations
def coco_annotations(mask: np.ndarray, image_num: int, first_id: int) -> list[dict]:
    """One annotation per class present in ``mask`` (void left out), ids from ``first_id``."""
    anns = []
    for k in np.unique(mask).tolist():
        if k == VOID:
            continue
        m = mask == k
        anns.append({"id": first_id + len(anns), "image_id": image_num, "category_id": int(k) + 1,
                     "segmentation": rle.encode(m), "area": rle.area(m), "bbox": rle.bbox(m), "iscrowd": 0})
    return anns


def _polygon_checked(poly: object, h: int, w: int, what: str) -> np.ndarray | None:
    if not isinstance(poly, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in poly):
        raise SkipItem(f"{what}: a polygon must be a list of numbers")
    if len(poly) % 2:
        raise SkipItem(f"{what}: a polygon has an odd number of coordinates")
    if len(poly) < 6:
        return None
    xy = np.asarray(poly, dtype=np.float64)
    if not np.all(np.isfinite(xy)):
        raise SkipItem(f"{what}: a polygon has a coordinate that is not a number")
    x, y = xy[0::2], xy[1::2]
    if x.min() < -_OUTSIDE or y.min() < -_OUTSIDE or x.max() > w + _OUTSIDE or y.max() > h + _OUTSIDE:
        raise SkipItem(f"{what}: a polygon reaches outside the {w}x{h} image (x {x.min():g}..{x.max():g}, "
                       f"y {y.min():g}..{y.max():g})")
    return rle.polygon_mask(xy, h, w)


def coco_mask(anns: Sequence[dict], h: int, w: int, to_class: dict[int, int], *, crowd: str = "class",
              where: str = "annotations") -> np.ndarray:
    """Draw ``anns`` in order into an H×W uint8 mask (255 where none is); ``to_class``: category id -> index.

    Raises :class:`SkipItem` naming ``where`` and the annotation on any problem.
    """
    out = np.full((h, w), VOID, dtype=np.uint8)
    for n, ann in enumerate(anns):
        what = f"{where}: annotation {ann.get('id', f'#{n + 1}')!r}" if isinstance(ann, dict) \
            else f"{where}: annotation #{n + 1}"
        if not isinstance(ann, dict):
            raise SkipItem(f"{what} is not an object")
        cid = ann.get("category_id")
        if cid not in to_class or isinstance(cid, bool):
            raise SkipItem(f"{what} has category_id {cid!r}, which no category has")
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            region = np.zeros((h, w), dtype=bool)
            for poly in seg:
                m = _polygon_checked(poly, h, w, what)
                if m is not None:
                    region |= m
        elif isinstance(seg, dict):
            try:
                region = rle.decode(seg, h, w)
            except rle.RLEError as exc:
                raise SkipItem(f"{what}: {exc}") from None
        else:
            raise SkipItem(f"{what} has no segmentation (polygons or RLE)")
        value = VOID if (ann.get("iscrowd") and crowd == "void") else to_class[cid]
        out[region] = value
    return out


# ---------------------------------------------------------------------------- import
def _load_json(path: Path) -> dict:
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        raise FormatError(f"{path}: not a COCO file (it needs lists 'images', 'annotations' and 'categories')")
    return doc


def _find_json(src: Path) -> Path:
    if src.is_dir():
        for cand in (src / "annotations.json", src / "annotations" / "annotations.json"):
            if cand.is_file():
                return cand
        raise FormatError(f"{src}: no annotations.json in this folder; name the COCO JSON file itself")
    if not src.exists():
        raise FormatError(f"{src}: no such file")
    return src


def _categories(path: Path, cats: list) -> tuple[list[tuple[int, str]], dict[str, list[int]]]:
    seen: dict[int, str] = {}
    colors: dict[str, list[int]] = {}
    for c in cats:
        if (not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool)
                or not isinstance(c.get("name"), str)):
            raise FormatError(f"{path}: a category needs a whole-number 'id' and a 'name', got {str(c)[:80]}")
        if c["id"] in seen:
            raise FormatError(f"{path}: category id {c['id']} is listed twice")
        seen[c["id"]] = c["name"]
        col = c.get("color")
        if isinstance(col, list) and len(col) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in col):
            colors[c["name"]] = col
    return sorted(seen.items()), colors


def _image_problem(path: Path, entry: object) -> str | None:
    if not isinstance(entry, dict):
        return f"{path}: an image entry is not an object"
    name = entry.get("file_name")
    if not isinstance(name, str) or not name.strip():
        return f"{path}: image {entry.get('id')!r} has no file_name"
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm.startswith(("/", "../")) or norm == ".." or ":" in norm.split("/")[0]:
        return f"{path}: image {entry.get('id')!r}: file_name {name!r} is not a path inside a folder"
    return None


def read_coco(src: str | Path, *, classes: list[LabelClass] | None = None, images: str | Path | None = None,
              unknown: str = "add", crowd: str = "class") -> ImportSource:
    """An :class:`ImportSource` for a COCO JSON file (or a folder holding ``annotations.json``)."""
    if crowd not in CROWD_CHOICES:
        raise ValueError(f"crowd must be one of {', '.join(CROWD_CHOICES)}, got {crowd!r}")
    path = _find_json(Path(src).expanduser())
    doc = _load_json(path)
    cats, colors = _categories(path, doc["categories"])
    out_classes, index = resolve_names([name for _, name in cats], classes, unknown=unknown, where=str(path),
                                       colors=colors)
    to_class = {cid: index[name.strip()] for cid, name in cats}
    if images is not None:
        roots = [Path(images).expanduser()]
    else:
        roots = [path.parent, path.parent / "images"]
    by_image: dict[object, list[dict]] = {}
    for ann in doc["annotations"]:
        key = ann.get("image_id") if isinstance(ann, dict) else None
        by_image.setdefault(key, []).append(ann)
    items: list[SourceItem] = []
    seen_ids: set[object] = set()
    for entry in doc["images"]:
        problem = _image_problem(path, entry)
        key = str(entry.get("file_name") or entry.get("id")) if isinstance(entry, dict) else "?"
        if problem is None and entry.get("id") in seen_ids:
            problem = f"{path}: image id {entry.get('id')!r} is listed twice"
        if problem is not None:
            items.append(SourceItem(key, key, b"", _no_mask, origin=path, problem=problem))
            continue
        seen_ids.add(entry["id"])
        name = posixpath.normpath(entry["file_name"].replace("\\", "/"))
        image = next((r / name for r in roots if (r / name).is_file()), roots[0] / name)
        items.append(SourceItem(key=name, image_id=name, image=image, origin=path,
                                mask=_mask_fn(entry, by_image.get(entry["id"], []), to_class, crowd, path)))
    where = f"{path.name}'s categories" + (" and the folder's class list" if classes else "")
    return ImportSource(root=path.parent, classes=out_classes, classes_from=where, items=items)


def _no_mask(h: int, w: int) -> np.ndarray:  # an item skipped for its problem is never asked for a mask
    raise SkipItem("no mask")


def _mask_fn(entry: dict, anns: list[dict], to_class: dict[int, int], crowd: str, path: Path):
    def mask(h: int, w: int) -> np.ndarray:
        ew, eh = entry.get("width"), entry.get("height")
        if (isinstance(ew, int) and isinstance(eh, int)) and (ew, eh) != (w, h):
            raise SkipItem(f"{path}: image {entry['file_name']!r} is listed as {ew}x{eh} but the file is {w}x{h}")
        return coco_mask(anns, h, w, to_class, crowd=crowd, where=f"{path} ({entry['file_name']})")
    return mask


# ---------------------------------------------------------------------------- export
@dataclass
class COCOExportReport(ExportReport):
    annotations: int = 0
    files: list[Path] = field(default_factory=list)


def export_coco(source: AnnotationStore | str | Path, out: str | Path, *, include_prelabeled: bool = False,
                confirmed_only: bool = True, no_images: bool = False, progress: Progress | None = None,
                cancel: Callable[[], bool] | None = None) -> COCOExportReport:
    """Write ``out/annotations.json`` (and ``out/images/``) for the store's exported images."""
    store = open_source(source)
    try:
        out = Path(out).absolute()
        subdirs = () if no_images else ("images",)
        check_out(store, out, subdirs)
        prepare_out(out, subdirs)
        return _export(store, out, include_prelabeled, confirmed_only, no_images, progress, cancel)
    finally:
        if store is not source:
            store.close()


def _export(store, out, include_prelabeled, confirmed_only, no_images, progress, cancel) -> COCOExportReport:
    images: list[dict] = []
    anns: list[dict] = []

    def one(item) -> str:
        if not no_images:
            dst = out / "images" / item.image_id
            try:  # the file itself, or its pixels re-encoded where a loader could turn it
                data = image_bytes(item.image_path)
            except Exception as exc:
                raise ExportSkip(one_line(exc) or f"{item.image_path}: unreadable") from None
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(dst, data)
            except OSError as exc:
                raise FormatError(f"could not write {dst}: {os_reason(exc)}; no annotations.json was written") \
                    from None
        h, w = item.mask.shape
        num = len(images) + 1
        images.append({"id": num, "file_name": item.image_id, "width": w, "height": h})
        anns.extend(coco_annotations(item.mask, num, len(anns) + 1))   # one image's mask at a time
        return item.image_id

    done = run_export(store, out, one, include_prelabeled=include_prelabeled, confirmed_only=confirmed_only,
                      progress=progress, cancel=cancel)
    report = COCOExportReport(out=done.out, exported=done.exported, skipped=done.skipped, cancelled=done.cancelled)
    cats = [{"id": i + 1, "name": c.name, "supercategory": "", "color": list(c.color)}
            for i, c in enumerate(store.classes)]
    doc = {"info": {"description": "semantic segmentation exported by deeplab-gui"}, "licenses": [],
           "images": images, "annotations": anns, "categories": cats}
    dst = out / "annotations.json"
    try:
        atomic_write_bytes(dst, json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    except OSError as exc:
        raise FormatError(f"could not write {dst}: {os_reason(exc)}") from None
    report.annotations = len(anns)
    report.files.append(dst)
    return report


# ---------------------------------------------------------------------------- registration
def _read(src: Path, *, classes: list[LabelClass] | None = None, images: str | None = None,
          unknown: str = "add", crowd: str = "class") -> ImportSource:
    return read_coco(src, classes=classes, images=images, unknown=unknown, crowd=crowd)


def _write(store: AnnotationStore, out: Path, *, progress: Progress | None = None,
           cancel: Callable[[], bool] | None = None, include_prelabeled: bool = False,
           confirmed_only: bool = True, no_images: bool = False) -> COCOExportReport:
    return export_coco(store, out, include_prelabeled=include_prelabeled, confirmed_only=confirmed_only,
                       no_images=no_images, progress=progress, cancel=cancel)


register(LabelFormat(
    name="coco", summary="COCO JSON: polygons or RLE per annotation, later ones over earlier; export writes "
                         "one RLE annotation per class per image",
    read=_read, write=_write, src_help="the COCO JSON file (or a folder holding annotations.json)",
    options=(
        FormatOption("images", "folder the file_name entries are relative to (default: beside the JSON, "
                               "or its images/ folder)", str, None),
        FormatOption("unknown", "category names the folder's class list lacks: add them, or refuse the "
                                "import listing them", str, "add", choices=UNKNOWN_CHOICES),
        FormatOption("crowd", "draw iscrowd annotations as their category or as void", str, "class",
                     choices=CROWD_CHOICES),
        FormatOption("no_images", "write annotations.json only, no copies of the images", None, False,
                     for_import=False, for_export=True),
    )))
