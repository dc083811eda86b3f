"""The base of every editing tool: what the canvas calls on the active one (see :mod:`.tools`)."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPointF, Qt

from .toolview import EditTarget, ToolView

__all__ = ["Tool"]


class Tool:
    """Base: ``press``/``move``/``release``/``double_click`` get image coordinates (QPointF).

    Events reach a tool only while it is active, and only while the target has a document.
    """

    name = "tool"
    cursor: Any = Qt.CursorShape.CrossCursor
    sized = False          # whether [ and ] change this tool's size
    double_click_presses = False   # a double click reaches press/right_press, not double_click

    def __init__(self) -> None:
        self.view: ToolView | None = None
        self.target: EditTarget | None = None
        self.size = 8.0    # brush radius in image pixels

    def activate(self, view: ToolView, target: EditTarget) -> None:
        self.view, self.target = view, target

    def deactivate(self) -> None:
        self.reset()
        # Work that finishes later (a CRF snap) must not clear the preview of the tool after this one.
        self.view = None

    def reset(self) -> None:
        """Drop any half-done work (image switched, tool changed)."""

    def image_changed(self) -> None:
        """The target's document is now another image's (by default: :meth:`reset`)."""
        self.reset()

    def press(self, pos: QPointF, modifiers: Any) -> None: ...
    def right_press(self, pos: QPointF, modifiers: Any) -> None: ...
    def move(self, pos: QPointF, pressed: bool) -> None: ...
    def release(self, pos: QPointF) -> None: ...
    def double_click(self, pos: QPointF) -> None: ...

    def leave(self) -> None:
        """The pointer left the view: hide whatever follows it."""

    def key(self, key: int) -> bool:
        """Handle a key (Enter, Escape); True when used."""
        return False
