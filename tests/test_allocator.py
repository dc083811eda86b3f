"""engine.allocator: freed large blocks reused instead of fresh pages, and handed back on request."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.allocator import _glibc, keep_freed_memory, release_freed_memory

ROOT = Path(__file__).resolve().parents[1]

# A 64 MiB buffer made and freed three times (the third after a release): the page faults of each.
_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from engine.allocator import keep_freed_memory, release_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    def make():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(16 << 20, np.float32)   # every page written
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    make()
    reused = make()
    released = release_freed_memory()
    print(kept, reused, released, make())
""")


def _probe(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return out.split()


@pytest.mark.skipif(_glibc() is None, reason="glibc's malloc only")
def test_a_freed_large_buffer_is_reused_until_released():
    kept, reused, released, after_release = _probe("keep")
    assert kept == "True" and released == "True"
    assert int(reused) < 50              # the freed block again: no new pages to fault in
    assert int(after_release) > 200      # its pages went back to the system: faulted in anew
    assert int(_probe("default")[1]) > 200   # glibc's default: unmapped on free, fresh pages next time


def test_other_c_libraries_keep_their_own_policy(monkeypatch):
    # macOS, Windows, musl: nothing is changed and nothing is released (checked without touching
    # this process's allocator).
    import engine.allocator as allocator
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert keep_freed_memory() is False and release_freed_memory() is False
