"""Frozen entry point: the bundle's executable runs exactly what the ``deeplab-gui`` command runs.

PyInstaller needs a script, not a console-script entry point; this is that script.
"""
from __future__ import annotations

import multiprocessing
import sys

__all__: list[str] = []

if __name__ == "__main__":
    # A frozen executable re-runs itself for spawned worker processes (DataLoader workers, DDP on
    # spawn platforms); freeze_support routes those to multiprocessing instead of the CLI.
    multiprocessing.freeze_support()
    from deeplab_gui.cli import main

    sys.exit(main())
