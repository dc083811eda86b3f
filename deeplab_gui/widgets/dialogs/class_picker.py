"""Type-to-search class picker: a filter line over the class list; Enter chooses, Esc closes.

The number keys reach only the first ten classes; with the picker any class is a few keystrokes away
("per", "15").  Typing filters by name or index (substring, case-insensitive), an index typed exactly
goes first, the arrow keys move through what is left, and Enter sets ``session.current_label``.
"""
from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QDialog, QLineEdit, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from ..panels.class_panel import class_row_text, swatch

__all__ = ["ClassPicker", "matching_classes", "open_class_picker"]

# Keys the filter line hands to the list (rows to move): the highlight moves, the typing stays put.
_LIST_KEYS = {Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1, Qt.Key.Key_PageUp: -10, Qt.Key.Key_PageDown: 10}


def matching_classes(names: list[str], text: str) -> list[int]:
    """Indices of the classes whose name or index contains ``text`` (case-insensitive), in list order,
    except that a class whose index equals ``text`` comes first; all classes for an empty filter."""
    needle = text.strip().lower()
    found = [i for i, name in enumerate(names) if needle in name.lower() or needle in str(i)]
    if needle.isdigit() and int(needle) in found:
        found.remove(int(needle))
        found.insert(0, int(needle))
    return found


class ClassPicker(QDialog):
    """The filter line and the matching classes; choosing one closes the picker."""

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setWindowTitle("Choose class")
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("class name or number")
        self.filter.setClearButtonEnabled(True)
        self.list = QListWidget()
        self.list.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the typing always goes to the filter line
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.filter)
        lay.addWidget(self.list, 1)
        self.resize(260, 360)
        self.filter.textChanged.connect(self._fill)
        self.filter.returnPressed.connect(self.choose)
        self.filter.installEventFilter(self)
        self.list.itemClicked.connect(lambda _item: self.choose())
        self._fill("")
        current = self._row_of(session.current_label)
        if current >= 0:
            self.list.setCurrentRow(current)

    def _row_of(self, label: int) -> int:
        for row in range(self.list.count()):
            if self.list.item(row).data(Qt.ItemDataRole.UserRole) == label:
                return row
        return -1

    def _fill(self, text: str) -> None:
        names, colors = self.session.class_names, self.session.class_colors
        self.list.clear()
        for i in matching_classes(names, text):
            item = QListWidgetItem(swatch(colors[i]), class_row_text(i, names[i]))
            item.setData(Qt.ItemDataRole.UserRole, i)
            self.list.addItem(item)
        if self.list.count():
            self.list.setCurrentRow(0)

    def shown(self) -> list[int]:
        """The class indices listed now, top to bottom."""
        return [self.list.item(r).data(Qt.ItemDataRole.UserRole) for r in range(self.list.count())]

    def choose(self) -> None:
        """Make the highlighted class the current one and close; nothing matches: stay open."""
        item = self.list.currentItem()
        if item is None:
            return
        self.session.current_label = int(item.data(Qt.ItemDataRole.UserRole))
        self.accept()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt naming)
        if obj is self.filter and event.type() == QEvent.Type.KeyPress and event.key() in _LIST_KEYS:
            n = self.list.count()
            if n:
                row = self.list.currentRow() + _LIST_KEYS[event.key()]
                self.list.setCurrentRow(min(max(row, 0), n - 1))
            return True
        return super().eventFilter(obj, event)


def open_class_picker(session, parent: QWidget | None = None) -> ClassPicker | None:
    """Show a picker over ``parent`` (it deletes itself when closed); None when no class list is open."""
    if not session.class_names:
        return None
    picker = ClassPicker(session, parent)
    picker.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    picker.open()
    picker.filter.setFocus()
    return picker
