"""Background work for the app: plain-Python callables and generators run off the UI thread.

The engine reports progress through plain callbacks (``progress(done, total)``) and polls ``cancel()``;
this module adapts that to Qt (napari's ``thread_worker`` idea): a :class:`Worker` runs the callable on
its own ``QThreadPool`` and a :class:`TaskHandle` delivers ``progress``, ``yielded`` (any other value a
generator yields, or a callable hands to its ``emit=`` keyword), ``result``, ``error`` and ``finished``
on the UI thread.  This is the app's one task runner: every long job goes through it.  An exception never reaches Qt's event loop: it becomes a
one-line ``error`` and is logged with its traceback (the log file is set up by :mod:`.settings`).
"""
from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from engine.allocator import release_freed_memory
from engine.threads import intraop_threads, process_threads

__all__ = ["BACKGROUND_LANE", "BACKGROUND_NICE", "LANE_IDLE_MS", "POOL_IDLE_MS", "RELEASE_IDLE_MS", "TaskCancelled",
           "TaskHandle", "Worker", "alongside", "one_line_error"]

log = logging.getLogger("deeplab_gui")

# Progress from a tight loop would flood the UI event queue; 20 updates a second is plenty to see.
_PROGRESS_INTERVAL_S = 0.05


class TaskCancelled(Exception):
    """A task may raise this when it notices ``cancel()``; the handle then finishes without error."""


def one_line_error(exc: BaseException) -> str:
    """A one-line message for a person: the project's own errors are sentences already; others get
    their type name so ``KeyError: 'x'`` stays meaningful."""
    text = " ".join(str(exc).split())
    mod = type(exc).__module__.split(".")[0]
    if mod in ("engine", "trainer", "deeplab_gui") and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TaskHandle(QObject):
    """One running task.  Public signals arrive on the UI thread (the thread that created the handle).

    ``progress(done, total)``, ``yielded(object)`` (in order, before ``result``), ``result(object)``,
    ``error(str)`` and always exactly one ``finished()`` last (also after a cancel).  ``cancel()`` asks the task to stop; the callable sees it through its
    ``cancel()`` keyword, a generator is stopped at its next ``yield``.
    """

    progress = Signal(int, int)
    yielded = Signal(object)
    result = Signal(object)
    error = Signal(str)
    finished = Signal()

    # Emitted from the pool thread; the handle lives on the UI thread so Qt queues them there.
    _sig_progress = Signal(int, int)
    _sig_yielded = Signal(object)
    _sig_result = Signal(object)
    _sig_error = Signal(str)
    _sig_finished = Signal()

    def __init__(self, name: str = "", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._cancel = threading.Event()
        self._done = False
        self._last_progress = 0.0
        self._sig_progress.connect(self._on_progress)
        self._sig_yielded.connect(self._on_yielded)
        self._sig_result.connect(self._on_result)
        self._sig_error.connect(self._on_error)
        self._sig_finished.connect(self._on_finished)

    # ---------------------------------------------------------------- public
    def cancel(self) -> None:
        """Ask the task to stop (thread-safe, idempotent)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        """True once ``finished`` has been delivered on the UI thread."""
        return self._done

    # ---------------------------------------------------------------- pool-thread side
    def _report(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last_progress >= _PROGRESS_INTERVAL_S or done == 0:
            self._last_progress = now
            self._sig_progress.emit(int(done), int(total))

    def _emit(self, value: object) -> None:
        """Hand ``value`` to the UI thread (``yielded``); thread-safe, nothing is dropped or merged."""
        self._sig_yielded.emit(value)

    # ---------------------------------------------------------------- UI-thread side
    @Slot(int, int)
    def _on_progress(self, done: int, total: int) -> None:
        self.progress.emit(done, total)

    @Slot(object)
    def _on_yielded(self, value: object) -> None:
        self.yielded.emit(value)

    @Slot(object)
    def _on_result(self, value: object) -> None:
        self.result.emit(value)

    @Slot(str)
    def _on_error(self, text: str) -> None:
        self.error.emit(text)

    @Slot()
    def _on_finished(self) -> None:
        self._done = True
        self.finished.emit()
        # Nothing is delivered after ``finished``: let go of every receiver. PySide keeps connected
        # Python callables alive from the C++ side, where the cycle collector cannot see them, and
        # the run's own callbacks hold this handle (and the task's results: a live CRF, a click's
        # candidates), so each finished task used to stay in memory for good (about 1 GB per image
        # switch on large photos).
        with warnings.catch_warnings():   # a signal nobody connected: PySide warns, or raises, by version
            warnings.simplefilter("ignore", RuntimeWarning)
            for signal in (self.progress, self.yielded, self.result, self.error, self.finished,
                           self._sig_progress, self._sig_yielded, self._sig_result, self._sig_error,
                           self._sig_finished):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass


def _lower_priority(nice: int) -> None:
    """Give the calling thread at least this nice value (Linux: a thread's own; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return   # (macOS and Windows have no per-thread nice value through os.setpriority)
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        pass   # a sandbox that refuses it: the work still runs, at normal priority


class _Waiting:
    """A lane's tasks not started yet, with their priorities, in start order (see Worker.run_waiting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: list[tuple[int, _Runnable]] = []

    def start(self, pool: QThreadPool, runnable: _Runnable, priority: int) -> None:
        """Listed and queued at once: :meth:`take` never sees a task that is not in the pool yet."""
        with self._lock:
            self._tasks.append((priority, runnable))
            pool.start(runnable, priority)

    def started(self, runnable: _Runnable) -> None:
        with self._lock:
            self._tasks = [t for t in self._tasks if t[1] is not runnable]

    def take(self, pool: QThreadPool, min_priority: int) -> _Runnable | None:
        """The first waiting task of the highest priority (at least ``min_priority``), taken out of
        ``pool``'s queue; None when there is none."""
        with self._lock:
            while True:
                best = None
                for i, (priority, runnable) in enumerate(self._tasks):
                    if priority >= min_priority and (best is None or priority > self._tasks[best][0]):
                        best = i
                if best is None:
                    return None
                runnable = self._tasks.pop(best)[1]
                if pool.tryTake(runnable):
                    return runnable


class _Runnable(QRunnable):
    def __init__(self, handle: TaskHandle, fn: Callable, args: tuple, kwargs: dict, threads: int,
                 nice: int = 0, default_threads: int | None = None) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self.handle, self.fn, self.args, self.kwargs, self.threads = handle, fn, args, kwargs, threads
        self.nice, self.default_threads = nice, default_threads
        self.waiting: _Waiting | None = None   # a lane's list of its tasks not started yet

    def run(self) -> None:  # pool thread
        h = self.handle
        if self.waiting is not None:
            self.waiting.started(self)
        try:
            if h.cancelled:
                return
            if self.nice:
                _lower_priority(self.nice)
            # (a generator's body runs in _drain: within the same threads)
            with intraop_threads(self.threads, after=self.default_threads):
                out = self.fn(*self.args, **self.kwargs)
                if isinstance(out, types.GeneratorType):
                    out = self._drain(out)
            if not h.cancelled:
                h._sig_result.emit(out)
        except TaskCancelled:
            pass
        except BaseException as exc:  # the app must survive any task failure
            log.error("task %r failed", h.name or getattr(self.fn, "__name__", "?"), exc_info=exc)
            h._sig_error.emit(one_line_error(exc))
        finally:
            # Let go of the task and its handle before saying so. PySide does not always free a
            # finished runnable's Python object once Qt has deleted the C++ one (measured: a quarter
            # to a third of them under load, kept for good), and one that still held its handle kept
            # the task's results and every callback's captures with it; emptied, one left behind
            # is 120 bytes (its object and empty dict).
            vars(self).clear()
            h._sig_finished.emit()

    def _drain(self, gen: types.GeneratorType) -> Any:
        """Run a generator: a yielded ``(done, total)`` pair is progress, any other value goes to
        ``yielded``; its ``return`` is the result."""
        try:
            while True:
                item = next(gen)
                if self.handle.cancelled:
                    gen.close()
                    raise TaskCancelled
                if isinstance(item, tuple) and len(item) == 2 and all(isinstance(v, int) for v in item):
                    self.handle._report(*item)
                else:
                    self.handle._emit(item)
        except StopIteration as stop:
            return stop.value


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)


# How long an idle thread waits for more work before it exits. torch's CPU kernels run on an OpenMP
# team per calling thread, and GNU OpenMP keeps a thread's team (its extra threads, asleep) until that
# thread exits. While the process holds more such threads than there are cores, OpenMP stops spinning
# at its barriers, so every operator of every other thread pays for waking its partners. Idle threads
# therefore go soon: measured on 2 cores with one idle team left in another thread, a click's decoder
# took 57 ms instead of 38 and DeepLabv3+ MobileNetV2 on a 500×375 image 293 ms instead of 244.
POOL_IDLE_MS = 1000
# A lane's thread stays longer: a new thread's first click decode costs ~15 ms more (its team and
# buffers are made on first use), so it lives while a person keeps clicking and goes when they stop.
LANE_IDLE_MS = 5000
# Work nobody waits for, done ahead in case it is wanted (the click tool's edge polish and full-size
# candidate): one lane whose thread runs at this nice value (Linux), so under contention the
# scheduler gives the cores to what a person waits on (a CFS weight of about a tenth of a normal
# thread's), and on an idle machine it runs at full speed. Raising a thread's nice value needs no
# privilege; the lane's thread never runs anything else. Not lower: the thread holds the GIL between
# its numpy and torch calls, and a thread the scheduler starves while holding it stops every other
# thread of the app. Linux's idle class (SCHED_IDLE) took fewer slices from a click's two decoder
# threads beside a running polish (decoder p95 45 ms against 131 niced, 45 alone), but with two
# busy processes outside, a thread waking every 2 ms (as the UI thread does) was up to 1.4 s late
# beside an idle-class thread running Python, 55 ms beside a niced one (and a test suite's handle
# release, waiting on the GIL, timed out after 10 s).
BACKGROUND_LANE = "background"
BACKGROUND_NICE = 10
# After this long with no task in flight, the free memory the C allocator keeps for reuse (see
# engine.allocator, which the app turns on) goes back to the system, in a short-lived thread.
RELEASE_IDLE_MS = 30_000


class Worker(QObject):
    """Runs tasks on a private thread pool; create it on the UI thread.

    ``busy_changed(int)`` tells how many tasks are in flight (for a status-bar spinner); tasks
    started with ``quiet=True`` (the live CRF's lanes, which come and go with every slider move) run the
    same way but are not counted. ``pool_idle_ms`` / ``lane_idle_ms``: how long an idle pool or lane
    thread waits for work before it exits (see :data:`POOL_IDLE_MS`).
    """

    busy_changed = Signal(int)

    def __init__(self, parent: QObject | None = None, *, max_threads: int = 4, pool_idle_ms: int = POOL_IDLE_MS,
                 lane_idle_ms: int = LANE_IDLE_MS, release_idle_ms: int = RELEASE_IDLE_MS) -> None:
        super().__init__(parent)
        # Free memory back to the system once nothing has run for a while (0: never).
        self._release = QTimer(self)
        self._release.setSingleShot(True)
        self._release.setInterval(release_idle_ms)
        self._release.timeout.connect(self._release_memory)
        self.pool = QThreadPool(self)
        # A long pre-label run must not starve image loading: several threads, each mostly waiting
        # on torch (which has its own intra-op threads) or on disk.
        self.pool.setMaxThreadCount(max_threads)
        self.pool.setExpiryTimeout(pool_idle_ms)
        self._lane_idle_ms = lane_idle_ms
        self._lanes: dict[str, QThreadPool] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._active: dict[TaskHandle, None] = {}  # counted for busy_changed, in start order
        self._all: set[TaskHandle] = set()     # every task in flight, quiet ones too (cancel_all)
        # Each task sets the torch threads of the thread it runs on (see run_task's ``threads``): the
        # process's count, read on this thread when the first task starts (torch loads then).
        self._threads: int | None = None

    @property
    def active(self) -> int:
        """Tasks in flight, quiet ones included."""
        return len(self._all)

    def run_task(self, fn: Callable, *args: Any, on_result: Callable[[Any], Any] | None = None,
                 on_error: Callable[[str], Any] | None = None,
                 on_progress: Callable[[int, int], Any] | None = None,
                 on_yielded: Callable[[Any], Any] | None = None,
                 parent: QObject | None = None, task_name: str = "", quiet: bool = False,
                 lane: str | None = None, priority: int = 0, threads: int | None = None, **kw: Any) -> TaskHandle:
        """Start ``fn(*args, **kw)`` in the pool and return its handle at once.

        ``fn`` gets ``progress=``, ``cancel=`` and ``emit=`` keyword callables when its signature names
        them.  A generator function may instead yield ``(done, total)`` for progress and any other value
        for ``on_yielded``, and ``return`` its result.
        Callbacks run on the UI thread; an exception in one is logged and reported as ``error``.

        ``lane``: run on that lane's one thread instead of the shared pool, in start order (higher
        ``priority`` first among those waiting). The lane's thread stays while work keeps coming (up
        to ``lane_idle_ms`` idle), so one model's calls do not hop between threads, each making its own
        OpenMP team. :data:`BACKGROUND_LANE` runs at a lower priority (see :data:`BACKGROUND_NICE`).

        ``threads``: the CPU threads ``fn``'s torch operators use (default: the process's count; one
        on the background lane, whose work runs beside a lane's model and is not waited on: a
        thread that has run torch on several threads keeps an OpenMP team until it exits, and more
        such threads than cores slow every team, see engine.threads).
        """
        handle = TaskHandle(task_name or getattr(fn, "__name__", ""), parent)
        if _accepts(fn, "progress"):
            kw.setdefault("progress", handle._report)
        if _accepts(fn, "cancel"):
            kw.setdefault("cancel", handle._cancel.is_set)
        if _accepts(fn, "emit"):
            kw.setdefault("emit", handle._emit)
        if on_progress is not None:
            handle.progress.connect(on_progress)
        if on_yielded is not None:
            handle.yielded.connect(self._guard(handle, on_yielded))
        if on_result is not None:
            handle.result.connect(self._guard(handle, on_result))
        if on_error is not None:
            handle.error.connect(on_error)
        if not quiet:
            self._active[handle] = None
            handle.finished.connect(lambda h=handle: self._retire(h))
            self.busy_changed.emit(len(self._active))
        self._all.add(handle)
        self._release.stop()
        handle.finished.connect(lambda h=handle: self._forget(h))
        if self._threads is None:
            self._threads = process_threads()
        background = lane == BACKGROUND_LANE
        runnable = _Runnable(handle, fn, args, kw, threads or (1 if background else self._threads),
                             BACKGROUND_NICE if background else 0, self._threads)
        if lane is None:
            self.pool.start(runnable, priority)
        else:
            pool = self._lane(lane)
            runnable.waiting = self._waiting[lane]
            runnable.waiting.start(pool, runnable, priority)
        return handle

    def run_waiting(self, lane: str, min_priority: int = 1) -> int:
        """From inside a task on ``lane``: run the lane's tasks that wait with at least
        ``min_priority`` here and now (highest priority first, then in start order), on this same
        thread, before going on; returns how many ran. A long task calls it at its pauses (a
        neighbouring image's click embedding, between the encoder's blocks) so that a click waiting
        behind it is answered within one pause instead of after the whole run."""
        waiting, pool = self._waiting.get(lane), self._lanes.get(lane)
        ran = 0
        while waiting is not None and pool is not None:
            runnable = waiting.take(pool, min_priority)
            if runnable is None:
                break
            runnable.run()
            ran += 1
            # Taken back from the pool, it is the caller's to delete (Qt's rule for tryTake).
            shiboken6.delete(runnable)
        return ran

    def _lane(self, name: str) -> QThreadPool:
        pool = self._lanes.get(name)
        if pool is None:
            pool = self._lanes[name] = QThreadPool(self)
            self._waiting[name] = _Waiting()
            pool.setMaxThreadCount(1)
            pool.setExpiryTimeout(self._lane_idle_ms)
        return pool

    def _guard(self, handle: TaskHandle, fn: Callable[[Any], Any]) -> Callable[[Any], None]:
        # A bug in a result callback must not take the app down (PySide prints and goes on, but the
        # user would never know): log it and turn it into the task's error.
        def call(value: Any) -> None:
            try:
                fn(value)
            except Exception as exc:  # a callback bug becomes the task's error
                log.error("result callback of %r failed", handle.name, exc_info=exc)
                handle.error.emit(one_line_error(exc))
        return call

    def busy_text(self) -> str:
        """What the status bar says is running: the tasks' names, oldest first ("" when none)."""
        names: dict[str, int] = {}
        for h in self._active:
            name = h.name or "a task"
            names[name] = names.get(name, 0) + 1
        parts = [name if n == 1 else f"{name} ×{n}" for name, n in names.items()]
        if not parts:
            return ""
        shown = ", ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
        return f"running: {shown}…"

    def _forget(self, handle: TaskHandle) -> None:
        self._all.discard(handle)
        if not self._all and self._release.interval() > 0:
            self._release.start()

    def _release_memory(self) -> None:
        if not self._all:
            threading.Thread(target=release_freed_memory, name="deeplab-gui-release", daemon=True).start()

    def _retire(self, handle: TaskHandle) -> None:
        self._active.pop(handle, None)
        self.busy_changed.emit(len(self._active))

    def cancel_all(self) -> None:
        for h in list(self._all):
            h.cancel()

    def wait(self, timeout_ms: int = 5000) -> bool:
        """Block until the pool and the lanes are idle (used on quit, after :meth:`cancel_all`)."""
        ok = self.pool.waitForDone(timeout_ms)
        return all([lane.waitForDone(timeout_ms) for lane in self._lanes.values()]) and ok


_ALONGSIDE: ThreadPoolExecutor | None = None
_ALONGSIDE_LOCK = threading.Lock()


def alongside(fn: Callable[..., Any], *args: Any) -> Future:
    """Run ``fn(*args)`` next to the calling task, for a task that overlaps two blocking reads (an
    image's decode with its mask and probabilities); called from a task, never from the UI thread.

    Both reads spend most of their time in C with the GIL released (libjpeg, zlib), so on two cores
    the task costs the longer of the two, not their sum.  Two threads, shared by every task.
    """
    global _ALONGSIDE
    with _ALONGSIDE_LOCK:
        if _ALONGSIDE is None:
            _ALONGSIDE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deeplab-gui-alongside")
    return _ALONGSIDE.submit(fn, *args)
