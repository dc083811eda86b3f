"""The ``deeplab-gui`` command line: ``parser`` (the entry point and its subcommands), one module per
command group (``store``: prelabel into the store, export-voc, import-voc; ``train``), ``selftest``.

Only the GUI subcommand imports Qt; ``deeplab-gui --help`` and the batch commands never do.
"""
from __future__ import annotations

from .errors import CLIError
from .parser import main

__all__ = ["main", "CLIError"]
