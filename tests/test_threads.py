"""engine.threads: a thread's torch operators on one thread make no OpenMP team, and the count new
threads start from stays the process's."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process: the test process's threads have their own torch state.
_PROBE = textwrap.dedent("""
    import os, threading, torch
    from engine.threads import intraop_threads, own_threads, process_threads
    torch.set_num_threads(2)
    x = torch.randn(512, 512)
    out = {}
    def tasks():   # (a thread that just ended may still be listed: count the new ones)
        return set(os.listdir("/proc/self/task"))
    def work():
        for _ in range(3):
            (x @ x).sum()
            torch.nn.functional.gelu(torch.randn(1_000_000))
    def in_thread(fn):
        t = threading.Thread(target=fn)
        t.start()
        t.join()
    def one():
        before = tasks()
        with intraop_threads(1):
            out["inside"] = torch.get_num_threads()
            work()
        out["one_made"] = len(tasks() - before)
        out["after"] = torch.get_num_threads()
    def two():
        before = tasks()
        work()
        out["two_made"] = len(tasks() - before)
    in_thread(one)
    in_thread(two)
    own_threads(1)
    out["main"] = torch.get_num_threads()
    in_thread(lambda: out.__setitem__("new_thread", torch.get_num_threads()))
    out["process"] = process_threads()
    # A thread that starts while another has set one thread for a moment starts from one; a task
    # that puts the process's count back afterwards (as the app's worker does) does not hand it on.
    in_thread(lambda: torch.set_num_threads(1))
    def task():
        with intraop_threads(1, after=2):
            pass
        out["task_after"] = torch.get_num_threads()
    in_thread(task)
    in_thread(lambda: out.__setitem__("then_new", torch.get_num_threads()))
    print(" ".join(f"{k}={v}" for k, v in sorted(out.items())))
""")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_one_thread_makes_no_team_and_new_threads_keep_the_process_count():
    got = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    out = dict(item.split("=") for item in got)
    assert out["inside"] == "1" and out["after"] == "2"
    assert out["one_made"] == "0"             # no OpenMP thread made for a one-thread block
    assert out["two_made"] == "1"             # the contrast: two threads make a team of one more
    assert out["main"] == "1" and out["new_thread"] == "2" and out["process"] == "2"
    assert out["task_after"] == "2" and out["then_new"] == "2"
