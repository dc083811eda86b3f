"""Predicting with a model whose class list is not the folder's: map its classes onto the folder's by name.

A Cityscapes model (19 classes) on a folder labelled with VOC's 21 would otherwise write class indices that
mean something else in the folder ("road" stored as "aeroplane").  :class:`ClassMap` matches the model's
class names to the folder's (case, spaces, underscores and hyphens ignored, plus a few synonyms that
differ between the common data sets: aeroplane/airplane, motorbike/motorcycle, tvmonitor/tv, sofa/couch,
...).  :class:`MappedPredictor` wraps a :class:`~engine.predictor.Predictor` so everything it returns is
in the folder's classes:

* labels: each model class becomes its folder class; a pixel whose class has no counterpart becomes
  void (255), i.e. left for a person rather than guessed;
* probabilities: each folder class gets the summed probability of the model classes mapped to it,
  renormalised over the mapped mass (a pixel with no mapped mass at all gets the uniform distribution:
  the model says nothing about it).

Qt-free; the app and the command line use the same objects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .labels import VOID

__all__ = ["ClassMap", "MappedPredictor", "normalise_class_name"]

# Names of the same thing in the common data sets (VOC, COCO, ADE20K, Cityscapes, Pascal Context), after
# normalise_class_name.  Each group maps to its first member.
_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("aeroplane", "airplane", "aircraft", "plane"),
    ("motorbike", "motorcycle"),
    ("tvmonitor", "tv", "television", "monitor", "tvmonitors"),
    ("sofa", "couch"),
    ("pottedplant", "plant", "houseplant"),
    ("diningtable", "table"),
    ("bicycle", "bike"),
    ("person", "people", "pedestrian", "human"),
    ("background", "bg"),
)
_CANON = {name: group[0] for group in _SYNONYMS for name in group}
# What a checkpoint without class names gets (engine's "class_0", "class_1", ...; smp files, most
# training scripts): such a model's class i can only mean the folder's class i.
_UNNAMED = re.compile(r"(?i)^class[ _-]?\d+$")


def normalise_class_name(name: str) -> str:
    """Lower case, letters and digits only, synonyms folded: ``"Potted Plant"`` -> ``"pottedplant"``."""
    key = re.sub(r"[^0-9a-z]+", "", str(name).lower())
    return _CANON.get(key, key)


@dataclass(frozen=True)
class ClassMap:
    """Model class index -> folder class index (``-1``: no counterpart)."""

    source: tuple[str, ...]   # the model's class names
    target: tuple[str, ...]   # the folder's class names
    lut: tuple[int, ...]
    by_index: bool = False    # the model's classes have no names: class i is the folder's class i

    @classmethod
    def by_name(cls, source: Sequence[str], target: Sequence[str]) -> "ClassMap":
        """Match by normalised name; the first folder class of a name wins when it appears twice.  A
        model whose classes have no names (``class_0``, ``class_1``, ...) is matched by index instead."""
        source, target = tuple(map(str, source)), tuple(map(str, target))
        if source and all(_UNNAMED.match(n.strip()) for n in source):
            return cls(source, target, tuple(i if i < len(target) else -1 for i in range(len(source))), True)
        index: dict[str, int] = {}
        for j, name in enumerate(target):
            index.setdefault(normalise_class_name(name), j)
        lut = tuple(index.get(normalise_class_name(name), -1) for name in source)
        return cls(source, target, lut)

    @property
    def passes_through(self) -> bool:
        """Every model class is the folder class of the same index: predictions need no mapping."""
        return self.lut == tuple(range(len(self.source)))

    @property
    def identity(self) -> bool:
        """The two lists are the same list: nothing to map."""
        return self.source == self.target

    @property
    def matched(self) -> list[tuple[str, str]]:
        return [(s, self.target[j]) for s, j in zip(self.source, self.lut) if j >= 0]

    @property
    def unmatched(self) -> list[str]:
        return [s for s, j in zip(self.source, self.lut) if j < 0]

    def describe(self) -> str:
        """One line for a message: how many of the model's classes have a counterpart."""
        un = self.unmatched
        if self.by_index:
            text = (f"the model's {len(self.source)} classes have no names: class i is taken as the folder's "
                    f"class i ({', '.join(self.target[:min(3, len(self.source))])}, ...)")
            return text + (f"; classes {len(self.target)} and up become void" if un else "")
        text = f"{len(self.source) - len(un)} of the model's {len(self.source)} classes match the folder's by name"
        if un:
            shown = ", ".join(un[:6]) + (", ..." if len(un) > 6 else "")
            text += f"; the others ({shown}) become void"
        return text

    def _label_lut(self) -> np.ndarray:
        lut = np.full(256, VOID, dtype=np.uint8)
        for i, j in enumerate(self.lut):
            if j >= 0:
                lut[i] = j
        return lut

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """H×W uint8 model labels -> folder labels (unmatched classes and void -> 255)."""
        return self._label_lut()[np.asarray(labels, dtype=np.uint8)]

    def probs(self, probs: np.ndarray) -> np.ndarray:
        """C_model×h×w probabilities -> C_folder×h×w, summed per folder class and renormalised."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape[0] != len(self.source):
            raise ValueError(f"probabilities have {probs.shape[0]} classes, the model {len(self.source)}")
        out = np.zeros((len(self.target),) + probs.shape[1:], dtype=np.float32)
        for i, j in enumerate(self.lut):
            if j >= 0:
                out[j] += probs[i]
        total = out.sum(0, keepdims=True)
        empty = total <= 1e-12
        np.divide(out, np.where(empty, 1.0, total), out=out)
        if empty.any():
            out[:, empty[0]] = 1.0 / len(self.target)
        return out


class MappedPredictor:
    """A Predictor whose results are in the folder's classes (see the module docstring).  Everything
    else (device, memory bound, inference size, ...) is the wrapped predictor's."""

    def __init__(self, predictor: Any, class_map: ClassMap) -> None:
        self.predictor = predictor
        self.class_map = class_map

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    @property
    def num_classes(self) -> int:
        return len(self.class_map.target)

    def predict(self, image: Any) -> np.ndarray:
        return self.class_map.probs(self.predictor.predict(image))

    def predict_labels(self, image: Any) -> np.ndarray:
        return self.class_map.labels(self.predictor.predict_labels(image))

    def predict_with_probs(self, image: Any, *, max_pixels: int | None = None) -> Any:
        pred = self.predictor.predict_with_probs(image, max_pixels=max_pixels)
        return type(pred)(self.class_map.labels(pred.labels), self.class_map.probs(pred.probs))

    def predict_batch_with_probs(self, images: Sequence[Any], *, max_pixels: int | None = None) -> list[Any]:
        preds = self.predictor.predict_batch_with_probs(images, max_pixels=max_pixels)
        return [type(p)(self.class_map.labels(p.labels), self.class_map.probs(p.probs)) for p in preds]

    def predict_many(self, images: Iterable[Any], *, labels: bool = False, prediction: bool = False,
                     **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        for key, result in self.predictor.predict_many(images, labels=labels, prediction=prediction, **kwargs):
            if isinstance(result, Exception):
                yield key, result
            elif prediction:
                yield key, type(result)(self.class_map.labels(result.labels), self.class_map.probs(result.probs))
            elif labels:
                yield key, self.class_map.labels(result)
            else:
                yield key, self.class_map.probs(result)
