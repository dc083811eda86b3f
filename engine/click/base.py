"""What every click-segmentation model offers the predictor: preprocessing, encoder, prompt decoder.

A click model (SAM, MobileSAM, SAM 2.1) is an image encoder run once per image and a light prompt
decoder run per click. :class:`ClickModel` fixes the seams between the family-specific modules and
:class:`~engine.click.predictor.ClickPredictor`, which only ever calls these methods:

- :meth:`ClickModel.preprocess`: H×W×3 uint8 RGB → the encoder's 1×3×S×S input tensor and the size
  the image occupies inside it (``input_size``), exactly as the family's own predictor prepares it;
- :meth:`ClickModel.encode`: that tensor → the embedding, a dict of tensors (SAM: the 64×64 image
  embedding; SAM 2.1: that plus its two high-resolution feature maps);
- :meth:`ClickModel.prepare`: the embedding → whatever the decoder can compute from it before any
  prompt (kept by the predictor with the embedding, never stored: it is derived);
- :meth:`ClickModel.transform_coords`: image-pixel (x, y) points → the decoder's frame;
- :meth:`ClickModel.decode`: embedding + prompts → 1×K×256×256 low-resolution mask logits and 1×K
  predicted IoU, in the family's own order (K = 3 with ``multimask``, else 1);
- :meth:`ClickModel.postprocess`: low-resolution logits → logits at the image's own size;
- :meth:`ClickModel.needed_low_res` and :meth:`ClickModel.decode_first`: the part of the
  low-resolution logits ``postprocess`` reads, made first (the rest, which only the next click's
  mask input reads, when asked for).

Coordinates are (x, y) pixels of the original image; a box is (x0, y0, x1, y1). No Qt.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["LOW_RES", "ClickModel"]

LOW_RES = 256   # side of the decoder's mask logits (and of ``mask_input``)
_BLOCK = re.compile(r"(^|\.)blocks\.\d+$")   # an encoder block: an entry of a ModuleList named blocks


class ClickModel(nn.Module):
    """Base of the click models; subclasses set ``family`` and implement the five methods."""

    family = ""             # "sam" (SAM, MobileSAM) or "sam2" (SAM 2.1)
    image_size = 1024       # the encoder's square input side
    mask_threshold = 0.0    # logits above it are the mask
    # Where set, the low-resolution logits handed back (the next mask_input) are clamped to
    # ±low_res_limit after the full-size masks are made from the unclamped ones (SAM 2.1 does so).
    low_res_limit: float | None = None

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """``image`` (H×W×3 uint8 RGB) → (1×3×S×S float32 encoder input, (h, w) it fills)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image embedding of a preprocessed batch of one."""
        raise NotImplementedError

    def prepare(self, features: dict[str, torch.Tensor]) -> object | None:
        """Prompt-independent decoder work for this embedding, handed back to :meth:`decode` as
        ``prepared`` on every click (None: nothing to prepare). Must not change any result beyond
        float rounding (products associated another way)."""
        return None

    def transform_coords(self, xy: np.ndarray, original_size: tuple[int, int],
                         input_size: tuple[int, int]) -> np.ndarray:
        """N×2 (x, y) image pixels → the decoder's coordinates (float32)."""
        raise NotImplementedError

    def decode(self, features: dict[str, torch.Tensor], points: torch.Tensor | None,
               labels: torch.Tensor | None, box: torch.Tensor | None, mask_input: torch.Tensor | None,
               multimask: bool, prepared: object | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the decoder's frame (points 1×N×2, labels 1×N, box 1×4, mask_input 1×1×256×256)
        → (1×K×256×256 logits, 1×K predicted IoU). ``prepared``: what :meth:`prepare` returned for
        these ``features`` (or None: the same result, computed from scratch)."""
        raise NotImplementedError

    def postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
        """1×K×256×256 logits → 1×K×H×W logits at the original image size."""
        raise NotImplementedError

    def encoder_steps(self) -> list[nn.Module]:
        """The image encoder's blocks, in order (an entry of any ``blocks`` list in ``image_encoder``:
        SAM's ViT, MobileSAM's TinyViT stages, SAM 2.1's Hiera trunk): an encoder run may pause after
        each (see :meth:`ClickPredictor.set_image`'s ``between``)."""
        encoder = getattr(self, "image_encoder", None)
        return [] if encoder is None else [m for name, m in encoder.named_modules() if _BLOCK.search(name)]

    def needed_low_res(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """The top-left (rows, columns) of the low-resolution logits that :meth:`postprocess` reads
        for an image filling ``input_size`` of the encoder's input (all of them by default)."""
        return LOW_RES, LOW_RES

    def decode_first(self, features: dict[str, torch.Tensor], points: torch.Tensor | None,
                     labels: torch.Tensor | None, box: torch.Tensor | None, mask_input: torch.Tensor | None,
                     multimask: bool, prepared: object | None = None, *, needed: tuple[int, int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, Callable[[], None] | None]:
        """:meth:`decode`, for a caller that reads only the logits' top-left ``needed`` = (rows,
        columns) at once: a model may make those first and return, third, a callable that writes
        the rest in place (None: the logits are whole). The values are :meth:`decode`'s."""
        extra = {} if prepared is None else {"prepared": prepared}   # (a model that prepares nothing may not take it)
        raw, iou = self.decode(features, points, labels, box, mask_input, multimask, **extra)
        return raw, iou, None
