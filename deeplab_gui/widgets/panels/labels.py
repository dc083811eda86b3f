"""Labels for narrow docks: one that wraps and claims its height, one that elides to one line.

Both keep a dock's width fixed whatever text they are given (a long file name, a path without
spaces): they ignore their text's width and show the whole text in a tooltip.
"""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget

__all__ = ["ElidedLabel", "WrappedLabel"]


class WrappedLabel(QLabel):
    """A word-wrapped label that claims the height its text needs at its current width. Dock layouts
    ignore heightForWidth, so a plain wrapped label got the height of its one-line size hint and the
    text was cut off in narrow windows.  With ``fixed_width`` a word longer than the width is cut
    (the tooltip has it) instead of widening the dock."""

    def __init__(self, text: str = "", parent: QWidget | None = None, fixed_width: bool = False) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self._tooltip = fixed_width
        if fixed_width:
            self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:  # noqa: N802  (Qt's name)
        hint = super().minimumSizeHint()
        return QSize(0, hint.height()) if self._tooltip else hint

    def sizeHint(self) -> QSize:  # noqa: N802
        hint = super().sizeHint()
        return QSize(min(hint.width(), 200), hint.height()) if self._tooltip else hint

    def setText(self, text: str) -> None:  # noqa: N802  (Qt's name)
        super().setText(text)
        if self._tooltip:
            self.setToolTip(text)
        self._claim()  # a new text needs another height at the same width

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._claim()

    def _claim(self) -> None:
        need = self.heightForWidth(self.width())
        if need > 0 and need != self.minimumHeight():
            self.setMinimumHeight(need)


class ElidedLabel(QLabel):
    """One line, cut with "…" at the width it is given; the tooltip holds the whole text."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._full = ""
        self.setText(text)

    def full_text(self) -> str:
        return self._full

    def setText(self, text: str) -> None:  # noqa: N802  (Qt's name)
        self._full = text
        self.setToolTip(text)
        self._elide()

    def text(self) -> str:  # the whole text, not the cut one the label paints
        return self._full

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(0, super().minimumSizeHint().height())

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideMiddle, max(self.width(), 40))
        QLabel.setText(self, shown)
