"""Start the ranks of a distributed pre-label run on this machine, as ``torchrun --standalone
--nproc_per_node=N -m engine.prelabel ...`` would: what ``deeplab-gui prelabel ... --workers N`` uses.

Each rank is ``python -m engine.prelabel ARGS`` with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE
and MASTER_ADDR/MASTER_PORT (a free port on 127.0.0.1) set, so the results are torchrun's.  Ctrl-C or
SIGTERM to the launcher reaches every rank; when one rank fails the others are stopped; on Linux a
rank also dies with the launcher should the launcher itself be killed (SIGKILL leaves no time to
forward anything), and elsewhere it notices at its next image.
"""
from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

__all__ = ["die_with_parent", "free_port", "launch_local"]

_GRACE_S = 15.0  # how long stopped ranks get to finish their current write before they are killed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent(parent: int | None = None) -> None:
    """In a child process: SIGKILL when its parent dies (Linux). ``parent``: the parent's pid as the
    parent knew it; a child whose parent died before this call (it would never get the signal) exits
    at once."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the rank's own re-parenting check covers it
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def launch_local(args: Sequence[str], workers: int, *, module: str = "engine.prelabel") -> int:
    """Run ``workers`` ranks of ``python -m module ARGS``; returns rank 0's exit status (130 when
    cancelled, the first failing rank's when rank 0 itself succeeded)."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    told: set[int] = set()
    stopping = False

    def stop(signum: int = signal.SIGTERM, frame: Any = None) -> None:
        nonlocal stopping
        stopping = stopping or frame is not None  # a signal to the launcher, not a failed rank
        for p in procs:
            if p.poll() is None and p.pid not in told:  # once: a second signal would cut its clean-up short
                told.add(p.pid)
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rank in range(workers):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(workers), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(workers), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
            procs.append(subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                                          preexec_fn=functools.partial(die_with_parent, os.getpid())
                                          if sys.platform == "linux" else None))
        deadline = None
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if (failed or stopping) and deadline is None:
                stop()
                deadline = time.monotonic() + _GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.returncode for p in procs]
    if stopping:
        if not codes or codes[0] != 130:
            # Rank 0 did not say so itself: killed after the grace period (a loaded machine), or
            # gone before it noticed. The person who pressed Ctrl-C still gets the one line.
            print(f"{module.rsplit('.', 1)[-1]}: cancelled", file=sys.stderr)
        return 130
    if codes and codes[0] != 0:
        return codes[0] if codes[0] > 0 else 1
    return next((c if c > 0 else 1 for c in codes if c != 0), 0)
