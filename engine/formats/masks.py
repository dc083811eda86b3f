"""Mask folders: index PNGs named like the images, in the ADE20K / mmsegmentation layout.

Layout (import and export)::

    SRC/images/[SPLIT/...]<name>.<any image extension>
    SRC/annotations/[SPLIT/...]<name>.png     one byte per pixel (L or P mode): the class index
    SRC/classes.txt                            optional: one class name per line, in index order

``img_dir`` / ``ann_dir`` (mmsegmentation's custom-dataset names) are accepted in place of
``images`` / ``annotations``.  Each mask is matched with the image of the same relative path and
stem, whatever its extension; the image id in the folder is that relative path (``training/a.jpg``).
``split`` imports only one sub-folder (``training``, ``val``, ...).

``reduce_zero_label`` (ADE20K's convention in mmsegmentation): file value 0 is void (255) and value
``v`` is class ``v - 1``; 255 stays void.  Without it values are class indices and 255 is void.

Class list on import, first that applies: ``classes.txt`` (a line may add a colour after a tab,
``name<TAB>r,g,b``, as export writes it); else the target folder's list when it already has one,
extended with numbered classes ("class 7") up to the highest index seen; else numbered classes
``class 0`` ... for the highest index seen.  Colours not given come from the VOC colour map.

Refused per image, with a message naming the file: a mask with no image of the same name, a
16-bit or colour (RGB) mask file (convert it to an index PNG first: guessing a colour table would
mislabel pixels), a mask of another size than its image.

Export writes the same layout: each image (copied as is, or re-encoded when EXIF rotates it) under
``images/``, its mask as an L-mode PNG under ``annotations/`` (confirmed-only: pixels no person set
are void), ``classes.txt`` with colours.  ``val_fraction`` above 0 splits into ``train/`` and
``val/`` sub-folders (the VOC export's deterministic split).  Two images whose masks would share a
name (``a.jpg`` and ``a.png``) export the first only; the second is skipped with the reason.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import one_line
from ..imageio import IMAGE_EXTENSIONS
from ..labels import VOID, LabelClass
from ..meta import voc_colormap
from ..store.scan import natural_key
from ..store.store import AnnotationStore
from .common import FormatError, os_reason
from .exporter import (ExportItem, ExportReport, ExportSkip, check_out, export_ids, image_bytes, prepare_out,
                       run_export, write_file)
from .importer import ImportSource, SkipItem, SourceItem
from .registry import FormatOption, LabelFormat, register
from .voc_common import split_ids

__all__ = ["read_mask_folder", "write_mask_folder", "read_index_png", "numbered_classes", "LAYOUTS"]

LAYOUTS = (("images", "annotations"), ("img_dir", "ann_dir"))
MAX_CLASSES = 255  # index 255 is void


def numbered_classes(n: int, start: list[LabelClass] | None = None) -> list[LabelClass]:
    """``start`` (default none) extended to ``n`` classes named ``class <index>``, VOC colours."""
    out = list(start or [])
    colors = voc_colormap(max(n, 1))
    out += [LabelClass(f"class {i}", tuple(colors[i])) for i in range(len(out), n)]
    return out


def read_index_png(path: Path) -> np.ndarray:
    """An L/P-mode PNG's values as H×W uint8; :class:`SkipItem` naming the file for anything else."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "P", "1"):
                return np.array(im).astype(np.uint8)  # a 1-bit file holds classes 0 and 1
    except Exception as exc:  # whatever the decoder says about one broken file, the rest goes on
        raise SkipItem(f"{path}: unreadable mask ({one_line(exc) or 'corrupt file'})") from None
    if mode.startswith("I"):
        raise SkipItem(f"{path}: 16-bit mask; class indices must be an 8-bit (L or P mode) PNG")
    if mode in ("RGB", "RGBA"):
        raise SkipItem(f"{path}: colour (RGB) mask; class indices must be an 8-bit (L or P mode) PNG")
    raise SkipItem(f"{path}: mask mode {mode} is no 8-bit class-index image (L or P)")


def _reduce(values: np.ndarray) -> np.ndarray:
    out = values.astype(np.int16) - 1
    out[(values == 0) | (values == VOID)] = VOID
    return out.astype(np.uint8)


def _find_layout(src: Path) -> tuple[Path, Path]:
    for img, ann in LAYOUTS:
        if (src / ann).is_dir():
            if not (src / img).is_dir():
                raise FormatError(f"{src / img}: no such folder (the images for {src / ann})")
            return src / img, src / ann
    names = " or ".join(f"{a}/" for _, a in LAYOUTS)
    raise FormatError(f"{src}: not a mask folder (no {names} inside)")


def _read_classes_txt(path: Path) -> list[LabelClass]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({os_reason(exc)})") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise FormatError(f"{path}: lists no class names")
    if len(lines) > MAX_CLASSES:
        raise FormatError(f"{path}: {len(lines)} classes, but at most {MAX_CLASSES} fit (index 255 is void)")
    colors = voc_colormap(len(lines))
    out: list[LabelClass] = []
    for i, line in enumerate(lines):
        name, _, color = line.partition("\t")
        name = name.strip()
        rgb = tuple(colors[i])
        if color.strip():
            try:
                parts = tuple(int(v) for v in color.split(","))
                if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
                    raise ValueError
            except ValueError:
                raise FormatError(f"{path}: line {i + 1}: the colour must be r,g,b with values 0..255") from None
            rgb = parts
        if name in {c.name for c in out}:
            raise FormatError(f"{path}: the class name {name!r} appears twice")
        out.append(LabelClass(name, rgb))
    return out


def _highest(path: Path, reduce_zero_label: bool) -> int:
    """The highest class index in a mask file (-1: none or unreadable; the import reports it later)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                return -1
            values = np.unique(np.asarray(im))
    except Exception:  # unreadable files are skipped with their reason when imported
        return -1
    if reduce_zero_label:
        values = values[(values != 0) & (values != VOID)] - 1
    else:
        values = values[values != VOID]
    return int(values.max()) if values.size else -1


def read_mask_folder(src: Path, *, classes: list[LabelClass] | None = None, reduce_zero_label: bool = False,
                     split: str | None = None) -> ImportSource:
    """A mask folder as an :class:`ImportSource` (see the module docstring); nothing is written."""
    src = Path(src)
    if not src.is_dir():
        raise FormatError(f"{src}: not a folder")
    img_root, ann_root = _find_layout(src)
    if split:
        img_root, ann_root = img_root / split, ann_root / split
        if not ann_root.is_dir():
            raise FormatError(f"{ann_root}: no such folder (the split {split!r})")
    masks = sorted((p for p in ann_root.rglob("*.png") if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: natural_key(p.relative_to(ann_root).as_posix()))
    if not masks:
        raise FormatError(f"{ann_root}: holds no mask (.png) files")
    images: dict[str, Path] = {}
    if img_root.is_dir():
        for p in sorted(img_root.rglob("*"), key=lambda p: natural_key(p.as_posix())):
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                images.setdefault(p.relative_to(img_root).with_suffix("").as_posix(), p)
    prefix = f"{split}/" if split else ""
    if (src / "classes.txt").is_file():
        names, classes_from = _read_classes_txt(src / "classes.txt"), str(src / "classes.txt")
    else:
        top = max((_highest(m, reduce_zero_label) for m in masks), default=-1)
        if top >= MAX_CLASSES:
            top = MAX_CLASSES - 1
        if classes:
            names = numbered_classes(max(top + 1, len(classes)), classes)
            classes_from = "the folder's class list" + (", extended with numbered classes"
                                                         if len(names) > len(classes) else "")
        else:
            names = numbered_classes(max(top + 1, 1))
            classes_from = f"numbered classes up to the highest index seen ({top})"
    items = []
    for m in masks:
        stem = m.relative_to(ann_root).with_suffix("").as_posix()
        img = images.get(stem)
        problem = None if img is not None else f"{m}: no image named like it in {img_root}"
        image_id = prefix + (img.relative_to(img_root).as_posix() if img is not None else stem + ".png")
        items.append(SourceItem(key=prefix + stem, image_id=image_id, image=img or m, mask=_loader(m, reduce_zero_label),
                                origin=m, problem=problem))
    return ImportSource(root=src, classes=names, classes_from=classes_from, items=items)


def _loader(path: Path, reduce_zero_label: bool) -> Callable[[int, int], np.ndarray]:
    def load(h: int, w: int) -> np.ndarray:
        values = read_index_png(path)
        return _reduce(values) if reduce_zero_label else values
    return load


# ---------------------------------------------------------------------------- export
def write_mask_folder(store: AnnotationStore, out: Path, *, progress=None, cancel=None,
                      include_prelabeled: bool = False, confirmed_only: bool = True,
                      reduce_zero_label: bool = False, val_fraction: float = 0.0, seed: int = 0) -> ExportReport:
    """Export ``store`` as a mask folder in ``out`` (see the module docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be at least 0 and below 1, got {val_fraction}")
    classes = store.classes
    if reduce_zero_label and len(classes) > 254:
        raise FormatError(f"{store.folder}: {len(classes)} classes do not fit reduce_zero_label's 1..254")
    out = Path(out).absolute()
    check_out(store, out, ("images", "annotations"))
    prepare_out(out, ("images", "annotations"))
    ids = export_ids(store, include_prelabeled=include_prelabeled)
    val: set[str] = set()
    if val_fraction > 0:
        val = set(split_ids(ids, val_fraction=val_fraction, seed=seed)[1])
    taken: dict[str, str] = {}

    def one(item: ExportItem) -> str:
        sub = ("val/" if item.image_id in val else "train/") if val_fraction > 0 else ""
        rel = sub + item.image_id
        stem = os.path.splitext(rel)[0]
        if stem.lower() in taken:
            raise ExportSkip(f"its mask would be named like that of {taken[stem.lower()]} "
                             f"({stem}.png); rename one of the images")
        try:
            data = image_bytes(item.image_path)
        except Exception as exc:
            raise ExportSkip(one_line(exc) or "unreadable image") from None
        mask = item.mask
        if reduce_zero_label:
            mask = np.where(mask == VOID, 0, mask.astype(np.int16) + 1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(mask, mode="L").save(buf, format="PNG")
        taken[stem.lower()] = item.image_id
        write_file(out / "images" / rel, data)
        write_file(out / "annotations" / f"{stem}.png", buf.getvalue())
        return rel

    report = run_export(store, out, one, confirmed_only=confirmed_only, progress=progress, cancel=cancel, ids=ids)
    text = "".join(f"{c.name}\t{c.color[0]},{c.color[1]},{c.color[2]}\n" for c in classes)
    write_file(out / "classes.txt", text.encode("utf-8"))
    return report


def _read(src: Path, *, classes: list[LabelClass] | None = None, reduce_zero_label: bool = False,
          split: str | None = None) -> ImportSource:
    return read_mask_folder(src, classes=classes, reduce_zero_label=reduce_zero_label, split=split)


register(LabelFormat(
    name="masks", summary="mask folder: images/ + annotations/ index PNGs (ADE20K, mmsegmentation layout)",
    read=_read, write=write_mask_folder, src_help="the folder holding images/ and annotations/",
    options=(
        FormatOption("reduce_zero_label", "file value 0 is void and value v is class v-1 (ADE20K's convention)",
                     None, False, for_import=True, for_export=True),
        FormatOption("split", "import only this sub-folder of images/ and annotations/ (e.g. training)", str, None),
        FormatOption("val_fraction", "export into train/ and val/ sub-folders, this share in val (default 0: "
                     "no sub-folders)", float, 0.0, for_import=False, for_export=True),
        FormatOption("seed", "seed of the deterministic train/val split", int, 0, for_import=False,
                     for_export=True),
    )))
