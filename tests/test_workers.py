"""deeplab_gui.workers: results, errors, progress and cancel arrive on the UI thread; the UI keeps running."""
from __future__ import annotations

import logging
import os
import sys
import threading

import pytest

pytest.importorskip("PySide6")
from PySide6.QtCore import QTimer

from deeplab_gui.state.tasks import TaskHandle, Worker, one_line_error


@pytest.fixture
def worker(qtbot):
    w = Worker()
    yield w
    w.cancel_all()
    w.wait(5000)


def test_result_delivered_on_ui_thread(qtbot, worker):
    seen = {}

    def fn(a, b):
        seen["thread"] = threading.current_thread()
        return a + b

    got = []
    handle = worker.run_task(fn, 2, 3, on_result=lambda v: got.append((v, threading.current_thread())))
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert got == [(5, threading.main_thread())]
    assert seen["thread"] is not threading.main_thread()
    assert handle.done and worker.active == 0


def test_error_becomes_one_line_and_is_logged(qtbot, worker, caplog):
    def boom():
        raise KeyError("missing\nthing")

    errors, results = [], []
    with caplog.at_level(logging.ERROR, logger="deeplab_gui"):
        handle = worker.run_task(boom, on_result=results.append,
                                 on_error=lambda t: errors.append((t, threading.current_thread())))
        with qtbot.waitSignal(handle.finished, timeout=5000):
            pass
    assert results == []
    assert len(errors) == 1 and errors[0][1] is threading.main_thread()
    assert errors[0][0].startswith("KeyError:") and "\n" not in errors[0][0]
    assert any(r.exc_info for r in caplog.records), "traceback must be logged"


def test_result_callback_failure_is_reported_not_raised(qtbot, worker):
    errors = []

    def bad_callback(value):
        raise ValueError("bad " + value)

    handle = worker.run_task(lambda: "x", on_result=bad_callback, on_error=errors.append)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert errors == ["ValueError: bad x"]


def test_progress_and_cancel_keywords(qtbot, worker):
    started = threading.Event()
    release = threading.Event()

    def long_task(n, *, progress, cancel):
        progress(0, n)
        started.set()
        for i in range(n):
            if cancel():
                return "cancelled"
            release.wait(0.01)
            progress(i + 1, n)
        return "complete"

    progress, results = [], []
    handle = worker.run_task(long_task, 10_000, on_progress=lambda d, t: progress.append((d, t)),
                             on_result=results.append)
    qtbot.waitUntil(lambda: len(progress) >= 1, timeout=5000)
    assert started.wait(5)
    handle.cancel()
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert progress[0] == (0, 10_000)
    assert results == []  # a cancelled task's result is dropped
    assert handle.cancelled and handle.done


def test_generator_task_progress_and_return_value(qtbot, worker):
    def gen(n):
        for i in range(n):
            yield (i + 1, n)
        return n * 10

    progress, results = [], []
    handle = worker.run_task(gen, 5, on_progress=lambda d, t: progress.append((d, t)),
                             on_result=results.append)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert results == [50]
    assert progress[-1] == (5, 5)


def test_long_task_does_not_block_ui_timer(qtbot, worker):
    """A QTimer on the UI thread keeps firing while the task runs."""
    stop = threading.Event()
    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()

    def busy(cancel):
        x = 0
        while not stop.is_set() and not cancel():
            x += 1  # pure-Python spin (holds the GIL in bursts, like real work)
        return x

    handle = worker.run_task(busy)
    qtbot.waitUntil(lambda: len(ticks) >= 10, timeout=10000)
    assert not handle.done
    stop.set()
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    timer.stop()


def test_cancel_before_start_finishes_quietly(qtbot):
    w = Worker(max_threads=1)
    gate = threading.Event()
    first = w.run_task(lambda: gate.wait(5))
    ran = []
    second = w.run_task(lambda: ran.append(1), on_result=ran.append)
    second.cancel()
    gate.set()
    qtbot.waitUntil(lambda: first.done and second.done, timeout=5000)
    assert ran == []
    w.wait(5000)


def test_one_line_error_messages():
    from engine import StoreWriteError
    assert one_line_error(StoreWriteError("could not save\n the mask")) == "could not save the mask"
    assert one_line_error(RuntimeError()) == "RuntimeError"
    assert isinstance(TaskHandle(), TaskHandle)


def test_yielded_values_arrive_in_order_on_the_ui_thread_before_the_result(qtbot, worker):
    ui = threading.get_ident()
    got, threads = [], []

    def gen():
        yield (0, 3)              # progress
        yield {"event": 1}        # anything else is a value for the UI
        yield "two"
        return "done"

    def emitting(*, emit):
        emit("a")
        emit(("x", 1, 2))         # a tuple that is not (done, total) is a value too
        return 7

    for fn, expect in ((gen, [{"event": 1}, "two", "done"]), (emitting, ["a", ("x", 1, 2), 7])):
        got.clear()
        h = worker.run_task(fn, on_yielded=lambda v: (got.append(v), threads.append(threading.get_ident())),
                            on_result=got.append)
        with qtbot.waitSignal(h.finished, timeout=5000):
            pass
        assert got == expect
    assert set(threads) == {ui}


def test_quiet_tasks_run_and_cancel_but_do_not_count_as_busy(qtbot, worker):
    busy = []
    worker.busy_changed.connect(busy.append)
    release = threading.Event()

    def waits(*, cancel):
        while not release.wait(0.005) and not cancel():
            pass
        return "stopped" if cancel() else "done"
    h = worker.run_task(waits, quiet=True)
    assert worker.active == 1 and busy == []
    worker.cancel_all()
    with qtbot.waitSignal(h.finished, timeout=5000):
        pass
    assert busy == [] and worker.active == 0


def test_a_lane_runs_its_tasks_one_at_a_time_on_one_thread_higher_priority_first(qtbot, worker):
    gate, order, threads = threading.Event(), [], set()

    def job(name):
        if name == "first":
            gate.wait(5)                     # holds the lane while the others queue
        threads.add(threading.get_ident())
        order.append(name)

    handles = [worker.run_task(job, "first", lane="x")]
    handles.append(worker.run_task(job, "low", lane="x"))
    handles.append(worker.run_task(job, "high", lane="x", priority=1))
    gate.set()
    qtbot.waitUntil(lambda: all(h.done for h in handles), timeout=5000)
    assert order == ["first", "high", "low"] and len(threads) == 1
    later = worker.run_task(job, "again", lane="x")
    qtbot.waitUntil(lambda: later.done, timeout=5000)
    assert len(threads) == 1                 # the lane's thread outlives its tasks (while work keeps coming)


def test_a_task_runs_with_the_torch_threads_it_asks_for_and_the_next_with_the_process_count(qtbot):
    import torch
    before = torch.get_num_threads()          # (the tests run torch on one thread)
    torch.set_num_threads(2)
    w = Worker()
    seen = []
    job = lambda: seen.append(torch.get_num_threads())   # noqa: E731

    def generator():   # its body runs as the worker drains it
        seen.append(torch.get_num_threads())
        yield (1, 1)
    try:
        for fn, kw in ((job, {"threads": 1}), (job, {}), (job, {"threads": 1, "lane": "x"}), (job, {"lane": "x"}),
                       (job, {}), (generator, {"threads": 1})):
            h = w.run_task(fn, **kw)
            qtbot.waitUntil(lambda h=h: h.done, timeout=5000)
        assert seen == [1, 2, 1, 2, 2, 1]
        assert torch.get_num_threads() == 2   # the UI thread's own count is untouched
    finally:
        w.cancel_all()
        w.wait(5000)
        torch.set_num_threads(before)


def test_a_lane_task_runs_the_urgent_tasks_waiting_behind_it_at_its_pauses(qtbot, worker):
    """A long task on a lane calls run_waiting at its pauses: the waiting tasks of priority 1 and up
    run there, on its thread, highest first then in order; others wait for it to end."""
    order, threads, reached, go = [], set(), threading.Event(), threading.Event()

    def long_task():
        threads.add(threading.get_ident())
        order.append("long: first half")
        reached.set()
        assert go.wait(5)
        ran = worker.run_waiting("x", 1)
        order.append(f"long: second half after {ran}")

    def job(name):
        threads.add(threading.get_ident())
        order.append(name)
    handles = [worker.run_task(long_task, lane="x")]
    assert reached.wait(5)
    handles += [worker.run_task(job, "guess", lane="x", priority=0), worker.run_task(job, "click", lane="x", priority=1),
                worker.run_task(job, "urgent", lane="x", priority=2), worker.run_task(job, "next click", lane="x",
                                                                            priority=1)]
    got = []
    handles[2].result.connect(lambda _: got.append("click result"))
    go.set()
    qtbot.waitUntil(lambda: all(h.done for h in handles), timeout=5000)
    assert order == ["long: first half", "urgent", "click", "next click", "long: second half after 3", "guess"]
    assert len(threads) == 1 and got == ["click result"]
    assert worker.run_waiting("x") == 0 and worker.run_waiting("no such lane") == 0


@pytest.mark.skipif(not hasattr(os, "getpriority") or not sys.platform.startswith("linux"),
                    reason="a thread's own nice value is Linux's")
def test_the_background_lane_runs_at_a_lower_priority_and_other_tasks_do_not(qtbot, worker):
    from deeplab_gui.state.tasks import BACKGROUND_LANE, BACKGROUND_NICE
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen = {}

    def job(name):
        import torch
        seen[name] = (os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), threading.get_native_id())
        seen[name + " threads"] = torch.get_num_threads()
        seen[name + " sched"] = os.sched_getscheduler(threading.get_native_id())
    for name, kw in (("background", {"lane": BACKGROUND_LANE}), ("pool", {}), ("lane", {"lane": "x"}),
                     ("again", {"lane": BACKGROUND_LANE})):
        h = worker.run_task(job, name, **kw)
        qtbot.waitUntil(lambda h=h: h.done, timeout=5000)
    assert seen["background"][0] == max(base, BACKGROUND_NICE) == seen["again"][0]
    # The scheduling class stays the process's: an idle-class thread starved while holding the GIL
    # stops every other thread (see BACKGROUND_NICE).
    own = os.sched_getscheduler(threading.get_native_id())
    assert seen["pool sched"] == seen["lane sched"] == seen["background sched"] == own
    assert seen["pool"][0] == base and seen["lane"][0] == base
    assert seen["background threads"] == 1    # background work makes no OpenMP team (engine.threads)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base   # the UI thread's own
    assert seen["pool"][1] != seen["background"][1] and seen["lane"][1] != seen["background"][1]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc to see threads exit")
def test_idle_pool_and_lane_threads_exit_and_take_their_torch_threads_with_them(qtbot):
    # An idle thread keeps its OpenMP team (which slows every other thread's torch work): idle pool
    # and lane threads must exit after their idle time; a later task gets a new thread.
    w = Worker(pool_idle_ms=50, lane_idle_ms=100)
    ids: list[int] = []

    def job():
        ids.append(threading.get_native_id())

    try:
        for lane in (None, "x"):
            h = w.run_task(job, lane=lane)
            qtbot.waitUntil(lambda h=h: h.done, timeout=5000)
            tid = ids[-1]
            assert os.path.isdir(f"/proc/self/task/{tid}")
            qtbot.waitUntil(lambda tid=tid: not os.path.isdir(f"/proc/self/task/{tid}"), timeout=5000)
            again = w.run_task(job, lane=lane)
            qtbot.waitUntil(lambda h=again: h.done, timeout=5000)
            assert os.path.isdir(f"/proc/self/task/{ids[-1]}")
    finally:
        w.cancel_all()
        w.wait(5000)


def test_the_status_text_names_what_runs(qtbot, worker):
    """The status bar names the running tasks, oldest first (quiet ones left out), not a count."""
    gate = threading.Event()
    assert worker.busy_text() == ""
    handles = [worker.run_task(gate.wait, 10, task_name=name) for name in ("click embedding", "prefetch", "prefetch")]
    handles.append(worker.run_task(gate.wait, 10, task_name="Guessed click", quiet=True))
    assert worker.busy_text() == "running: click embedding, prefetch ×2…"
    for name in ("load image", "open folder"):
        handles.append(worker.run_task(gate.wait, 10, task_name=name))
    assert worker.busy_text() == "running: click embedding, prefetch ×2, load image and 1 more…"
    gate.set()
    qtbot.waitUntil(lambda: all(h.done for h in handles), timeout=10_000)
    assert worker.busy_text() == ""


@pytest.mark.parametrize("fails", [False, True])
def test_a_runnable_holds_nothing_once_it_has_run(qtbot, fails, monkeypatch):
    """PySide keeps some finished runnables' Python objects for good (a quarter to a third of them
    under load, once Qt has deleted the C++ side): what one still held stayed with it, so the
    runnable lets go of its handle, task and arguments itself before it says it finished."""
    from deeplab_gui.state.tasks import _Runnable

    class Big:
        pass

    big = Big()
    handle = TaskHandle("t")

    def fn(x):
        if fails:
            raise ValueError("no")
        return x

    runnable = _Runnable(handle, fn, (big,), {}, threads=1)
    runnable.setAutoDelete(False)
    finished_with = []
    handle.finished.connect(lambda r=runnable: finished_with.append(dict(vars(r))))
    monkeypatch.setattr(logging.getLogger("deeplab_gui"), "propagate", False)   # (the failure's log record)
    runnable.run()
    assert finished_with == [{}], "the runnable still held its task when it said it finished"
    assert vars(runnable) == {}


@pytest.mark.parametrize("kind", ["result", "error", "yielded", "lane"])
def test_a_finished_task_lets_go_of_its_handle_and_of_what_its_callbacks_hold(qtbot, worker, kind, monkeypatch):
    """Once finished, the handle and everything its callbacks captured (a live CRF, click candidates)
    can be freed: connected callables are held from the C++ side, out of the cycle collector's sight,
    so a handle kept alive by its own callbacks once kept every task's results for good."""
    import gc
    import weakref
    # The failure's log record (kept by pytest's log capture, not by the app) holds the traceback.
    monkeypatch.setattr(logging.getLogger("deeplab_gui"), "propagate", False)

    class Held:
        pass

    held = Held()

    def fn():
        if kind == "error":
            raise ValueError("no")
        if kind == "yielded":
            yield "item"
        return 1

    keep = {"result": {"on_result": lambda v, held=held: None}, "error": {"on_error": lambda t, held=held: None},
            "yielded": {"on_yielded": lambda v, held=held: None},
            "lane": {"on_result": lambda v, held=held: None, "lane": "test"}}[kind]
    handle = worker.run_task(fn, **keep)
    handle.finished.connect(lambda h=handle, held=held: None)   # callers connect their own too
    done = handle.finished
    with qtbot.waitSignal(done, timeout=5000):
        pass
    del done
    ref_handle, ref_held = weakref.ref(handle), weakref.ref(held)
    del handle, held, keep

    def freed() -> bool:
        gc.collect()
        return ref_handle() is None and ref_held() is None
    # The pool thread lets go of its runnable (which holds the handle) just after it queues
    # ``finished``; under load (the suite's other worker on the same two cores) that has taken over
    # 3 s once, so wait for it: a handle that is never freed still fails.
    qtbot.waitUntil(freed, timeout=10_000)


def test_free_memory_goes_back_only_once_nothing_has_run_for_a_while(qtbot, monkeypatch):
    """engine.allocator keeps freed memory for reuse while the app works; the worker hands it back
    after release_idle_ms with no task in flight, never while one runs."""
    import gc

    import shiboken6

    from deeplab_gui.state import tasks

    # Earlier tests' workers (kept until collected) would hand back through the same patched call.
    for other in [o for o in gc.get_objects() if type(o) is Worker]:
        if shiboken6.isValid(other):
            other._release.stop()
    released = []
    monkeypatch.setattr(tasks, "release_freed_memory", lambda: released.append(threading.current_thread()))
    w = Worker(release_idle_ms=100)
    gate = threading.Event()
    handle = w.run_task(gate.wait, 10)
    qtbot.wait(400)                       # a task in flight: nothing handed back
    assert released == []
    gate.set()
    qtbot.waitUntil(lambda: len(released) == 1, timeout=5000)
    assert released[0] is not threading.main_thread() and handle.done
    qtbot.wait(300)                       # once per quiet spell, not every interval
    assert len(released) == 1
    w.run_task(lambda: None)              # the next quiet spell hands back again
    qtbot.waitUntil(lambda: len(released) == 2, timeout=5000)
    off = Worker(release_idle_ms=0)
    off.run_task(lambda: None)
    qtbot.wait(300)
    assert len(released) == 2
    w.wait(5000)
    off.wait(5000)
