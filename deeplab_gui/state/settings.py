"""Persistent settings (QSettings) and the log file (in the user log dir).

What is remembered between runs: recent folders, window geometry and dock state, tool sizes, the CRF
parameters of each folder (a plain dict the CRF panel reads and writes), the image each folder last had
open, the last model weights and the click model.
``DEEPLAB_GUI_SETTINGS`` (an .ini path) and ``DEEPLAB_GUI_LOG_DIR`` redirect both, which tests use so
they never touch a person's real settings.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

__all__ = ["MAX_LAST_IMAGES", "MAX_RECENT", "Settings", "log_dir", "setup_logging"]

MAX_RECENT = 10
MAX_LAST_IMAGES = 100  # folders whose last open image is remembered (the most recent ones)
_LOG_NAME = "deeplab-gui.log"


def log_dir() -> Path:
    """Folder of the log file: ``DEEPLAB_GUI_LOG_DIR`` or platformdirs' user log dir."""
    env = os.environ.get("DEEPLAB_GUI_LOG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_log_dir
    return Path(user_log_dir("deeplab-gui", appauthor=False))


def setup_logging(level: int = logging.INFO) -> Path | None:
    """Send the ``deeplab_gui`` logger to a rotating log file; returns its path (None if unwritable).

    Idempotent: a second call adds no second handler.
    """
    logger = logging.getLogger("deeplab_gui")
    logger.setLevel(level)
    for h in logger.handlers:
        if getattr(h, "_deeplab_gui", False):
            return Path(h.baseFilename)  # type: ignore[attr-defined]
    path = log_dir() / _LOG_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A few MB is days of use; rotation keeps a runaway error loop from filling the disk.
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=2 << 20, backupCount=3,
                                                       encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._deeplab_gui = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return path


class Settings:
    """Typed access to the app's QSettings.  ``path``: an .ini file (tests); default: the platform's."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        path = path or os.environ.get("DEEPLAB_GUI_SETTINGS")
        if path:
            self.q = QSettings(str(path), QSettings.Format.IniFormat)
        else:
            self.q = QSettings("deeplab-gui", "deeplab-gui")

    # ---------------------------------------------------------------- generic
    def get(self, key: str, default: Any = None) -> Any:
        """A JSON value (stored as text so ini/registry/plist backends all round-trip it the same)."""
        raw = self.q.value(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            return default

    def set(self, key: str, value: Any) -> None:
        self.q.setValue(key, json.dumps(value))

    def sync(self) -> None:
        self.q.sync()

    # ---------------------------------------------------------------- recent folders
    def recent_folders(self) -> list[str]:
        value = self.get("recent_folders", [])
        return [str(v) for v in value if isinstance(v, str)] if isinstance(value, list) else []

    def add_recent_folder(self, folder: str | os.PathLike) -> list[str]:
        folder = str(folder)
        recent = [folder] + [f for f in self.recent_folders() if f != folder]
        self.set("recent_folders", recent[:MAX_RECENT])
        return recent[:MAX_RECENT]

    # ---------------------------------------------------------------- window
    def window_state(self) -> tuple[QByteArray | None, QByteArray | None]:
        geo, state = self.q.value("window/geometry"), self.q.value("window/state")
        return (geo if isinstance(geo, QByteArray) else None, state if isinstance(state, QByteArray) else None)

    def set_window_state(self, geometry: QByteArray, state: QByteArray) -> None:
        self.q.setValue("window/geometry", geometry)
        self.q.setValue("window/state", state)

    # ---------------------------------------------------------------- tools
    def tool_size(self, tool: str, default: float) -> float:
        v = self.get(f"tools/{tool}_size", default)
        return float(v) if isinstance(v, (int, float)) else default

    def set_tool_size(self, tool: str, size: float) -> None:
        self.set(f"tools/{tool}_size", float(size))

    # ---------------------------------------------------------------- per-folder CRF parameters
    def crf_params(self, folder: str | os.PathLike) -> dict:
        """The CRF panel's parameters for ``folder`` ({} when never set)."""
        all_ = self.get("crf_params", {})
        v = all_.get(str(folder), {}) if isinstance(all_, dict) else {}
        return v if isinstance(v, dict) else {}

    def set_crf_params(self, folder: str | os.PathLike, params: dict) -> None:
        all_ = self.get("crf_params", {})
        all_ = all_ if isinstance(all_, dict) else {}
        all_[str(folder)] = dict(params)
        self.set("crf_params", all_)

    # ---------------------------------------------------------------- per-folder last image and class
    def _folder_value(self, key: str, folder: str | os.PathLike) -> Any:
        all_ = self.get(key, {})
        return all_.get(str(folder)) if isinstance(all_, dict) else None

    def _set_folder_value(self, key: str, folder: str | os.PathLike, value: Any) -> None:
        all_ = self.get(key, {})
        all_ = all_ if isinstance(all_, dict) else {}
        if all_.get(str(folder)) == value:
            return
        all_.pop(str(folder), None)
        all_[str(folder)] = value  # most recent last: the oldest folders are forgotten first
        self.set(key, dict(list(all_.items())[-MAX_LAST_IMAGES:]))

    def last_image(self, folder: str | os.PathLike, ids: list[str] | None = None) -> str | None:
        """The image ``folder`` last had open; with ``ids``, one of them: the remembered one while the
        folder still holds it, else the first (None for an empty list)."""
        v = self._folder_value("last_image", folder)
        v = v if isinstance(v, str) else None
        if ids is None:
            return v
        return v if v in ids else (ids[0] if ids else None)

    def set_last_image(self, folder: str | os.PathLike, image_id: str) -> None:
        self._set_folder_value("last_image", folder, str(image_id))

    def last_class(self, folder: str | os.PathLike) -> int | None:
        """The class ``folder``'s person last painted with (None: never chosen there)."""
        v = self._folder_value("last_class", folder)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def set_last_class(self, folder: str | os.PathLike, label: int) -> None:
        self._set_folder_value("last_class", folder, int(label))

    # ---------------------------------------------------------------- model
    def last_weights(self) -> str | None:
        v = self.get("model/last_weights")
        return v if isinstance(v, str) else None

    def set_last_weights(self, spec: str | None) -> None:
        self.set("model/last_weights", spec)

    # ---------------------------------------------------------------- click model
    def click_model(self) -> str | None:
        """The click model chosen last: a catalog id or a file path (None: none chosen)."""
        v = self.get("click/model")
        return v if isinstance(v, str) and v else None

    def set_click_model(self, spec: str | None) -> None:
        self.set("click/model", spec)
