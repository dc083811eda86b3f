"""The image list: a flat model over the folder's ids with status icons, a status filter and counts.

A ``QAbstractListModel`` answering ``data()`` on demand plus a ``QListView`` with uniform item sizes
means 10,000 images cost one Python list, not 10,000 widgets (a 10,000-image folder opens in under a second).
"""
from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QComboBox, QLabel, QListView, QVBoxLayout, QWidget

__all__ = ["STATUS_ORDER", "ImageListModel", "ImageListPanel", "counts_text", "status_icon"]

log = logging.getLogger("deeplab_gui")

STATUS_ORDER = ("unlabeled", "prelabeled", "edited", "reviewed")
_LABELS = {"unlabeled": "Unlabelled", "prelabeled": "Pre-labelled", "edited": "Edited", "reviewed": "Reviewed"}
_ICONS = {"unlabeled": ("fa5.circle", "#9e9e9e"), "prelabeled": ("fa5s.robot", "#1e88e5"),
          "edited": ("fa5s.pen", "#fb8c00"), "reviewed": ("fa5s.check-circle", "#43a047"),
          "error": ("fa5s.exclamation-triangle", "#e53935")}
_SELECTED = "#ffffff"  # glyph colour on a selected row (the highlight's text colour in most styles)
_icon_cache: dict[str, QIcon] = {}


def status_icon(status: str) -> QIcon:
    """qtawesome icon of a status ("error" for unreadable images); a coloured dot if qtawesome fails."""
    icon = _icon_cache.get(status)
    if icon is None:
        name, color = _ICONS.get(status, _ICONS["unlabeled"])
        try:
            import qtawesome
            # The selected row's highlight is a saturated blue that swallows the "pre-labelled"
            # blue (and dims the others): selected rows draw the glyph in the highlight's text
            # colour instead; the glyph's shape still tells the status.
            icon = qtawesome.icon(name, color=color, color_active=color, color_selected=_SELECTED)
        except Exception as exc:  # noqa: BLE001  (missing font, old qtawesome: degrade, do not fail)
            log.warning("qtawesome icon %s unavailable (%s); using a plain dot", name, exc)
            pix = QPixmap(16, 16)
            pix.fill(Qt.GlobalColor.transparent)
            p = QPainter(pix)
            p.setBrush(QColor(color))
            p.setPen(QColor(_SELECTED))  # a white ring keeps the dot visible on the highlight
            p.drawEllipse(2, 2, 12, 12)
            p.end()
            icon = QIcon(pix)
        _icon_cache[status] = icon
    return icon


def counts_text(counts: dict[str, int]) -> str:
    """The line under the list, naming each count: "5 pre-labelled · 0 edited · 0 reviewed of 5".
    (One "labelled" total would read 0 while every image carries a model's pre-label.)"""
    total = sum(counts.values())
    return (f"{counts.get('prelabeled', 0)} pre-labelled · {counts.get('edited', 0)} edited · "
            f"{counts.get('reviewed', 0)} reviewed of {total}")


def _value(status: Any) -> str:
    return getattr(status, "value", str(status))


class ImageListModel(QAbstractListModel):
    """Rows: the ids that pass the status filter.  ``Qt.UserRole`` gives the id."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self._all: list[str] = []
        self._status: dict[str, str] = {}
        self._rows: list[str] = []
        self._row_of: dict[str, int] = {}
        self.filter: str | None = None

    def reload(self) -> None:
        """Re-read ids and statuses from the session's store."""
        s = self.session
        self._all = s.ids
        self._status = {i: _value(st) for i, st in s.statuses().items()}
        self._refilter()

    def update_statuses(self) -> None:
        s = self.session
        new = {i: _value(st) for i, st in s.statuses().items()}
        if new == self._status:
            return
        self._status = new
        if self.filter is not None:
            self._refilter()  # rows may enter or leave the filtered view
        elif self._rows:
            self.dataChanged.emit(self.index(0), self.index(len(self._rows) - 1), [Qt.ItemDataRole.DecorationRole])

    def set_filter(self, status: str | None) -> None:
        self.filter = status
        self._refilter()

    def _refilter(self) -> None:
        self.beginResetModel()
        f = self.filter
        self._rows = self._all if f is None else [i for i in self._all if self._status.get(i, "unlabeled") == f]
        self._row_of = {i: r for r, i in enumerate(self._rows)}
        self.endResetModel()

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUS_ORDER}
        for i in self._all:
            st = self._status.get(i, "unlabeled")
            out[st] = out.get(st, 0) + 1
        return out

    def row_of(self, image_id: str) -> int:
        return self._row_of.get(image_id, -1)

    def image_id(self, row: int) -> str | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    # ------------------------------------------------------------ QAbstractListModel
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        image_id = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return image_id
        if role == Qt.ItemDataRole.UserRole:
            return image_id
        store = self.session.store
        if role == Qt.ItemDataRole.DecorationRole:
            if store is not None and store.error(image_id):
                return status_icon("error")
            return status_icon(self._status.get(image_id, "unlabeled"))
        if role == Qt.ItemDataRole.ToolTipRole:
            err = store.error(image_id) if store is not None else None
            return f"{image_id}: {err}" if err else f"{image_id} ({self._status.get(image_id, 'unlabeled')})"
        return None


class ImageListPanel(QWidget):
    """Filter box with counts, the list, and keyboard navigation (arrows, Home/End, Page keys)."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.model = ImageListModel(session, self)
        self.filter_box = QComboBox()
        self.view = QListView()
        self.view.setModel(self.model)
        self.view.setUniformItemSizes(True)  # lets Qt skip measuring every row
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.counts_label = QLabel()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.filter_box)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.counts_label)
        self._syncing = False
        self._fill_filter_box()
        self.filter_box.currentIndexChanged.connect(self._on_filter)
        self.view.selectionModel().currentChanged.connect(self._on_row)
        session.folder_opened.connect(self._on_folder)
        session.images_changed.connect(self._on_folder)
        session.statuses_changed.connect(self._on_statuses)
        session.current_changed.connect(self._show_current)

    def _fill_filter_box(self) -> None:
        counts = self.model.counts()
        current = self.filter_box.currentIndex()
        self.filter_box.blockSignals(True)
        self.filter_box.clear()
        self.filter_box.addItem(f"All ({sum(counts.values())})", None)
        for st in STATUS_ORDER:
            self.filter_box.addItem(status_icon(st), f"{_LABELS[st]} ({counts.get(st, 0)})", st)
        self.filter_box.setCurrentIndex(max(current, 0))
        self.filter_box.blockSignals(False)
        self.counts_label.setText(counts_text(counts))

    def set_filter(self, status: str | None) -> None:
        i = self.filter_box.findData(status)
        self.filter_box.setCurrentIndex(max(i, 0))

    def _on_filter(self, _index: int) -> None:
        self.model.set_filter(self.filter_box.currentData())
        self._show_current(self.session.image_id or "")

    def _on_folder(self) -> None:
        self.model.reload()
        self._fill_filter_box()
        self._show_current(self.session.image_id or "")   # a rescan keeps the image on screen selected

    def _on_statuses(self) -> None:
        self.model.update_statuses()
        self._fill_filter_box()
        if self.model.filter is not None:
            self._show_current(self.session.image_id or "")

    def _show_current(self, image_id: str) -> None:
        row = self.model.row_of(image_id)
        if row < 0:
            return
        self._syncing = True
        try:
            idx = self.model.index(row)
            self.view.setCurrentIndex(idx)
            self.view.scrollTo(idx)
        finally:
            self._syncing = False

    def _on_row(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if self._syncing or not current.isValid():
            return
        image_id = self.model.image_id(current.row())
        if image_id is not None and image_id != self.session.image_id:
            self.session.select(image_id)
