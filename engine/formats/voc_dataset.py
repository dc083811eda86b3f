"""Reading a VOC dataset's class list, ids and deeplab-gui metadata, all checked before an import writes.

Everything here raises :class:`~engine.vocformat.VOCError` with one line naming the file and the
problem; nothing here writes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import one_line
from ..imageio import IMAGE_EXTENSIONS
from ..meta import voc_colormap
from ..store.format import LabelClass, Status, StoreError, check_classes, check_id, default_classes
from ..store.scan import natural_key
from .voc_common import VOCError, os_reason

__all__ = ["VOCDataset", "read_voc_dataset", "MAX_CLASSES"]

MAX_CLASSES = 255  # index 255 is void


@dataclass
class VOCDataset:
    """What an import reads from a VOC root before touching anything."""

    root: Path
    classes: list[LabelClass]
    classes_from: str                  # the file the class list came from, for messages
    ids: list[str]
    listed_in: dict[str, Path]         # VOC id -> the split file (or mask) that named it
    images: dict[str, dict]            # VOC id -> {"id": image id, "status": ...} from deeplab-gui.json


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VOCError(f"{path}: cannot read ({os_reason(exc)})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise VOCError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})") from None


def _checked_classes(source: Path, classes: list[LabelClass]) -> list[LabelClass]:
    if len(classes) > MAX_CLASSES:
        raise VOCError(f"{source}: {len(classes)} classes, but at most {MAX_CLASSES} fit (index 255 is void)")
    seen: set[str] = set()
    for c in classes:
        if any(ord(ch) < 32 for ch in c.name):  # class_names.txt holds one name per line
            raise VOCError(f"{source}: the class name {c.name!r} contains a line break or control character")
        if c.name.strip() in seen:
            raise VOCError(f"{source}: the class name {c.name.strip()!r} appears twice")
        seen.add(c.name.strip())
    try:
        return check_classes(classes)
    except StoreError as exc:
        raise VOCError(f"{source}: {exc}") from None


def _classes_from_json(path: Path, raw: object) -> list[LabelClass]:
    if not isinstance(raw, list) or not raw:
        raise VOCError(f'{path}: "classes" must be a non-empty list of {{"name": ..., "color": [r, g, b]}}, '
                       f"found {_kind(raw) if raw != [] else 'an empty list'}")
    cmap = voc_colormap(256)
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict):
            raise VOCError(f'{path}: class {i} must be an object with "name" and "color", found {_kind(c)}')
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            raise VOCError(f'{path}: class {i} has no name (a non-empty "name" text is needed)')
        color = c.get("color", list(cmap[i % 256]))
        if not (isinstance(color, list) and len(color) == 3
                and all(type(v) is int and 0 <= v <= 255 for v in color)):
            raise VOCError(f'{path}: class {i} ({name.strip()!r}): "color" must be three integers 0..255, '
                           f"found {one_line(json.dumps(color))[:40]}")
        out.append(LabelClass(name.strip(), (color[0], color[1], color[2])))
    return _checked_classes(path, out)


def _images_from_json(path: Path, raw: object) -> dict[str, dict]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise VOCError(f'{path}: "images" must be an object {{VOC id: {{"id": ..., "status": ...}}}}, '
                       f"found {_kind(raw)}")
    out: dict[str, dict] = {}
    owner: dict[str, str] = {}
    allowed = {s.value for s in (Status.PRELABELED, Status.EDITED, Status.REVIEWED)}
    for vid, meta in raw.items():
        where = f"{path}: images[{vid!r}]"
        if not isinstance(meta, dict):
            raise VOCError(f'{where} must be an object with "id" and "status", found {_kind(meta)}')
        image_id = meta.get("id", f"{vid}.jpg")
        if not isinstance(image_id, str):
            raise VOCError(f'{where}: "id" must be a text, found {_kind(image_id)}')
        try:
            check_id(image_id)
        except StoreError as exc:
            raise VOCError(f"{where}: {exc}") from None
        if any(part.startswith(".") for part in image_id.split("/")):
            raise VOCError(f"{where}: {image_id!r} would be a hidden file, which the folder does not list")
        if os.path.splitext(image_id)[1].lower() not in IMAGE_EXTENSIONS:
            raise VOCError(f"{where}: {image_id!r} is no image file name (.jpg, .png, ...)")
        if image_id in owner:
            raise VOCError(f"{where}: the image id {image_id!r} is already given to {owner[image_id]!r}")
        owner[image_id] = vid
        status = meta.get("status")
        if status is not None and status not in allowed:
            raise VOCError(f'{where}: "status" must be one of {", ".join(sorted(allowed))}, found '
                           f"{one_line(json.dumps(status))[:40]}")
        out[vid] = {"id": image_id, "status": status}
    return out


def _read_info(path: Path) -> dict:
    if not (path.exists() or path.is_symlink()):
        return {}
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VOCError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise VOCError(f"{path}: not valid JSON (nested too deeply or malformed)") from None
    if not isinstance(data, dict):
        raise VOCError(f"{path}: expected a JSON object {{...}}, found {_kind(data)}")
    fmt = data.get("format", 1)
    if type(fmt) is not int or fmt < 1:
        raise VOCError(f'{path}: "format" must be 1, found {one_line(json.dumps(fmt))[:40]}')
    if fmt > 1:
        raise VOCError(f"{path}: format {fmt} was written by a newer deeplab-gui; this one reads format 1")
    return data


def _read_classes(root: Path, info: dict) -> tuple[list[LabelClass], str]:
    info_path = root / "deeplab-gui.json"
    if info.get("classes") is not None:
        return _classes_from_json(info_path, info["classes"]), str(info_path)
    names_file = root / "class_names.txt"
    if names_file.exists() or names_file.is_symlink():
        names = [n.strip() for n in _read_text(names_file).splitlines() if n.strip()]
        if not names:
            raise VOCError(f"{names_file}: lists no class names")
        cmap = voc_colormap(256)
        return _checked_classes(names_file, [LabelClass(n, cmap[i % 256]) for i, n in enumerate(names)]), \
            str(names_file)
    return default_classes(), "the PASCAL VOC defaults, as the dataset has no class_names.txt"


def _read_ids(root: Path, split: str | None) -> dict[str, Path]:
    seg = root / "ImageSets" / "Segmentation"
    if split is not None:
        if not split or Path(split).name != split or split.startswith("."):
            raise VOCError(f"invalid split name {split!r}: give a file name in {seg} without .txt")
        f = seg / f"{split}.txt"
        if not f.is_file():
            there = sorted(p.stem for p in seg.glob("*.txt")) if seg.is_dir() else []
            raise VOCError(f"{f}: no such split file" + (f" (there are: {', '.join(there)})" if there else ""))
        files = [f]
    else:
        files = sorted(p for p in seg.glob("*.txt") if p.is_file()) if seg.is_dir() else []
    listed: dict[str, Path] = {}
    for f in files:
        for line in _read_text(f).splitlines():
            if line.strip():
                listed.setdefault(line.strip(), f)
    if files and not listed:
        raise VOCError(f"{files[0] if len(files) == 1 else seg}: the split files list no ids")
    if not files:  # no split files: every mask present
        masks = root / "SegmentationClass"
        listed = {p.stem: p for p in masks.glob("*.png")}
        if not listed:
            raise VOCError(f"{masks}: no masks (*.png) to import, and no split files in {seg}")
    return listed


def read_voc_dataset(voc_root: Path, split: str | None) -> VOCDataset:
    if not voc_root.is_dir():
        raise VOCError(f"{voc_root}: " + ("not a folder" if voc_root.exists() else "no such folder"))
    if not (voc_root / "SegmentationClass").is_dir():
        raise VOCError(f"{voc_root}: not a VOC dataset (no SegmentationClass folder)")
    info = _read_info(voc_root / "deeplab-gui.json")
    classes, source = _read_classes(voc_root, info)
    images = _images_from_json(voc_root / "deeplab-gui.json", info.get("images"))
    listed = _read_ids(voc_root, split)
    return VOCDataset(voc_root, classes, source, sorted(listed, key=natural_key), listed, images)
