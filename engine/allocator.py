"""The C allocator's large blocks: kept for reuse while the program works, handed back when it rests.

A 12-megapixel photo's buffers are 12-48 MiB each (a mask, its display copy, a float map, a decoded
image). glibc's malloc gives every block above its mmap threshold (at most 32 MiB, lower at first)
fresh pages from the system and unmaps them on free, and it hands the free top of its heaps back
above a trim threshold: the next buffer of the same size is then new pages again, each a page fault
that the kernel fills with zeros. On the 2-core machine a fresh 64 MiB buffer costs about ten times
what writing it costs (4 GB/s against 33-43 GB/s into memory already touched); bench_gui's 12 MP rows
spent tens of milliseconds on it (turning a photo into a pixmap on the UI thread: 33-42 ms before,
5 ms after; its JPEG decode 119-139 → 76-85 ms).

:func:`keep_freed_memory` raises both thresholds, so freed blocks stay in the process for the next
buffer; :func:`release_freed_memory` (``malloc_trim``) hands back every free page, and the app calls
it when it has been idle for a while (``deeplab_gui.state.tasks.Worker``). What the process holds
between the two is at most what it held at its busiest moment since the last release.

Other C libraries (macOS, Windows, musl) keep their own policies: both functions do nothing there.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
import threading

__all__ = ["CUDA_CAPTURE_LOCK", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "empty_cuda_cache", "keep_freed_memory",
           "release_freed_memory"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 256 << 20   # blocks below this come from the heaps (a 12 MP float map is 48 MiB)
TRIM_THRESHOLD = 512 << 20   # free memory a heap keeps at its top before handing it back

_M_TRIM_THRESHOLD = -1       # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version   # glibc's own: musl has mallopt as a stub that does nothing
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Keep freed large blocks in the process for reuse (glibc); True when the allocator took it.
    Safe to call more than once, from any thread."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.info("the C allocator refused the larger thresholds; freed memory goes back at once")
    return ok


def release_freed_memory() -> bool:
    """Hand every free page of the process's heaps back to the system (glibc ``malloc_trim``); True
    when some memory went back. Takes each heap's lock in turn: call it off the UI thread."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


# Torch's CUDA caching allocator asserts that no CUDA graph is being recorded when it empties its cache,
# from whichever thread: the click decoder's recordings (engine.click.graphs) hold this lock, and so does
# emptying the cache (the DeepLab predictor's out-of-memory retry). One recording at a time, too: they
# all use torch's one capture stream.
CUDA_CAPTURE_LOCK = threading.Lock()


def empty_cuda_cache() -> None:
    """``torch.cuda.empty_cache()``, never while a CUDA graph is being recorded."""
    import torch
    with CUDA_CAPTURE_LOCK:
        torch.cuda.empty_cache()
