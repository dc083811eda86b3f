"""Label formats in and out of the annotation store (Qt-free, one module each).

``voc`` exports a PASCAL VOC dataset; ``voc_import`` reads one back, checked by ``voc_dataset``;
``voc_common`` holds what both directions share.
"""
from __future__ import annotations

from .voc import ExportReport, ImportReport, VOCError, export_voc, import_voc

__all__ = ["ExportReport", "ImportReport", "VOCError", "export_voc", "import_voc"]
