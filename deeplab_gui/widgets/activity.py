"""Tells the effort meter when a person is at work in the main window, and shows its figures.

:class:`ActivityFilter` is an application-wide event filter, like the input guard, scoped to one
window: a mouse press, move or wheel, or a key press on any widget of that window (the canvas, the
panels, the window itself) calls the meter's ``note_input``.  Dialogs are windows of their own, so
reading the progress window does not count as working on the image; and when the window stops being
the active one (another application, or a dialog, took the focus) the clock stops at once
(``note_idle``) rather than running out its 30 s.  Shortcut keys count too: Qt
offers them as ``ShortcutOverride`` and then delivers no key press at all.

:class:`EffortLabel` is the status bar's "⏱ 1:42 · 17 actions", greyed while the clock stands still, so
that a glance tells whether the time still counts.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QLabel, QWidget

__all__ = ["ActivityFilter", "EffortLabel", "install_activity_filter"]

_INPUT = frozenset({QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonDblClick, QEvent.Type.MouseMove,
                    QEvent.Type.Wheel, QEvent.Type.KeyPress, QEvent.Type.ShortcutOverride})


class ActivityFilter(QObject):
    """See the module docstring; lives (and dies) with ``window``."""

    def __init__(self, window: QWidget, effort: Any) -> None:
        super().__init__(window)
        self.window = window
        self.effort = effort

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802  (Qt's name)
        kind = event.type()
        if kind in _INPUT and isinstance(obj, QWidget) and obj.window() is self.window:
            self.effort.note_input()
        elif kind == QEvent.Type.WindowDeactivate and obj is self.window:
            self.effort.note_idle()
        return False  # only watching: every event goes on to its widget


def install_activity_filter(window: QWidget, effort: Any) -> ActivityFilter:
    """Feed ``effort`` (an :class:`~deeplab_gui.state.effort.EffortState`) the input of ``window``."""
    watcher = ActivityFilter(window, effort)
    QApplication.instance().installEventFilter(watcher)
    return watcher


class EffortLabel(QLabel):
    """The current image's active time and actions, kept up to date by the meter's ``changed`` (which
    also fires when the clock starts and when it stops)."""

    def __init__(self, effort: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.effort = effort
        effort.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        self.setText(self.effort.text())
        running = self.effort.running
        self.setForegroundRole(QPalette.ColorRole.WindowText if running else QPalette.ColorRole.PlaceholderText)
        self.setToolTip("Active time on this image and the edits made on it, across sessions. The clock runs "
                        "while you work and stops 30 s after your last mouse or key input"
                        + ("." if running else "; it stands still now (greyed) until the next input."))
