"""Generated labelled folders for tests and benchmarks: textured shapes on textured backgrounds.

Class 0 background, 1 disc, 2 box.  ``appearance`` picks the colour scheme, so a model trained on
one appearance can be fine-tuned on another (the "my images look different" situation the
"Fine-tune on my labels" button exists for).  Nothing here is used by the app itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CLASSES", "APPEARANCES", "make_pair", "make_folder"]

CLASSES = [("background", (0, 0, 0)), ("disc", (128, 0, 0)), ("box", (0, 128, 0))]
# (background, disc, box) base colours per appearance.
APPEARANCES = {
    "a": ((60, 60, 60), (220, 40, 40), (40, 200, 40)),
    "b": ((200, 190, 120), (40, 60, 220), (230, 120, 20)),
}


def make_pair(rng: np.random.Generator, height: int, width: int, appearance: str = "a",
              noise: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(H×W×3 uint8 image, H×W uint8 mask): one disc and one box at random places and sizes."""
    bg, disc_c, box_c = (np.asarray(c, np.float32) for c in APPEARANCES[appearance])
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), np.uint8)
    s = min(height, width)
    bh, bw = rng.integers(s // 5, s // 2, size=2)
    by, bx = rng.integers(0, height - bh), rng.integers(0, width - bw)
    mask[by:by + bh, bx:bx + bw] = 2
    r = rng.integers(s // 8, s // 4)
    cy, cx = rng.integers(r, height - r), rng.integers(r, width - r)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    colours = np.stack([bg, disc_c, box_c])
    image = colours[mask]
    stripes = 15.0 * np.sin((xx + yy) / 3.0)[..., None]  # a texture, so colour alone is not all there is
    image = image + stripes + rng.normal(0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_folder(folder: str | Path, n: int, *, size: tuple[int, int] | list[tuple[int, int]] = (64, 80),
                appearance: str = "a", seed: int = 0, status: str = "edited") -> list[str]:
    """Write ``n`` PNG images into ``folder`` and their masks into its annotation store.

    ``size``: (height, width), or a list cycled through (mixed sizes).  Returns the image ids.
    """
    from engine import AnnotationStore

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = size if isinstance(size, list) else [size]
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image, mask = make_pair(rng, h, w, appearance)
        Image.fromarray(image).save(folder / f"img{i:03d}.png")
        pairs.append((f"img{i:03d}.png", mask))
    with AnnotationStore.open(folder) as store:
        store.set_classes(CLASSES, allow_shrink=True)
        for image_id, mask in pairs:
            store.save_mask(image_id, mask, status=status)
    return [p[0] for p in pairs]
