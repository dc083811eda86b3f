"""deeplab-gui engine: models, checkpoints, weights catalog, Predictor, CRF, annotation store.

No Qt here: everything is usable from a script or a headless server.  Data in and out is numpy:
images HxWx3 uint8, probabilities CxHxW float32, masks HxW uint8 with 255 = void.
"""
from __future__ import annotations

from .backbone_weights import BackboneLoadReport, load_backbone_weights
from .catalog import (CATALOG, WeightsEntry, download, get_weights, list_weights, load_catalog_model,
                      resolve_weights, weights_path)
from .checkpoints import CheckpointError, load_model, read_meta, save_model
from .download import DownloadCancelled, WeightsError, WeightsHashMismatch, WeightsUnavailable
from .imageio import ImageReadError, list_images, read_image, to_rgb_uint8
from .masks import load_mask_png, save_mask_png
from .meta import ModelMeta, Preprocessing
from .models import build_model, list_models
from .predictor import PredictionError, Predictor
from .store import AnnotationStore
from .storeformat import Status, StoreError
from .voc import export_voc, import_voc

__all__ = [
    "build_model", "list_models", "ModelMeta", "Preprocessing",
    "load_model", "save_model", "read_meta", "CheckpointError", "load_backbone_weights",
    "BackboneLoadReport",
    "CATALOG", "WeightsEntry", "list_weights", "get_weights", "download", "resolve_weights",
    "weights_path", "load_catalog_model", "WeightsError", "WeightsUnavailable", "WeightsHashMismatch",
    "DownloadCancelled",
    "Predictor", "PredictionError",
    "read_image", "ImageReadError", "to_rgb_uint8", "list_images", "save_mask_png", "load_mask_png",
    "AnnotationStore", "Status", "StoreError", "export_voc", "import_voc",
]
