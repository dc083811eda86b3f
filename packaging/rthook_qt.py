"""PyInstaller runtime hook: runs in the frozen app before any of its modules are imported.

qtawesome reaches Qt through qtpy, which probes PyQt5 first; the bundle only holds PySide6, so name
it and skip the probing (and the misleading import errors it logs).
"""
import os

os.environ.setdefault("QT_API", "pyside6")
