"""``Predictor.predict_batch_with_probs``: several images of one size through the network at once.

Apart from the Predictor so that it stays the single-image story; here are only the checks, the split
into chunks and the out-of-memory fallback.  A batch is one network call per TTA pass on the stacked
inference-size inputs; everything before (reading, resizing) and after (labels, the capped grid) is
the single-image code, run per image, so each result equals ``predict_with_probs`` of its image.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from .errors import one_line

__all__ = ["predict_batch"]


def predict_batch(predictor: Any, images: Sequence[Any], max_pixels: int | None) -> list[Any]:
    """See :meth:`engine.predictor.Predictor.predict_batch_with_probs`."""
    _is_oom = predictor.is_oom

    rgbs = [predictor._as_rgb(image) for image in images]
    if not rgbs:
        return []
    height, width = rgbs[0].shape[:2]
    for rgb in rgbs[1:]:
        if rgb.shape[:2] != (height, width):
            raise ValueError(f"a batch needs images of one size: {width}x{height} and "
                             f"{rgb.shape[1]}x{rgb.shape[0]} given together")
    size = predictor.inference_size(height, width)
    out: list[Any] = []
    start = 0
    while start < len(rgbs):
        # After an out-of-memory batch the predictor keeps a smaller size, so later batches do not fail
        # (and fall back to one image at a time) over and over.
        step = max(1, predictor.max_batch or len(rgbs))
        chunk = rgbs[start:start + step]
        start += len(chunk)
        lows = _lowres_chunk(predictor, chunk, size, _is_oom)
        for k in range(len(chunk)):
            out.append(predictor._prediction(lows[k], height, width, max_pixels))
            lows[k] = None  # this image's low-resolution probabilities are no longer needed
        del lows, chunk
    return out


def _lowres_chunk(predictor: Any, chunk: list[np.ndarray], size: tuple[int, int], is_oom: Any) -> list[Any]:
    """C×h×w probabilities of each image of ``chunk``: one network call, or one image at a time (with
    the single-image fallbacks) when the batch runs out of memory."""
    if len(chunk) == 1:
        return [predictor._lowres_probs(chunk[0])]
    try:
        return list(predictor._run_many(chunk, size))
    except Exception as exc:
        if not is_oom(exc):
            raise
        # Keep only the text: the exception's traceback pins the failed attempt's GPU tensors.
        first = one_line(exc, limit=120)
    predictor._free_cache()
    predictor.max_batch = max(1, len(chunk) // 2)
    warnings.warn(f"out of memory on {predictor.device} with a batch of {len(chunk)} at {size[1]}x{size[0]} "
                  f"({first}); predicting these one at a time, later batches at most {predictor.max_batch}",
                  RuntimeWarning, stacklevel=4)
    return [predictor._lowres_probs(rgb) for rgb in chunk]
