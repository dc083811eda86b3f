"""Label formats in and out of the annotation store (Qt-free, one module each).

``importer`` and ``exporter`` hold what every format shares (the destination checks and atomic,
per-image import; which masks an export writes and how); ``registry`` names the formats the command
line offers.  ``voc`` exports a PASCAL VOC dataset; ``voc_import`` reads one back, checked by
``voc_dataset``; ``voc_common`` holds what both directions share.
"""
from __future__ import annotations

from .common import FormatError
from .importer import ImportSource, SkipItem, SourceItem, import_source
from .registry import LABEL_FORMATS, FormatOption, LabelFormat
from .voc import ExportReport, ImportReport, VOCError, export_voc, import_voc

__all__ = ["ExportReport", "ImportReport", "VOCError", "export_voc", "import_voc", "FormatError",
           "ImportSource", "SkipItem", "SourceItem", "import_source", "LABEL_FORMATS", "FormatOption",
           "LabelFormat"]
