"""Probabilities at some full-size pixels, read from a smaller grid: the values of the full bilinear
resize there, computed from the grid cells those pixels read and nothing more."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine.probgrid as probgrid
from engine import crop_at, sample_at


def _full(p: np.ndarray, size) -> np.ndarray:
    return F.interpolate(torch.from_numpy(p.astype(np.float32))[None], size=size, mode="bilinear",
                         align_corners=False)[0].numpy()


@pytest.mark.parametrize("box", [(0, 0, 50, 70), (3, 5, 20, 9), (49, 69, 50, 70), (10, 0, 11, 70), (7, 7, 7, 9)])
def test_a_crop_equals_the_full_resize_there(box):
    p = np.random.default_rng(0).random((3, 17, 23)).astype(np.float32)
    y0, x0, y1, x1 = box
    got = crop_at(p, (50, 70), box)
    assert got.shape == (3, y1 - y0, x1 - x0)
    np.testing.assert_allclose(got, _full(p, (50, 70))[:, y0:y1, x0:x1], atol=1e-5)


def test_scattered_pixels_of_a_float16_grid_equal_the_full_resize_there():
    p = np.random.default_rng(1).random((4, 30, 40)).astype(np.float16)
    rows, cols = np.array([0, 5, 6, 90, 119]), np.array([3, 3, 150, 159])
    got = sample_at(p, (120, 160), rows, cols)
    np.testing.assert_allclose(got, _full(p, (120, 160))[:, rows][:, :, cols], atol=1e-3)
    same = np.random.default_rng(2).random((2, 8, 9)).astype(np.float32)   # a grid at the image's size
    np.testing.assert_array_equal(sample_at(same, (8, 9), [1, 7], [0, 8]), same[:, [1, 7]][:, :, [0, 8]])


def test_only_the_cells_a_crop_reads_are_converted(monkeypatch):
    """A tall, narrow crop of a wide grid converts a window a few cells wide, not the grid's width
    (whose rows once made the intermediate gigabytes for a stroke's crop on a large photo)."""
    seen = []
    real = probgrid._as_tensor
    monkeypatch.setattr(probgrid, "_as_tensor", lambda p: seen.append(p.shape) or real(p))
    p = np.random.default_rng(3).random((5, 100, 400)).astype(np.float32)
    got = crop_at(p, (300, 1200), (0, 600, 300, 612))
    np.testing.assert_allclose(got, _full(p, (300, 1200))[:, :, 600:612], atol=1e-5)
    assert seen and all(shape[2] <= 6 for shape in seen)
