"""The annotation store of an image folder: statuses, masks, class list, probability cache, model versions.

:class:`AnnotationStore` is the way in; the modules behind it are its on-disk format (``format``),
its mask methods (``masks``), the single-instance lock (``lock``), the folder scan (``scan``), the
probability cache (``probcache``), the click-embedding cache (``embcache``), the fine-tuned model
versions (``versions``) and the work each image took a person (``effort``).  The README's "Annotation store" section documents the layout and the
guarantees.
"""
from __future__ import annotations

from .effort import Effort, Segment, done_efforts, efforts_csv, segments, version_marks
from .format import (
                     PROTECTED,
                     LabelClass,
                     MaskError,
                     Status,
                     StoreError,
                     StoreWriteError,
                     default_classes,
                     user_store_root,
)
from .embcache import DEFAULT_EMBEDDINGS_BUDGET
from .lock import StoreLockedError
from .probcache import CachedProbs, ImageSignature
from .scan import SIDECAR_NAME, ScanResult, natural_key, scan_folder
from .store import AnnotationStore
from .versions import Version, VersionError, Versions

__all__ = [
    "AnnotationStore", "Status", "PROTECTED", "LabelClass", "default_classes", "StoreError", "StoreWriteError",
    "MaskError", "StoreLockedError", "DEFAULT_EMBEDDINGS_BUDGET", "user_store_root", "CachedProbs",
    "ImageSignature", "SIDECAR_NAME",
    "ScanResult", "natural_key", "scan_folder", "Version", "VersionError", "Versions", "Effort", "Segment",
    "done_efforts", "efforts_csv", "segments", "version_marks",
]
