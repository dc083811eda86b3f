"""deeplab-gui engine: models, checkpoints, weights catalog, Predictor, CRF, annotation store.

No Qt here: everything is usable from a script or a headless server.
"""
from __future__ import annotations

from .meta import ModelMeta, Preprocessing
from .models import build_model, list_models

__all__ = ["build_model", "list_models", "ModelMeta", "Preprocessing"]
