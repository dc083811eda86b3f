"""The Help menu: a keyboard-shortcut cheat sheet, the log folder, and an About box.

The cheat sheet is built from the window's own actions (their texts and shortcuts) and the canvas
tools' key table when it opens, so it lists exactly what the keys do and cannot fall behind them.
"""
from __future__ import annotations

import logging
import platform
import sys

from PySide6.QtCore import Qt, QUrl, qVersion
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QMainWindow,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ...state.settings import log_dir
from ..canvas.tools import TOOL_KEYS

__all__ = ["AboutDialog", "ShortcutsDialog", "about_lines", "add_help_menu", "app_version",
           "device_name", "open_log_folder", "shortcut_rows"]

log = logging.getLogger("deeplab_gui")


def _plain(text: str) -> str:
    """A menu text without its mnemonic ampersands and trailing dots ("&Open folder..." -> "Open folder")."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip(".").strip()


def shortcut_rows(window: QMainWindow) -> list[tuple[str, str]]:
    """``(keys, what they do)`` for every action of ``window`` that has a shortcut, plus any tool key
    in ``TOOL_KEYS`` that no action carries; several keys of one action are joined with " or "."""
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for act in window.actions():
        keys = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in act.shortcuts() if not k.isEmpty()]
        if not keys:
            continue
        seen.update(keys)
        rows.append((" or ".join(keys), _plain(act.text())))
    for name, key in TOOL_KEYS.items():
        text = QKeySequence(key).toString(QKeySequence.SequenceFormat.NativeText)
        if text not in seen:
            rows.append((text, f"{name.capitalize()} tool"))
    return rows


class ShortcutsDialog(QDialog):
    """A two-column table: keys, and what they do."""

    def __init__(self, window: QMainWindow) -> None:
        super().__init__(window)
        self.setWindowTitle("Keyboard shortcuts")
        rows = shortcut_rows(window)
        self.table = QTableWidget(len(rows), 2, self)
        self.table.setHorizontalHeaderLabels(["Keys", "Action"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for r, (keys, what) in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(keys))
            self.table.setItem(r, 1, QTableWidgetItem(what))
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setStretchLastSection(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table)
        lay.addWidget(buttons)
        self.resize(420, 560)

    def rows(self) -> list[tuple[str, str]]:
        return [(self.table.item(r, 0).text(), self.table.item(r, 1).text()) for r in range(self.table.rowCount())]


def app_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("deeplab-gui")
        except PackageNotFoundError:
            return "unknown (not installed)"
    except ImportError:
        return "unknown"


def device_name() -> str:
    """"CPU", or the name of the CUDA device models run on."""
    try:
        import torch
        if torch.cuda.is_available():
            return f"CUDA: {torch.cuda.get_device_name(0)}"
    except Exception as exc:  # noqa: BLE001  (a broken driver must not stop the About box from opening)
        log.warning("no CUDA device name: %s", exc)
    return "CPU"


def about_lines() -> list[str]:
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    return [f"deeplab-gui {app_version()}",
            f"Python {platform.python_version()} ({sys.platform})",
            f"torch {torch_version}",
            f"Qt {qVersion()}",
            f"Device: {device_name()}",
            f"Log folder: {log_dir()}"]


class AboutDialog(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About deeplab-gui")
        self.label = QLabel("\n".join(about_lines()))
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # copyable into a bug report
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.label)
        lay.addWidget(buttons)


def open_log_folder(window=None) -> bool:
    """Show the log folder in the system's file manager (creating it first: it may not exist yet)."""
    folder = log_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if window is not None and hasattr(window, "show_message"):
            window.show_message("warning", f"{folder}: cannot create the log folder ({exc.strerror or exc})")
        return False
    ok = bool(QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))))
    if not ok and window is not None and hasattr(window, "show_message"):
        window.show_message("warning", f"{folder}: no file manager could open the log folder")
    return ok


def add_help_menu(window: QMainWindow):
    """Add the Help menu to ``window``'s menu bar; returns the menu.  The open dialogs are kept on the
    window (``help_dialogs``) so tests and a second click find the same one."""
    menu = window.menuBar().addMenu("&Help")
    window.help_dialogs = {}

    def show(kind: str, make) -> None:
        dlg = window.help_dialogs.get(kind)
        if dlg is None or kind == "shortcuts":  # rebuilt: actions may have changed since
            if dlg is not None:
                dlg.deleteLater()
            dlg = window.help_dialogs[kind] = make()
        dlg.show()
        dlg.raise_()

    for text, slot in (("&Keyboard shortcuts", lambda: show("shortcuts", lambda: ShortcutsDialog(window))),
                       ("Open &log folder", lambda: open_log_folder(window)),
                       ("&About", lambda: show("about", lambda: AboutDialog(window)))):
        act = QAction(text, window)
        act.triggered.connect(slot)
        menu.addAction(act)
    return menu
