"""Generated labelled folders for tests and benchmarks: textured shapes on textured backgrounds.

Class 0 background, 1 disc, 2 box.  ``appearance`` picks the colour scheme, so a model trained on
one appearance can be fine-tuned on another (the "my images look different" situation the
"Fine-tune on my labels" button exists for).  Nothing here is used by the app itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["APPEARANCES", "CLASSES", "corrupt_mask", "make_folder", "make_pair", "make_scene"]

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


def _paint(mask: np.ndarray, appearance: str, rng: np.random.Generator, noise: float) -> np.ndarray:
    height, width = mask.shape
    yy, xx = np.mgrid[0:height, 0:width]
    colours = np.stack([np.asarray(c, np.float32) for c in APPEARANCES[appearance]])
    image = colours[mask] + 15.0 * np.sin((xx + yy) / 3.0)[..., None] + rng.normal(0, noise, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_scene(rng: np.random.Generator, height: int, width: int, appearance: str = "a",
               noise: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) with what makes annotation work: 2-4 discs and 1-3 boxes overlapping at random
    (so regions touch and occlude), a thin bar 3-5 px wide, and a ring (a region with a hole)."""
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), np.uint8)
    s = min(height, width)
    for _ in range(int(rng.integers(1, 4))):
        bh, bw = rng.integers(s // 8, s // 3, size=2)
        by, bx = rng.integers(0, height - bh), rng.integers(0, width - bw)
        mask[by:by + bh, bx:bx + bw] = 2
    for _ in range(int(rng.integers(2, 5))):
        r = int(rng.integers(s // 14, s // 6))
        cy, cx = rng.integers(r, height - r), rng.integers(r, width - r)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    thick = int(rng.integers(3, 6))           # a pole: the brush's job
    if rng.random() < 0.5:
        x = int(rng.integers(0, width - thick))
        y0 = int(rng.integers(0, height // 2))
        mask[y0:y0 + height // 2, x:x + thick] = 2
    else:
        y = int(rng.integers(0, height - thick))
        x0 = int(rng.integers(0, width // 2))
        mask[y:y + thick, x0:x0 + width // 2] = 2
    r = int(rng.integers(s // 10, s // 6))     # a ring: a region with a hole
    cy, cx = rng.integers(r, height - r), rng.integers(r, width - r)
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    mask[(d2 <= r * r) & (d2 > (r * 0.55) ** 2)] = 1
    return _paint(mask, appearance, rng, noise), mask


def corrupt_mask(mask: np.ndarray, rng: np.random.Generator, num_classes: int = len(CLASSES), *,
                 boundary: int = 3, swaps: int = 1, misses: int = 1, spurious: int = 2) -> np.ndarray:
    """A plausible model's mistakes on ``mask``: every object's boundary moved in or out by up to
    ``boundary`` px, ``swaps`` objects given another class, ``misses`` objects lost to the
    background and ``spurious`` blobs of a wrong class added. Deterministic for a given ``rng``."""
    from scipy import ndimage

    out = mask.copy()
    height, width = mask.shape
    objects = []
    for c in range(1, num_classes):
        comps, n = ndimage.label(mask == c)
        objects += [(c, comps == i) for i in range(1, n + 1)]
    for c, obj in objects:
        k = int(rng.integers(-boundary, boundary + 1))
        if k > 0:
            grown = ndimage.binary_dilation(obj, iterations=k)
            out[grown & (out == 0)] = c
        elif k < 0:
            out[obj & ~ndimage.binary_erosion(obj, iterations=-k)] = 0
    order = rng.permutation(len(objects))
    for i in order[:swaps]:
        c, obj = objects[i]
        out[obj] = int(rng.choice([k for k in range(1, num_classes) if k != c] or [0]))
    for i in order[swaps:swaps + misses]:
        out[objects[i][1]] = 0
    yy, xx = np.mgrid[0:height, 0:width]
    s = min(height, width)
    for _ in range(spurious):
        ry, rx = rng.integers(s // 20 + 1, s // 8 + 2, size=2)
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        out[blob] = int(rng.integers(0, num_classes))
    return out


def make_folder(folder: str | Path, n: int, *, size: tuple[int, int] | list[tuple[int, int]] = (64, 80),
                appearance: str = "a", seed: int = 0, status: str = "edited", scenes: bool = False) -> list[str]:
    """Write ``n`` PNG images into ``folder`` and their masks into its annotation store.

    ``size``: (height, width), or a list cycled through (mixed sizes).  ``scenes``: busier
    :func:`make_scene` images instead of :func:`make_pair`'s.  Returns the image ids.
    """
    from engine import AnnotationStore

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = size if isinstance(size, list) else [size]
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image, mask = (make_scene if scenes else make_pair)(rng, h, w, appearance)
        Image.fromarray(image).save(folder / f"img{i:03d}.png")
        pairs.append((f"img{i:03d}.png", mask))
    with AnnotationStore.open(folder) as store:
        store.set_classes(CLASSES, allow_shrink=True)
        for image_id, mask in pairs:
            store.save_mask(image_id, mask, status=status)
    return [p[0] for p in pairs]


def pretrain(folder: str | Path, arch: str = "deeplabv3plus_mobilenet_v2", *, n: int = 8,
             size: tuple[int, int] | list[tuple[int, int]] = (64, 80), iterations: int = 20, crop: int = 64,
             appearance: str = "a", seed: int = 1, scenes: bool = False):
    """A small model that knows ``appearance``: trained from scratch on a generated folder of it, its
    batch-norm statistics then settled on that appearance (so another appearance is a real shift).
    Returns the model in eval mode."""
    import torch

    import engine
    from engine import AnnotationStore

    from .augment import to_input
    from .dataset import labelled_samples, load_pair
    from .loop import FineTune
    from .recipe import Recipe

    torch.manual_seed(0)
    make_folder(folder, n, size=size, appearance=appearance, seed=seed, scenes=scenes)
    model = engine.build_model(arch, num_classes=len(CLASSES), class_names=[c for c, _ in CLASSES])
    recipe = Recipe(iterations=iterations, lr=0.01, crop=crop, batch_size=4, eval_every=0, device="cpu",
                    heldout_fraction=0, eval_max_side=None, freeze_bn=False)
    with AnnotationStore.open(folder) as store:
        model = FineTune(store, model, recipe).run().model
        # A short run leaves BN statistics half-way: recompute them as a cumulative average.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        pairs = [load_pair(s)[0] for s in labelled_samples(store)]
        hh, ww = min(p.shape[0] for p in pairs), min(p.shape[1] for p in pairs)
        batch = np.stack([p[:hh, :ww] for p in pairs])
        model.train()
        with torch.no_grad():
            model(to_input(batch, model.meta.preprocessing))
    return model.eval()
