"""CRF panel: the six dense-CRF parameters as slider + number pairs, presets, live refinement.

Every change goes to an ``engine.crf.LiveCRFWorker`` serving the current image and its cached network
probabilities (latest request wins; a reduced-size preview first, then full size). The worker calls back
on its own thread; ``LiveAdapter`` re-emits each result as a Qt signal with a queued connection so the
session is only touched on the UI thread. Building a ``LiveCRF`` (unaries, preview pyramid) costs tens of
milliseconds to seconds on big images, so that too happens in a worker (``session.run_task``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout,
                               QLabel, QPushButton, QSizePolicy, QSlider, QSpinBox, QVBoxLayout, QWidget)

from engine.crf import DEEPLAB_V1, MAX_ITERATIONS, PRESETS, CRFParams, LiveCRF, LiveCRFWorker, LiveResult
from engine.probgrid import grid_fits

from ...state.crf import MAX_LIVE_PIXELS, LiveAdapter, build_live

__all__ = ["CRFPanel", "ParamSpec", "PARAM_SPECS", "ParamControl", "PRESET_LABELS", "CUSTOM", "MAX_LIVE_PIXELS"]

log = logging.getLogger(__name__)

CUSTOM = "custom"
PRESET_LABELS = {"deeplab_v1": "DeepLab v1 LargeFOV", "deeplab_v2": "DeepLab v2 ResNet",
                 "convcrf": "ConvCRF / pydensecrf example"}
_SLIDER_STEPS = 1000
SAVE_DELAY_MS = 500  # settings write after the last slider step


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
        self.controls: dict[str, ParamControl] = {}
        self.last_result: LiveResult | None = None
        self._generation = 0
        self._worker: LiveCRFWorker | None = None
        self._adapter: LiveAdapter | None = None
        self._building = None  # TaskHandle of the LiveCRF being built
        self._source: tuple | None = None  # (image, probs) arrays the live session was built for
        self._params = DEEPLAB_V1
        # Parameters are written to the settings once a drag pauses, not on each of its steps.
        self._unsaved: tuple[str, dict] | None = None
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.flush_settings)
        self._build_ui()
        self._load_folder_params()
        s = session
        s.current_changed.connect(self._restart)
        s.probs_changed.connect(self._restart)
        s.image_ready.connect(self._restart)  # a JPEG's full-resolution pixels follow its preview
        s.folder_opened.connect(self._on_folder)
        s.view_changed.connect(self._sync_view_buttons)
        self._sync_view_buttons()
        self._update_state()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.enable_box = QCheckBox("Live CRF")
        self.enable_box.setChecked(True)
        self.enable_box.setToolTip("refine the network's probabilities with a dense CRF as you move the sliders")
        self.enable_box.toggled.connect(self._on_enabled)
        self.preset_combo = QComboBox()
        for key in PRESETS:
            self.preset_combo.addItem(PRESET_LABELS.get(key, key), key)
        self.preset_combo.addItem("Custom", CUSTOM)
        self.preset_combo.activated.connect(self._on_preset)
        top.addWidget(self.enable_box)
        top.addWidget(self.preset_combo, 1)
        layout.addLayout(top)

        form = QFormLayout()
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
        layout.addLayout(views)

        self.apply_button = QPushButton("Apply to mask")
        self.apply_button.setToolTip("replace the mask with the CRF labels (one undo step)")
        self.apply_button.clicked.connect(self.apply_to_mask)
        layout.addWidget(self.apply_button)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.set_params(self._params)

    # ------------------------------------------------------------------ parameters
    def params(self) -> CRFParams:
        return self._params

    def set_params(self, params: CRFParams, *, submit: bool = True) -> None:
        """Show ``params`` in the controls and the preset combo; refine with them when ``submit``."""
        self._params = params
        for field, control in self.controls.items():
            control.set_value(getattr(params, field))
        key = next((k for k, p in PRESETS.items() if p == params), CUSTOM)
        self.preset_combo.setCurrentIndex(self.preset_combo.findData(key))
        if submit:
            self._submit()

    def _on_control(self, _value: float) -> None:
        values = {f: c.value() for f, c in self.controls.items()}
        values["iterations"] = int(values["iterations"])
        try:
            params = CRFParams(**values)
        except ValueError as exc:  # out-of-range typing; the boxes' ranges make this rare
            self.status_label.setText(str(exc))
            return
        self._params = params
        key = next((k for k, p in PRESETS.items() if p == params), CUSTOM)
        # The request goes out first: everything below is UI bookkeeping the worker need not wait for.
        self._submit()
        self.preset_combo.setCurrentIndex(self.preset_combo.findData(key))
        # Moving a CRF slider means "show me the CRF": switch the view so the effect is visible.
        if self.enable_box.isChecked() and self.session.view_mode != "crf":
            self.session.set_view_mode("crf")
        self._save_folder_params()

    def _on_preset(self, index: int) -> None:
        key = self.preset_combo.itemData(index)
        if key in PRESETS:
            self.set_params(PRESETS[key])
            self._save_folder_params()

    # Per-folder CRF settings live in the app's settings (APP-CORE's settings.py) as a plain dict.
    def _settings_key(self) -> str | None:
        folder = getattr(self.session, "folder", None)
        return str(folder) if folder else None

    def _load_folder_params(self) -> None:
        key, settings = self._settings_key(), getattr(self.session, "settings", None)
        if key is None or settings is None or not hasattr(settings, "crf_params"):
            return
        try:
            stored = settings.crf_params(key)
            if stored:
                self.set_params(CRFParams(**stored), submit=False)
        except (TypeError, ValueError) as exc:  # a hand-edited or old settings file: keep the defaults
            log.warning("ignoring stored CRF parameters for %s: %s", key, exc)

    def _save_folder_params(self) -> None:
        """Remember the parameters for this folder (written by :meth:`flush_settings` shortly after)."""
        key = self._settings_key()
        if key is not None:
            self._unsaved = (key, asdict(self._params))
            self._save_timer.start()

    def flush_settings(self) -> None:
        """Write parameters not yet saved (the timer, a folder change and shutdown call this)."""
        self._save_timer.stop()
        pending, self._unsaved = self._unsaved, None
        settings = getattr(self.session, "settings", None)
        if pending is not None and settings is not None and hasattr(settings, "set_crf_params"):
            settings.set_crf_params(*pending)

    def _on_folder(self) -> None:
        self.flush_settings()  # under the folder they were chosen for (the key was taken then)
        self._load_folder_params()

    # ------------------------------------------------------------------ live session
    def _stop_worker(self) -> None:
        self._generation += 1
        if self._building is not None:
            self._building.cancel()
            self._building = None
        if self._worker is not None:
            # Do not join: a full-size iteration may be running; the daemon thread ends at its next
            # cancellation check and its late results carry an old generation, so they are dropped.
            self._worker.close(timeout=0)
            self._worker = None
        self._adapter = None

    def _restart(self, *_args) -> None:
        """The image or its probabilities changed: a new LiveCRF session (built off the UI thread)."""
        image, probs = self.session.image, self.session.probs
        src = self._source
        same = src is not None and src[0] is image and src[1] is probs
        if same and (self._worker is not None or self._building is not None):
            return  # current_changed and probs_changed both fire on an image switch: build once
        self._source = (image, probs)
        self._stop_worker()
        self.last_result = None
        self.session.set_crf_labels(None)
        if not self.enable_box.isChecked() or image is None or probs is None:
            self._update_state()
            return
        if not grid_fits(probs.shape[1:], image.shape[:2]):  # a huge image's may be on a smaller grid
            self.status_label.setText("cached probabilities do not match the image size; pre-label it again")
            self._update_state()
            return
        generation = self._generation
        self.status_label.setText("preparing CRF…")
        self._building = self.session.run_task(
            build_live, image, probs,
            on_result=lambda live, g=generation: self._on_built(g, live),
            on_error=lambda msg, g=generation: self._on_build_error(g, msg))

    def _on_built(self, generation: int, live: LiveCRF) -> None:
        if generation != self._generation:
            return
        self._building = None
        image = self.session.image
        self._adapter = LiveAdapter(generation, image.shape[:2] if image is not None else None)
        self._adapter.result.connect(self._on_result, Qt.ConnectionType.QueuedConnection)
        self._worker = LiveCRFWorker(live, self._adapter.on_result)
        self._update_state()
        self._submit()

    def _on_build_error(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self._building = None
            self.status_label.setText(f"CRF unavailable: {message}")

    def _submit(self) -> None:
        if self._worker is not None and self.enable_box.isChecked():
            self._worker.request(self._params)

    @Slot(int, object, object)
    def _on_result(self, generation: int, result: LiveResult, labels: np.ndarray) -> None:
        if generation != self._generation:
            return  # an image (or probabilities) we have left
        last = self.last_result
        if last is not None and (result.request_id, result.stage == "full") < (last.request_id, last.stage == "full"):
            return  # older than what is shown; newer previews still show during a continuous drag
        self.last_result = result
        self.session.set_crf_labels(labels)
        what = "preview" if result.stage == "preview" else "full size"
        self.status_label.setText(f"CRF {what}: {result.elapsed * 1000:.0f} ms")
        self._update_state()
        self.crf_updated.emit(result.stage)

    def _on_enabled(self, on: bool) -> None:
        if on:
            self._source = None
            self._restart()
        else:
            self._stop_worker()
            self.last_result = None
            self.session.set_crf_labels(None)
            if self.session.view_mode == "crf":
                self.session.set_view_mode("mask")
            self.status_label.setText("CRF off")
            self._update_state()

    # ------------------------------------------------------------------ view and apply
    def _sync_view_buttons(self, *_args) -> None:
        mode = getattr(self.session, "view_mode", "mask")
        for m, b in self.view_buttons.items():
            b.setChecked(m == mode)

    def _update_state(self) -> None:
        has_probs = self.session.probs is not None
        self.apply_button.setEnabled(self.session.crf_labels is not None and self.session.document is not None)
        self.view_buttons["raw"].setEnabled(has_probs)
        self.view_buttons["crf"].setEnabled(has_probs and self.enable_box.isChecked())
        if not has_probs and self.enable_box.isChecked():
            self.status_label.setText("no model probabilities for this image yet: pre-label it first")

    def apply_to_mask(self) -> bool:
        """Commit the CRF labels shown to the document as one undo step; False if there is nothing."""
        labels, doc = self.session.crf_labels, self.session.document
        if labels is None or doc is None or labels.shape != doc.shape:
            return False
        doc.apply_labels(labels, description="Apply CRF")
        self.session.message.emit("info", "CRF labels applied to the mask")
        return True

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        self.flush_settings()
        self._stop_worker()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Save pending parameters and stop the live worker (the main window calls this on close)."""
        self.flush_settings()
        self._stop_worker()
