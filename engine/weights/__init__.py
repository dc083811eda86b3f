"""Known public weights: the catalog, downloading them into the user cache, and ImageNet backbones.

``catalog`` lists the files (URL, hash prefix, classes, preprocessing), ``download`` fetches one safely
(``.part``, length and hash checked, then renamed), ``backbone`` loads ImageNet weights into a model's
backbone for training from a good start.
"""
from __future__ import annotations

from .backbone import BackboneLoadReport, detect_imagenet_network, load_backbone_weights
from .catalog import (
                      CACHE_ENV,
                      CATALOG,
                      WeightsEntry,
                      default_cache_dir,
                      download,
                      get_weights,
                      is_downloaded,
                      list_weights,
                      load_catalog_model,
                      resolve_weights,
                      weights_path,
)
from .download import (
                      DownloadCancelled,
                      TqdmProgress,
                      WeightsError,
                      WeightsHashMismatch,
                      WeightsUnavailable,
                      download_file,
)

__all__ = [
    "CATALOG", "CACHE_ENV", "WeightsEntry", "list_weights", "get_weights", "default_cache_dir", "weights_path",
    "is_downloaded", "download", "resolve_weights", "load_catalog_model", "download_file", "TqdmProgress",
    "WeightsError", "WeightsUnavailable", "WeightsHashMismatch", "DownloadCancelled",
    "BackboneLoadReport", "load_backbone_weights", "detect_imagenet_network",
]
