"""``deeplab-gui [FOLDER]``: start the desktop app on FOLDER, or on the bundled ``resources/demo/``.

``DEEPLAB_GUI_EXIT_AFTER_MS=N`` quits by itself N ms after the folder finished opening (or after N ms
if none opens): the smoke hook tests use to run the real command under ``QT_QPA_PLATFORM=offscreen``.
With it, ``DEEPLAB_GUI_SCREENSHOT=PATH`` saves the window (``QWidget.grab``) to PATH just before quitting.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import traceback
from pathlib import Path

__all__ = ["demo_folder", "freeze_startup_objects", "install_excepthook", "main"]

log = logging.getLogger("deeplab_gui")


def demo_folder() -> Path:
    """The repository's ``resources/demo/`` (resolved from this file, not the working directory)."""
    return Path(__file__).resolve().parent.parent / "resources" / "demo"


def install_excepthook(window=None) -> None:
    """Uncaught exceptions in Qt callbacks: log with traceback, tell the user, keep running."""
    def hook(exc_type, exc, tb):
        log.error("uncaught exception", exc_info=(exc_type, exc, tb))
        text = " ".join(f"{exc_type.__name__}: {exc}".split())
        if window is not None:
            try:
                window.show_message("error", f"internal error: {text} (details in the log file)")
                return
            except Exception:  # the window is gone: fall back to stderr
                log.debug("could not show the error in the window", exc_info=True)
        traceback.print_exception(exc_type, exc, tb)
    sys.excepthook = hook


def freeze_startup_objects() -> int:
    """Move every object alive now (the imported modules, torch's and Qt's wrappers, the window:
    about 225,000) out of the cyclic garbage collector's reach; returns how many.

    They live as long as the app, but a full collection walks them all: measured 110-130 ms with the
    window up, during which the UI thread (holding the interpreter lock) and every Python thread
    stop, a visible freeze every few minutes of labelling. Frozen, a full collection walks only what
    was made since (well under a millisecond at start-up)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def main(folder: str | None = None) -> int:
    """Open the main window on ``folder`` (default: the demo folder) and run the event loop."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from .state.settings import setup_logging
    from .widgets.main_window import MainWindow

    log_path = setup_logging()
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "deeplab-gui"])
    app.setApplicationName("deeplab-gui")
    app.setOrganizationName("deeplab-gui")
    window = MainWindow()
    install_excepthook(window)
    log.info("deeplab-gui started (log: %s)", log_path)
    window.show()
    freeze_startup_objects()

    target = Path(folder) if folder else demo_folder()
    if target.is_dir():
        window.session.open_folder(target)
    else:
        window.show_message("warning", f"{target} is not a folder; use File > Open folder")

    exit_after = os.environ.get("DEEPLAB_GUI_EXIT_AFTER_MS")
    if exit_after:
        ms = max(int(exit_after), 0)
        shot = os.environ.get("DEEPLAB_GUI_SCREENSHOT")

        def finish() -> None:
            # DEEPLAB_GUI_SCREENSHOT=path: save the window as it looks just before the timed exit
            # (the packaging check's proof that a bundle draws its real window).
            if shot and window.isVisible() and not window.grab().save(shot):
                log.error("could not write the screenshot %s", shot)
            window.close()

        # Quit once the folder is open and its first image shown (or after the delay regardless).
        window.session.current_changed.connect(lambda _id: QTimer.singleShot(ms, finish))
        QTimer.singleShot(ms + 20_000 if target.is_dir() else ms, finish)
    app.setQuitOnLastWindowClosed(True)
    window.destroyed.connect(app.quit)
    code = app.exec()
    return int(code)
