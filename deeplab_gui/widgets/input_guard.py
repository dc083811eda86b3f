"""Keeps the side panels' value widgets from stealing the wheel and the keyboard from the canvas.

Two habits of Qt's stock widgets hurt an annotator whose hands stay on the mouse wheel and the
single-key shortcuts:

* a combo box, slider or spin box changes its value under a passing mouse wheel, so scrolling a
  panel that does not fit the screen silently switches the architecture or moves a CRF weight;
* once a number box (or a combo, or a slider) has keyboard focus it keeps it, and a number box
  swallows letters, so B, E, P, A, D... stop working until the canvas is clicked.

:class:`InputGuard` is one application-wide event filter scoped to one window, so every such
widget in that window's panels is covered, including widgets a panel creates later.  A wheel over
one that does not have keyboard focus scrolls the enclosing scroll area instead; the wheel no longer
gives focus; and focus goes back to a "home" widget (the canvas) when a number edit is committed
(Enter) or abandoned (Esc, which also restores the value the box had when it took focus), when a
slider or a spin box's arrows are released, and when a combo entry is chosen.  Letters typed while a
number box has focus reach the window's shortcuts; digits still go into the box.
"""
from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QScrollBar,
    QWidget,
)

__all__ = ["InputGuard", "install_input_guard"]

_VALUE_TYPES = (QComboBox, QAbstractSlider, QAbstractSpinBox)
_BOUND = "_input_guard_bound"        # dynamic property: a combo's activated signal is already connected
_AT_FOCUS = "_input_guard_at_focus"  # dynamic property: a spin box's value when it took focus
_ENTER = (Qt.Key.Key_Return, Qt.Key.Key_Enter)
_PLAIN = (Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.KeypadModifier)


def _value_widget(obj: QObject) -> QWidget | None:
    """The combo, slider or spin box ``obj`` is or whose text field it is, else None.  Scroll bars are
    sliders too, but turning them with the wheel is their job."""
    w = obj.parent() if isinstance(obj, QLineEdit) else obj
    if isinstance(w, _VALUE_TYPES) and not isinstance(w, QScrollBar):
        return w
    return None


def _scroll_area(w: QWidget) -> QAbstractScrollArea | None:
    p = w.parentWidget()
    while p is not None and not p.isWindow():
        if isinstance(p, QAbstractScrollArea):
            return p
        p = p.parentWidget()
    return None


class InputGuard(QObject):
    """The filter behind :func:`install_input_guard`; lives (and dies) with ``window``."""

    def __init__(self, window: QWidget, home: QWidget) -> None:
        super().__init__(window)
        self.window = window
        self.home = home
        for w in window.findChildren(QWidget):
            if self._guarded(w):
                self._prepare(w)

    # ------------------------------------------------------------ scope
    def _guarded(self, w: QWidget) -> bool:
        """A value widget in this window, outside the home widget.  Dialogs are windows of their own
        (isAncestorOf stops at window boundaries), so their spin boxes behave as Qt made them."""
        return (isinstance(w, _VALUE_TYPES) and not isinstance(w, QScrollBar)
                and self.window.isAncestorOf(w) and not self.home.isAncestorOf(w))

    def _prepare(self, w: QWidget) -> None:
        # Qt gives these widgets focus on a wheel turn before any filter sees the event; without the
        # wheel bit in the policy a passing wheel leaves focus where it was (on the canvas).
        policy = w.focusPolicy()
        if policy == Qt.FocusPolicy.WheelFocus:
            w.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        if isinstance(w, QComboBox) and not w.property(_BOUND):
            w.setProperty(_BOUND, True)
            w.activated.connect(self.go_home)

    def go_home(self, *_args) -> None:
        self.home.setFocus(Qt.FocusReason.OtherFocusReason)

    # ------------------------------------------------------------ events
    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # Qt's name
        t = event.type()
        if t not in (QEvent.Type.Wheel, QEvent.Type.KeyPress, QEvent.Type.ShortcutOverride,
                     QEvent.Type.MouseButtonRelease, QEvent.Type.FocusIn, QEvent.Type.Polish):
            return False
        w = _value_widget(obj)
        if w is None or not self._guarded(w):
            return False
        if t == QEvent.Type.Polish:  # a widget a panel made after the window was built
            self._prepare(w)
            return False
        if t == QEvent.Type.Wheel:
            return self._wheel(w, event)
        if t == QEvent.Type.FocusIn and isinstance(w, QAbstractSpinBox) and obj is w:
            w.setProperty(_AT_FOCUS, w.value())
            return False
        if t == QEvent.Type.ShortcutOverride:
            return self._letters_pass(w, event)
        if t == QEvent.Type.KeyPress and isinstance(w, QAbstractSpinBox):
            return self._number_key(w, obj, event)
        if t == QEvent.Type.MouseButtonRelease and obj is w and isinstance(w, (QAbstractSlider, QAbstractSpinBox)):
            # Released on a slider, or on a spin box's arrows (a click in its text goes to the line
            # edit, a different object, and keeps focus for typing).
            obj.event(event)
            self.go_home()
            return True
        return False

    def _wheel(self, w: QWidget, event: QWheelEvent) -> bool:
        if w.hasFocus():
            return False  # chosen with the keyboard or a click: the wheel edits it, as Qt intends
        area = _scroll_area(w)
        if area is not None:
            viewport = area.viewport()
            pos = viewport.mapFromGlobal(event.globalPosition().toPoint())
            forwarded = QWheelEvent(pos.toPointF(), event.globalPosition(), event.pixelDelta(),
                                    event.angleDelta(), event.buttons(), event.modifiers(),
                                    event.phase(), event.inverted(), event.source())
            QApplication.sendEvent(viewport, forwarded)
        event.accept()  # handled: Qt must not pass it up to a parent that would act on it again
        return True

    def _letters_pass(self, w: QWidget, event) -> bool:
        """A number box claims every printable key for itself; letters are no use to it, so let the
        window's single-key shortcuts have them.  Digits, signs and the decimal point stay its own."""
        if not isinstance(w, QAbstractSpinBox) or not w.hasFocus():
            return False
        text = event.text()
        if len(text) == 1 and text.isalpha() and event.modifiers() in _PLAIN:
            event.ignore()
            return True
        return False

    def _number_key(self, box: QAbstractSpinBox, obj: QObject, event) -> bool:
        key = event.key()
        if obj is not box:
            return False
        if key in _ENTER:
            box.event(event)  # Qt's own commit first (value, editingFinished), then the canvas
            self.go_home()
            return True
        if key == Qt.Key.Key_Escape:
            before = box.property(_AT_FOCUS)
            if before is not None:
                box.setValue(before)
            self.go_home()
            return True
        return False


def install_input_guard(window: QWidget, home: QWidget) -> InputGuard:
    """Guard every combo box, slider and spin box in ``window`` (now and later) and send keyboard focus
    back to ``home`` after each edit; returns the filter (owned by ``window``)."""
    guard = InputGuard(window, home)
    QApplication.instance().installEventFilter(guard)
    return guard
