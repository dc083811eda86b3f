"""Training augmentation: random scale 0.5-2.0, crop padded with the ignore label, horizontal flip.

Works on numpy (image H×W×3 uint8, mask H×W uint8 with 255 void) so it runs in DataLoader workers
without torch threads; :func:`to_input` then normalises with the model's own preprocessing.
Images of any size come out as ``crop``×``crop`` pairs, so batches can mix image sizes.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine import VOID, Preprocessing

__all__ = ["random_scale", "pad_and_crop", "augment_pair", "to_input", "resize_image"]


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an H×W×3 uint8 image to height×width."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def random_scale(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, lo: float, hi: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Scale both by one factor drawn uniformly from [lo, hi]: image bilinear, mask nearest."""
    s = float(rng.uniform(lo, hi))
    h, w = mask.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) == (h, w):
        return image, mask
    # Nearest for the mask: interpolating class indices would invent classes along boundaries.
    m = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
    return resize_image(image, nh, nw), m


def pad_and_crop(image: np.ndarray, mask: np.ndarray, crop: int, rng: np.random.Generator,
                 fill: tuple[int, int, int] = (124, 116, 104)) -> tuple[np.ndarray, np.ndarray]:
    """A random crop×crop window; sides shorter than ``crop`` are padded first.

    Padding is the ignore label in the mask (no loss there) and roughly the ImageNet mean colour in
    the image (about zero after normalisation, as in the DeepLab Caffe recipe).
    """
    h, w = mask.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        img = np.empty((h + ph, w + pw, 3), np.uint8)
        img[:] = np.asarray(fill, np.uint8)
        img[:h, :w] = image
        m = np.full((h + ph, w + pw), VOID, np.uint8)
        m[:h, :w] = mask
        image, mask, h, w = img, m, h + ph, w + pw
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    return image[y:y + crop, x:x + crop], mask[y:y + crop, x:x + crop]


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, crop: int,
                 scale_min: float = 0.5, scale_max: float = 2.0, flip: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Scale, pad-and-crop, flip: -> (crop×crop×3 uint8, crop×crop uint8), C-contiguous."""
    image, mask = random_scale(image, mask, rng, scale_min, scale_max)
    image, mask = pad_and_crop(image, mask, crop, rng)
    if flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.array(image, order="C"), np.array(mask, order="C")  # own writable copies


def to_input(images: np.ndarray | torch.Tensor, pp: Preprocessing) -> torch.Tensor:
    """N×H×W×3 uint8 (numpy or tensor) -> N×3×H×W float32 network input per ``pp``.

    ``x = (pixels[channel_order] * scale - mean) / std``, the same arithmetic as engine.Predictor.
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch warns on read-only arrays (PIL hands those out)
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    x = t.permute(0, 3, 1, 2).float()
    if pp.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(pp.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x * pp.scale - mean) / std
