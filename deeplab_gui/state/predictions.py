"""The model half of :class:`~deeplab_gui.state.session.Session`: the model in use, its predictions and
cached probabilities for the shown image, and the review queue ordered by uncertainty.

A mixin, so the session keeps one API (``session.set_model``, ``session.apply_prediction``...) while each
module stays readable.  It relies on the session's ``store``, ``image_id``, ``image_size``, ``document``,
``run_task``, ``select``, ``_say`` and its signals.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .session_io import derived, most_uncertain
from .tasks import TaskHandle

__all__ = ["PredictionMethods"]


class PredictionMethods:
    """Model, predictions and the uncertainty queue of the session (see the module docstring)."""

    # ------------------------------------------------------------------ model and predictions
    def set_model(self, model: Any, model_id: str | None, device: Any = None, *, name: str | None = None) -> None:
        """Use ``model`` (None to unload); builds the Predictor.  ``model_id``: its weights' identity
        (``engine.checkpoint_id``), the key of cached probabilities; ``name``: what to call it.
        Cached probabilities of another model stop being shown."""
        from engine import Predictor
        self.model, self.model_id = model, (model_id if model is not None else None)
        self.model_name = (name or model_id) if model is not None else None
        self.predictor = Predictor(model, device) if model is not None else None
        self.fit_model_classes()
        self.model_changed.emit()

    # ------------------------------------------------------------------ the model's classes vs the folder's
    def fit_model_classes(self) -> None:
        """Make predictions speak the folder's classes: when the model's class list is another, wrap the
        predictor in an ``engine.MappedPredictor`` (classes matched by name, the rest void) and say so
        (``model_classes_changed``; ``class_map`` holds the mapping, None when the lists are the same)."""
        from engine import ClassMap, MappedPredictor
        base = self.predictor.predictor if isinstance(self.predictor, MappedPredictor) else self.predictor
        old = self.class_map
        self.predictor, self.class_map = base, None
        if base is not None and self.store is not None:
            names = list(base.meta.class_names)
            if names != list(self.store.class_names):
                self.class_map = ClassMap.by_name(names, list(self.store.class_names))
                if not self.class_map.passes_through:   # (unnamed classes, index for index: as they are)
                    self.predictor = MappedPredictor(base, self.class_map)
        if self.class_map != old:
            self.model_classes_changed.emit()

    def can_adopt_model_classes(self) -> bool:
        """Whether the folder may take the model's class list: nothing in it is labelled yet (a mask of
        any kind, a person's or a prediction, would change meaning)."""
        from engine import Status
        return self.class_map is not None and self.store is not None and not self.store.read_only \
            and all(st is Status.UNLABELED for st in self.store.statuses().values())

    def adopt_model_classes(self) -> bool:
        """Give the folder the model's class list (names and colours); predictions then need no mapping."""
        if not self.can_adopt_model_classes():
            return False
        meta = getattr(self.predictor, "predictor", self.predictor).meta
        try:  # a shorter list is fine here: no mask holds any index yet
            self.store.set_classes([(n, tuple(c)) for n, c in zip(meta.class_names, meta.class_colors)],
                                   allow_shrink=True)
        except Exception as exc:  # noqa: BLE001  (StoreError, a name the store refuses: tell the user)
            self._say("error", str(exc))
            return False
        self.classes_changed.emit()
        return True

    def set_probs(self, image_id: str, probs: np.ndarray) -> TaskHandle:
        """Cache ``probs`` (C×h×w float32: the image's size, or the capped grid of engine.probgrid for a
        huge image) in the store and, for the current image, show them."""
        store, model_id = self.store, self.model_id or ""
        size = self.image_size if image_id == self.image_id else None

        def work():
            if not store.read_only:
                store.save_probs(image_id, probs, model_id=model_id)
            return derived(probs, size) if size is not None else (None, None)
        return self.run_task(work, on_result=lambda d: self._show_probs(image_id, probs, d),
                             on_error=lambda t: self._say("error", t), task_name="cache probabilities")

    def _show_probs(self, image_id: str, probs: np.ndarray, derived: tuple) -> None:
        from engine import grid_fits
        if image_id == self.image_id and self.image_size is not None and derived[0] is not None \
                and derived[0].shape == self.image_size and grid_fits(probs.shape[1:], self.image_size):
            self.probs, (self.raw_labels, self.uncertainty) = probs, derived
            self.probs_changed.emit()

    def apply_prediction(self, image_id: str, labels: np.ndarray, probs: np.ndarray | None = None) -> TaskHandle:
        """Store a model's labels (never over an edited/reviewed mask) and, when ``image_id`` is shown
        with an untouched unlabelled or pre-labelled mask, put them in the document as one undo step."""
        store, model_id = self.store, self.model_id or ""

        def work():
            stored = store.save_prediction(image_id, labels, probs=probs, model_id=model_id)
            return stored, derived(probs, labels.shape)

        def done(value: tuple) -> None:
            stored, derived = value
            self.statuses_changed.emit()
            if probs is not None:
                self._show_probs(image_id, probs, derived)
            doc = self.document
            if stored and image_id == self.image_id and doc is not None and not doc.dirty \
                    and doc.shape == labels.shape:
                doc.apply_labels(labels, description="pre-label")
                doc.mark_saved()  # the store holds exactly this mask, as a prediction

        return self.run_task(work, on_result=done, on_error=lambda t: self._say("error", t),
                             task_name="store prediction")

    # ------------------------------------------------------------------ review queue
    def next_most_uncertain(self) -> TaskHandle | None:
        """Select the not-yet-reviewed image whose cached probabilities have the highest mean entropy."""
        if self.store is None:
            return None
        store, model_id, current = self.store, self.model_id, self.image_id

        def done(image_id: str | None) -> None:
            if image_id is None:
                self._say("info", "no other unreviewed image has cached predictions; pre-label first")
            else:
                self.select(image_id)
        return self.run_task(most_uncertain, store, model_id, current, on_result=done,
                             on_error=lambda t: self._say("error", t), task_name="rank by uncertainty")
