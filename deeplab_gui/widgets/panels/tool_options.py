"""Brush radius, overlay opacity, outline toggle and view mode: one row that sits in the tool bar.

One row instead of a dock of four form rows leaves the right-hand column's height to the class list
and the model and CRF panels, so their buttons fit a 1280×800 screen without scrolling.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QWidget,
)

from ...state.session import VIEW_MODES

__all__ = ["VIEW_TITLES", "ToolOptions"]

VIEW_TITLES = {"mask": "Mask", "raw": "Raw prediction", "crf": "CRF", "uncertainty": "Uncertainty"}


class ToolOptions(QWidget):
    """``size`` (brush radius box), ``opacity`` (slider), ``outline`` (check box), ``view`` (combo)."""

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.size = QDoubleSpinBox()
        self.size.setRange(0.5, 500.0)
        self.size.setDecimals(1)
        self.size.setToolTip("brush radius in image pixels ([ and ] change it)")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(session.opacity * 100))
        self.opacity.setFixedWidth(90)
        self.opacity.setToolTip("overlay opacity")
        self.outline = QCheckBox("Outline only")
        self.outline.setToolTip("draw the label regions' outlines only (O)")
        self.view = QComboBox()
        for m in VIEW_MODES:
            self.view.addItem(VIEW_TITLES[m], m)
        self.view.setToolTip("what the overlay shows (Alt+1 to Alt+4)")
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 0, 4, 0)
        self.size_label = QLabel("Radius")
        for label, w in ((self.size_label, self.size), (QLabel("Opacity"), self.opacity), (None, self.outline),
                         (QLabel("View"), self.view)):
            if label is not None:
                row.addWidget(label)
            row.addWidget(w)
            row.addSpacing(6)
        row.addStretch(1)
        self.opacity.valueChanged.connect(lambda v: session.set_opacity(v / 100.0))
        self.outline.toggled.connect(session.set_outline)
        self.view.currentIndexChanged.connect(lambda _i: session.set_view_mode(self.view.currentData()))
        session.view_changed.connect(self._sync)

    def for_tool(self, name: str) -> None:
        """Name the size box after what it sets for tool ``name``: the superpixels' size, else a radius."""
        superpixels = name == "superpixel"
        self.size_label.setText("Superpixel size" if superpixels else "Radius")
        self.size.setToolTip("a superpixel's typical side in image pixels ([ and ] change it)" if superpixels
                             else "brush radius in image pixels ([ and ] change it)")

    def _sync(self) -> None:
        i = self.view.findData(self.session.view_mode)
        if i != self.view.currentIndex():
            self.view.blockSignals(True)
            self.view.setCurrentIndex(i)
            self.view.blockSignals(False)
