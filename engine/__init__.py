"""deeplab-gui engine: models, checkpoints, weights, Predictor, CRF, annotation store, label formats.

No Qt here: everything is usable from a script or a headless server.  Data in and out is numpy:
images HxWx3 uint8, probabilities CxHxW float32, masks HxW uint8 with 255 (:data:`VOID`) = void.
This module is the public face the app and the trainer import; the rooms behind it are
``models/``, ``crf/``, ``checkpoints/``, ``weights/``, ``store/`` and ``formats/``.

Names are imported on first use (PEP 562): ``from engine import VOID`` or ``engine.read_image`` costs
only what those need, so the command line's ``--help`` does not wait for torch.
"""
from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    "building": ("build_model",),
    "cancel": ("cancel_check",),
    "classmap": ("ClassMap", "MappedPredictor", "normalise_class_name"),
    "checkpoints": ("CheckpointError", "checkpoint_id", "load_model", "nonfinite_tensors", "read_checkpoint",
                    "read_meta", "save_model"),
    "click": ("ClickEmbedding", "ClickModel", "ClickPrediction", "ClickPredictor", "build_click_model",
              "list_click_models", "load_click_model"),
    "errors": ("one_line",),
    "fileio": ("NAME_MAX", "atomic_write_bytes", "fitted_name", "temp_path"),
    "formats": ("ExportReport", "FormatError", "ImportReport", "LABEL_FORMATS", "VOCError", "export_voc",
                "import_source", "import_voc"),
    "imageio": ("ImageReadError", "image_size", "list_images", "read_image", "read_image_preview", "to_rgb_uint8"),
    "labels": ("VOID", "LabelClass", "default_classes", "load_mask_png", "mask_palette", "save_mask_png"),
    "meta": ("ModelMeta", "Preprocessing", "default_colors"),
    "models": ("list_models",),
    "predictor": ("DEFAULT_MAX_SIDE", "ImageTooSmallError", "PredictionError", "Predictor", "resolve_device"),
    "probgrid": ("argmax0_u8", "crop_at", "grid_fits", "labels_at", "resize_image", "resize_probs", "sample_at",
                 "upsample_bands"),
    "store": ("PROTECTED", "AnnotationStore", "CachedProbs", "Effort", "ImageSignature", "MaskError", "Status", "StoreError",
              "StoreLockedError", "StoreWriteError", "Version", "VersionError", "Versions"),
    "weights": ("CATALOG", "BackboneLoadReport", "DownloadCancelled", "WeightsEntry", "WeightsError",
                "WeightsHashMismatch", "WeightsUnavailable", "download", "get_weights", "list_weights",
                "TqdmProgress", "load_backbone_weights", "load_catalog_model", "resolve_weights", "weights_path"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
