"""``deeplab-gui [FOLDER]``: start the desktop app on FOLDER, or on the bundled ``resources/demo/``.

``DEEPLAB_GUI_EXIT_AFTER_MS=N`` quits by itself N ms after the folder finished opening (or after N ms
if none opens): the smoke hook tests use to run the real command under ``QT_QPA_PLATFORM=offscreen``.
With it, ``DEEPLAB_GUI_SCREENSHOT=PATH`` saves the window (``QWidget.grab``) to PATH just before quitting.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from engine.allocator import keep_freed_memory
from engine.threads import own_threads

__all__ = ["QUIT_SIGNALS", "demo_folder", "freeze_startup_objects", "install_excepthook", "install_quit_signals",
           "main"]

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


# Signals that ask the app to end (``kill``, a service manager, logout or shutdown, the terminal
# closing): each closes the window as the person would, so the masks are saved first (or, where the
# store cannot take them, the unsaved-changes question is asked) instead of the process just ending.
QUIT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name))


def install_quit_signals(window, app) -> Callable[[], None]:
    """Handle :data:`QUIT_SIGNALS` by closing ``window`` on the UI thread; returns a function that
    puts the previous handlers back.

    Python runs a signal's handler only between its own bytecodes, which never happen while Qt's
    event loop waits in C++: the signal's number is also written to a socket (``set_wakeup_fd``)
    that Qt watches, so the loop wakes and the handler runs at once."""
    from PySide6.QtCore import QSocketNotifier, QTimer

    asked: list[int] = []

    def handler(signum, _frame) -> None:
        if asked:
            return   # already closing (the question may be on screen)
        asked.append(signum)
        log.info("closing on %s: saving first", signal.Signals(signum).name)

        def close() -> None:
            if getattr(window, "_settling", False):
                QTimer.singleShot(250, close)   # a question the person opened is on screen: after it
                return
            if not window.close():
                asked.clear()   # the person chose Cancel in the question: a later signal asks again
        QTimer.singleShot(0, close)

    previous = {sig: signal.signal(sig, handler) for sig in QUIT_SIGNALS}
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    old_fd = signal.set_wakeup_fd(writer.fileno())
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read, app)

    def drain() -> None:
        try:
            while reader.recv(64):
                pass
        except BlockingIOError:
            return   # nothing more to read now
        except OSError:
            pass
        # End of file or a broken socket: it would wake the loop forever.
        notifier.setEnabled(False)

    notifier.activated.connect(drain)

    def restore() -> None:
        notifier.setEnabled(False)
        notifier.deleteLater()
        signal.set_wakeup_fd(old_fd)
        for sig, h in previous.items():
            signal.signal(sig, h)
        reader.close()
        writer.close()
        _held.remove(kept)

    # Held for the app's life: a socket whose Python object is collected is closed, and a wake-up
    # socket closed at one end reads as always ready (the loop would spin on it).
    kept = (reader, writer, notifier, drain, restore)
    _held.append(kept)
    return restore


_held: list[tuple] = []


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
    # Large buffers (a 12 MP photo's) reused instead of fresh pages each time; the worker hands the
    # free memory back after a while without tasks (see engine.allocator).
    keep_freed_memory()
    # The UI thread runs no heavy torch work; what little it does runs on one thread, so no OpenMP
    # team of its own slows the workers' (see engine.threads).
    own_threads(1)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "deeplab-gui"])
    app.setApplicationName("deeplab-gui")
    app.setOrganizationName("deeplab-gui")
    window = MainWindow()
    install_excepthook(window)
    restore_signals = install_quit_signals(window, app)
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
    try:
        code = app.exec()
    finally:
        restore_signals()   # a second kill or Ctrl+C during the last clean-up ends the process
    return int(code)
