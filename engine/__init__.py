"""deeplab-gui engine: models, checkpoints, weights, Predictor, CRF, annotation store, label formats.

No Qt here: everything is usable from a script or a headless server.  Data in and out is numpy:
images HxWx3 uint8, probabilities CxHxW float32, masks HxW uint8 with 255 (:data:`VOID`) = void.
This module is the public face the app and the trainer import; the rooms behind it are
``models/``, ``crf/``, ``checkpoints/``, ``weights/``, ``store/`` and ``formats/``.
"""
from __future__ import annotations

from .cancel import cancel_check
from .checkpoints import (CheckpointError, checkpoint_id, load_model, nonfinite_tensors, read_checkpoint, read_meta,
                          save_model)
from .errors import one_line
from .fileio import atomic_write_bytes
from .formats import ExportReport, ImportReport, VOCError, export_voc, import_voc
from .imageio import ImageReadError, image_size, list_images, read_image, to_rgb_uint8
from .labels import VOID, LabelClass, default_classes, load_mask_png, mask_palette, save_mask_png
from .meta import ModelMeta, Preprocessing
from .models import build_model, list_models
from .predictor import PredictionError, Predictor
from .store import (PROTECTED, AnnotationStore, CachedProbs, ImageSignature, MaskError, Status, StoreError,
                    StoreLockedError, StoreWriteError, Version, VersionError, Versions)
from .weights import (CATALOG, BackboneLoadReport, DownloadCancelled, WeightsEntry, WeightsError, WeightsHashMismatch,
                      WeightsUnavailable, download, get_weights, list_weights, load_backbone_weights,
                      load_catalog_model, resolve_weights, weights_path)

__all__ = [
    "build_model", "list_models", "ModelMeta", "Preprocessing",
    "load_model", "save_model", "read_meta", "read_checkpoint", "checkpoint_id", "CheckpointError",
    "nonfinite_tensors", "one_line",
    "load_backbone_weights", "BackboneLoadReport",
    "CATALOG", "WeightsEntry", "list_weights", "get_weights", "download", "resolve_weights",
    "weights_path", "load_catalog_model", "WeightsError", "WeightsUnavailable", "WeightsHashMismatch",
    "DownloadCancelled",
    "Predictor", "PredictionError",
    "read_image", "image_size", "ImageReadError", "to_rgb_uint8", "list_images",
    "VOID", "LabelClass", "default_classes", "save_mask_png", "load_mask_png", "mask_palette",
    "AnnotationStore", "Status", "PROTECTED", "StoreError", "StoreWriteError", "MaskError", "StoreLockedError",
    "CachedProbs", "ImageSignature", "Versions", "Version", "VersionError",
    "export_voc", "import_voc", "ExportReport", "ImportReport", "VOCError",
    "atomic_write_bytes", "cancel_check",
]
