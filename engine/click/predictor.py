"""ClickPredictor: one image's embedding, then a mask for every click. Numpy in, numpy out.

``set_image`` runs the encoder once (the slow part: seconds on a CPU for SAM ViT-B, a fraction for
MobileSAM); ``predict`` runs only the prompt decoder (milliseconds), so a click, a negative click or a
box re-predicts at once, feeding the previous round's low-resolution logits back as ``mask_input``.
``get_embedding`` / ``set_embedding`` move the encoder's result out and back in (the app caches it on
disk per image), so returning to an image never reruns the encoder. No Qt.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .base import LOW_RES, ClickModel
from .graphs import graphs_enabled, graphs_for

__all__ = ["SPLIT_MASKS_PIXELS", "ClickEmbedding", "ClickPrediction", "ClickPredictor"]

# Above this many image pixels a CPU prediction makes its full-size masks one at a time: the peak is
# then one float mask at the image's size (4 bytes a pixel) plus the K bool masks returned.
SPLIT_MASKS_PIXELS = 4_000_000


class ClickPrediction:
    """``masks`` K×H×W bool at the image's size (or at the ``size`` asked for), ``scores`` K predicted
    IoU, ``low_res_logits`` K×256×256 float32 (the next round's ``mask_input``); K = 3 for
    multimask, else 1. ``full``: when the masks were made at another size, ``full(k)`` makes mask k
    at the image's size, exactly as ``predict`` without ``size`` would have (from the same logits).

    ``settle``: a callable that returns the logits, for a prediction handed back before all of them
    were made (on a CPU the logits over a non-square image's padding, which the masks do not read,
    are made when first asked for: a few milliseconds off a click). :meth:`settle` makes them now
    (the app does so while the person looks at the masks); reading ``low_res_logits`` does too.

    ``make``: with ``masks`` a dict of the masks made so far (by index), a callable that makes mask
    k (``predict(lazy=True)``: only the best-scored one is made before it returns); :meth:`mask`
    reads one, ``masks`` all of them (making what is missing). Thread-safe."""
    __slots__ = ("scores", "full", "_masks", "_make", "_low", "_settle", "_lock", "_mask_lock")

    def __init__(self, masks: np.ndarray | dict[int, np.ndarray], scores: np.ndarray,
                 low_res_logits: np.ndarray | None = None, full: Callable[[int], np.ndarray] | None = None, *,
                 settle: Callable[[], np.ndarray] | None = None, make: Callable[[int], np.ndarray] | None = None
                 ) -> None:
        if (low_res_logits is None) == (settle is None):
            raise ValueError("a prediction needs its low-resolution logits or a way to make them, not both")
        if isinstance(masks, dict) and make is None:
            raise ValueError("a prediction with some of its masks needs a way to make the others")
        self.scores, self.full = scores, full
        self._masks, self._make = masks, make
        self._low, self._settle, self._lock = low_res_logits, settle, threading.Lock()
        self._mask_lock = threading.Lock()

    def mask(self, k: int) -> np.ndarray:
        """Mask ``k`` (H×W bool; negative counts from the end), made now if it is not yet."""
        masks = self._masks
        if not isinstance(masks, dict):
            return masks[k]
        n = len(self.scores)
        if not -n <= k < n:
            raise IndexError(f"mask {k} of {n}")
        k %= n
        got = masks.get(k)
        if got is None:
            with self._mask_lock:   # one thread makes it (a Tab during the settle waits for it, not twice)
                got = masks.get(k)
                if got is None:
                    got = masks[k] = self._make(k)
        return got

    @property
    def masks(self) -> np.ndarray:
        """K×H×W bool."""
        if isinstance(self._masks, dict):
            self._masks = np.stack([self.mask(k) for k in range(len(self.scores))])
        return self._masks

    @property
    def low_res_logits(self) -> np.ndarray:
        with self._lock:
            if self._low is None:
                self._low, self._settle = self._settle(), None
            return self._low

    def settle(self) -> None:
        """Make the low-resolution logits now, if they are not yet."""
        self.low_res_logits  # noqa: B018


@dataclass
class ClickEmbedding:
    """What ``set_image`` computed: the encoder's outputs as float32 numpy arrays (by name), the
    image's (H, W) and the (h, w) it fills of the encoder's input, and the model it belongs to."""
    features: dict[str, np.ndarray]
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model: str

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.features.values())


def _paused(between: Callable[[], object]) -> None:
    """An encoder's pause: ``between()`` runs as a caller's own code would (no autocast from the
    encoder's context; its own result is not the block's output)."""
    with torch.autocast("cpu", enabled=False):
        between()


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an H×W×3 uint8 RGB array, got "
                         f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}".rstrip())
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is empty: {image.shape}")
    return np.ascontiguousarray(image)


class ClickPredictor:
    """See the module docstring. ``device``: where the model runs (default: where its weights are)."""

    def __init__(self, model: ClickModel, device: str | torch.device | None = None) -> None:
        if not isinstance(model, ClickModel):
            raise TypeError(f"model must be a ClickModel (from engine.load_click_model), got {type(model).__name__}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.eval().to(self.device)
        self._features: dict[str, torch.Tensor] | None = None
        self._prepared: object | None = None     # the model's per-image decoder work (ClickModel.prepare)
        self._original: tuple[int, int] | None = None
        # CUDA: decoder calls replay recorded graphs (engine/click/graphs.py), shared by every predictor
        # of this model; ``_holder`` stands for this predictor's current embedding there.
        self.graphs = graphs_for(self.model, self.device) if graphs_enabled(self.device) else None
        self._holder = object()
        self._input: tuple[int, int] | None = None

    @property
    def has_image(self) -> bool:
        return self._features is not None

    def _autocast(self):
        # Half precision for the encoder where the device supports it; the decoder stays float32.
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def set_image(self, image: np.ndarray, between: Callable[[], object] | None = None) -> None:
        """Compute and keep ``image``'s embedding (H×W×3 uint8 RGB).

        ``between`` (on a CPU): called after each of the encoder's blocks (``ClickModel.encoder_steps``),
        in this thread, where other work may run meanwhile: the app decodes a click that came during
        a neighbouring image's encoder run there (a second or more on a CPU, which the click would
        otherwise wait behind). The embedding is the same."""
        img = _check_image(image)
        x, input_size = self.model.preprocess(img)
        hooks = []
        if between is not None and self.device.type == "cpu":
            hooks = [m.register_forward_hook(lambda *_: _paused(between)) for m in self.model.encoder_steps()]
        try:
            with torch.inference_mode(), self._autocast():
                feats = self.model.encode(x.to(self.device))
        finally:
            for hook in hooks:
                hook.remove()
        # Contiguous once per image: the decoder then sees the same memory layout as after set_embedding
        # (and gives the same bits).
        self._install({k: v.float().contiguous() for k, v in feats.items()},
                      (int(img.shape[0]), int(img.shape[1])), (int(input_size[0]), int(input_size[1])))

    def _install(self, features: dict[str, torch.Tensor], original: tuple[int, int], input_size: tuple[int, int]
                 ) -> None:
        with torch.inference_mode():
            prepared = self.model.prepare(features)
        self._features, self._prepared = features, prepared
        self._original, self._input = original, input_size
        self._holder = object()   # new tensors: the graphs' copy of the old ones is not this image's

    def reset_image(self) -> None:
        self._features = self._prepared = self._original = self._input = None
        self._holder = object()

    def get_embedding(self) -> ClickEmbedding:
        if self._features is None:
            raise RuntimeError("no image: call set_image (or set_embedding) first")
        return ClickEmbedding({k: v.cpu().numpy() for k, v in self._features.items()}, self._original,
                              self._input, self.model.name)

    def set_embedding(self, embedding: ClickEmbedding) -> None:
        """Restore what :meth:`get_embedding` returned (for this same model), without the encoder."""
        if embedding.model != self.model.name:
            raise ValueError(f"the embedding was computed by {embedding.model}, not {self.model.name}")
        features = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(self.device)
                    for k, v in embedding.features.items()}
        self._install(features, tuple(int(v) for v in embedding.original_size),
                      tuple(int(v) for v in embedding.input_size))

    predicts_at_size = True   # predict takes ``size`` (editing.click.ClickSession asks for it on large photos)
    predicts_lazily = True    # predict takes ``lazy`` (ClickSession: only the candidate shown first is made at once)

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask: bool = True,
                size: tuple[int, int] | None = None, lazy: bool = False) -> ClickPrediction:
        """Masks for the prompts: ``points`` N×2 (x, y) image pixels with ``labels`` N (1 positive, 0
        negative), ``box`` (x0, y0, x1, y1), ``mask_input`` the previous round's 1×256×256 (or
        256×256) low-resolution logits. At least one point or a box. ``size``: (h, w) to make the
        masks at instead of the image's size (the same logits resized there: a large photo's
        preview); the prediction's ``full`` then makes any of them at the image's size. ``lazy``
        (on a CPU): only the best-scored mask is made before returning, the others when first read
        (``ClickPrediction.mask``): a tool that shows one candidate at a time."""
        if self._features is None:
            raise RuntimeError("no image: call set_image (or set_embedding) first")
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if min(size) < 1:
                raise ValueError(f"size must be a positive (height, width), got {size}")
        m, dev = self.model, self.device
        pts = lbl = bx = mi = None
        if points is not None and len(points):
            p = np.asarray(points, dtype=np.float64)
            if p.ndim != 2 or p.shape[1] != 2 or not np.isfinite(p).all():
                raise ValueError(f"points must be N×2 finite (x, y) pixels, got shape {p.shape}")
            lab = np.asarray(labels if labels is not None else np.ones(len(p)), dtype=np.int64).reshape(-1)
            if lab.shape[0] != p.shape[0] or not np.isin(lab, (0, 1)).all():
                raise ValueError("labels must hold one 1 (positive) or 0 (negative) per point")
            pts = torch.from_numpy(m.transform_coords(p, self._original, self._input)).float()[None].to(dev)
            lbl = torch.from_numpy(lab)[None].to(dev)
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
            if b.shape != (4,) or not np.isfinite(b).all():
                raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
            corners = m.transform_coords(b.reshape(2, 2), self._original, self._input)
            bx = torch.from_numpy(corners.reshape(1, 4)).float().to(dev)
        if pts is None and bx is None:
            raise ValueError("predict needs at least one point or a box")
        if mask_input is not None:
            a = np.asarray(mask_input, dtype=np.float32)
            if a.shape not in ((LOW_RES, LOW_RES), (1, LOW_RES, LOW_RES)):
                raise ValueError(f"mask_input must be 1×{LOW_RES}×{LOW_RES} low-resolution logits, got {a.shape}")
            mi = torch.from_numpy(a.reshape(1, 1, LOW_RES, LOW_RES)).to(dev)
        multimask = bool(multimask)

        out_size = self._original if size is None else size

        # (only models that prepare anything take ``prepared``)
        extra = {} if self._prepared is None else {"prepared": self._prepared}

        with torch.inference_mode():
            out = None
            if self.graphs is not None:
                # The graph decodes (logits and scores, whatever the image's size); masks are made below.
                given = [t for t in (pts, lbl, bx, mi) if t is not None]
                key = (tuple(pts.shape) if pts is not None else None, bx is not None, mi is not None, multimask)

                def replayable(image, *tensors):
                    features, prepared = image
                    it = iter(tensors)
                    pts_, lbl_, bx_, mi_ = (next(it) if t is not None else None for t in (pts, lbl, bx, mi))
                    return m.decode(features, pts_, lbl_, bx_, mi_, multimask,
                                    **({} if prepared is None else {"prepared": prepared}))
                out = self.graphs.run(key, replayable, (self._features, self._prepared), self._holder, given)
            settle = None
            if out is None:
                # The logits the masks read first; the rest (a non-square image's padding) when asked for.
                # (On a CPU: a GPU, bound by kernel launches, makes them all at once.)
                needed = m.needed_low_res(self._input) if self.device.type == "cpu" else None
                raw, iou, rest = m.decode_first(self._features, pts, lbl, bx, mi, multimask, needed=needed, **extra)
                iou = iou[0].float()
                # (lazy on a CPU only: on a GPU each mask made apart is its own launches and sync)
                lazy = lazy and self.device.type == "cpu" and raw.shape[1] > 1
                masks = None if lazy else self._masks(raw, self._input, out_size)
                settle = functools.partial(self._settled, raw, rest)
            else:
                raw, iou = out   # (the graph's outputs copied: the next replay overwrites them)
                iou = iou[0].float()
                masks, low = self._masks(raw, self._input, out_size), self._low(raw)
            # What makes masks later reads the unclamped logits and this image's sizes (the predictor
            # may hold another image when it is called).
            full = make = None
            input_size, original = self._input, self._original
            if size is not None:
                full = lambda k: self._masks(raw[:, k:k + 1], input_size, original)[0].cpu().numpy()   # noqa: E731
            scores = iou.cpu().numpy()
            if masks is None:
                # Lazy: the best-scored mask now, the others when read.
                best = int(np.argmax(scores))
                make = lambda k: self._masks(raw[:, k:k + 1], input_size, out_size)[0].cpu().numpy()   # noqa: E731
                masks = {best: make(best)}
            else:
                masks = masks.cpu().numpy()
            if out is not None:
                return ClickPrediction(masks, scores, low.cpu().numpy(), full, make=make)
            return ClickPrediction(masks, scores, full=full, settle=settle, make=make)

    def _low(self, raw: torch.Tensor) -> torch.Tensor:
        """1×K×256×256 logits → the K×256×256 handed back (clamped where the model does so)."""
        limit = self.model.low_res_limit
        return (raw if limit is None else raw.clamp(-limit, limit))[0].float()

    def _settled(self, raw: torch.Tensor, rest: Callable[[], None] | None) -> np.ndarray:
        with torch.inference_mode():
            if rest is not None:
                rest()
            return self._low(raw).cpu().numpy()

    def _masks(self, raw: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """K×h×w bool masks at ``size`` from 1×K×256×256 unclamped logits of an image whose encoder
        input was ``input_size``."""
        m = self.model
        with torch.inference_mode():
            # A large photo: its float masks one at a time (a 12-megapixel image's three would take
            # 144 MiB at once, a 100-megapixel one's 1.2 GiB), only the bool kept.
            split = size[0] * size[1] > SPLIT_MASKS_PIXELS and raw.device.type == "cpu"
            parts = raw.split(1, dim=1) if split else (raw,)
            return torch.cat([m.postprocess(p, input_size, size)[0] > m.mask_threshold for p in parts])

