"""How many CPU threads each of the app's threads gives torch.

torch's CPU operators run on an OpenMP team that belongs to the thread calling them, and GNU OpenMP
keeps that team (its extra threads, asleep) until the calling thread exits. While the process holds
more such threads than there are cores, OpenMP stops spinning at its barriers and every operator of
every team pays for waking its partners: measured on 2 cores, a click's decoder took 72 ms instead of
41 (300 voluntary context switches a click instead of none) while another thread that had once run a
two-thread operator stayed alive, and 31 ms when that thread ran its operators with one thread.

So work that runs beside the click decoder and is not itself waited on (a large photo's full-size
candidate, an edge polish) runs with one thread, and the UI thread, which should run no heavy torch
work at all, keeps one thread for whatever small torch work it does (it never exits: a team made
there would slow every later click).

``torch.set_num_threads`` sets the calling thread's count and also the count that threads not yet
using torch will start from; these helpers put the latter back.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["intraop_threads", "own_threads", "process_threads"]

_process_default: int | None = None   # the count new threads start from, once own_threads changed one


def process_threads() -> int:
    """The count torch's threads start from in this process (what the app gives its workers); read
    it on the thread that set it up (the UI thread, the main thread), not in a worker."""
    import torch   # (torch loads when first needed: the app's window comes up without it)
    return _process_default if _process_default is not None else torch.get_num_threads()


@contextlib.contextmanager
def intraop_threads(n: int, after: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` threads for the calling thread's torch operators, then set its
    count, and the count new threads start from, to ``after`` (default: the thread's count before).
    A worker passes the process's count as ``after``: a thread that started from a count another
    thread had set for a moment must not hand that count on."""
    import torch
    before = torch.get_num_threads()   # (this also fixes the thread's own count from now on)
    after = before if after is None else after
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != after or n != before:
            torch.set_num_threads(after)


def own_threads(n: int) -> None:
    """Give the calling thread ``n`` threads for its torch operators from now on, leaving the count
    that other threads start from as it was."""
    import torch
    global _process_default
    default = process_threads()
    if torch.get_num_threads() == n:
        return
    _process_default = default
    torch.set_num_threads(n)

    def restore() -> None:   # a thread that never runs an operator: it makes no team
        torch.get_num_threads()
        torch.set_num_threads(default)
    helper = threading.Thread(target=restore, name="torch-threads")
    helper.start()
    helper.join()
