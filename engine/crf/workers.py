"""Coarse-grained CPU parallelism for mean-field messages: two single-threaded workers, one hand-off
per iteration.

torch's own intra-op parallelism starts an OpenMP team for every operator (about 30 per mean-field
iteration) and its threads spin while waiting for each other. On a 2-core machine shared with other
work, every one of those barriers can wait a scheduler time slice for a descheduled partner while the
spinning thread holds the other core: measured here, a 500×375 refine went from 0.2 s to 1-5 s under
load. Instead, the messages of one iteration are split into two independent jobs (one per kernel for the
one-column two-class form; the class columns with SPLIT_COLUMNS) that run to completion on two threads whose OpenMP team size is 1; a waiting thread
sleeps instead of spinning, so under load this degrades like any single-threaded program.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

import torch

from ..threads import own_threads

__all__ = ["ENABLED", "SPLIT_COLUMNS", "MIN_POINTS", "use_workers", "run_all"]

# Switch for tests and comparisons; the workers are used only where they can help (see use_workers).
ENABLED = True
# Multi-column messages: split the columns over the workers (off: torch's threads measured faster there).
SPLIT_COLUMNS = False
# Below this many pixels an iteration takes a few milliseconds and the hand-offs would dominate.
MIN_POINTS = 40_000

_lock = threading.Lock()
_workers: "_Workers | None" = None


class _Workers:
    """``count`` daemon threads, each running torch ops with one OpenMP thread."""

    def __init__(self, count: int):
        self.pid = os.getpid()  # a forked child has the object but not the threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        started = threading.Barrier(count + 1)
        for i in range(count):
            threading.Thread(target=self._run, args=(started,), daemon=True, name=f"crf-mf-{i}").start()
        started.wait()

    def _run(self, started: threading.Barrier) -> None:
        # One OpenMP thread for this thread, the count new threads start from left as it was.
        own_threads(1)
        started.wait()
        while True:
            fn, future = self._jobs.get()
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

    def run_all(self, jobs: Sequence[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
        futures = []
        for job in jobs:
            future: Future = Future()
            self._jobs.put((job, future))
            futures.append(future)
        return [f.result() for f in futures]


def use_workers(values: torch.Tensor, jobs: int) -> bool:
    """Whether splitting ``jobs`` independent message jobs over (N, C) ``values`` is worth it."""
    return (ENABLED and jobs > 1 and values.device.type == "cpu" and values.shape[0] >= MIN_POINTS
            and torch.get_num_threads() > 1)


def run_all(jobs: Sequence[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
    """Run independent jobs on the two single-threaded workers (started on first use); results in order."""
    global _workers
    with _lock:
        if _workers is None or _workers.pid != os.getpid():
            _workers = _Workers(2)
    return _workers.run_all(jobs)
