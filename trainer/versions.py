"""Model versions of a store: every fine-tuning run's checkpoint, its lineage and metrics, and "current".

``<store>/checkpoints/versions.json`` is the index::

    {"format": 1, "current": "finetune-v002.safetensors",
     "versions": [{"name": "finetune-v001.safetensors", "parent": "...", "created": 1763700000.0,
                   "images": [...], "heldout": [...], "recipe": {...}, "miou_before": 0.41,
                   "miou_after": 0.57, "steps": 300, "arch": "...", "note": "..."}, ...]}

Each checkpoint also carries its own entry in its metadata (``meta.extra["version"]``), so the index
can always be rebuilt: files the index does not know (a crash between writing the checkpoint and
the index) are added from their metadata, entries whose file is gone are dropped.  Writes are atomic.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoints import CheckpointError, read_meta
from engine.fileio import atomic_write_bytes

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

    @property
    def improved(self) -> bool | None:
        """Held-out mIoU did not drop (None when it could not be measured)."""
        if self.miou_before is None or self.miou_after is None:
            return None
        return self.miou_after >= self.miou_before


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
        self.reload()

    @classmethod
    def of(cls, store) -> "Versions":
        """The versions of an engine AnnotationStore."""
        return cls(store.checkpoints_dir)

    # ------------------------------------------------------------------ reading
    def reload(self) -> None:
        data: dict[str, Any] = {}
        if self.file.exists():
            try:
                data = json.loads(self.file.read_text(encoding="utf-8"))
                if data.get("format") != FORMAT:
                    raise ValueError(f"unknown format {data.get('format')!r}")
            except (OSError, ValueError) as exc:
                self.notice = f"{self.file} was unreadable ({exc}); rebuilt from the checkpoints' metadata"
                data = {}
        versions = [Version.from_dict(v) for v in data.get("versions", [])]
        on_disk = {p.name for p in self.dir.glob("*.safetensors")} if self.dir.is_dir() else set()
        versions = [v for v in versions if v.name in on_disk]
        known = {v.name for v in versions}
        for name in sorted(on_disk - known):
            v = self._from_checkpoint(self.dir / name)
            if v is not None:
                versions.append(v)
        versions.sort(key=lambda v: (v.created, v.name))
        self._versions = versions
        current = data.get("current")
        self._current = current if current in {v.name for v in versions} else None

    @staticmethod
    def _from_checkpoint(path: Path) -> Version | None:
        try:
            meta = read_meta(path)
        except CheckpointError:
            return None
        entry = meta.extra.get("version") if meta is not None else None
        return Version.from_dict({**entry, "name": path.name}) if isinstance(entry, dict) else None

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
        """Record a checkpoint already written as ``dir/version.name``; optionally make it current."""
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
            self.get(name)
        self._current = name
        self._write()

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "current": self._current, "versions": [v.to_dict() for v in self._versions]}
        atomic_write_bytes(self.file, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
