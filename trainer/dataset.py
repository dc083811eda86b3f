"""Training data from the annotation store: the images whose masks a person edited or reviewed.

* :func:`labelled_samples` lists them (prelabelled masks are a model's guesses, never training data).
* :func:`split_heldout` keeps a deterministic share for validation: each image's place is decided by a
  hash of its id, so adding images later moves few others between the splits and successive
  versions are measured on nearly the same held-out images.
* :class:`SegDataset` decodes and augments one pair; :class:`InfiniteSampler` draws an endless,
  seeded, per-rank (DDP) stream of ``(index, draw)`` keys; :func:`make_loader` batches them.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine import VOID, Status, load_mask_png, read_image
from engine.store.provenance import read_confirmed_png

from .augment import augment_pair

__all__ = ["Sample", "labelled_samples", "split_heldout", "load_pair", "SegDataset", "InfiniteSampler",
           "make_loader", "TRAIN_STATUSES"]

TRAIN_STATUSES = (Status.EDITED, Status.REVIEWED)


@dataclass(frozen=True)
class Sample:
    """One labelled image: its store id and the files to read (paths, so workers can pickle it).

    ``confirmed_path``: for an edited mask, the store's map of the pixels a person set; the others
    (a pre-label's untouched pixels) are void for the loss.  None for a reviewed mask (all of it
    counts).  A missing file means a mask saved before the map existed: all of it counts.
    """

    id: str
    image_path: Path
    mask_path: Path
    confirmed_path: Path | None = None


def labelled_samples(store) -> list[Sample]:
    """Images of ``store`` (an engine AnnotationStore) with status edited/reviewed and a mask, natural order."""
    if store.scan_result is None:
        store.scan()
    out = []
    for image_id, status in store.statuses().items():
        if status in TRAIN_STATUSES and store.has_mask(image_id):
            conf = store.confirmed_path(image_id) if status is Status.EDITED else None
            out.append(Sample(image_id, store.image_path(image_id), store.mask_path(image_id), conf))
    return out


def _rank_key(image_id: str, seed: int) -> bytes:
    return hashlib.sha1(f"{seed}:{image_id}".encode("utf-8")).digest()


def split_heldout(samples: Sequence[Sample], fraction: float = 0.2, seed: int = 0
                  ) -> tuple[list[Sample], list[Sample]]:
    """(train, heldout): ``round(n*fraction)`` held out, at least one when n >= 3, never all of them.

    With one or two images everything trains (nothing could be spared); mIoU is then unmeasured.
    """
    n = len(samples)
    k = 0 if n < 3 or fraction <= 0 else min(n - 1, max(1, round(n * fraction)))
    ranked = sorted(samples, key=lambda s: _rank_key(s.id, seed))
    held = {s.id for s in ranked[:k]}
    return [s for s in samples if s.id not in held], [s for s in samples if s.id in held]


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(H×W×3 uint8 RGB image, H×W uint8 mask with 255 void, also where no person set the pixel);
    ValueError when their sizes differ."""
    image = read_image(sample.image_path)
    mask = load_mask_png(sample.mask_path)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"{sample.id}: mask is {mask.shape[1]}×{mask.shape[0]} but the image is "
                         f"{image.shape[1]}×{image.shape[0]}")
    if sample.confirmed_path is not None:
        confirmed = read_confirmed_png(sample.confirmed_path, mask.shape)
        if confirmed is not None:
            mask[~confirmed] = VOID  # the model's own guesses are not a person's label
    return image, mask


class SegDataset(Dataset):
    """``dataset[(index, draw)]`` -> (crop×crop×3 uint8 tensor, crop×crop int64 tensor).

    ``draw`` seeds the augmentation, so a run is reproducible whatever the worker count.
    Decoded pairs are cached up to ``cache_bytes`` (fine-tuning sets are small and revisited often).
    """

    def __init__(self, samples: Sequence[Sample], *, crop: int, scale_min: float = 0.5,
                 scale_max: float = 2.0, flip: bool = True, seed: int = 0,
                 cache_bytes: int = 1 << 30) -> None:
        if not samples:
            raise ValueError("no training images")
        self.samples = list(samples)
        self.crop, self.scale_min, self.scale_max, self.flip = crop, scale_min, scale_max, flip
        self.seed = seed
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.samples)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        image, mask = load_pair(self.samples[index])
        size = image.nbytes + mask.nbytes
        if self._cached + size <= self.cache_bytes:
            self._cache[index] = (image, mask)
            self._cached += size
        return image, mask

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, draw = key
        image, mask = self.pair(index)
        rng = np.random.default_rng((self.seed, draw, index))
        img, m = augment_pair(image, mask, rng, crop=self.crop, scale_min=self.scale_min,
                              scale_max=self.scale_max, flip=self.flip)
        return torch.from_numpy(img), torch.from_numpy(m).long()


class InfiniteSampler(Sampler):
    """Endless ``(index, draw)`` keys: a fresh seeded permutation per epoch, sharded over DDP ranks.

    Every rank computes the same permutation and takes every ``world``-th element from ``rank``
    (DistributedSampler's scheme, without the need for a set_epoch call).  ``draw`` is unique per
    rank and position, so no two crops share augmentation randomness.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw = itertools.count(self.rank, self.world)
        for epoch in itertools.count():
            perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            # Pad so every rank gets the same count per epoch (ranks must step together under DDP).
            total = -(-self.n // self.world) * self.world
            perm = np.resize(perm, total)
            for i in perm[self.rank::self.world]:
                yield int(i), next(draw)


def make_loader(dataset: SegDataset, batch_size: int, *, seed: int = 0, rank: int = 0, world: int = 1,
                num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless iterator of batches: (N×crop×crop×3 uint8, N×crop×crop int64)."""
    loader = DataLoader(dataset, batch_size=batch_size,
                        sampler=InfiniteSampler(len(dataset), seed=seed, rank=rank, world=world),
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    return iter(loader)
