"""Cityscapes fine annotations: the 19 training classes, in and out.

Layout (as the official download and cityscapesScripts have it)::

    ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png        official label ids (0..33)
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png   train ids 0..18, 255 ignored

Import reads ``labelIds`` (default; mapped through the official table below, every id whose train id
is 255 or -1 becoming void) or ``trainIds`` (values 0..18 as they are, 255 void).  The class list is
always the 19 training classes with the official colours.  The image id in the folder is the path
under ``leftImg8bit/`` (``train/aachen/aachen_000000_000019_leftImg8bit.png``); ``split`` imports one
split only.

Export needs a store whose class list is those 19 classes (names in this order; refused with a
message otherwise) and writes both ``*_gtFine_labelTrainIds.png`` (void 255) and
``*_gtFine_labelIds.png`` (each class's official id, void 0 "unlabeled"), plus the image as
``*_leftImg8bit.png`` (PNG, re-encoded when it is not one).  An image id already of the form
``<split>/<city>/<name>_leftImg8bit.png`` keeps its place; any other goes to ``<split>/<city>/``
with ``split`` the export option (default ``train``) and the city the id's folder (``/`` as ``_``;
``unknown`` when there is none).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import one_line
from ..labels import VOID, LabelClass
from ..store.scan import natural_key
from ..store.store import AnnotationStore
from .common import FormatError
from .exporter import ExportItem, ExportReport, ExportSkip, check_out, image_bytes, prepare_out, run_export, write_file
from .importer import ImportSource, SkipItem, SourceItem
from .masks import read_index_png
from .registry import FormatOption, LabelFormat, register

__all__ = ["CITYSCAPES_LABELS", "TRAIN_CLASSES", "LABEL_TO_TRAIN", "TRAIN_TO_LABEL", "read_cityscapes",
           "write_cityscapes"]

# cityscapesScripts' helpers/labels.py: (name, id, trainId, colour); trainId 255 / -1 = ignored.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)), ("dynamic", 5, 255, (111, 74, 0)), ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)), ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)), ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)), ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)), ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)), ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)), ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)), ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)), ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)), ("car", 26, 13, (0, 0, 142)), ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)), ("caravan", 29, 255, (0, 0, 90)), ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)), ("motorcycle", 32, 17, (0, 0, 230)), ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, -1, (0, 0, 142)),
)

TRAIN_CLASSES = [LabelClass(n, c) for n, _i, t, c in sorted(
    (lab for lab in CITYSCAPES_LABELS if 0 <= lab[2] < 255), key=lambda lab: lab[2])]

# label id -> train id for every byte value (ids not in the table are void too)
LABEL_TO_TRAIN = np.full(256, VOID, np.uint8)
for _n, _id, _t, _c in CITYSCAPES_LABELS:
    if 0 <= _id < 256 and 0 <= _t < 255:
        LABEL_TO_TRAIN[_id] = _t

# train id -> label id (void -> 0, "unlabeled")
TRAIN_TO_LABEL = np.zeros(256, np.uint8)
for _n, _id, _t, _c in CITYSCAPES_LABELS:
    if 0 <= _t < 255 and 0 <= _id:
        TRAIN_TO_LABEL[_t] = _id

_IMG_SUFFIX = "_leftImg8bit.png"
_ID_KINDS = {"labelIds": "_gtFine_labelIds.png", "trainIds": "_gtFine_labelTrainIds.png"}


def read_cityscapes(src: Path, *, classes: list[LabelClass] | None = None, ids: str = "labelIds",
                    split: str | None = None) -> ImportSource:
    """A Cityscapes root as an :class:`ImportSource` (see the module docstring); nothing is written."""
    src = Path(src)
    if ids not in _ID_KINDS:
        raise ValueError(f"ids must be one of {', '.join(_ID_KINDS)}, not {ids!r}")
    gt, left = src / "gtFine", src / "leftImg8bit"
    for folder in (gt, left):
        if not folder.is_dir():
            raise FormatError(f"{src}: not a Cityscapes root (no {folder.name}/ inside)")
    base = gt / split if split else gt
    if split and not base.is_dir():
        raise FormatError(f"{base}: no such folder (the split {split!r})")
    suffix = _ID_KINDS[ids]
    masks = sorted((p for p in base.rglob(f"*{suffix}") if p.is_file()),
                   key=lambda p: natural_key(p.relative_to(gt).as_posix()))
    if not masks:
        raise FormatError(f"{base}: holds no *{suffix} files")
    items = []
    for m in masks:
        rel = m.relative_to(gt).as_posix()[: -len(suffix)]
        image_id = rel + _IMG_SUFFIX
        img = left / image_id
        problem = None if img.is_file() else f"{img}: no image for {m.name}"
        items.append(SourceItem(key=rel, image_id=image_id, image=img, mask=_loader(m, ids), origin=m,
                                problem=problem))
    return ImportSource(root=src, classes=list(TRAIN_CLASSES), classes_from="Cityscapes' 19 training classes",
                        items=items)


def _loader(path: Path, ids: str):
    def load(h: int, w: int) -> np.ndarray:
        values = read_index_png(path)
        if ids == "labelIds":
            return LABEL_TO_TRAIN[values]
        bad = np.unique(values[(values >= len(TRAIN_CLASSES)) & (values != VOID)])
        if bad.size:
            raise SkipItem(f"{path}: value {int(bad[0])} is no Cityscapes train id (0..18, 255 ignored)")
        return values
    return load


# ---------------------------------------------------------------------------- export
def _check_classes(store: AnnotationStore) -> None:
    have = store.classes
    want = [c.name for c in TRAIN_CLASSES]
    if len(have) != len(want):
        raise FormatError(f"{store.folder}: the class list has {len(have)} classes, not Cityscapes' 19 "
                          f"training classes ({', '.join(want[:3])}, ...); export another format")
    for i, (c, name) in enumerate(zip(have, want)):
        if c.name.strip().lower() != name:
            raise FormatError(f"{store.folder}: class {i} is {c.name!r} where Cityscapes has {name!r}; "
                              f"export another format")


def _place(image_id: str, split: str) -> str:
    """``<split>/<city>/<name>`` for an image id (see the module docstring)."""
    parts = image_id.split("/")
    if len(parts) == 3 and parts[2].endswith(_IMG_SUFFIX):
        return image_id[: -len(_IMG_SUFFIX)]
    city = "_".join(parts[:-1]) or "unknown"
    stem = os.path.splitext(parts[-1])[0]
    if stem.endswith("_leftImg8bit"):
        stem = stem[: -len("_leftImg8bit")]
    return f"{split}/{city}/{stem}"


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_cityscapes(store: AnnotationStore, out: Path, *, progress=None, cancel=None,
                     include_prelabeled: bool = False, confirmed_only: bool = True,
                     split: str | None = None) -> ExportReport:
    """Export ``store`` as Cityscapes gtFine + leftImg8bit in ``out`` (see the module docstring)."""
    split = split or "train"
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"split must be a plain folder name, not {split!r}")
    _check_classes(store)
    out = Path(out).absolute()
    check_out(store, out, ("gtFine", "leftImg8bit"))
    prepare_out(out, ("gtFine", "leftImg8bit"))
    taken: dict[str, str] = {}

    def one(item: ExportItem) -> str:
        rel = _place(item.image_id, split)
        if rel.lower() in taken:
            raise ExportSkip(f"would be written as {rel}, like {taken[rel.lower()]}; rename one of the images")
        try:
            data = image_bytes(item.image_path, ".png")
        except Exception as exc:
            raise ExportSkip(one_line(exc) or "unreadable image") from None
        taken[rel.lower()] = item.image_id
        write_file(out / "leftImg8bit" / (rel + _IMG_SUFFIX), data)
        write_file(out / "gtFine" / (rel + _ID_KINDS["trainIds"]), _png(item.mask))
        write_file(out / "gtFine" / (rel + _ID_KINDS["labelIds"]), _png(TRAIN_TO_LABEL[item.mask]))
        return rel

    return run_export(store, out, one, include_prelabeled=include_prelabeled, confirmed_only=confirmed_only,
                      progress=progress, cancel=cancel)


register(LabelFormat(
    name="cityscapes", summary="Cityscapes gtFine labelIds / labelTrainIds (19 training classes)",
    read=read_cityscapes, write=write_cityscapes, src_help="the Cityscapes root (holding gtFine/ and leftImg8bit/)",
    options=(
        FormatOption("ids", "which masks to import: labelIds (official ids, mapped) or trainIds", str, "labelIds",
                     choices=("labelIds", "trainIds")),
        FormatOption("split", "import: only this split (train, val, test); export: the split folder for images "
                     "not already laid out as <split>/<city>/ (default train)", str, None,
                     for_import=True, for_export=True),
    )))
