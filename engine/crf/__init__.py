"""Fully-connected CRF (Krähenbühl & Koltun 2011) refinement of per-pixel class probabilities.

``refine`` runs one image through pydensecrf or this project's torch backend (a permutohedral lattice
that gives pydensecrf's labels, on CPU or CUDA); ``LiveCRF`` serves slider drags (cached lattices, class
pruning, preview then full result, latest request wins); ``refine_with_scribbles`` propagates a few
user strokes along image edges. No Qt here.
"""
from __future__ import annotations

from .backends import BACKENDS, available_backends, refine, resolve_backend
from .lattice import PermutohedralLattice
from .live import LiveCRF, LiveCRFWorker, LiveResult
from .params import CONVCRF, DEEPLAB_V1, DEEPLAB_V2, MAX_ITERATIONS, PRESETS, CRFParams
from .scribbles import refine_with_scribbles, stroke_prior

__all__ = [
    "CRFParams", "PRESETS", "DEEPLAB_V1", "DEEPLAB_V2", "CONVCRF", "MAX_ITERATIONS",
    "refine", "BACKENDS", "available_backends", "resolve_backend",
    "LiveCRF", "LiveCRFWorker", "LiveResult",
    "refine_with_scribbles", "stroke_prior",
    "PermutohedralLattice",
]
