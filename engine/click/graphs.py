"""CUDA graphs for the click decoder: a click replays a recorded graph instead of launching ~400 kernels.

On a GPU the prompt decoder is launch-bound: its few hundred small kernels cost more in launch overhead
(Python, dispatcher, driver) than in arithmetic, so a click took 4-7 ms on an H200 whatever the model.
A CUDA graph records the kernels of one call once and replays them with a single launch.

A graph is recorded per *signature* (number of points, box or not, mask input or not, multimask, input and
image sizes), since a graph's shapes are fixed. Its inputs (prompt tensors) are copied into the recorded
ones before each replay; the image's features stay in the same tensors for every image of a model
(:func:`copy_into` refills them in place on ``set_image``), so a signature recorded on one image replays on
the next. The outputs are the graph's own tensors, valid until the next replay: callers copy them out
(the predictor turns them into numpy at once).

Recording needs a warm-up call on a side stream first (lazy one-time work such as cached interpolation
taps must not happen during capture). Anything that goes wrong while recording disables graphs for that
predictor, which then runs eagerly as before, with one warning. At most ``MAX_GRAPHS`` signatures are
kept (least recently used first out); each holds its own small memory pool.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Hashable, Sequence

import torch

__all__ = ["DecoderGraphs", "copy_into", "graphs_enabled", "MAX_GRAPHS"]

log = logging.getLogger(__name__)
MAX_GRAPHS = 24


def graphs_enabled(device: torch.device) -> bool:
    """CUDA only, and for now only with ``DEEPLAB_GUI_CUDA_GRAPHS=1``: the first GPU run found a recording
    stopped by a hidden device sync (SAM's boolean-mask point embedding, since replaced) and has not yet
    confirmed replays equal eager calls; tests/test_click_graphs.py checks that where CUDA is."""
    return device.type == "cuda" and os.environ.get("DEEPLAB_GUI_CUDA_GRAPHS", "0") == "1"


def copy_into(old: Any, new: Any) -> bool:
    """Copy ``new``'s tensors into ``old``'s (same structure, shapes and dtypes) in place; True when done.
    False (``old`` untouched where it matters) when the structures differ: the caller then replaces it."""
    if isinstance(old, torch.Tensor):
        if not isinstance(new, torch.Tensor) or old.shape != new.shape or old.dtype != new.dtype \
                or old.device != new.device:
            return False
        old.copy_(new)
        return True
    if isinstance(old, dict):
        return isinstance(new, dict) and old.keys() == new.keys() and all(copy_into(old[k], new[k]) for k in old)
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple)) and len(old) == len(new) and \
            all(copy_into(a, b) for a, b in zip(old, new))
    if dataclasses.is_dataclass(old) and not isinstance(old, type):
        return type(old) is type(new) and all(copy_into(getattr(old, f.name), getattr(new, f.name))
                                              for f in dataclasses.fields(old))
    return old == new


def _check_same(old: Any, new: Any) -> bool:
    """Whether ``copy_into(old, new)`` would succeed, without copying anything (so a mismatch found half
    way never leaves ``old`` half overwritten)."""
    if isinstance(old, torch.Tensor):
        return isinstance(new, torch.Tensor) and old.shape == new.shape and old.dtype == new.dtype \
            and old.device == new.device
    if isinstance(old, dict):
        return isinstance(new, dict) and old.keys() == new.keys() and all(_check_same(old[k], new[k]) for k in old)
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple)) and len(old) == len(new) and \
            all(_check_same(a, b) for a, b in zip(old, new))
    if dataclasses.is_dataclass(old) and not isinstance(old, type):
        return type(old) is type(new) and all(_check_same(getattr(old, f.name), getattr(new, f.name))
                                              for f in dataclasses.fields(old))
    return old == new


def refill(old: Any, new: Any) -> bool:
    """:func:`copy_into` only when every part matches; False (nothing copied) otherwise.  Runs under
    inference mode: the features are inference tensors, which refuse in-place updates outside it."""
    if old is None or not _check_same(old, new):
        return False
    with torch.inference_mode():
        return copy_into(old, new)


class DecoderGraphs:
    """Recorded decoder calls by signature (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.failed: str | None = None          # why graphs were given up, if they were
        self._graphs: OrderedDict[Hashable, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = OrderedDict()
        self._pool = None

    def clear(self) -> None:
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> Any | None:
        """``fn(*inputs)`` through the graph for ``key`` (recorded on first use). None when graphs are off
        or recording failed: the caller then calls ``fn`` itself."""
        if self.failed is not None:
            return None
        hit = self._graphs.get(key)
        if hit is not None:
            graph, static, out = hit
            self._graphs.move_to_end(key)
            for s, x in zip(static, inputs):
                s.copy_(x)
            graph.replay()
            return out
        try:
            return self._record(key, fn, inputs)
        except Exception as exc:  # noqa: BLE001 - anything: fall back to eager calls for good
            self.failed = " ".join(str(exc).split())[:200] or type(exc).__name__
            self._graphs.clear()
            log.warning("click decoder: CUDA graphs disabled (%s); running it eagerly", self.failed)
            torch.cuda.synchronize(self.device)
            return None

    def _record(self, key: Hashable, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> Any:
        static = [x.clone() for x in inputs]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):   # lazy one-time work (caches, cuBLAS handles) happens here, not in capture
                fn(*static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn(*static)
        self._graphs[key] = (graph, static, out)
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        graph.replay()   # the recorded run did not compute anything: this one does
        return out
