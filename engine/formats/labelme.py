"""labelme / X-AnyLabeling JSON: import shapes into an annotation store, export masks as polygons.

One JSON file per image, labelme's schema: ``version``, ``flags``, ``shapes`` (each ``label``,
``points``, ``group_id``, ``shape_type``, ``flags``, ``description``, ``mask``), ``imagePath``,
``imageData`` (base64 image or null), ``imageHeight``, ``imageWidth``.

Import (SRC: a folder, searched recursively for ``*.json``, or one JSON file): the image is the
embedded ``imageData`` when there is one (what the annotator saw), else the file ``imagePath`` names,
relative to the JSON.  It is stored as ``<the JSON's folder under SRC>/<imagePath's file name>`` (an
embedded image without a name: the JSON's name with the image format's extension).  Shapes are drawn
in file order, later over earlier, as labelme draws them (:mod:`engine.formats.labelme_draw`);
pixels no shape covers are void.  A shape marked as a hole (``flags.hole`` true, or ``description``
"hole") is drawn as void, so what lies inside it comes from the shapes after it.  The label
``__ignore__`` draws void too.  Points, lines and line strips are not drawn (they cover no area); the
import report's ``notes`` name each file that had some.
Label names map to classes by name; names the folder's class list lacks are added (``unknown="add"``)
or refuse the import with a list of them.  Into a new folder the class list is ``labels.txt`` in SRC
when there is one (labelme2voc's file: one name per line, ``__ignore__`` skipped), then the names in
the order they first appear.

What skips one image, naming the JSON file: not readable, empty, not JSON or not a labelme file, no
image (``imageData`` undecodable, ``imagePath`` missing), an image of another size than
``imageHeight``/``imageWidth``, a shape that cannot be drawn (bad points, a circle without two points,
a mask whose PNG does not fit its box) or with points more than a pixel outside the image.

Export writes, per exported image, ``OUT/<image id>`` (a copy of the image) and beside it
``OUT/<image id without extension>.json`` (``imagePath`` the image's file name, ``imageData`` null
unless ``embed``), plus ``OUT/labels.txt`` (``__ignore__`` then the class names, as labelme2voc reads
it).  Two images differing only in extension get ``<stem>_<ext>.json`` for the second.  The shapes
are polygons around each region with holes marked as above, and ``mask`` shapes for the few pixels
polygons do not reproduce, so importing gives back the mask exactly (``simplify`` > 0: fewer points,
approximate).  Masks are confirmed-only, as every export: pixels no person set are left out (void).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import posixpath
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import one_line
from ..fileio import atomic_write_bytes
from ..labels import VOID, LabelClass
from ..store.scan import natural_key
from ..store.store import AnnotationStore
from .classnames import UNKNOWN_CHOICES, resolve_names
from .common import FormatError, os_reason, read_json
from .exporter import (
    ExportReport,
    ExportSkip,
    check_out,
    export_ids,
    image_bytes,
    open_source,
    prepare_out,
    run_export,
)
from .importer import ImportSource, SkipItem, SourceItem
from .labelme_draw import IGNORE_LABEL, NO_AREA_TYPES, DrawError, is_hole, mask_shapes, shape_region
from .registry import FormatOption, LabelFormat, register

__all__ = ["read_labelme", "export_labelme", "labelme_mask", "LABELME_VERSION"]

Progress = Callable[[int, int], None]
LABELME_VERSION = "5.5.0"
_EXT = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif"}


# ---------------------------------------------------------------------------- reading one file
class _Doc:
    """One parsed labelme file, or the reason it cannot be used."""

    def __init__(self, path: Path, rel_dir: str) -> None:
        self.path = path
        self.problem: str | None = None
        self.shapes: list = []
        self.image: Path | bytes = b""
        self.image_id = posixpath.join(rel_dir, path.stem + ".png") if rel_dir else path.stem + ".png"
        self.size: tuple[object, object] = (None, None)
        try:
            self._parse(rel_dir)
        except SkipItem as exc:
            self.problem = str(exc)

    def _parse(self, rel_dir: str) -> None:
        doc = read_json(self.path, SkipItem)
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            raise SkipItem(f"{self.path}: not a labelme file (no 'shapes' list)")
        self.shapes = doc["shapes"]
        for n, s in enumerate(self.shapes):
            if not isinstance(s, dict) or not isinstance(s.get("label"), str) or not s["label"].strip():
                raise SkipItem(f"{self.path}: shape {n + 1} has no label")
        self.size = (doc.get("imageHeight"), doc.get("imageWidth"))
        name = doc.get("imagePath")
        name = name.replace("\\", "/") if isinstance(name, str) and name.strip() else None
        data = doc.get("imageData")
        if isinstance(data, str) and data.strip():
            try:
                self.image = base64.b64decode(data, validate=False)
            except (binascii.Error, ValueError):
                raise SkipItem(f"{self.path}: imageData is not base64") from None
            base = posixpath.basename(name) if name else self.path.stem + _sniff_ext(self.image)
        elif name:
            self.image = (self.path.parent / name)
            if not self.image.is_file():
                raise SkipItem(f"{self.image}: no such image (imagePath of {self.path})")
            base = posixpath.basename(name)
        else:
            raise SkipItem(f"{self.path}: neither imageData nor imagePath names an image")
        self.image_id = posixpath.join(rel_dir, base) if rel_dir else base

    def labels(self) -> list[str]:
        return [s["label"] for s in self.shapes if s["label"].strip() != IGNORE_LABEL]


def _sniff_ext(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _EXT.get(im.format or "", ".png")
    except Exception:  # undecodable: the import's own decode reports it
        return ".png"


def labelme_mask(shapes: list, h: int, w: int, to_class: dict[str, int], where: str) -> np.ndarray:
    """Draw labelme ``shapes`` in order into an H×W uint8 mask (void where none is, holes void)."""
    out = np.full((h, w), VOID, np.uint8)
    for n, shape in enumerate(shapes):
        label = shape["label"].strip()
        try:
            region = shape_region(shape, h, w)
        except DrawError as exc:
            raise SkipItem(f"{where}: shape {n + 1} ({label!r}): {exc}") from None
        if region is not None:
            out[region] = VOID if (is_hole(shape) or label == IGNORE_LABEL) else to_class[label]
    return out


# ---------------------------------------------------------------------------- import
def _json_files(src: Path) -> tuple[Path, list[Path]]:
    if src.is_file():
        return src.parent, [src]
    if not src.is_dir():
        raise FormatError(f"{src}: no such file or folder")
    files = sorted((p for p in src.rglob("*.json") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(src).parts)),
        key=lambda p: natural_key(p.relative_to(src).as_posix()))
    if not files:
        raise FormatError(f"{src}: no labelme .json files in this folder")
    return src, files


def _labels_txt(root: Path) -> list[str]:
    path = root / "labels.txt"
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read ({one_line(exc)})") from None
    return [s.strip() for s in lines if s.strip() and s.strip() != IGNORE_LABEL]


def read_labelme(src: str | Path, *, classes: list[LabelClass] | None = None,
                 unknown: str = "add") -> ImportSource:
    """An :class:`ImportSource` for a folder of labelme JSON files (or one file)."""
    root, files = _json_files(Path(src).expanduser())
    docs = []
    for path in files:
        rel = path.parent.relative_to(root).as_posix()
        docs.append(_Doc(path, "" if rel == "." else rel))
    names = _labels_txt(root) + [name for d in docs if d.problem is None for name in d.labels()]
    out_classes, index = resolve_names(names, classes, unknown=unknown, where=str(root))
    items = [SourceItem(key=d.path.relative_to(root).as_posix(), image_id=d.image_id, image=d.image,
                        mask=_mask_fn(d, index), origin=d.path, problem=d.problem, note=_no_area_note(d))
             for d in docs]
    where = "the labels in " + (str(root) if len(files) > 1 else str(files[0]))
    return ImportSource(root=root, classes=out_classes, classes_from=where, items=items)


def _no_area_note(doc: _Doc) -> str | None:
    """What an image's points and lines come to (they cover no pixel, so no class: left out)."""
    n = sum(1 for s in doc.shapes if s.get("shape_type") in NO_AREA_TYPES)
    if not n or doc.problem is not None:
        return None
    return f"{doc.path}: {n} point or line shape{'s' if n > 1 else ''} left out (no area to label)"


def _mask_fn(doc: _Doc, index: dict[str, int]):
    def mask(h: int, w: int) -> np.ndarray:
        eh, ew = doc.size
        if isinstance(eh, int) and isinstance(ew, int) and (eh, ew) != (h, w):
            raise SkipItem(f"{doc.path}: imageWidth/imageHeight say {ew}x{eh} but the image is {w}x{h}")
        return labelme_mask(doc.shapes, h, w, index, str(doc.path))
    return mask


# ---------------------------------------------------------------------------- export
def _json_names(ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for image_id in sorted(ids, key=natural_key):
        stem, ext = posixpath.splitext(image_id)
        name = stem + ".json"
        n = 1
        while name.lower() in used:
            name = f"{stem}_{ext.lstrip('.').lower()}{n if n > 1 else ''}.json"
            n += 1
        used.add(name.lower())
        out[image_id] = name
    return out


def export_labelme(source: AnnotationStore | str | Path, out: str | Path, *, include_prelabeled: bool = False,
                   confirmed_only: bool = True, embed: bool = False, simplify: float = 0.0,
                   progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> ExportReport:
    """Write one labelme JSON per exported image beside a copy of the image, and ``labels.txt``."""
    if simplify < 0:
        raise ValueError(f"simplify must be 0 or more pixels, got {simplify}")
    store = open_source(source)
    try:
        out = Path(out).absolute()
        check_out(store, out)
        prepare_out(out)
        return _export(store, out, include_prelabeled, confirmed_only, embed, simplify, progress, cancel)
    finally:
        if store is not source:
            store.close()


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise FormatError(f"could not write {path}: {os_reason(exc)}") from None


def _export(store, out, include_prelabeled, confirmed_only, embed, simplify, progress, cancel) -> ExportReport:
    ids = export_ids(store, include_prelabeled=include_prelabeled)
    names = _json_names(ids)
    labels = [c.name for c in store.classes]
    _write(out / "labels.txt", "".join(f"{n}\n" for n in [IGNORE_LABEL] + labels).encode("utf-8"))

    def one(item) -> str:
        try:  # the file itself, or its pixels re-encoded where a loader could turn it
            data = image_bytes(item.image_path)
        except Exception as exc:
            raise ExportSkip(one_line(exc) or f"{item.image_path}: unreadable") from None
        h, w = item.mask.shape
        doc = {"version": LABELME_VERSION, "flags": {},
               "shapes": mask_shapes(item.mask, labels, simplify=simplify),
               "imagePath": posixpath.basename(item.image_id),
               "imageData": base64.b64encode(data).decode("ascii") if embed else None,
               "imageHeight": h, "imageWidth": w}
        _write(out / item.image_id, data)
        _write(out / names[item.image_id], json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"))
        return item.image_id

    # One image's mask in memory at a time, whatever the folder's size.
    return run_export(store, out, one, confirmed_only=confirmed_only, progress=progress, cancel=cancel, ids=ids)


# ---------------------------------------------------------------------------- registration
def _read(src: Path, *, classes: list[LabelClass] | None = None, unknown: str = "add") -> ImportSource:
    return read_labelme(src, classes=classes, unknown=unknown)


def _write_fmt(store: AnnotationStore, out: Path, *, progress: Progress | None = None,
               cancel: Callable[[], bool] | None = None, include_prelabeled: bool = False,
               confirmed_only: bool = True, embed: bool = False, simplify: float = 0.0) -> ExportReport:
    return export_labelme(store, out, include_prelabeled=include_prelabeled, confirmed_only=confirmed_only,
                          embed=embed, simplify=simplify, progress=progress, cancel=cancel)


register(LabelFormat(
    name="labelme", summary="labelme / X-AnyLabeling JSON per image: polygons, rectangles, circles, masks "
                            "(holes: flags.hole); export writes polygons from the masks",
    read=_read, write=_write_fmt, src_help="a folder of labelme .json files (searched recursively) or one file",
    options=(
        FormatOption("unknown", "label names the folder's class list lacks: add them, or refuse the import "
                                "listing them", str, "add", choices=UNKNOWN_CHOICES),
        FormatOption("embed", "put each image into its JSON as imageData too", None, False,
                     for_import=False, for_export=True),
        FormatOption("simplify", "thin polygons to this tolerance in pixels (0: exact)", float, 0.0,
                     for_import=False, for_export=True),
    )))
