"""CUDA graphs for the click decoder: a click replays a recorded graph instead of launching ~400 kernels.

On a GPU the prompt decoder is launch-bound: its few hundred small kernels cost more in launch overhead
(Python, dispatcher, driver) than in arithmetic, so a click took 4-7 ms on an H200 whatever the model.
A CUDA graph records the kernels of one call once and replays them with a single launch (1.1-1.4 ms a
click on the H200, every model: benchmarks/results/click_cuda.json).

One :class:`DecoderGraphs` serves every predictor of a model on a device (:func:`graphs_for`): the app
makes a predictor per image, and a graph recorded on one image must replay on the next, or nearly every
click (a new number of points, a mask prompt or not) would pay a recording, three times an eager call.
So the graphs read the image's features and prepared decoder work from tensors of the bank's own, into
which a predictor's are copied when it replays after another predictor (a device-to-device copy of a few
tens of MB, microseconds); that copy of one image (about 20-50 MB) is the bank's memory beside the
graphs'. A graph records the decoder alone: its logits and scores, keyed by the prompt's *signature*
(number of points, box or not, mask input or not, multimask), none of which depends on the image or its
size; the masks are made from the logits eagerly (a few kernels). Each replay's outputs are copied out
before the bank's lock is released, so a prediction never sees a later click's.

Recording needs a warm-up call on a side stream first (lazy one-time work such as cached interpolation
taps must not happen during capture). It is recorded in thread-local capture mode: other threads (the
DeepLab model, the CRF) may use the GPU meanwhile. Running out of GPU memory decodes that one click
eagerly; anything else that goes wrong disables the bank's graphs, and every predictor of the model then
decodes eagerly as before, with one warning. At most
``MAX_GRAPHS`` signatures are kept (least recently used first out), in one memory pool.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Sequence

import torch

from ..allocator import CUDA_CAPTURE_LOCK

__all__ = ["DecoderGraphs", "copy_into", "graphs_enabled", "graphs_for", "MAX_GRAPHS"]

log = logging.getLogger(__name__)
MAX_GRAPHS = 24


def graphs_enabled(device: torch.device) -> bool:
    """On CUDA unless ``DEEPLAB_GUI_CUDA_GRAPHS=0``. Verified on an H200 (2026-11-30): replays equal eager
    calls (tests/test_click_graphs.py, which runs where CUDA is) and a click takes 1.1-1.4 ms on every
    model, against 3.5-6.2 ms eagerly (benchmarks/results/click_cuda.json)."""
    return device.type == "cuda" and os.environ.get("DEEPLAB_GUI_CUDA_GRAPHS", "1") != "0"


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


def clone_tree(x: Any) -> Any:
    """``x`` with every tensor in it (dicts, lists, tuples, dataclasses) cloned; anything else kept."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: clone_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone_tree(v) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        new = copy.copy(x)
        for f in dataclasses.fields(x):   # (frozen ones and fields outside __init__ too)
            object.__setattr__(new, f.name, clone_tree(getattr(x, f.name)))
        return new
    return x


class DecoderGraphs:
    """Recorded decoder calls of one model on one device, by prompt signature (see the module docstring)."""

    def __init__(self, device: torch.device, weights: tuple | None = None) -> None:
        self.device = device
        self.weights = weights                   # where the model's weights were when this was made
        self.failed: str | None = None          # why graphs were given up, if they were
        self.recorded = 0                        # graphs recorded so far (tests, benchmarks)
        self._graphs: OrderedDict[Hashable, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = OrderedDict()
        self._pool = None
        self._image: Any = None                  # the bank's copy of an image's tensors, which the graphs read
        self._holder: object | None = None       # whose image is in it (a predictor's token for its embedding)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, fn: Callable[..., Any], image: Any, holder: object,
            inputs: Sequence[torch.Tensor]) -> Any | None:
        """``fn(image, *inputs)`` through the graph for ``key`` (recorded on first use), its outputs
        cloned. ``image``: the image's tensors (features, prepared work) in a structure that is the same
        for every image of the model; ``holder``: an object that stands for them (the same object for
        the same tensors). None when recording failed, now or before, or the GPU's memory ran out: the
        caller then calls ``fn``."""
        with self._lock:
            if self.failed is not None:
                return None
            try:
                if self._image is None or holder is not self._holder:
                    self._holder = None   # (until the copy is whole)
                    if not refill(self._image, image):
                        self._graphs.clear()   # another structure: graphs read the old tensors
                        self._image = None     # (so a copy that fails half way leaves none)
                        self._image = clone_tree(image)
                    self._holder = holder
                hit = self._graphs.get(key)
                if hit is not None:
                    graph, static, out = hit
                    self._graphs.move_to_end(key)
                    for s, x in zip(static, inputs):
                        s.copy_(x)
                    graph.replay()
                    return clone_tree(out)
                return clone_tree(self._record(key, fn, inputs))
            except torch.cuda.OutOfMemoryError:
                # Passing (DeepLab may hold the memory just now): this click decodes eagerly, the
                # graphs stay, and the image is copied in again next time.
                self._graphs.pop(key, None)
                self._holder = None
                log.info("click decoder: out of GPU memory for a graph; this click runs eagerly")
                return None
            except Exception as exc:  # noqa: BLE001 - anything else: fall back to eager calls for good
                self.failed = " ".join(str(exc).split())[:200] or type(exc).__name__
                self._graphs.clear()
                self._image = self._holder = None
                log.warning("click decoder: CUDA graphs disabled (%s); running it eagerly", self.failed)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                return None

    def _record(self, key: Hashable, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> Any:
        static = [x.clone() for x in inputs]
        image = self._image   # bound now, as a graph binds its tensors' addresses when recorded
        graph, out = self._capture(lambda: fn(image, *static))
        self._graphs[key] = (graph, static, out)
        self.recorded += 1
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        graph.replay()   # the recorded run did not compute anything: this one does
        return out

    def _capture(self, call: Callable[[], Any]) -> tuple[Any, Any]:
        """``call``'s kernels recorded: (the graph, its outputs). (Tests on a CPU stand in for this.)"""
        with torch.cuda.device(self.device):
            before = torch.cuda.current_stream()
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(before)
                with torch.cuda.stream(stream):
                    for _ in range(2):   # lazy one-time work (caches, cuBLAS handles) happens here, not in capture
                        call()
                before.wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                # Thread-local: the app's other threads (DeepLab, the CRF) may launch and allocate meanwhile;
                # the lock keeps their emptying of torch's cache (and other recordings) out of it.
                with CUDA_CAPTURE_LOCK, torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                    out = call()
                return graph, out
            finally:
                # A recording that fails in torch.cuda.graph's exit leaves its capture stream current.
                torch.cuda.set_stream(before)


# model -> {device: its graphs}; a bank holds nothing of its model's, so it goes with the model.
_BANKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BANKS_LOCK = threading.Lock()


def graphs_for(model: torch.nn.Module, device: torch.device | str) -> DecoderGraphs:
    """The decoder graphs every predictor of ``model`` on ``device`` shares (made on first use). New ones
    when the model's weights were moved since (recorded graphs read the weights where they were)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())   # "cuda" and "cuda:0": one set
    first = next(model.parameters(), None)
    weights = None if first is None else (first.data_ptr(), first.device, first.dtype)
    with _BANKS_LOCK:
        banks = _BANKS.setdefault(model, {})
        bank = banks.get(str(device))
        if bank is None or bank.weights != weights:
            bank = banks[str(device)] = DecoderGraphs(device, weights)
        return bank
