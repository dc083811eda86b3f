"""CRF panel: the six dense-CRF parameters as slider + number pairs, presets, the live-CRF switch.

A thin view of ``session.crf`` (:class:`deeplab_gui.state.crf.CRFState`): a slider or preset sets
``session.crf.params``, which owns the parameters, their per-folder saving and the live refinement
(preview first, then full size, latest request wins); the panel shows what the state's signals say.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.crf import MAX_ITERATIONS, PRESETS, CRFParams, LiveResult

from .labels import WrappedLabel

__all__ = ["CUSTOM", "PARAM_SPECS", "PRESET_LABELS", "CRFPanel", "ParamControl", "ParamSpec"]

CUSTOM = "custom"
PRESET_LABELS = {"deeplab_v1": "DeepLab v1 LargeFOV", "deeplab_v2": "DeepLab v2 ResNet",
                 "convcrf": "ConvCRF / pydensecrf example"}
_SLIDER_STEPS = 1000


@dataclass(frozen=True)
class ParamSpec:
    """How one CRFParams field is shown: range, decimals, and whether the slider is logarithmic.

    Kernel widths span two orders of magnitude (θγ 1 to θα 80+ pixels); a log slider gives the small
    widths, where a change of 1 matters, as much travel as the large ones.
    """

    field: str
    label: str
    minimum: float
    maximum: float
    decimals: int = 1
    log: bool = False
    tooltip: str = ""

    def to_slider(self, value: float) -> int:
        v = min(max(float(value), self.minimum), self.maximum)
        if self.log:
            frac = math.log(v / self.minimum) / math.log(self.maximum / self.minimum)
        else:
            frac = (v - self.minimum) / (self.maximum - self.minimum)
        return round(frac * _SLIDER_STEPS)

    def from_slider(self, position: int) -> float:
        frac = position / _SLIDER_STEPS
        if self.log:
            v = self.minimum * (self.maximum / self.minimum) ** frac
        else:
            v = self.minimum + frac * (self.maximum - self.minimum)
        return int(round(v)) if self.decimals == 0 else round(v, self.decimals)


PARAM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("iterations", "Iterations", 0, MAX_ITERATIONS, 0, tooltip="mean-field iterations; 0 = network output"),
    ParamSpec("bilateral_weight", "Appearance w1", 0.0, 20.0, 1, tooltip="weight of the colour-and-position kernel"),
    ParamSpec("bilateral_xy", "Appearance θα", 1.0, 200.0, 1, log=True,
              tooltip="spatial width (pixels) of the appearance kernel"),
    ParamSpec("bilateral_rgb", "Appearance θβ", 0.5, 100.0, 1, log=True,
              tooltip="colour width (RGB units) of the appearance kernel"),
    ParamSpec("gaussian_weight", "Smoothness w2", 0.0, 20.0, 1, tooltip="weight of the position-only kernel"),
    ParamSpec("gaussian_xy", "Smoothness θγ", 0.5, 50.0, 1, log=True,
              tooltip="spatial width (pixels) of the smoothness kernel"),
)


class ParamControl(QWidget):
    """A slider and a number box showing one value; either edits it. Emits ``value_changed(float)``."""

    value_changed = Signal(float)

    def __init__(self, spec: ParamSpec, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, _SLIDER_STEPS)
        self.slider.setToolTip(spec.tooltip)
        if spec.decimals == 0:
            self.box = QSpinBox()
            self.box.setRange(int(spec.minimum), int(spec.maximum))
        else:
            self.box = QDoubleSpinBox()
            self.box.setDecimals(spec.decimals)
            self.box.setRange(spec.minimum, spec.maximum)
            self.box.setSingleStep(10 ** -spec.decimals if spec.log else 0.5)
        self.box.setToolTip(spec.tooltip)
        self.box.setMinimumWidth(70)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.slider, 1)
        row.addWidget(self.box)
        self.slider.valueChanged.connect(self._from_slider)
        self.box.valueChanged.connect(self._from_box)

    def value(self) -> float:
        return float(self.box.value())

    def set_value(self, value: float) -> None:
        """Show ``value`` without emitting (programmatic updates: presets, per-folder settings)."""
        for w in (self.slider, self.box):
            w.blockSignals(True)
        self.box.setValue(int(round(value)) if self.spec.decimals == 0 else float(value))
        self.slider.setValue(self.spec.to_slider(value))
        for w in (self.slider, self.box):
            w.blockSignals(False)

    def _from_slider(self, position: int) -> None:
        value = self.spec.from_slider(position)
        self.box.blockSignals(True)
        self.box.setValue(value)
        self.box.blockSignals(False)
        self.value_changed.emit(float(value))

    def _from_box(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(self.spec.to_slider(value))
        self.slider.blockSignals(False)
        self.value_changed.emit(float(value))


class CRFPanel(QWidget):
    """Dock contents for the live CRF. Public for tests and the benchmark: ``controls`` (field name ->
    ParamControl), ``params()``, ``set_params()``, ``preset_combo``, ``enable_box``, ``apply_button``,
    ``last_result`` (the newest LiveResult shown) and the ``crf_updated(str)`` signal (stage)."""

    crf_updated = Signal(str)

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.crf = session.crf
        self.controls: dict[str, ParamControl] = {}
        self._build_ui()
        self._show_params(self.crf.params)
        crf = self.crf
        crf.params_changed.connect(self._show_params)
        crf.enabled_changed.connect(self._show_enabled)
        crf.status_changed.connect(self._show_status)
        crf.preview_ready.connect(self._on_result)
        crf.full_ready.connect(self._on_result)
        session.current_changed.connect(self._update_state)
        session.probs_changed.connect(self._update_state)
        session.view_changed.connect(self._sync_view_buttons)
        self._sync_view_buttons()
        self.status_label.setText(crf.status)
        # The box starts checked: showing the panel turns the live refinement on.
        crf.enabled = self.enable_box.isChecked()
        self._update_state()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.enable_box = QCheckBox("Live CRF")
        self.enable_box.setChecked(True)
        self.enable_box.setToolTip("refine the network's probabilities with a dense CRF as you move the sliders")
        self.enable_box.toggled.connect(lambda on: setattr(self.crf, "enabled", on))
        self.preset_combo = QComboBox()
        for key in PRESETS:
            self.preset_combo.addItem(PRESET_LABELS.get(key, key), key)
        self.preset_combo.addItem("Custom", CUSTOM)
        self.preset_combo.activated.connect(self._on_preset)
        top.addWidget(self.enable_box)
        top.addWidget(self.preset_combo, 1)
        layout.addLayout(top)

        form = QFormLayout()
        form.setVerticalSpacing(2)  # six slider rows: tight, so the buttons below stay on screen
        for spec in PARAM_SPECS:
            control = ParamControl(spec)
            control.value_changed.connect(self._on_control)
            self.controls[spec.field] = control
            form.addRow(spec.label, control)
        layout.addLayout(form)

        views = QHBoxLayout()
        views.addWidget(QLabel("Show:"))
        self.view_group = QButtonGroup(self)
        self.view_buttons: dict[str, QPushButton] = {}
        for mode, text in (("mask", "Mask"), ("raw", "Raw"), ("crf", "CRF")):
            b = QPushButton(text)
            b.setCheckable(True)
            b.clicked.connect(lambda _=False, m=mode: self.session.set_view_mode(m))
            self.view_group.addButton(b)
            self.view_buttons[mode] = b
            views.addWidget(b)
        # Show and Apply share a row: the panel's last buttons must fit a 1280×800 screen.
        self.apply_button = QPushButton("Apply to mask")
        self.apply_button.setToolTip("replace the mask with the CRF labels (one undo step)")
        self.apply_button.clicked.connect(self.apply_to_mask)
        views.addSpacing(8)
        views.addWidget(self.apply_button, 1)
        layout.addLayout(views)
        # Wraps and claims its height (a long message was cut off at the panel's bottom edge);
        # never widens the dock; the tooltip has the whole text.
        self.status_label = WrappedLabel(fixed_width=True)
        layout.addWidget(self.status_label)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    # ------------------------------------------------------------------ parameters
    @property
    def last_result(self) -> LiveResult | None:
        return self.crf.last_result

    def params(self) -> CRFParams:
        return self.crf.params

    def set_params(self, params: CRFParams, *, submit: bool = True) -> None:
        """Use ``params`` (shown in the controls and saved for the folder); refine with them when ``submit``."""
        self.crf.set_params(params, refine=submit)

    def _show_params(self, params: CRFParams) -> None:
        for field, control in self.controls.items():
            # A control that shows the value already is left alone: re-placing a slider being
            # dragged would snap it to the value's rounding.
            if control.value() != getattr(params, field):
                control.set_value(getattr(params, field))
        key = next((k for k, p in PRESETS.items() if p == params), CUSTOM)
        self.preset_combo.setCurrentIndex(self.preset_combo.findData(key))

    def _on_control(self, _value: float) -> None:
        values = {f: c.value() for f, c in self.controls.items()}
        values["iterations"] = int(values["iterations"])
        try:
            params = CRFParams(**values)
        except ValueError as exc:  # out-of-range typing; the boxes' ranges make this rare
            self.status_label.setText(str(exc))
            return
        self.crf.params = params  # the request goes out first; the rest is bookkeeping
        # Moving a CRF slider means "show me the CRF": switch the view so the effect is visible.
        if self.crf.enabled and self.session.view_mode != "crf":
            self.session.set_view_mode("crf")

    def _on_preset(self, index: int) -> None:
        key = self.preset_combo.itemData(index)
        if key in PRESETS:
            self.crf.params = PRESETS[key]

    # ------------------------------------------------------------------ state -> view
    def _show_enabled(self, on: bool) -> None:
        self.enable_box.blockSignals(True)
        self.enable_box.setChecked(on)
        self.enable_box.blockSignals(False)
        self._update_state()

    def _show_status(self, text: str) -> None:
        self.status_label.setText(text)
        self._update_state()

    def _on_result(self, result: LiveResult) -> None:
        self._update_state()
        self.crf_updated.emit(result.stage)

    def _sync_view_buttons(self, *_args) -> None:
        mode = getattr(self.session, "view_mode", "mask")
        for m, b in self.view_buttons.items():
            b.setChecked(m == mode)

    def _update_state(self, *_args) -> None:
        has_probs = self.session.probs is not None
        self.apply_button.setEnabled(self.session.crf_labels is not None and self.session.document is not None)
        self.view_buttons["raw"].setEnabled(has_probs)
        self.view_buttons["crf"].setEnabled(has_probs and self.crf.enabled)

    # ------------------------------------------------------------------ apply and shutdown
    def apply_to_mask(self) -> bool:
        """Commit the CRF labels shown to the document as one undo step; False if there is nothing."""
        return self.crf.apply_to_mask()

    def closeEvent(self, event) -> None:
        self.crf.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Save pending parameters and stop the live refinement (the main window calls this on close)."""
        self.crf.shutdown()
