"""Generated scenes with known masks and noisy coarse unaries, for CRF tests, demos and benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Scene", "make_scene", "mean_iou"]


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # H×W×3 uint8
    mask: np.ndarray  # H×W uint8 ground-truth class per pixel
    probs: np.ndarray  # C×H×W float32 coarse, noisy "network" probabilities


def make_scene(height: int, width: int, num_classes: int = 5, *, active_classes: int | None = None,
               seed: int = 0, shapes: int | None = None, image_noise: float = 12.0, coarse: int = 8,
               confidence: float = 3.0, prob_noise: float = 1.0) -> Scene:
    """A background plus random ellipses/rectangles, each class with its own colour.

    The unary imitates a DeepLab output: the one-hot mask averaged over ``coarse``×``coarse`` blocks
    (output stride), bilinearly upsampled (blurry boundaries), scaled by ``confidence``, plus Gaussian
    logit noise, softmaxed. Only ``active_classes`` (default all) appear or carry probability; the
    others get exactly zero.
    """
    rng = np.random.default_rng(seed)
    active = num_classes if active_classes is None else active_classes
    if not 1 <= active <= num_classes:
        raise ValueError("active_classes must be in 1..num_classes")
    labels = rng.permutation(num_classes)[:active]
    mask = np.full((height, width), labels[0], dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    count = shapes if shapes is not None else max(2 * (active - 1), 1)
    for i in range(count):
        cls = labels[1 + i % (active - 1)] if active > 1 else labels[0]
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        if rng.random() < 0.5:
            region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        else:
            region = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        mask[region] = cls
    palette = rng.uniform(20, 235, size=(num_classes, 3))
    image = palette[mask] + rng.normal(0.0, image_noise, size=(height, width, 3))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    onehot = torch.from_numpy(np.eye(num_classes, dtype=np.float32)[mask]).permute(2, 0, 1)[None]
    small = F.avg_pool2d(onehot, coarse, ceil_mode=True) if min(height, width) >= coarse else onehot
    smooth = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0]
    gen = torch.Generator().manual_seed(seed)
    logits = confidence * smooth + prob_noise * torch.randn(smooth.shape, generator=gen)
    inactive = torch.ones(num_classes, dtype=torch.bool)
    inactive[torch.from_numpy(labels.astype(np.int64))] = False
    logits[inactive] = -torch.inf
    probs = torch.softmax(logits, 0).numpy().astype(np.float32)
    return Scene(image=image, mask=mask, probs=probs)


def mean_iou(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean IoU over classes present in either map (H×W integer labels)."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, truth == c
        union = np.logical_or(p, t).sum()
        if union:
            ious.append(np.logical_and(p, t).sum() / union)
    return float(np.mean(ious))
