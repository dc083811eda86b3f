"""The Predictor: numpy image in, per-pixel class probabilities (or labels) out, at the image's size.

It owns everything around the network (segment-anything's ``SamPredictor`` split): reading and
normalising the image, choosing the inference size, device placement, mixed precision, test-time
augmentation, softmax, upsampling back to full size, and recovery from CUDA out-of-memory.

Inference size
    When ``model.meta.preprocessing.resize_short`` is set (torchvision weights: 520) the shorter side is
    resized to it, as the weights were evaluated; otherwise the image keeps its size.  Either way the
    longer side is then capped at ``max_side`` (default 1024).  The network runs at that size and the
    probabilities are bilinearly upsampled (align_corners=False) to the input size.

Sliding windows
    Weights evaluated on overlapping crops (``preprocessing.sliding_window`` = crop h, w and stride h, w:
    mmsegmentation's Cityscapes models) run the same way here: windows at each stride step, the last
    shifted back to end at the border, logits averaged where windows overlap.  Activations are then
    bounded by one window, so the cap on the longer side becomes max(``max_side``, twice the window's
    longer side): a 2048×1024 street scene runs at its own size, as the zoo evaluated it.

Small images
    The network never sees a side shorter than ``MIN_NETWORK_SIDE`` (16) pixels: a smaller inference
    size is enlarged (aspect kept, even past ``max_side`` on the long side), since some backbones fail
    on inputs of a few pixels.  So a 20×20 thumbnail or a 5×300 banner is predicted and its result
    comes back at its own size.  Images with a side under ``MIN_IMAGE_SIDE`` (4) pixels (a 1×500 strip,
    a 3×3 icon) cannot be segmented meaningfully and raise :class:`ImageTooSmallError` (a
    ``ValueError``) naming the file, as do images longer than ``MAX_ASPECT_RATIO`` (4096) times their
    width, whose enlarged network input would pass 1 Mi pixels.

Memory (README-ready)
    Predicting an H×W image with C classes needs, beyond the input image itself:

    * the result: ``C×H×W×4`` bytes for :meth:`Predictor.predict` (float32 probabilities), or
      ``H×W`` bytes for :meth:`Predictor.predict_labels` (uint8 labels; full-size probabilities are
      never materialised, so prefer it for big images and batch jobs), or for
      :meth:`Predictor.predict_with_probs` (what pre-labelling into the annotation store calls) the
      labels plus probabilities on the cache's capped grid, ``C×g×4`` bytes with
      ``g = min(H×W, probs cap)`` (the cap is 4 Mi pixels, see :mod:`engine.probgrid`);
    * the network's activations at the inference size, at most ``max_side²`` pixels (times the
      largest TTA scale squared); this is the model-dependent term that ``max_side`` bounds;
    * low-resolution probabilities: 3 × ``C×h×w×4`` bytes at the inference size h×w, and the
      network input (resized uint8 plus three float32 temporaries, ``39×h×w`` bytes);
    * the upsampling workspace: full-size results are produced in row bands of at most
      ``tile_elements`` values (default 4 Mi), using at most 4 band buffers = 64 MiB by default.

    So a 12000×9000 photo with 21 classes at the default ``max_side`` needs 9.1 GB + ~0.3 GB +
    activations for ``predict`` (the result dominates), ~0.4 GB + activations for ``predict_labels``,
    and ~0.8 GB + activations for ``predict_with_probs``.  Storing that result adds the float16
    copy of the grid and its compressed file (each at most ``C×g×2`` bytes) and the mask's PNG
    encoding (about 2×H×W bytes).  :meth:`Predictor.memory_bound` computes the non-activation part for
    a given size.

    A batch of N same-size images (:meth:`Predictor.predict_batch_with_probs`) needs N times each
    per-image term except the upsampling workspace (the images are upsampled one after the other): N
    results, N× the activations, N× the low-resolution probabilities and N× the network input (the
    images are resized one by one and only their inference-size copies are stacked, so a batch of huge
    photos never exists as one full-size array).  ``memory_bound(..., batch=N)`` computes it.  Out of
    memory on a batch, the batch is predicted one image at a time (each with the fallbacks below), and
    later batches are split in halves.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import one_line
from .imageio import read_image, to_rgb_uint8
from .predict_batch import predict_batch as _predict_batch
from .predict_many import predict_many as _predict_many
from .probgrid import DEFAULT_TILE_ELEMENTS, argmax0_u8, probs_grid, resize_probs, upsample_bands

__all__ = ["Predictor", "Prediction", "PredictionError", "ImageTooSmallError", "resolve_device",
           "DEFAULT_MAX_SIDE", "DEFAULT_TILE_ELEMENTS", "MIN_IMAGE_SIDE", "MIN_NETWORK_SIDE",
           "MAX_ASPECT_RATIO"]

DEFAULT_MAX_SIDE = 1024
# Below this many pixels on a side an image holds nothing to segment (1×500 strips, 3×3 icons).
MIN_IMAGE_SIDE = 4
# Smallest side the network is given: some backbones fail below 3 pixels, and at output stride 16
# this is one feature cell.
MIN_NETWORK_SIDE = 16
# Longer side over shorter side beyond which an image is refused: such a strip holds nothing to
# segment, and its network input (short side enlarged to MIN_NETWORK_SIDE) would pass 1 Mi pixels.
MAX_ASPECT_RATIO = 4096
_OOM_ERRORS: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


class PredictionError(RuntimeError):
    """Prediction failed even after the out-of-memory fallbacks; the message is one line."""


class ImageTooSmallError(ValueError):
    """An image too small or too thin to segment; ``str(err)`` is one line, ``"<path>: <reason>"``
    when the image came from a file."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


@dataclass(frozen=True)
class Prediction:
    """What pre-labelling keeps of one image: its labels at full size and its probabilities on the
    annotation store's capped grid (:func:`engine.probgrid.probs_grid`)."""

    labels: np.ndarray  # H×W uint8, equal to Predictor.predict_labels
    probs: np.ndarray   # C×h×w float32 with h×w <= the cap; the image's own size when it is small enough

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA if available, then Apple MPS, then CPU; otherwise checked as given."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {dev} requested but CUDA is not available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {dev} requested but MPS is not available")
    return dev


def _is_oom(exc: BaseException) -> bool:
    # MPS and some CUDA paths raise a plain RuntimeError whose text says so.
    return isinstance(exc, _OOM_ERRORS) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


class Predictor:
    """Runs a segmentation model on images given as numpy arrays or file paths.

    ``model``: an ``nn.Module`` with ``model.meta`` (:class:`engine.meta.ModelMeta`) whose forward maps
    N×3×h×w normalised input to N×C×h×w logits.  ``device``: ``None``/"auto" picks CUDA, MPS, CPU.
    ``max_side``: cap on the longer side at inference (see module docstring for the memory bound).
    ``tta_flip``/``tta_scales``: average probabilities over horizontal flips and scales of the
    inference size.  ``amp``: fp16 autocast on CUDA (also channels_last and cudnn.benchmark there).
    """

    is_oom = staticmethod(_is_oom)   # for engine.predict_batch, which must not import this module

    def __init__(self, model: nn.Module, device: str | torch.device | None = None, *,
                 max_side: int | None = DEFAULT_MAX_SIDE, tta_flip: bool = False,
                 tta_scales: Sequence[float] = (1.0,), amp: bool = True,
                 tile_elements: int = DEFAULT_TILE_ELEMENTS) -> None:
        meta = getattr(model, "meta", None)
        if meta is None or not hasattr(meta, "preprocessing"):
            raise ValueError("model has no .meta (engine.meta.ModelMeta); build it with engine.build_model "
                             "or engine.load_model")
        if max_side is not None and max_side < 16:
            raise ValueError(f"max_side must be at least 16, not {max_side}")
        scales = tuple(float(s) for s in tta_scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"tta_scales must be positive, got {tta_scales!r}")
        self.meta = meta
        self.preprocessing = meta.preprocessing
        self.max_side = max_side
        self.tta_flip = bool(tta_flip)
        self.tta_scales = scales
        self.amp = bool(amp)
        self._amp_off = False   # set once half precision overflowed for this model (see _forward)
        self.max_batch: int | None = None  # halved after a batch ran out of memory (engine.predict_batch)
        self.tile_elements = max(1024, int(tile_elements))
        self.model = model.eval()
        self.device = torch.device("cpu")
        self._place(resolve_device(device))

    # ------------------------------------------------------------------ setup
    def _place(self, device: torch.device) -> None:
        self.device = device
        self.model.to(device)
        if device.type == "cuda":
            # NHWC convolutions are what tensor cores want under fp16; benchmark picks the fastest kernels.
            self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        pp = self.preprocessing
        order = [2, 1, 0] if pp.channel_order == "BGR" else [0, 1, 2]
        self._order = torch.tensor(order, device=device)
        self._mean = torch.tensor(pp.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(pp.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    @property
    def num_classes(self) -> int:
        return int(self.meta.num_classes)

    def inference_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) the network runs at for an input of height×width (before TTA scales)."""
        s = 1.0
        if self.preprocessing.resize_short:
            s = self.preprocessing.resize_short / min(height, width)
        cap = self.max_side
        sw = self.preprocessing.sliding_window
        if cap is not None and sw is not None:  # the network sees one window at a time: a wider cap costs
            cap = max(cap, 2 * max(sw[0], sw[1]))  # no activation memory (Cityscapes: 2048x1024 as evaluated)
        if cap is not None and max(height, width) * s > cap:
            s = cap / max(height, width)
        if min(height, width) * s < MIN_NETWORK_SIDE:  # small or thin: enlarge (see module docstring)
            s = MIN_NETWORK_SIDE / min(height, width)
            h, w = math.ceil(height * s - 1e-9), math.ceil(width * s - 1e-9)
            return max(MIN_NETWORK_SIDE, h), max(MIN_NETWORK_SIDE, w)
        return max(1, round(height * s)), max(1, round(width * s))

    @staticmethod
    def check_image_size(height: int, width: int, path: str | os.PathLike | None = None) -> None:
        """Raise :class:`ImageTooSmallError` (naming ``path`` when given) for an image that cannot be
        segmented: a side under ``MIN_IMAGE_SIDE`` pixels, or an aspect ratio above ``MAX_ASPECT_RATIO``
        (its short side enlarged to ``MIN_NETWORK_SIDE``, the network input would pass 1 Mi pixels)."""
        if min(height, width) < MIN_IMAGE_SIDE:
            raise ImageTooSmallError(f"image is {width}x{height} pixels, too small to segment (each side "
                                     f"needs at least {MIN_IMAGE_SIDE})", path)
        if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
            raise ImageTooSmallError(f"image is {width}x{height} pixels, too thin to segment (aspect ratio "
                                     f"above {MAX_ASPECT_RATIO}:1)", path)

    def memory_bound(self, height: int, width: int, *, labels: bool = False,
                     cache_pixels: int | None = None, batch: int = 1) -> int:
        """Bytes needed beyond the input image and the network's activations (see module docstring).

        Includes the result (C×H×W float32; H×W uint8 when ``labels``; with ``cache_pixels``, what
        :meth:`predict_with_probs` returns for that cap: H×W uint8 plus C×min(H×W, cap) float32), three
        low-resolution probability buffers, the resized input and the upsampling workspace.  ``batch``:
        N same-size images at once (:meth:`predict_batch_with_probs`), N times all but the workspace.
        """
        c = self.num_classes
        h, w = self.inference_size(height, width)
        pixels = h * w * max(self.tta_scales) ** 2
        if cache_pixels is not None:
            gh, gw = probs_grid(height, width, cache_pixels)
            result = height * width + c * gh * gw * 4
        else:
            result = height * width if labels else c * height * width * 4
        lowres = int(3 * c * pixels * 4)            # accumulator, current scale, flipped pass
        network_input = int(pixels * 3 * (1 + 3 * 4))  # resized uint8 + three float32 temporaries
        workspace = 4 * self.tile_elements * 4 + height * 24
        return max(1, batch) * (result + lowres + network_input) + workspace

    # ------------------------------------------------------------------ public API
    def predict(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """Class probabilities for ``image`` -> C×H×W float32, summing to 1 over C at every pixel.

        ``image``: H×W×3 uint8 RGB (or any form :func:`engine.imageio.to_rgb_uint8` accepts), or a
        path read with :func:`engine.imageio.read_image`.  H×W is the image's own size.
        """
        rgb = self._as_rgb(image)
        low = self._lowres_probs(rgb)
        height, width = rgb.shape[:2]
        c, h, w = low.shape
        if (h, w) == (height, width):
            return low.numpy()
        out = np.empty((c, height, width), dtype=np.float32)
        for y0, band in self._upsampled_bands(low, height, width):
            out[:, y0:y0 + band.shape[1]] = band.numpy()
        return out

    def predict_labels(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """Most likely class per pixel -> H×W uint8, equal to ``predict(image).argmax(0)``.

        Works band by band, so memory stays at H×W bytes plus the bounded workspace whatever the size.
        """
        rgb = self._as_rgb(image)
        return self._labels(self._lowres_probs(rgb), *rgb.shape[:2])

    def predict_with_probs(self, image: np.ndarray | str | os.PathLike, *,
                           max_pixels: int | None = None) -> Prediction:
        """Labels at full size plus probabilities on a grid of at most ``max_pixels`` pixels.

        What pre-labelling into the annotation store keeps: ``labels`` equal :meth:`predict_labels`;
        ``probs`` (C×h×w float32, summing to 1) are :meth:`predict`'s probabilities at
        :func:`engine.probgrid.probs_grid` of the image's size (``max_pixels`` None: the store's cap),
        i.e. exactly :meth:`predict` for an image within the cap.  Full-size probabilities never exist.
        """
        rgb = self._as_rgb(image)
        low = self._lowres_probs(rgb)
        height, width = rgb.shape[:2]
        del rgb  # the caller's image may go while the grid is computed
        return self._prediction(low, height, width, max_pixels)

    def predict_batch_with_probs(self, images: Sequence[np.ndarray], *,
                                 max_pixels: int | None = None) -> list[Prediction]:
        """:meth:`predict_with_probs` of several images of one size, with one network call for them all.

        ``images``: H×W×3 uint8 arrays (or any form :meth:`predict_with_probs` takes), all of the same
        H×W (callers group them; a mixed list raises ``ValueError``).  Returns one :class:`Prediction`
        per image, in order, equal (within float rounding) to :meth:`predict_with_probs` of each.  The
        inputs are stacked at the inference size (N×3×h×w; channels_last and fp16 on CUDA), so a GPU
        is kept busy by small images; half-precision overflow is checked for the batch as a whole.  Out
        of memory, the batch is predicted one image at a time.  Memory: N times the per-image bound
        (module docstring, ``memory_bound(..., batch=N)``).
        """
        return _predict_batch(self, images, max_pixels)

    def predict_many(self, images: Iterable[Any], *, progress: Callable[[int, int | None], Any] | None = None,
                     cancel: Callable[[], bool] | Any = None, labels: bool = False, prediction: bool = False,
                     ) -> Iterator[tuple[Any, Any]]:
        """Predict a sequence of images/paths, yielding ``(key, result_or_error)`` per item, in order.

        ``key`` is the path (as given) for path items, the index for arrays.  ``result`` is what
        :meth:`predict` (:meth:`predict_labels` when ``labels``, :meth:`predict_with_probs` when
        ``prediction``) returns; a failing item yields its exception instead
        (:class:`engine.imageio.ImageReadError`, :class:`ImageTooSmallError`, :class:`PredictionError`,
        ...) and the rest go on.  ``progress(done, total)`` is called after each item (total None when the
        iterable has no length).  ``cancel``: a callable returning True, or a ``threading.Event``;
        checked before each item, the generator simply stops.  The next file is read on a helper
        thread while the current one runs, so disk and GPU overlap.
        """
        return _predict_many(self, images, progress=progress, cancel=cancel, labels=labels, prediction=prediction)

    # ------------------------------------------------------------------ internals
    def _as_rgb(self, image: Any) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            rgb = read_image(image)
            self.check_image_size(*rgb.shape[:2], path=image)
        else:
            rgb = to_rgb_uint8(image)
            self.check_image_size(*rgb.shape[:2])
        return rgb

    def _prediction(self, low: torch.Tensor, height: int, width: int, max_pixels: int | None) -> Prediction:
        """Labels at height×width and probabilities on the capped grid from C×h×w probabilities."""
        labels = self._labels(low, height, width)
        grid = probs_grid(height, width, max_pixels)
        probs = low.numpy() if tuple(low.shape[1:]) == grid else resize_probs(low, grid, self.tile_elements)
        return Prediction(labels, probs)

    def _labels(self, low: torch.Tensor, height: int, width: int) -> np.ndarray:
        if low.shape[0] > 255:
            raise ValueError(f"{low.shape[0]} classes do not fit a uint8 label map beside void (255)")
        out = np.empty((height, width), dtype=np.uint8)
        if low.shape[1:] == (height, width):
            argmax0_u8(low.numpy(), out)
            return out
        for y0, band in self._upsampled_bands(low, height, width):
            argmax0_u8(band.numpy(), out[y0:y0 + band.shape[1]])
        return out

    def _lowres_probs(self, rgb: np.ndarray) -> torch.Tensor:
        """C×h×w float32 CPU probabilities at the inference size, with the OOM fallbacks."""
        height, width = rgb.shape[:2]
        size = self.inference_size(height, width)
        try:
            return self._run(rgb, size)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            # Keep only the text: the exception's traceback pins the failed attempt's GPU tensors.
            first = one_line(exc, limit=120)
        self._free_cache()
        smaller = (max(MIN_IMAGE_SIDE, size[0] // 2), max(MIN_IMAGE_SIDE, size[1] // 2))
        warnings.warn(f"out of memory on {self.device} at {size[1]}x{size[0]}; retrying at "
                      f"{smaller[1]}x{smaller[0]}", RuntimeWarning, stacklevel=3)
        try:
            return self._run(rgb, smaller)
        except Exception as exc:
            if not _is_oom(exc):
                raise
        self._free_cache()
        warnings.warn(f"out of memory on {self.device} again; continuing on the CPU", RuntimeWarning, stacklevel=3)
        self._place(torch.device("cpu"))
        try:
            return self._run(rgb, size)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            raise PredictionError(f"out of memory even on the CPU at {size[1]}x{size[0]} "
                                  f"(lower max_side; first error: {first})") from None

    def _free_cache(self) -> None:
        if self.device.type == "cuda":
            from .allocator import empty_cuda_cache
            empty_cuda_cache()   # (not while a click's decoder graph is being recorded)

    def _run(self, rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """C×h×w float32 CPU probabilities of one image at the inference size ``size``."""
        return self._run_many([rgb], size)[0]

    @staticmethod
    def _u8_view(rgb: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 viewed as 1×3×H×W (channels_last, no copy)."""
        if rgb.flags.writeable:
            src = torch.from_numpy(rgb)
        else:
            # Pillow hands out read-only arrays; nothing here writes to the input, so torch's warning
            # about it is noise (a copy would double the memory of a huge image).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not writable.*")
                src = torch.from_numpy(rgb)
        return src.permute(2, 0, 1).unsqueeze(0)

    @torch.inference_mode()
    def _run_many(self, rgbs: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """N×C×h×w float32 CPU probabilities of N same-size images, one network call per TTA pass.

        Each image is resized in uint8 on the CPU on its own, so a huge image never exists as float and
        only the inference-size copies are stacked.
        """
        srcs = [self._u8_view(rgb) for rgb in rgbs]
        h, w = size
        acc: torch.Tensor | None = None
        n = 0
        for s in self.tta_scales:
            ss = (max(MIN_IMAGE_SIDE, round(h * s)), max(MIN_IMAGE_SIDE, round(w * s)))
            parts = [self._resize_u8(src, ss) for src in srcs]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            del parts
            probs = self._forward(x)
            if self.tta_flip:
                probs = probs + self._forward(x.flip(-1)).flip(-1)
                probs = probs / 2
            if ss != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            acc = probs if acc is None else acc + probs
            n += 1
            del x, probs
        assert acc is not None
        acc = acc / n
        return acc.to("cpu", torch.float32).contiguous()

    @staticmethod
    def _resize_u8(src: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(src.shape[-2:]) == size:
            return src
        # antialias: a plain bilinear downscale of a 12000-px photo to 1024 px would alias badly.
        return F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _forward(self, x_u8: torch.Tensor) -> torch.Tensor:
        """N×3×h×w uint8 (CPU) -> N×C×h×w float32 probabilities on the device."""
        dev = self.device
        x = x_u8.to(dev, non_blocking=True).float()
        x = x.index_select(1, self._order)
        x = (x * self.preprocessing.scale - self._mean) / self._std
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        use_amp = self._amp_enabled()
        logits = self._network(x, use_amp)
        if use_amp and not bool(torch.isfinite(logits).all()):
            # fp16 tops out at 65504: a model whose activations grow past it (seen with a ResNet-101 at
            # random weights; possible with odd fine-tunes) gives inf/NaN, i.e. garbage labels.  Redo this
            # image (or batch) in float32 and keep this model in float32 from now on.
            self._amp_off = True
            warnings.warn(f"half precision overflowed on {dev} for this model; running it in float32 from now on",
                          RuntimeWarning, stacklevel=4)
            logits = self._network(x, False)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.float().softmax(1)

    def _amp_enabled(self) -> bool:
        return self.amp and self.device.type == "cuda" and not self._amp_off

    def _network(self, x: torch.Tensor, use_amp: bool) -> torch.Tensor:
        """Logits for the whole input, or averaged over overlapping windows where the weights were evaluated
        so (``preprocessing.sliding_window``, as mmsegmentation's ``slide`` mode: a window at each stride
        step, the last one shifted back to end at the border, logits summed and divided by the count)."""
        sw = self.preprocessing.sliding_window
        h, w = x.shape[-2:]
        if sw is None or (h <= sw[0] and w <= sw[1]):
            return self._logits(x, use_amp)
        crop_h, crop_w, stride_h, stride_w = sw
        rows = max(h - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(w - crop_w + stride_w - 1, 0) // stride_w + 1
        total: torch.Tensor | None = None
        count = torch.zeros((1, 1, h, w), device=x.device)
        for r in range(rows):
            for c in range(cols):
                y1, x1 = r * stride_h, c * stride_w
                y2, x2 = min(y1 + crop_h, h), min(x1 + crop_w, w)
                y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
                part = self._logits(x[:, :, y1:y2, x1:x2], use_amp).float()
                if total is None:
                    total = torch.zeros((part.shape[0], part.shape[1], h, w), device=x.device)
                total[:, :, y1:y2, x1:x2] += part
                count[:, :, y1:y2, x1:x2] += 1
                del part
        assert total is not None
        return total / count

    def _logits(self, x: torch.Tensor, use_amp: bool) -> torch.Tensor:
        ctx = torch.autocast(self.device.type, dtype=torch.float16) if use_amp else contextlib.nullcontext()
        with ctx:
            logits = self.model(x)
        if isinstance(logits, dict):  # torchvision-style models return {"out": ...}
            logits = logits["out"]
        elif isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits

    def _upsampled_bands(self, low: torch.Tensor, height: int, width: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Bilinear (align_corners=False) upsampling of C×h×w to C×height×width in row bands of about
        ``tile_elements`` values: :func:`engine.probgrid.upsample_bands`."""
        return upsample_bands(low, height, width, self.tile_elements)
