"""Validation: confusion matrix and mean intersection-over-union, the DeepLab papers' metric.

mIoU averages IoU over the classes present in the ground truth or the prediction of the held-out
set (a class nobody labelled and the model never predicts says nothing either way).  Void (255)
pixels are not counted.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine import VOID

from .augment import resize_image, to_input
from .dataset import Sample, load_pair

__all__ = ["confusion_matrix", "miou", "per_class_iou", "evaluate"]


def confusion_matrix(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int
                     ) -> torch.Tensor:
    """C×C int64 counts, rows = ground truth, columns = prediction; target 255 ignored.

    ``pred``/``target``: integer arrays of the same shape.  Predictions outside [0, C) count nowhere.
    """
    p = torch.as_tensor(pred).reshape(-1).long()
    t = torch.as_tensor(target).reshape(-1).long()
    keep = (t != VOID) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(conf: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU per class (NaN where a class appears in neither ground truth nor prediction)."""
    c = np.asarray(torch.as_tensor(conf).cpu(), dtype=np.float64)
    inter = np.diag(c)
    union = c.sum(0) + c.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def miou(conf: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over the classes that occur; NaN for an empty matrix."""
    iou = per_class_iou(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


@torch.no_grad()
def evaluate(model: torch.nn.Module, samples: Sequence[Sample], *, num_classes: int, device: torch.device,
             max_side: int | None = 513, amp: bool = False,
             cancel: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """Confusion matrix (C×C int64, on CPU) of ``model`` over ``samples``; None if cancelled.

    Each image is scaled so its longer side is at most ``max_side``, the logits are resized back to
    the mask's size (bilinear) and compared there, so the metric is at full label resolution.
    The caller sets eval/train mode; under DDP each rank passes its own shard and sums the matrices.
    """
    pp = model.meta.preprocessing if hasattr(model, "meta") else model.module.meta.preprocessing
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for sample in samples:
        if cancel is not None and cancel():
            return None
        image, mask = load_pair(sample)
        h, w = mask.shape
        s = 1.0 if not max_side or max(h, w) <= max_side else max_side / max(h, w)
        small = resize_image(image, max(1, round(h * s)), max(1, round(w * s)))
        x = to_input(small, pp).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        conf += confusion_matrix(logits.argmax(1)[0].cpu(), torch.from_numpy(mask), num_classes)
    return conf
