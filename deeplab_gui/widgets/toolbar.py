"""The tool bar: an icon per editing tool, undo and redo, the brush-size steps and the tool options.

The tool buttons are the Tools menu's own actions (one exclusive, checkable group), so the checked
button is the active tool however it was chosen: by its key, the menu, or a click here.  Tooltips
name each tool's key, so the bar also teaches the shortcuts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from PySide6.QtCore import QSize
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMainWindow, QToolBar, QWidget

from .canvas.tools import TOOL_KEYS

__all__ = ["ToolBarSpec", "add_click_toggles", "add_tool_bar", "tool_icon"]

log = logging.getLogger("deeplab_gui")


@dataclass(frozen=True)
class ToolBarSpec:
    """What the bar shows for each tool and command: a qtawesome glyph and a short name."""

    tools: tuple[tuple[str, str, str], ...] = (          # (tool, glyph, name)
        ("brush", "fa5s.paint-brush", "Brush"),
        ("eraser", "fa5s.eraser", "Eraser (Shift: to background)"),
        ("polygon", "fa5s.draw-polygon", "Polygon"),
        ("fill", "fa5s.fill-drip", "Flood fill"),
        ("picker", "fa5s.eye-dropper", "Label picker"),
        ("snap", "fa5s.magic", "CRF-snap brush"),
        ("superpixel", "mdi6.texture-box", "Superpixels: click or drag paints whole regions; [ ] granularity"),
        ("crfclick", "fa5s.bullseye", "CRF click: a click grows along image edges; Enter accepts, Esc drops"),
        ("click", "mdi6.cursor-default-click",
         "Click model: click adds, right or Shift+click removes, drag draws a box; Tab next, Enter accepts"),
    )
    toggles: tuple[tuple[str, str, str, str], ...] = (   # (click tool attribute, glyph, name, tip)
        ("auto_class", "mdi6.tag-text", "Auto class",
         "Click model: the region takes the class the model's probabilities favour there"),
        ("edge_polish", "mdi6.auto-fix", "Edge polish",
         "Click model: the CRF moves the proposed region's border onto image edges (a moment after it shows)"),
    )
    undo: str = "fa5s.undo"
    redo: str = "fa5s.redo"
    smaller: str = "mdi6.circle-small"
    larger: str = "mdi6.circle-medium"
    icon_px: int = 20


def tool_icon(glyph: str) -> QIcon:
    """The qtawesome icon ``glyph``; an empty icon (the button shows its text) if it cannot be drawn."""
    try:
        import qtawesome

        return qtawesome.icon(glyph)
    except Exception as exc:  # noqa: BLE001  (missing font, old qtawesome: a text button still works)
        log.warning("qtawesome icon %s unavailable (%s); the tool bar shows text", glyph, exc)
        return QIcon()


def _button(bar: QToolBar, action: QAction, glyph: str, tip: str) -> QAction:
    action.setIcon(tool_icon(glyph))
    action.setToolTip(tip)
    bar.addAction(action)
    return action


def add_tool_bar(window: QMainWindow, spec: ToolBarSpec = ToolBarSpec()) -> QToolBar:
    """Build the bar from ``window``'s tool actions (``tool_actions``, ``tools``) and commands
    (``undo``, ``redo``, ``change_size``), add it at the top and return it."""
    bar = QToolBar("Tools", window)
    bar.setObjectName("Tools_bar")  # saveState() needs object names
    bar.setIconSize(QSize(spec.icon_px, spec.icon_px))
    for name, glyph, title in spec.tools:
        _button(bar, window.tool_actions[name], glyph, f"{title} ({TOOL_KEYS[name]})")
    bar.addSeparator()
    # The Edit menu's actions carry Ctrl+Z / Ctrl+Y; the bar's own have no shortcut, so a key never
    # matches two actions (Qt would then run neither).
    for attr, slot, glyph, tip in (("undo_action", window.undo, spec.undo, "Undo (Ctrl+Z)"),
                                   ("redo_action", window.redo, spec.redo, "Redo (Ctrl+Shift+Z)")):
        act = getattr(window, attr, None)
        if not isinstance(act, QAction):
            act = QAction(tip.split(" (")[0], bar)
            act.triggered.connect(slot)
        _button(bar, act, glyph, tip)
    bar.addSeparator()
    sizes = []
    for text, factor, glyph, key in (("Smaller brush", 1 / 1.25, spec.smaller, "["),
                                     ("Larger brush", 1.25, spec.larger, "]")):
        act = QAction(text, bar)
        act.triggered.connect(lambda _=False, f=factor: window.change_size(f))
        sizes.append(_button(bar, act, glyph, f"{text} ({key})"))

    def sync_sizes() -> None:  # the size steps only mean something for the brushes
        # The checked action, not the canvas's tool: a key checks it before the tool is switched.
        on = [n for n, a in window.tool_actions.items() if a.isChecked()]
        for act in sizes:
            act.setEnabled(bool(on) and window.tools[on[0]].sized)

    for act in window.tool_actions.values():
        act.toggled.connect(lambda _on: sync_sizes())
    sync_sizes()
    add_click_toggles(window, bar, spec)
    options = getattr(window, "tool_options", None)
    if isinstance(options, QWidget):  # radius, opacity, outline, view: one row here, not a dock
        bar.addSeparator()
        bar.addWidget(options)
    window.addToolBar(bar)
    return bar


def add_click_toggles(window: QMainWindow, bar: QToolBar, spec: ToolBarSpec = ToolBarSpec()) -> None:
    """The click tool's "auto class" and "edge polish" switches (on at first), shown while it is the
    active tool; kept as ``window.click_toggles`` by attribute name."""
    tool, choose = window.tools.get("click"), window.tool_actions.get("click")
    if tool is None or choose is None:
        return
    window.click_toggles = {}
    for attr, glyph, title, tip in spec.toggles:
        act = QAction(title, bar)
        act.setCheckable(True)
        act.setChecked(bool(getattr(tool, attr)))

        def flip(on: bool, attr: str = attr) -> None:
            setattr(tool, attr, on)
            tool.show()  # the shown candidate's class may change with "auto class"
        act.toggled.connect(flip)
        window.click_toggles[attr] = _button(bar, act, glyph, tip)
    for act in window.click_toggles.values():
        act.setVisible(choose.isChecked())
    choose.toggled.connect(lambda on: [a.setVisible(on) for a in window.click_toggles.values()])
