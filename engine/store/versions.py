"""Model versions of a store: every fine-tuning run's checkpoint, its lineage and metrics, and "current".

``<store>/checkpoints/versions.json`` is the index::

    {"format": 1, "current": "finetune-v002.safetensors",
     "versions": [{"name": "finetune-v001.safetensors", "parent": "...", "created": 1763700000.0,
                   "images": [...], "heldout": [...], "recipe": {...}, "miou_before": 0.41,
                   "miou_after": 0.57, "steps": 300, "arch": "...", "note": "..."}, ...]}

Each checkpoint also carries its own entry in its metadata (``meta.extra["version"]``), so the index
can always be rebuilt: files the index does not know (a crash between writing the checkpoint and
the index) are added from their metadata, entries whose file is gone are dropped.  Writes are atomic.

A damaged index (not JSON, or JSON of the wrong shape) is rebuilt that way too; ``notice`` says so, and
the next write keeps the damaged file as ``versions.json.damaged-<its time>`` instead of replacing it.
Weights holding NaN or infinity never become a usable version: ``save_model`` refuses to write them, so
no run records them, and the checkpoint reader refuses them, so a damaged file copied in by hand (and
listed from its metadata) can be neither loaded nor trained on.  Recording a version does not read the
weights again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoints.io import CheckpointError, read_meta
from engine.errors import one_line
from engine.fileio import atomic_write_bytes, fsync_dir

__all__ = ["Version", "Versions", "VERSIONS_FILE", "VersionError"]

VERSIONS_FILE = "versions.json"
FORMAT = 1


class VersionError(LookupError):
    """An unknown version name."""


@dataclass
class Version:
    """One fine-tuned checkpoint: file name (in the checkpoints folder), lineage, data, recipe, metrics."""

    name: str
    parent: str | None = None
    created: float = field(default_factory=time.time)
    images: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    miou_before: float | None = None
    miou_after: float | None = None
    steps: int = 0
    arch: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Version":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def parse(cls, d: Any) -> "Version | None":
        """A Version from an index entry or checkpoint metadata; None when ``d`` is not a dict, has no
        plain file name, or a field of the wrong type (which would break sorting and display)."""
        if not isinstance(d, dict):
            return None
        name = d.get("name")
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            return None
        for key, types in _FIELD_TYPES.items():
            if key in d and not isinstance(d[key], types):
                return None
        return cls.from_dict(d)

    @property
    def improved(self) -> bool | None:
        """Held-out mIoU did not drop (None when it could not be measured)."""
        if self.miou_before is None or self.miou_after is None:
            return None
        return self.miou_after >= self.miou_before


_NUM = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "parent": (str, type(None)), "created": _NUM, "images": (list,), "heldout": (list,), "recipe": (dict,),
    "miou_before": (*_NUM, type(None)), "miou_after": (*_NUM, type(None)), "steps": (int,), "arch": (str,),
    "note": (str,)}


def _parse_index(data: Any) -> tuple[list[Version], str | None, int]:
    """(versions, current, entries skipped) of a parsed versions.json; ValueError for the wrong shape."""
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but a {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown format {data.get('format')!r}")
    entries = data.get("versions", [])
    if not isinstance(entries, list):
        raise ValueError(f"'versions' is a {type(entries).__name__}, not a list")
    current = data.get("current")
    if current is not None and not isinstance(current, str):
        raise ValueError(f"'current' is a {type(current).__name__}, not a file name")
    parsed = [Version.parse(e) for e in entries]
    versions = [v for v in parsed if v is not None]
    return versions, current, len(parsed) - len(versions)


class Versions:
    """The version index of one checkpoints folder (``store.checkpoints_dir``).

    Not thread-safe on its own: the app reads it on the UI thread and writes it from the trainer's
    worker only when a run ends, through these methods, which re-read the file first.
    """

    def __init__(self, checkpoints_dir: str | Path) -> None:
        self.dir = Path(checkpoints_dir)
        self.file = self.dir / VERSIONS_FILE
        self.notice: str | None = None
        self._current: str | None = None
        self._versions: list[Version] = []
        self._damaged: tuple[Path, str] | None = None  # (where to keep the damaged index, why it is damaged)
        self.reload()

    @classmethod
    def of(cls, store) -> "Versions":
        """The versions of an engine AnnotationStore."""
        return cls(store.checkpoints_dir)

    # ------------------------------------------------------------------ reading
    def reload(self) -> None:
        """Re-read the index; a damaged one is rebuilt from the checkpoints and reported in ``notice``."""
        versions: list[Version] = []
        current: str | None = None
        self._damaged = None
        if self.file.exists():
            try:
                versions, current, skipped = _parse_index(json.loads(self.file.read_text(encoding="utf-8")))
                if skipped:
                    self._mark_damaged(f"{skipped} unreadable entr{'y' if skipped == 1 else 'ies'}")
            except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, or the wrong shape
                self._mark_damaged(one_line(exc))
        by_name = {v.name: v for v in versions}  # a name listed twice: the later entry wins
        on_disk = {p.name for p in self.dir.glob("*.safetensors")} if self.dir.is_dir() else set()
        versions = [v for v in by_name.values() if v.name in on_disk]
        for name in sorted(on_disk - set(by_name)):
            v = self._from_checkpoint(self.dir / name)
            if v is not None:
                versions.append(v)
        versions.sort(key=lambda v: (v.created, v.name))
        self._versions = versions
        self._current = current if current in {v.name for v in versions} else None

    def _mark_damaged(self, why: str) -> None:
        try:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.file.stat().st_mtime))
        except OSError:
            stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.file.with_name(f"{VERSIONS_FILE}.damaged-{stamp}")
        n = 2
        while aside.exists():
            aside = self.file.with_name(f"{VERSIONS_FILE}.damaged-{stamp}-{n}")
            n += 1
        self._damaged = (aside, why)
        self.notice = (f"{self.file} is damaged ({why}); the versions were rebuilt from the checkpoints' "
                       f"own metadata, and the damaged file will be kept as {aside.name} on the next change")

    @staticmethod
    def _from_checkpoint(path: Path) -> Version | None:
        try:
            meta = read_meta(path)
        except CheckpointError:
            return None
        entry = meta.extra.get("version") if meta is not None else None
        return Version.parse({**entry, "name": path.name}) if isinstance(entry, dict) else None

    def list(self) -> list[Version]:
        """Every version, oldest first."""
        return list(self._versions)

    def get(self, name: str) -> Version:
        for v in self._versions:
            if v.name == name:
                return v
        raise VersionError(f"no model version {name!r} in {self.dir}")

    @property
    def current(self) -> Version | None:
        """The version the app should load, None when no run has been accepted yet."""
        return self.get(self._current) if self._current else None

    def path(self, name: str) -> Path:
        self.get(name)
        return self.dir / name

    def current_path(self) -> Path | None:
        return self.dir / self._current if self._current else None

    # ------------------------------------------------------------------ writing
    def add(self, version: Version, *, make_current: bool) -> None:
        """Record a checkpoint already written as ``dir/version.name`` (by ``save_model``, which refuses
        NaN or infinite weights, so they are not read again here); optionally make it current."""
        self.reload()
        if not (self.dir / version.name).is_file():
            raise VersionError(f"{self.dir / version.name} does not exist")
        self._versions = [v for v in self._versions if v.name != version.name] + [version]
        if make_current:
            self._current = version.name
        self._write()

    def set_current(self, name: str | None) -> None:
        """Make any recorded version current again (None: back to the model the app started with)."""
        self.reload()
        if name is not None:
            self.get(name)  # must be recorded; loading it refuses NaN or infinite weights
        self._current = name
        self._write()

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._damaged is not None and self.file.exists():
            aside, why = self._damaged
            try:  # a second name for the damaged file, so versions.json itself is never missing
                os.link(self.file, aside)
            except OSError:  # no hard links here (some network and FAT file systems)
                shutil.copyfile(self.file, aside)
            fsync_dir(self.dir)
            self._damaged = None
            self.notice = (f"{self.file} was damaged ({why}); the versions were rebuilt from the checkpoints' "
                           f"own metadata, and the damaged file is kept as {aside.name}")
        data = {"format": FORMAT, "current": self._current, "versions": [v.to_dict() for v in self._versions]}
        atomic_write_bytes(self.file, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
