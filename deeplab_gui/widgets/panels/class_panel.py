"""The class list: colour swatches, the current class, add / rename / recolour.

Number keys 1–9 (0 for background) pick classes through the main window's shortcuts; this panel only
shows and edits the list.  Changes go through ``session.set_classes`` (the store writes
``classes.json`` atomically), and every view repaints on ``classes_changed``.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QColorDialog,
    QHBoxLayout,
    QInputDialog,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ClassPanel", "swatch"]


def swatch(color: tuple[int, int, int], size: int = 14) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(QColor(*color))
    return QIcon(pix)


class ClassPanel(QWidget):
    """List of classes of the open folder; selecting a row sets ``session.current_label``."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.list = QListWidget()
        self.add_button = QPushButton("Add")
        self.rename_button = QPushButton("Rename")
        self.color_button = QPushButton("Colour")
        buttons = QHBoxLayout()
        for b in (self.add_button, self.rename_button, self.color_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.list, 1)
        lay.addLayout(buttons)
        self.add_button.clicked.connect(self._ask_add)
        self.rename_button.clicked.connect(self._ask_rename)
        self.color_button.clicked.connect(self._ask_color)
        self.list.currentRowChanged.connect(self._on_row)
        self.list.itemDoubleClicked.connect(lambda _item: self._ask_rename())
        session.classes_changed.connect(self.reload)
        session.label_changed.connect(self._show_label)
        self.reload()

    def reload(self) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for i, (name, color) in enumerate(zip(self.session.class_names, self.session.class_colors)):
            key = f"{i}: " if i <= 9 else ""
            item = QListWidgetItem(swatch(color), f"{key}{name}")
            item.setData(Qt.ItemDataRole.UserRole, i)
            self.list.addItem(item)
        self.list.blockSignals(False)
        self._show_label(self.session.current_label)

    def _show_label(self, label: int) -> None:
        if 0 <= label < self.list.count() and self.list.currentRow() != label:
            self.list.blockSignals(True)
            self.list.setCurrentRow(label)
            self.list.blockSignals(False)

    def _on_row(self, row: int) -> None:
        if row >= 0:
            self.session.current_label = row

    # ------------------------------------------------------------ edits (no dialogs: testable)
    def _classes(self) -> list[tuple[str, tuple[int, int, int]]]:
        return list(zip(self.session.class_names, self.session.class_colors))

    def add_class(self, name: str, color: tuple[int, int, int]) -> bool:
        return self.session.set_classes(self._classes() + [(name, tuple(color))])

    def rename_class(self, index: int, name: str) -> bool:
        classes = self._classes()
        if not 0 <= index < len(classes):
            return False
        classes[index] = (name, classes[index][1])
        return self.session.set_classes(classes)

    def recolor_class(self, index: int, color: tuple[int, int, int]) -> bool:
        classes = self._classes()
        if not 0 <= index < len(classes):
            return False
        classes[index] = (classes[index][0], tuple(color))
        return self.session.set_classes(classes)

    # ------------------------------------------------------------ dialogs
    def _ask_add(self) -> None:
        name, ok = QInputDialog.getText(self, "Add class", "Name of the new class:")
        if ok and name.strip():
            color = QColorDialog.getColor(parent=self, title=f"Colour of {name.strip()}")
            if color.isValid():
                self.add_class(name.strip(), (color.red(), color.green(), color.blue()))

    def _ask_rename(self) -> None:
        row = self.list.currentRow()
        if row < 0:
            return
        old = self.session.class_names[row]
        name, ok = QInputDialog.getText(self, "Rename class", f"New name of '{old}':", text=old)
        if ok and name.strip() and name.strip() != old:
            self.rename_class(row, name.strip())

    def _ask_color(self) -> None:
        row = self.list.currentRow()
        if row < 0:
            return
        color = QColorDialog.getColor(QColor(*self.session.class_colors[row]), self,
                                      f"Colour of {self.session.class_names[row]}")
        if color.isValid():
            self.recolor_class(row, (color.red(), color.green(), color.blue()))
