"""The class list: colour swatches, the current class, add / rename / recolour; the class read-out.

Every row shows its class index ("15: person"), the number a person types in the class picker; keys
1–9 and 0 pick the first ten classes through the main window's shortcuts.  This panel only shows and
edits the list.  Changes go through ``session.set_classes`` (the store writes ``classes.json``
atomically), and every view repaints on ``classes_changed``.

:class:`CursorReadout` is the status bar's "under cursor: 15 person": the class of the mask pixel
under the mouse, read as one scalar per move.
"""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QColorDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from engine import VOID
from engine.meta import voc_colormap

__all__ = ["ClassPanel", "CursorReadout", "class_row_text", "swatch"]


def swatch(color: tuple[int, int, int], size: int = 14) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(QColor(*color))
    return QIcon(pix)


def class_row_text(index: int, name: str) -> str:
    """How a class is listed everywhere: its index, then its name ("15: person")."""
    return f"{index}: {name}"


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
        # Ask for a short list: the model and CRF panels below need their height on a 1280×800
        # screen more than the list needs its default 192 pixels; spare height still comes here.
        self.list.setMinimumHeight(60)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.list.sizeHint = lambda: QSize(256, 90)  # what Qt asks the list
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
            item = QListWidgetItem(swatch(color), class_row_text(i, name))
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

    def next_color(self) -> tuple[int, int, int]:
        """The first VOC colour-map entry no class uses yet: a new class stands out from the others
        (a colour dialog's own default, white, would not)."""
        used = {tuple(c) for c in self.session.class_colors}
        for color in voc_colormap(256):
            if color not in used:
                return color
        return (255, 255, 255)

    def add_class(self, name: str, color: tuple[int, int, int] | None = None) -> bool:
        color = self.next_color() if color is None else color
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
            color = QColorDialog.getColor(QColor(*self.next_color()), self, f"Colour of {name.strip()}")
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


class CursorReadout(QLabel):
    """Status-bar text naming the class of the current mask's pixel under the mouse.

    :meth:`show_pixel` takes image pixel coordinates ((-1, -1): the mouse is off the image).  It reads
    one element of the document's mask view, so following the mouse allocates nothing image-sized.
    The text follows edits and renames under a still mouse, and clears when the image changes.
    """

    PREFIX = "under cursor: "

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self._xy: tuple[int, int] | None = None
        # Room for a typical entry, so the status bar does not jump as the mouse crosses classes.
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance(self.PREFIX + "20: pottedplant"))
        session.mask_changed.connect(lambda *_: self._refresh())
        session.classes_changed.connect(self._refresh)
        session.current_changed.connect(lambda *_: self.show_pixel(-1, -1))

    def show_pixel(self, x: int, y: int) -> None:
        self._xy = (int(x), int(y)) if x >= 0 and y >= 0 else None
        self._refresh()

    def describe(self) -> str:
        """The read-out for the remembered pixel; empty off the image or without a mask."""
        doc = self.session.document
        if self._xy is None or doc is None:
            return ""
        x, y = self._xy
        mask = doc.mask
        if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]):
            return ""
        label = int(mask[y, x])
        if label == VOID:
            return self.PREFIX + "void"
        names = self.session.class_names
        name = names[label] if label < len(names) else "(no such class)"
        return f"{self.PREFIX}{label} {name}"

    def _refresh(self) -> None:
        text = self.describe()
        if text != self.text():
            self.setText(text)
